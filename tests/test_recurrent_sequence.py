"""The recurrent and readout sequence ops, the recurrent backward and the standardization backward,
on every backend against the reference; and the layer glue built on them (standardization cached
per sequence, online == time-fused, the early-loss error, argument checks)."""
from __future__ import annotations

import copy

import pytest
import torch

from stllr_kernels import reference as R
from stllr_kernels.backends import get_ops, unavailable_reason
from stllr_kernels.config import RuleConfig
from stllr_kernels.functional import reverse_time_pays
from stllr_kernels.nn import Conv2dSTLLR, LinearRecSTLLR, LinearSTLLR

from conftest import backend, tol

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(unavailable_reason(name, "cpu") is not None,
                                                        reason=str(unavailable_reason(name, "cpu"))))
            for name in ("torch", "cpu", "triton")]
CONFIGS = [RuleConfig(0.5, 1.0, 1.0, 1.0, "fast_sigmoid", "soft", "psi"),
           RuleConfig(0.3, 0.8, -0.2, 1.0, "triangle", "hard", "spike"),
           RuleConfig(0.0, 0.6, 0.0, 1.0, "sigmoid", "soft", "psi")]
# (T, B, K, N): one of everything, odd sizes, a block + 1 (the recurrent step tiles B and N by 32)
SHAPES = [(1, 1, 1, 1), (5, 3, 7, 33), (3, 34, 40, 65)]


def dyadic(*shape, scale=1.0):
    """Values on a grid of 2^-6: sums of a few of them are exact in any order, so GEMMs that add up
    in different orders (torch, C++, Triton's tl.dot) give the same currents and the same spikes."""
    return torch.randint(-64, 65, shape).float() / 64 * scale


def recurrent_inputs(T, B, K, N, dtype=torch.float32):
    x = (torch.rand(T, B, K) < 0.5).to(dtype)
    weight, weight_rec = dyadic(N, K, scale=2.0).to(dtype), dyadic(N, N).to(dtype)
    bias = dyadic(N).to(dtype)
    s_prev = (torch.rand(B, N) < 0.3).to(dtype)
    v, trpost, trrec = torch.rand(B, N), torch.rand(B, N), torch.rand(B, N)
    trpre = torch.rand(B, K)
    beta, theta = torch.tensor(0.75), torch.tensor(0.6)
    return x, weight, bias, weight_rec, s_prev, v, trpost, trpre, trrec, beta, theta


