"""IBM DVS Gesture: 11 hand and arm gestures seen by a 128x128 event camera.

Pipeline (SPEC section 7): tonic's DVSGesture reads its preprocessed .npy release; events are
downsampled 128 -> 32 (pixel coordinates divided by 4, so each 4x4 block is summed) and binned into
75 ms frames of the two polarities over the whole recording, which is cached. Training items are
consecutive 1.575 s windows (21 frames) with a random crop after zero padding of 4; test items are
whole recordings (T varies: the training collate pads each batch).
Items: (frames float32 [T, 2, 32, 32], label).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .cache import Recordings, Windows
from .errors import DatasetFilesMissing, archive_hint
from .sources import EventSource, cached_split, check_labels, offline
from .transforms import RandomCrop

NAME = "DVSGesture"
NUM_CLASSES = 11
SENSOR = 128
SIZE = 32
FRAME_US = 75_000
TRAIN_STEPS = 21       # 21 x 75 ms = 1.575 s
CROP_PADDING = 4
INPUT_SHAPE = (2, SIZE, SIZE)
FOLDERS = {True: "ibmGestureTrain", False: "ibmGestureTest"}
URL = ("http://research.ibm.com/dvsgesture/ (the .npy release tonic reads: "
       "https://figshare.com/ndownloader/files/38022171 = ibmGestureTrain.tar.gz, "
       "https://figshare.com/ndownloader/files/38020584 = ibmGestureTest.tar.gz)")
EXPECTED_FILES = """\
<data-path>/DVSGesture/ibmGestureTrain/user01_fluorescent/0.npy ... 10.npy  (one folder per user_lighting)
<data-path>/DVSGesture/ibmGestureTest/user24_fluorescent/0.npy ...
(tonic's preprocessed release: ibmGestureTrain.tar.gz and ibmGestureTest.tar.gz, extracted)"""
PARAMS = {"version": 1, "size": SIZE, "frame_us": FRAME_US}


def missing(root: str, detail: str = "") -> DatasetFilesMissing:
    return DatasetFilesMissing(NAME, root, EXPECTED_FILES, URL, detail)


def to_frames(events: np.ndarray) -> np.ndarray:
    """Event counts [T, 2, 32, 32] in 75 ms bins from the first event; the last, shorter bin kept."""
    from tonic.transforms import Downsample, ToFrame

    if len(events) == 0:
        return np.zeros((1, 2, SIZE, SIZE), dtype=np.int16)
    events = Downsample(spatial_factor=SIZE / SENSOR)(events)
    return ToFrame(sensor_size=(SIZE, SIZE, 2), time_window=FRAME_US, include_incomplete=True)(events)


def _recordings_present(folder: str) -> bool:
    return any(Path(folder).glob("*/*.npy"))


def _source(root: str, train: bool) -> EventSource:
    import tonic.datasets

    folder = os.path.join(root, NAME, FOLDERS[train])
    if not _recordings_present(folder):
        hint = archive_hint(os.path.dirname(folder), [FOLDERS[train] + ".tar.gz"])
        raise missing(root, f"no <user>/<label>.npy files in {folder}" + hint)
    cls = offline(tonic.datasets.DVSGesture,
                  lambda ds: _recordings_present(os.path.join(ds.location_on_system, ds.folder_name)),
                  lambda: missing(root))
    dataset = cls(root, train=train)
    check_labels(NAME, dataset.targets, NUM_CLASSES)
    order = sorted(range(len(dataset.data)), key=lambda i: dataset.data[i])  # tonic lists files in walk order
    return EventSource(dataset, order, [dataset.targets[i] for i in order], to_frames)


def build(args, train: bool):
    """Training: 21-frame windows with random crop; test: whole recordings. Frames [T, 2, 32, 32]."""
    cache = cached_split(args, NAME, PARAMS, train, _source)
    if train:
        return Windows(cache, TRAIN_STEPS, RandomCrop(CROP_PADDING))
    return Recordings(cache)
