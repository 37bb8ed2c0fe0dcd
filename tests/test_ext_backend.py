"""What only the C++ extension (`cpu` / `cuda` backends) has: its build requirement, its compiled
conv backward (which the `cpu` backend bypasses on CPU tensors), argument errors from the C++
checks, availability reasons, a float64 gradcheck, torch.library.opcheck and torch.compile, and the
package without it. The op-level comparisons with the reference for every backend, and whole layer
runs, are in test_conformance.py.

Skipped when the extension is not built (with the reason), unless STLLR_REQUIRE_EXTENSION=1 (CI):
then its absence fails.
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import assert_close_policy, backend
from test_conformance import CONV_SHAPES, CONV_VARIANTS, conv_inputs
from stllr_kernels import reference as ref
from stllr_kernels.backends import cpu_cuda as ext
from stllr_kernels.config import RuleConfig
from stllr_kernels.nn import LinearSTLLR, reset_states

REASON = ext.unavailable_reason("cpu", "cpu")
needs_ext = pytest.mark.skipif(REASON is not None, reason=f"cpu backend unavailable: {REASON}")

CFG = RuleConfig(0.5, 0.8, -0.2, 1.0, "fast_sigmoid", "soft", "psi")


def test_extension_is_built_when_required():
    if os.environ.get("STLLR_REQUIRE_EXTENSION", "0") not in ("", "0"):
        assert REASON is None, REASON


def _lif_inputs(shape, dtype):
    sd = ref.state_dtype(dtype)
    current = (torch.randn(shape, dtype=sd) * 0.8).to(dtype)
    v = torch.randn(shape, dtype=sd) * 0.5
    trpost = torch.rand(shape, dtype=sd)
    beta, theta = torch.sigmoid(torch.tensor(2.0)), torch.tensor(0.6)
    return current, v, trpost, beta, theta


# ----------------------------------------------------------------------------- eligibility backward

@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_compiled_conv_backward_matches_reference(dtype):
    """The compiled CPU conv backward, which the `cpu` backend bypasses on CPU tensors
    (ext.CPU_REFERENCE_FALLBACK) and so the conformance suite does not reach there."""
    for i, shape in enumerate(CONV_SHAPES):
        for alpha_post, needs_x, needs_b in CONV_VARIANTS:
            args = conv_inputs(shape, dtype, noncontig=i % 2 == 1, alpha_post=alpha_post)
            L, weight = args[0], args[6]
            positions = L.shape[0] * L.shape[2] * L.shape[3]
            taps = weight.shape[0] // args[10] * weight.shape[2] * weight.shape[3]
            got = ext.conv_backward_compiled(*args, needs_x, needs_b)
            want = ref.conv_backward(*args, needs_x, needs_b)
            for name, g, w, red in zip(("dx", "dW", "db"), got, want, (taps, 2 * positions, positions)):
                assert (g is None) == (w is None), name
                if w is not None:
                    assert_close_policy(g, w, reduction=red, msg=f"{name} at {shape}")


# ----------------------------------------------------------------------------- errors and availability

@needs_ext
def test_bad_inputs_name_the_argument():
    cfg = CFG
    current, v, trpost, beta, theta = _lif_inputs((3, 4), torch.float32)
    with pytest.raises(RuntimeError, match="v: expected shape"):
        ext.lif_step(current, v[:, :2], trpost, beta, theta, cfg)
    with pytest.raises(RuntimeError, match="beta: expected a 0-d"):
        ext.lif_step(current, v, trpost, torch.ones(2), theta, cfg)
    with pytest.raises(RuntimeError, match="current: expected float32"):
        ext.lif_step(current.long(), v, trpost, beta, theta, cfg)
    with pytest.raises(RuntimeError, match="psi: expected a code"):
        torch.ops.stllr.lif_step(current, v, trpost, beta, theta, 0.5, 7, 0, 0)
    with pytest.raises(RuntimeError, match="save_from: expected"):
        ext.lif_sequence(current[None], v, trpost, beta, theta, cfg, -1)
    with pytest.raises(RuntimeError, match="weight: expected shape"):
        ext.linear_backward(torch.ones(2, 3), None, None, None, torch.ones(2, 4), torch.ones(2, 4),
                            torch.ones(4, 3), 0.0, 1.0)
    with pytest.raises(RuntimeError, match="trpre: expected shape"):
        ext.linear_backward(torch.ones(2, 3), None, None, None, torch.ones(2, 4), torch.ones(2, 5),
                            torch.ones(3, 4), 0.0, 1.0)


def test_unavailable_reasons_say_why():
    assert "cpu tensors only" in ext.unavailable_reason("cpu", "cuda")
    assert "cuda tensors only" in ext.unavailable_reason("cuda", "cpu")
    if REASON is not None:
        assert ext.REBUILD_COMMAND in REASON
    if not torch.cuda.is_available():
        assert ext.unavailable_reason("cuda", "cuda") is not None


# ----------------------------------------------------------------------------- layers

@needs_ext
def test_layer_actually_uses_the_cpu_backend(monkeypatch):
    """Guards the layer comparison above against silently running the reference twice."""
    calls = []
    real = ext.lif_step
    monkeypatch.setattr(ext, "lif_step", lambda *a: calls.append(1) or real(*a))
    with backend("cpu"):
        LinearSTLLR(4, 3)(torch.ones(2, 4))
    assert calls, "the cpu backend never reached ext.lif_step"


@needs_ext
def test_readout_step_gradcheck_float64():
    """With lambda_pre = 0 the readout's rule is the exact gradient, so gradcheck can judge it."""
    from stllr_kernels.functional import ReadoutSTLLR

    x = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, requires_grad=True)
    v, trpre = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    beta = torch.tensor(0.7)
    with backend("cpu"):
        assert torch.autograd.gradcheck(
            lambda x_, w_, b_: ReadoutSTLLR.apply(x_[None], w_, b_, v, trpre, beta, 0.0, 0)[0], (x, weight, bias))


