"""Autograd Functions of the S-TLLR layers: forward and backward call the selected backend only.

Each Function saves exactly what docs/rule.md section 2 lists (x[t], trpre[t], trpost[t-1], psi[t], the
weight, and s[t] for post="spike"), so memory per step is O(neurons) and nothing links steps: the
states come out as non-differentiable tensors that the layers detach and carry.

Weight standardization is done once per sequence by the layer (`Standardized`, no graph); the
Functions take the raw `weight` and `gain` as inputs, run on the cached W_hat and, in the backward,
turn dW_hat into dW and dgain with the backend's `standardize_backward` (one op). So `.grad` is
complete after every backward and no standardization graph is built per step.

Functions, one per layer kind and execution mode (all give the same gradients):
- `STLLRStep` / `STLLRSequence`: a feed-forward (linear or conv) layer, one step or all T steps
  (one current GEMM/conv, one LIF-sequence op, one eligibility GEMM over the loss steps);
- `RecurrentSTLLR`: the recurrent layer over T steps (T = 1 online): one `recurrent_sequence` op
  forward, one backward op for W and W_rec over the D loss steps: `recurrent_backward_reverse` (the
  reverse-time form) when `reverse_time_pays(D)`, else `recurrent_backward`;
- `ReadoutSTLLR`: the readout layer over T steps (T = 1 online): one `readout_sequence` op.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from .backends import get_ops
from .config import RuleConfig
from .precision import like_input, without_autocast
from .reference import current_conv, current_linear


@dataclass(frozen=True)
class ConvGeometry:
    """stride, padding, dilation, groups of a conv layer, as nn.Conv2d holds them (pairs)."""

    stride: tuple
    padding: tuple
    dilation: tuple
    groups: int


class Standardized(NamedTuple):
    """A weight as the step uses it: W_hat and what the standardization's backward needs
    (normalized, scale: see reference.standardize), or the raw weight and None, None."""

    weight: Tensor
    normalized: Optional[Tensor] = None
    scale: Optional[Tensor] = None


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


def _through_standardization(ops, grad_w_hat, std: Standardized, gain, needs_w: bool, needs_gain: bool):
    """(dW, dgain) from dW_hat: the standardization's backward when the weight was standardized."""
    if std.normalized is None:
        return (grad_w_hat if needs_w else None), None
    grad_w, grad_gain = ops.standardize_backward(grad_w_hat, std.normalized, std.scale, gain)
    return (grad_w if needs_w else None), (grad_gain if needs_gain else None)


def check_no_early_grad(grad_seq: Tensor, save_from: int) -> None:
    """A loss on a step before save_from would be silently dropped: assert on the device that those
    steps got no gradient (no host synchronization; on a CPU it raises right away)."""
    if torch.compiler.is_compiling():
        # save_from may be symbolic (T - loss_steps): a mask, not a slice (whose size torch.compile
        # would specialize at 1), no branch on it, no number in the message
        early = (torch.arange(grad_seq.shape[0], device=grad_seq.device) < save_from).view(
            -1, *[1] * (grad_seq.dim() - 1))
        torch._assert_async(torch.where(early, grad_seq, 0).abs().sum() == 0,
                            "a loss reached a step of the sequence before its last loss_steps steps, for "
                            "which the layer kept nothing; pass loss_steps covering every step that has a loss")
    elif save_from > 0:
        torch._assert_async(
            grad_seq[:save_from].eq(0).all(),
            f"a loss reached a step before step {save_from} of the sequence, but the layer was run "
            f"with loss_steps={grad_seq.shape[0] - save_from} and kept nothing for earlier steps; "
            f"pass loss_steps covering every step that has a loss")


def _sequence_grad_x(grad_x_loss: Optional[Tensor], x_shape, save_from: int):
    """dx of the whole sequence: zeros before the loss steps."""
    if grad_x_loss is None:
        return None
    if save_from == 0 and not torch.compiler.is_compiling():  # compiled: no branch on symbolic save_from
        return grad_x_loss.view(x_shape)
    grad_x = grad_x_loss.new_zeros(x_shape)
    grad_x[save_from:] = grad_x_loss.view(x_shape[0] - save_from, *x_shape[1:])
    return grad_x


