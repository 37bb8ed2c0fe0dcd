"""Spiking Heidelberg Digits: 20 spoken digits as spikes of 700 cochlea channels.

tonic's SHD reads the .h5 file (spike times in microseconds). Frames are spike counts per channel
in 10 ms bins (`--frames`, docs/rule.md section 7.1):
- original (default): one 1 s slice from the recording's first spike, binned from that spike with
  the incomplete last bin dropped: at most 99 frames (batches are padded to their longest sample);
- counts: 100 bins of [k*10 ms, (k+1)*10 ms) from t = 0, spikes after 1 s left out.
Items: (frames float32 [T, 700], label).
"""
from __future__ import annotations

import os

import numpy as np

from .binning import count_bins, time_frames, time_slices
from .cache import Recordings
from .catalog import SHD as RECORD
from .errors import DatasetFilesMissing
from .sources import EventSource, cached_split, check_labels, encoding, offline, require_files

NAME = RECORD.name
NUM_CLASSES = RECORD.num_classes
INPUT_SHAPE = RECORD.frame_shape
CHANNELS = INPUT_SHAPE[0]
STEPS = RECORD.steps["counts"]      # the counts encoding's fixed length
SLICE_US = 1_000_000
BIN_US = 10_000
FILES = {True: "shd_train.h5", False: "shd_test.h5"}
URL = RECORD.source
EXPECTED_FILES = RECORD.expected_files


def params(frames: str) -> dict:
    """Everything the cached frames depend on: a change makes a new cache folder."""
    return {"version": 2, "frames": frames, "slice_us": SLICE_US, "bin_us": BIN_US, "channels": CHANNELS}


def missing(root: str, detail: str = "") -> DatasetFilesMissing:
    return DatasetFilesMissing.of(RECORD, root, detail)


def original_frames(events: np.ndarray) -> np.ndarray:
    """int16 [T <= 99, 700]: the first 1 s slice from the first spike, 10 ms bins from that spike,
    the incomplete last bin dropped (tonic 1.4.3's SliceByTime + ToFrame, as the original ran them)."""
    if len(events) == 0:
        return np.zeros((1, CHANNELS), dtype=np.int16)
    first, end = time_slices(events["t"], SLICE_US)[0]
    return time_frames(events[first:end], BIN_US, (1, CHANNELS)).reshape(-1, CHANNELS)


def count_frames(events: np.ndarray) -> np.ndarray:
    """int16 [100, 700]: bins [k*10 ms, (k+1)*10 ms) from t = 0; spikes at or after 1 s left out."""
    t = events["t"].astype(np.int64)
    edges = np.arange(STEPS + 1, dtype=np.int64) * BIN_US
    starts = np.searchsorted(t, edges[:-1])
    ends = np.searchsorted(t, edges[1:])
    return count_bins(events, list(zip(starts.tolist(), ends.tolist())), (1, CHANNELS)).reshape(STEPS, CHANNELS)


TO_FRAMES = {"original": original_frames, "counts": count_frames}


def _tonic_dataset(root: str, train: bool):
    import tonic.datasets

    def present(ds) -> bool:
        return os.path.isfile(os.path.join(ds.location_on_system, ds.data_filename))

    cls = offline(tonic.datasets.SHD, present, lambda: missing(root))
    return cls(root, train=train)


def _source(root: str, train: bool, frames: str = "original", fetch: bool = False) -> EventSource:
    import h5py

    path = os.path.join(root, NAME, FILES[train])
    require_files(root, RECORD, "train" if train else "test", lambda: os.path.isfile(path), path, fetch)
    try:
        with h5py.File(path, "r") as f:
            labels = np.asarray(f["labels"][()], dtype=np.int64)
    except (OSError, KeyError) as error:
        raise ValueError(f"{path}: not an SHD .h5 file ({error})") from None
    check_labels(NAME, labels, NUM_CLASSES)
    return EventSource(_tonic_dataset(root, train), range(len(labels)), labels, TO_FRAMES[frames])


def build(args, train: bool):
    """The SHD train or test split as a Dataset of (float32 [T, 700], int label)."""
    frames = encoding(args)
    cache = cached_split(args, NAME, params(frames), train,
                         lambda root, train: _source(root, train, frames, bool(getattr(args, "download", False))))
    return Recordings(cache)
