"""Layer behaviour: time-fused vs step-by-step, input checks, states, dropout, BPTT, registry, memory."""
from __future__ import annotations

import io
import os

import pytest
import torch

import stllr_kernels
from conftest import assert_close_policy, backend
from stllr_kernels.nn import (LIF, Conv2dSTLLR, LeakyReadout, LinearRecLIF, LinearRecSTLLR,
                              LinearSTLLR, SpikingDropout, WSConv2d, WSLinear, reset_states, spike_fn)
from stllr_kernels.psi import PSI_FUNCTIONS


def make_layer(kind, psi=None, reset="soft", post="psi"):
    common = dict(factors=[0.6, 0.7, -0.4, 1.1], reset_mechanism=reset, psi=psi)
    if kind == "linear":
        return LinearSTLLR(11, 7, leak=0.5, post=post, **common), (11,)
    if kind == "recurrent":
        return LinearRecSTLLR(11, 7, leak=0.5, post=post, **common), (11,)
    if kind == "readout":
        return LinearSTLLR(11, 7, accumulate=True, leak=5.0, factors=[0, 0.99, 0, 1]), (11,)
    return Conv2dSTLLR(3, 4, 3, stride=2, padding=1, leak=0.0, post=post, **common), (3, 7, 7)


def boost(layer):
    with torch.no_grad():
        layer.weight.mul_(5.0)
        if layer.bias is not None:
            layer.bias.fill_(0.2)


