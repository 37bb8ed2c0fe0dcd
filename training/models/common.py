"""Pieces every architecture shares: the --activation table, initialisation, pooling over
[B, ...] or [T, B, ...] inputs, and the DFA / sDFA feedback hooks (docs/rule.md section 5)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch import Tensor

from stllr_kernels.nn import Conv2dSTLLR, LinearSTLLR


@dataclass(frozen=True)
class Activation:
    """What one of the original's --activation names means here (docs/rule.md section 3)."""

    psi: str                      # Psi of the S-TLLR layers and surrogate of the BPTT LIF
    post: str = "psi"             # "spike": the post trace accumulates spikes (GradNormOut)
    layer_default: bool = False   # S-TLLR layers keep their own default Psi (the original's None)


# The one table from the original's `--activation` names to the Psi table of stllr_kernels.psi.
# Read from the original's surrogate_gradients.py: LinearSpike (the default) is passed to the
# S-TLLR layers as None, i.e. each layer keeps its default (conv: triangle, linear: fast_sigmoid),
# and to the BPTT LIF as the triangle. Surrogate is 0.3*max(0, 1-|u|/0.6), a triangle of
# half-width 0.6: the triangle is the nearest entry. STLLRLinearRecGradNorm computes
# 0.3*max(0, 1-|u|) (the triangle), STLLRConv2dGradExp computes 1/(1+100|u|)^2 (fast_sigmoid).
ACTIVATIONS = {
    "Surrogate": Activation("triangle"),
    "LinearSpike": Activation("triangle", layer_default=True),
    "STLLRConv2dGradNormOut": Activation("triangle", post="spike"),
    "STLLRConv2dGradExp": Activation("fast_sigmoid"),
    "STLLRConv2dSigmoid": Activation("sigmoid"),
    "GradSigmoid": Activation("sigmoid"),
    "STLLRLinearRecGradNorm": Activation("triangle"),
    "STLLRLinearRecGradSigmoid": Activation("sigmoid"),
}
DEFAULT_ACTIVATION = "LinearSpike"


def stllr_psi(activation: str) -> dict:
    """Keyword arguments `psi`, `post` for an S-TLLR layer under --activation."""
    act = ACTIVATIONS[activation]
    return {"psi": None if act.layer_default else act.psi, "post": act.post}


def surrogate_psi(activation: str) -> str:
    """The surrogate gradient of a BPTT LIF under --activation."""
    return ACTIVATIONS[activation].psi


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal (fan_out for convs, fan_in for linears), zero biases (docs/rule.md section 7)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, Conv2dSTLLR)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.Linear, LinearSTLLR)):
            nn.init.kaiming_normal_(m.weight)
        else:
            continue
        if m.bias is not None:
            nn.init.zeros_(m.bias)


def time_distributed(fn, x: Tensor, feature_dims: int) -> Tensor:
    """Apply a stateless op made for [B, *features] to [B, ...] or to [T, B, ...] (flattened)."""
    if x.dim() == feature_dims + 2:
        out = fn(x.flatten(0, 1))
        return out.view(x.shape[0], x.shape[1], *out.shape[1:])
    return fn(x)


def make_pool(name: str) -> nn.Module:
    if name == "MAX":
        return nn.MaxPool2d(2, 2)
    if name == "AVG":
        return nn.AvgPool2d(2, 2)
    raise ValueError(f"pooling: expected 'MAX' or 'AVG', got {name!r}")


# ----------------------------------------------------------------------------- DFA / sDFA

FEEDBACK_MODES = ("BP", "DFA", "sDFA")