class STLLRStep(torch.autograd.Function):
    """One time step of a feed-forward (linear or conv) S-TLLR layer.

    Inputs: x[t], W, gain (or None), b, the cached Standardized W, v+[t-1], trpost[t-1], trpre[t-1],
    beta, theta (0-d tensors, no gradient), cfg, conv geometry (or None).
    Outputs: s[t], v+[t], trpost[t], trpre[t]; only s[t] is differentiable.
    """

    @staticmethod
    @without_autocast
    def forward(ctx, x, weight, gain, bias, std: Standardized, v, trpost, trpre, beta, theta,
                cfg: RuleConfig, conv: Optional[ConvGeometry]):
        ops = get_ops(x.device)
        current = _current(x, *like_input(x, std.weight, bias), conv)
        trpre_new = ops.pre_trace(trpre, x, cfg.lambda_pre)
        s, v_new, trpost_new, psi = ops.lif_step(current, v, trpost, beta, theta, cfg)
        causal = s if cfg.post == "spike" else None
        ctx.save_for_backward(x, trpre_new, trpost, psi, causal, gain)
        ctx.std, ctx.cfg, ctx.conv, ctx.has_bias = std, cfg, conv, bias is not None
        ctx.mark_non_differentiable(v_new, trpost_new, trpre_new)
        ctx.set_materialize_grads(False)  # no zero gradients built for the states
        return s, v_new, trpost_new, trpre_new

    @staticmethod
    @without_autocast
    def backward(ctx, grad_s, _grad_v, _grad_trpost, _grad_trpre):
        if grad_s is None:
            return (None,) * 12
        x, trpre, trpost_prev, psi, causal, gain = ctx.saved_tensors
        cfg, conv, std = ctx.cfg, ctx.conv, ctx.std
        ops = get_ops(grad_s.device)
        causal = psi if causal is None else causal
        grad_x, grad_w_hat, grad_b = _weight_backward(
            ops, conv, grad_s, psi, causal, trpost_prev, x, trpre, std.weight, cfg,
            ctx.needs_input_grad[0], ctx.has_bias and ctx.needs_input_grad[3])
        grad_w, grad_gain = _through_standardization(ops, grad_w_hat, std, gain, ctx.needs_input_grad[1],
                                                     ctx.needs_input_grad[2])
        return (grad_x, grad_w, grad_gain, grad_b) + (None,) * 8


class STLLRSequence(torch.autograd.Function):
    """All T steps of a feed-forward (linear or conv) S-TLLR layer in one call.

    x_seq is [T, B, ...]; only steps t >= save_from may carry a loss (the Function keeps what the
    backward needs for those steps alone, and checks that earlier steps get no gradient).
    """

    @staticmethod
    @without_autocast
    def forward(ctx, x_seq, weight, gain, bias, std: Standardized, v, trpost, trpre, beta, theta,
                cfg: RuleConfig, conv: Optional[ConvGeometry], save_from: int):
        ops = get_ops(x_seq.device)
        T, B = x_seq.shape[:2]
        currents = _current(x_seq.flatten(0, 1), *like_input(x_seq, std.weight, bias), conv)
        currents = currents.view(T, B, *currents.shape[1:])
        trpre_saved, trpre_new = ops.trace_sequence(x_seq, trpre, cfg.lambda_pre, save_from)
        s_seq, v_new, trpost_new, psi_saved, trpost_prev_saved = ops.lif_sequence(
            currents, v, trpost, beta, theta, cfg, save_from)
        causal = s_seq[save_from:] if cfg.post == "spike" else None
        ctx.save_for_backward(x_seq[save_from:], trpre_saved, trpost_prev_saved, psi_saved, causal, gain)
        ctx.std, ctx.cfg, ctx.conv, ctx.has_bias = std, cfg, conv, bias is not None
        ctx.save_from, ctx.x_shape = save_from, x_seq.shape
        ctx.mark_non_differentiable(v_new, trpost_new, trpre_new)
        ctx.set_materialize_grads(False)
        return s_seq, v_new, trpost_new, trpre_new

    @staticmethod
    @without_autocast
    def backward(ctx, grad_s_seq, _grad_v, _grad_trpost, _grad_trpre):
        if grad_s_seq is None:
            return (None,) * 13
        x, trpre, trpost_prev, psi, causal, gain = ctx.saved_tensors
        cfg, conv, save_from, std = ctx.cfg, ctx.conv, ctx.save_from, ctx.std
        check_no_early_grad(grad_s_seq, save_from)
        ops = get_ops(grad_s_seq.device)
        grad_s = grad_s_seq[save_from:]
        causal = psi if causal is None else causal
        grad_x_loss, grad_w_hat, grad_b = _weight_backward(
            ops, conv, grad_s.flatten(0, 1), psi.flatten(0, 1), causal.flatten(0, 1),
            trpost_prev.flatten(0, 1), x.flatten(0, 1), trpre.flatten(0, 1), std.weight, cfg,
            ctx.needs_input_grad[0], ctx.has_bias and ctx.needs_input_grad[3])
        grad_w, grad_gain = _through_standardization(ops, grad_w_hat, std, gain, ctx.needs_input_grad[1],
                                                     ctx.needs_input_grad[2])
        grad_x = _sequence_grad_x(grad_x_loss, ctx.x_shape, save_from)
        return (grad_x, grad_w, grad_gain, grad_b) + (None,) * 9


