"""Shared test setup: Triton runs in its interpreter on CPU, TF32 off, fresh seeded inputs, one
tolerance policy.

Every value comparison in tests/ goes through `assert_close_policy` (or `tol` for the rare caller
that needs the numbers): float32 summation order differs between processors and libraries, so a
result summed over n terms is allowed noise growing with sqrt(n). Spikes compare exactly, except
where the membrane is within rounding of the threshold (`assert_spikes_match`). The policy itself is
`stllr_kernels/tolerance.py` (no pytest there: the GPU check uses it too); this file re-exports it.
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
# the one tolerance policy (stllr_kernels/tolerance.py, shared with the GPU check), re-exported here
# for the tests' `from conftest import ...`
from stllr_kernels.tolerance import (THRESHOLD_ULPS, TOLERANCES, assert_close_policy,  # noqa: E402,F401
                                     assert_spikes_match, exact_oracles, near_threshold, tol)

# every float32 oracle in exact float32 (and half GEMMs reducing in float32), in every pytest process
# (the GPU check starts several): cuDNN would otherwise run float32 convolutions in TF32 on a GPU
# (harmless on a CPU)
exact_oracles()

SEED_SALT_ENV = "STLLR_TEST_SEED_SALT"


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


def target_id(target) -> str:
    """A (backend, device type) pair's test id: the backend, with the device where it is not implied."""
    name, device_type = target
    return name if name in ("torch", device_type) else f"{name}_{device_type}"


@pytest.fixture
def target(request):
    """The test's (backend, device type), forced for the test (parametrize it `indirect=True`):
    yields its device; skips where it cannot run."""
    name, device_type = request.param
    reason = stllr_kernels.backends.unavailable_reason(name, device_type)
    if reason is not None:
        pytest.skip(f"backend {name!r} on {device_type}: {reason}")
    with backend(name):
        yield torch.device(device_type)


class FixedSpikes(torch.utils.data.Dataset):
    """n Digits-shaped samples (6 steps x 64 inputs, spikes drawn once at rate 0.3, labels 0-9), for
    whole training runs in seconds."""

    def __init__(self, n: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        self.x = (torch.rand(n, 6, 64, generator=gen) < 0.3).float()
        self.y = torch.randint(0, 10, (n,), generator=gen)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


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
    which tests run. `make test-seeds` runs every quick test under other salts."""
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