def one_hot(labels: Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """[..., num_classes] one-hot rows by a compare against an arange: F.one_hot reads labels.min()
    and .max() to the host to validate them, a synchronization in every batch."""
    return (labels.unsqueeze(-1) == torch.arange(num_classes, device=labels.device)).to(dtype)


class Feedback:
    """The learning-signal source shared by a model's hooks.

    Under DFA the hook at a layer replaces the gradient coming from above by
    `(softmax(logits) - onehot(y)) @ B` (sDFA: its sign), B fixed and random. The model calls
    `observe(logits)` after each forward (one step [B, C] or a sequence [T, B, C]); the engine
    calls `set_target(labels)` before each sequence. In a sequence, steps before `loss_steps`
    get no signal, as the S-TLLR sequence Functions require.
    """

    def __init__(self, mode: str, num_classes: int):
        if mode not in FEEDBACK_MODES:
            raise ValueError(f"feedback_mode: expected one of {list(FEEDBACK_MODES)}, got {mode!r}")
        self.mode, self.num_classes = mode, num_classes
        self.onehot: Optional[Tensor] = None
        self.error: Optional[Tensor] = None
        # The signal is a sum over the batch, not a mean; a distributed run sets this to the number
        # of processes so that DDP's average of the per-process sums is the global batch's sum.
        self.signal_scale = 1.0

    @property
    def active(self) -> bool:
        return self.mode != "BP"

    def set_target(self, labels: Optional[Tensor]) -> None:
        self.error = None
        if labels is None:
            self.onehot = None
        elif labels.dim() == 1:
            self.onehot = one_hot(labels, self.num_classes)
        else:  # already one-hot (--label-encoding one-hot)
            self.onehot = labels.float()

    def observe(self, logits: Tensor, loss_steps: Optional[int] = None) -> None:
        if not self.active or not logits.requires_grad or self.onehot is None:
            return
        with torch.no_grad():
            err = torch.softmax(logits.float(), dim=-1) - self.onehot.to(logits.device)
            if self.mode == "sDFA":
                err = torch.sign(err)
            if self.signal_scale != 1.0:
                err = err * self.signal_scale
            if logits.dim() == 3 and loss_steps is not None:
                err[: max(0, logits.shape[0] - int(loss_steps))] = 0
        self.error = err


class _FeedbackFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, matrix, feedback: Feedback):
        ctx.feedback, ctx.shape = feedback, x.shape
        ctx.save_for_backward(matrix)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        (matrix,) = ctx.saved_tensors
        err = ctx.feedback.error
        if err is None:
            raise RuntimeError("DFA hook: no learning signal; the model must call feedback.observe(logits)")
        signal = err.to(matrix.dtype) @ matrix.flatten(1)
        return signal.view(ctx.shape).to(grad.dtype), None, None


@torch.compiler.disable
def _project_error_in_backward(x: Tensor, matrix: Tensor, feedback: Feedback) -> Tensor:
    """The hook's Function, run outside torch.compile's graphs (a graph break under DFA/sDFA): its
    backward reads the error that the model observes after this forward, when the backward runs,
    which a backward traced ahead of time cannot."""
    return _FeedbackFn.apply(x, matrix, feedback)


class FeedbackHook(nn.Module):
    """Identity in the forward; under DFA/sDFA the backward is the projected output error.

    `shape` is the hooked activation's shape without batch (and time); B is [classes, *shape], a
    buffer (saved with the model, never trained), drawn as the original draws it: kaiming-uniform
    with its defaults (a = 0, fan_in = prod(shape)), U(-sqrt(6 / fan_in), sqrt(6 / fan_in)).
    """

    def __init__(self, feedback: Feedback, shape):
        super().__init__()
        self.feedback = feedback
        if feedback.active:
            self.register_buffer("matrix", nn.init.kaiming_uniform_(torch.empty(feedback.num_classes, *shape)))
        else:
            self.matrix = None

    def forward(self, x: Tensor) -> Tensor:
        if self.matrix is None or not torch.is_grad_enabled() or not x.requires_grad:
            return x
        return _project_error_in_backward(x, self.matrix, self.feedback)

    def extra_repr(self) -> str:
        return f"mode={self.feedback.mode}"