def reverse_time_pays(loss_steps: int) -> bool:
    """The one rule choosing the recurrent layer's backward form. The forward-time form
    (`recurrent_backward`) reduces its eligibility GEMMs over 2 x D x B rows (causal and non-causal
    term); the reverse-time form (`recurrent_backward_reverse`, see the reference) over (D + 1) x B
    rows after one reverse pass over the loss steps, and keeps only the first loss step's traces. So
    it pays from D = 2 on (and saves D x B x (K + N) trace values for backward); at D = 1 (every
    online step) the two are the same GEMMs."""
    return loss_steps >= 2


class RecurrentSTLLR(torch.autograd.Function):
    """The recurrent S-TLLR layer over T steps of x_seq [T, B, K] (T = 1: one online step).

    Inputs: x, W, gain, b, W_rec, gain_rec (gains None without standardization), the cached
    Standardized W and W_rec, the states s[-1], v+, trpost, trpre, trrec, beta, theta, cfg, save_from.
    Outputs: s [T, B, N] (differentiable) and the new states v+, trpost, trpre, trrec.
    """

    @staticmethod
    @without_autocast
    def forward(ctx, x_seq, weight, gain, bias, weight_rec, gain_rec, std: Standardized,
                std_rec: Standardized, s_prev, v, trpost, trpre, trrec, beta, theta, cfg: RuleConfig,
                save_from: int):
        ops = get_ops(x_seq.device)
        ctx.reverse = reverse_time_pays(x_seq.shape[0] - save_from)
        # the reverse-time backward needs the traces of the first loss step only
        (s_seq, v_new, trpost_new, trpre_new, trrec_new, psi, trpost_prev, trpre_saved, s_prev_saved,
         trrec_prev) = ops.recurrent_sequence(x_seq, *like_input(x_seq, std.weight, bias, std_rec.weight), s_prev,
                                              v, trpost, trpre, trrec, beta, theta, cfg, save_from, ctx.reverse)
        causal = s_seq[save_from:] if cfg.post == "spike" else None
        if ctx.reverse:
            trpre_saved, trrec_prev = trpre_saved[0], trrec_prev[0]
        ctx.save_for_backward(x_seq[save_from:], trpre_saved, trpost_prev, psi, causal, s_prev_saved,
                              trrec_prev, gain, gain_rec)
        ctx.std, ctx.std_rec, ctx.cfg, ctx.has_bias = std, std_rec, cfg, bias is not None
        ctx.save_from, ctx.x_shape = save_from, x_seq.shape
        ctx.mark_non_differentiable(v_new, trpost_new, trpre_new, trrec_new)
        ctx.set_materialize_grads(False)
        return s_seq, v_new, trpost_new, trpre_new, trrec_new

    @staticmethod
    @without_autocast
    def backward(ctx, grad_s_seq, *_grad_states):
        if grad_s_seq is None:
            return (None,) * 17
        x, trpre, trpost_prev, psi, causal, s_prev, trrec_prev, gain, gain_rec = ctx.saved_tensors
        cfg, save_from, needs = ctx.cfg, ctx.save_from, ctx.needs_input_grad
        check_no_early_grad(grad_s_seq, save_from)
        ops = get_ops(grad_s_seq.device)
        grad_s = grad_s_seq[save_from:]
        causal = psi if causal is None else causal
        if ctx.reverse:  # trpre, trrec_prev: the first loss step's traces [B, K], [B, N]
            grad_x_loss, grad_w_hat, grad_b, grad_w_rec_hat = ops.recurrent_backward_reverse(
                grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, ctx.std.weight,
                ctx.std_rec.weight, cfg.lambda_pre, cfg.alpha_post, cfg.alpha_pre, needs[0],
                ctx.has_bias and needs[3])
        else:
            grad_x_loss, grad_w_hat, grad_b, grad_w_rec_hat = ops.recurrent_backward(
                grad_s.flatten(0, 1), psi.flatten(0, 1), causal.flatten(0, 1), trpost_prev.flatten(0, 1),
                x.flatten(0, 1), trpre.flatten(0, 1), s_prev.flatten(0, 1), trrec_prev.flatten(0, 1),
                ctx.std.weight, ctx.std_rec.weight, cfg.alpha_post, cfg.alpha_pre, needs[0],
                ctx.has_bias and needs[3])
        grad_w, grad_gain = _through_standardization(ops, grad_w_hat, ctx.std, gain, needs[1], needs[2])
        grad_w_rec, grad_gain_rec = _through_standardization(ops, grad_w_rec_hat, ctx.std_rec, gain_rec,
                                                             needs[4], needs[5])
        grad_x = _sequence_grad_x(grad_x_loss, ctx.x_shape, save_from)
        return (grad_x, grad_w, grad_gain, grad_b, grad_w_rec, grad_gain_rec) + (None,) * 11