def assert_outputs_close(got, want, reduction, input_dtype=torch.float32):
    """States carry the input dtype's rounding (a bf16 current), whatever their own dtype."""
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, (i, g.shape, w.shape, g.dtype, w.dtype)
        dtype = input_dtype if input_dtype != torch.float32 else w.dtype
        torch.testing.assert_close(g, w, **tol(dtype, reduction), msg=f"output {i}", check_dtype=False)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c.psi}-{c.reset}-{c.post}")
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_recurrent_sequence(seed, name, cfg, shape):
    T = shape[0]
    args = recurrent_inputs(*shape)
    for save_from in sorted({0, T // 2, T}):
        want = R.recurrent_sequence(*args, cfg, save_from)
        with backend(name):
            got = get_ops("cpu").recurrent_sequence(*args, cfg, save_from)
        assert torch.equal(got[0], want[0]), "spikes differ from the reference"
        assert_outputs_close(got, want, shape[3])
        # the reverse-time backward's forward: the traces (outputs 7 and 9) of the first loss step only
        with backend(name):
            got = get_ops("cpu").recurrent_sequence(*args, cfg, save_from, True)
        first_only = [w[:1] if i in (7, 9) else w for i, w in enumerate(want)]
        assert_outputs_close(got, first_only, shape[3])
        assert_outputs_close(R.recurrent_sequence(*args, cfg, save_from, True), first_only, shape[3])
    if want[0].numel() > 20:
        assert 0 < want[0].mean() < 1, "inputs should make the layer spike at some steps only"


@pytest.mark.parametrize("name", BACKENDS)
def test_recurrent_sequence_bfloat16(seed, name):
    args = recurrent_inputs(4, 3, 9, 17, torch.bfloat16)
    want = R.recurrent_sequence(*args, CONFIGS[0], 1)
    with backend(name):
        got = get_ops("cpu").recurrent_sequence(*args, CONFIGS[0], 1)
    assert torch.equal(got[0], want[0])
    assert_outputs_close(got, want, 17, torch.bfloat16)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_readout_sequence(seed, name, shape):
    T, B, K, N = shape
    x, weight, bias = torch.rand(T, B, K), torch.randn(N, K), torch.randn(N)
    v, trpre, beta = torch.randn(B, N), torch.rand(B, K), torch.tensor(0.993)
    for save_from in sorted({0, T // 2, T}):
        want = R.readout_sequence(x, weight, bias, v, trpre, beta, 0.99, save_from)
        with backend(name):
            got = get_ops("cpu").readout_sequence(x, weight, bias, v, trpre, beta, 0.99, save_from)
        assert_outputs_close(got, want, K * T)


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("rows,K,N", [(1, 1, 1), (6, 7, 33), (35, 40, 65)])
def test_recurrent_backward(seed, name, rows, K, N):
    L, psi, causal, prev = torch.randn(rows, N), torch.rand(rows, N), torch.rand(rows, N), torch.rand(rows, N)
    x, trpre = torch.rand(rows, K), torch.rand(rows, K)
    s_prev, trrec = (torch.rand(rows, N) < 0.4).float(), torch.rand(rows, N)
    weight, weight_rec = torch.randn(N, K), torch.randn(N, N)
    for needs in (True, False):
        want = R.recurrent_backward(L, psi, causal, prev, x, trpre, s_prev, trrec, weight, weight_rec, -0.2, 1.0,
                                    needs, needs)
        with backend(name):
            got = get_ops("cpu").recurrent_backward(L, psi, causal, prev, x, trpre, s_prev, trrec, weight,
                                                    weight_rec, -0.2, 1.0, needs, needs)
        for g, w in zip(got, want):
            assert (g is None) == (w is None)
            if w is not None:
                torch.testing.assert_close(g, w, **tol(torch.float32, rows * max(K, N)))


def forward_time_inputs(D, B, K, N, lambda_pre, post, dtype):
    """The loss steps' operands of recurrent_backward, with the trace sequences built from nonzero
    carried-in traces by the recurrences of docs/rule.md section 1: trpre[d] = lambda trpre[d-1] + x[d] and
    trrec[t-1] = lambda trrec[t-2] + s[t-1]."""
    sd = R.state_dtype(dtype)
    L = torch.randn(D, B, N).to(dtype)
    psi, prev = torch.rand(D, B, N, dtype=sd), torch.rand(D, B, N, dtype=sd)
    spikes = (torch.rand(D, B, N) < 0.4).to(sd)
    causal = psi if post == "psi" else spikes
    x, s_prev = (torch.rand(D, B, K) < 0.5).to(dtype), (torch.rand(D, B, N) < 0.4).to(dtype)
    trpre, trrec = [torch.rand(B, K, dtype=sd) + 0.5], [torch.rand(B, N, dtype=sd) + 0.5]
    for d in range(1, D):
        trpre.append(lambda_pre * trpre[-1] + x[d].to(sd))
        trrec.append(lambda_pre * trrec[-1] + s_prev[d].to(sd))
    trpre, trrec = torch.stack(trpre)[:D], torch.stack(trrec)[:D]
    weight, weight_rec = torch.randn(N, K).to(dtype), torch.randn(N, N).to(dtype)
    return L, psi, causal, prev, x, trpre, s_prev, trrec, weight, weight_rec


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("post", ["psi", "spike"])
# (D, B, K, N): one of everything, batch 1, odd sizes and a block + 1, D = 0
@pytest.mark.parametrize("D,B,K,N", [(1, 1, 1, 1), (2, 1, 3, 5), (7, 3, 7, 33), (12, 2, 40, 65), (0, 2, 3, 4)])
def test_recurrent_backward_reverse_equals_the_forward_time_oracle(seed, name, dtype, post, D, B, K, N):
    """The reverse-time op gives what the forward-time rule of docs/rule.md section 2 (reference.recurrent_backward over the
    trace sequences) gives, from the first loss step's traces only."""
    for lambda_pre, alpha_post, alpha_pre in ((0.8, -0.2, 1.0), (1.0, 0.7, 0.5), (0.0, 1.0, 1.0)):
        L, psi, causal, prev, x, trpre, s_prev, trrec, weight, weight_rec = forward_time_inputs(
            D, B, K, N, lambda_pre, post, dtype)
        rows = lambda t: t.flatten(0, 1)  # noqa: E731
        want = R.recurrent_backward(rows(L), rows(psi), rows(causal), rows(prev), rows(x), rows(trpre),
                                    rows(s_prev), rows(trrec), weight, weight_rec, alpha_post, alpha_pre)
        first_trpre = trpre[0] if D else torch.rand(B, K, dtype=trpre.dtype)
        first_trrec = trrec[0] if D else torch.rand(B, N, dtype=trrec.dtype)
        with backend(name):
            got = get_ops("cpu").recurrent_backward_reverse(L, psi, causal, prev, x, first_trpre, s_prev,
                                                            first_trrec, weight, weight_rec, lambda_pre,
                                                            alpha_post, alpha_pre)
        # reductions: dx over N; dW, db, dW_rec over the D x B rows (and G over up to D steps)
        for what, g, w, reduction in zip(("dx", "dW", "db", "dW_rec"), got, want, (N, D * B, D * B, D * B)):
            assert g.dtype == w.dtype, what
            torch.testing.assert_close(g, w.view(g.shape), **tol(dtype, reduction), msg=what)
    if D > 1:
        assert want[1].abs().max() > 0.1, "the test should produce nonzero weight gradients"


@pytest.mark.parametrize("name", BACKENDS)
def test_recurrent_backward_reverse_skips_what_is_not_needed(seed, name):
    args = forward_time_inputs(3, 2, 5, 4, 0.9, "psi", torch.float32)
    L, psi, causal, prev, x, trpre, s_prev, trrec, weight, weight_rec = args
    with backend(name):
        dx, dw, db, dw_rec = get_ops("cpu").recurrent_backward_reverse(
            L, psi, causal, prev, x, trpre[0], s_prev, trrec[0], weight, weight_rec, 0.9, 1.0, 1.0, False, False)
    assert dx is None and db is None and dw.shape == (4, 5) and dw_rec.shape == (4, 4)


@pytest.mark.parametrize("name", [p for p in BACKENDS if p.values[0] != "torch"])
@pytest.mark.parametrize("bad", ["trpre_first", "x", "weight_rec"])
def test_recurrent_backward_reverse_names_a_bad_argument(seed, name, bad):
    L, psi, causal, prev, x, trpre, s_prev, trrec, weight, weight_rec = forward_time_inputs(
        3, 2, 5, 4, 0.9, "psi", torch.float32)
    args = dict(trpre_first=trpre[0], x=x, weight_rec=weight_rec)
    args[bad] = args[bad][..., :-1]  # one column short
    with backend(name), pytest.raises((ValueError, RuntimeError), match=f"^{bad}: expected"):
        get_ops("cpu").recurrent_backward_reverse(L, psi, causal, prev, args["x"], args["trpre_first"], s_prev,
                                                  trrec[0], weight, args["weight_rec"], 0.9, 1.0, 1.0)


@pytest.mark.parametrize("shape", [(1, 2), (5, 7), (33, 65), (4, 3, 3, 3), (6, 1, 5, 1)], ids=str)
def test_standardize_backward_is_autograd_of_standardize_weight(seed, shape):
    weight = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    gain = (torch.rand(shape[0], *([1] * (len(shape) - 1)), dtype=torch.float64) + 0.5).requires_grad_()
    grad = torch.randn(shape, dtype=torch.float64)
    want_w, want_g = torch.autograd.grad(R.standardize_weight(weight, gain), (weight, gain), grad)
    _, normalized, scale = R.standardize(weight.detach(), gain.detach())
    got_w, got_g = R.standardize_backward(grad, normalized, scale, gain.detach())
    torch.testing.assert_close(got_w, want_w, **tol(torch.float64, weight[0].numel()))
    torch.testing.assert_close(got_g, want_g, **tol(torch.float64, weight[0].numel()))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("shape", [(1, 2), (5, 7), (33, 1500), (4, 3, 3, 3)], ids=str)
def test_standardize_backward_op(seed, name, shape):
    weight = torch.randn(shape)
    gain = torch.rand(shape[0], *([1] * (len(shape) - 1))) + 0.5
    grad = torch.randn(shape)
    _, normalized, scale = R.standardize(weight, gain)
    want = R.standardize_backward(grad, normalized, scale, gain)
    with backend(name):
        got = get_ops("cpu").standardize_backward(grad, normalized, scale, gain)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol(torch.float32, weight[0].numel()))


@pytest.mark.skipif(unavailable_reason("cpu", "cpu") is not None, reason="the C++ extension is not built")
def test_opcheck_new_ops(seed):
    cfg = (0.5, 1.0, 0, 0, 0)  # lambda_post, lambda_pre, psi, reset, post
    args = recurrent_inputs(3, 2, 5, 4)
    for save_from in (0, 2):
        torch.library.opcheck(torch.ops.stllr.recurrent_sequence.default, (*args, *cfg, save_from))
        torch.library.opcheck(torch.ops.stllr.recurrent_sequence.default, (*args, *cfg, save_from, True))
    x, weight, bias, _, _, v, _, trpre, _, beta, _ = args
    torch.library.opcheck(torch.ops.stllr.readout_sequence.default, (x, weight, bias, v, trpre, beta, 0.9, 1))
    L, m = torch.randn(6, 4), torch.rand(6, 4)
    torch.library.opcheck(torch.ops.stllr.recurrent_backward.default,
                          (L, m, m, m, torch.rand(6, 5), torch.rand(6, 5), m, m, weight, torch.randn(4, 4),
                           -0.2, 1.0, True, True))
    for needs in (True, False):
        torch.library.opcheck(torch.ops.stllr.recurrent_backward_reverse.default,
                              (L.view(3, 2, 4), m.view(3, 2, 4), m.view(3, 2, 4), m.view(3, 2, 4),
                               torch.rand(3, 2, 5), torch.rand(2, 5), m.view(3, 2, 4), torch.rand(2, 4), weight,
                               torch.randn(4, 4), 0.9, -0.2, 1.0, needs, needs))
    _, n, s = R.standardize(torch.randn(4, 5), torch.ones(4, 1))
    torch.library.opcheck(torch.ops.stllr.standardize_backward.default, (torch.randn(4, 5), n, s, torch.ones(4, 1)))


# ----------------------------------------------------------------------------- layers

def run(layer, xs, loss_steps, mode, weights):
    """Online (one call and one backward per loss step) or time-fused (one call, one backward)."""
    layer.reset_state()
    T = xs.shape[0]
    if mode == "online":
        outs = []
        for t in range(T):
            with torch.set_grad_enabled(t >= T - loss_steps):
                out = layer(xs[t])
                if t >= T - loss_steps:
                    (out * weights[t]).sum().backward()
            outs.append(out.detach())
        return torch.stack(outs)
    out = layer(xs, loss_steps=loss_steps)
    (out[T - loss_steps:] * weights[T - loss_steps:]).sum().backward()
    return out.detach()


# loss steps 1: the forward-time form; 4: the reverse-time form with a trace carried in from the steps
# before; 6 (= T): from step 0. The interpreted Triton backend, slow on the step path, runs 1 and 4.
LAYER_CASES = [pytest.param(d, b.values[0], marks=b.marks, id=f"{d}-{b.values[0]}") for b in BACKENDS
               for d in (1, 4, 6) if (b.values[0], d) != ("triton", 6)]


@pytest.mark.parametrize("loss_steps,name", LAYER_CASES)
@pytest.mark.parametrize("post", ["psi", "spike"])
def test_recurrent_layer_online_equals_time_fused(seed, name, post, loss_steps, monkeypatch):
    layer = LinearRecSTLLR(21, 34, leak=0.5, post=post, psi="sigmoid" if post == "psi" else "triangle")
    with torch.no_grad():
        layer.weight.copy_(dyadic(34, 21, scale=2.0))
        layer.weight_rec.copy_(dyadic(34, 34))
    xs = (torch.rand(6, 3, 21) < 0.5).float()
    weights = torch.randn(6, 3, 34)
    with backend(name):
        ops, calls = get_ops("cpu"), []
        for op in ("recurrent_backward", "recurrent_backward_reverse"):
            def spy(*args, _op=op, _real=getattr(ops, op), **kwargs):
                calls.append(_op)
                return _real(*args, **kwargs)
            monkeypatch.setattr(ops, op, spy)
        results, taken = {}, {}
        for mode in ("online", "fused"):
            copy_ = copy.deepcopy(layer)
            calls.clear()
            out = run(copy_, xs, loss_steps, mode, weights)
            results[mode] = out, {n: p.grad for n, p in copy_.named_parameters() if p.requires_grad}
            taken[mode] = list(calls)
    # online: one forward-time backward per loss step; fused: one backward, reverse-time from D = 2 on
    assert reverse_time_pays(loss_steps) == (loss_steps > 1)
    assert taken["online"] == ["recurrent_backward"] * loss_steps
    assert taken["fused"] == ["recurrent_backward_reverse" if loss_steps > 1 else "recurrent_backward"]
    (out_a, grads_a), (out_b, grads_b) = results["online"], results["fused"]
    assert torch.equal(out_a, out_b)
    assert 0 < out_a.mean() < 1
    assert set(grads_a) == {"weight", "bias", "gain", "weight_rec", "gain_rec"}
    for n in grads_a:
        torch.testing.assert_close(grads_a[n], grads_b[n], **tol(torch.float32, 3 * loss_steps * 34), msg=n)


def test_standardization_follows_an_optimizer_step_inside_the_sequence(seed):
    """stllr_online steps the optimizer between loss steps: the cached W_hat must follow."""
    layer = LinearRecSTLLR(9, 12, leak=0.5)
    xs = (torch.rand(4, 2, 9) < 0.6).float()
    opt = torch.optim.SGD(layer.parameters(), lr=0.5)
    layer.reset_state()
    for t in range(4):
        out = layer(xs[t])
        opt.zero_grad()
        out.sum().backward()
        opt.step()
        for w, g in ((layer.weight, layer.gain), (layer.weight_rec, layer.gain_rec)):
            cached = layer._standardized(w, g)
            torch.testing.assert_close(cached.weight, R.standardize_weight(w, g).detach(), **tol(torch.float32))


@pytest.mark.parametrize("name", BACKENDS)
@pytest.mark.parametrize("kind", ["linear", "recurrent", "conv", "readout"])
@pytest.mark.parametrize("x_grad", [False, True], ids=["input", "hidden"])
def test_a_loss_before_the_loss_steps_raises(seed, name, kind, x_grad):
    layer = {"linear": lambda: LinearSTLLR(5, 4), "recurrent": lambda: LinearRecSTLLR(5, 4),
             "conv": lambda: Conv2dSTLLR(5, 4, 3, padding=1),
             "readout": lambda: LinearSTLLR(5, 4, accumulate=True)}[kind]()
    xs = torch.rand(4, 2, 5, *((3, 3) if kind == "conv" else ())).requires_grad_(x_grad)
    with backend(name):
        out = layer(xs, loss_steps=2)
        with pytest.raises(RuntimeError, match="a loss reached a step before step 2"):
            out.sum().backward()


@pytest.mark.parametrize("bad", [-1, 5, 2.0, True, "2"])
def test_loss_steps_must_be_an_int_in_0_to_T(bad):
    for layer in (LinearSTLLR(3, 2), LinearRecSTLLR(3, 2), LinearSTLLR(3, 2, accumulate=True)):
        with pytest.raises(ValueError, match=r"loss_steps: expected an int in \[0, T=4\]"):
            layer(torch.rand(4, 2, 3), loss_steps=bad)


@pytest.mark.parametrize("param", ["leak", "threshold"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_leak_and_threshold_must_be_finite(param, value):
    for cls, args in ((LinearSTLLR, (3, 2)), (LinearRecSTLLR, (3, 2)), (Conv2dSTLLR, (2, 3, 3))):
        with pytest.raises(ValueError, match=f"{param} must be finite"):
            cls(*args, **{param: value})


def test_zero_time_steps_get_a_clear_error():
    for layer, x in ((LinearSTLLR(3, 2), torch.rand(0, 2, 3)), (LinearRecSTLLR(3, 2), torch.rand(0, 2, 3)),
                     (Conv2dSTLLR(2, 3, 3), torch.rand(0, 1, 2, 5, 5))):
        with pytest.raises(ValueError, match="zero time steps"):
            layer(x, loss_steps=0)


def test_float16_is_refused_with_what_to_use():
    for layer, x in ((LinearSTLLR(3, 2), torch.rand(2, 3)), (LinearRecSTLLR(3, 2), torch.rand(2, 3)),
                     (Conv2dSTLLR(2, 3, 3), torch.rand(1, 2, 5, 5))):
        with pytest.raises(TypeError, match="torch.float16 is not supported.*bfloat16"):
            layer.half()(x.half())


# ----------------------------------------------------------------------------- Triton device guard

@pytest.mark.skipif(unavailable_reason("triton", "cpu") is not None, reason="triton not runnable here")
def test_every_triton_op_launches_under_a_guard_on_its_tensors_device(seed, monkeypatch):
    from stllr_kernels.backends import triton as triton_backend
    seen = []
    real = triton_backend._device_guard
    monkeypatch.setattr(triton_backend, "_device_guard", lambda device: seen.append(device) or real(device))
    args = recurrent_inputs(2, 2, 3, 4)
    with backend("triton"):
        layer = LinearRecSTLLR(3, 4)
        layer(args[0], loss_steps=2).sum().backward()
    assert len(seen) >= 4 and all(d == torch.device("cpu") for d in seen)  # forward, backward, 2 standardizations
    names = {"recurrent_sequence", "recurrent_backward", "standardize_backward"}
    assert names <= {op for op in triton_backend.__all__ if op != "unavailable_reason"}
    # on a GPU the guard is torch.cuda.device of that tensor's index (cuda:1 launches on GPU 1)
    guard = real(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
