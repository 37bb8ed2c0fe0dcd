"""No stale value, ever: what the layers cache (beta, theta, the standardized weight W_hat and what
its backward needs) is rebuilt from the parameters' current values.

The rule (stllr_kernels.nn `_STLLRMixin._cached`, docs/compile.md):
- after reset_state() (or reset_states(model)) every cached value is rebuilt, whatever changed the
  parameters: `.data` edits, `.data = ...`, load_state_dict, an optimizer step, copy_ under no_grad,
  `.to()`. Each case here gives exactly the result of a fresh layer holding the same parameters, and
  differs from the result before the change (so the change mattered);
- inside a sequence, a change autograd sees (a version counter bump: an optimizer step, copy_ under
  no_grad) is used from the next step on; an edit through `.data` (no version bump) of a parameter
  the layer derives a cached value from (leak, threshold, a standardized weight or its gain) is used
  from the next reset_state() on, while parameters the steps read as they are (bias, the readout's
  weight, a weight without standardization) are read at every step.

Every case runs online (one call per step) and time-fused (the sequence in one call, or in two
chunks when the change falls inside it), on every backend that runs here.
"""
from __future__ import annotations

import copy

import pytest
import torch

from stllr_kernels import backends
from stllr_kernels.nn import (LIF, Conv2dSTLLR, LeakyReadout, LinearRecLIF, LinearRecSTLLR, LinearSTLLR, WSConv2d,
                              WSLinear, reset_states)

from conftest import assert_close_policy, backend, target_id

