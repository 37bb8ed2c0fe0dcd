"""The S-TLLR eligibility backward of a linear layer (docs/design.md, op 3) and a conv2d layer (op 4).

linear_backward, one GEMM over the batch:

    dW = alpha_post * (L * trpost_prev)^T x + alpha_pre * (L * causal)^T trpre
    db = sum_b L * psi          dx = (L * psi) @ W

Kernel 1 (`_eligibility_dw_kernel`) tiles dW and reduces over the batch with tl.dot; the products
L * trpost_prev and L * causal are formed in registers while the tiles load, so nothing of size
B x N x K and no product tensor is ever written. One extra column of programs computes db in the
same launch. Kernel 2 (`_signal_dx_kernel`) is dx = (L * psi) @ W, again forming L * psi while
loading. Both accumulate in float32; strides are passed, so transposed / sliced inputs need no copy.

conv_backward, the same products for a conv2d layer:

    dW = alpha_post * conv2d_weight(x, L * trpost_prev) + alpha_pre * conv2d_weight(trpre, L * causal)
    db = sum_{b,h,w} L * psi      dx = conv2d_input(L * psi, W)

The weight gradient in one launch: one fused Triton element-wise kernel (`_conv_products_kernel`)
forms the three products, writing the two weight-gradient operands straight into one
batch-concatenated buffer [2B, C, OH, OW]; then ONE torch conv weight-gradient call (cuDNN on a GPU,
oneDNN/native on a CPU) on cat([x, trpre]) and that buffer. dx and db come from the same kernel's
L * psi (db a sum, dx one conv input-gradient call).
"""
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ...reference import state_dtype
from .autotune import autotune
from .common import (SIGNAL_GRAD_TILES, WEIGHT_GRAD_TILES, check_tensor, dot_config, elementwise_configs,
                     gemm_configs)


@triton.jit
def _tile(ptr, rows, cols, s_row, s_col, mask):
    """The [rows, cols] tile of a strided 2-D tensor, zeros outside `mask`."""
    return tl.load(ptr + rows[:, None] * s_row + cols[None, :] * s_col, mask=mask, other=0.0)


@autotune(gemm_configs("BLOCK_N", "BLOCK_K", "BLOCK_B", WEIGHT_GRAD_TILES),
          key=["N", "K", "B", "DOT_DTYPE", "INPUT_PRECISION"], restore_value=["dw_ptr", "db_ptr"], reuse=["B"])
