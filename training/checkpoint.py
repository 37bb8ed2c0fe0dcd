"""Checkpoints: written atomically (temporary file in the same folder, then os.replace), holding
everything an exact resume needs (model, optimizer, scheduler, epoch, RNG states, best accuracy,
histories, the run's flags), and only plain types and tensors, so they load with
`torch.load(..., weights_only=True)`: a file is never unpickled, whatever it holds.

The resume checkpoint wraps its payload with a SHA-256 of the payload's bytes, verified on load, so
a flipped bit is refused instead of trained on. Best-model files keep the original's layout
(`epoch`, `state_dict`, `best_acc1`, `optimizer`) so the original's code can read them.
"""
from __future__ import annotations

import hashlib
import io
import os
import random
import tempfile
import zipfile

import numpy as np
import torch

from .errors import CheckpointError, SavePathError

RESUME_NAME = "checkpoint.pth.tar"
FORMAT = "stllr-kernels training checkpoint"
VERSION = 2
# What a checkpoint must hold to resume a trial (a best-model or state_dict-only file lacks them).
RESUME_KEYS = ("arch", "trial", "epoch", "model", "optimizer", "scheduler", "rng", "best_acc1", "history",
               "flags")


def best_name(trial: int) -> str:
    """The original's per-trial best-model file name."""
    return f"trial_{trial}_model_best.pth.tar"


def file_mode() -> int:
    """The mode every output file gets: what open() gives under the current umask (0644 usually).
    mkstemp's 0600 would otherwise make checkpoints differ from the logs and curves beside them."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomic(path: str, write) -> None:
    """write(file) into a temporary file beside `path`, then rename over it: a crash, a Ctrl-C or a
    full disk leaves the previous file intact. OSError becomes SavePathError naming the file."""
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pth", dir=folder)
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise SavePathError(f"cannot write {path}: {exc.strerror or exc}; the previous file is kept") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def save_atomic(state: dict, path: str) -> None:
    write_atomic(path, lambda f: torch.save(state, f))


def _serialize(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


def save_checkpoint(payload: dict, path: str) -> None:
    """The resume checkpoint: the payload's bytes with their SHA-256, written atomically."""
    data = _serialize(payload)
    wrapped = {"format": FORMAT, "version": VERSION, "sha256": hashlib.sha256(data).hexdigest(),
               "payload": torch.frombuffer(bytearray(data), dtype=torch.uint8)}
    save_atomic(wrapped, path)


def load_plain(path: str, flag: str, device="cpu"):
    """torch.load with weights_only=True; any failure is one CheckpointError naming flag and file."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{flag}: no file at {path!r}")
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except (EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{flag}: {path} is truncated or not a PyTorch file ({_short(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; all mean the same
        text = str(exc)
        if "weights_only" in text or "Unsupported global" in text or "Weights only load failed" in text:
            raise CheckpointError(f"{flag}: {path} holds Python objects other than tensors and plain "
                                  "types; refused (it is never unpickled)") from None
        raise CheckpointError(f"{flag}: {path} is corrupt or not a PyTorch file ({_short(exc)})") from None


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    first = text[0].split(". ")[0][:120] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def load(path: str, device="cpu") -> dict:
    """The payload of a resume checkpoint, checksum verified; CheckpointError (one line) otherwise."""
    wrapped = load_plain(path, "--resume", "cpu")
    if not isinstance(wrapped, dict) or wrapped.get("format") != FORMAT:
        what = "a best-model or weights file" if isinstance(wrapped, dict) and "state_dict" in wrapped else \
            "not a checkpoint of python -m training"
        raise CheckpointError(f"--resume: {path} is {what} (resume from <save-path>/{RESUME_NAME})")
    if wrapped.get("version") != VERSION:
        raise CheckpointError(f"--resume: {path} is checkpoint format version {wrapped.get('version')}, "
                              f"this version reads {VERSION}")
    data = wrapped["payload"].numpy().tobytes()
    if hashlib.sha256(data).hexdigest() != wrapped.get("sha256"):
        raise CheckpointError(f"--resume: {path} is corrupt (checksum mismatch: its contents changed "
                              "after it was written)")
    try:
        payload = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"--resume: {path} is corrupt ({_short(exc)})") from None
    missing = [k for k in RESUME_KEYS if k not in payload]
    if missing:
        raise CheckpointError(f"--resume: {path} lacks {', '.join(missing)}: not a resumable checkpoint")
    return payload


def load_pretrained(path: str, device="cpu") -> dict:
    """The state_dict of --pretrained-model (a best-model file, a checkpoint or a bare state_dict)."""
    state = load_plain(path, "--pretrained-model", device)
    if isinstance(state, dict) and state.get("format") == FORMAT:
        state = load(path, device)["model"]
    elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"--pretrained-model: {path} holds no model weights (a state_dict of tensors)")
    return state


def rng_state() -> dict:
    """The RNG states as tensors and plain types (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
