"""Mixed precision: the one policy every layer follows under `torch.autocast`, and in a model
converted to a low-precision dtype (`.to(torch.bfloat16)`). docs/precision.md explains it.

Under autocast (bfloat16 on CPU or CUDA, float16 on CUDA) a layer works as nn.Linear / nn.Conv2d
do there, and keeps what the rule accumulates in float32:

- low precision (the autocast dtype): the layer's input x (cast as autocast casts nn.Linear's
  input), the current GEMM / conv W x + b, the recurrent GEMM W_rec s[t-1], and the spikes the
  layer returns (exactly 0 and 1, so the next layer's GEMM takes them as they are);
- float32: the membrane, the traces, Psi, the eligibility products (L * psi, L * trpost, ...),
  their accumulation into dW, and `.grad` (in the parameter's dtype). Under bfloat16 a backend
  may round the eligibility and dx GEMM operands to bfloat16 for tensor cores (float32
  accumulation); under float16 they stay float32, since a learning signal times a trace would
  leave float16's range (below ~6e-8 or above 65504, the GradScaler's scale included);
- the readout (accumulate=True, LeakyReadout) returns its membrane, the network's logits, in
  float32: a state the policy keeps in float32, read by the loss (which autocast runs in float32)
  and by no other layer's GEMM.

Outside autocast a layer computes in its parameters' dtype: a `.to(torch.bfloat16)` model takes
bfloat16 inputs and returns bfloat16 from every layer, the readout included (its states stay
float32 inside). float16 parameters are refused (a float16 `.grad` loses small learning signals).
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
from torch import Tensor

from .reference import state_dtype


def autocast_dtype(device_type: str) -> Optional[torch.dtype]:
    """The dtype autocast runs lower-precision ops in on this device type; None when it is off."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _autocast_applies(device_type: str, *dtypes: torch.dtype) -> Optional[torch.dtype]:
    """The autocast dtype when autocast is on and would cast these dtypes (it leaves float64 alone)."""
    low = autocast_dtype(device_type)
    return None if low is None or torch.float64 in dtypes else low


def check_input_dtype(layer: str, x: Tensor, weight: Tensor) -> None:
    """A clear TypeError unless a layer with this weight can take x (see the module docstring)."""
    if weight.dtype == torch.float16:
        raise TypeError(f"{layer}: dtype torch.float16 is not supported for the parameters: learning "
                        f"signals below float16's range (about 6e-5) would vanish from the gradients; use "
                        f"torch.bfloat16 (same range as float32) or torch.float32, or float16 mixed precision: "
                        f"torch.autocast('cuda', dtype=torch.float16) on a float32 model with a GradScaler")
    if x.dtype != weight.dtype and _autocast_applies(x.device.type, x.dtype, weight.dtype) is None:
        raise TypeError(f"{layer}: input x has dtype {x.dtype} but the layer's weight has {weight.dtype} "
                        f"(outside torch.autocast a layer computes in its parameters' dtype)")


def compute_dtype(x: Tensor, weight: Tensor) -> torch.dtype:
    """The dtype a layer runs its current GEMM / conv in and returns its spikes in: the autocast
    dtype under autocast, else the parameters' dtype."""
    return _autocast_applies(x.device.type, x.dtype, weight.dtype) or weight.dtype


def cast_input(x: Tensor, weight: Tensor) -> Tensor:
    """x in the layer's compute dtype (differentiable: dx comes back in x's own dtype)."""
    return x.to(compute_dtype(x, weight))


def like_input(x: Tensor, *params: Optional[Tensor]) -> tuple:
    """The parameters (the standardized weight, the bias) in x's dtype, for the forward GEMMs.
    (The backward takes the parameters as they are, so that dW comes out in their dtype.)"""
    return tuple(p if p is None else p.to(x.dtype) for p in params)


def readout_dtype(weight: Tensor) -> torch.dtype:
    """What the readout returns: float32 (the state dtype) under autocast, else its parameters' dtype."""
    if _autocast_applies(weight.device.type, weight.dtype) is not None:
        return state_dtype(weight.dtype)
    return weight.dtype


def without_autocast(method):
    """For an autograd Function's forward / backward: run with autocast off on the device of the
    first tensor argument. The policy casts explicitly (cast_input, like_input); autocast inside
    would recast the backends' float32 GEMMs (the eligibility accumulation) and the compiled ops'
    internal ones behind their backs."""

    @functools.wraps(method)
    def run(ctx, *args):
        for arg in args:
            if isinstance(arg, Tensor):
                if torch.is_autocast_enabled(arg.device.type):
                    with torch.autocast(arg.device.type, enabled=False):
                        return method(ctx, *args)
                break
        return method(ctx, *args)
    return run
