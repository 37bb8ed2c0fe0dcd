"""The SHD feed-forward S-TLLR layer (700 -> 450, B=128, T=100, 90 loss steps): time-fused (one
sequence call) against step-by-step (T calls, a backward at each loss step), per backend.

Correctness without tolerating flips: the weights and bias are multiples of 2^-8 and the inputs are
spikes, so every current is an exact float32 sum whatever the GEMM's summation order, and the spikes
of both modes must agree exactly (no spike can be a rounding tie). The gradients then differ only by
summation order and follow the suite's policy. Timing: both modes on each backend (goal: time-fused
>= 3x faster than the same backend's step-by-step).
"""
from __future__ import annotations

import contextlib

import torch

import stllr_kernels
from stllr_kernels.nn import LinearSTLLR

from ..compare import spike_flips, values_verdict
from ..timing import WHOLE_PASS

GRID = 2.0 ** -8


@contextlib.contextmanager
def backend(name):
    stllr_kernels.set_backend(name)
    try:
        yield
    finally:
        stllr_kernels.set_backend(None)


def make_layer(S, dev):
    layer = LinearSTLLR(S["K"], S["N"], leak=5.0, factors=(0.5, 1.0, 1.0, 1.0), normalization=False).to(dev)
    with torch.no_grad():  # exact currents: weights on a dyadic grid (see the module docstring)
        layer.weight.copy_(torch.round(torch.randn_like(layer.weight) * 0.15 / GRID) * GRID)
        layer.bias.copy_(torch.round(torch.randn_like(layer.bias) * 0.1 / GRID) * GRID)
    return layer


class Modes:
    """The layer, its inputs, and one training pass in each mode (returning the spikes)."""

    def __init__(self, S, dev):
        self.T, self.D = S["T"], S["D"]
        self.layer = make_layer(S, dev)
        self.xs = (torch.rand(S["T"], S["B"], S["K"], device=dev) < 0.1).float()
        self.w = torch.randn(S["T"], S["B"], S["N"], device=dev)

    def step(self):
        layer, T, D = self.layer, self.T, self.D
        layer.reset_state()
        out = []
        for t in range(T):
            s = layer(self.xs[t])
            out.append(s.detach())
            if t >= T - D:
                (s * self.w[t]).sum().backward()
        return torch.stack(out)

    def sequence(self):
        layer, T, D = self.layer, self.T, self.D
        layer.reset_state()
        s = layer(self.xs, loss_steps=D)
        (s[T - D:] * self.w[T - D:]).sum().backward()
        return s.detach()

    def outputs(self, fn):
        """Spikes and gradients of one pass from zero gradients."""
        self.layer.zero_grad(set_to_none=True)
        s = fn()
        return s, [self.layer.weight.grad.clone(), self.layer.bias.grad.clone()]


def warm_only(ctx) -> None:
    """The warm-up stage's part: the Triton compiles of both modes, while the extension builds."""
    m = Modes(ctx.S, ctx.device)
    with backend("triton"):
        m.sequence()
        m.step()


def run(ctx) -> None:
    S = ctx.S
    B, K, T, D = S["B"], S["K"], S["T"], S["D"]
    label = f"SHD LinearSTLLR {K}->{S['N']} B={B} T={T} D={D}"
    names = ["torch", *ctx.providers(["triton", ctx.ext_name()])]
    m = Modes(S, ctx.device)
    with backend("torch"):
        want_s, want_g = m.outputs(m.step)
    ctx.clock.start()
    for name in names:
        if ctx.skip_if_over_budget("layer time-fused", label):
            continue
        with ctx.guard("layer time-fused", label, name), backend(name):
            got_s, got_g = m.outputs(m.sequence)  # also the warm-up of both modes
            m.step()
            flips = spike_flips(got_s, want_s, torch.zeros_like(want_s, dtype=torch.bool), over_time=True)
            values = values_verdict([("dW", got_g[0], want_g[0]), ("db", got_g[1], want_g[1])],
                                    torch.float32, 2 * B * D)
            step_us = 1e6 * ctx.clock.events_s(m.step, reps=S["reps"])
            seq_us = 1e6 * ctx.clock.events_s(m.sequence, reps=S["reps"])
            ctx.add("layer step-by-step", label, name, us=step_us, timing=WHOLE_PASS)
            ctx.add("layer time-fused", label, name, "ok" if flips.ok and values.ok else "FAIL",
                    detail=f"vs torch step-by-step: {flips.text()} (exact currents: none allowed); "
                           f"{values.detail}", us=seq_us, ref_us=step_us, timing=WHOLE_PASS,
                    achieved=f"{step_us / seq_us:.2f}x vs its step-by-step", limit="goal 3x",
                    headline=name != "torch")
    m.layer.zero_grad(set_to_none=True)