class ReadoutSTLLR(torch.autograd.Function):
    """The readout ("accumulate") layer over T steps of x_seq [T, B, K] (T = 1: one online step):
    v[t] = beta v[t-1] + W x[t] + b, output v [T, B, N].

    Backward: dW = L^T trpre[t], db = sum_b L, dx = L @ W over the loss steps (docs/rule.md section 4).
    """

    @staticmethod
    @without_autocast
    def forward(ctx, x_seq, weight, bias, v, trpre, beta, lambda_pre: float, save_from: int):
        v_seq, trpre_new, trpre_saved = get_ops(x_seq.device).readout_sequence(
            x_seq, *like_input(x_seq, weight, bias), v, trpre, beta, lambda_pre, save_from)
        ctx.save_for_backward(x_seq[save_from:], trpre_saved, weight)
        ctx.has_bias, ctx.save_from, ctx.x_shape = bias is not None, save_from, x_seq.shape
        ctx.mark_non_differentiable(trpre_new)
        ctx.set_materialize_grads(False)
        return v_seq, trpre_new

    @staticmethod
    @without_autocast
    def backward(ctx, grad_v_seq, _grad_trpre):
        if grad_v_seq is None:
            return (None,) * 8
        x, trpre, weight = ctx.saved_tensors
        save_from = ctx.save_from
        check_no_early_grad(grad_v_seq, save_from)
        grad = grad_v_seq[save_from:]
        grad_x_loss, grad_w, grad_b = get_ops(grad.device).linear_backward(
            grad, None, None, None, x, trpre, weight, 0.0, 1.0, ctx.needs_input_grad[0],
            ctx.has_bias and ctx.needs_input_grad[2])
        grad_x = _sequence_grad_x(grad_x_loss, ctx.x_shape, save_from)
        return grad_x, grad_w, grad_b, None, None, None, None, None
