"""--precision: how a run uses torch.autocast and a GradScaler, under Lightning's names.

    32          float32 throughout (the default)
    bf16-mixed  the model's forward under torch.autocast(dtype=torch.bfloat16), CPU or CUDA
    16-mixed    the model's forward under torch.autocast(dtype=torch.float16), CUDA only, with a
                torch.amp.GradScaler scaling the loss (float16's range is too narrow for the
                learning signals otherwise)

The layers' own policy (what runs in low precision, what stays float32) is stllr_kernels.precision.
Only the model's forward runs under autocast; the loss takes its logits in float32 (`full`), and
the backward and the optimizer step run outside autocast, as torch's AMP recipe says.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ContextManager, Optional

import torch
from torch import Tensor

# --precision value -> autocast dtype (absent: no autocast)
AUTOCAST_DTYPES = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
# --precision values that need a GradScaler, and the device types they run on
SCALED = frozenset({"16-mixed"})
CUDA_ONLY = frozenset({"16-mixed"})


def problem(name: str, device_type: str) -> Optional[str]:
    """None if --precision `name` can run on `device_type`, else why not (one sentence)."""
    if name in CUDA_ONLY and device_type != "cuda":
        return (f"--precision {name} needs a CUDA device (float16 autocast with a GradScaler); on "
                f"{device_type} use --precision bf16-mixed or 32")
    return None


@dataclass(frozen=True)
class Precision:
    """The --precision of a run on one device type."""

    name: str = "32"
    device_type: str = "cpu"

    def autocast(self) -> ContextManager:
        """The context the model's forward runs in."""
        dtype = AUTOCAST_DTYPES.get(self.name)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=dtype)

    def make_scaler(self) -> Optional["torch.amp.GradScaler"]:
        """A fresh GradScaler for the runs that need one (its state goes into the checkpoint)."""
        return torch.amp.GradScaler(self.device_type) if self.name in SCALED else None


def full(logits: Tensor) -> Tensor:
    """Logits in float32 when they come in a lower precision (the prediction sums over time
    steps and the loss are taken in float32); any other dtype unchanged."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits
