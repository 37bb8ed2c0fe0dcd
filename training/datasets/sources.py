"""Event recordings read through tonic, offline, in a fixed order.

tonic's dataset classes download their archive whenever it is absent, even when the extracted files
are already on disk. `offline()` makes a subclass (same class name, so the same folder under
--data-path) whose presence check looks at the extracted files only and whose download raises
DatasetFilesMissing at once. `require_files()` is the one place that decides, before tonic is
asked, whether a split's files are there, fetches them under --download, or raises the message.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import numpy as np

from . import download
from .cache import cache_dir, cached
from .catalog import DEFAULT_ENCODING, check_encoding
from .errors import DatasetFilesMissing, archive_hint


def offline(tonic_class: type, is_present: Callable[[object], bool], missing: Callable[[], DatasetFilesMissing]):
    """Subclass `tonic_class` that never downloads: `is_present(self)` replaces its check and a
    download attempt raises `missing()`."""

    def _check_exists(self):
        return is_present(self)

    def download(self):
        raise missing()

    # the class name is the folder tonic reads under save_to: keep it
    return type(tonic_class.__name__, (tonic_class,), {"_check_exists": _check_exists, "download": download})


class EventSource:
    """Recording i of a tonic dataset (in `order`), turned into a numpy frame array by `to_frames`.

    This is the expensive path (file read + event binning) that the frame cache runs once per
    recording; `label(i)` answers from the index without reading any events.
    """

    def __init__(self, dataset, order: Sequence[int], labels: Sequence[int], to_frames: Callable):
        if len(order) != len(labels):
            raise ValueError(f"order ({len(order)}) and labels ({len(labels)}) differ in length")
        self.dataset = dataset
        self.order = list(order)
        self.labels = [int(label) for label in labels]
        self.to_frames = to_frames

    def __len__(self) -> int:
        return len(self.order)

    def label(self, i: int) -> int:
        return self.labels[i]

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        events, target = self.dataset[self.order[i]]
        if int(target) != self.labels[i]:
            raise RuntimeError(f"recording {self.order[i]}: label {target} read, {self.labels[i]} indexed")
        return self.to_frames(events), self.labels[i]


def data_root(args) -> str:
    """--data-path, checked: the folder that holds each dataset's folder (and the frame cache)."""
    root = getattr(args, "data_path", None)
    if not root:
        raise ValueError("--data-path is required: the folder holding the dataset folders (SHD/, DVSGesture/, CIFAR10DVS/)")
    return os.path.expanduser(str(root))


def encoding(args) -> str:
    """--frames: "original" (the original code's tensors, docs/rule.md section 7.1) or "counts"."""
    return check_encoding(getattr(args, "frames", None) or DEFAULT_ENCODING)


def require_files(root: str, record, split: str, present: Callable[[], bool], what: str,
                  fetch: bool = False) -> None:
    """Return when `present()` (and no download was cut short in the dataset's folder); else,
    with `fetch` (--download), download and extract the split's archives and check again; else
    raise DatasetFilesMissing naming `what` was looked for."""
    folder = os.path.join(root, record.folder)
    if present() and not download.interrupted(folder):
        return
    if fetch:
        download.fetch(record, root, split)
        if present() and not download.interrupted(folder):
            return
        raise DatasetFilesMissing.of(record, root, f"the downloaded archives did not give {what}")
    if download.interrupted(folder):
        detail = (f"an interrupted --download left {folder} incomplete: pass --download to finish it, "
                  f"or delete {folder}")
    else:
        detail = f"no {what}" + archive_hint(folder, [a.filename for a in record.archives_for(split)])
    raise DatasetFilesMissing.of(record, root, detail)


def loader_workers(args) -> int:
    workers = int(getattr(args, "workers", 0) or 0)
    if workers < 0:
        raise ValueError(f"--workers must be >= 0, got {workers}")
    return workers


def check_labels(dataset: str, labels: Sequence[int], num_classes: int) -> None:
    bad = sorted({int(v) for v in labels if not 0 <= int(v) < num_classes})
    if bad:
        raise ValueError(f"{dataset}: labels {bad[:5]} outside 0..{num_classes - 1}")


def cached_split(args, name: str, params: dict, train: bool, make_source):
    """The frame cache of one split of dataset `name` under --data-path, built from
    `make_source(root, train)` (with --workers processes) only when it is not complete yet."""
    root = data_root(args)
    split = "train" if train else "test"
    return cached(cache_dir(root, name, split, params), params, lambda: make_source(root, train),
                  loader_workers(args), f"{name} {split}")
