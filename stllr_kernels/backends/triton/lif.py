"""lif_step: one LIF time step with the post trace, one pass over the neurons (DESIGN op 1)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ...config import RuleConfig
from ...psi import PSI_CODES
from ...reference import state_dtype
from .common import check_scalar, check_state, check_tensor, elementwise_configs, flat, lif_update


@triton.autotune(configs=elementwise_configs(), key=["n"])
@triton.jit
def _lif_step_kernel(
    # pointers: inputs
    cur_ptr, v_ptr, tr_ptr, beta_ptr, theta_ptr,
    # pointers: outputs
    s_ptr, v_out_ptr, tr_out_ptr, psi_ptr,
    # sizes and scalars
    n, lambda_post,
    # meta-parameters
    PSI: tl.constexpr, SOFT_RESET: tl.constexpr, POST_SPIKE: tl.constexpr, WRITE_PSI: tl.constexpr,
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
    if WRITE_PSI:
        tl.store(psi_ptr + offs, psi, mask=mask)


def lif_step(current, v, trpost, beta, theta, cfg: RuleConfig, write_psi: bool = True):
    """reference.lif_step in one launch; returns (s, v+, trpost, psi) (psi None if not write_psi)."""
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
    psi = torch.empty_like(v_new) if write_psi else None
    if n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _lif_step_kernel[grid](
            flat(current), flat(v), flat(trpost), beta, theta,
            s, v_new, tr_new, psi if write_psi else v_new,
            n, float(cfg.lambda_post),
            PSI=PSI_CODES[cfg.psi], SOFT_RESET=cfg.reset == "soft", POST_SPIKE=cfg.post == "spike",
            WRITE_PSI=write_psi, enable_fp_fusion=False)  # no FMA: spikes bit-equal to the reference
    return s, v_new, tr_new, psi
