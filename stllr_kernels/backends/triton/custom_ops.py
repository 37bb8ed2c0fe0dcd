"""The triton backend's ops as custom ops `torch.ops.stllr_triton.*`, which torch.compile can trace.

Dynamo cannot trace a launcher (Python that checks its arguments, allocates, picks blocks and
launches Triton kernels), so while torch.compile traces, every op of this backend is called as one
opaque custom op instead (`dispatch` in this package's __init__); eager calls go straight to the
launchers, without the dispatcher in between. Each custom op takes the arguments of the C++ op of
the same name (csrc/ops.cpp: the RuleConfig as the factors the op reads and the integer codes of
psi.py, an output not asked for as an empty tensor), so the fake kernels that give torch.compile
the output shapes are those of backends/cpu_cuda.py, registered a second time for this namespace.
The wrappers at the bottom have the signatures of `stllr_kernels.reference`.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from ...config import RuleConfig
from ...psi import POST_MODES, PSI_CODES, RESET_MODES
from .. import cpu_cuda

NAMESPACE = "stllr_triton"
_PSI_NAMES = {code: name for name, code in PSI_CODES.items()}
_launchers: dict[str, Callable] = {}  # op name -> the eager launcher (register() fills it)


def _rule(lambda_post: float, lambda_pre: float, psi: int, reset: int, post: int) -> RuleConfig:
    """The RuleConfig of a forward op's arguments; the alpha factors, which no forward op reads,
    are 0."""
    return RuleConfig(lambda_post, lambda_pre, 0.0, 0.0, _PSI_NAMES[psi], RESET_MODES[reset], POST_MODES[post])


def _or_empty(t: Optional[Tensor], like: Tensor) -> Tensor:
    """An output not asked for is an empty tensor (a custom op returns tensors only)."""
    return like.new_empty((0,)) if t is None else t


def _op(name: str):
    return torch.library.custom_op(f"{NAMESPACE}::{name}", mutates_args=(), device_types=("cpu", "cuda"))


# ----------------------------------------------------------------------------- the custom ops

@_op("lif_step")
def _lif_step(current: Tensor, v: Tensor, trpost: Tensor, beta: Tensor, theta: Tensor, lambda_post: float,
              psi: int, reset: int, post: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return _launchers["lif_step"](current, v, trpost, beta, theta, _rule(lambda_post, 0.0, psi, reset, post))


@_op("pre_trace")
def _pre_trace(trpre: Tensor, x: Tensor, lambda_pre: float) -> Tensor:
    return _launchers["pre_trace"](trpre, x, lambda_pre)


@_op("lif_sequence")
def _lif_sequence(currents: Tensor, v: Tensor, trpost: Tensor, beta: Tensor, theta: Tensor,
                  lambda_post: float, psi: int, reset: int, post: int,
                  save_from: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return _launchers["lif_sequence"](currents, v, trpost, beta, theta, _rule(lambda_post, 0.0, psi, reset, post),
                                      save_from)


@_op("trace_sequence")
def _trace_sequence(x: Tensor, trace: Tensor, decay: float, save_from: int) -> tuple[Tensor, Tensor]:
    return _launchers["trace_sequence"](x, trace, decay, save_from)


@_op("linear_backward")
def _linear_backward(grad_s: Tensor, psi: Optional[Tensor], causal: Optional[Tensor],
                     trpost_prev: Optional[Tensor], x: Tensor, trpre: Tensor, weight: Tensor, alpha_post: float,
                     alpha_pre: float, needs_input_grad: bool,
                     needs_bias_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _launchers["linear_backward"](grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post,
                                               alpha_pre, needs_input_grad, needs_bias_grad)
    return _or_empty(dx, x), dw, _or_empty(db, weight)


@_op("conv_backward")
def _conv_backward(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor, trpre: Tensor,
                   weight: Tensor, stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int],
                   groups: int, alpha_post: float, alpha_pre: float, needs_input_grad: bool,
                   needs_bias_grad: bool) -> tuple[Tensor, Tensor, Tensor]:
    dx, dw, db = _launchers["conv_backward"](grad_s, psi, causal, trpost_prev, x, trpre, weight, tuple(stride),
                                             tuple(padding), tuple(dilation), groups, alpha_post, alpha_pre,
                                             needs_input_grad, needs_bias_grad)
    return _or_empty(dx, x), dw, _or_empty(db, weight)


@_op("recurrent_sequence")
def _recurrent_sequence(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_rec: Tensor, s_prev: Tensor,
                        v: Tensor, trpost: Tensor, trpre: Tensor, trrec: Tensor, beta: Tensor, theta: Tensor,
                        lambda_post: float, lambda_pre: float, psi: int, reset: int, post: int, save_from: int,
                        first_traces_only: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                          Tensor, Tensor, Tensor]:
    return _launchers["recurrent_sequence"](x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta,
                                            _rule(lambda_post, lambda_pre, psi, reset, post), save_from,
                                            first_traces_only)


@_op("readout_sequence")
def _readout_sequence(x: Tensor, weight: Tensor, bias: Optional[Tensor], v: Tensor, trpre: Tensor, beta: Tensor,
                      lambda_pre: float, save_from: int) -> tuple[Tensor, Tensor, Tensor]:
    return _launchers["readout_sequence"](x, weight, bias, v, trpre, beta, lambda_pre, save_from)


@_op("recurrent_backward")
def _recurrent_backward(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor,
                        trpre: Tensor, s_prev: Tensor, trrec_prev: Tensor, weight: Tensor, weight_rec: Tensor,
                        alpha_post: float, alpha_pre: float, needs_input_grad: bool,
                        needs_bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dw_rec = _launchers["recurrent_backward"](
        grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight, weight_rec, alpha_post, alpha_pre,
        needs_input_grad, needs_bias_grad)
    return _or_empty(dx, x), dw, _or_empty(db, weight), dw_rec


@_op("recurrent_backward_reverse")
def _recurrent_backward_reverse(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor,
                                trpre_first: Tensor, s_prev: Tensor, trrec_first: Tensor, weight: Tensor,
                                weight_rec: Tensor, lambda_pre: float, alpha_post: float, alpha_pre: float,
                                needs_input_grad: bool,
                                needs_bias_grad: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    dx, dw, db, dw_rec = _launchers["recurrent_backward_reverse"](
        grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first, weight, weight_rec, lambda_pre,
        alpha_post, alpha_pre, needs_input_grad, needs_bias_grad)
    return _or_empty(dx, x), dw, _or_empty(db, weight), dw_rec


@_op("standardize_backward")
def _standardize_backward(grad_w_hat: Tensor, normalized: Tensor, scale: Tensor,
                          gain: Tensor) -> tuple[Tensor, Tensor]:
    return _launchers["standardize_backward"](grad_w_hat, normalized, scale, gain)


def register(launchers: dict[str, Callable]) -> None:
    """Give the custom ops their eager launchers (this package's ops) and the fake kernels."""
    _launchers.update(launchers)
    cpu_cuda.register_fakes(NAMESPACE)


# ----------------------------------------------------------------------------- reference signatures

_ops = getattr(torch.ops, NAMESPACE)


_codes = cpu_cuda._codes  # the RuleConfig as the integer codes of the op schemas


def lif_step(current, v, trpost, beta, theta, cfg: RuleConfig):
    return tuple(_ops.lif_step(current, v, trpost, beta, theta, cfg.lambda_post, *_codes(cfg)))


def pre_trace(trpre, x, lambda_pre: float):
    return _ops.pre_trace(trpre, x, float(lambda_pre))


def lif_sequence(currents, v, trpost, beta, theta, cfg: RuleConfig, save_from: int):
    return tuple(_ops.lif_sequence(currents, v, trpost, beta, theta, cfg.lambda_post, *_codes(cfg), save_from))


def trace_sequence(x, trace, decay: float, save_from: int):
    return tuple(_ops.trace_sequence(x, trace, float(decay), save_from))


def linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post: float, alpha_pre: float,
                    needs_input_grad: bool = True, needs_bias_grad: bool = True):
    dx, dw, db = _ops.linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, float(alpha_post),
                                      float(alpha_pre), bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None)


