"""What only the `triton` backend has: its availability reasons, the dW kernel writing into a
buffer and splitting the batch for int32 offsets, float64 running the reference, its argument
errors and the sm_90 compile check. The op-level comparisons with the reference for every backend are in
test_conformance.py.

On a machine without CUDA the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("triton")

from conftest import assert_close_policy  # noqa: E402
from test_conformance import linear_inputs  # noqa: E402

import stllr_kernels  # noqa: E402
from stllr_kernels import reference as R  # noqa: E402
from stllr_kernels.backends import triton as T  # noqa: E402
from stllr_kernels.config import RuleConfig  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if T.unavailable_reason("triton", DEVICE) is not None:
    pytest.skip(f"triton backend unavailable: {T.unavailable_reason('triton', DEVICE)}",
                allow_module_level=True)

from stllr_kernels.backends.triton.eligibility import eligibility_weight_grad  # noqa: E402


def cfg_of(psi, reset="soft", post="psi", factors=(0.5, 0.8, -0.2, 1.0)):
    return RuleConfig(*factors, psi=psi, reset=reset, post=post)


def scalars(leak=0.3, threshold=0.6):
    return (R.beta_of(torch.tensor(leak, device=DEVICE)),
            R.theta_of(torch.tensor(threshold, device=DEVICE)))


def on_device(args):
    return tuple(a.to(DEVICE) if isinstance(a, torch.Tensor) else a for a in args)


# ----------------------------------------------------------------------------- availability

def test_unavailable_reason_here():
    assert T.unavailable_reason("triton", DEVICE) is None
    assert "device type" in T.unavailable_reason("triton", "mps")


@pytest.mark.slow  # a fresh interpreter importing torch and triton
def test_unavailable_reason_without_interpreter_or_triton():
    """In a fresh interpreter without TRITON_INTERPRET: first with triton missing altogether, then
    (the package's modules dropped and imported again) with triton present but no interpreter."""
    code = (
        "import sys\n"
        "def attempt():\n"
        "    from stllr_kernels.backends import triton as T\n"
        "    print(T.unavailable_reason('triton', 'cpu'))\n"
        "    try:\n        T.lif_step(None, None, None, None, None, None)\n"
        "    except Exception as e:\n        print(type(e).__name__)\n"
        "sys.modules['triton'] = None\n"
        "attempt()\n"
        "print('-- with triton')\n"
        "del sys.modules['triton']\n"
        "for name in [m for m in sys.modules if m == 'stllr_kernels' or m.startswith('stllr_kernels.')]:\n"
        "    del sys.modules[name]\n"
        "attempt()\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(stllr_kernels.__file__)),
                                         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    without, _, with_triton = out.stdout.partition("-- with triton")
    assert "triton is not importable" in without and "BackendUnavailable" in without, out
    if not torch.cuda.is_available():
        assert "TRITON_INTERPRET=1" in with_triton, out


# ----------------------------------------------------------------------------- linear eligibility

def test_linear_backward_accumulates_into_buffer():
    B, N, K = 37, 33, 40
    L, psi, causal, prev, x, trpre, weight, ap, aq = on_device(linear_inputs((B,), N, K, torch.float32, "spike",
                                                                             False))
    out, bias_out = torch.randn(N, K, device=DEVICE), torch.randn(N, device=DEVICE)
    want_w, want_b = out + R.linear_backward(L, psi, causal, prev, x, trpre, weight, ap, aq)[1], None
    want_b = bias_out + R.linear_backward(L, psi, causal, prev, x, trpre, weight, ap, aq)[2]
    got_w, got_b = eligibility_weight_grad(L, psi, causal, prev, x, trpre, ap, aq, out=out, bias_out=bias_out)
    assert got_w is out and got_b is bias_out
    assert_close_policy(out, want_w, reduction=2 * B)
    assert_close_policy(bias_out, want_b, reduction=B)


def test_linear_backward_keeps_offsets_in_int32(monkeypatch):
    """The dW kernel uses int32 offsets along the batch; past a (here shrunk) limit the launcher
    splits the batch into chunks that add up to the same dW and db."""
    from stllr_kernels.backends.triton import eligibility as E
    L, psi, causal, prev, x, trpre, weight, ap, aq = on_device(linear_inputs((37,), 33, 70, torch.float32,
                                                                             "spike", False))
    _, want_w, want_b = R.linear_backward(L, psi, causal, prev, x, trpre, weight, ap, aq)
    monkeypatch.setattr(E, "INT32_LIMIT", 270 * 70)  # 14 rows per chunk
    assert E._max_rows(L, x) == 14
    got_w, got_b = E.eligibility_weight_grad(L, psi, causal, prev, x, trpre, ap, aq)
    assert_close_policy(got_w, want_w, reduction=2 * 37)
    assert_close_policy(got_b, want_b, reduction=37)


def test_float64_runs_the_reference():
    """float64 is outside the kernels' float32 state: those ops give the reference's results."""
    beta, theta = (t.double() for t in scalars())
    cur, v, tr = (torch.randn(3, 5, device=DEVICE, dtype=torch.float64) for _ in range(3))
    for got, want in zip(T.lif_step(cur, v, tr, beta, theta, cfg_of("sigmoid")),
                         R.lif_step(cur, v, tr, beta, theta, cfg_of("sigmoid"))):
        assert got.dtype == torch.float64 and torch.equal(got, want)
    args = [t.double() if isinstance(t, torch.Tensor) else t
            for t in on_device(linear_inputs((4,), 3, 5, torch.float32, "spike", False))]
    for got, want in zip(T.linear_backward(*args), R.linear_backward(*args)):
        assert torch.equal(got, want)


def test_linear_backward_rejects_bad_arguments():
    L, psi, causal, prev, x, trpre, weight, ap, aq = on_device(linear_inputs((3,), 4, 5, torch.float32, "psi",
                                                                             False))
    with pytest.raises(ValueError, match="trpre"):
        T.linear_backward(L, psi, causal, prev, x, trpre[:, :4], weight, ap, aq)
    with pytest.raises(TypeError, match="x: the triton backend supports"):
        T.linear_backward(L, psi, causal, prev, x.int(), trpre, weight, ap, aq)
    with pytest.raises(TypeError, match="v: .*float32"):
        T.lif_step(L, L.bfloat16(), L, *scalars(), cfg_of("sigmoid"))
    with pytest.raises(TypeError, match="beta"):
        T.lif_step(L, L, L, 0.5, scalars()[1], cfg_of("sigmoid"))
    with pytest.raises(ValueError, match="save_from"):
        T.trace_sequence(x[None], trpre, 0.5, 2)


# ----------------------------------------------------------------------------- compile for the GPU

@pytest.mark.slow
def test_gemm_kernels_compile_for_sm90(tmp_path):
    """The interpreter cannot run bf16 tl.dot nor the GPU compiler: compile the two linear GEMM kernels
    with bf16 operands for sm_90 through Triton's whole pipeline (benchmarks/compile_check.py)."""
    import triton
    from triton.backends import backends as triton_backends
    if "nvidia" not in triton_backends:
        pytest.skip("this Triton has no NVIDIA backend to compile with")
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                        "compile_check.py")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(stllr_kernels.__file__)),
                                         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, path, "--quick", "--only", "linear dW,linear dx",
                          "--variant", "bf16 linear", "--jobs", "1"], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("| ok |") == 2, out.stdout[-2000:]
    assert "0 rows spill registers" in out.stdout, out.stdout[-2000:]


def test_single_config_knob_leaves_one_config():
    """STLLR_TRITON_SINGLE_CONFIG=1 (a GPU test run): one config per kernel, no autotuning; the
    interpreter gets its own one config; every autotuned kernel is in the registry."""
    from stllr_kernels.backends.triton import autotune, common
    sets = [common.elementwise_configs(), common.sequence_configs(),
            common.gemm_configs("A", "B", "C", common.WEIGHT_GRAD_TILES)]
    assert min(len(s.candidates(interpreted=False, single=False)) for s in sets) > 1
    assert [len(s.candidates(interpreted=False, single=True)) for s in sets] == [1, 1, 1]
    assert all(s.candidates(interpreted=True, single=False) == [s.interpreted] for s in sets)
    assert {"_lif_step_kernel", "_lif_sequence_kernel", "_pre_trace_kernel", "_trace_sequence_kernel",
            "_eligibility_dw_kernel", "_signal_dx_kernel", "_conv_products_kernel", "_leaky_scan_kernel",
            "_reverse_eligibility_kernel"} == set(autotune.TUNED)
    assert all(len(t.configs) == 1 and len(t.gpu_configs) > 1 for t in autotune.TUNED.values())
