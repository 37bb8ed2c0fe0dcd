"""Frames computed once per recording, kept on disk as one .npy file each, read back per item.

Layout: <data-path>/cache/<dataset>/<split>-<hash of the preprocessing parameters>/
    000000.npy ... (one frame array per recording), index.json (parameters, labels, lengths).
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

    def __init__(self, directory: str, labels: list, lengths: list):
        self.directory = directory
        self.labels = [int(v) for v in labels]
        self.lengths = [int(v) for v in lengths]

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
        return cls(directory, index["labels"], index["lengths"])

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
        labels, lengths = [0] * n, [0] * n
        loader = DataLoader(_Writer(source, directory), batch_size=None, shuffle=False,
                            num_workers=workers, collate_fn=_identity)
        for i, length, label in tqdm(loader, total=n, desc=f"caching {desc}", unit="rec"):
            labels[i], lengths[i] = label, length
        index = {"params": params, "labels": labels, "lengths": lengths}
        tmp = os.path.join(directory, f"{INDEX}.{os.getpid()}.tmp")
        with open(tmp, "w") as f:
            json.dump(index, f)
        os.replace(tmp, os.path.join(directory, INDEX))
        return cls(directory, labels, lengths)


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
    """Item i: compute and save recording i (in the loader's worker), return (i, steps, label)."""

    def __init__(self, source, directory: str):
        self.source = source
        self.directory = directory

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int):
        path = os.path.join(self.directory, f"{i:06d}.npy")
        if os.path.exists(path):  # left by an interrupted run
            return i, int(np.load(path, mmap_mode="r").shape[0]), self.source.label(i)
        frames, label = self.source[i]
        _atomic_save(path, _compact(frames))
        return i, int(frames.shape[0]), int(label)


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
