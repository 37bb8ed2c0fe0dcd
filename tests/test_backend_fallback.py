"""`auto` survives a broken kernel: an op whose Triton kernel fails to compile or launch moves to the
next backend with one warning; a backend forced by name fails loudly; argument errors and CUDA
errors are never swallowed.

On a CPU `auto` never picks Triton, so these tests make it the first choice there (AUTO_ORDER
"triton", "cpu", "torch": the CUDA order with the extension's CPU build in the place of `cuda`) and
run it in Triton's interpreter, then break one kernel by replacing it with one that raises.
"""
from __future__ import annotations

import subprocess
import warnings

import pytest
import torch

import stllr_kernels
from stllr_kernels import backends, reference as R
from stllr_kernels.backends import BackendFallbackWarning, get_ops, unavailable_reason
from stllr_kernels.config import RuleConfig

from conftest import assert_close_policy, assert_spikes_match, near_threshold

pytestmark = pytest.mark.skipif(unavailable_reason("triton", "cpu") is not None,
                                reason=str(unavailable_reason("triton", "cpu")))

CFG = RuleConfig(0.5, 1.0, 1.0, 1.0, "fast_sigmoid", "soft", "psi")


def _compilation_error():
    from triton.compiler.errors import CompilationError
    return CompilationError("x = tl.dot(a, b)", None, "injected: this kernel does not compile here")


def _out_of_resources():
    from triton.runtime.errors import OutOfResources
    return OutOfResources(300000, 232448, "shared memory")


def _launcher_build_error():
    """What a launcher whose C build fails raises: an error from inside Triton's build step
    (here its C compiler cannot be found to run)."""
    from triton.runtime import build
    import os
    previous = os.environ.get("CC")
    os.environ["CC"] = "/nonexistent/cc"
    try:
        build._build("launcher", "launcher.c", "/nonexistent", [], [], [], [])
    except Exception as exc:  # FileNotFoundError raised inside triton/runtime/build.py
        return exc
    finally:
        if previous is None:
            os.environ.pop("CC")
        else:
            os.environ["CC"] = previous
    raise AssertionError("the C build of a missing file with a missing compiler did not fail")


ERRORS = {"compilation": _compilation_error, "out of resources": _out_of_resources,
          "launcher build": _launcher_build_error}


class BrokenKernel:
    """Stands in for a Triton kernel: `kernel[grid](...)` raises `error` and counts the tries."""

    def __init__(self, error: BaseException):
        self.error, self.calls = error, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls += 1
            raise self.error
        return launch


@pytest.fixture
def auto_picks_triton(monkeypatch):
    """`auto` on the CPU tries triton, then the extension, then torch; fresh choices and fallbacks."""
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    monkeypatch.setattr(backends, "_forced", None)
    monkeypatch.setattr(backends, "AUTO_ORDER", {**backends.AUTO_ORDER, "cpu": ("triton", "cpu", "torch")})
    monkeypatch.setattr(backends, "_chosen", {})
    monkeypatch.setattr(backends, "_auto_ops", {})
    assert backends.get_backend_name("cpu") == "triton"


def lif_inputs(seed_value: int = 0):
    g = torch.Generator().manual_seed(seed_value)
    current = torch.randn(3, 37, generator=g)
    v, trpost = torch.rand(3, 37, generator=g), torch.rand(3, 37, generator=g)
    return current, v, trpost, torch.tensor(0.8), torch.tensor(0.5)


def break_lif_step(monkeypatch, error: BaseException) -> BrokenKernel:
    from stllr_kernels.backends.triton import lif
    broken = BrokenKernel(error)
    monkeypatch.setattr(lif, "_lif_step_kernel", broken)
    return broken


def assert_lif_matches_reference(got, args):
    want = R.lif_step(*args, CFG)
    current, v, _, beta, theta = args
    magnitude = (beta * v).abs() + current.abs() + theta.abs()
    assert_spikes_match(got[0], want[0], near_threshold(beta * v + current - theta, magnitude, torch.float32))
    for g, w in zip(got[1:], want[1:]):
        assert_close_policy(g, w)


