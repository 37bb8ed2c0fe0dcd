"""conv_backward: the S-TLLR eligibility weight gradient of a conv2d layer (DESIGN op 4).

    dW = alpha_post * conv2d_weight(x, L * trpost_prev) + alpha_pre * conv2d_weight(trpre, L * causal)
    db = sum_{b,h,w} L * psi      dx = conv2d_input(L * psi, W)

The weight gradient in one launch: one fused Triton element-wise kernel forms the three products,
writing the two weight-gradient operands straight into one batch-concatenated buffer
[2B, C, OH, OW]; then ONE torch conv weight-gradient call (cuDNN on a GPU, oneDNN/native on a CPU)
on cat([x, trpre]) and that buffer. dx and db come from the same kernel's L * psi (db a sum, dx one
conv input-gradient call). (A second design, a Triton implicit-GEMM weight gradient, was dropped
in issue 11: one design to keep correct, and this one leans on cuDNN's tuned weight gradient.)
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...reference import state_dtype
from .common import check_tensor, elementwise_configs


@triton.autotune(configs=elementwise_configs(), key=["n"])
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
