"""pre_trace and trace_sequence: trace = decay * trace + x (docs/design.md, op 2, and its sequence form)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...reference import state_dtype
from .autotune import autotune
from .common import check_save_from, check_tensor, elementwise_configs, flat, sequence_configs


@autotune(elementwise_configs(), key=["n"], reuse=["n"])
@triton.jit
def _pre_trace_kernel(tr_ptr, x_ptr, out_ptr, n, decay, BLOCK: tl.constexpr):
    """out = decay * tr + x over n elements, in out's dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    out_ty = out_ptr.dtype.element_ty
    tr = tl.load(tr_ptr + offs, mask=mask, other=0.0).to(out_ty)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(out_ty)
    tl.store(out_ptr + offs, decay * tr + x, mask=mask)


@autotune(sequence_configs(), key=["n", "T"], reuse=["n", "T"])
@triton.jit
def _trace_sequence_kernel(x_ptr, tr_ptr, saved_ptr, out_ptr, n, T, save_from, decay,
                           BLOCK: tl.constexpr):
    """All T steps of trace = decay * trace + x[t] for n elements; the trace stays in registers,
    trace[t] is written only for t >= save_from, the last one always."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    out_ty = out_ptr.dtype.element_ty
    tr = tl.load(tr_ptr + offs, mask=mask, other=0.0).to(out_ty)
    x_ptrs = x_ptr + offs  # advanced by n per step: 64-bit pointer arithmetic, no t * n overflow
    for _ in range(0, save_from):
        tr = decay * tr + tl.load(x_ptrs, mask=mask, other=0.0).to(out_ty)
        x_ptrs += n
    saved_ptrs = saved_ptr + offs
    for _ in range(save_from, T):
        tr = decay * tr + tl.load(x_ptrs, mask=mask, other=0.0).to(out_ty)
        tl.store(saved_ptrs, tr, mask=mask)
        x_ptrs += n
        saved_ptrs += n
    tl.store(out_ptr + offs, tr, mask=mask)


def _trace_dtype(trace, x):
    # as the reference: decay * trace + x.to(state_dtype(x)) promotes to the wider of the two
    return torch.promote_types(trace.dtype, state_dtype(x.dtype))


def pre_trace(trpre, x, lambda_pre: float):
    """reference.pre_trace in one launch."""
    check_tensor("x", x)
    check_tensor("trpre", trpre, shape=x.shape, device=x.device)
    out = torch.empty(x.shape, dtype=_trace_dtype(trpre, x), device=x.device)
    n = x.numel()
    if n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _pre_trace_kernel[grid](flat(trpre), flat(x), out, n, float(lambda_pre),
                                enable_fp_fusion=False)  # no FMA, as the reference and the CUDA build
    return out


def trace_sequence(x, trace, decay: float, save_from: int):
    """reference.trace_sequence in one launch: returns (trace[save_from:], trace[T-1])."""
    check_tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x: expected a sequence [T, ...], got shape {tuple(x.shape)}")
    check_tensor("trace", trace, shape=x.shape[1:], device=x.device)
    T = x.shape[0]
    save_from = check_save_from(save_from, T)
    dtype = _trace_dtype(trace, x)
    saved = torch.empty((T - save_from, *x.shape[1:]), dtype=dtype, device=x.device)
    out = trace.to(dtype, copy=True) if T == 0 else torch.empty(trace.shape, dtype=dtype, device=x.device)
    n = trace.numel()
    if n and T:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _trace_sequence_kernel[grid](flat(x), flat(trace), saved, out, n, T, save_from, float(decay),
                                     enable_fp_fusion=False)  # no FMA, as the reference and the CUDA build
    return saved, out
