"""The eligibility GEMMs against torch.mm, and the conv eligibility against bare cuDNN.

linear_backward does 6*rows*N*K FLOPs (dW: two products of 2*rows*N*K; dx: 2*rows*N*K); the limit is
torch.mm doing the same FLOPs on operands made in advance ([N, 2 rows] x [2 rows, K] and
[rows, N] x [N, K]), in the same precision: fp32 (TF32 off), tf32, bf16 (goal >= 70% of its rate).
In fp32 both sides run on the CUDA cores: Triton's "ieee" dot compiles to an FMA loop (no wgmma in
its sm_90 PTX, with triton 3.6 and 3.9), and cuBLAS with TF32 off runs SGEMM; tf32 and bf16 use wgmma.
conv_backward is timed against cuDNN's weight gradient on the batch-concatenated operands plus its
input gradient (TF32 off), on the Gesture VGG's layers.
"""
from __future__ import annotations

import contextlib

import torch

from stllr_kernels import reference as R

from ..timing import DEVICE
from .inputs import conv_inputs, linear_inputs

PRECISIONS = (("fp32", torch.float32, "highest"), ("tf32", torch.float32, "high"),
              ("bf16", torch.bfloat16, "highest"))


@contextlib.contextmanager
def matmul_precision(level: str):
    """torch.mm / cuBLAS and the Triton dots follow torch's float32 matmul precision."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(level)
    torch.backends.cuda.matmul.allow_tf32 = level != "highest"
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)
        torch.backends.cuda.matmul.allow_tf32 = False


def linear_cases(ctx):
    S = ctx.S
    B, N, K, D = S["B"], S["N"], S["K"], S["D"]
    big = S["gemm_big"]
    return [(f"SHD step {B}x{K}->{N}", B, N, K, False),
            (f"SHD time-fused {D}x{B}x{K}->{N}", D * B, N, K, True),
            (f"large {big[0]}x{big[2]}->{big[1]}", big[0], big[1], big[2], True)]


def prepare(ctx) -> list:
    """(check, label, matmul precision, FLOPs or None, args, limit fn, headline) per timed case."""
    dev = ctx.device
    work = []
    for label, rows, n, k, headline in linear_cases(ctx)[:ctx.S["cases"]]:
        for tag, dtype, level in PRECISIONS:
            args = linear_inputs(dev, (rows,), n, k, dtype)
            a, b = torch.randn(n, 2 * rows, device=dev).to(dtype), torch.randn(2 * rows, k, device=dev).to(dtype)
            mm = (lambda a=a, b=b, L=args[0], W=args[6]: (torch.mm(a, b), torch.mm(L, W)))
            work.append(("linear_backward", f"{label} {tag}", level, 6 * rows * n * k, args, mm, headline))
    B = ctx.S["gB"]
    for cin, cout, hw in ctx.S["convs"][::2][:ctx.S["cases"]]:
        args = conv_inputs(dev, B, cin, cout, hw)
        L, x, W = args[0], args[4], args[6]
        inputs, grads = torch.cat([x, args[5]]), torch.cat([L, L])
        floor = (lambda inputs=inputs, grads=grads, L=L, x=x, W=W: (
            torch.nn.grad.conv2d_weight(inputs, W.shape, grads, 1, 1),
            torch.nn.grad.conv2d_input(x.shape, W, L, 1, 1)))
        work.append(("conv_backward", f"VGG {B}x{cin}x{hw}x{hw}->{cout} 3x3 fp32", "highest", None, args,
                     floor, False))
    return work


def gemm_note(label: str) -> str:
    """What the row's goal compares: in exact fp32 neither side uses tensor cores (the Triton dot's
    "ieee" precision compiles to an FMA loop, no wgmma, by the sm_90 PTX; cuBLAS runs SGEMM)."""
    if label.endswith("fp32"):
        return "goal >= 70% of torch.mm's rate; fp32: CUDA-core FMA on both sides (no tensor cores)"
    return "goal >= 70% of torch.mm's rate; tensor cores (wgmma) on both sides"


def warm(ctx, provs, work) -> None:
    """Every case once per provider: compiles and autotuning, before the budget starts."""
    for check, label, level, _, args, _, _ in work:
        with matmul_precision(level):
            for name, ops in provs.items():
                with ctx.guard("warm-up", label, name):
                    getattr(ops, check)(*args)


def warm_only(ctx) -> None:
    """The warm-up stage's part: the Triton compiles, while the extension builds."""
    warm(ctx, ctx.providers(["triton"]), prepare(ctx))


def run(ctx) -> None:
    provs = ctx.providers(["triton", ctx.ext_name()])
    work = prepare(ctx)
    warm(ctx, provs, work)
    ctx.clock.start()
    for check, label, level, flops, args, limit_fn, headline in work:
        if ctx.skip_if_over_budget(check, label):
            continue
        with matmul_precision(level):
            limit_us = ctx.clock.us(limit_fn)
            ref_us = ctx.clock.us(lambda: getattr(R, check)(*args))
            limit_name = "torch.mm, same FLOPs" if flops else "cuDNN wgrad + dgrad"
            limit_rate = f"{flops / limit_us / 1e6:.4g} TFLOP/s" if flops else ""
            ctx.add(check, label, limit_name, us=limit_us, ref_us=ref_us, timing=DEVICE, achieved=limit_rate)
            for name, ops in provs.items():
                with ctx.guard(check, label, name):
                    us = ctx.clock.us(lambda: getattr(ops, check)(*args))
                    ctx.add(check, label, name, us=us, ref_us=ref_us, timing=DEVICE,
                            achieved=f"{flops / us / 1e6:.4g} TFLOP/s" if flops else "",
                            limit=f"{limit_name} {limit_us:.4g} us", pct=100 * limit_us / us,
                            note=gemm_note(label) if flops else "", headline=headline)
