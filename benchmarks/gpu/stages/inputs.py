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
