"""The `triton` backend against reference.py: every op, every Psi / reset / post mode, awkward shapes,
float32 / bfloat16 / float16, outputs and all gradients; then whole multi-step layer runs with the
backend forced to `triton` against the same runs on `torch`.

On a machine without CUDA the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1),
so shapes are tiny but chosen to cross the interpreter's block sizes (256 element-wise, 32 per GEMM
dimension) and so exercise masking in every dimension.
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch.nn.modules.utils import _pair

pytest.importorskip("triton")

from conftest import backend, tol  # noqa: E402

import stllr_kernels  # noqa: E402
from stllr_kernels import reference as R  # noqa: E402
from stllr_kernels.backends import triton_ops as T  # noqa: E402
from stllr_kernels.config import RuleConfig  # noqa: E402
from stllr_kernels.nn import Conv2dSTLLR, LinearRecSTLLR, LinearSTLLR  # noqa: E402
from stllr_kernels.psi import PSI_CODES  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if T.unavailable_reason("triton", DEVICE) is not None:
    pytest.skip(f"triton backend unavailable: {T.unavailable_reason('triton', DEVICE)}",
                allow_module_level=True)

from stllr_kernels.backends.triton import conv as triton_conv  # noqa: E402
from stllr_kernels.backends.triton.eligibility import eligibility_weight_grad  # noqa: E402

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
MODES = [(psi, reset, post) for psi in PSI_CODES for reset in ("soft", "hard") for post in ("psi", "spike")]


def cfg_of(psi, reset="soft", post="psi", factors=(0.5, 0.8, -0.2, 1.0)):
    return RuleConfig(*factors, psi=psi, reset=reset, post=post)


def scalars(leak=0.3, threshold=0.6):
    return (R.beta_of(torch.tensor(leak, device=DEVICE)),
            R.theta_of(torch.tensor(threshold, device=DEVICE)))


def maybe_strided(shape, make, strided: bool):
    """A tensor of `shape` from `make(shape)`; if strided, a non-contiguous view with that shape."""
    if not strided or len(shape) < 2:
        return make(shape)
    t = make((*shape[:-2], shape[-1], shape[-2])).transpose(-1, -2)
    assert not t.is_contiguous()
    return t


def close(actual, expected, dtype, reduction=1):
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    torch.testing.assert_close(actual.float(), expected.float(), **tol(dtype, reduction))


# ----------------------------------------------------------------------------- availability

def test_unavailable_reason_here():
    assert T.unavailable_reason("triton", DEVICE) is None
    assert "device type" in T.unavailable_reason("triton", "mps")


def test_unavailable_reason_without_interpreter_or_triton():
    """Run in fresh interpreters: no TRITON_INTERPRET on a CPU, and triton missing altogether."""
    code = (
        "import sys\n"
        "if sys.argv[1] == 'no-triton': sys.modules['triton'] = None\n"
        "from stllr_kernels.backends import triton_ops as T\n"
        "print(T.unavailable_reason('triton', 'cpu'))\n"
        "try:\n    T.lif_step(None, None, None, None, None, None)\n"
        "except Exception as e:\n    print(type(e).__name__)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(stllr_kernels.__file__)),
                                         env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", code, "no-triton"], env=env, capture_output=True,
                         text=True, timeout=120)
    assert "triton is not importable" in out.stdout and "BackendUnavailable" in out.stdout, out
    if not torch.cuda.is_available():
        out = subprocess.run([sys.executable, "-c", code, "plain"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert "TRITON_INTERPRET=1" in out.stdout, out


# ----------------------------------------------------------------------------- forward ops

STEP_SHAPES = [((1,), False), ((3, 37), True), ((300,), False), ((2, 3, 5, 7), True)]


@pytest.mark.parametrize("psi,reset,post", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_lif_step(seed, psi, reset, post, dtype):
    cfg = cfg_of(psi, reset, post)
    beta, theta = scalars()
    for shape, strided in STEP_SHAPES:
        cur = maybe_strided(shape, lambda s: torch.randn(s, device=DEVICE).to(dtype), strided)
        v = maybe_strided(shape, lambda s: torch.randn(s, device=DEVICE), strided)
        tr = torch.rand(shape, device=DEVICE)
        got = T.lif_step(cur, v, tr, beta, theta, cfg)
        want = R.lif_step(cur, v, tr, beta, theta, cfg)
        assert got[0].dtype == dtype and torch.equal(got[0], want[0]), f"spikes differ at {shape}"
        assert 0 < want[0].float().mean() < 1 or shape == (1,)  # both branches of the threshold
        for g, w in zip(got[1:], want[1:]):
            close(g, w, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pre_trace(seed, dtype):
    for shape, strided in STEP_SHAPES:
        x = maybe_strided(shape, lambda s: (torch.rand(s, device=DEVICE) > 0.5).to(dtype), strided)
        tr = maybe_strided(shape, lambda s: torch.rand(s, device=DEVICE), strided)
        close(T.pre_trace(tr, x, 0.8), R.pre_trace(tr, x, 0.8), torch.float32)


@pytest.mark.parametrize("psi,reset,post", MODES)
def test_lif_sequence(seed, psi, reset, post):
    cfg = cfg_of(psi, reset, post)
    beta, theta = scalars()
    for dtype in DTYPES:
        for steps, step_shape, save_from in ((1, (3, 37), 0), (5, (300,), 2), (4, (2, 3, 5), 4)):
            cur = torch.randn(steps, *step_shape, device=DEVICE).to(dtype)
            v, tr = torch.randn(step_shape, device=DEVICE), torch.rand(step_shape, device=DEVICE)
            got = T.lif_sequence(cur, v, tr, beta, theta, cfg, save_from)
            want = R.lif_sequence(cur, v, tr, beta, theta, cfg, save_from)
            assert torch.equal(got[0], want[0]), "spikes differ"
            for g, w in zip(got[1:], want[1:]):
                assert g.shape == w.shape
                close(g, w, torch.float32)


def test_lif_sequence_non_contiguous(seed):
    beta, theta = scalars()
    cur = torch.randn(3, 37, 4, device=DEVICE).transpose(1, 2)  # [T=3, 4, 37], not contiguous
    v, tr = torch.randn(4, 37, device=DEVICE), torch.rand(37, 4, device=DEVICE).t()
    got = T.lif_sequence(cur, v, tr, beta, theta, cfg_of("triangle"), 1)
    want = R.lif_sequence(cur, v, tr, beta, theta, cfg_of("triangle"), 1)
    assert torch.equal(got[0], want[0])
    for g, w in zip(got[1:], want[1:]):
        close(g, w, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_trace_sequence(seed, dtype):
    for steps, step_shape, save_from in ((1, (3, 37), 0), (5, (300,), 3), (4, (2, 5), 4), (0, (3,), 0)):
        x = (torch.rand(steps, *step_shape, device=DEVICE) > 0.5).to(dtype)
        tr = torch.rand(step_shape, device=DEVICE)
        got = T.trace_sequence(x, tr, 0.7, save_from)
        want = R.trace_sequence(x, tr, 0.7, save_from)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            close(g, w, torch.float32)


# ----------------------------------------------------------------------------- linear eligibility

# (batch shape, N, K): batch 1, sizes over one 32-block in every GEMM dim, leading dims flattened
LINEAR_SHAPES = [((1,), 1, 1), ((1,), 5, 7), ((37,), 33, 70), ((2, 3), 17, 40)]
# which optional inputs: full (causal = spikes), causal-is-psi, readout (all None), no post term
LINEAR_VARIANTS = ["spike", "psi", "readout", "alpha_post_0"]


def linear_inputs(batch, N, K, dtype, variant, strided):
    L = torch.randn(*batch, N, device=DEVICE).to(dtype)
    psi = torch.rand(*batch, N, device=DEVICE)
    causal = (torch.rand(*batch, N, device=DEVICE) > 0.5).to(dtype) if variant == "spike" else psi
    prev = torch.rand(*batch, N, device=DEVICE)
    x = maybe_strided((*batch, K), lambda s: (torch.rand(s, device=DEVICE) > 0.5).to(dtype), strided)
    trpre = maybe_strided((*batch, K), lambda s: 2 * torch.rand(s, device=DEVICE), strided)
    weight = maybe_strided((N, K), lambda s: torch.randn(s, device=DEVICE).to(dtype), strided)
    alpha_post = 0.0 if variant == "alpha_post_0" else -0.2
    if variant == "readout":
        psi = causal = prev = None
    return (L, psi, causal, prev, x, trpre, weight, alpha_post, 0.9)


@pytest.mark.parametrize("variant", LINEAR_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_backward(seed, variant, dtype):
    for i, (batch, N, K) in enumerate(LINEAR_SHAPES):
        args = linear_inputs(batch, N, K, dtype, variant, strided=i >= 2)
        B = int(torch.tensor(batch).prod())
        for needs_x, needs_b in ((True, True), (False, False)):
            got = T.linear_backward(*args, needs_x, needs_b)
            want = R.linear_backward(*args, needs_x, needs_b)
            for g, w, red in zip(got, want, (N, B, B)):
                assert (g is None) == (w is None)
                if w is not None:
                    assert g.shape == w.shape
                    close(g, w, dtype, red)


def test_linear_backward_accumulates_into_buffer(seed):
    B, N, K = 37, 33, 40
    L, psi, causal, prev, x, trpre, weight, ap, aq = linear_inputs((B,), N, K, torch.float32, "spike", False)
    out, bias_out = torch.randn(N, K, device=DEVICE), torch.randn(N, device=DEVICE)
    want_w, want_b = out + R.linear_backward(L, psi, causal, prev, x, trpre, weight, ap, aq)[1], None
    want_b = bias_out + R.linear_backward(L, psi, causal, prev, x, trpre, weight, ap, aq)[2]
    got_w, got_b = eligibility_weight_grad(L, psi, causal, prev, x, trpre, ap, aq, out=out, bias_out=bias_out)
    assert got_w is out and got_b is bias_out
    close(out, want_w, torch.float32, B)
    close(bias_out, want_b, torch.float32, B)


def test_empty_inputs(seed):
    """Zero neurons or an empty batch: no launch goes wrong, shapes and zeros as the reference."""
    beta, theta = scalars()
    empty = torch.zeros(0, 5, device=DEVICE)
    for got, want in zip(T.lif_step(empty, empty, empty, beta, theta, cfg_of("sigmoid")),
                         R.lif_step(empty, empty, empty, beta, theta, cfg_of("sigmoid"))):
        assert got.shape == want.shape
    assert T.pre_trace(empty, empty, 0.5).shape == (0, 5)
    seq = T.lif_sequence(torch.zeros(3, 0, 5, device=DEVICE), empty, empty, beta, theta,
                         cfg_of("triangle"), 1)
    assert [t.shape for t in seq] == [(3, 0, 5), (0, 5), (0, 5), (2, 0, 5), (2, 0, 5)]
    args = linear_inputs((0,), 4, 6, torch.float32, "spike", False)
    for got, want in zip(T.linear_backward(*args), R.linear_backward(*args)):
        assert got.shape == want.shape and torch.equal(got, want)


def test_linear_backward_keeps_offsets_in_int32(seed, monkeypatch):
    """The dW kernel uses int32 offsets along the batch; past a (here shrunk) limit the launcher
    splits the batch into chunks that add up to the same dW and db."""
    from stllr_kernels.backends.triton import eligibility as E
    L, psi, causal, prev, x, trpre, weight, ap, aq = linear_inputs((37,), 33, 70, torch.float32, "spike", False)
    _, want_w, want_b = R.linear_backward(L, psi, causal, prev, x, trpre, weight, ap, aq)
    monkeypatch.setattr(E, "INT32_LIMIT", 270 * 70)  # 14 rows per chunk
    assert E._max_rows(L, x) == 14
    got_w, got_b = E.eligibility_weight_grad(L, psi, causal, prev, x, trpre, ap, aq)
    close(got_w, want_w, torch.float32, 37)
    close(got_b, want_b, torch.float32, 37)


def test_float64_runs_the_reference(seed):
    """float64 is outside the kernels' float32 state: those ops give the reference's results."""
    beta, theta = (t.double() for t in scalars())
    cur, v, tr = (torch.randn(3, 5, device=DEVICE, dtype=torch.float64) for _ in range(3))
    for got, want in zip(T.lif_step(cur, v, tr, beta, theta, cfg_of("sigmoid")),
                         R.lif_step(cur, v, tr, beta, theta, cfg_of("sigmoid"))):
        assert got.dtype == torch.float64 and torch.equal(got, want)
    args = [t.double() if isinstance(t, torch.Tensor) else t
            for t in linear_inputs((4,), 3, 5, torch.float32, "spike", False)]
    for got, want in zip(T.linear_backward(*args), R.linear_backward(*args)):
        assert torch.equal(got, want)


def test_linear_backward_rejects_bad_arguments():
    L, psi, causal, prev, x, trpre, weight, ap, aq = linear_inputs((3,), 4, 5, torch.float32, "psi", False)
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


# ----------------------------------------------------------------------------- conv eligibility

# (B, C_in, C_out, H, W, kernel, stride, padding, dilation, groups)
CONV_SHAPES = [(1, 3, 5, 7, 6, 3, 1, 1, 1, 1), (2, 4, 34, 9, 8, 3, 2, 1, 1, 2),
               (3, 2, 7, 5, 5, 2, 1, 0, 2, 1), (2, 6, 3, 8, 9, (3, 2), (2, 1), (1, 0), (1, 2), 1)]


def conv_inputs(shape, dtype, strided):
    B, ci, co, H, W, k, st, pad, dil, g = shape
    out_hw = [(size + 2 * p - d * (kk - 1) - 1) // s + 1
              for size, kk, s, p, d in zip((H, W), _pair(k), _pair(st), _pair(pad), _pair(dil))]
    post = (B, co, *out_hw)
    L = torch.randn(post, device=DEVICE).to(dtype)
    psi, prev = torch.rand(post, device=DEVICE), torch.rand(post, device=DEVICE)
    causal = (torch.rand(post, device=DEVICE) > 0.5).to(dtype)
    x = maybe_strided((B, ci, H, W), lambda s: (torch.rand(s, device=DEVICE) > 0.5).to(dtype), strided)
    trpre = 2 * torch.rand(B, ci, H, W, device=DEVICE)
    weight = torch.randn(co, ci // g, *_pair(k), device=DEVICE).to(dtype)
    return (L, psi, causal, prev, x, trpre, weight, st, pad, dil, g, -0.2, 0.9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_conv_backward(seed, dtype):
    for i, shape in enumerate(CONV_SHAPES):
        args = conv_inputs(shape, dtype, strided=i in (1, 3))
        L = args[0]
        red = L.shape[0] * L.shape[2] * L.shape[3]
        for needs_x, needs_b in ((True, True), (False, False)):
            got = T.conv_backward(*args, needs_x, needs_b)
            want = R.conv_backward(*args, needs_x, needs_b)
            for g, w, r in zip(got, want, (args[6][0].numel() * args[6].shape[0], red, red)):
                assert (g is None) == (w is None)
                if w is not None:
                    close(g, w, dtype, r)


# ----------------------------------------------------------------------------- whole layers

def run_layer(layer, xs, loss_steps, mode, backend_name, weights):
    """Reset, run all steps (one backward per loss step, as training does) or one sequence call;
    return the outputs and every parameter gradient."""
    layer = copy.deepcopy(layer)
    layer.reset_state()
    with backend(backend_name):
        assert stllr_kernels.get_backend_name(DEVICE) == backend_name
        steps = xs.shape[0]
        if mode == "step":
            outs = []
            for t in range(steps):
                out = layer(xs[t])
                if t >= steps - loss_steps:
                    (out.float() * weights[t]).sum().backward()
                outs.append(out.detach())
            outs = torch.stack(outs)
        else:
            out = layer(xs, loss_steps=loss_steps)
            (out[steps - loss_steps:].float() * weights[steps - loss_steps:]).sum().backward()
            outs = out.detach()
    grads = {n: p.grad for n, p in layer.named_parameters() if p.requires_grad}
    return outs, grads


LAYERS = {
    "linear": lambda: LinearSTLLR(37, 35, leak=0.5, factors=(0.5, 0.8, -0.2, 1.0)),
    "linear_bf16": lambda: LinearSTLLR(37, 35, leak=0.5, psi="sigmoid"),
    "linear_spike_hard": lambda: LinearSTLLR(20, 9, leak=0.5, psi="triangle", reset_mechanism="hard",
                                             post="spike"),
    "recurrent": lambda: LinearRecSTLLR(19, 34, leak=0.5, psi="sigmoid"),
    "conv": lambda: Conv2dSTLLR(3, 6, 3, stride=1, padding=1, leak=0.0),
    "readout": lambda: LinearSTLLR(33, 5, leak=5.0, accumulate=True, factors=(0.0, 0.99, 0.0, 1.0)),
}
INPUTS = {"linear": (37,), "linear_bf16": (37,), "linear_spike_hard": (20,), "recurrent": (19,), "conv": (3, 6, 5),
          "readout": (33,)}


@pytest.mark.parametrize("mode", ["step", "sequence"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_runs_match_torch_backend(seed, kind, mode):
    steps, loss_steps, batch = 4, 2, 3
    dtype = torch.bfloat16 if kind.endswith("bf16") else torch.float32
    layer = LAYERS[kind]().to(device=DEVICE, dtype=dtype)
    xs = ((torch.rand(steps, batch, *INPUTS[kind], device=DEVICE) < 0.5) * 2.0).to(dtype)
    with torch.no_grad():  # larger currents: the layers spike at some steps and not at others
        layer.weight.mul_(3.0)
    with torch.no_grad():
        probe = copy.deepcopy(layer)
        out_shape = probe(xs[0]).shape
    weights = torch.randn(steps, *out_shape, device=DEVICE)  # a random linear loss per step
    want_out, want_grads = run_layer(layer, xs, loss_steps, mode, "torch", weights)
    got_out, got_grads = run_layer(layer, xs, loss_steps, mode, "triton", weights)
    if kind == "readout":
        close(got_out, want_out, dtype, xs.shape[-1])
    else:
        assert torch.equal(got_out, want_out), "spikes differ between backends"
        assert 0 < want_out.mean() < 1, "test inputs should make the layer spike sometimes"
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name in want_grads:
        assert want_grads[name] is not None, name
        close(got_grads[name], want_grads[name], dtype, batch * loss_steps * 64)


# ----------------------------------------------------------------------------- compiling for the GPU
# (the GPU check script itself is tested in tests/test_gpu_check.py)

def test_gemm_kernels_compile_for_sm90(tmp_path):
    """The interpreter cannot run bf16 tl.dot nor the GPU compiler: compile the two GEMM kernels
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
                          "--variant", "bf16"], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.count("| ok |") == 2, out.stdout[-2000:]
