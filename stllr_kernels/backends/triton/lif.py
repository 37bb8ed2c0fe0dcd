"""lif_step (one LIF time step with the post trace, one pass over the neurons: docs/design.md, op 1) and
lif_sequence (all T steps of a layer in one launch, the state in registers: docs/design.md, op 5)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...config import RuleConfig
from ...psi import PSI_CODES
from ...reference import state_dtype
from .autotune import autotune
from .common import (check_save_from, check_scalar, check_state, check_tensor, elementwise_configs, flat,
                     lif_update, sequence_configs)


@autotune(elementwise_configs(), key=["n"], reuse=["n"])
@triton.jit
def _lif_step_kernel(
    # pointers: inputs
    cur_ptr, v_ptr, tr_ptr, beta_ptr, theta_ptr,
    # pointers: outputs
    s_ptr, v_out_ptr, tr_out_ptr, psi_ptr,
    # sizes and scalars
    n, lambda_post,
    # meta-parameters
    PSI: tl.constexpr, SOFT_RESET: tl.constexpr, POST_SPIKE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """s, v+, trpost, psi = LIF(I, v, trpost) element-wise over n neurons (flat, contiguous).

    beta/theta are read from device memory (no host sync); int64 offsets; state in v's dtype.
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    cur = tl.load(cur_ptr + offs, mask=mask, other=0.0).to(v.dtype)
    tr = tl.load(tr_ptr + offs, mask=mask, other=0.0)
    beta = tl.load(beta_ptr).to(v.dtype)
    theta = tl.load(theta_ptr).to(v.dtype)
    spike, v_new, tr_new, psi = lif_update(cur, v, tr, beta, theta, lambda_post, PSI, SOFT_RESET,
                                           POST_SPIKE)
    tl.store(s_ptr + offs, spike.to(s_ptr.dtype.element_ty), mask=mask)
    tl.store(v_out_ptr + offs, v_new, mask=mask)
    tl.store(tr_out_ptr + offs, tr_new, mask=mask)
    tl.store(psi_ptr + offs, psi, mask=mask)


def lif_step(current, v, trpost, beta, theta, cfg: RuleConfig):
    """reference.lif_step in one launch; returns (s, v+, trpost, psi)."""
    check_tensor("current", current)
    check_state("v", v, current)
    check_state("trpost", trpost, current)
    check_scalar("beta", beta, current.device)
    check_scalar("theta", theta, current.device)
    sd = state_dtype(current.dtype)
    n = current.numel()
    s = torch.empty(current.shape, dtype=current.dtype, device=current.device)
    v_new = torch.empty(current.shape, dtype=sd, device=current.device)
    tr_new = torch.empty_like(v_new)
    psi = torch.empty_like(v_new)
    if n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _lif_step_kernel[grid](
            flat(current), flat(v), flat(trpost), beta, theta,
            s, v_new, tr_new, psi,
            n, float(cfg.lambda_post),
            PSI=PSI_CODES[cfg.psi], SOFT_RESET=cfg.reset == "soft", POST_SPIKE=cfg.post == "spike",
            enable_fp_fusion=False)  # no FMA: spikes bit-equal to the reference
    return s, v_new, tr_new, psi


@autotune(sequence_configs(), key=["n", "T"], reuse=["n", "T"])
@triton.jit
def _lif_sequence_kernel(
    # pointers: inputs
    cur_ptr, v_ptr, tr_ptr, beta_ptr, theta_ptr,
    # pointers: outputs
    s_ptr, v_out_ptr, tr_out_ptr, psi_ptr, prev_ptr,
    # sizes and scalars
    n, T, save_from, lambda_post,
    # meta-parameters
    PSI: tl.constexpr, SOFT_RESET: tl.constexpr, POST_SPIKE: tl.constexpr, BLOCK: tl.constexpr,
):
    """currents [T, n] -> spikes [T, n]; v and trpost stay in registers across the T steps.

    psi[t] and trpost[t-1] are written only for the loss steps t >= save_from (what the backward
    needs); v and trpost of the last step always.
    """
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    tr = tl.load(tr_ptr + offs, mask=mask, other=0.0)
    beta = tl.load(beta_ptr).to(v.dtype)
    theta = tl.load(theta_ptr).to(v.dtype)
    s_ty = s_ptr.dtype.element_ty
    cur_ptrs = cur_ptr + offs  # advanced by n per step (64-bit pointers: no t * n overflow)
    s_ptrs = s_ptr + offs
    for _ in range(0, save_from):
        cur = tl.load(cur_ptrs, mask=mask, other=0.0).to(v.dtype)
        spike, v, tr, psi = lif_update(cur, v, tr, beta, theta, lambda_post, PSI, SOFT_RESET,
                                       POST_SPIKE)
        tl.store(s_ptrs, spike.to(s_ty), mask=mask)
        cur_ptrs += n
        s_ptrs += n
    psi_ptrs = psi_ptr + offs
    prev_ptrs = prev_ptr + offs
    for _ in range(save_from, T):
        tl.store(prev_ptrs, tr, mask=mask)
        cur = tl.load(cur_ptrs, mask=mask, other=0.0).to(v.dtype)
        spike, v, tr, psi = lif_update(cur, v, tr, beta, theta, lambda_post, PSI, SOFT_RESET,
                                       POST_SPIKE)
        tl.store(s_ptrs, spike.to(s_ty), mask=mask)
        tl.store(psi_ptrs, psi, mask=mask)
        cur_ptrs += n
        s_ptrs += n
        psi_ptrs += n
        prev_ptrs += n
    tl.store(v_out_ptr + offs, v, mask=mask)
    tl.store(tr_out_ptr + offs, tr, mask=mask)


def lif_sequence(currents, v, trpost, beta, theta, cfg: RuleConfig, save_from: int):
    """reference.lif_sequence in one launch:
    returns (s [T, ...], v+[T-1], trpost[T-1], psi[save_from:], trpost_prev[save_from:])."""
    check_tensor("currents", currents)
    if currents.dim() < 1:
        raise ValueError(f"currents: expected a sequence [T, ...], got shape {tuple(currents.shape)}")
    T, step_shape = currents.shape[0], currents.shape[1:]
    sd = state_dtype(currents.dtype)
    check_tensor("v", v, dtypes=(sd,), shape=step_shape, device=currents.device)
    check_tensor("trpost", trpost, dtypes=(sd,), shape=step_shape, device=currents.device)
    check_scalar("beta", beta, currents.device)
    check_scalar("theta", theta, currents.device)
    save_from = check_save_from(save_from, T)
    dev = currents.device
    s = torch.empty(currents.shape, dtype=currents.dtype, device=dev)
    psi = torch.empty((T - save_from, *step_shape), dtype=sd, device=dev)
    prev = torch.empty_like(psi)
    if T == 0:
        return s, v.clone(), trpost.clone(), psi, prev
    v_new = torch.empty(step_shape, dtype=sd, device=dev)
    tr_new = torch.empty_like(v_new)
    n = v.numel()
    if n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _lif_sequence_kernel[grid](
            flat(currents), flat(v), flat(trpost), beta, theta,
            s, v_new, tr_new, psi, prev,
            n, T, save_from, float(cfg.lambda_post),
            PSI=PSI_CODES[cfg.psi], SOFT_RESET=cfg.reset == "soft", POST_SPIKE=cfg.post == "spike",
            enable_fp_fusion=False)  # no FMA in beta * v + I: spikes bit-equal to the reference
    return s, v_new, tr_new, psi, prev
