"""conv_backward: the S-TLLR eligibility weight gradient of a conv2d layer (DESIGN op 4).

    dW = alpha_post * conv2d_weight(x, L * trpost_prev) + alpha_pre * conv2d_weight(trpre, L * causal)
    db = sum_{b,h,w} L * psi      dx = conv2d_input(L * psi, W)

Two designs of the weight gradient, both a single launch for dW:

- "conv_weight" (default): one fused Triton element-wise kernel forms the three products, writing
  the two weight-gradient operands straight into one batch-concatenated buffer [2B, C, OH, OW];
  then ONE torch conv weight-gradient call (cuDNN on a GPU, oneDNN/native on a CPU) on
  cat([x, trpre]) and that buffer.
- "implicit_gemm": a Triton implicit-GEMM kernel (`_conv_wgrad_kernel`) that gathers the input
  patches and forms the products while loading, with both operand pairs in one reduction.

Dispatch rule: the environment variable STLLR_TRITON_CONV_WGRAD = conv_weight | implicit_gemm
picks one; unset means conv_weight. Which is faster on a GPU is for benchmarks/gpu_check.py to
measure (it times both on the Gesture VGG layers); no GPU has been available to settle it yet, so
the default is the design that leans on cuDNN. implicit_gemm uses int32 offsets (int64 ones spill
registers), so tensors of 2^31 elements or more always take conv_weight. dx and db always come from
the products kernel's L * psi (db a sum, dx one cuDNN input-gradient call).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from torch.nn.modules.utils import _pair

from ...reference import state_dtype
from .common import check_tensor, dot_config, elementwise_configs, gemm_configs

CONV_WGRAD_ENV = "STLLR_TRITON_CONV_WGRAD"
CONV_WGRAD_METHODS = ("conv_weight", "implicit_gemm")


@triton.autotune(configs=elementwise_configs(), key=["n"])
@triton.jit
def _conv_products_kernel(
    l_ptr, psi_ptr, causal_ptr, prev_ptr, grads_ptr, gpsi_ptr,
    n, alpha_post, alpha_pre,
    WRITE_GRADS: tl.constexpr, BLOCK: tl.constexpr,
):
    """Over n = B*C*OH*OW elements: gpsi = L*psi and, if WRITE_GRADS, the batch-concatenated
    operands grads[:n] = alpha_post * L * prev, grads[n:] = alpha_pre * L * causal."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    L = tl.load(l_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    psi = tl.load(psi_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(gpsi_ptr + offs, (L * psi).to(gpsi_ptr.dtype.element_ty), mask=mask)
    if WRITE_GRADS:
        prev = tl.load(prev_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        causal = tl.load(causal_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g_ty = grads_ptr.dtype.element_ty
        tl.store(grads_ptr + offs, (alpha_post * L * prev).to(g_ty), mask=mask)
        tl.store(grads_ptr + n + offs, (alpha_pre * L * causal).to(g_ty), mask=mask)


@triton.autotune(configs=gemm_configs("BLOCK_M", "BLOCK_N", "BLOCK_Q"),
                 key=["CO_G", "CKK", "Q", "DOT_DTYPE", "INPUT_PRECISION"],
                 restore_value=["dw_ptr"])
@triton.jit
def _conv_wgrad_kernel(
    # pointers: post side [B, CO, OH, OW], pre side [B, CI, H, W] (contiguous), dW [CO, CI_G, KH, KW]
    l_ptr, causal_ptr, prev_ptr, x_ptr, tr_ptr, dw_ptr,
    # sizes
    CI, H, W, CO, OH, OW, KH, KW, CI_G, CO_G, CKK, Q,
    # geometry
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    # factors
    alpha_post, alpha_pre,
    # meta-parameters
    HAS_POST: tl.constexpr, HAS_PRE: tl.constexpr, ACCUMULATE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_Q: tl.constexpr,
):
    """Implicit GEMM per group g (grid axis 2): dW[g] (CO_G x CKK, CKK = CI_G*KH*KW) reduced over
    Q = B*OH*OW output positions; the input patch of column (ci, r, s) at output (b, oh, ow) is
    x[b, g*CI_G + ci, oh*stride - pad + r*dil, ...], zero outside the image."""
    # int32 offsets throughout (int64 ones spill registers): the launcher sends tensors of 2^31
    # elements or more to the conv_weight design instead
    g = tl.program_id(2)
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)   # out channel in group
    rj = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)   # (ci, r, s) flattened
    co = g * CO_G + rm
    ci = g * CI_G + rj // (KH * KW)
    rs = rj % (KH * KW)
    r = rs // KW
    s = rs % KW
    mask_m = rm < CO_G
    mask_j = rj < CKK
    OHW = OH * OW
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for q0 in range(0, Q, BLOCK_Q):
        q = q0 + tl.arange(0, BLOCK_Q)
        mask_q = q < Q
        b = q // OHW
        p = q % OHW
        oh = p // OW
        ow = p % OW
        off_post = co[:, None] * OHW + (b * (CO * OHW) + p)[None, :]
        m_post = mask_m[:, None] & mask_q[None, :]
        L = tl.load(l_ptr + off_post, mask=m_post, other=0.0).to(tl.float32)
        ih = (oh * stride_h - pad_h)[:, None] + (r * dil_h)[None, :]
        iw = (ow * stride_w - pad_w)[:, None] + (s * dil_w)[None, :]
        m_pre = (mask_q[:, None] & mask_j[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W))
        off_pre = (b * (CI * H * W))[:, None] + (ci * (H * W))[None, :] + ih * W + iw
        if HAS_PRE:
            gc = alpha_pre * L * tl.load(causal_ptr + off_post, mask=m_post, other=0.0).to(tl.float32)
            tr = tl.load(tr_ptr + off_pre, mask=m_pre, other=0.0)
            acc = tl.dot(gc.to(DOT_DTYPE), tr.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
        if HAS_POST:
            gp = alpha_post * L * tl.load(prev_ptr + off_post, mask=m_post, other=0.0).to(tl.float32)
            x = tl.load(x_ptr + off_pre, mask=m_pre, other=0.0)
            acc = tl.dot(gp.to(DOT_DTYPE), x.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
    w_ptrs = dw_ptr + co[:, None] * CKK + rj[None, :]
    m_out = mask_m[:, None] & mask_j[None, :]
    if ACCUMULATE:
        acc += tl.load(w_ptrs, mask=m_out, other=0.0).to(tl.float32)
    tl.store(w_ptrs, acc.to(dw_ptr.dtype.element_ty), mask=m_out)


# ----------------------------------------------------------------------------- launchers

def conv_wgrad_method() -> str:
    """The weight-gradient design in use (see the module docstring for the rule)."""
    method = os.environ.get(CONV_WGRAD_ENV, "") or "conv_weight"
    if method not in CONV_WGRAD_METHODS:
        raise ValueError(f"{CONV_WGRAD_ENV}: expected one of {list(CONV_WGRAD_METHODS)}, got {method!r}")
    return method


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Operand dtype of the conv GEMMs: half types stay half (fp32 accumulation), else fp32."""
    return dtype if dtype in (torch.float16, torch.bfloat16) else state_dtype(dtype)


def conv_products(grad_s, psi, causal, trpost_prev, alpha_post: float, alpha_pre: float,
                  write_grads: bool = True):
    """(grads [2B, ...] or None, L * psi) from one element-wise launch (see the kernel)."""
    ct = _compute_dtype(grad_s.dtype)
    L = grad_s.contiguous()
    psi, causal, prev = psi.contiguous(), causal.contiguous(), trpost_prev.contiguous()
    gpsi = torch.empty(L.shape, dtype=ct, device=L.device)
    grads = torch.empty((2 * L.shape[0], *L.shape[1:]), dtype=ct, device=L.device) if write_grads else None
    n = L.numel()
    if n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _conv_products_kernel[grid](L, psi, causal, prev, grads if write_grads else gpsi, gpsi, n,
                                    float(alpha_post), float(alpha_pre), WRITE_GRADS=write_grads)
    return grads, gpsi


def conv_weight_grad_implicit(grad_s, causal, trpost_prev, x, trpre, weight_shape, stride, padding,
                              dilation, groups: int, alpha_post: float, alpha_pre: float,
                              out_dtype: torch.dtype = torch.float32, out=None):
    """dW by the Triton implicit-GEMM kernel (one launch); adds into `out` if given."""
    if not _fits_int32(x, grad_s, out if out is not None else torch.empty(weight_shape, device="meta")):
        raise ValueError("the implicit-GEMM weight gradient uses int32 offsets: x, grad_s and the "
                         "weight must each have fewer than 2^31 elements (use conv_weight)")
    B, CI, H, W = x.shape
    CO, CI_G, KH, KW = weight_shape
    OH, OW = grad_s.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    accumulate = out is not None
    if accumulate:
        check_tensor("out", out, shape=weight_shape, device=x.device)
        if not out.is_contiguous():
            raise ValueError("out: the implicit-GEMM weight gradient needs a contiguous buffer")
    else:
        out = torch.empty(weight_shape, dtype=out_dtype, device=x.device)
    CO_G, CKK, Q = CO // groups, CI_G * KH * KW, B * OH * OW
    if out.numel() == 0:
        return out
    dt, precision = dot_config(x.dtype)
    L, c, q = grad_s.contiguous(), causal.contiguous(), trpost_prev.contiguous()
    grid = lambda meta: (triton.cdiv(CO_G, meta["BLOCK_M"]),  # noqa: E731
                         triton.cdiv(CKK, meta["BLOCK_N"]), groups)
    _conv_wgrad_kernel[grid](
        L, c, q, x.contiguous(), trpre.contiguous(), out,
        CI, H, W, CO, OH, OW, KH, KW, CI_G, CO_G, CKK, Q,
        sh, sw, ph, pw, dh, dw,
        float(alpha_post), float(alpha_pre),
        HAS_POST=alpha_post != 0.0, HAS_PRE=alpha_pre != 0.0, ACCUMULATE=accumulate,
        DOT_DTYPE=dt, INPUT_PRECISION=precision)
    return out


def _fits_int32(*tensors) -> bool:
    return all(t.numel() < 2 ** 31 - 2 ** 20 for t in tensors)


def conv_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight, stride, padding, dilation,
                  groups: int, alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                  needs_bias_grad: bool = True):
    """reference.conv_backward with a fused products kernel and a single-launch weight gradient."""
    _check_conv_args(grad_s, psi, causal, trpost_prev, x, trpre, weight, groups)
    method = conv_wgrad_method()
    if method == "implicit_gemm" and not _fits_int32(x, grad_s, weight):
        method = "conv_weight"
    ct = _compute_dtype(x.dtype)
    grads, gpsi = conv_products(grad_s, psi, causal, trpost_prev, alpha_post, alpha_pre,
                                write_grads=method == "conv_weight")
    if method == "conv_weight":
        inputs = torch.cat([x.to(ct), trpre.to(ct)])
        grad_w = torch.nn.grad.conv2d_weight(inputs, weight.shape, grads, stride, padding, dilation,
                                             groups).to(weight.dtype)
    else:
        grad_w = conv_weight_grad_implicit(grad_s, causal, trpost_prev, x, trpre, weight.shape,
                                           stride, padding, dilation, groups, alpha_post, alpha_pre,
                                           weight.dtype)
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
