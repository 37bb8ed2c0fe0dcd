"""docs/rule.md made executable: the pure-torch oracle every backend is tested against.

Each function is one op of docs/design.md's op set, with the same name and signature in every backend
(`stllr_kernels.backends.<name>`). Scalars that live on the device (beta, theta) are 0-d tensors so
that no backend has to synchronise to read them; the factors are Python floats.

Notation follows docs/rule.md section 1: x[t] input, I[t] current, v+ membrane after reset, u = v - theta,
s spikes, psi = Psi(u), trpost / trpre the post / pre traces.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .config import MIN_THRESHOLD, STANDARDIZE_EPS, RuleConfig
from .psi import apply_psi

Tensor = torch.Tensor


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States (membrane, traces, psi) are kept in at least float32, whatever the input dtype."""
    return torch.float64 if dtype == torch.float64 else torch.float32  # no dispatch, unlike promote_types


def beta_of(leak: Tensor) -> Tensor:
    """beta = sigmoid(leak) (docs/rule.md section 1)."""
    return torch.sigmoid(leak)


def theta_of(threshold: Tensor) -> Tensor:
    """theta = max(threshold, 0.5) (docs/rule.md section 1)."""
    return threshold.clamp(min=MIN_THRESHOLD)


def standardize(weight: Tensor, gain: Tensor, eps: float = STANDARDIZE_EPS):
    """Weight standardization (docs/rule.md section 4) and what its backward needs: (W_hat, n, s) with
    s = sqrt(var_row * fan_in + eps) (unbiased variance over each output row), n = (W - mean_row) / s
    and W_hat = gain * n; s has the shape of gain ([N, 1, ...])."""
    flat = weight.flatten(1)
    fan_in = flat.shape[1]
    centered = flat - flat.mean(dim=1, keepdim=True)
    # two passes (mean, then squares of the centered rows): as exact as torch.var, which on a CPU
    # runs about 15x slower on these row reductions
    var = (centered * centered).sum(dim=1) / (fan_in - 1)
    scale = torch.sqrt(var * fan_in + eps).view(-1, *([1] * (weight.dim() - 1)))
    normalized = centered.view_as(weight) / scale
    return gain * normalized, normalized, scale


def standardize_weight(weight: Tensor, gain: Tensor, eps: float = STANDARDIZE_EPS) -> Tensor:
    """W_hat = gain * (W - mean_row) / sqrt(var_row * fan_in + eps), unbiased var over each row."""
    return standardize(weight, gain, eps)[0]


def standardize_backward(grad_w_hat: Tensor, normalized: Tensor, scale: Tensor, gain: Tensor):
    """The backward of `standardize` in closed form, given dW_hat: returns (dW, dgain).

        dgain = sum_row(G * n)
        dz    = gain * (G - n * dgain * fan_in / (fan_in - 1)) / s      (z = W - mean_row)
        dW    = dz - mean_row(dz)
    """
    sd = state_dtype(grad_w_hat.dtype)
    dims = tuple(range(1, grad_w_hat.dim()))
    fan_in = normalized[0].numel()
    G, n = grad_w_hat.to(sd), normalized.to(sd)
    grad_gain = (G * n).sum(dims, keepdim=True)
    dz = gain.to(sd) * (G - n * (grad_gain * (fan_in / (fan_in - 1)))) / scale.to(sd)
    grad_weight = dz - dz.mean(dims, keepdim=True)
    return grad_weight.to(grad_w_hat.dtype), grad_gain.to(gain.dtype)


# ----------------------------------------------------------------------------- forward ops

def spike_of(u: Tensor) -> Tensor:
    """The spike of a membrane u = v - theta: heaviside(u) (0 at u = 0) where u is finite, NaN where
    u is NaN, +inf or -inf.

    NaN for a NaN membrane, as torch.heaviside gives (the comparison u > 0 alone would say 0). NaN for
    an infinite one too: that neuron has diverged, and heaviside's 1 or 0 would hide it for good (a
    +inf membrane stays +inf under the soft reset and spikes 1 at every step, a -inf one stays silent),
    while a NaN spike reaches the next layer, the readout and the loss, which training's divergence
    guard checks. The NaN spike also makes the membrane NaN (either reset), until reset_state().
    """
    # u - u is 0 where u is finite and NaN where it is not: the rule above in two cheap ops (the
    # kernels do the same; a torch.where on isfinite costs ~3x the comparison)
    return (u > 0).to(u.dtype) + (u - u)


