"""Autograd Functions of the S-TLLR layers: forward and backward call the selected backend only.

Each Function saves exactly what SPEC section 2 lists (x[t], trpre[t], trpost[t-1], psi[t], the
weight, and s[t] for post="spike"), so memory per step is O(neurons) and nothing links steps: the
states come out as non-differentiable tensors that the layers detach and carry.

Two execution modes give the same gradients:
- step: `stllr_step` / `readout_step`, one time step per call (online training);
- sequence: `stllr_sequence` / `readout_sequence`, all T steps of a feed-forward layer at once
  (one current GEMM/conv, one LIF-sequence op, one eligibility GEMM over the loss steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .backends import get_ops
from .config import RuleConfig
from .reference import current_conv, current_linear, state_dtype


@dataclass(frozen=True)
class ConvGeometry:
    """stride, padding, dilation, groups of a conv layer (ints normalised to pairs)."""

    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int


def _current(x, weight, bias, conv: Optional[ConvGeometry]):
    if conv is None:
        return current_linear(x, weight, bias)
    return current_conv(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


def _weight_backward(ops, conv, grad_s, psi, causal, trpost_prev, x, trpre, weight, cfg,
                     needs_x, needs_b):
    if conv is None:
        return ops.linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight,
                                   cfg.alpha_post, cfg.alpha_pre, needs_x, needs_b)
    return ops.conv_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, conv.stride,
                             conv.padding, conv.dilation, conv.groups, cfg.alpha_post,
                             cfg.alpha_pre, needs_x, needs_b)


class STLLRStep(torch.autograd.Function):
    """One time step of a linear, recurrent or conv S-TLLR layer.

    Inputs: x[t], W, b, W_rec (or None), s[t-1], trrec[t-1] (recurrent only), v+[t-1],
    trpost[t-1], trpre[t-1], beta, theta (0-d tensors, no gradient), cfg, conv geometry (or None).
    Outputs: s[t], v+[t], trpost[t], trpre[t]; only s[t] is differentiable.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, weight_rec, s_prev, trrec_prev, v, trpost, trpre, beta,
                theta, cfg: RuleConfig, conv: Optional[ConvGeometry]):
        ops = get_ops(x.device)
        current = _current(x, weight, bias, conv)
        if weight_rec is not None:
            current = current + current_linear(s_prev, weight_rec, None)
        trpre_new = ops.pre_trace(trpre, x, cfg.lambda_pre)
        s, v_new, trpost_new, psi = ops.lif_step(current, v, trpost, beta, theta, cfg)
        causal = s if cfg.post == "spike" else None
        ctx.save_for_backward(x, trpre_new, trpost, psi, causal, weight, weight_rec, s_prev,
                              trrec_prev)
        ctx.cfg, ctx.conv, ctx.has_bias = cfg, conv, bias is not None
        ctx.mark_non_differentiable(v_new, trpost_new, trpre_new)
        return s, v_new, trpost_new, trpre_new

    @staticmethod
    def backward(ctx, grad_s, _grad_v, _grad_trpost, _grad_trpre):
        x, trpre, trpost_prev, psi, causal, weight, weight_rec, s_prev, trrec_prev = ctx.saved_tensors
        cfg, conv = ctx.cfg, ctx.conv
        ops = get_ops(grad_s.device)
        causal = psi if causal is None else causal
        grad_x, grad_w, grad_b = _weight_backward(
            ops, conv, grad_s, psi, causal, trpost_prev, x, trpre, weight, cfg,
            ctx.needs_input_grad[0], ctx.has_bias and ctx.needs_input_grad[2])
        grad_w_rec = None
        if weight_rec is not None and ctx.needs_input_grad[3]:
            # the same rule for W_rec with x -> s[t-1], trpre -> trrec[t-1]; nothing flows into s[t-1]
            _, grad_w_rec, _ = ops.linear_backward(grad_s, psi, causal, trpost_prev, s_prev,
                                                   trrec_prev, weight_rec, cfg.alpha_post,
                                                   cfg.alpha_pre, False, False)
        return (grad_x, grad_w, grad_b, grad_w_rec) + (None,) * 9


