"""CIFAR10-DVS: CIFAR-10 images moved in front of a 128x128 event camera, 10 classes.

tonic's CIFAR10DVS reads the .aedat4 files (channel = tonic's polarity p). Split, as the original:
per class, the files with index 0-899 in their name (cifar10_<class>_<index>.aedat4) train,
900-999 test. Frames per `--frames` (docs/rule.md section 7.1):
- original (default): 10 frames of N // 10 consecutive events (the last takes the remainder),
  counted at 128x128; each becomes an 8-bit image by x255 with wrap-around modulo 256 (any event ->
  about 1), resized to 48x48 as a luminance + alpha image (channel 0 premultiplied by channel 1,
  Pillow's bilinear), then /255. Cached as those 8-bit values.
- counts: tonic's 10 bins of equal event counts (leftover events dropped), resized to 48x48
  (bilinear, antialiased) as float counts.
Items are then normalised per channel with the original's mean and std; training items first get
a random crop after zero padding of 4 (one offset for all frames).
Items: (frames float32 [10, 2, 48, 48], label).
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

from training.errors import DatasetError

from .binning import event_count_frames
from .cache import Recordings
from .catalog import CIFAR10DVS as RECORD
from .errors import DatasetFilesMissing
from .resample import resize_la_uint8, wrap_to_uint8
from .sources import EventSource, cached_split, check_labels, encoding, offline, require_files
from .transforms import Compose, Divide, Normalize, RandomCrop, resize

NAME = RECORD.name
NUM_CLASSES = RECORD.num_classes
INPUT_SHAPE = RECORD.frame_shape
CLASSES = RECORD.classes
SENSOR = 128
SIZE = INPUT_SHAPE[-1]
STEPS = RECORD.steps["original"]
MEAN = (0.2728, 0.1295)
STD = (0.2225, 0.1290)
CROP_PADDING = 4
FIRST_TEST_INDEX = 900       # per class: index 0-899 train, 900-999 test
URL = RECORD.source
EXPECTED_FILES = RECORD.expected_files


def params(frames: str) -> dict:
    """Everything the cached frames depend on: a change makes a new cache folder."""
    return {"version": 2, "frames": frames, "size": SIZE, "steps": STEPS, "first_test_index": FIRST_TEST_INDEX}


def missing(root: str, detail: str = "") -> DatasetFilesMissing:
    return DatasetFilesMissing.of(RECORD, root, detail)


def original_frames(events: np.ndarray) -> np.ndarray:
    """uint8 [10, 2, 48, 48]: the 8-bit images the original's ToPILImage + Resize(48) produce."""
    counts = event_count_frames(events, STEPS, (2, SENSOR, SENSOR))
    return resize_la_uint8(wrap_to_uint8(torch.from_numpy(counts)), SIZE).numpy()


def count_frames(events: np.ndarray) -> np.ndarray:
    """float32 [10, 2, 48, 48]: 10 slices of equal event count, accumulated, then resized."""
    from tonic.transforms import ToFrame

    if len(events) == 0:
        return np.zeros((STEPS, 2, SIZE, SIZE), dtype=np.float32)
    counts = ToFrame(sensor_size=(SENSOR, SENSOR, 2), n_event_bins=STEPS)(events)
    return resize(torch.from_numpy(counts.astype(np.float32)), SIZE).numpy()


TO_FRAMES = {"original": original_frames, "counts": count_frames}


def _recordings_present(folder: str) -> bool:
    return any(Path(folder).glob("*/*.aedat4"))


def file_index(path: str) -> int:
    """The recording's index: the number that ends its file name (cifar10_<class>_<index>.aedat4)."""
    match = re.search(r"(\d+)$", Path(path).stem)
    if match is None:
        raise DatasetError(f"{path}: CIFAR10-DVS file names end in the recording's index "
                           "(cifar10_<class>_<index>.aedat4), which decides the train/test split")
    return int(match.group(1))


def split_indices(paths, labels, train: bool) -> list:
    """Per class (in class order), by file index: < 900 train, >= 900 test, in index order."""
    index = [file_index(p) for p in paths]
    chosen = [i for i in range(len(paths)) if (index[i] < FIRST_TEST_INDEX) == train]
    return sorted(chosen, key=lambda i: (labels[i], index[i]))


def _source(root: str, train: bool, frames: str = "original", fetch: bool = False) -> EventSource:
    import tonic.datasets

    folder = os.path.join(root, NAME)
    require_files(root, RECORD, "train" if train else "test", lambda: _recordings_present(folder),
                  f"<class>/*.aedat4 files in {folder}", fetch)
    cls = offline(tonic.datasets.CIFAR10DVS,
                  lambda ds: _recordings_present(ds.location_on_system),
                  lambda: missing(root))
    dataset = cls(root)
    check_labels(NAME, dataset.targets, NUM_CLASSES)
    order = split_indices(dataset.data, dataset.targets, train)
    return EventSource(dataset, order, [dataset.targets[i] for i in order], TO_FRAMES[frames])


def build(args, train: bool):
    """The fixed split; frames [10, 2, 48, 48], normalised (training: random crop first)."""
    frames = encoding(args)
    fetch = bool(getattr(args, "download", False))
    cache = cached_split(args, NAME, params(frames), train,
                         lambda root, train: _source(root, train, frames, fetch))
    steps = [Divide(255)] if frames == "original" else []  # 8-bit levels -> [0, 1], as ToTensor
    if train:
        steps.append(RandomCrop(CROP_PADDING))
    steps.append(Normalize(MEAN, STD))
    return Recordings(cache, Compose(*steps))
