"""The interface every architecture implements, so that the engine treats them all alike.

A model takes one time step x [B, *input_shape] -> logits [B, classes], or a whole sequence
x [T, B, *input_shape] with `loss_steps` D (the final steps that get a loss) -> logits [T, B, classes].
S-TLLR models run the sequence through the layers' time-fused mode; the gradients equal those of
stepping (SPEC section 6). BPTT models step through time inside (the graph spans all steps).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from stllr_kernels.nn import reset_states

from .common import Feedback


class SpikingModel(nn.Module):
    input_shape: tuple = ()
    num_classes: int = 0
    uses_stllr: bool = True      # False for the BPTT baselines (need --training-mode bptt)

    def __init__(self, feedback_mode: str = "BP"):
        super().__init__()
        self.feedback = Feedback(feedback_mode, self.num_classes)

    def reset_states(self) -> None:
        reset_states(self)

    def is_sequence(self, x: Tensor) -> bool:
        n = len(self.input_shape)
        if x.dim() not in (n + 1, n + 2) or tuple(x.shape[x.dim() - n:]) != tuple(self.input_shape):
            raise ValueError(f"{type(self).__name__}: input must be [B, {self.input_shape}] or "
                             f"[T, B, {self.input_shape}], got {tuple(x.shape)}")
        return x.dim() == n + 2

    def forward(self, x: Tensor, loss_steps: Optional[int] = None) -> Tensor:
        sequence = self.is_sequence(x)
        if sequence and not self.uses_stllr:
            return torch.stack([self.step(x[t], None) for t in range(x.shape[0])])
        logits = self.step(x, loss_steps if sequence else None)
        self.feedback.observe(logits, loss_steps)
        return logits

    def step(self, x: Tensor, loss_steps: Optional[int]) -> Tensor:
        """One step [B, ...] (loss_steps None) or, for S-TLLR models, a sequence [T, B, ...]."""
        raise NotImplementedError
