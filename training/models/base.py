"""The interface every architecture implements, so that the engine treats them all alike.

Two explicit modes (docs/rule.md section 6):
  - `model.step(x)`: one time step x [B, *input_shape] -> logits [B, classes]; the states carry
    over to the next call until `reset_states()`.
  - `model.sequence(x, loss_steps)`: a whole sequence x [T, B, *input_shape] -> logits
    [T, B, classes], of which the final `loss_steps` steps get a loss (0: evaluation). S-TLLR
    models run it through the layers' time-fused mode, with the gradients of stepping; BPTT
    models step through time inside (the graph spans all steps).
Both go through `forward` (so that hooks and DistributedDataParallel see every call), which
accepts exactly these two forms: a sequence without `loss_steps` is an error, never a silent
per-step call. Each mode keeps one dropout mask per sequence.

An architecture implements `forward_step(x)` and, if it has a faster path than stepping,
`forward_sequence(x, loss_steps)`; neither checks its input (the public calls do).
"""
from __future__ import annotations

from numbers import Integral
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from stllr_kernels.nn import reset_states

from .common import Feedback

SEQUENCE_HELP = ("pass loss_steps, the number of final time steps that get a learning signal "
                 "(0 to evaluate; T for all): model.sequence(x, loss_steps); or call model.step(x[t]) "
                 "once per time step")


class SpikingModel(nn.Module):
    input_shape: tuple = ()
    num_classes: int = 0

    def __init__(self, feedback_mode: str = "BP"):
        super().__init__()
        self.feedback = Feedback(feedback_mode, self.num_classes)

    def reset_states(self) -> None:
        reset_states(self)

    # ------------------------------------------------------------------ the two public modes

    def step(self, x: Tensor) -> Tensor:
        """One time step x [B, *input_shape] -> logits [B, classes]."""
        if self._is_sequence(x):
            raise ValueError(f"{type(self).__name__}.step: x must be one time step [B, {self.input_shape}], "
                             f"got a sequence {tuple(x.shape)}; {SEQUENCE_HELP}")
        return self(x)

    def sequence(self, x: Tensor, loss_steps: Optional[int] = None) -> Tensor:
        """A whole sequence x [T, B, *input_shape] -> logits [T, B, classes]; the final
        `loss_steps` steps get a learning signal (required: 0 to evaluate, T for all)."""
        if not self._is_sequence(x):
            raise ValueError(f"{type(self).__name__}.sequence: x must be a sequence [T, B, {self.input_shape}], "
                             f"got {tuple(x.shape)}; for one time step call model.step(x)")
        if loss_steps is None:
            raise ValueError(f"{type(self).__name__}.sequence: loss_steps is required; {SEQUENCE_HELP}")
        return self(x, loss_steps)

    def forward(self, x: Tensor, loss_steps: Optional[int] = None) -> Tensor:
        """model(x) is one step; model(x, loss_steps) a sequence. Prefer step() / sequence()."""
        if not self._is_sequence(x):
            if loss_steps is not None:
                raise ValueError(f"{type(self).__name__}: loss_steps={loss_steps} given with one time step "
                                 f"{tuple(x.shape)}; a step takes no loss_steps: call model.step(x)")
            logits = self.forward_step(x)
            self.feedback.observe(logits)
            return logits
        if loss_steps is None:
            raise ValueError(f"{type(self).__name__}: got a whole sequence {tuple(x.shape)} without "
                             f"loss_steps; {SEQUENCE_HELP}")
        if isinstance(loss_steps, bool) or not isinstance(loss_steps, Integral) or not 0 <= loss_steps <= x.shape[0]:
            raise ValueError(f"{type(self).__name__}: loss_steps must be an int in [0, T={x.shape[0]}], "
                             f"got {loss_steps!r}")
        logits = self.forward_sequence(x, loss_steps)
        self.feedback.observe(logits, loss_steps)
        return logits

    # ------------------------------------------------------------------ what an architecture implements

    def forward_step(self, x: Tensor) -> Tensor:
        """One step [B, *input_shape] -> [B, classes] (input already checked)."""
        raise NotImplementedError

    def forward_sequence(self, x: Tensor, loss_steps: int) -> Tensor:
        """A sequence [T, B, ...] -> [T, B, classes]. Default: forward_step at each step (BPTT)."""
        return torch.stack([self.forward_step(x[t]) for t in range(x.shape[0])])

    def _is_sequence(self, x: Tensor) -> bool:
        n = len(self.input_shape)
        if x.dim() not in (n + 1, n + 2) or tuple(x.shape[x.dim() - n:]) != tuple(self.input_shape):
            raise ValueError(f"{type(self).__name__}: input must be [B, {self.input_shape}] or "
                             f"[T, B, {self.input_shape}], got {tuple(x.shape)}")
        return x.dim() == n + 2