# (backend, device type): every case on every compiled backend and the reference; Triton's CPU
# interpreter (slow) on a few cases of each test: what is cached lives in the layers, not the backends
TARGETS = [("torch", "cpu"), ("cpu", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]
INTERPRETED = ("triton", "cpu")
T, B = 5, 3
# kind -> (layer factory, input features)
KINDS = {
    "linear": (lambda: LinearSTLLR(6, 5), (6,)),
    "readout": (lambda: LinearSTLLR(6, 5, accumulate=True), (6,)),
    "recurrent": (lambda: LinearRecSTLLR(6, 5), (6,)),
    "conv": (lambda: Conv2dSTLLR(2, 3, 3, padding=1), (2, 4, 4)),
}


def grid(cases, interpreted_cases):
    """pytest params (target, *case): every case on TARGETS, `interpreted_cases` also on Triton's
    CPU interpreter."""
    return [pytest.param(t, *c, id="-".join([target_id(t), *map(str, c)]))
            for t, cs in [(t, cases) for t in TARGETS] + [(INTERPRETED, interpreted_cases)] for c in cs]


def spikes(features, device, dtype=torch.float32):
    return (torch.rand(T, B, *features) < 0.5).to(device=device, dtype=dtype)


SPLIT = 2  # a change inside a sequence falls between step SPLIT - 1 and step SPLIT


def spiking_input(layer, features, device, tries=100):
    """Input spikes under which a spiking layer spikes at some step from SPLIT to T - 2: after a
    change at SPLIT (or at the start) that spike, or its reset, and the recurrent current it sends
    to the next step all feel any change of a parameter (the threshold included, which a silent
    layer ignores), so the outputs, the final membrane or the gradients change. (Random draws leave
    a small layer silent over those steps now and then.) The readout, which does not spike, takes
    the first draw."""
    if getattr(layer, "accumulate", False):
        return spikes(features, device)
    probe = copy.deepcopy(layer)
    for _ in range(tries):
        x = spikes(features, device)
        with torch.no_grad():
            probe.reset_state()
            if probe(x, loss_steps=0)[SPLIT:-1].any():
                return x
    raise AssertionError(f"no input in {tries} draws makes {type(layer).__name__} spike")


def probe_like(out: torch.Tensor, t: int) -> torch.Tensor:
    """Fixed loss weights, different at each element and step: every gradient is non-trivial."""
    return torch.linspace(-1.0, 2.0, out.numel(), device=out.device, dtype=out.dtype).view_as(out) + t


def run(layer, x, mode):
    """reset_state(), then the whole sequence: its outputs, and the parameters' gradients of
    sum_t sum(out[t] * probe) (online: one backward per step; time-fused: one call, one backward).
    The gradients are returned and cleared."""
    layer.reset_state()
    if mode == "online":
        outs = []
        for t in range(x.shape[0]):
            out = layer(x[t])
            (out * probe_like(out, t)).sum().backward()
            outs.append(out.detach())
        out = torch.stack(outs)
    else:
        out = layer(x, loss_steps=x.shape[0])
        (out * torch.stack([probe_like(out[t], t) for t in range(x.shape[0])])).sum().backward()
        out = out.detach()
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad(set_to_none=True)
    return out, grads


def fresh_like(make, layer):
    """A layer that never ran, holding `layer`'s parameters (on its device, in its dtype)."""
    p = next(layer.parameters())
    fresh = make().to(device=p.device, dtype=p.dtype)
    fresh.load_state_dict(layer.state_dict())
    return fresh


def differs(a, b) -> bool:
    """Two runs differ: in their outputs or in a gradient."""
    (out_a, grads_a), (out_b, grads_b) = a, b
    return not torch.equal(out_a, out_b) or any(not torch.equal(grads_a[n], grads_b[n]) for n in grads_a)


def assert_same_run(got, want, msg):
    (out_a, grads_a), (out_b, grads_b) = got, want
    assert torch.equal(out_a, out_b), f"{msg}: outputs differ from a fresh layer's"
    assert grads_a.keys() == grads_b.keys(), msg
    for name in grads_a:
        assert_close_policy(grads_a[name], grads_b[name], msg=f"{msg}: grad {name}")


def _all_params(layer, fn):
    with torch.no_grad():
        for p in layer.parameters():
            fn(p)


def _sgd_step(layer):
    """An optimizer step on every parameter (leak and threshold included) with fixed gradients."""
    params = list(layer.parameters())
    for i, p in enumerate(params):
        p.grad = torch.full_like(p, 0.3 * (-1) ** i)
    torch.optim.SGD(params, lr=1.0).step()
    layer.zero_grad(set_to_none=True)


# name -> (change applied to the layer, kinds it applies to); each changes the layer's output
CHANGES = {
    "threshold.data": (lambda m: m.threshold.data.fill_(1.4), ("linear", "recurrent", "conv")),
    "leak.data": (lambda m: m.leak.data.fill_(-1.5), tuple(KINDS)),
    "weight.data": (lambda m: m.weight.data.mul_(-1.0), tuple(KINDS)),
    "weight_rec.data": (lambda m: m.weight_rec.data.mul_(-1.0), ("recurrent",)),
    "gain.data": (lambda m: m.gain.data.mul_(3.0), ("linear", "recurrent", "conv")),
    "data = new tensor": (lambda m: setattr(m.weight, "data", m.weight.data.flip(0).clone()), tuple(KINDS)),
    "load_state_dict": (lambda m: m.load_state_dict(_shifted_state(m)), tuple(KINDS)),
    "optimizer step": (_sgd_step, tuple(KINDS)),
    "copy_ under no_grad": (lambda m: _all_params(m, lambda p: p.copy_(p * -1.5 + 0.25)), tuple(KINDS)),
    "double()": (lambda m: m.double(), tuple(KINDS)),
}


def _shifted_state(layer):
    return {k: -v + 0.2 for k, v in layer.state_dict().items()}


CASES = [(kind, change) for change, (_, kinds) in CHANGES.items() for kind in kinds]
INTERPRETED_CASES = [("recurrent", "threshold.data"), ("conv", "weight.data"), ("readout", "leak.data"),
                     ("linear", "load_state_dict")]


@pytest.mark.parametrize("mode", ["online", "time-fused"])
@pytest.mark.parametrize("target,kind,change", grid(CASES, INTERPRETED_CASES), indirect=["target"])
def test_reset_state_rebuilds_every_cached_value(target, kind, change, mode):
    make, features = KINDS[kind]
    layer = make().to(target)
    x = spiking_input(layer, features, target)
    before = run(layer, x, mode)  # fills the caches
    CHANGES[change][0](layer)
    if change == "double()":  # the values stay (spikes equal); every cached tensor must be float64
        x = x.double()
    got = run(layer, x, mode)  # run() starts with reset_state()
    if change != "double()":
        assert differs(got, before), "the change must matter (else this test proves nothing)"
    assert_same_run(got, run(fresh_like(make, layer), x, mode), f"{kind}, {change}, {mode}")


@pytest.mark.parametrize("mode", ["online", "time-fused"])
@pytest.mark.parametrize("target", grid([()], []), indirect=True)
def test_reset_states_of_a_model_rebuilds_every_layer(target, mode):
    """reset_states(model) on a network: threshold and leak edited through .data in every layer."""
    def make():
        return torch.nn.Sequential(LinearRecSTLLR(6, 8), LinearSTLLR(8, 7), LinearSTLLR(7, 4, accumulate=True))

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = make()

        def forward(self, x, loss_steps=None):
            for layer in self.layers:
                x = layer(x) if loss_steps is None else layer(x, loss_steps)
            return x

        def reset_state(self):
            reset_states(self)

    net = Net().to(target)
    x = spikes((6,), target)
    before = run(net, x, mode)
    for layer in net.layers:
        layer.leak.data.fill_(0.5)
        if not layer.accumulate:
            layer.threshold.data.fill_(0.9)
    got = run(net, x, mode)
    assert not torch.equal(got[0], before[0])
    fresh = Net().to(target)
    fresh.load_state_dict(net.state_dict())
    assert_same_run(got, run(fresh, x, mode), f"model, {mode}")


# ----------------------------------------------------------------------------- inside a sequence

def states_of(layer) -> dict:
    return {name: getattr(layer, name) for name in layer._state_names}


def continue_from(layer, states, x, mode):
    """The rest of a sequence from `states` (no reset): its outputs, then the final membrane (which
    shows a change of beta, theta or W_hat even where no spike flips), flat."""
    for name, value in states.items():
        setattr(layer, name, None if value is None else value.clone())
    with torch.no_grad():
        if mode == "online":
            out = torch.stack([layer(x[t]) for t in range(x.shape[0])])
        else:
            out = layer(x, loss_steps=0)
    return torch.cat([out.flatten(), layer.v.flatten()])


@pytest.mark.parametrize("mode", ["online", "time-fused"])
@pytest.mark.parametrize("target,kind,change", grid(
    [("linear", "threshold"), ("recurrent", "leak"), ("conv", "weight"), ("recurrent", "gain_rec"),
     ("readout", "leak")], [("recurrent", "threshold")]), indirect=["target"])
def test_a_data_edit_inside_a_sequence_is_used_from_the_next_reset(target, kind, change, mode):
    """A cached value's parameter edited through .data mid-sequence: the rest of the sequence runs
    as if unedited; after reset_state() the layer is a fresh layer with the edited parameters."""
    make, features = KINDS[kind]
    layer = make().to(target)
    untouched = copy.deepcopy(layer)
    x = spiking_input(layer, features, target)
    first = continue_from(layer, {n: None for n in layer._state_names}, x[:SPLIT], mode)
    states = states_of(layer)
    param = getattr(layer, change)
    param.data.add_(delta(change, param))
    rest = continue_from(layer, states, x[SPLIT:], mode)
    first_untouched = continue_from(untouched, {n: None for n in layer._state_names}, x[:SPLIT], mode)
    assert torch.equal(first, first_untouched)
    assert torch.equal(rest, continue_from(untouched, states_of(untouched), x[SPLIT:], mode)), \
        "inside the sequence the edit through .data is not used yet"
    assert differs(run(layer, x, mode), run(untouched, x, mode)), "the edit must matter"
    assert_same_run(run(layer, x, mode), run(fresh_like(make, layer), x, mode), f"after reset, {mode}")


def delta(name: str, p: torch.Tensor) -> torch.Tensor:
    """A change that matters: the threshold up by 1, the leak down by 4 (beta 0.88 -> 0.12), a
    weight or gain plus a ramp (standardization undoes a constant shift or scale)."""
    if name in ("threshold", "leak"):
        return torch.full_like(p, 1.0 if name == "threshold" else -4.0)
    return torch.linspace(-2.0, 2.0, p.numel(), device=p.device, dtype=p.dtype).view_as(p)


def _copy_under_no_grad(name, p):
    with torch.no_grad():
        p.copy_(p + delta(name, p))


def _optimizer_step(name, p):
    p.grad = -delta(name, p)
    torch.optim.SGD([p], lr=1.0).step()
    p.grad = None


@pytest.mark.parametrize("mode", ["online", "time-fused"])
@pytest.mark.parametrize("how", ["copy_ under no_grad", "optimizer step"])
@pytest.mark.parametrize("target,kind,change", grid(
    [("linear", "threshold"), ("recurrent", "leak"), ("conv", "weight"), ("recurrent", "weight_rec"),
     ("readout", "leak"), ("linear", "gain")], [("recurrent", "weight_rec")]), indirect=["target"])
def test_a_change_autograd_sees_inside_a_sequence_is_used_at_the_next_step(target, kind, change, how, mode):
    """What follows the change equals a fresh layer holding the changed parameters, continuing from
    the same states."""
    make, features = KINDS[kind]
    layer = make().to(target)
    x = spiking_input(layer, features, target)
    continue_from(layer, {n: None for n in layer._state_names}, x[:SPLIT], mode)
    states = states_of(layer)
    before_change = copy.deepcopy(layer)
    (_copy_under_no_grad if how == "copy_ under no_grad" else _optimizer_step)(change, getattr(layer, change))
    rest = continue_from(layer, states, x[SPLIT:], mode)
    assert torch.equal(rest, continue_from(fresh_like(make, layer), states, x[SPLIT:], mode))
    assert not torch.equal(rest, continue_from(before_change, states, x[SPLIT:], mode)), "the change must matter"


@pytest.mark.parametrize("mode", ["online", "time-fused"])
@pytest.mark.parametrize("target,kind,change", grid(
    [("linear", "bias"), ("readout", "weight"), ("unnormalized", "weight")], [("readout", "weight")]),
    indirect=["target"])
def test_a_data_edit_of_a_parameter_read_as_is_is_used_at_the_next_step(target, kind, change, mode):
    """bias, the readout's weight and a weight without standardization are not cached: an edit
    through .data inside a sequence is used from the next step, as a visible change would be."""
    make = (lambda: LinearSTLLR(6, 5, normalization=False)) if kind == "unnormalized" else KINDS[kind][0]
    layer = make().to(target)
    x = spikes((6,), target)
    continue_from(layer, {n: None for n in layer._state_names}, x[:SPLIT], mode)
    states = states_of(layer)
    before = continue_from(copy.deepcopy(layer), states, x[SPLIT:], mode)
    param = getattr(layer, change)
    param.data.add_(delta(change, param))
    rest = continue_from(layer, states, x[SPLIT:], mode)
    assert not torch.equal(rest, before), "the edit must matter"
    assert torch.equal(rest, continue_from(fresh_like(make, layer), states, x[SPLIT:], mode))


# ----------------------------------------------------------------------------- the BPTT layers

BPTT_KINDS = {
    "LIF": (lambda: torch.nn.Sequential(WSLinear(6, 5), LIF()), (6,)),
    "LinearRecLIF": (lambda: LinearRecLIF(6, 5), (6,)),
    "LeakyReadout": (lambda: LeakyReadout(6, 5), (6,)),
    "WSConv2d": (lambda: torch.nn.Sequential(WSConv2d(2, 3, 3, padding=1), LIF()), (2, 4, 4)),
}


@pytest.mark.parametrize("kind", BPTT_KINDS)
def test_bptt_layers_read_their_parameters_at_every_step(kind):
    """The BPTT layers cache nothing: .data edits (leak, threshold, weights, gains) are used at once."""
    make, features = BPTT_KINDS[kind]
    model = make()
    x = spikes(features, "cpu")

    def outputs(m):
        reset_states(m)
        return torch.stack([m(x[t]) for t in range(T)]).detach()

    before = outputs(model)
    for name, p in model.named_parameters():
        p.data.copy_(-p.data if "weight" in name else p.data * 0.5 + 0.1)
    got = outputs(model)
    assert not torch.equal(got, before)
    fresh = make()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(got, outputs(fresh))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind", KINDS)
def test_moving_to_another_device_rebuilds_every_cached_value(kind):
    """.to('cuda') after a sequence on the CPU: the cached values follow (the automatic backends)."""
    make, features = KINDS[kind]
    layer = make()
    x = spikes(features, "cpu")
    run(layer, x, "online")
    layer.to("cuda")
    got = run(layer, x.cuda(), "online")
    assert_same_run(got, run(fresh_like(make, layer), x.cuda(), "online"), kind)


@pytest.mark.parametrize("mode", ["online", "time-fused"])
def test_the_cached_values_cost_a_few_ops_per_sequence_and_none_per_step(mode):
    """Rebuilt at every reset_state(): beta (sigmoid), theta (clamp) and each W_hat (a mean, a sum
    of squares and one sqrt) once per sequence whatever its length, and no host synchronization."""
    from benchmarks.launches import OpCounter
    if backends.unavailable_reason("cpu", "cpu") is not None:
        pytest.skip(backends.unavailable_reason("cpu", "cpu"))

    class Net(torch.nn.Module):  # the SHD network's layers: recurrent, then the readout
        def __init__(self):
            super().__init__()
            self.hidden, self.readout = LinearRecSTLLR(6, 8), LinearSTLLR(8, 4, accumulate=True)

        def forward(self, x, loss_steps=None):
            if loss_steps is None:
                return self.readout(self.hidden(x))
            return self.readout(self.hidden(x, loss_steps), loss_steps)

        def reset_state(self):
            reset_states(self)

    net = Net()
    counts = []
    with backend("cpu"):
        for steps in (4, 8):
            x = spikes((6,), "cpu")[:1].expand(steps, -1, -1).contiguous()
            run(net, x, mode)  # warm-up
            counter = OpCounter()
            with counter:
                run(net, x, mode)
            counts.append(counter)
    for counter in counts:
        assert counter.host_syncs == 0
        assert (counter.ops["aten::sigmoid"], counter.ops["aten::clamp"], counter.ops["aten::sqrt"]) == (2, 1, 2)
    per_step = {op: (counts[1].ops[op] - counts[0].ops[op]) / 4 for op in counts[1].ops}
    assert all(per_step.get(op, 0) == 0 for op in ("aten::sigmoid", "aten::clamp", "aten::mean", "aten::sqrt"))
