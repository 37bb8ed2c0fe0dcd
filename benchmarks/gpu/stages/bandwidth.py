"""Element-wise and sequence kernels against the measured device copy bandwidth.

Bandwidth-sized cases (256 MiB and more per tensor) give GB/s of counted bytes as a % of a
device-to-device copy (goal >= 80%); the paper's SHD / VGG sizes are small enough to be launch-bound,
so they are reported in microseconds beside the torch reference. Bytes counted per element (fp32):
lif_step 28 (reads I, v, trpost; writes s, v, trpost, psi), pre_trace 12, lif_sequence
4(2T + 2D + 4), trace_sequence 4(T + D + 2).
"""
from __future__ import annotations

import torch

from stllr_kernels import reference as R

from ..timing import DEVICE, copy_gbps
from .inputs import beta_theta, rule, spikes


def cases(ctx):
    """(check, case, bytes moved, is bandwidth-sized, fn(ops))."""
    S, dev = ctx.S, ctx.device
    beta, theta = beta_theta(dev)
    cfg = rule("fast_sigmoid", "soft", "psi")
    out = []

    def step_case(label, shape, big):
        n = 1
        for d in shape:
            n *= d
        cur, v, tr = torch.randn(shape, device=dev), torch.randn(shape, device=dev), torch.rand(shape, device=dev)
        x = spikes(shape, dev)
        out.append(("lif_step", label, 28 * n, big, lambda ops: ops.lif_step(cur, v, tr, beta, theta, cfg)))
        out.append(("pre_trace", label, 12 * n, big, lambda ops: ops.pre_trace(tr, x, 0.8)))

    def seq_case(label, T, D, shape, big):
        n = 1
        for d in shape:
            n *= d
        cur = torch.randn(T, *shape, device=dev) * 0.5
        xs = spikes((T, *shape), dev)
        v, tr = torch.zeros(shape, device=dev), torch.zeros(shape, device=dev)
        out.append(("lif_sequence", label, 4 * n * (2 * T + 2 * D + 4), big,
                    lambda ops: ops.lif_sequence(cur, v, tr, beta, theta, cfg, T - D)))
        out.append(("trace_sequence", label, 4 * n * (T + D + 2), big,
                    lambda ops: ops.trace_sequence(xs, tr, 0.8, T - D)))

    n, T, D = S["bw_n"], S["bw_T"], S["bw_D"]
    step_case(f"bandwidth n={n} fp32 ({4 * n >> 20} MiB per tensor)", (n,), True)
    seq_case(f"bandwidth T={T} D={D} n={n // 4} fp32 ({T * n >> 20} MiB currents)", T, D, (n // 4,), True)
    step_case(f"SHD {S['B']}x{S['N']}", (S["B"], S["N"]), False)
    seq_case(f"SHD T={S['T']} D={S['D']} {S['B']}x{S['N']}", S["T"], S["D"], (S["B"], S["N"]), False)
    c0 = S["convs"][0]
    step_case(f"VGG layer 1 {S['gB']}x{c0[1]}x{c0[2]}x{c0[2]}", (S["gB"], c0[1], c0[2], c0[2]), False)
    return out


def warm(ctx, provs, todo) -> None:
    """Run everything once: compiles and autotuning, before the budget starts."""
    for check, label, _, _, fn in todo:
        for name, ops in provs.items():
            with ctx.guard("warm-up", f"{check} {label}", name):
                fn(ops)


def warm_only(ctx) -> None:
    """The warm-up stage's part: the Triton compiles, while the extension builds."""
    warm(ctx, ctx.providers(["triton"]), cases(ctx))


def run(ctx) -> None:
    provs = {"torch (reference)": R, **ctx.providers(["triton", ctx.ext_name()])}
    todo = cases(ctx)
    warm(ctx, provs, todo)
    copy = copy_gbps(ctx.clock, ctx.S["copy_mib"])
    ctx.clock.start()
    ctx.add("device copy", f"{ctx.S['copy_mib']} MiB fp32", "torch copy_", achieved=f"{copy:.4g} GB/s",
            timing=DEVICE, note="read + write bytes", headline=True)
    for check, label, nbytes, big, fn in todo:
        if ctx.skip_if_over_budget(check, label):
            continue
        ref_us = ctx.clock.us(lambda: fn(R))
        for name, ops in provs.items():
            if ops is R:
                continue
            with ctx.guard(check, label, name):
                us = ctx.clock.us(lambda: fn(ops))
                gbps = nbytes / us / 1e3
                ctx.add(check, label, name, us=us, ref_us=ref_us, timing=DEVICE, achieved=f"{gbps:.4g} GB/s",
                        limit=f"copy {copy:.4g} GB/s", pct=100 * gbps / copy,
                        note="goal >= 80% of copy" if big else "launch-bound size: microseconds matter",
                        headline=big)
