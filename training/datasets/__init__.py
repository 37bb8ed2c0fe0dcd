"""The paper's three datasets (docs/rule.md section 7), read through tonic, framed once and cached on disk.

What each dataset is (classes, input shape, steps, files, archives) is stated once, in `catalog`.
Each module exposes `build(args, train) -> torch.utils.data.Dataset` of (frames float32 [T, ...],
int label). `args` needs `data_path` and optionally `workers` (processes used to compute the
cache), `frames` (the --frames encoding, default "original") and `download` (--download). Missing
files raise DatasetFilesMissing, whose message alone tells the user what to put where.
"""
from __future__ import annotations

from . import catalog, cifar10dvs, dvs_gesture, shd
from .errors import DatasetDownloadFailed, DatasetFilesMissing

# keyed by the original's --dataset values
DATASETS = {shd.NAME: shd, dvs_gesture.NAME: dvs_gesture, cifar10dvs.NAME: cifar10dvs}


def build(name: str, args, train: bool):
    """Dataset `name` (a key of DATASETS) for the training or test split."""
    if name not in DATASETS:
        raise ValueError(f"--dataset must be one of {sorted(DATASETS)}, got {name!r}")
    return DATASETS[name].build(args, train)


__all__ = ["DATASETS", "DatasetDownloadFailed", "DatasetFilesMissing", "build", "catalog", "cifar10dvs",
           "dvs_gesture", "shd"]
