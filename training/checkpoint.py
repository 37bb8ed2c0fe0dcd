"""Checkpoints: written atomically (temporary file in the same folder, then os.replace), holding
everything an exact resume needs (model, optimizer, scheduler, epoch, RNG states, best accuracy,
histories)."""
from __future__ import annotations

import os
import random
import tempfile

import numpy as np
import torch

from .errors import CheckpointError

RESUME_NAME = "checkpoint.pth.tar"


def best_name(trial: int) -> str:
    """The original's per-trial best-model file name."""
    return f"trial_{trial}_model_best.pth.tar"


def save_atomic(state: dict, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load(path: str, device="cpu") -> dict:
    if not os.path.isfile(path):
        raise CheckpointError(f"--resume: no checkpoint file at {path!r}")
    return torch.load(path, map_location=device, weights_only=False)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