KINDS = ["linear", "recurrent", "readout", "conv"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("loss_steps", [1, 3, 6])
def test_sequence_mode_equals_step_mode(seed, kind, loss_steps):
    T, B = 6, 3
    step_layer, feat = make_layer(kind, psi="sigmoid" if kind == "conv" else None,
                                  post="spike" if kind == "conv" else "psi")
    boost(step_layer)
    seq_layer, _ = make_layer(kind, psi="sigmoid" if kind == "conv" else None,
                              post="spike" if kind == "conv" else "psi")
    seq_layer.load_state_dict(step_layer.state_dict())
    x = (torch.rand(T, B, *feat) < 0.4).float()
    with torch.no_grad():
        out_shape = seq_layer(x).shape
    seq_layer.reset_state()
    g = torch.randn(out_shape)

    # step by step, a backward per loss step, as the `stllr` training mode does
    xs = x.clone().requires_grad_()
    step_layer.reset_state()
    outs = []
    for t in range(T):
        out = step_layer(xs[t])
        outs.append(out.detach())
        if t >= T - loss_steps:
            (out * g[t]).sum().backward()
    # one call over the sequence, one backward
    xq = x.clone().requires_grad_()
    out_seq = seq_layer(xq, loss_steps=loss_steps)
    (out_seq[T - loss_steps:] * g[T - loss_steps:]).sum().backward()

    fan_in = step_layer.weight[0].numel()
    assert_close_policy(out_seq.detach(), torch.stack(outs), reduction=fan_in)
    for (name, p_step), p_seq in zip(step_layer.named_parameters(), seq_layer.parameters()):
        if p_step.grad is None:
            assert p_seq.grad is None, name
            continue
        assert_close_policy(p_seq.grad, p_step.grad, reduction=B * T * fan_in, msg=name)
    assert_close_policy(xq.grad, xs.grad, reduction=16)
    assert step_layer.weight.grad.abs().sum() > 0
    # and the states carried on are the same
    assert_close_policy(seq_layer.v, step_layer.v, reduction=T * fan_in)


def test_sequence_mode_rejects_loss_before_loss_steps():
    layer, feat = make_layer("linear")
    x = torch.rand(5, 2, *feat)
    out = layer(x, loss_steps=2)
    with pytest.raises(RuntimeError, match="loss_steps"):
        out.sum().backward()


def saved_bytes(fn):
    """Bytes autograd saves for backward while fn() runs, and fn's result."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        result = fn()
    return total, result


def test_sequence_mode_saves_only_loss_steps():
    """Memory of the time-fused mode grows with the loss steps D, not with T."""
    def saved(T, D):
        return saved_bytes(lambda: LinearSTLLR(64, 32)(torch.rand(T, 8, 64), loss_steps=D))[0]
    assert saved(50, 2) == saved(10, 2)
    assert saved(10, 4) > saved(10, 2)


def test_step_mode_memory_is_flat_in_time():
    """Online mode: what one step saves does not depend on how many steps ran before."""
    layer = LinearRecSTLLR(32, 16)
    sizes = []
    for _ in range(6):
        total, s = saved_bytes(lambda: layer(torch.rand(4, 32)))
        s.sum().backward()
        sizes.append(total)
    assert len(set(sizes[1:])) == 1, sizes


@pytest.mark.parametrize("kind", KINDS)
def test_batch_size_may_change_between_sequences(kind):
    layer, feat = make_layer(kind)
    layer(torch.rand(4, *feat))
    with pytest.raises(RuntimeError, match="reset_state"):
        layer(torch.rand(2, *feat))
    layer.reset_state()
    assert layer(torch.rand(2, *feat)).shape[0] == 2


@pytest.mark.parametrize("kind", KINDS)
def test_double_state_dict_and_save(kind, tmp_path):
    layer, feat = make_layer(kind)
    layer(torch.rand(2, *feat))
    layer.double()  # states follow the module
    out = layer(torch.rand(2, *feat, dtype=torch.float64))
    assert out.dtype == torch.float64 and layer.v.dtype == torch.float64
    keys = set(layer.state_dict())
    assert {"weight", "bias", "leak", "threshold"} <= keys
    assert not any(k in keys for k in ("v", "trpre", "trpost")), "states are not parameters"
    if kind == "recurrent":
        assert {"weight_rec", "gain_rec", "gain"} <= keys
    buffer = io.BytesIO()
    torch.save(layer, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    loaded.reset_state()
    layer.reset_state()
    x = torch.rand(3, *feat, dtype=torch.float64)
    assert_close_policy(loaded(x), layer(x), reduction=x[0].numel())


def test_layers_do_not_link_steps():
    """States carry forward detached: a loss at step t gives no gradient through earlier steps."""
    layer = LinearSTLLR(5, 4)
    x0 = torch.rand(2, 5, requires_grad=True)
    layer(x0)
    out = layer(torch.rand(2, 5))
    out.sum().backward()
    assert x0.grad is None
    assert not layer.v.requires_grad and not layer.trpre.requires_grad


@pytest.mark.parametrize("bad, match", [
    (lambda: LinearSTLLR(4, 3)(torch.rand(2, 5)), r"\[B, 4\] \(one step\) or \[T, B, 4\]"),
    (lambda: LinearSTLLR(4, 3)(torch.rand(4)), r"\[B, 4\] \(one step\)"),
    (lambda: LinearSTLLR(4, 3)(torch.rand(2, 3, 4, 4)), "one step"),
    (lambda: LinearSTLLR(4, 3)(torch.ones(2, 4, dtype=torch.int64)), "floating point"),
    (lambda: LinearSTLLR(4, 3)(torch.rand(2, 4, dtype=torch.float64)), "dtype"),
    (lambda: LinearSTLLR(4, 3)(torch.rand(2, 4, device="meta")), "is on meta"),
    (lambda: LinearSTLLR(4, 3)([1.0, 2.0]), "torch.Tensor"),
    (lambda: Conv2dSTLLR(2, 3, 3)(torch.rand(1, 3, 5, 5)), r"\[B, 2, \*, \*\]"),
    (lambda: Conv2dSTLLR(2, 3, 5)(torch.rand(1, 2, 3, 3)), "too small"),
    (lambda: LinearSTLLR(4, 3, factors=[1, 2, 3]), "factors: expected 4 numbers"),
    (lambda: LinearSTLLR(4, 3, factors=[1, float("nan"), 3, 4]), "lambda_pre must be finite"),
    (lambda: LinearSTLLR(4, 3, factors="abcd"), "factors"),
    (lambda: LinearSTLLR(4, 3, psi="relu"), "psi: unknown secondary activation 'relu'"),
    (lambda: LinearSTLLR(4, 3, reset_mechanism="zero"), "reset_mechanism: unknown reset mode"),
    (lambda: Conv2dSTLLR(2, 3, 4, padding="same"), "padding='same'"),
    (lambda: SpikingDropout(1.5), "p must be in"),
    (lambda: LinearSTLLR(4, 3)(torch.rand(3, 2, 4), loss_steps=-1), "loss_steps: expected an int in \\[0, T=3\\]"),
])
def test_bad_input_gets_a_clear_error(bad, match):
    with pytest.raises((ValueError, TypeError, RuntimeError), match=match):
        bad()


def test_nan_input_propagates():
    layer = LinearSTLLR(4, 3, accumulate=True)
    x = torch.rand(2, 4)
    x[0, 0] = float("nan")
    out = layer(x)
    assert torch.isnan(out[0]).all() and not torch.isnan(out[1]).any()
    spiking = LinearSTLLR(4, 3)
    spiking(x).sum().backward()  # no crash; NaN compares false, so no spike
    assert torch.isnan(spiking.v[0]).all()


def test_spiking_dropout_mask_per_sequence():
    torch.manual_seed(0)
    drop = SpikingDropout(0.3)
    x = torch.ones(64, 50)
    a, b = drop(x), drop(x)
    assert torch.equal(a, b), "one mask for the whole sequence"
    assert set(a.unique().tolist()) == {0.0, 1.0}, "p < 0.5: plain 0/1, no rescaling"
    drop.reset_state()
    assert not torch.equal(drop(x), a), "a new mask after reset"
    drop.reset_state()
    seq = drop(torch.ones(4, 64, 50), sequence=True)
    assert all(torch.equal(seq[t], seq[0]) for t in range(4))
    drop.eval()
    assert torch.equal(drop(x), x)
    high = SpikingDropout(0.6)
    assert set(high(torch.ones(1000)).unique().tolist()) <= {0.0, 2.0}, "truncated 1/(1-p) = 2"


@pytest.mark.parametrize("psi", sorted(PSI_FUNCTIONS))
def test_bptt_surrogate_is_psi(psi):
    u = torch.randn(50, dtype=torch.float64, requires_grad=True)
    s = spike_fn(u, psi)
    assert torch.equal(s, (u > 0).double())
    s.sum().backward()
    assert_close_policy(u.grad, PSI_FUNCTIONS[psi](u.detach()))


@pytest.mark.parametrize("reset", ["soft", "hard"])
def test_bptt_lif_matches_stllr_forward(reset):
    """The BPTT LIF and the S-TLLR layer share the neuron of docs/rule.md section 1."""
    torch.manual_seed(3)
    stllr = LinearSTLLR(6, 5, normalization=False, reset_mechanism=reset, leak=1.0)
    fc = torch.nn.Linear(6, 5)
    fc.load_state_dict({"weight": stllr.weight.detach() * 1, "bias": stllr.bias.detach() * 1})
    lif = LIF(leak=1.0, reset_mechanism=reset)
    for _ in range(5):
        x = torch.rand(3, 6) * 3
        assert_close_policy(lif(fc(x)), stllr(x), reduction=6)


def test_bptt_layers_backpropagate_through_time():
    torch.manual_seed(0)
    rec = LinearRecLIF(6, 5, leak=15.0)
    readout = LeakyReadout(5, 3, leak=5.0)
    x0 = torch.rand(2, 6, requires_grad=True)
    out = readout(rec(x0 * 4))
    for _ in range(3):
        out = readout(rec(torch.rand(2, 6) * 4))
    out.sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0, "gradient reaches step 0"
    reset_states(rec)
    assert rec.s_prev is None and rec.lif.v is None
    for layer in (WSLinear(4, 3), WSConv2d(2, 3, 3)):
        assert layer.gain.shape[0] == 3
    y = WSLinear(4, 3)(torch.rand(2, 4))
    assert y.shape == (2, 3)


def test_backend_registry(monkeypatch):
    assert stllr_kernels.get_backend_name("cpu") in ("torch", "cpu")
    info = stllr_kernels.backend_info()
    assert info["devices"]["cpu"]["selected"] in ("torch", "cpu")
    with pytest.raises(stllr_kernels.BackendUnavailable, match="unknown backend 'nope'"):
        stllr_kernels.set_backend("nope")
    monkeypatch.setenv("STLLR_BACKEND", "torch")
    assert stllr_kernels.get_backend_name("cpu") == "torch"
    monkeypatch.setenv("STLLR_BACKEND", "nope")
    with pytest.raises(stllr_kernels.BackendUnavailable, match="STLLR_BACKEND"):
        LinearSTLLR(3, 2)(torch.rand(1, 3))
    monkeypatch.delenv("STLLR_BACKEND")
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        with pytest.raises(stllr_kernels.BackendUnavailable, match="triton"):
            stllr_kernels.set_backend("triton")
    with backend("torch"):
        assert stllr_kernels.backend_info()["setting"] == "torch"
    assert stllr_kernels.backend_info()["setting"] == "auto"
