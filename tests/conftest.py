"""Shared test setup: Triton runs in its interpreter on CPU, fresh seeded inputs, one tolerance policy."""
from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    # must be set before any @triton.jit function is defined
    os.environ.setdefault("TRITON_INTERPRET", "1")

import contextlib  # noqa: E402
import zlib  # noqa: E402

import pytest  # noqa: E402

import stllr_kernels  # noqa: E402

# atol/rtol per dtype for one op; a reduction over n terms gets atol * sqrt(n) (see tol()).
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def tol(dtype: torch.dtype, reduction: int = 1) -> dict:
    """Tolerances for torch.testing.assert_close: atol grows with the reduction length."""
    atol, rtol = TOLERANCES[dtype]
    return {"atol": atol * max(1.0, reduction ** 0.5), "rtol": rtol}


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


@pytest.fixture
def seed(request):
    """A fresh, reproducible seed per test (derived from its name)."""
    value = zlib.crc32(request.node.nodeid.encode()) % (2 ** 31)
    torch.manual_seed(value)
    return value


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a long test (deselect with -m 'not slow')")
