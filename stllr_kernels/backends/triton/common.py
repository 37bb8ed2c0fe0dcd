"""What every Triton kernel module shares: Psi and the LIF update as jit helpers, the one place
that lists autotune configs, and the checks the launchers run on their arguments.

Interpreter mode (TRITON_INTERPRET=1, decided by Triton when a kernel is *defined*) gets a single
config per kernel, so tests never benchmark and stay fast (autotune.py holds how the configs are
chosen on a GPU: bucketed keys, a disk cache). On a GPU, STLLR_TRITON_SINGLE_CONFIG=1
(read when the kernels are defined) does the same with the first config of each list: no autotuning,
so the test suite finishes in minutes there (benchmarks/gpu_check.py's correctness run).
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl
from triton import knobs

from ...psi import PSI_CODES
from ...reference import state_dtype
from .autotune import ConfigSet

# True when this module's kernels were defined for Triton's CPU interpreter.
INTERPRETED = bool(knobs.runtime.interpret)
SINGLE_CONFIG_ENV = "STLLR_TRITON_SINGLE_CONFIG"
SINGLE_CONFIG = os.environ.get(SINGLE_CONFIG_ENV, "0") not in ("", "0")

PSI_FAST_SIGMOID: tl.constexpr = tl.constexpr(PSI_CODES["fast_sigmoid"])
PSI_TRIANGLE: tl.constexpr = tl.constexpr(PSI_CODES["triangle"])
PSI_SIGMOID: tl.constexpr = tl.constexpr(PSI_CODES["sigmoid"])


# ----------------------------------------------------------------------------- jit helpers

@triton.jit
def psi_of(u, PSI: tl.constexpr):
    """Psi(u) of docs/rule.md section 3, chosen at compile time by its code in psi.PSI_CODES."""
    if PSI == PSI_FAST_SIGMOID:
        d = 1.0 + 100.0 * tl.abs(u)
        out = 1.0 / (d * d)
    elif PSI == PSI_TRIANGLE:
        # propagate_nan: plain tl.maximum returns the non-NaN operand (PTX max.f32), Psi(NaN) must be NaN
        out = 0.3 * tl.maximum(1.0 - tl.abs(u), 0.0, propagate_nan=tl.PropagateNan.ALL)
    else:
        sg = 1.0 / (1.0 + tl.exp(-4.0 * u))
        out = 4.0 * sg * (1.0 - sg)
    return out


@triton.jit
def lif_update(cur, v, tr, beta, theta, lambda_post, PSI: tl.constexpr, SOFT_RESET: tl.constexpr,
               POST_SPIKE: tl.constexpr):
    """One LIF step of docs/rule.md section 1 on registers: returns (s, v+, trpost, psi), all in v's dtype.

    Same operations in the same order as reference.lif_step, so spikes match it exactly.
    """
    v_t = beta * v + cur
    u = v_t - theta
    # reference.spike_of: heaviside(u), NaN where u is NaN or +-inf (u - u is 0 or NaN)
    spike = (u > 0).to(v.dtype) + (u - u)
    if SOFT_RESET:
        v_after = v_t - theta * spike
    else:
        v_after = v_t * (1.0 - spike)
    psi = psi_of(u, PSI)
    if POST_SPIKE:
        tr_new = lambda_post * tr + spike
    else:
        tr_new = lambda_post * tr + psi
    return spike, v_after, tr_new, psi


# ----------------------------------------------------------------------------- autotune configs

def elementwise_configs() -> ConfigSet:
    """Block sizes of the element-wise and per-neuron sequence kernels."""
    return ConfigSet(triton.Config({"BLOCK": 256}, num_warps=4),
                     [triton.Config({"BLOCK": block}, num_warps=warps)
                      for block, warps in ((512, 4), (1024, 4), (2048, 8), (4096, 8))])


def sequence_configs() -> ConfigSet:
    """Block sizes of the kernels that loop over T with the state in registers (fewer, smaller
    blocks: more programs in flight hide the latency of each step's load). 1024 with 4 warps, not 8:
    with 8, triton 3.9's trace_sequence spilled 12 bytes (compile_check.md)."""
    return ConfigSet(triton.Config({"BLOCK": 256}, num_warps=4),
                     [triton.Config({"BLOCK": block}, num_warps=warps)
                      for block, warps in ((128, 4), (256, 4), (512, 4), (1024, 4))])


# Tiles (m, n, r, warps, stages) of the eligibility GEMMs: output tile m x n, reduction chunk r.
# Every config compiles without register spills in every variant with triton 3.6 for sm_90
# (benchmarks/results/compile_check_triton36.md) and 3.9. The products formed while loading keep their
# tiles in registers, and software pipelining (stages >= 2) keeps the next chunk's tiles live too: the
# dx configs and most dW ones run unpipelined (stages 1; other warps and blocks hide the load
# latency; float16 weights converted to float32 spilled up to 600 bytes pipelined), and dW has no
# 128 x 128 tile (it spilled in every setting tried).
WEIGHT_GRAD_TILES = ((64, 64, 32, 8, 2), (128, 64, 32, 8, 1), (64, 128, 32, 8, 1), (64, 64, 64, 8, 2),
                     (32, 64, 32, 4, 1), (64, 64, 32, 4, 1))
SIGNAL_GRAD_TILES = ((64, 64, 32, 4, 1), (128, 64, 32, 8, 1), (64, 128, 32, 8, 1), (128, 128, 32, 8, 1),
                     (64, 64, 64, 8, 1), (32, 64, 32, 4, 1))


def gemm_configs(m: str, n: str, r: str, tiles) -> ConfigSet:
    """Configs of an eligibility GEMM from its `tiles` (m, n, r: names of the kernel's meta-parameters).
    Interpreter: one 32-cube (tl.dot needs blocks >= 16)."""
    return ConfigSet(triton.Config({m: 32, n: 32, r: 32}, num_warps=4),
                     [triton.Config({m: bm, n: bn, r: br}, num_warps=w, num_stages=s)
                      for bm, bn, br, w, s in tiles])


# ----------------------------------------------------------------------------- launcher helpers

def dot_config(dtype: torch.dtype):
    """(operand dtype of tl.dot, input_precision) for inputs of `dtype`; accumulation is fp32.

    float32 follows torch's matmul setting ("ieee" unless torch allows TF32, then "tf32" on the
    tensor cores). bf16 runs on the tensor cores in its own dtype (input_precision does not apply),
    except in the interpreter: Triton 3.9's interpreter computes a bf16 tl.dot on the raw uint16
    storage (garbage), so it takes the float32 path there. fp16 takes the float32 path: products
    such as L * psi of a small learning signal underflow fp16's exponent range (bf16 keeps fp32's).
    """
    if dtype == torch.bfloat16 and not INTERPRETED:
        return tl.bfloat16, "tf32"
    return tl.float32, "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def check_tensor(name: str, t, dtypes=(torch.float32, torch.bfloat16, torch.float16), shape=None,
                 device=None):
    """Raise a clear error unless `t` is a tensor of one of `dtypes` (and `shape`, `device`)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name}: the triton backend supports dtypes {[str(d) for d in dtypes]}, "
                        f"got {t.dtype} (use backend 'torch' for others)")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(f"{name}: expected a tensor on {device}, got one on {t.device}")
    return t


def check_state(name: str, t, like: torch.Tensor):
    """A state tensor: same shape and device as `like`, dtype state_dtype(like.dtype)."""
    sd = state_dtype(like.dtype)
    check_tensor(name, t, dtypes=(sd,), shape=like.shape, device=like.device)
    return t


def check_scalar(name: str, t, device):
    """beta / theta: a 0-d (or one-element) float32 tensor on the op's device, read by pointer."""
    if not isinstance(t, torch.Tensor) or t.numel() != 1:
        raise TypeError(f"{name}: expected a 0-d float32 tensor on {device}, got "
                        f"{type(t).__name__ if not isinstance(t, torch.Tensor) else tuple(t.shape)}")
    if t.dtype != torch.float32 or t.device != device:
        raise TypeError(f"{name}: expected a 0-d float32 tensor on {device}, got {t.dtype} on {t.device}")
    return t


def flat(t: torch.Tensor) -> torch.Tensor:
    """A contiguous 1-D view (a copy only when `t` is not contiguous) for element-wise kernels."""
    return t.contiguous().view(-1)


def check_save_from(save_from, T: int) -> int:
    """The first saved step of a sequence of T steps: an int in [0, T]."""
    if isinstance(save_from, bool) or not isinstance(save_from, int) or not 0 <= save_from <= T:
        raise ValueError(f"save_from: expected an int in [0, T={T}], got {save_from!r}")
    return save_from
