"""Spiking Heidelberg Digits: 20 spoken digits as spikes of 700 cochlea channels.

Pipeline (SPEC section 7): tonic's SHD reads the .h5 file; the first 1 s of each recording is
binned into 100 frames of 10 ms (spike counts per channel), shorter recordings end in empty frames.
Items: (frames float32 [100, 700], label).
"""
from __future__ import annotations

import os

import numpy as np

from .cache import Recordings
from .errors import DatasetFilesMissing, archive_hint
from .sources import EventSource, cached_split, check_labels, offline

NAME = "SHD"
NUM_CLASSES = 20
CHANNELS = 700
STEPS = 100            # 1 s in 10 ms bins
BIN_US = 10_000
INPUT_SHAPE = (CHANNELS,)
FILES = {True: "shd_train.h5", False: "shd_test.h5"}
URL = "https://zenkelab.org/resources/spiking-heidelberg-datasets-shd/"
EXPECTED_FILES = """\
<data-path>/SHD/shd_train.h5
<data-path>/SHD/shd_test.h5
(the .h5 files inside shd_train.h5.zip and shd_test.h5.zip, unzipped)"""
# everything the cached frames depend on: a change makes a new cache folder
PARAMS = {"version": 1, "steps": STEPS, "bin_us": BIN_US, "channels": CHANNELS}


def missing(root: str, detail: str = "") -> DatasetFilesMissing:
    return DatasetFilesMissing(NAME, root, EXPECTED_FILES, URL, detail)


def to_frames(events: np.ndarray) -> np.ndarray:
    """Spike counts [STEPS, CHANNELS] of bins [k*10 ms, (k+1)*10 ms) from t=0; spikes after 1 s are
    left out (tonic's ToFrame with a fixed start and end, so every recording gives STEPS bins)."""
    from tonic.transforms import ToFrame

    if len(events) == 0:
        return np.zeros((STEPS, CHANNELS), dtype=np.int16)
    frames = ToFrame(sensor_size=(CHANNELS, 1, 1), time_window=BIN_US,
                     start_time=0, end_time=STEPS * BIN_US)(events)
    return frames.reshape(STEPS, CHANNELS)


def _tonic_dataset(root: str, train: bool):
    import tonic.datasets

    def present(ds) -> bool:
        return os.path.isfile(os.path.join(ds.location_on_system, ds.data_filename))

    cls = offline(tonic.datasets.SHD, present, lambda: missing(root))
    return cls(root, train=train)


def _source(root: str, train: bool) -> EventSource:
    import h5py

    path = os.path.join(root, NAME, FILES[train])
    if not os.path.isfile(path):
        raise missing(root, f"no {path}" + archive_hint(os.path.dirname(path), [FILES[train] + ".zip"]))
    try:
        with h5py.File(path, "r") as f:
            labels = np.asarray(f["labels"][()], dtype=np.int64)
    except (OSError, KeyError) as error:
        raise ValueError(f"{path}: not an SHD .h5 file ({error})") from None
    check_labels(NAME, labels, NUM_CLASSES)
    return EventSource(_tonic_dataset(root, train), range(len(labels)), labels, to_frames)


def build(args, train: bool):
    """The SHD train or test split as a Dataset of (float32 [100, 700], int label)."""
    cache = cached_split(args, NAME, PARAMS, train, _source)
    return Recordings(cache)
