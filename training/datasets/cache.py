"""Frames computed once per recording, kept on disk as one .npy file each, read back per item.

Layout: <data-path>/cache/<dataset>/<split>-<hash of the preprocessing parameters>/
    000000.npy ... (one frame array per recording), index.json (parameters, labels, lengths, and
    for recordings cut into several samples the length of each: segments).
The parameters include the --frames encoding, so switching it never reads another encoding's frames.
index.json is written last, so its presence means the cache is complete; a run that stops midway
keeps the recordings already written and resumes from there. Every file is written to a temporary
name and renamed, so concurrent writers (several ranks, several workers) never leave a torn file.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Callable, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

INDEX = "index.json"


def cache_dir(data_path: str, dataset: str, split: str, params: dict) -> str:
    """The folder of one dataset split under one set of preprocessing parameters."""
    digest = hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return os.path.join(data_path, "cache", dataset, f"{split}-{digest}")


def _atomic_save(path: str, array: np.ndarray) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


class FrameCache:
    """A complete cache: `frames(i)` (memory-mapped, read lazily), `labels[i]`, `lengths[i]` (steps)."""

    def __init__(self, directory: str, labels: list, lengths: list, segments: Optional[list] = None):
        self.directory = directory
        self.labels = [int(v) for v in labels]
        self.lengths = [int(v) for v in lengths]
        # per recording, the lengths of the consecutive samples its frames hold (None: one sample)
        self.segments = None if segments is None else [[int(n) for n in seg] for seg in segments]

    def __len__(self) -> int:
        return len(self.labels)

    def path(self, i: int) -> str:
        return os.path.join(self.directory, f"{i:06d}.npy")

    def frames(self, i: int) -> np.ndarray:
        return np.load(self.path(i), mmap_mode="r")

    @classmethod
    def load(cls, directory: str, params: dict) -> Optional["FrameCache"]:
        """The cache in `directory` if it is complete and made with `params`, else None."""
        try:
            with open(os.path.join(directory, INDEX)) as f:
                index = json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        if index.get("params") != params:
            return None
        return cls(directory, index["labels"], index["lengths"], index.get("segments"))

    @classmethod
    def write(cls, directory: str, params: dict, source, workers: int = 0, desc: str = "frames") -> "FrameCache":
        """Run `source[i] -> (frames ndarray [T, ...], label)` over every recording with `workers`
        loader processes, saving each result; recordings already on disk are not recomputed."""
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as error:
            raise OSError(f"cannot create the frame cache {directory} ({error.strerror}): "
                          "the folder given as --data-path must be writable") from None
        n = len(source)
        labels, lengths, segments = [0] * n, [0] * n, [None] * n
        loader = DataLoader(_Writer(source, directory), batch_size=None, shuffle=False,
                            num_workers=workers, collate_fn=_identity)
        for i, length, label, parts in tqdm(loader, total=n, desc=f"caching {desc}", unit="rec"):
            labels[i], lengths[i], segments[i] = label, length, parts
        index = {"params": params, "labels": labels, "lengths": lengths}
        if any(parts is not None for parts in segments):
            segments = [[length] if parts is None else parts for parts, length in zip(segments, lengths)]
            index["segments"] = segments
        else:
            segments = None
        tmp = os.path.join(directory, f"{INDEX}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(index, f)
        os.replace(tmp, os.path.join(directory, INDEX))
        return cls(directory, labels, lengths, segments)


def _compact(frames: np.ndarray) -> np.ndarray:
    """Event counts in the smallest integer type that holds them exactly (most are < 256), so the
    cache stays a fraction of float32's size; float frames are kept as float32."""
    frames = np.asarray(frames)
    if np.issubdtype(frames.dtype, np.floating):
        return np.ascontiguousarray(frames, dtype=np.float32)
    low, high = (int(frames.min()), int(frames.max())) if frames.size else (0, 0)
    for dtype in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.ascontiguousarray(frames, dtype=dtype)
    return np.ascontiguousarray(frames, dtype=np.int64)


def _identity(item):
    return item


class _Writer(Dataset):
    """Item i: compute and save recording i (in the loader's worker), return (i, steps, label,
    segments). A source may return a list of frame arrays (several samples of one recording): they
    are saved end to end, their lengths (segments) in a small JSON file written first."""

    def __init__(self, source, directory: str):
        self.source = source
        self.directory = directory

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        path = os.path.join(self.directory, f"{i:06d}.npy")
        parts_path = os.path.join(self.directory, f"{i:06d}.segments.json")
        if os.path.exists(path):  # left by an interrupted run
            parts = None
            if os.path.exists(parts_path):
                with open(parts_path) as f:
                    parts = json.load(f)
            return i, int(np.load(path, mmap_mode="r").shape[0]), self.source.label(i), parts
        frames, label = self.source[i]
        parts = None
        if isinstance(frames, list):
            if not frames:
                raise ValueError(f"recording {i}: no samples")
            parts = [int(f.shape[0]) for f in frames]
            frames = np.concatenate(frames)
            tmp = f"{parts_path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(parts, f)
            os.replace(tmp, parts_path)
        _atomic_save(path, _compact(frames))
        return i, int(frames.shape[0]), int(label), parts


def cached(directory: str, params: dict, make_source: Callable, workers: int, desc: str) -> FrameCache:
    """The complete cache for `params`, computing it from `make_source()` only when it is missing
    (so a complete cache needs neither the raw files nor tonic's event readers)."""
    cache = FrameCache.load(directory, params)
    if cache is None:
        cache = FrameCache.write(directory, params, make_source(), workers, desc)
    return cache


def _as_tensor(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(frames, dtype=np.float32))


class Recordings(Dataset):
    """One item per cached recording: (transform(frames float32 [T, ...]), label)."""

    def __init__(self, cache: FrameCache, transform: Optional[Callable] = None):
        self.cache = cache
        self.transform = transform

    def __len__(self) -> int:
        return len(self.cache)

    def __getitem__(self, i: int):
        frames = _as_tensor(self.cache.frames(i))
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, self.cache.labels[i]


class Segments(Dataset):
    """One item per sample cut from the cached recordings (their `segments`), unpadded: the
    training collate pads each batch to its longest sample."""

    def __init__(self, cache: FrameCache, transform: Optional[Callable] = None):
        if cache.segments is None:
            raise ValueError(f"the cache in {cache.directory} holds whole recordings, not segments")
        self.cache = cache
        self.transform = transform
        self.items = []
        for recording, parts in enumerate(cache.segments):
            start = 0
            for length in parts:
                self.items.append((recording, start, length))
                start += length

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        recording, start, length = self.items[i]
        frames = _as_tensor(self.cache.frames(recording)[start:start + length])
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, self.cache.labels[recording]


class Windows(Dataset):
    """Consecutive non-overlapping windows of `steps` frames of every cached recording.

    A recording shorter than one window gives one window padded with empty frames at the end, so
    that no recording is dropped; otherwise the incomplete tail is left out.
    """

    def __init__(self, cache: FrameCache, steps: int, transform: Optional[Callable] = None):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.cache = cache
        self.steps = steps
        self.transform = transform
        self.windows = [(r, start) for r, length in enumerate(cache.lengths)
                        for start in range(0, max(length - steps, 0) + 1, steps)]

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int):
        recording, start = self.windows[i]
        frames = _as_tensor(self.cache.frames(recording)[start:start + self.steps])
        if frames.shape[0] < self.steps:
            pad = frames.new_zeros((self.steps - frames.shape[0], *frames.shape[1:]))
            frames = torch.cat([frames, pad])
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, self.cache.labels[recording]
