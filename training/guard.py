"""Divergence detection without a host sync per step.

Each batch adds a few device ops (is its output finite? if not and nothing was recorded yet,
record the batch index); the host reads the record once per print interval and at the end of an
epoch, together with a check that every weight is finite. The weights check also runs when a batch
raises, because non-finite weights make later layers fail with errors about something else.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


class NonFinite(Exception):
    """The first non-finite batch of an epoch (1-based), or the epoch's end if only the weights
    show it; the runner turns it into RunDiverged naming trial, epoch and batch."""

    def __init__(self, batch: Optional[int], what: str):
        super().__init__(f"{what} at batch {batch}" if batch else what)
        self.batch, self.what = batch, what


def weights_finite(model: torch.nn.Module) -> Tensor:
    """A 0-d bool tensor on the model's device: every parameter is finite (no sync)."""
    params = [p.detach() for p in model.parameters()]
    if not params:
        return torch.tensor(True)
    return torch.stack([p.isfinite().all() for p in params]).all()


class FiniteGuard:
    """Records, on the device, the first batch whose output (prediction or loss) was non-finite."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.model = model
        self.first_bad = torch.zeros((), dtype=torch.int64, device=device)  # 0: none yet

    def observe(self, batch: int, *outputs: Tensor) -> None:
        """Batch `batch` (1-based) produced `outputs`: device ops only."""
        bad = ~torch.stack([o.detach().isfinite().all() for o in outputs]).all()
        self.first_bad = torch.where(bad & (self.first_bad == 0), batch, self.first_bad)

    def check(self, batch: int) -> None:
        """One host read: raise NonFinite if an output or a weight was non-finite by batch `batch`."""
        first_bad, weights_ok = torch.stack([self.first_bad, weights_finite(self.model).to(
            self.first_bad.device, torch.int64)]).tolist()
        if first_bad:
            raise NonFinite(first_bad, "the loss became non-finite (NaN or inf)")
        if not weights_ok:
            raise NonFinite(batch, "the weights became non-finite (NaN or inf)")

    def explain_failure(self, batch: int) -> None:
        """A batch raised: a non-finite loss recorded before it, or else non-finite weights, is the
        real cause (e.g. a NaN in the data made them NaN); say so instead."""
        first_bad = int(self.first_bad)
        if first_bad:
            raise NonFinite(first_bad, "the loss became non-finite (NaN or inf)")
        if not bool(weights_finite(self.model)):
            raise NonFinite(batch, "the weights became non-finite (NaN or inf)")
