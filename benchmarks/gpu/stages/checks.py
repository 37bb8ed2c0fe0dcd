"""One verdict per op call: a backend's outputs against the reference on the same inputs."""
from __future__ import annotations

import torch

from stllr_kernels import reference as R

from ..compare import Verdict, at_threshold, spike_flips, values_verdict

F32 = torch.float32


def _join(*verdicts) -> Verdict:
    return Verdict(all(v.ok for v in verdicts), "; ".join(v.detail for v in verdicts))


def _dtypes(got, want) -> Verdict:
    bad = [f"{i}: {g.dtype} vs {w.dtype}" for i, (g, w) in enumerate(zip(got, want))
           if g is not None and w is not None and g.dtype != w.dtype]
    return Verdict(not bad, "dtypes " + (", ".join(bad) if bad else "ok"))


def lif_step(ops, cur, v, tr, beta, theta, cfg) -> Verdict:
    flips, values, types = lif_step_parts(ops.lif_step(cur, v, tr, beta, theta, cfg),
                                          cur, v, tr, beta, theta, cfg)
    return _join(Verdict(flips.ok, flips.text()), values, types)


def lif_step_parts(got, cur, v, tr, beta, theta, cfg):
    """(Flips, value Verdict, dtype Verdict) of lif_step outputs `got` against the reference."""
    want = R.lif_step(cur, v, tr, beta, theta, cfg)
    flips = spike_flips(got[0], want[0], at_threshold(beta * v, cur, theta), over_time=False)
    values = values_verdict([(n, g, w, flips.keep) for n, g, w in
                             zip(("v", "trpost", "psi"), got[1:], want[1:])], F32)
    return flips, values, _dtypes(got, want)


def lif_sequence(ops, cur, v, tr, beta, theta, cfg, save_from) -> Verdict:
    got = ops.lif_sequence(cur, v, tr, beta, theta, cfg, save_from)
    want = R.lif_sequence(cur, v, tr, beta, theta, cfg, save_from)
    near, state = [], (v, tr)
    for t in range(cur.shape[0]):  # the reference's u at every step, for the flip rule
        near.append(at_threshold(beta * state[0], cur[t], theta))
        state = R.lif_step(cur[t], state[0], state[1], beta, theta, cfg)[1:3]
    flips = spike_flips(got[0], want[0], torch.stack(near), over_time=True)
    never = flips.keep[-1]
    values = values_verdict([("v", got[1], want[1], never), ("trpost", got[2], want[2], never),
                             ("psi", got[3], want[3], flips.keep[save_from:]),
                             ("trpost_prev", got[4], want[4], flips.keep[save_from:])], F32)
    return _join(Verdict(flips.ok, flips.text()), values, _dtypes(got, want))


def pre_trace(ops, tr, x, decay) -> Verdict:
    got, want = ops.pre_trace(tr, x, decay), R.pre_trace(tr, x, decay)
    return _join(values_verdict([("trpre", got, want)], F32), _dtypes([got], [want]))


def trace_sequence(ops, x, tr, decay, save_from) -> Verdict:
    got, want = ops.trace_sequence(x, tr, decay, save_from), R.trace_sequence(x, tr, decay, save_from)
    return _join(values_verdict([("saved", got[0], want[0]), ("last", got[1], want[1])], F32),
                 _dtypes(got, want))


def linear_backward(ops, args, dtype, relative=False) -> Verdict:
    """relative: compare each output divided by its largest reference magnitude (for inputs scaled
    far below 1, where the policy's absolute part would forgive anything)."""
    got, want = ops.linear_backward(*args), R.linear_backward(*args)
    rows = args[0].numel() // args[0].shape[-1]
    n, k = args[6].shape
    types = _dtypes(got, want)
    if relative:
        got, want = _relative(got, want)
    return _join(values_verdict([("dx", got[0], want[0])], dtype, n),
                 values_verdict([("dW", got[1], want[1]), ("db", got[2], want[2])], dtype, 2 * rows),
                 types)


def conv_backward(ops, args, dtype, relative=False) -> Verdict:
    got, want = ops.conv_backward(*args), R.conv_backward(*args)
    L, W = args[0], args[6]
    per_weight = 2 * L.shape[0] * L.shape[2] * L.shape[3]
    types = _dtypes(got, want)
    if relative:
        got, want = _relative(got, want)
    return _join(values_verdict([("dx", got[0], want[0])], dtype, W.shape[0] * 9),
                 values_verdict([("dW", got[1], want[1]), ("db", got[2], want[2])], dtype, per_weight),
                 types)


