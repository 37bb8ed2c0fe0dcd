"""CIFAR10-DVS: CIFAR-10 images moved in front of a 128x128 event camera, 10 classes.

Pipeline (SPEC section 7): tonic's CIFAR10DVS reads the .aedat4 files; each recording's events are
split into 10 frames holding equal numbers of events (two polarity channels), resized to 48x48
(bilinear, anti-aliased) and cached. A fixed split takes, in each class, the first 90% of the files
by name for training and the rest for testing. Items are normalised per polarity with the
original's mean and std; training items first get a random crop after zero padding of 4.
Items: (frames float32 [10, 2, 48, 48], label).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .cache import Recordings
from .errors import DatasetFilesMissing, archive_hint
from .sources import EventSource, cached_split, check_labels, offline
from .transforms import Compose, Normalize, RandomCrop, resize

NAME = "CIFAR10DVS"
NUM_CLASSES = 10
SENSOR = 128
SIZE = 48
STEPS = 10
MEAN = (0.2728, 0.1295)
STD = (0.2225, 0.1290)
CROP_PADDING = 4
TRAIN_FRACTION = 0.9
INPUT_SHAPE = (2, SIZE, SIZE)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
URL = ("https://www.frontiersin.org/articles/10.3389/fnins.2017.00309/full (the .aedat4 release tonic reads: "
       "https://figshare.com/ndownloader/files/38023437 = CIFAR10DVS.zip, whose per-class zips must be extracted too)")
EXPECTED_FILES = """\
<data-path>/CIFAR10DVS/airplane/*.aedat4
<data-path>/CIFAR10DVS/automobile/*.aedat4
... one folder per class: """ + ", ".join(CLASSES) + """
(1000 recordings per class in the full dataset)"""
PARAMS = {"version": 1, "size": SIZE, "steps": STEPS, "train_fraction": TRAIN_FRACTION}


def missing(root: str, detail: str = "") -> DatasetFilesMissing:
    return DatasetFilesMissing(NAME, root, EXPECTED_FILES, URL, detail)


def to_frames(events: np.ndarray) -> np.ndarray:
    """[10, 2, 48, 48] float32: 10 slices of equal event count, accumulated, then resized."""
    from tonic.transforms import ToFrame

    if len(events) == 0:
        return np.zeros((STEPS, 2, SIZE, SIZE), dtype=np.float32)
    counts = ToFrame(sensor_size=(SENSOR, SENSOR, 2), n_event_bins=STEPS)(events)
    return resize(torch.from_numpy(counts.astype(np.float32)), SIZE).numpy()


def _recordings_present(folder: str) -> bool:
    return any(Path(folder).glob("*/*.aedat4"))


def split_indices(paths, labels, train: bool, fraction: float = TRAIN_FRACTION) -> list:
    """Per class, files sorted by path: the first round(fraction * n) train, the rest test."""
    chosen = []
    for label in sorted(set(labels)):
        members = sorted((i for i, v in enumerate(labels) if v == label), key=lambda i: paths[i])
        cut = int(fraction * len(members) + 0.5)  # round half up
        chosen.extend(members[:cut] if train else members[cut:])
    return chosen


def _source(root: str, train: bool) -> EventSource:
    import tonic.datasets

    folder = os.path.join(root, NAME)
    if not _recordings_present(folder):
        hint = archive_hint(folder, ["CIFAR10DVS.zip"] + [f"{name}.zip" for name in CLASSES])
        raise missing(root, f"no <class>/*.aedat4 files in {folder}" + hint)
    cls = offline(tonic.datasets.CIFAR10DVS,
                  lambda ds: _recordings_present(ds.location_on_system),
                  lambda: missing(root))
    dataset = cls(root)
    check_labels(NAME, dataset.targets, NUM_CLASSES)
    order = split_indices(dataset.data, dataset.targets, train)
    return EventSource(dataset, order, [dataset.targets[i] for i in order], to_frames)


def build(args, train: bool):
    """The fixed 90/10 split; frames [10, 2, 48, 48], normalised (training: random crop first)."""
    cache = cached_split(args, NAME, PARAMS, train, _source)
    normalize = Normalize(MEAN, STD)
    return Recordings(cache, Compose(RandomCrop(CROP_PADDING), normalize) if train else normalize)
