"""The one tolerance policy: when a backend's result counts as equal to the reference's.

Used by the test suite (tests/conftest.py re-exports every name here) and by the GPU check
(benchmarks/gpu/compare.py). It lives in the package, with no test imports (no pytest), so that
anything that checks a kernel against `stllr_kernels.reference` (the tests, the GPU check on a
bare GPU image, a user's own backend) applies the same rule.

Values: float32 summation order differs between processors and libraries, so a result summed over n
terms is allowed noise growing with sqrt(n): |got - want| <= atol * sqrt(n) + rtol * |want|, with
atol / rtol by the dtype the op computes in (`TOLERANCES`, `tol`).

Spikes compare exactly, except where the membrane u = beta v + I - theta is within `THRESHOLD_ULPS`
ulps (of the state dtype, relative to the terms summed) of 0: there a different rounding order may
flip the spike (`near_threshold`, `assert_spikes_match`).

The float32 oracles are exact float32 only with TF32 off: cuDNN convolutions default to TF32 on
Ampere and later GPUs (about 1e-3 relative error against the policy's 1e-4). `exact_oracles()`
turns TF32 off for matmuls and cuDNN (and cuBLAS's reduced-precision bf16 / fp16 reductions, so
that a half-precision oracle accumulates in float32 as the kernels do); the test session and every
GPU-check process call it first.
"""
from __future__ import annotations

import torch

from .reference import state_dtype

# atol/rtol per dtype for one op; a reduction over n terms gets atol * sqrt(n) (see tol()).
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}
# u = beta v + I - theta within this many ulps (of the state dtype, relative to the magnitude of
# the terms summed) is "at the threshold": a different rounding order may flip that spike.
THRESHOLD_ULPS = 8


def tol(dtype: torch.dtype, reduction: int = 1) -> dict:
    """Tolerances for torch.testing.assert_close: atol grows with the reduction length."""
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol * max(1.0, reduction ** 0.5), "rtol": rtol}


def assert_close_policy(actual, expected, dtype: torch.dtype | None = None, reduction: int = 1,
                        msg: str | None = None):
    """`actual` equals `expected` up to the noise of `dtype` (default: expected's dtype) over a
    reduction of `reduction` terms. Shapes and dtypes must match exactly; low-precision values are
    compared in float64 so that the comparison itself adds no rounding."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor), f"{msg or 'value'}: expected a tensor, got {type(actual)}"
        assert actual.dtype == expected.dtype, f"{msg or 'value'}: dtype {actual.dtype} != {expected.dtype}"
        assert actual.shape == expected.shape, f"{msg or 'value'}: shape {tuple(actual.shape)} != " \
                                               f"{tuple(expected.shape)}"
        dtype = dtype or expected.dtype
        actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    else:
        dtype = dtype or torch.float64
    torch.testing.assert_close(actual, expected, **tol(dtype, reduction),
                               msg=None if msg is None else (lambda m: f"{msg}: {m}"))


def near_threshold(u: torch.Tensor, magnitude: torch.Tensor | float, dtype: torch.dtype) -> torch.Tensor:
    """Where |u| is within rounding of 0: `magnitude` is the size of the terms u was summed from
    (|beta v| + |I| + |theta|), `dtype` the input dtype (u lives in its state dtype)."""
    eps = torch.finfo(state_dtype(dtype)).eps
    return u.abs() <= THRESHOLD_ULPS * eps * magnitude


def assert_spikes_match(actual: torch.Tensor, expected: torch.Tensor, at_threshold: torch.Tensor,
                        time_dim: int | None = None, msg: str = "spikes") -> torch.Tensor:
    """Spikes equal exactly, except where `at_threshold` (see near_threshold) allows a flip.

    With `time_dim` (a sequence), a neuron whose spike flipped at the threshold may differ at any
    later step too (its state legitimately differs from then on). Returns the mask of elements
    (neurons, for a sequence) that flipped: callers leave them out of the state comparisons."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, \
        f"{msg}: {actual.dtype}{tuple(actual.shape)} != {expected.dtype}{tuple(expected.shape)}"
    differ = (actual.cpu() != expected.cpu())
    allowed = at_threshold.cpu()
    if time_dim is not None:
        flips = differ.int()
        allowed = allowed | ((flips.cumsum(time_dim) - flips) > 0)
    bad = differ & ~allowed
    assert not bad.any(), f"{msg}: {int(bad.sum())} of {bad.numel()} differ away from the threshold"
    return differ if time_dim is None else differ.any(time_dim)


def exact_oracles() -> None:
    """The oracles in the precision they claim: every float32 matmul and convolution in plain
    float32 (TF32 off for cuBLAS and cuDNN; the float32 Triton dots follow torch's matmul precision,
    see backends/triton/common.py), and bf16 / fp16 GEMMs reducing in float32 as the kernels do (no
    reduced-precision split-K partial sums in cuBLAS). Harmless on a CPU. Call it before comparing
    against an oracle."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False


def oracle_state() -> dict:
    """What `exact_oracles` sets, as read back (a report line / a test's evidence)."""
    m = torch.backends.cuda.matmul
    return {"matmul.allow_tf32": m.allow_tf32, "cudnn.allow_tf32": torch.backends.cudnn.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision(),
            "bf16_reduced_precision_reduction": m.allow_bf16_reduced_precision_reduction,
            "fp16_reduced_precision_reduction": m.allow_fp16_reduced_precision_reduction}