def conv_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, stride, padding, dilation, groups: int,
                  alpha_post: float, alpha_pre: float, needs_input_grad: bool = True, needs_bias_grad: bool = True):
    dx, dw, db = _ops.conv_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, list(stride), list(padding),
                                    list(dilation), int(groups), float(alpha_post), float(alpha_pre),
                                    bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None)


def recurrent_sequence(x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta, cfg: RuleConfig,
                       save_from: int, first_traces_only: bool = False):
    return tuple(_ops.recurrent_sequence(x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta,
                                         cfg.lambda_post, cfg.lambda_pre, *_codes(cfg), save_from,
                                         bool(first_traces_only)))


def readout_sequence(x, weight, bias, v, trpre, beta, lambda_pre: float, save_from: int):
    return tuple(_ops.readout_sequence(x, weight, bias, v, trpre, beta, float(lambda_pre), save_from))


def recurrent_backward(grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight, weight_rec,
                       alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                       needs_bias_grad: bool = True):
    dx, dw, db, dw_rec = _ops.recurrent_backward(grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev,
                                                 weight, weight_rec, float(alpha_post), float(alpha_pre),
                                                 bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None), dw_rec


def recurrent_backward_reverse(grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first, weight,
                               weight_rec, lambda_pre: float, alpha_post: float, alpha_pre: float,
                               needs_input_grad: bool = True, needs_bias_grad: bool = True):
    dx, dw, db, dw_rec = _ops.recurrent_backward_reverse(
        grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first, weight, weight_rec, float(lambda_pre),
        float(alpha_post), float(alpha_pre), bool(needs_input_grad), bool(needs_bias_grad))
    return (dx if needs_input_grad else None), dw, (db if needs_bias_grad else None), dw_rec


def standardize_backward(grad_w_hat, normalized, scale, gain):
    return tuple(_ops.standardize_backward(grad_w_hat, normalized, scale, gain))