# ----------------------------------------------------------------------------- dispatcher checks

def _opcheck_cases():
    cfg = (0.5, 1, 0, 1)  # lambda_post, psi, reset, post
    cur, v, tr, beta, theta = _lif_inputs((3, 5), torch.float32)
    seq = torch.randn(4, 3, 5)
    x, trpre = torch.rand(3, 7), torch.rand(3, 7)
    grad, psi, prev, w = torch.randn(3, 5), torch.rand(3, 5), torch.rand(3, 5), torch.randn(5, 7)
    cx, cw = torch.rand(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    cg = torch.randn(2, 4, 6, 6)
    return {
        "lif_step": [(cur, v, tr, beta, theta, *cfg)],
        "pre_trace": [(trpre, x, 0.8)],
        "lif_sequence": [(seq, v, tr, beta, theta, *cfg, 2), (seq, v, tr, beta, theta, *cfg, 9)],
        "trace_sequence": [(seq, v, 0.8, 1)],
        "linear_backward": [(grad, psi, psi, prev, x, trpre, w, -0.2, 1.0, True, True),
                            (grad, None, None, None, x, trpre, w, 0.0, 1.0, False, False)],
        "conv_backward": [(cg, cg.abs(), cg.abs(), cg.abs(), cx, cx, cw, [1, 1], [1, 1], [1, 1], 1, -0.2, 1.0,
                           True, True)],
    }


@needs_ext
@pytest.mark.parametrize("op", ["lif_step", "pre_trace", "lif_sequence", "trace_sequence",
                                "linear_backward", "conv_backward"])
def test_opcheck(op):
    for args in _opcheck_cases()[op]:
        torch.library.opcheck(getattr(torch.ops.stllr, op).default, args)


@needs_ext
def test_torch_compile_matches_eager():
    """A small model under torch.compile (aot_eager: dynamo + the fake kernels + AOT autograd)."""
    hidden = LinearSTLLR(10, 16)
    readout = LinearSTLLR(16, 4, accumulate=True)
    xs = (torch.rand(3, 2, 10) > 0.5).float() * 2

    def run(step_fn):
        reset_states(hidden)
        reset_states(readout)
        for p in (*hidden.parameters(), *readout.parameters()):
            p.grad = None
        outs = [step_fn(x) for x in xs]
        sum(o.square().sum() for o in outs).backward()
        return torch.stack(outs).detach(), hidden.weight.grad.clone(), readout.weight.grad.clone()

    def step(x):
        return readout(hidden(x))

    torch._dynamo.reset()
    with backend("cpu"):
        eager = run(step)
        compiled = run(torch.compile(step, backend="aot_eager", dynamic=False))
    for g, w in zip(compiled, eager):
        assert_close_policy(g, w, reduction=32)


@needs_ext
@pytest.mark.skipif(os.environ.get("STLLR_TEST_INDUCTOR", "0") in ("", "0"),
                    reason="inductor compiles C++ for ~40 s on the 2-core CI box; set STLLR_TEST_INDUCTOR=1")
def test_torch_compile_inductor_matches_eager():
    layer = LinearSTLLR(10, 16)
    xs = (torch.rand(3, 2, 10) > 0.5).float() * 2

    def run(step_fn):
        reset_states(layer)
        layer.weight.grad = None
        outs = [step_fn(x) for x in xs]
        sum(o.sum() for o in outs).backward()
        return torch.stack(outs).detach(), layer.weight.grad.clone()

    torch._dynamo.reset()
    with backend("cpu"):
        eager = run(layer)
        compiled = run(torch.compile(layer, dynamic=False))
    for g, w in zip(compiled, eager):
        assert_close_policy(g, w, reduction=32)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_missing_extension_never_breaks_the_import():
    """Without the compiled module: the package imports, auto takes torch, forcing cpu says why."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['stllr_kernels._C'] = None\n"
        "import torch, stllr_kernels\n"
        "from stllr_kernels.backends import cpu_cuda as ext, get_backend_name\n"
        "reason = ext.unavailable_reason('cpu', 'cpu')\n"
        "assert reason and ext.REBUILD_COMMAND in reason, reason\n"
        "assert get_backend_name('cpu') == 'torch'\n"
        "try:\n"
        "    stllr_kernels.set_backend('cpu')\n"
        "except stllr_kernels.BackendUnavailable as exc:\n"
        "    assert ext.REBUILD_COMMAND in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('forcing cpu without the extension did not raise')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "STLLR_BACKEND"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