@pytest.mark.parametrize("kind", list(ERRORS))
def test_auto_falls_back_once_with_one_warning(auto_picks_triton, monkeypatch, seed, kind):
    error = ERRORS[kind]()
    broken = break_lif_step(monkeypatch, error)
    fallback = "cpu" if unavailable_reason("cpu", "cpu") is None else "torch"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(3):
            args = lif_inputs(seed + i)
            assert_lif_matches_reference(get_ops("cpu").lif_step(*args, CFG), args)
    moved = [w for w in caught if issubclass(w.category, BackendFallbackWarning)]
    assert len(moved) == 1, [str(w.message) for w in caught]
    message = str(moved[0].message)
    assert "lif_step" in message and type(error).__name__ in message and repr(fallback) in message
    assert broken.calls == 1, "the broken kernel is tried once, then the op stays on the fallback"
    info = stllr_kernels.backend_info()["devices"]["cpu"]
    assert info["selected"] == "triton"
    assert info["fallbacks"]["lif_step"]["backend"] == fallback
    # the other ops stay on triton
    assert get_ops("cpu").pre_trace.__wrapped__.__module__.startswith("stllr_kernels.backends.triton")
    assert "pre_trace" not in info["fallbacks"]


def test_layer_runs_on_through_a_fallback(auto_picks_triton, monkeypatch, seed):
    """A whole layer's forward and backward (through functional) with its LIF kernel broken equals
    the torch backend's."""
    from stllr_kernels import nn as snn
    torch.manual_seed(seed)
    layer = snn.LinearSTLLR(9, 21)
    x = (torch.rand(4, 5, 9) < 0.4).float()

    def run():
        snn.reset_states(layer)
        out = torch.stack([layer(x[t]) for t in range(x.shape[0])])
        out.sum().backward()
        grad = layer.weight.grad.clone()
        layer.zero_grad()
        return out.detach(), grad

    stllr_kernels.set_backend("torch")
    try:
        want = run()
    finally:
        stllr_kernels.set_backend(None)
    broken = break_lif_step(monkeypatch, _compilation_error())
    with pytest.warns(BackendFallbackWarning, match="lif_step"):
        got = run()
    assert broken.calls == 1
    assert torch.equal(got[0], want[0])
    assert_close_policy(got[1], want[1], reduction=x.shape[0] * x.shape[1])


@pytest.mark.parametrize("how", ["set_backend", "env"])
def test_forced_triton_fails_loudly(auto_picks_triton, monkeypatch, how):
    from triton.compiler.errors import CompilationError
    broken = break_lif_step(monkeypatch, _compilation_error())
    if how == "env":
        monkeypatch.setenv(backends.ENV_VAR, "triton")
    else:
        stllr_kernels.set_backend("triton")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", BackendFallbackWarning)
            for _ in range(2):  # and again: nothing moved
                with pytest.raises(CompilationError, match="injected"):
                    get_ops("cpu").lif_step(*lif_inputs(), CFG)
    finally:
        stllr_kernels.set_backend(None)
    assert broken.calls == 2
    assert not backends._auto_ops


def test_argument_errors_are_not_swallowed(auto_picks_triton):
    current, v, trpost, beta, theta = lif_inputs()
    ops = get_ops("cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        with pytest.raises(TypeError, match="v: "):
            ops.lif_step(current, v.bfloat16(), trpost, beta, theta, CFG)
        with pytest.raises(ValueError, match="save_from"):
            ops.trace_sequence(current[None], v, 0.5, 2)
    assert not ops.moved


@pytest.mark.parametrize("error", [ValueError("x: expected a tensor of shape [3, 4]"),
                                   TypeError("beta: expected a 0-d float32 tensor"),
                                   RuntimeError("CUDA error: an illegal memory access was encountered"),
                                   RuntimeError("Triton Error [CUDA]: misaligned address"),
                                   ZeroDivisionError("a bug of ours")])
def test_other_errors_from_a_kernel_are_raised(auto_picks_triton, monkeypatch, error):
    broken = break_lif_step(monkeypatch, error)
    with warnings.catch_warnings():
        warnings.simplefilter("error", BackendFallbackWarning)
        with pytest.raises(type(error), match=str(error)[:10]):
            get_ops("cpu").lif_step(*lif_inputs(), CFG)
    assert broken.calls == 1 and not get_ops("cpu").moved


def test_is_compile_failure_classifies():
    from stllr_kernels.backends.triton import is_compile_failure
    for make in ERRORS.values():
        assert is_compile_failure(make())
    assert is_compile_failure(subprocess.CalledProcessError(1, ["cc"])) is False  # not raised inside Triton
    assert not is_compile_failure(ValueError("bad"))
    assert not is_compile_failure(RuntimeError("CUDA error: out of memory"))