@triton.jit
def _eligibility_dw_kernel(
    # pointers: [B, N] post side, [B, K] pre side, outputs dW [N, K], db [N]
    l_ptr, psi_ptr, causal_ptr, prev_ptr, x_ptr, tr_ptr, dw_ptr, db_ptr,
    # sizes
    B, N, K,
    # strides (batch, feature) of each input, (row, col) of dW
    s_lb, s_ln, s_pb, s_pn, s_cb, s_cn, s_qb, s_qn, s_xb, s_xk, s_tb, s_tk, s_wn, s_wk, s_db,
    # factors
    alpha_post, alpha_pre,
    # meta-parameters
    HAS_PSI: tl.constexpr, HAS_CAUSAL: tl.constexpr, HAS_POST: tl.constexpr, HAS_PRE: tl.constexpr,
    WRITE_DB: tl.constexpr, ACCUMULATE: tl.constexpr, DOT_DTYPE: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
):
    """Program (i, j) with j < cdiv(K, BLOCK_K): the dW tile (i, j). Program (i, cdiv(K, BLOCK_K)):
    the db slice i. HAS_*: optional inputs (psi/causal None mean 1, prev None drops the non-causal
    term, alpha_pre == 0 drops the causal one). ACCUMULATE adds to what dW/db already hold.

    Offsets are int64 along the program-id dims but int32 along the batch: int64 there costs ~100
    registers per thread (see benchmarks/compile_check.py); the launcher splits larger batches."""
    pid_n = tl.program_id(0).to(tl.int64)
    pid_k = tl.program_id(1).to(tl.int64)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rb = tl.arange(0, BLOCK_B)  # int32: the launcher keeps b * stride < 2^31
    mask_n = rn < N
    if pid_k == tl.cdiv(K, BLOCK_K):
        if WRITE_DB:
            db = tl.zeros((BLOCK_N,), dtype=tl.float32)
            for b0 in range(0, B, BLOCK_B):
                b = b0 + rb
                m = mask_n[:, None] & (b[None, :] < B)
                g = _tile(l_ptr, rn, b, s_ln, s_lb, m).to(tl.float32)
                if HAS_PSI:
                    g = g * _tile(psi_ptr, rn, b, s_pn, s_pb, m).to(tl.float32)
                db += tl.sum(g, axis=1)
            if ACCUMULATE:
                db += tl.load(db_ptr + rn * s_db, mask=mask_n, other=0.0).to(tl.float32)
            tl.store(db_ptr + rn * s_db, db.to(db_ptr.dtype.element_ty), mask=mask_n)
    else:
        rk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        mask_k = rk < K
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for b0 in range(0, B, BLOCK_B):
            b = b0 + rb
            m_nb = mask_n[:, None] & (b[None, :] < B)   # post-side tiles, loaded as [N, B]
            m_bk = (b[:, None] < B) & mask_k[None, :]   # pre-side tiles [B, K]
            L = _tile(l_ptr, rn, b, s_ln, s_lb, m_nb).to(tl.float32)
            if HAS_PRE:  # alpha_pre * (L * causal)^T trpre
                g = L * alpha_pre
                if HAS_CAUSAL:
                    g = g * _tile(causal_ptr, rn, b, s_cn, s_cb, m_nb).to(tl.float32)
                tr = _tile(tr_ptr, b, rk, s_tb, s_tk, m_bk)
                acc = tl.dot(g.to(DOT_DTYPE), tr.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
            if HAS_POST:  # alpha_post * (L * trpost_prev)^T x
                g = L * alpha_post * _tile(prev_ptr, rn, b, s_qn, s_qb, m_nb).to(tl.float32)
                x = _tile(x_ptr, b, rk, s_xb, s_xk, m_bk)
                acc = tl.dot(g.to(DOT_DTYPE), x.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
        w_ptrs = dw_ptr + rn[:, None] * s_wn + rk[None, :] * s_wk
        m_nk = mask_n[:, None] & mask_k[None, :]
        if ACCUMULATE:
            acc += tl.load(w_ptrs, mask=m_nk, other=0.0).to(tl.float32)
        tl.store(w_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=m_nk)


@autotune(gemm_configs("BLOCK_B", "BLOCK_K", "BLOCK_N", SIGNAL_GRAD_TILES),
          key=["B", "N", "K", "DOT_DTYPE", "INPUT_PRECISION"], reuse=["B"])
@triton.jit
def _signal_dx_kernel(
    # pointers: L, psi [B, N], W [N, K], dx [B, K]
    l_ptr, psi_ptr, w_ptr, dx_ptr,
    # sizes
    B, N, K,
    # strides
    s_lb, s_ln, s_pb, s_pn, s_wn, s_wk, s_xb, s_xk,
    # meta-parameters
    HAS_PSI: tl.constexpr, DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dx = (L * psi) @ W with L * psi formed while loading (psi None means 1); offsets as above."""
    rb = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rk = tl.program_id(1).to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    rn0 = tl.arange(0, BLOCK_N).to(tl.int64)  # int64 here costs nothing (compile_check.py)
    mask_b = rb < B
    mask_k = rk < K
    acc = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        rn = n0 + rn0
        m_bn = mask_b[:, None] & (rn[None, :] < N)
        g = _tile(l_ptr, rb, rn, s_lb, s_ln, m_bn).to(tl.float32)
        if HAS_PSI:
            g = g * _tile(psi_ptr, rb, rn, s_pb, s_pn, m_bn).to(tl.float32)
        w = _tile(w_ptr, rn, rk, s_wn, s_wk, (rn[:, None] < N) & mask_k[None, :])
        acc = tl.dot(g.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    tl.store(dx_ptr + rb[:, None] * s_xb + rk[None, :] * s_xk, acc.to(dx_ptr.dtype.element_ty),
             mask=mask_b[:, None] & mask_k[None, :])


@autotune(elementwise_configs(), key=["n"], reuse=["n"])
@triton.jit
def _conv_products_kernel(
    l_ptr, psi_ptr, causal_ptr, prev_ptr, grads_ptr, gpsi_ptr,
    n, alpha_post, alpha_pre,
    BLOCK: tl.constexpr,
):
    """Over n = B*C*OH*OW elements: gpsi = L*psi and the batch-concatenated operands
    grads[:n] = alpha_post * L * prev, grads[n:] = alpha_pre * L * causal."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    L = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    psi = tl.load(psi_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(gpsi_ptr + offs, (L * psi).to(gpsi_ptr.dtype.element_ty), mask=mask)
    prev = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    causal = tl.load(causal_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g_ty = grads_ptr.dtype.element_ty
    tl.store(grads_ptr + offs, (alpha_post * L * prev).to(g_ty), mask=mask)
    tl.store(grads_ptr + n + offs, (alpha_pre * L * causal).to(g_ty), mask=mask)


# ----------------------------------------------------------------------------- launchers

def _rows(name: str, t, features: Optional[int] = None, batch: Optional[int] = None, dtypes=None):
    """t as [batch, features] (leading dims flattened; a view when the strides allow it)."""
    check_tensor(name, t, **({"dtypes": dtypes} if dtypes else {}))
    if t.dim() < 1:
        raise ValueError(f"{name}: expected a tensor [..., features], got a 0-d tensor")
    t2 = t.reshape(-1, t.shape[-1])
    if (features is not None and t2.shape[1] != features) or (batch is not None and t2.shape[0] != batch):
        raise ValueError(f"{name}: expected [..., {features}] with {batch} rows in all, got {tuple(t.shape)}")
    return t2


INT32_LIMIT = 2 ** 31 - 1  # (a module global so the tests can shrink it)


def _max_rows(*tensors) -> int:
    """How many rows of these 2-D tensors keep every in-kernel batch offset below 2^31."""
    stride = max(abs(t.stride(0)) for t in tensors if t is not None)
    return max(1, INT32_LIMIT // max(stride, 1) - 256)


def eligibility_weight_grad(grad_s, psi, causal, trpost_prev, x, trpre, alpha_post: float,
                            alpha_pre: float, out_dtype: torch.dtype = torch.float32,
                            need_bias: bool = True, out: Optional[torch.Tensor] = None,
                            bias_out: Optional[torch.Tensor] = None):
    """dW [N, K] and db [N] (None unless need_bias) in one launch, from 2-D [B, N] / [B, K] inputs.

    With `out` (and `bias_out`) the result is added to those buffers in place (e.g. a `.grad`),
    otherwise fresh tensors of out_dtype are returned.
    """
    B, N = grad_s.shape
    K = x.shape[1]
    dev = grad_s.device
    accumulate = out is not None
    if accumulate:
        check_tensor("out", out, shape=(N, K), device=dev)
        if need_bias:
            check_tensor("bias_out", bias_out, shape=(N,), device=dev)
    else:
        out = torch.empty((N, K), dtype=out_dtype, device=dev)
        bias_out = torch.empty((N,), dtype=out_dtype, device=dev) if need_bias else None
    if N == 0 or (K == 0 and not need_bias):
        return out, bias_out
    rows = _max_rows(grad_s, psi, causal, trpost_prev, x, trpre)
    if B > rows:  # batch offsets are int32 in the kernel: add up chunks of rows
        if not accumulate:
            out.zero_()
            if need_bias:
                bias_out.zero_()
        for start in range(0, B, rows):
            part = [None if t is None else t[start:start + rows]
                    for t in (grad_s, psi, causal, trpost_prev, x, trpre)]
            eligibility_weight_grad(*part, alpha_post, alpha_pre, out_dtype, need_bias, out, bias_out)
        return out, bias_out
    has_post = trpost_prev is not None and alpha_post != 0.0
    dt, precision = dot_config(x.dtype)
    dummy = grad_s  # stands in for absent optional inputs (never read: their HAS_* is False)
    p, c, q = (psi if psi is not None else dummy, causal if causal is not None else dummy,
               trpost_prev if trpost_prev is not None else dummy)
    db = bias_out if need_bias else out
    grid = lambda meta: (triton.cdiv(N, meta["BLOCK_N"]), triton.cdiv(K, meta["BLOCK_K"]) + 1)  # noqa: E731
    _eligibility_dw_kernel[grid](
        grad_s, p, c, q, x, trpre, out, db,
        B, N, K,
        grad_s.stride(0), grad_s.stride(1), p.stride(0), p.stride(1), c.stride(0), c.stride(1),
        q.stride(0), q.stride(1), x.stride(0), x.stride(1), trpre.stride(0), trpre.stride(1),
        out.stride(0), out.stride(1), db.stride(0),
        float(alpha_post), float(alpha_pre),
        HAS_PSI=psi is not None, HAS_CAUSAL=causal is not None, HAS_POST=has_post,
        HAS_PRE=alpha_pre != 0.0, WRITE_DB=need_bias, ACCUMULATE=accumulate, DOT_DTYPE=dt,
        INPUT_PRECISION=precision)
    return out, bias_out


def signal_grad(grad_s, psi, weight, out_dtype: torch.dtype):
    """dx = (L * psi) @ W as [B, K] in out_dtype, from 2-D L, psi [B, N] and W [N, K]."""
    B, N = grad_s.shape
    K = weight.shape[1]
    dx = torch.empty((B, K), dtype=out_dtype, device=grad_s.device)
    if B == 0 or K == 0:
        return dx
    dt, precision = dot_config(weight.dtype if weight.dtype != torch.float32 else grad_s.dtype)
    p = psi if psi is not None else grad_s
    grid = lambda meta: (triton.cdiv(B, meta["BLOCK_B"]), triton.cdiv(K, meta["BLOCK_K"]))  # noqa: E731
    _signal_dx_kernel[grid](
        grad_s, p, weight, dx, B, N, K,
        grad_s.stride(0), grad_s.stride(1), p.stride(0), p.stride(1), weight.stride(0),
        weight.stride(1), dx.stride(0), dx.stride(1),
        HAS_PSI=psi is not None, DOT_DTYPE=dt, INPUT_PRECISION=precision)
    return dx


def linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post: float,
                    alpha_pre: float, needs_input_grad: bool = True, needs_bias_grad: bool = True):
    """reference.linear_backward: dW and db in one launch, dx in a second (both fused GEMMs)."""
    check_tensor("weight", weight, device=grad_s.device if isinstance(grad_s, torch.Tensor) else None)
    if weight.dim() != 2:
        raise ValueError(f"weight: expected [N, K], got shape {tuple(weight.shape)}")
    N, K = weight.shape
    L = _rows("grad_s", grad_s, N)
    B = L.shape[0]
    x2 = _rows("x", x, K, B)
    tr2 = _rows("trpre", trpre, K, B)
    psi2 = None if psi is None else _rows("psi", psi, N, B)
    causal2 = None if causal is None else _rows("causal", causal, N, B)
    prev2 = None if trpost_prev is None else _rows("trpost_prev", trpost_prev, N, B)
    optional = (("x", x), ("trpre", trpre), ("psi", psi), ("causal", causal), ("trpost_prev", trpost_prev))
    for name, t in optional:
        if t is not None and t.device != L.device:
            raise ValueError(f"{name}: expected a tensor on {L.device}, got one on {t.device}")
    grad_w, grad_b = eligibility_weight_grad(L, psi2, causal2, prev2, x2, tr2, alpha_post, alpha_pre,
                                             weight.dtype, needs_bias_grad)
    grad_x = None
    if needs_input_grad:
        grad_x = signal_grad(L, psi2, weight, x.dtype).view(*grad_s.shape[:-1], K)
    return grad_x, grad_w, grad_b


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of the conv GEMMs: bf16 stays bf16 (fp32 accumulation), else fp32 (fp16
    products of a small learning signal would underflow its exponent range)."""
    return dtype if dtype == torch.bfloat16 else state_dtype(dtype)


def conv_products(grad_s, psi, causal, trpost_prev, alpha_post: float, alpha_pre: float):
    """(grads [2B, ...], L * psi) from one element-wise launch (see the kernel)."""
    ct = _compute_dtype(grad_s.dtype)
    L = grad_s.contiguous()
    psi, causal, prev = psi.contiguous(), causal.contiguous(), trpost_prev.contiguous()
    gpsi = torch.empty(L.shape, dtype=ct, device=L.device)
    grads = torch.empty((2 * L.shape[0], *L.shape[1:]), dtype=ct, device=L.device)
    n = L.numel()
    if n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _conv_products_kernel[grid](L, psi, causal, prev, grads, gpsi, n, float(alpha_post),
                                    float(alpha_pre))
    return grads, gpsi


def conv_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, stride, padding, dilation,
                  groups: int, alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                  needs_bias_grad: bool = True):
    """reference.conv_backward with a fused products kernel and one conv weight-gradient call."""
    _check_conv_args(grad_s, psi, causal, trpost_prev, x, trpre, weight, groups)
    ct = _compute_dtype(x.dtype)
    grads, gpsi = conv_products(grad_s, psi, causal, trpost_prev, alpha_post, alpha_pre)
    inputs = torch.cat([x.to(ct), trpre.to(ct)])
    grad_w = torch.nn.grad.conv2d_weight(inputs, weight.shape, grads, stride, padding, dilation,
                                         groups).to(weight.dtype)
    grad_x = None
    if needs_input_grad:
        grad_x = torch.nn.grad.conv2d_input(x.shape, weight.to(ct), gpsi, stride, padding, dilation,
                                            groups).to(x.dtype)
    grad_b = gpsi.sum((0, 2, 3), dtype=torch.float32).to(weight.dtype) if needs_bias_grad else None
    return grad_x, grad_w, grad_b


def _check_conv_args(grad_s, psi, causal, trpost_prev, x, trpre, weight, groups):
    check_tensor("x", x)
    if x.dim() != 4:
        raise ValueError(f"x: expected [B, C, H, W], got shape {tuple(x.shape)}")
    check_tensor("trpre", trpre, shape=x.shape, device=x.device)
    check_tensor("weight", weight, device=x.device)
    if weight.dim() != 4:
        raise ValueError(f"weight: expected [C_out, C_in / groups, kH, kW], got shape {tuple(weight.shape)}")
    if not isinstance(groups, int) or groups < 1 or x.shape[1] != weight.shape[1] * groups \
            or weight.shape[0] % groups:
        raise ValueError(f"groups: {groups!r} does not fit x {tuple(x.shape)} and weight "
                         f"{tuple(weight.shape)}")
    check_tensor("grad_s", grad_s, device=x.device)
    if grad_s.dim() != 4 or grad_s.shape[:2] != (x.shape[0], weight.shape[0]):
        raise ValueError(f"grad_s: expected [{x.shape[0]}, {weight.shape[0]}, OH, OW], "
                         f"got {tuple(grad_s.shape)}")
    for name, t in (("psi", psi), ("causal", causal), ("trpost_prev", trpost_prev)):
        check_tensor(name, t, shape=grad_s.shape, device=x.device)