def lif_step(current: Tensor, v: Tensor, trpost: Tensor, beta: Tensor, theta: Tensor,
             cfg: RuleConfig):
    """One LIF step with the post trace (docs/rule.md section 1), element-wise over any shape.

    Returns (s[t], v+[t], trpost[t], psi[t]); s in the current's dtype, the rest in state dtype.
    With cfg.post == "spike" the post trace accumulates s[t] instead of psi[t].
    """
    sd = state_dtype(current.dtype)
    v_t = beta * v + current.to(sd)
    u = v_t - theta
    spike = spike_of(u)
    if cfg.reset == "soft":
        v_after = v_t - theta * spike
    else:
        v_after = v_t * (1.0 - spike)
    psi = apply_psi(cfg.psi, u)
    trpost_new = cfg.lambda_post * trpost + (spike if cfg.post == "spike" else psi)
    return spike.to(current.dtype), v_after, trpost_new, psi


def pre_trace(trpre: Tensor, x: Tensor, lambda_pre: float) -> Tensor:
    """trpre[t] = lambda_pre * trpre[t-1] + x[t] (it includes the current input)."""
    return lambda_pre * trpre + x.to(state_dtype(x.dtype))


def lif_sequence(currents: Tensor, v: Tensor, trpost: Tensor, beta: Tensor, theta: Tensor,
                 cfg: RuleConfig, save_from: int):
    """lif_step over all T steps of currents [T, ...].

    Returns (s [T, ...], v+[T-1], trpost[T-1], psi[save_from:], trpost_prev[save_from:]) where
    trpost_prev[t] = trpost[t-1]: only the steps with a loss keep what the backward needs.
    """
    spikes, psis, prevs = [], [], []
    for t in range(currents.shape[0]):
        if t >= save_from:
            prevs.append(trpost)
        s, v, trpost, psi = lif_step(currents[t], v, trpost, beta, theta, cfg)
        spikes.append(s)
        if t >= save_from:
            psis.append(psi)
    return (torch.stack(spikes), v, trpost, _stack_or_empty(psis, currents, v),
            _stack_or_empty(prevs, currents, v))


def trace_sequence(x: Tensor, trace: Tensor, decay: float, save_from: int):
    """pre_trace over all T steps of x [T, ...]; returns (trace[save_from:], trace[T-1])."""
    saved = []
    for t in range(x.shape[0]):
        trace = pre_trace(trace, x[t], decay)
        if t >= save_from:
            saved.append(trace)
    return _stack_or_empty(saved, x, trace), trace


def recurrent_sequence(x: Tensor, weight: Tensor, bias: Optional[Tensor], weight_rec: Tensor,
                       s_prev: Tensor, v: Tensor, trpost: Tensor, trpre: Tensor, trrec: Tensor,
                       beta: Tensor, theta: Tensor, cfg: RuleConfig, save_from: int,
                       first_traces_only: bool = False):
    """The recurrent layer over all T steps of x [T, B, K] (docs/rule.md sections 1-2, recurrent):
    I[t] = W x[t] + b + W_rec s[t-1], the LIF step, trpre and trrec[t] = lambda_pre trrec[t-1] + s[t].

    The input current is one GEMM over all T; only W_rec s[t-1] and the LIF are stepped. States in:
    s[-1] (x's dtype), v+, trpost, trpre, trrec. Returns (s [T, B, N], v+, trpost, trpre, trrec,
    then for the loss steps t >= save_from what the backward needs: psi[t], trpost[t-1], trpre[t],
    s[t-1], trrec[t-1]). T = 1 is one online step. With first_traces_only, trpre[t] and trrec[t-1]
    are kept for the first loss step only (shape [min(D, 1), ...]): what recurrent_backward_reverse needs.
    """
    currents = current_linear(x, weight, bias)
    trpre_saved, trpre = trace_sequence(x, trpre, cfg.lambda_pre, save_from)
    spikes, psis, prevs, s_prevs, trrec_prevs = [], [], [], [], []
    for t in range(x.shape[0]):
        current = currents[t] + current_linear(s_prev, weight_rec, None)
        if t >= save_from:
            prevs.append(trpost)
            s_prevs.append(s_prev)
            trrec_prevs.append(trrec)
        s_prev, v, trpost, psi = lif_step(current, v, trpost, beta, theta, cfg)
        trrec = pre_trace(trrec, s_prev, cfg.lambda_pre)
        spikes.append(s_prev)
        if t >= save_from:
            psis.append(psi)
    if first_traces_only:
        trpre_saved, trrec_prevs = trpre_saved[:1], trrec_prevs[:1]
    return (_stack_or_empty(spikes, currents, s_prev), v, trpost, trpre, trrec,
            _stack_or_empty(psis, currents, v), _stack_or_empty(prevs, currents, v), trpre_saved,
            _stack_or_empty(s_prevs, currents, s_prev), _stack_or_empty(trrec_prevs, currents, v))


