"""The `cpu` and `cuda` backends: the compiled extension of csrc/, reached as torch.ops.stllr.*.

`setup.py` builds it ahead of time into `stllr_kernels._C`; importing that module loads the library,
which registers the ops with the dispatcher (CPU kernels always, CUDA kernels when it was built with
nvcc). The import is guarded: without the compiled module (no compiler, a failed build, the build
switched off) this module still imports and `unavailable_reason` says why and how to rebuild.
STLLR_NO_EXTENSION=1 at run time leaves a built module unloaded too (the GPU check sets it after a
failed build, so that an older build in the tree is not checked in its place).

The wrappers below have the signatures of `stllr_kernels.reference`; they turn the RuleConfig into
the integer codes of the op schemas (psi.py's tables: PSI_CODES, and the positions in RESET_MODES and
POST_MODES, as documented at the top of csrc/stllr.h). Fake (meta) kernels registered here give the
output shapes to torch.compile.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch

from .. import reference
from ..config import RuleConfig
from ..psi import POST_MODES, PSI_CODES, RESET_MODES

REBUILD_COMMAND = "pip install --no-build-isolation -e ."
# Ops whose C++ CPU kernel measured slower than the reference (benchmarks/results/cpu_ops.md): on CPU
# tensors this module runs the reference for them; the compiled op stays in use on CUDA and is
# reachable as `<name>_compiled` (what the tests and the benchmark check).
CPU_REFERENCE_FALLBACK = frozenset({"conv_backward"})
BUILD_ERROR_FILE = Path(__file__).resolve().parents[2] / "csrc" / "build-error.txt"

_SWITCHED_OFF = os.environ.get("STLLR_NO_EXTENSION", "0") not in ("", "0")
try:
    if _SWITCHED_OFF:
        raise ImportError("STLLR_NO_EXTENSION is set")
    from .. import _C  # noqa: F401  (loading the library registers torch.ops.stllr)
    _LOAD_ERROR: Optional[str] = None
except Exception as exc:  # no compiled module, or one that cannot load: never break the import
    _C = None
    _LOAD_ERROR = f"{type(exc).__name__}: {exc}"

Tensor = torch.Tensor


def _missing_extension_reason() -> str:
    if _SWITCHED_OFF:
        return "the C++ extension is switched off: STLLR_NO_EXTENSION is set (unset it to use stllr_kernels._C)"
    if (_LOAD_ERROR or "").startswith(("ImportError: cannot import name '_C'", "ModuleNotFoundError")):
        why = "the C++ extension stllr_kernels._C is not built"
    else:
        why = f"the C++ extension stllr_kernels._C failed to load ({_LOAD_ERROR})"
    if BUILD_ERROR_FILE.exists():
        first = BUILD_ERROR_FILE.read_text(errors="replace").splitlines()[:1]
        why += f"; its last build failed ({first[0] if first else 'no message'}; log: {BUILD_ERROR_FILE})"
    return (f"{why}. Rebuild it from the repository root with `{REBUILD_COMMAND}` (needs a C++ "
            f"compiler, plus nvcc and a CUDA build of torch for the cuda backend; "
            f"STLLR_NO_EXTENSION must be unset)")


def unavailable_reason(name: str, device_type: str) -> Optional[str]:
    """None if backend `name` ("cpu" or "cuda") can run on `device_type`, else why not."""
    if name not in ("cpu", "cuda"):
        return f"backends.cpu_cuda (the C++/CUDA extension) serves 'cpu' and 'cuda', not {name!r}"
    if device_type != name:
        return f"the {name} backend runs on {name} tensors only, not on {device_type}"
    if _C is None:
        return _missing_extension_reason()
    if name == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA GPU is visible to torch"
        if not torch._C._dispatch_has_kernel_for_dispatch_key("stllr::lif_step", "CUDA"):
            return (f"the extension was built without its CUDA kernels (torch without CUDA, or no nvcc "
                    f"at build time); rebuild it with `{REBUILD_COMMAND}` where both are present")
    return None


def _codes(cfg: RuleConfig) -> tuple[int, int, int]:
    return PSI_CODES[cfg.psi], RESET_MODES.index(cfg.reset), POST_MODES.index(cfg.post)


# ----------------------------------------------------------------------------- ops (reference signatures)

def lif_step(current: Tensor, v: Tensor, trpost: Tensor, beta: Tensor, theta: Tensor, cfg: RuleConfig):
    return tuple(torch.ops.stllr.lif_step(current, v, trpost, beta, theta, cfg.lambda_post, *_codes(cfg)))


def pre_trace(trpre: Tensor, x: Tensor, lambda_pre: float) -> Tensor:
    return torch.ops.stllr.pre_trace(trpre, x, float(lambda_pre))


def lif_sequence(currents: Tensor, v: Tensor, trpost: Tensor, beta: Tensor, theta: Tensor,
                 cfg: RuleConfig, save_from: int):
    return tuple(torch.ops.stllr.lif_sequence(currents, v, trpost, beta, theta, cfg.lambda_post,
                                              *_codes(cfg), save_from))


def trace_sequence(x: Tensor, trace: Tensor, decay: float, save_from: int):
    return tuple(torch.ops.stllr.trace_sequence(x, trace, float(decay), save_from))


def linear_backward(grad_s: Tensor, psi: Optional[Tensor], causal: Optional[Tensor],
                    trpost_prev: Optional[Tensor], x: Tensor, trpre: Tensor, weight: Tensor,
                    alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                    needs_bias_grad: bool = True):
    dx, dw, db = torch.ops.stllr.linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight,
                                                 float(alpha_post), float(alpha_pre),
                                                 bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None)


def standardize_backward(grad_w_hat: Tensor, normalized: Tensor, scale: Tensor, gain: Tensor):
    return tuple(torch.ops.stllr.standardize_backward(grad_w_hat, normalized, scale, gain))


def recurrent_sequence(x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta,
                       cfg: RuleConfig, save_from: int, first_traces_only: bool = False):
    return tuple(torch.ops.stllr.recurrent_sequence(
        x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta, cfg.lambda_post,
        cfg.lambda_pre, *_codes(cfg), save_from, bool(first_traces_only)))


def readout_sequence(x, weight, bias, v, trpre, beta, lambda_pre: float, save_from: int):
    return tuple(torch.ops.stllr.readout_sequence(x, weight, bias, v, trpre, beta, float(lambda_pre),
                                                  save_from))


def recurrent_backward(grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight, weight_rec,
                       alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                       needs_bias_grad: bool = True):
    dx, dw, db, dw_rec = torch.ops.stllr.recurrent_backward(
        grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight, weight_rec,
        float(alpha_post), float(alpha_pre), bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None), dw_rec


def recurrent_backward_reverse(grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first, weight,
                               weight_rec, lambda_pre: float, alpha_post: float, alpha_pre: float,
                               needs_input_grad: bool = True, needs_bias_grad: bool = True):
    dx, dw, db, dw_rec = torch.ops.stllr.recurrent_backward_reverse(
        grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first, weight, weight_rec,
        float(lambda_pre), float(alpha_post), float(alpha_pre), bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None), dw_rec


def conv_backward(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor,
                  trpre: Tensor, weight: Tensor, stride, padding, dilation, groups: int,
                  alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                  needs_bias_grad: bool = True):
    fallback = grad_s.device.type == "cpu" and "conv_backward" in CPU_REFERENCE_FALLBACK
    impl = reference.conv_backward if fallback else conv_backward_compiled
    return impl(grad_s, psi, causal, trpost_prev, x, trpre, weight, stride, padding, dilation, groups,
                alpha_post, alpha_pre, needs_input_grad, needs_bias_grad)


def conv_backward_compiled(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor,
                           trpre: Tensor, weight: Tensor, stride, padding, dilation, groups: int,
                           alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                           needs_bias_grad: bool = True):
    dx, dw, db = torch.ops.stllr.conv_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight,
                                               _pair(stride, "stride"), _pair(padding, "padding"),
                                               _pair(dilation, "dilation"), int(groups),
                                               float(alpha_post), float(alpha_pre),
                                               bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None)


def _pair(value, name: str) -> list[int]:
    values = [int(value)] * 2 if isinstance(value, int) else [int(v) for v in value]
    if len(values) != 2:
        raise ValueError(f"{name}: expected an int or a pair of ints, got {value!r}")
    return values


# ----------------------------------------------------------------------------- fake kernels

def register_fakes(namespace: str = "stllr") -> None:
    """The fake kernels of the ops under torch.ops.<namespace> (also those of the triton backend's
    custom ops, which take the same arguments: backends/triton/custom_ops.py)."""
    def register(name):
        return torch.library.register_fake(f"{namespace}::{name.split('::')[1]}")

    @register("stllr::lif_step")
    def _lif_step(current, v, trpost, beta, theta, lambda_post, psi, reset, post):
        sd = reference.state_dtype(current.dtype)
        shape = current.shape
        return (current.new_empty(shape), current.new_empty(shape, dtype=sd),
                current.new_empty(shape, dtype=sd), current.new_empty(shape, dtype=sd))

    @register("stllr::pre_trace")
    def _pre_trace(trpre, x, lambda_pre):
        return x.new_empty(x.shape, dtype=reference.state_dtype(x.dtype))

    @register("stllr::lif_sequence")
    def _lif_sequence(currents, v, trpost, beta, theta, lambda_post, psi, reset, post, save_from):
        sd = reference.state_dtype(currents.dtype)
        steps, state_shape = currents.shape[0], currents.shape[1:]
        saved = (steps - min(save_from, steps), *state_shape)
        return (currents.new_empty(currents.shape), currents.new_empty(state_shape, dtype=sd),
                currents.new_empty(state_shape, dtype=sd), currents.new_empty(saved, dtype=sd),
                currents.new_empty(saved, dtype=sd))

    @register("stllr::trace_sequence")
    def _trace_sequence(x, trace, decay, save_from):
        sd = reference.state_dtype(x.dtype)
        steps = x.shape[0]
        return (x.new_empty((steps - min(save_from, steps), *x.shape[1:]), dtype=sd),
                x.new_empty(x.shape[1:], dtype=sd))

    @register("stllr::linear_backward")
    def _linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post, alpha_pre,
                         needs_input_grad, needs_bias_grad):
        n, k = weight.shape
        dx = x.new_empty((*grad_s.shape[:-1], k)) if needs_input_grad else x.new_empty((0,))
        db = weight.new_empty((n,)) if needs_bias_grad else weight.new_empty((0,))
        return dx, weight.new_empty((n, k)), db

    @register("stllr::recurrent_sequence")
    def _recurrent_sequence(x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta,
                            lambda_post, lambda_pre, psi, reset, post, save_from, first_traces_only=False):
        sd = reference.state_dtype(x.dtype)
        steps, batch, n = x.shape[0], x.shape[1], weight_rec.shape[0]
        saved = (steps - min(save_from, steps), batch, n)
        kept = min(saved[0], 1) if first_traces_only else saved[0]  # steps whose traces are kept
        state = lambda: x.new_empty((batch, n), dtype=sd)  # noqa: E731
        return (x.new_empty((steps, batch, n)), state(), state(), x.new_empty(x.shape[1:], dtype=sd), state(),
                x.new_empty(saved, dtype=sd), x.new_empty(saved, dtype=sd),
                x.new_empty((kept, *x.shape[1:]), dtype=sd), x.new_empty(saved),
                x.new_empty((kept, batch, n), dtype=sd))

    @register("stllr::readout_sequence")
    def _readout_sequence(x, weight, bias, v, trpre, beta, lambda_pre, save_from):
        sd = reference.state_dtype(x.dtype)
        steps = x.shape[0]
        return (x.new_empty((steps, x.shape[1], weight.shape[0]), dtype=sd), x.new_empty(x.shape[1:], dtype=sd),
                x.new_empty((steps - min(save_from, steps), *x.shape[1:]), dtype=sd))

    @register("stllr::recurrent_backward")
    def _recurrent_backward(grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight,
                            weight_rec, alpha_post, alpha_pre, needs_input_grad, needs_bias_grad):
        n, k = weight.shape
        dx = x.new_empty((*grad_s.shape[:-1], k)) if needs_input_grad else x.new_empty((0,))
        db = weight.new_empty((n,)) if needs_bias_grad else weight.new_empty((0,))
        return dx, weight.new_empty((n, k)), db, weight_rec.new_empty(weight_rec.shape)

    @register("stllr::recurrent_backward_reverse")
    def _recurrent_backward_reverse(grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first,
                                    weight, weight_rec, lambda_pre, alpha_post, alpha_pre, needs_input_grad,
                                    needs_bias_grad):
        n, k = weight.shape
        dx = x.new_empty((*grad_s.shape[:-1], k)) if needs_input_grad else x.new_empty((0,))
        db = weight.new_empty((n,)) if needs_bias_grad else weight.new_empty((0,))
        return dx, weight.new_empty((n, k)), db, weight_rec.new_empty(weight_rec.shape)

    @register("stllr::standardize_backward")
    def _standardize_backward(grad_w_hat, normalized, scale, gain):
        return grad_w_hat.new_empty(grad_w_hat.shape), gain.new_empty(gain.shape)

    @register("stllr::conv_backward")
    def _conv_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, stride, padding, dilation,
                       groups, alpha_post, alpha_pre, needs_input_grad, needs_bias_grad):
        dx = x.new_empty(x.shape) if needs_input_grad else x.new_empty((0,))
        db = weight.new_empty((weight.shape[0],)) if needs_bias_grad else weight.new_empty((0,))
        return dx, weight.new_empty(weight.shape), db


if _C is not None:
    register_fakes()
