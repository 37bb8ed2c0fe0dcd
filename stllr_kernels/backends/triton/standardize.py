"""standardize_backward: the weight standardization's backward in one launch (one program per row)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import check_tensor


@triton.jit
def _standardize_backward_kernel(
    # pointers: G = dW_hat, n, scale [N], gain [N]; outputs dW, dgain [N]
    g_ptr, n_ptr, scale_ptr, gain_ptr, dw_ptr, dgain_ptr,
    # sizes
    K, ratio,
    # meta-parameters
    BLOCK: tl.constexpr,
):
    """Row i: dgain = sum(G*n); dz = gain*(G - n*dgain*ratio)/s; dW = dz - mean(dz), ratio = K/(K-1).
    Three passes over the row (the row stays in L1/L2); float32 accumulation."""
    row = tl.program_id(0).to(tl.int64) * K
    cols = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        m = k0 + cols < K
        g = tl.load(g_ptr + row + k0 + cols, mask=m, other=0.0).to(tl.float32)
        n = tl.load(n_ptr + row + k0 + cols, mask=m, other=0.0).to(tl.float32)
        acc += g * n
    dgain = tl.sum(acc, axis=0)
    gain = tl.load(gain_ptr + tl.program_id(0)).to(tl.float32)
    scale = tl.load(scale_ptr + tl.program_id(0)).to(tl.float32)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK):
        m = k0 + cols < K
        g = tl.load(g_ptr + row + k0 + cols, mask=m, other=0.0).to(tl.float32)
        n = tl.load(n_ptr + row + k0 + cols, mask=m, other=0.0).to(tl.float32)
        acc += tl.where(m, gain * (g - n * (dgain * ratio)) / scale, 0.0)
    mean = tl.sum(acc, axis=0) / K
    for k0 in range(0, K, BLOCK):
        m = k0 + cols < K
        g = tl.load(g_ptr + row + k0 + cols, mask=m, other=0.0).to(tl.float32)
        n = tl.load(n_ptr + row + k0 + cols, mask=m, other=0.0).to(tl.float32)
        dz = gain * (g - n * (dgain * ratio)) / scale
        tl.store(dw_ptr + row + k0 + cols, (dz - mean).to(dw_ptr.dtype.element_ty), mask=m)
    tl.store(dgain_ptr + tl.program_id(0), dgain.to(dgain_ptr.dtype.element_ty))


def standardize_backward(grad_w_hat, normalized, scale, gain):
    """reference.standardize_backward in one launch: returns (dW, dgain)."""
    check_tensor("grad_w_hat", grad_w_hat)
    check_tensor("normalized", normalized, shape=grad_w_hat.shape, device=grad_w_hat.device)
    rows = grad_w_hat.shape[0]
    check_tensor("scale", scale, device=grad_w_hat.device)
    check_tensor("gain", gain, shape=scale.shape, device=grad_w_hat.device)
    if scale.numel() != rows:
        raise ValueError(f"scale: expected {rows} elements (one per row), got shape {tuple(scale.shape)}")
    K = grad_w_hat[0].numel() if rows else 0
    g, n = grad_w_hat.contiguous(), normalized.contiguous()
    dw = torch.empty_like(g)
    dgain = torch.empty(gain.shape, dtype=gain.dtype, device=gain.device)
    if rows and K:
        block = min(1024, triton.next_power_of_2(K))
        _standardize_backward_kernel[(rows,)](g, n, scale.contiguous(), gain.contiguous(), dw, dgain,
                                              K, K / (K - 1) if K > 1 else float("inf"), BLOCK=block)
    return dw, dgain