class STLLRSequence(torch.autograd.Function):
    """All T steps of a feed-forward (linear or conv) S-TLLR layer in one call.

    x_seq is [T, B, ...]; only steps t >= save_from may carry a loss (the Function keeps what the
    backward needs for those steps alone, and checks that earlier steps get no gradient).
    """

    @staticmethod
    def forward(ctx, x_seq, weight, bias, v, trpost, trpre, beta, theta, cfg: RuleConfig,
                conv: Optional[ConvGeometry], save_from: int):
        ops = get_ops(x_seq.device)
        T, B = x_seq.shape[:2]
        currents = _current(x_seq.flatten(0, 1), weight, bias, conv)
        currents = currents.view(T, B, *currents.shape[1:])
        trpre_saved, trpre_new = ops.trace_sequence(x_seq, trpre, cfg.lambda_pre, save_from)
        s_seq, v_new, trpost_new, psi_saved, trpost_prev_saved = ops.lif_sequence(
            currents, v, trpost, beta, theta, cfg, save_from)
        causal = s_seq[save_from:] if cfg.post == "spike" else None
        ctx.save_for_backward(x_seq[save_from:], trpre_saved, trpost_prev_saved, psi_saved, causal,
                              weight)
        ctx.cfg, ctx.conv, ctx.has_bias, ctx.save_from = cfg, conv, bias is not None, save_from
        ctx.x_shape = x_seq.shape
        ctx.mark_non_differentiable(v_new, trpost_new, trpre_new)
        return s_seq, v_new, trpost_new, trpre_new

    @staticmethod
    def backward(ctx, grad_s_seq, _grad_v, _grad_trpost, _grad_trpre):
        x, trpre, trpost_prev, psi, causal, weight = ctx.saved_tensors
        cfg, conv, save_from = ctx.cfg, ctx.conv, ctx.save_from
        _check_no_early_grad(grad_s_seq, save_from)
        ops = get_ops(grad_s_seq.device)
        grad_s = grad_s_seq[save_from:]
        causal = psi if causal is None else causal
        D = grad_s.shape[0]
        grad_x_loss, grad_w, grad_b = _weight_backward(
            ops, conv, grad_s.flatten(0, 1), psi.flatten(0, 1), causal.flatten(0, 1),
            trpost_prev.flatten(0, 1), x.flatten(0, 1), trpre.flatten(0, 1), weight, cfg,
            ctx.needs_input_grad[0], ctx.has_bias and ctx.needs_input_grad[2])
        grad_x = None
        if grad_x_loss is not None:
            grad_x = grad_x_loss.new_zeros(ctx.x_shape)
            grad_x[save_from:] = grad_x_loss.view(D, *ctx.x_shape[1:])
        return (grad_x, grad_w, grad_b) + (None,) * 8


class ReadoutStep(torch.autograd.Function):
    """One step of the readout ("accumulate") layer: v[t] = beta v[t-1] + W x[t] + b, output v[t].

    Backward: dW = L^T trpre[t], db = sum_b L, dx = L @ W (SPEC section 4).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, v, trpre, beta, lambda_pre: float):
        ops = get_ops(x.device)
        current = current_linear(x, weight, bias)
        v_new = beta * v + current.to(state_dtype(current.dtype))
        trpre_new = ops.pre_trace(trpre, x, lambda_pre)
        ctx.save_for_backward(x, trpre_new, weight)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(trpre_new)
        return v_new, trpre_new

    @staticmethod
    def backward(ctx, grad_v, _grad_trpre):
        x, trpre, weight = ctx.saved_tensors
        grad_x, grad_w, grad_b = get_ops(grad_v.device).linear_backward(
            grad_v, None, None, None, x, trpre, weight, 0.0, 1.0, ctx.needs_input_grad[0],
            ctx.has_bias and ctx.needs_input_grad[2])
        return grad_x, grad_w, grad_b, None, None, None, None


class ReadoutSequence(torch.autograd.Function):
    """All T steps of the readout layer; outputs v[t] for every step."""

    @staticmethod
    def forward(ctx, x_seq, weight, bias, v, trpre, beta, lambda_pre: float, save_from: int):
        ops = get_ops(x_seq.device)
        currents = current_linear(x_seq, weight, bias)
        sd = state_dtype(currents.dtype)
        outs = []
        for t in range(currents.shape[0]):  # a scan over T of [B, N] tensors: tiny next to the GEMM
            v = beta * v + currents[t].to(sd)
            outs.append(v)
        trpre_saved, trpre_new = ops.trace_sequence(x_seq, trpre, lambda_pre, save_from)
        ctx.save_for_backward(x_seq[save_from:], trpre_saved, weight)
        ctx.has_bias, ctx.save_from, ctx.x_shape = bias is not None, save_from, x_seq.shape
        ctx.mark_non_differentiable(trpre_new)
        return torch.stack(outs), trpre_new

    @staticmethod
    def backward(ctx, grad_v_seq, _grad_trpre):
        x, trpre, weight = ctx.saved_tensors
        save_from = ctx.save_from
        _check_no_early_grad(grad_v_seq, save_from)
        grad = grad_v_seq[save_from:]
        grad_x_loss, grad_w, grad_b = get_ops(grad.device).linear_backward(
            grad, None, None, None, x, trpre, weight, 0.0, 1.0, ctx.needs_input_grad[0],
            ctx.has_bias and ctx.needs_input_grad[2])
        grad_x = None
        if grad_x_loss is not None:
            grad_x = grad_x_loss.new_zeros(ctx.x_shape)
            grad_x[save_from:] = grad_x_loss
        return grad_x, grad_w, grad_b, None, None, None, None, None


def _check_no_early_grad(grad_seq: Tensor, save_from: int) -> None:
    if save_from > 0 and bool(grad_seq[:save_from].ne(0).any()):
        raise RuntimeError(
            f"a loss reached a step before step {save_from} of the sequence, but the layer was run "
            f"with loss_steps={grad_seq.shape[0] - save_from} and kept nothing for earlier steps; "
            f"pass loss_steps covering every step that has a loss")