RECURRENT_OUTPUTS = ("s", "v", "trpost", "trpre", "trrec", "psi", "trpost_prev", "trpre_saved",
                     "s_prev_saved", "trrec_prev")


def recurrent_sequence(ops, args, cfg, save_from, dtype) -> Verdict:
    """args = (x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta) with
    exact currents (inputs on a dyadic grid, see inputs.recurrent_inputs): spikes must equal the
    reference's exactly; the other outputs follow the policy over the K + N terms of a current."""
    got = ops.recurrent_sequence(*args, cfg, save_from)
    want = R.recurrent_sequence(*args, cfg, save_from)
    K, N = args[1].shape[1], args[1].shape[0]
    same = got[0].shape == want[0].shape and bool(torch.equal(got[0], want[0]))
    flipped = int((got[0] != want[0]).sum()) if got[0].shape == want[0].shape else -1
    spikes = Verdict(same, "spikes exact" if same else f"{flipped} spikes differ (exact currents: none allowed)")
    values = values_verdict(list(zip(RECURRENT_OUTPUTS[1:], got[1:], want[1:])), dtype, K + N)
    return _join(spikes, values, _dtypes(got, want))


def readout_sequence(ops, args, save_from) -> Verdict:
    """args = (x, weight, bias, v, trpre, beta, lambda_pre): v sums T steps of K-term currents."""
    got = ops.readout_sequence(*args, save_from)
    want = R.readout_sequence(*args, save_from)
    T, K = args[0].shape[0], args[1].shape[1]
    values = values_verdict(list(zip(("v", "trpre", "trpre_saved"), got, want)), F32, K * T)
    return _join(values, _dtypes(got, want))


def recurrent_backward(ops, args, dtype) -> Verdict:
    """args as reference.recurrent_backward's; dx sums N terms, dW / db / dW_rec 2 x rows."""
    got, want = ops.recurrent_backward(*args), R.recurrent_backward(*args)
    rows = args[0].numel() // args[0].shape[-1]
    N = args[8].shape[0]
    return _join(values_verdict([("dx", got[0], want[0])], dtype, N),
                 values_verdict([("dW", got[1], want[1]), ("db", got[2], want[2]),
                                 ("dW_rec", got[3], want[3])], dtype, 2 * rows),
                 _dtypes(got, want))


def recurrent_backward_reverse(ops, args, dtype) -> Verdict:
    """args as reference.recurrent_backward_reverse's ([D, B, ...] loss steps); dx sums N terms,
    dW / db / dW_rec 2 x D x B rows."""
    got, want = ops.recurrent_backward_reverse(*args), R.recurrent_backward_reverse(*args)
    D, B, N = args[0].shape
    return _join(values_verdict([("dx", got[0], want[0])], dtype, N),
                 values_verdict([("dW", got[1], want[1]), ("db", got[2], want[2]),
                                 ("dW_rec", got[3], want[3])], dtype, 2 * D * B),
                 _dtypes(got, want))


def standardize_backward(ops, args) -> Verdict:
    """args = (grad_w_hat, normalized, scale, gain): sums over a row's fan-in."""
    got, want = ops.standardize_backward(*args), R.standardize_backward(*args)
    fan_in = args[0][0].numel()
    return _join(values_verdict([("dW", got[0], want[0]), ("dgain", got[1], want[1])], F32, fan_in),
                 _dtypes(got, want))


def _relative(got, want):
    out_g, out_w = [], []
    for g, w in zip(got, want):
        if g is None or w is None:
            out_g.append(g)
            out_w.append(w)
            continue
        scale = w.float().abs().max().clamp(min=1e-30)
        out_g.append(g.float() / scale)
        out_w.append(w.float() / scale)
    return out_g, out_w


def refused_fp16(exc: Exception) -> bool:
    """A backend may refuse float16 eligibility operands, if it says so clearly."""
    text = str(exc).lower()
    return isinstance(exc, (TypeError, ValueError, NotImplementedError, RuntimeError)) and (
        "float16" in text or "fp16" in text or "half" in text)