def readout_sequence(x: Tensor, weight: Tensor, bias: Optional[Tensor], v: Tensor, trpre: Tensor,
                     beta: Tensor, lambda_pre: float, save_from: int):
    """The readout layer over all T steps of x [T, B, K] (docs/rule.md section 4): v[t] = beta v[t-1] + W x[t] + b.

    Returns (v [T, B, N] in the state dtype: the output, its last step the state; trpre[T-1];
    trpre[save_from:]). One GEMM over all T, then the leaky scan.
    """
    currents = current_linear(x, weight, bias)
    sd = state_dtype(currents.dtype)
    outs = []
    for t in range(x.shape[0]):
        v = beta * v + currents[t].to(sd)
        outs.append(v)
    trpre_saved, trpre = trace_sequence(x, trpre, lambda_pre, save_from)
    return _stack_or_empty(outs, currents, v), trpre, trpre_saved


def _stack_or_empty(items, like_seq: Tensor, like_state: Tensor) -> Tensor:
    if items:
        return torch.stack(items)
    return like_state.new_empty((0, *like_seq.shape[1:]))


# ----------------------------------------------------------------------------- backward ops

def linear_backward(grad_s: Tensor, psi: Optional[Tensor], causal: Optional[Tensor],
                    trpost_prev: Optional[Tensor], x: Tensor, trpre: Tensor, weight: Tensor,
                    alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                    needs_bias_grad: bool = True):
    """The S-TLLR backward of one linear step (docs/rule.md section 2), batched as GEMMs.

    grad_s is L [B, N]; psi the surrogate for dx and db; causal the post factor of the causal
    term (psi, or s for post="spike"); None for psi/causal means 1 and None for trpost_prev drops
    the non-causal term (the readout layer). Leading dimensions of all [..., N] / [..., K] inputs are
    treated as the batch, so the time-fused mode passes D x B rows at once.

        dW = alpha_post * (L * trpost_prev)^T x + alpha_pre * (L * causal)^T trpre
        db = sum_b L * psi          dx = (L * psi) @ W
    """
    sd = state_dtype(grad_s.dtype)
    L = grad_s.to(sd).flatten(0, -2)
    xs = x.to(sd).flatten(0, -2)
    tr = trpre.to(sd).flatten(0, -2)
    g_psi = L if psi is None else L * psi.to(sd).flatten(0, -2)
    g_causal = L if causal is None else L * causal.to(sd).flatten(0, -2)
    grad_w = alpha_pre * (g_causal.t() @ tr)
    if trpost_prev is not None and alpha_post != 0.0:
        grad_w = grad_w + alpha_post * ((L * trpost_prev.to(sd).flatten(0, -2)).t() @ xs)
    grad_x = None
    if needs_input_grad:
        grad_x = (g_psi @ weight.to(sd)).to(x.dtype).view(*grad_s.shape[:-1], x.shape[-1])
    grad_b = g_psi.sum(0).to(weight.dtype) if needs_bias_grad else None
    return grad_x, grad_w.to(weight.dtype), grad_b


def recurrent_backward(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor,
                       trpre: Tensor, s_prev: Tensor, trrec_prev: Tensor, weight: Tensor,
                       weight_rec: Tensor, alpha_post: float, alpha_pre: float,
                       needs_input_grad: bool = True, needs_bias_grad: bool = True):
    """The S-TLLR backward of the recurrent layer: linear_backward for W (x, trpre) and the same
    rule for W_rec with x -> s[t-1], trpre -> trrec[t-1] (no bias, nothing flows into s[t-1]).
    Returns (dx, dW, db, dW_rec); leading dims are the batch (D x B rows in the time-fused mode)."""
    grad_x, grad_w, grad_b = linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight,
                                             alpha_post, alpha_pre, needs_input_grad, needs_bias_grad)
    _, grad_w_rec, _ = linear_backward(grad_s, psi, causal, trpost_prev, s_prev, trrec_prev, weight_rec,
                                       alpha_post, alpha_pre, False, False)
    return grad_x, grad_w, grad_b, grad_w_rec


