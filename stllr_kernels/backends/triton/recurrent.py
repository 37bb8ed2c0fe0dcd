"""recurrent_sequence, readout_sequence, recurrent_backward: the recurrent and readout layers.

recurrent_sequence: the input current of all T steps is one GEMM (torch); then one launch per step
of `_recurrent_step_kernel`, a GEMM s[t-1] @ W_rec^T whose epilogue adds the input current and runs
the LIF step, the post trace and the recurrent trace on the tile in registers (nothing of the
recurrent current goes to memory). readout_sequence: one GEMM, then `_leaky_scan_kernel` walks
v = beta v + I over T with v in registers. recurrent_backward: the eligibility GEMM of W and of
W_rec over all loss rows (eligibility.py), one launch each. recurrent_backward_reverse: one launch of
`_reverse_eligibility_kernel` walks the loss steps backwards (G in registers) and writes the GEMM
operands; then per weight the eligibility GEMM kernel over the D x B rows and once more, accumulating,
over the B rows of the first loss step's trace.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ...config import RuleConfig
from ...psi import PSI_CODES
from ...reference import state_dtype
from .autotune import autotune
from .common import (check_save_from, check_scalar, check_tensor, dot_config, flat, lif_update,
                     sequence_configs)
from .eligibility import eligibility_weight_grad, linear_backward, signal_grad
from .trace import trace_sequence


@triton.jit
def _recurrent_step_kernel(
    # pointers: inputs (I[t] [B, N], s[t-1] [B, N], W_rec [N, N], beta, theta)
    cur_ptr, sp_ptr, wr_ptr, beta_ptr, theta_ptr,
    # pointers: states [B, N] updated in place, then outputs
    v_ptr, tr_ptr, trrec_ptr, s_ptr, psi_ptr, prev_ptr, sp_save_ptr, trrec_save_ptr,
    # sizes and strides of W_rec
    B, N, s_wn, s_wk,
    # factors
    lambda_post, lambda_pre,
    # meta-parameters
    PSI: tl.constexpr, SOFT_RESET: tl.constexpr, POST_SPIKE: tl.constexpr, SAVE: tl.constexpr,
    DOT_DTYPE: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr,
):
    """Tile (b, n) of one recurrent step: acc = s[t-1] @ W_rec^T, then the epilogue
    I = I_in + acc (rounded to I's dtype, as the reference adds), LIF, trpost, and
    trrec = lambda_pre * trrec + s. SAVE writes psi[t], trpost[t-1], s[t-1], trrec[t-1]."""
    # int64 only in the tile's base offsets; int32 inside a tile (the launcher keeps BLOCK * N
    # below 2^31): int64 offsets of every element cost 2 registers each (compile_check.py)
    b_start = tl.program_id(0) * BLOCK_B
    n_start = tl.program_id(1) * BLOCK_N
    lb = tl.arange(0, BLOCK_B)
    ln = tl.arange(0, BLOCK_N)
    lr = tl.arange(0, BLOCK_R)
    mask_b = lb < B - b_start
    mask_n = ln < N - n_start
    a_ptrs = sp_ptr + b_start.to(tl.int64) * N + (lb[:, None] * N + lr[None, :])
    w_ptrs = wr_ptr + n_start.to(tl.int64) * s_wn + (ln[None, :] * s_wn + lr[:, None] * s_wk)
    acc = tl.zeros((BLOCK_B, BLOCK_N), dtype=tl.float32)
    for r0 in range(0, N, BLOCK_R):
        mask_r = lr < N - r0
        a = tl.load(a_ptrs, mask=mask_b[:, None] & mask_r[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=mask_r[:, None] & mask_n[None, :], other=0.0)
        acc = tl.dot(a.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_R
        w_ptrs += BLOCK_R * s_wk
    tile = b_start.to(tl.int64) * N + n_start
    offs = lb[:, None] * N + ln[None, :]
    m = mask_b[:, None] & mask_n[None, :]
    v = tl.load(v_ptr + tile + offs, mask=m, other=0.0)
    tr = tl.load(tr_ptr + tile + offs, mask=m, other=0.0)
    trrec = tl.load(trrec_ptr + tile + offs, mask=m, other=0.0)
    cur_ty = cur_ptr.dtype.element_ty
    cur_in = tl.load(cur_ptr + tile + offs, mask=m, other=0.0)
    rec = acc.to(cur_ty, fp_downcast_rounding="rtne").to(tl.float32)
    cur = (cur_in.to(tl.float32) + rec).to(cur_ty, fp_downcast_rounding="rtne").to(v.dtype)
    beta = tl.load(beta_ptr).to(v.dtype)
    theta = tl.load(theta_ptr).to(v.dtype)
    spike, v_new, tr_new, psi = lif_update(cur, v, tr, beta, theta, lambda_post, PSI, SOFT_RESET, POST_SPIKE)
    if SAVE:
        tl.store(psi_ptr + tile + offs, psi, mask=m)
        tl.store(prev_ptr + tile + offs, tr, mask=m)
        tl.store(trrec_save_ptr + tile + offs, trrec, mask=m)
        tl.store(sp_save_ptr + tile + offs, tl.load(sp_ptr + tile + offs, mask=m, other=0.0), mask=m)
    tl.store(s_ptr + tile + offs, spike.to(s_ptr.dtype.element_ty), mask=m)
    tl.store(v_ptr + tile + offs, v_new, mask=m)
    tl.store(tr_ptr + tile + offs, tr_new, mask=m)
    tl.store(trrec_ptr + tile + offs, lambda_pre * trrec + spike, mask=m)


@autotune(sequence_configs(), key=["n", "T"], reuse=["n", "T"])
@triton.jit
def _leaky_scan_kernel(cur_ptr, v_ptr, beta_ptr, out_ptr, n, T, BLOCK: tl.constexpr):
    """out[t] = beta * out[t-1] + I[t] (out[-1] = v) over currents [T, n]; v stays in registers."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    v = tl.load(v_ptr + offs, mask=mask, other=0.0)
    beta = tl.load(beta_ptr).to(v.dtype)
    cur_ptrs = cur_ptr + offs
    out_ptrs = out_ptr + offs
    for _ in range(0, T):
        v = beta * v + tl.load(cur_ptrs, mask=mask, other=0.0).to(v.dtype)
        tl.store(out_ptrs, v, mask=mask)
        cur_ptrs += n
        out_ptrs += n


@autotune(sequence_configs(), key=["n", "D"], reuse=["n", "D"])
@triton.jit
def _reverse_eligibility_kernel(l_ptr, causal_ptr, prev_ptr, a_ptr, c_ptr, n, D, last_row, lambda_pre,
                                alpha_post, alpha_pre, BLOCK: tl.constexpr):
    """Over [D, n] inputs, d = D-1..0: G = lambda_pre G + L causal; A[d] = alpha_post L trpost_prev
    (+ alpha_pre G for d > 0); then C = alpha_pre G_0 (reference.recurrent_backward_reverse).
    last_row = (D - 1) * n comes from the host (an int64 when it needs one)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    G = tl.zeros((BLOCK,), dtype=tl.float32)
    o = offs + last_row
    for i in range(0, D):
        L = tl.load(l_ptr + o, mask=mask, other=0.0).to(tl.float32)
        G = lambda_pre * G + L * tl.load(causal_ptr + o, mask=mask, other=0.0).to(tl.float32)
        a = alpha_post * (L * tl.load(prev_ptr + o, mask=mask, other=0.0).to(tl.float32))
        a = tl.where(i < D - 1, a + alpha_pre * G, a)  # step 0's causal term goes to C
        tl.store(a_ptr + o, a, mask=mask)
        o -= n
    tl.store(c_ptr + offs, alpha_pre * G, mask=mask)


# The recurrent step's tile, fixed (the states are updated in place, which autotuning would have to
# restore between trials) and the same in the interpreter. 32 x 32 with 4 warps: no register spills
# in any variant (64 x 64 spilled 0.7-2 KB per thread, benchmarks/results/compile_check_triton36.md),
# and 4x the thread blocks of 64 x 64 at the SHD size (60 for B = 128, N = 450, on 132 SMs); the
# price, reading s[t-1] and W_rec twice as often per output, is paid from L2 (W_rec: N^2 floats).
STEP_CONFIG = triton.Config({"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_R": 32}, num_warps=4, num_stages=3)


def recurrent_sequence(x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta,
                       cfg: RuleConfig, save_from: int, first_traces_only: bool = False):
    """reference.recurrent_sequence: one input GEMM, then one fused launch per step."""
    check_tensor("x", x)
    if x.dim() != 3:
        raise ValueError(f"x: expected a sequence [T, B, K], got shape {tuple(x.shape)}")
    T, B, K = x.shape
    check_tensor("weight_rec", weight_rec, device=x.device)
    N = weight_rec.shape[0]
    if weight_rec.shape != (N, N) or weight.shape != (N, K):
        raise ValueError(f"weight, weight_rec: expected [{N}, {K}] and [{N}, {N}], got "
                         f"{tuple(weight.shape)} and {tuple(weight_rec.shape)}")
    sd = state_dtype(x.dtype)
    check_tensor("s_prev", s_prev, dtypes=(x.dtype,), shape=(B, N), device=x.device)
    for name, t in (("v", v), ("trpost", trpost), ("trrec", trrec)):
        check_tensor(name, t, dtypes=(sd,), shape=(B, N), device=x.device)
    check_scalar("beta", beta, x.device)
    check_scalar("theta", theta, x.device)
    save_from = check_save_from(save_from, T)
    currents = F.linear(x, weight, bias)
    dev, D = x.device, T - save_from
    kept = min(D, 1) if first_traces_only else D  # loss steps whose trpre[t], trrec[t-1] are kept
    if kept < D:  # the trace up to the first loss step (kept), then the rest
        trpre_saved, at_first = trace_sequence(x[:save_from + 1], trpre, cfg.lambda_pre, save_from)
        _, trpre_new = trace_sequence(x[save_from + 1:], at_first, cfg.lambda_pre, T - save_from - 1)
    else:
        trpre_saved, trpre_new = trace_sequence(x, trpre, cfg.lambda_pre, save_from)
    s_seq = torch.empty((T, B, N), dtype=x.dtype, device=dev)
    psi, prev = (torch.empty((D, B, N), dtype=sd, device=dev) for _ in range(2))
    trrec_prev = torch.empty((kept, B, N), dtype=sd, device=dev)
    trrec_scratch = torch.empty((B, N), dtype=sd, device=dev) if kept < D else None  # written, never read
    s_prev_saved = torch.empty((D, B, N), dtype=x.dtype, device=dev)
    v, trpost, trrec = v.clone(memory_format=torch.contiguous_format), \
        trpost.clone(memory_format=torch.contiguous_format), trrec.clone(memory_format=torch.contiguous_format)
    sp = s_prev.contiguous()
    if B and N:
        blocks = STEP_CONFIG.kwargs
        if max(blocks.values()) * max(N, weight_rec.stride(0)) >= 2 ** 31:  # the kernel's int32 tile offsets
            raise ValueError(f"weight_rec: N = {N} is too large for the Triton recurrent step (int32 offsets)")
        dt, precision = dot_config(x.dtype)
        grid = (triton.cdiv(B, blocks["BLOCK_B"]), triton.cdiv(N, blocks["BLOCK_N"]))
        for t in range(T):
            save = t >= save_from
            j = max(t - save_from, 0)
            _recurrent_step_kernel[grid](
                currents[t], sp, weight_rec, beta, theta,
                v, trpost, trrec, s_seq[t], psi[j] if save else v, prev[j] if save else v,
                s_prev_saved[j] if save else sp,
                (trrec_prev[j] if j < kept else trrec_scratch) if save else v,
                B, N, weight_rec.stride(0), weight_rec.stride(1),
                float(cfg.lambda_post), float(cfg.lambda_pre),
                PSI=PSI_CODES[cfg.psi], SOFT_RESET=cfg.reset == "soft", POST_SPIKE=cfg.post == "spike",
                SAVE=save, DOT_DTYPE=dt, INPUT_PRECISION=precision, **STEP_CONFIG.all_kwargs(),
                enable_fp_fusion=False)  # no FMA in the LIF: spikes bit-equal to the reference
            sp = s_seq[t]
    elif T:
        s_seq.zero_()
    return s_seq, v, trpost, trpre_new, trrec, psi, prev, trpre_saved, s_prev_saved, trrec_prev


def readout_sequence(x, weight, bias, v, trpre, beta, lambda_pre: float, save_from: int):
    """reference.readout_sequence: one GEMM, one scan launch, one trace launch."""
    check_tensor("x", x)
    if x.dim() < 2:
        raise ValueError(f"x: expected a sequence [T, B, K], got shape {tuple(x.shape)}")
    currents = F.linear(x, weight, bias)
    sd = state_dtype(currents.dtype)
    check_tensor("v", v, dtypes=(sd,), shape=currents.shape[1:], device=x.device)
    check_scalar("beta", beta, x.device)
    save_from = check_save_from(save_from, x.shape[0])
    out = torch.empty(currents.shape, dtype=sd, device=x.device)
    n, T = v.numel(), x.shape[0]
    if n and T:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _leaky_scan_kernel[grid](flat(currents), flat(v), beta, out, n, T)
    trpre_saved, trpre_new = trace_sequence(x, trpre, lambda_pre, save_from)
    return out, trpre_new, trpre_saved


def recurrent_backward(grad_s, psi, causal, trpost_prev, x, trpre, s_prev, trrec_prev, weight, weight_rec,
                       alpha_post: float, alpha_pre: float, needs_input_grad: bool = True,
                       needs_bias_grad: bool = True):
    """reference.recurrent_backward: the fused eligibility GEMM for W, then for W_rec."""
    grad_x, grad_w, grad_b = linear_backward(grad_s, psi, causal, trpost_prev, x, trpre, weight,
                                             alpha_post, alpha_pre, needs_input_grad, needs_bias_grad)
    _, grad_w_rec, _ = linear_backward(grad_s, psi, causal, trpost_prev, s_prev, trrec_prev, weight_rec,
                                       alpha_post, alpha_pre, False, False)
    return grad_x, grad_w, grad_b, grad_w_rec


def _gemm_two_parts(A, rows, C, first, out_dtype):
    """A^T rows + C^T first with the eligibility GEMM kernel (plain products: factor 1, no post term),
    the second launch accumulating into the first's output."""
    out, _ = eligibility_weight_grad(A, None, None, None, rows, rows, 0.0, 1.0, out_dtype, need_bias=False)
    eligibility_weight_grad(C, None, None, None, first, first, 0.0, 1.0, need_bias=False, out=out)
    return out


def recurrent_backward_reverse(grad_s, psi, causal, trpost_prev, x, trpre_first, s_prev, trrec_first, weight,
                               weight_rec, lambda_pre: float, alpha_post: float, alpha_pre: float,
                               needs_input_grad: bool = True, needs_bias_grad: bool = True):
    """reference.recurrent_backward_reverse: the reverse-time launch, then two GEMM launches per weight."""
    check_tensor("grad_s", grad_s)
    if grad_s.dim() != 3:
        raise ValueError(f"grad_s: expected the loss steps' sequence [D, B, N], got shape {tuple(grad_s.shape)}")
    D, B, N = grad_s.shape
    dev = grad_s.device
    check_tensor("weight", weight, device=dev)
    check_tensor("weight_rec", weight_rec, shape=(N, N), device=dev)
    if weight.dim() != 2 or weight.shape[0] != N:
        raise ValueError(f"weight: expected shape [N, K] with N = {N}, got {tuple(weight.shape)}")
    K = weight.shape[1]
    for name, t in (("psi", psi), ("causal", causal), ("trpost_prev", trpost_prev), ("s_prev", s_prev)):
        check_tensor(name, t, shape=(D, B, N), device=dev)
    check_tensor("x", x, shape=(D, B, K), device=dev)
    check_tensor("trpre_first", trpre_first, shape=(B, K), device=dev)
    check_tensor("trrec_first", trrec_first, shape=(B, N), device=dev)
    n = B * N
    A = torch.empty((D * B, N), dtype=torch.float32, device=dev)
    C = torch.empty((B, N), dtype=torch.float32, device=dev)
    if D and n:
        grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
        _reverse_eligibility_kernel[grid](grad_s.contiguous(), causal.contiguous(), trpost_prev.contiguous(), A, C,
                                          n, D, (D - 1) * n, float(lambda_pre), float(alpha_post),
                                          float(alpha_pre))
    else:
        C.zero_()
    grad_w = _gemm_two_parts(A, x.reshape(D * B, K), C, trpre_first, weight.dtype)
    grad_w_rec = _gemm_two_parts(A, s_prev.reshape(D * B, N), C, trrec_first, weight_rec.dtype)
    L, psi = grad_s.reshape(D * B, N), psi.reshape(D * B, N)
    grad_x = signal_grad(L, psi, weight, x.dtype).view(D, B, K) if needs_input_grad else None
    grad_b = (L.float() * psi.float()).sum(0).to(weight.dtype) if needs_bias_grad else None
    return grad_x, grad_w, grad_b, grad_w_rec
