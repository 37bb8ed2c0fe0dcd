"""Random inputs of the ops, shared by the stages (fresh values at every call)."""
from __future__ import annotations

import torch

from stllr_kernels import reference as R
from stllr_kernels.config import RuleConfig

F32 = torch.float32
FACTORS = (0.5, 0.8, -0.2, 1.0)  # lambda_post, lambda_pre, alpha_post, alpha_pre (docs/rule.md section 4)


def rule(psi="fast_sigmoid", reset="soft", post="psi") -> RuleConfig:
    return RuleConfig(*FACTORS, psi=psi, reset=reset, post=post)


def beta_theta(device):
    return R.beta_of(torch.tensor(2.0, device=device)), R.theta_of(torch.tensor(0.6, device=device))


def strided_like(t: torch.Tensor) -> torch.Tensor:
    """The same values in a non-contiguous tensor (every other element of a wider buffer)."""
    wide = torch.empty(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype, device=t.device)
    view = wide[..., ::2]
    view.copy_(t)
    assert not view.is_contiguous()
    return view


def spikes(shape, device, dtype=F32, rate=0.2):
    return (torch.rand(shape, device=device) < rate).to(dtype)


def linear_inputs(device, lead, n, k, dtype=F32, variant="psi", scale=1.0):
    """Arguments of linear_backward for leading dims `lead`, N outputs, K inputs.
    variant: psi (causal = psi) | spike (causal = s) | readout (no psi, causal, trpost_prev)."""
    L = (torch.randn(*lead, n, device=device) * scale).to(dtype)
    psi = torch.rand(*lead, n, device=device)
    prev = torch.rand(*lead, n, device=device)
    x, trpre = spikes((*lead, k), device, dtype), torch.rand(*lead, k, device=device) * 2
    W = torch.randn(n, k, device=device).to(dtype)
    f = FACTORS
    if variant == "readout":
        return (L, None, None, None, x, trpre, W, 0.0, f[3], True, True)
    causal = spikes((*lead, n), device) if variant == "spike" else psi
    return (L, psi, causal, prev, x, trpre, W, f[2], f[3], True, True)


def conv_inputs(device, B, cin, cout, hw, dtype=F32, stride=1, groups=1, channels_last=False, scale=1.0,
                variant="psi"):
    """Arguments of conv_backward: a 3x3 convolution, padding 1; `scale` multiplies the signal L;
    variant: psi (causal = psi) | spike (causal = s)."""
    oh = (hw + 2 - 3) // stride + 1
    post = (B, cout, oh, oh)
    L = (torch.randn(post, device=device) * scale).to(dtype)
    psi, prev = torch.rand(post, device=device), torch.rand(post, device=device)
    x, trpre = spikes((B, cin, hw, hw), device, dtype), torch.rand(B, cin, hw, hw, device=device) * 2
    W = torch.randn(cout, cin // groups, 3, 3, device=device).to(dtype)
    causal = spikes(post, device) if variant == "spike" else psi
    if channels_last:
        L, psi, causal, prev, x, trpre = (t.contiguous(memory_format=torch.channels_last)
                                          for t in (L, psi, causal, prev, x, trpre))
    return (L, psi, causal, prev, x, trpre, W, stride, 1, 1, groups, FACTORS[2], FACTORS[3], True, True)


def dyadic(*shape, device, scale=1.0):
    """Values on a grid of 2^-6 in [-scale, scale]: sums of a few of them are exact in any order (and
    in bf16), so GEMMs that add up in different orders give the same currents and the same spikes."""
    return torch.randint(-64, 65, shape, device=device).float() / 64 * scale


def recurrent_inputs(device, T, B, K, N, dtype=F32):
    """Arguments of recurrent_sequence before (cfg, save_from): spikes in, dyadic weights (exact
    currents), random states."""
    x = spikes((T, B, K), device, dtype, rate=0.3)
    weight = (dyadic(N, K, device=device) * 0.5).to(dtype)
    weight_rec, bias = (dyadic(N, N, device=device) * 0.5).to(dtype), dyadic(N, device=device).to(dtype)
    s_prev = spikes((B, N), device, dtype, rate=0.3)
    v, trpost, trrec = (torch.rand(B, N, device=device) for _ in range(3))
    trpre = torch.rand(B, K, device=device)
    beta, theta = torch.tensor(0.75, device=device), torch.tensor(0.6, device=device)
    return x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta


def readout_inputs(device, T, B, K, N):
    """Arguments of readout_sequence before save_from."""
    x, weight, bias = spikes((T, B, K), device), torch.randn(N, K, device=device) * 0.1, torch.randn(N, device=device)
    v, trpre = torch.randn(B, N, device=device), torch.rand(B, K, device=device)
    return x, weight, bias, v, trpre, torch.tensor(0.993, device=device), 0.99


def recurrent_backward_inputs(device, rows, K, N, dtype=F32):
    """Arguments of recurrent_backward (rows = batch, or D x B in the time-fused mode)."""
    L = torch.randn(rows, N, device=device).to(dtype)
    psi, causal, prev = (torch.rand(rows, N, device=device) for _ in range(3))
    x, trpre = spikes((rows, K), device, dtype), torch.rand(rows, K, device=device) * 2
    s_prev, trrec = spikes((rows, N), device, dtype, rate=0.4), torch.rand(rows, N, device=device) * 2
    weight, weight_rec = torch.randn(N, K, device=device).to(dtype), torch.randn(N, N, device=device).to(dtype)
    return (L, psi, causal, prev, x, trpre, s_prev, trrec, weight, weight_rec, FACTORS[2], FACTORS[3], True, True)


def reverse_inputs(device, D, B, K, N, dtype=F32, post="psi"):
    """Arguments of recurrent_backward_reverse: D loss steps, the first step's traces only."""
    L = torch.randn(D, B, N, device=device).to(dtype)
    psi, prev = torch.rand(D, B, N, device=device), torch.rand(D, B, N, device=device)
    causal = spikes((D, B, N), device, rate=0.4) if post == "spike" else psi
    x, s_prev = spikes((D, B, K), device, dtype), spikes((D, B, N), device, dtype, rate=0.4)
    trpre_first, trrec_first = torch.rand(B, K, device=device) + 0.5, torch.rand(B, N, device=device) + 0.5
    weight, weight_rec = torch.randn(N, K, device=device).to(dtype), torch.randn(N, N, device=device).to(dtype)
    return (L, psi, causal, prev, x, trpre_first, s_prev, trrec_first, weight, weight_rec,
            FACTORS[1], FACTORS[2], FACTORS[3], True, True)


def standardize_inputs(device, shape):
    """Arguments of standardize_backward for a weight of `shape` ([N, fan_in...])."""
    weight = torch.randn(shape, device=device)
    gain = torch.rand(shape[0], *([1] * (len(shape) - 1)), device=device) + 0.5
    _, normalized, scale = R.standardize(weight, gain)
    return torch.randn(shape, device=device), normalized, scale, gain