def recurrent_backward_reverse(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor,
                               trpre_first: Tensor, s_prev: Tensor, trrec_first: Tensor, weight: Tensor,
                               weight_rec: Tensor, lambda_pre: float, alpha_post: float, alpha_pre: float,
                               needs_input_grad: bool = True, needs_bias_grad: bool = True):
    """`recurrent_backward` over D loss steps in reverse-time form: the same sums, added in another order.

    Inputs are sequences [D, B, ...] of the loss steps d = 0..D-1 (L, psi, causal, trpost[t-1], x[t],
    s[t-1]) and only the FIRST loss step's traces: trpre_first = trpre[t0] [B, K] and
    trrec_first = trrec[t0-1] [B, N]. The later traces follow from trpre[d] = lambda_pre trpre[d-1] + x[d],
    so with a_d = L_d * causal_d and the reverse-time trace G_d = lambda_pre G_{d+1} + a_d (G_D = 0):

        sum_d a_d^T trpre[d] = sum_{d>=1} G_d^T x[d] + G_0^T trpre_first

    (likewise for W_rec with x -> s[t-1], trpre -> trrec[t-1]). Hence with
    A_d = alpha_post L_d * trpost_prev_d + alpha_pre G_d [d >= 1] and C = alpha_pre G_0:

        dW = A^T x + C^T trpre_first          dW_rec = A^T s_prev + C^T trrec_first

    one GEMM over the D x B rows plus one over B rows (the forward-time form: 2 x D x B), and the
    trace sequences need not be kept. dx and db are as in linear_backward. Returns (dx, dW, db, dW_rec).
    """
    sd = state_dtype(grad_s.dtype)
    L = grad_s.to(sd)
    a = L * causal.to(sd)
    A = alpha_post * (L * trpost_prev.to(sd))
    G = torch.zeros_like(L[0]) if L.shape[0] else L.new_zeros(L.shape[1:])
    for d in reversed(range(L.shape[0])):
        G = lambda_pre * G + a[d]
        if d > 0:
            A[d] = A[d] + alpha_pre * G
    C = alpha_pre * G
    A = A.flatten(0, 1)
    grad_w = A.t() @ x.to(sd).flatten(0, 1) + C.t() @ trpre_first.to(sd)
    grad_w_rec = A.t() @ s_prev.to(sd).flatten(0, 1) + C.t() @ trrec_first.to(sd)
    g_psi = (L * psi.to(sd)).flatten(0, 1)
    grad_x = None
    if needs_input_grad:
        grad_x = (g_psi @ weight.to(sd)).to(x.dtype).view(*grad_s.shape[:-1], x.shape[-1])
    grad_b = g_psi.sum(0).to(weight.dtype) if needs_bias_grad else None
    return grad_x, grad_w.to(weight.dtype), grad_b, grad_w_rec.to(weight_rec.dtype)


def conv_backward(grad_s: Tensor, psi: Tensor, causal: Tensor, trpost_prev: Tensor, x: Tensor,
                  trpre: Tensor, weight: Tensor, stride, padding, dilation, groups: int,
                  alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                  needs_bias_grad: bool = True):
    """The S-TLLR backward of one conv2d step: the same rule with conv weight-gradients.

    dW = conv2d_weight(x, L*trpost_prev) * alpha_post + conv2d_weight(trpre, L*causal) * alpha_pre,
    computed as one weight-gradient call on the batch-concatenated operands.
    """
    sd = state_dtype(grad_s.dtype)
    L = grad_s.to(sd)
    g_psi = L * psi.to(sd)
    g_causal = L * causal.to(sd)
    inputs = torch.cat([alpha_post * x.to(sd), alpha_pre * trpre.to(sd)])
    grads = torch.cat([L * trpost_prev.to(sd), g_causal])
    grad_w = torch.nn.grad.conv2d_weight(inputs, weight.shape, grads, stride, padding, dilation, groups)
    grad_x = None
    if needs_input_grad:
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight.to(sd), g_psi, stride, padding,
                                            dilation, groups).to(x.dtype)
    grad_b = g_psi.sum((0, 2, 3)).to(weight.dtype) if needs_bias_grad else None
    return grad_x, grad_w.to(weight.dtype), grad_b


def current_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """I[t] = W x[t] + b."""
    return F.linear(x, weight, bias)


def current_conv(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride, padding, dilation,
                 groups: int) -> Tensor:
    """I[t] = conv2d(x[t], W, b)."""
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups)
