"""Datasets of `--dataset` and the loaders that batch them time-major.

Every dataset yields `(frames [T, *frame_shape] float32, label int)`. The three paper datasets
live in `training.datasets.<module>` (each exposing `build(args, train: bool) -> Dataset`; what
each dataset is comes from `training.datasets.catalog`) and are imported only when asked for; `Digits` is embedded (scikit-learn's 8x8 digits, no download).
Batches are `(x [T, B, *frame_shape], labels [B])`, sequences of unequal length zero-padded at
the end to the longest in the batch.
"""
from __future__ import annotations

import importlib
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .datasets.catalog import CATALOG


# --dataset -> its catalog record (classes, frame shape, steps, pipeline module, files)
DATASETS = CATALOG


def build_dataset(args, train: bool) -> Dataset:
    spec = DATASETS[args.dataset]
    if spec.module is None:
        return DigitsSpikes(train, steps=DIGITS_STEPS, seed=args.seed)
    return importlib.import_module(f"training.datasets.{spec.module}").build(args, train)


# ----------------------------------------------------------------------------- Digits

DIGITS_STEPS = CATALOG["Digits"].steps["original"]
DIGITS_TEST_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0  # the train/test split is fixed, whatever --seed says


class DigitsSpikes(Dataset):
    """scikit-learn's 1,797 8x8 digits, each pixel a Bernoulli spike train of rate pixel/16.

    The split (80/20, stratified by a fixed permutation) never changes. Training samples draw
    fresh spikes on every access (torch's global RNG: reproducible from --seed, restored by
    --resume); test samples are encoded once with a fixed generator, so evaluation is deterministic.
    """

    def __init__(self, train: bool, steps: int = DIGITS_STEPS, seed: int = 0):
        from sklearn.datasets import load_digits  # ships its data inside the package

        digits = load_digits()
        images = torch.tensor(digits.data, dtype=torch.float32) / 16.0
        labels = torch.tensor(digits.target, dtype=torch.int64)
        order = _stratified_split(digits.target, DIGITS_TEST_FRACTION, DIGITS_SPLIT_SEED)
        idx = torch.tensor(order[0] if train else order[1])
        self.rates, self.labels, self.steps, self.train = images[idx], labels[idx], steps, train
        self.fixed = None
        if not train:
            gen = torch.Generator().manual_seed(seed)
            self.fixed = (torch.rand(len(idx), steps, 64, generator=gen) < self.rates[:, None]).float()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        if self.fixed is not None:
            return self.fixed[i], int(self.labels[i])
        return (torch.rand(self.steps, 64) < self.rates[i]).float(), int(self.labels[i])


def _stratified_split(targets, test_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(targets):
        members = rng.permutation(np.flatnonzero(targets == c))
        n_test = int(round(len(members) * test_fraction))
        test.extend(members[:n_test].tolist())
        train.extend(members[n_test:].tolist())
    return sorted(train), sorted(test)


# ----------------------------------------------------------------------------- batching

def pad_collate(batch):
    """[(frames [T_i, ...], label)] -> (x [T_max, B, ...] zero-padded at the end, labels [B])."""
    frames = [torch.as_tensor(f, dtype=torch.float32) for f, _ in batch]
    labels = torch.tensor([int(y) for _, y in batch], dtype=torch.int64)
    steps = max(f.shape[0] for f in frames)
    x = frames[0].new_zeros((steps, len(frames), *frames[0].shape[1:]))
    for b, f in enumerate(frames):
        x[: f.shape[0], b] = f
    return x, labels


def make_loader(dataset: Dataset, batch_size: int, train: bool, workers: int,
                generator: Optional[torch.Generator] = None, sampler=None) -> DataLoader:
    """Shuffled (by `generator`, for exact resumes) when training; time-major padded batches."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=train and sampler is None,
                      sampler=sampler, num_workers=workers, collate_fn=pad_collate,
                      generator=generator, drop_last=False, pin_memory=False,
                      persistent_workers=False)
