"""IBM DVS Gesture: 11 hand and arm gestures seen by a 128x128 event camera.

tonic's DVSGesture reads its preprocessed .npy release. Frames per `--frames` (docs/rule.md section 7.1):
- original (default), as the original code builds them: int16 event counts of 75 ms at 128x128
  (two polarities, the incomplete last bin dropped), each frame resized to 32x32 by antialiased
  bilinear interpolation and rounded back to integers (a rounded weighted mean: weak activity
  rounds to 0). Training samples: the recording cut into 1.575 s slices from its first event (an
  incomplete last slice dropped), each slice framed from its own first event: at most 20 frames,
  batches padded to their longest sample. Test samples: whole recordings.
- counts: events downsampled 128 -> 32 (each 4x4 block summed), 75 ms frames over the whole
  recording with the last, shorter bin kept; training samples are consecutive 21-frame windows.
Training samples get a random crop after zero padding of 4 (one offset for all frames).
Items: (frames float32 [T, 2, 32, 32], label).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .binning import time_frames, time_slices
from .cache import Recordings, Segments, Windows
from .catalog import DVS_GESTURE as RECORD
from .errors import DatasetFilesMissing
from .resample import resize_integer
from .sources import EventSource, cached_split, check_labels, encoding, offline, require_files
from .transforms import RandomCrop

NAME = RECORD.name
NUM_CLASSES = RECORD.num_classes
INPUT_SHAPE = RECORD.frame_shape
SENSOR = 128
SIZE = INPUT_SHAPE[-1]
FRAME_US = 75_000
SLICE_US = 1_575_000                    # the original's training slice (21 x 75 ms)
TRAIN_STEPS = RECORD.steps["counts"]    # the counts encoding's window: 21 frames
CROP_PADDING = 4
FOLDERS = {True: "ibmGestureTrain", False: "ibmGestureTest"}
URL = RECORD.source
EXPECTED_FILES = RECORD.expected_files


def params(frames: str, train: bool) -> dict:
    """Everything the cached frames depend on: a change makes a new cache folder."""
    return {"version": 2, "frames": frames, "size": SIZE, "frame_us": FRAME_US,
            "slice_us": SLICE_US if train and frames == "original" else None}


def missing(root: str, detail: str = "") -> DatasetFilesMissing:
    return DatasetFilesMissing.of(RECORD, root, detail)


def _resized(events: np.ndarray) -> np.ndarray:
    counts = time_frames(events, FRAME_US, (2, SENSOR, SENSOR))
    return resize_integer(torch.from_numpy(counts), SIZE).numpy()


def original_frames(events: np.ndarray) -> np.ndarray:
    """int16 [T, 2, 32, 32] of a whole recording (the original's test frames)."""
    if len(events) == 0:
        return np.zeros((1, 2, SIZE, SIZE), dtype=np.int16)
    return _resized(events)


def original_slices(events: np.ndarray) -> list:
    """[int16 [T <= 20, 2, 32, 32]] per 1.575 s slice (the original's training samples). A slice
    without events (a gap of over 1.575 s) gives no sample."""
    if len(events) == 0:
        return [np.zeros((1, 2, SIZE, SIZE), dtype=np.int16)]
    return [_resized(events[first:end]) for first, end in time_slices(events["t"], SLICE_US) if end > first]


def count_frames(events: np.ndarray) -> np.ndarray:
    """Event counts [T, 2, 32, 32] in 75 ms bins from the first event; the last, shorter bin kept."""
    from tonic.transforms import Downsample, ToFrame

    if len(events) == 0:
        return np.zeros((1, 2, SIZE, SIZE), dtype=np.int16)
    events = Downsample(spatial_factor=SIZE / SENSOR)(events)
    return ToFrame(sensor_size=(SIZE, SIZE, 2), time_window=FRAME_US, include_incomplete=True)(events)


def _recordings_present(folder: str) -> bool:
    return any(Path(folder).glob("*/*.npy"))


def _source(root: str, train: bool, frames: str = "original", fetch: bool = False) -> EventSource:
    import tonic.datasets

    folder = os.path.join(root, NAME, FOLDERS[train])
    require_files(root, RECORD, "train" if train else "test", lambda: _recordings_present(folder),
                  f"<user>/<label>.npy files in {folder}", fetch)
    cls = offline(tonic.datasets.DVSGesture,
                  lambda ds: _recordings_present(os.path.join(ds.location_on_system, ds.folder_name)),
                  lambda: missing(root))
    dataset = cls(root, train=train)
    check_labels(NAME, dataset.targets, NUM_CLASSES)
    order = sorted(range(len(dataset.data)), key=lambda i: dataset.data[i])  # tonic lists files in walk order
    if frames == "counts":
        to_frames = count_frames
    else:
        to_frames = original_slices if train else original_frames
    return EventSource(dataset, order, [dataset.targets[i] for i in order], to_frames)


def build(args, train: bool):
    """Training: slices (original) or 21-frame windows (counts), with random crop; test: whole
    recordings. Frames [T, 2, 32, 32]."""
    frames = encoding(args)
    fetch = bool(getattr(args, "download", False))
    cache = cached_split(args, NAME, params(frames, train), train,
                         lambda root, train: _source(root, train, frames, fetch))
    if not train:
        return Recordings(cache)
    if frames == "counts":
        return Windows(cache, TRAIN_STEPS, RandomCrop(CROP_PADDING))
    return Segments(cache, RandomCrop(CROP_PADDING))
