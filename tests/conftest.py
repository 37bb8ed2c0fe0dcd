"""Shared test setup: Triton runs in its interpreter on CPU, fresh seeded inputs, one tolerance policy.

Every value comparison in tests/ goes through `assert_close_policy` (or `tol` for the rare caller
that needs the numbers): float32 summation order differs between processors and libraries, so a
result summed over n terms is allowed noise growing with sqrt(n). Spikes compare exactly, except
where the membrane is within rounding of the threshold (`assert_spikes_match`).
"""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # must be set before any @triton.jit function is defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

# `make test` runs a pytest-xdist worker per core: each worker's own torch thread pool would
# oversubscribe the cores the workers share (and spin-wait), so the cores are split between them
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))

import contextlib  # noqa: E402
import random  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

import stllr_kernels  # noqa: E402
from stllr_kernels.reference import state_dtype  # noqa: E402

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
SEED_SALT_ENV = "STLLR_TEST_SEED_SALT"


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


@contextlib.contextmanager
def backend(name: str):
    """Force a backend for the duration of a block (restores the previous setting)."""
    previous = os.environ.get(stllr_kernels.backends.ENV_VAR)
    stllr_kernels.set_backend(name)
    try:
        yield
    finally:
        stllr_kernels.set_backend(None)
        if previous is not None:
            os.environ[stllr_kernels.backends.ENV_VAR] = previous


def seed_salt() -> int:
    value = os.environ.get(SEED_SALT_ENV, "0") or "0"
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(f"{SEED_SALT_ENV}: expected an integer, got {value!r}") from None


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): on a
    small shared CPU, torch's thread pool spin-waits and runs small per-step ops, per-recording
    transforms and small convs many times slower than a single thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def seed(request):
    """A fresh, reproducible seed per test (from its name, mixed with STLLR_TEST_SEED_SALT), set
    for torch, random and numpy before every test, so that no test's inputs depend on the order in
    which tests run. `make test-seeds` runs the numeric tests under other salts."""
    key = request.node.nodeid
    salt = seed_salt()
    if salt:
        key += f"#salt={salt}"
    value = zlib.crc32(key.encode()) % (2 ** 31)
    torch.manual_seed(value)
    random.seed(value)
    try:
        import numpy as np
        np.random.seed(value)
    except ImportError:
        pass
    return value


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (deselect with -m 'not slow')")

