"""Mixed precision (docs/precision.md, stllr_kernels.precision): every layer and the Digits, SHD and
VGG networks under torch.autocast on each backend against the `torch` backend under the same
autocast, online and time-fused; the dtypes the policy promises (outputs, states, `.grad`);
models converted with `.to(torch.bfloat16)`; and `python -m training --precision`.

The CUDA cases (bfloat16 and float16, backends cuda / triton / torch) run where a GPU exists.
"""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import training.runner as runner
from stllr_kernels.backends import unavailable_reason
from stllr_kernels.nn import (LIF, Conv2dSTLLR, LeakyReadout, LinearRecLIF, LinearRecSTLLR, LinearSTLLR, WSConv2d,
                              WSLinear, reset_states)
from stllr_kernels.nn import _Stateful
from training import checkpoint as ckpt
from training import precision as training_precision
from training.cli import parse_config
from training.engine import Trainer, make_loss
from training.models.digits import DigitsBPTT, DigitsSTLLR
from training.models.shd import SHDBPTT, SHDSTLLR
from training.models.vgg import VGGBPTT, VGGSTLLR
from training.precision import Precision

from conftest import FixedSpikes, assert_close_policy, backend, tol

pytestmark = pytest.mark.usefixtures("one_thread")

HAS_CUDA = torch.cuda.is_available()
NO_CUDA = pytest.mark.skipif(not HAS_CUDA, reason="no CUDA GPU")
# (device, autocast dtype) of the autocast cases
AUTOCASTS = [pytest.param("cpu", torch.bfloat16, id="cpu-bf16"),
             pytest.param("cuda", torch.bfloat16, id="cuda-bf16", marks=NO_CUDA),
             pytest.param("cuda", torch.float16, id="cuda-fp16", marks=NO_CUDA)]


def _target(device: str, dtype: torch.dtype, name: str):
    reason = "no CUDA GPU" if device == "cuda" and not HAS_CUDA else unavailable_reason(name, device)
    return pytest.param(device, dtype, name, id=f"{device}-{str(dtype).split('.')[-1]}-{name}",
                        marks=pytest.mark.skipif(reason is not None, reason=str(reason)))


# (device, autocast dtype, backend): each runs against the torch backend on that device. float16
# autocast runs on a CPU too (the command line offers it on CUDA only): the cpu backend's float16
# paths are checked here, the GPU's by the CUDA cases
TARGETS = ([_target("cpu", torch.bfloat16, name) for name in ("torch", "cpu", "triton")]
           + [_target("cpu", torch.float16, "cpu")]
           + [_target("cuda", dtype, name) for dtype in (torch.bfloat16, torch.float16)
              for name in ("torch", "cuda", "triton")])


# Triton's interpreter casts float32 to bfloat16 by truncation, whatever rounding is asked for (the
# GPU rounds to nearest even, as every other backend does). The recurrent step rounds its current to
# bfloat16 inside the kernel, so there the interpreter's currents may differ by an ulp, and S-TLLR
# gradients near the threshold are that sensitive (Psi is steep). In the interpreter the recurrent
# models are therefore run with currents that every rounding leaves exact: the recurrent layer
# unstandardized with weights on a grid of 1/8 and spike inputs (`exact_recurrent`), the SHD net
# with its recurrent weights' gain at 0. On a GPU the cuda-triton cases run the models as they are.
def interpreted(device: str, name: str) -> bool:
    return name == "triton" and device == "cpu"


def exact_recurrent(in_features: int, out_features: int) -> LinearRecSTLLR:
    layer = LinearRecSTLLR(in_features, out_features, leak=0.5, psi="sigmoid", normalization=False)
    with torch.no_grad():
        for p in (layer.weight, layer.weight_rec, layer.bias):
            p.copy_(torch.randint(-8, 9, p.shape) / 8)
    return layer


class Stack(nn.Module):
    """Each S-TLLR layer kind fed by the previous one's autocast output: linear -> recurrent -> readout."""

    def __init__(self, exact: bool = False):
        super().__init__()
        self.linear = LinearSTLLR(12, 9, leak=0.5)
        self.recurrent = exact_recurrent(9, 8) if exact else LinearRecSTLLR(9, 8, leak=0.5, psi="sigmoid")
        self.readout = LinearSTLLR(8, 5, leak=5.0, accumulate=True, factors=(0.0, 0.99, 0.0, 1.0))

    def forward(self, x, loss_steps=None):
        args = () if loss_steps is None else (loss_steps,)
        return self.readout(self.recurrent(self.linear(x, *args), *args), *args)


# name -> (factory, one step's input shape without batch); small: the Triton interpreter runs them
STLLR_LAYERS = {
    "linear": (lambda: LinearSTLLR(13, 6, leak=0.5, factors=(0.5, 0.8, -0.2, 1.0)), (13,)),
    "linear_hard_spike": (lambda: LinearSTLLR(11, 5, leak=0.5, psi="triangle", reset_mechanism="hard",
                                              post="spike"), (11,)),
    "recurrent": (lambda: LinearRecSTLLR(9, 7, leak=0.5, psi="sigmoid"), (9,)),
    "conv": (lambda: Conv2dSTLLR(3, 4, 3, padding=1, leak=0.0), (3, 5, 6)),
    "readout": (lambda: LinearSTLLR(10, 5, leak=5.0, accumulate=True, factors=(0.0, 0.99, 0.0, 1.0)), (10,)),
    "stack": (Stack, (12,)),
}
# what the Triton interpreter runs instead (see `interpreted`)
EXACT_LAYERS = {"recurrent": lambda: exact_recurrent(9, 7), "stack": lambda: Stack(exact=True)}
FACTORS = [0.2, 0.75, -1.0, 1.0]
# name -> (factory, one step's input shape): the networks of training.models, narrow copies
STLLR_NETS = {
    "digits": (lambda: DigitsSTLLR("LinearSpike", FACTORS, hidden=10), (64,)),
    "shd": (lambda: SHDSTLLR("LinearSpike", FACTORS, hidden=8), (700,)),
    "vgg": (lambda: active_vgg(VGGSTLLR(2, 8, 8, 10, "LinearSpike", FACTORS, "MAX", 0.0, channel_scale=1 / 64)),
            (2, 8, 8)),
}
BPTT_NETS = {
    "digits": (lambda: DigitsBPTT("LinearSpike", hidden=10), (64,)),
    "shd": (lambda: SHDBPTT(hidden=8), (700,)),
    "vgg": (lambda: VGGBPTT(2, 8, 8, 10, "LinearSpike", 0.0, channel_scale=1 / 64), (2, 8, 8)),
}


def active_vgg(model):
    """Gains of 3: at the initial ones, 8x8 inputs leave the VGG's deeper layers silent."""
    with torch.no_grad():
        for conv in model.convs:
            conv.gain.fill_(3.0)
    return model


def is_readout(module: nn.Module) -> bool:
    return isinstance(module, LeakyReadout) or (isinstance(module, LinearSTLLR) and module.accumulate)


def expected_dtype(module: nn.Module, low: torch.dtype) -> torch.dtype:
    """The policy (written out here, independently of stllr_kernels.precision): under autocast the
    readouts return their float32 membrane, every other layer the autocast dtype."""
    return torch.float32 if is_readout(module) else low


LAYER_TYPES = (LinearSTLLR, Conv2dSTLLR, LIF, WSLinear, WSConv2d, LinearRecLIF, LeakyReadout, nn.Linear, nn.Conv2d)


@contextlib.contextmanager
def output_dtypes(model: nn.Module):
    """{module name: set of dtypes it returned} over the block, for every layer of the model; the
    key "spiked" holds the set of S-TLLR spiking layers that spiked, "order" the layers in the order
    of their first call."""
    seen, handles = {"spiked": set(), "order": []}, []
    for name, module in model.named_modules():
        if isinstance(module, LAYER_TYPES):
            def hook(mod, args, out, name=name):
                if name not in seen:
                    seen["order"].append(name)
                seen.setdefault(name, set()).add(out.dtype)
                if isinstance(mod, (LinearSTLLR, Conv2dSTLLR)) and not is_readout(mod) and out.ne(0).any():
                    seen["spiked"].add(name)
            handles.append(module.register_forward_hook(hook))
    try:
        yield seen
    finally:
        for h in handles:
            h.remove()


def assert_policy_dtypes(model: nn.Module, seen: dict, low: torch.dtype) -> None:
    """Every layer returned the policy's dtype; every state except carried spikes is float32."""
    modules = dict(model.named_modules())
    seen = {k: v for k, v in seen.items() if k not in ("spiked", "order")}
    assert seen
    for name, dtypes in seen.items():
        assert dtypes == {expected_dtype(modules[name], low)}, (name, dtypes)
    for name, module in modules.items():
        if isinstance(module, _Stateful):
            for state in module._state_names:
                value = getattr(module, state)
                if value is not None and state not in ("s_prev", "mask"):
                    assert value.dtype == torch.float32, (name, state, value.dtype)


def sparse_inputs(steps, batch, shape, scale=4.0):
    """Analog inputs on a sparse support: the layer's autocast cast rounds them (spikes it would not)."""
    x = torch.rand(steps, batch, *shape) * scale
    return x * (torch.rand(steps, batch, *shape) < 0.5)


def run(model, xs, loss_steps, fused, device, low, backend_name, probe, call):
    """Reset; run the model under autocast (fused: one sequence call; online: one call per step,
    a backward per loss step, as training does), each backward outside autocast. Returns the
    outputs, dx, the gradients, the layers' output dtypes and the model run."""
    model = copy.deepcopy(model).to(device)
    xs, probe = xs.to(device).requires_grad_(), probe.to(device)
    steps = xs.shape[0]
    first = steps - loss_steps
    with backend(backend_name), output_dtypes(model) as seen:
        reset_states(model)
        if fused:
            with torch.autocast(device, dtype=low):
                out = call(model, xs, loss_steps)
            (out[first:].float() * probe[first:]).sum().backward()
            outs = out.detach()
        else:
            outs = []
            for t in range(steps):
                with torch.set_grad_enabled(t >= first), torch.autocast(device, dtype=low):
                    out = call(model, xs[t], None)
                if t >= first:
                    (out.float() * probe[t]).sum().backward()
                outs.append(out.detach())
            outs = torch.stack(outs)
    grads = {n: p.grad.cpu() for n, p in model.named_parameters() if p.grad is not None}
    return outs.cpu(), xs.grad.cpu(), grads, seen, model


def call_layer(layer, x, loss_steps):
    return layer(x) if loss_steps is None else layer(x, loss_steps)


def call_net(net, x, loss_steps):
    return net.step(x) if loss_steps is None else net.sequence(x, loss_steps)


def assert_relative_close(got, want, dtype, reduction, msg):
    """The suite's policy on values relative to the largest one (as test_training_engine does for
    weight updates): a gradient's noise scales with its size."""
    scale = want.abs().max()
    if scale > 0:
        got, want = got / scale, want / scale
    assert_close_policy(got, want, dtype, reduction, msg=msg)


def compare_with_torch_backend(model, shape, call, device, low, name, fused, steps=3, loss_steps=2, batch=3,
                               spikes=False):
    xs = sparse_inputs(steps, batch, shape)
    if spikes:
        xs = xs.ne(0).float()
    with torch.no_grad():
        out_shape = call(copy.deepcopy(model), xs[0], None).shape
    probe = torch.randn(steps, *out_shape)  # a random linear loss per step
    want = run(model, xs, loss_steps, fused, device, low, "torch", probe, call)
    got = run(model, xs, loss_steps, fused, device, low, name, probe, call)
    for result in (want, got):
        assert_policy_dtypes(result[4], result[3], low)
    (got_out, got_dx, got_grads, _, _), (want_out, want_dx, want_grads, seen, _) = got, want
    spiking = [m for m in model.modules() if isinstance(m, (LinearSTLLR, Conv2dSTLLR)) and not is_readout(m)]
    assert seen["spiked"] or not spiking, "the inputs should make the model spike"
    if want_out.dtype == low:  # spikes (or logits of spikes): the same currents on every backend
        assert torch.equal(got_out, want_out), "spikes differ from the torch backend's"
    else:
        assert_relative_close(got_out, want_out, low, 1, "output")
    assert got_dx.dtype == torch.float32, "dx comes back in the input's dtype"
    assert want_dx.abs().sum() > 0, "the loss should reach the input"
    assert want_grads.keys() == got_grads.keys() and want_grads
    modules, order = dict(model.named_modules()), seen["order"]

    def depth(layer: str) -> int:
        """The S-TLLR layers whose backward (one op each, with the dtype's rounding) the learning
        signal went through to reach `layer`, itself included."""
        later = order[order.index(layer):] if layer in order else []
        return max(1, sum(isinstance(modules[n], (LinearSTLLR, Conv2dSTLLR)) for n in later))

    assert_gradient_close(got_dx, want_dx, want_dx, low, depth(order[0]), "input gradient")
    layers = {}
    for pname in want_grads:
        layers.setdefault(pname.rpartition(".")[0], []).append(pname)
    for layer, names in layers.items():
        whole = torch.cat([want_grads[n].flatten() for n in names])
        for pname in names:
            assert got_grads[pname].dtype == torch.float32, f".grad of {pname} is in the parameter's dtype"
            assert_gradient_close(got_grads[pname], want_grads[pname], whole, low, depth(layer),
                                  f"gradient of {pname}")
    return want


def assert_gradient_close(got, want, whole, dtype, depth, msg):
    """The error's norm within the dtype's relative tolerance of the norm of the layer's whole
    gradient (`whole`: a gain's or bias's gradient sums terms of that size, and can cancel far
    below them), once per backward the signal went through (`depth`): each rounds to the low
    precision, and the Triton interpreter truncates (its errors add up rather than cancel)."""
    error, scale = (got - want).norm().item(), whole.norm().item()
    allowed = tol(dtype)["rtol"] * depth * scale
    assert error <= allowed, f"{msg}: error norm {error:.3g} > {allowed:.3g} ({depth} x rtol of {scale:.3g})"


# ----------------------------------------------------------------------------- layers under autocast

@pytest.mark.parametrize("fused", [False, True], ids=["online", "fused"])
@pytest.mark.parametrize("kind", list(STLLR_LAYERS))
@pytest.mark.parametrize("device,low,name", TARGETS)
def test_stllr_layer_under_autocast_matches_the_torch_backend(device, low, name, kind, fused):
    make, shape = STLLR_LAYERS[kind]
    exact = interpreted(device, name) and kind in EXACT_LAYERS
    model = EXACT_LAYERS[kind]() if exact else make()
    compare_with_torch_backend(model, shape, call_layer, device, low, name, fused, spikes=exact)


@pytest.mark.parametrize("kind", ["linear", "recurrent", "conv", "readout"])
@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_gradients_keep_float32_precision(name, kind):
    """The eligibility accumulation and .grad stay float32 under bf16 autocast: a gradient rounded
    to bfloat16 anywhere on its way would be representable in bfloat16 everywhere. (Triton's conv
    backward rounds dW to bf16 in its bf16 conv weight-gradient, as cuDNN's is: allowed.)"""
    if unavailable_reason(name, "cpu"):
        pytest.skip(unavailable_reason(name, "cpu"))
    make, shape = STLLR_LAYERS[kind]
    xs = sparse_inputs(3, 4, shape)
    for fused in (False, True):
        _, _, grads, _, _ = run(make(), xs, 2, fused, "cpu", torch.bfloat16, name,
                                torch.randn(3, *call_layer(make(), xs[0], None).shape), call_layer)
        weight = grads["weight"]
        assert weight.dtype == torch.float32
        assert (weight != weight.bfloat16().float()).float().mean() > 0.5, "dW was rounded to bfloat16"


@pytest.mark.parametrize("device,low", AUTOCASTS)
def test_bptt_layers_follow_the_policy(device, low):
    """LIF and LeakyReadout keep their membrane in float32 (checked against a float64 recurrence on
    the same low-precision currents and spikes); spiking layers return the autocast dtype, the
    readout float32."""
    steps, batch, theta = 4, 3, 0.6
    fc, conv = WSLinear(10, 6).to(device), WSConv2d(2, 3, 3, padding=1).to(device)
    lif, rec = LIF(threshold=theta, leak=1.0), LinearRecLIF(10, 6).to(device)
    readout = LeakyReadout(10, 4, leak=2.0).to(device)
    x = sparse_inputs(steps, batch, (10,)).to(device)
    images = sparse_inputs(steps, batch, (2, 5, 5)).to(device)
    v_lif, v_out = torch.zeros(batch, 6, dtype=torch.float64), torch.zeros(batch, 4, dtype=torch.float64)
    for t in range(steps):
        with torch.autocast(device, dtype=low):
            current = fc(x[t])
            s = lif(current)
            assert current.dtype == s.dtype == rec(x[t]).dtype == conv(images[t]).dtype == low
            out = readout(x[t])
            assert out.dtype == torch.float32
            with torch.no_grad():
                readout_current = readout.fc(x[t])
        assert lif.v.dtype == rec.lif.v.dtype == readout.v.dtype == torch.float32
        v_lif = torch.sigmoid(torch.tensor(1.0, dtype=torch.float64)) * v_lif + current.detach().double().cpu()
        v_lif = v_lif - theta * s.detach().double().cpu()
        assert_close_policy(lif.v.detach().cpu(), v_lif.float(), torch.float32, msg="LIF membrane")
        v_out = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64)) * v_out + readout_current.double().cpu()
        assert_close_policy(out.detach().cpu(), v_out.float(), torch.float32, msg="readout membrane")
    assert 0 < v_lif.gt(0).float().mean() < 1
    out.sum().backward()
    assert readout.fc.weight.grad.dtype == torch.float32


# ----------------------------------------------------------------------------- networks under autocast

@pytest.mark.parametrize("fused", [False, True], ids=["online", "fused"])
@pytest.mark.parametrize("net", list(STLLR_NETS))
@pytest.mark.parametrize("device,low,name", TARGETS)
def test_stllr_net_under_autocast_matches_the_torch_backend(device, low, name, net, fused):
    make, shape = STLLR_NETS[net]
    model = make()
    if net == "shd" and interpreted(device, name):
        with torch.no_grad():
            model.linear1.gain_rec.zero_()
    compare_with_torch_backend(model, shape, call_net, device, low, name, fused)


@pytest.mark.parametrize("net", list(BPTT_NETS))
@pytest.mark.parametrize("device,low", AUTOCASTS)
def test_bptt_net_under_autocast(device, low, net):
    """The BPTT nets (no backend involved: autograd through time) under autocast, stepped and as
    whole sequences: the policy's dtypes, float32 gradients, and both modes equal (the same ops)."""
    make, shape = BPTT_NETS[net]
    model = make().to(device)
    xs = sparse_inputs(3, 2, shape).to(device)
    probe = torch.randn(3, 2, model.num_classes, device=device)
    results = []
    for fused in (False, True):
        ran = copy.deepcopy(model)
        with output_dtypes(ran) as seen:
            reset_states(ran)
            with torch.autocast(device, dtype=low):
                out = ran.sequence(xs, 3) if fused else torch.stack([ran.step(xs[t]) for t in range(3)])
            (out.float() * probe).sum().backward()
        assert_policy_dtypes(ran, seen, low)
        grads = {n: p.grad.cpu() for n, p in ran.named_parameters() if p.grad is not None}
        assert grads and all(g.dtype == torch.float32 and g.isfinite().all() for g in grads.values())
        assert any(g.abs().sum() > 0 for g in grads.values())
        results.append((out.detach().cpu(), grads))
    (online_out, online_grads), (fused_out, fused_grads) = results
    assert torch.equal(online_out, fused_out)
    for pname, grad in fused_grads.items():
        assert_relative_close(online_grads[pname], grad, low, 1, pname)


# ----------------------------------------------------------------------------- models in bfloat16

ALL_LAYERS = {**{k: v for k, v in STLLR_LAYERS.items()},
              "lif": (lambda: nn.Sequential(WSLinear(10, 6), LIF()), (10,)),
              "ws_conv": (lambda: nn.Sequential(WSConv2d(2, 3, 3), LIF()), (2, 5, 5)),
              "recurrent_lif": (lambda: LinearRecLIF(10, 6), (10,)),
              "leaky_readout": (lambda: LeakyReadout(10, 4), (10,))}


@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_a_bfloat16_model_returns_bfloat16_from_every_layer(name):
    """`.to(torch.bfloat16)` without autocast: every layer, the readouts included, returns bfloat16;
    the states stay float32; .grad is bfloat16 (the parameters' dtype)."""
    if unavailable_reason(name, "cpu"):
        pytest.skip(unavailable_reason(name, "cpu"))
    models = [(make(), shape, call_layer) for make, shape in ALL_LAYERS.values()]
    models += [(make(), shape, call_net) for make, shape in (*STLLR_NETS.values(), *BPTT_NETS.values())]
    for model, shape, call in models:
        model = model.to(torch.bfloat16)
        xs = sparse_inputs(3, 2, shape).bfloat16()
        with backend(name), output_dtypes(model) as seen:
            for fused in (False, True):
                reset_states(model)
                if fused and not isinstance(model, (LIF, WSLinear, nn.Sequential, LinearRecLIF, LeakyReadout)):
                    out = call(model, xs, 3)
                else:
                    out = torch.stack([call(model, xs[t], None) for t in range(3)])
                assert out.dtype == torch.bfloat16, type(model).__name__
                out.float().sum().backward()
        dtypes = [d for k, d in seen.items() if k not in ("spiked", "order")]
        assert dtypes and all(d == {torch.bfloat16} for d in dtypes), (type(model).__name__, seen)
        assert all(p.grad is None or p.grad.dtype == torch.bfloat16 for p in model.parameters())
        for module in model.modules():
            if isinstance(module, _Stateful):
                for state in set(module._state_names) - {"s_prev", "mask"}:
                    value = getattr(module, state)
                    assert value is None or value.dtype == torch.float32, (type(module).__name__, state)


@pytest.mark.parametrize("name", ["torch", "cpu"])
def test_backward_inside_autocast_gives_the_same_gradients(name):
    """The Functions run their backward with autocast off: calling backward() inside the autocast
    region (against torch's advice, but common) changes nothing."""
    if unavailable_reason(name, "cpu"):
        pytest.skip(unavailable_reason(name, "cpu"))
    stack, xs = Stack(), sparse_inputs(4, 3, (12,))
    grads = []
    for inside in (False, True):
        model = copy.deepcopy(stack)
        with backend(name):
            reset_states(model)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(xs, 2)
                if inside:
                    out[2:].sum().backward()
            if not inside:
                out[2:].sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for pname, grad in grads[0].items():
        assert torch.equal(grads[1][pname], grad), pname


def test_float64_is_left_alone_by_autocast():
    layer = LinearSTLLR(4, 3).double()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.rand(2, 4, dtype=torch.float64)).dtype == torch.float64


def test_dtype_errors_say_what_to_do():
    layer = LinearSTLLR(4, 3)
    with pytest.raises(TypeError, match="outside torch.autocast"):
        layer(torch.rand(2, 4).bfloat16())
    with pytest.raises(TypeError, match="float16.*autocast"):
        layer.half()(torch.rand(2, 4).half())
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(TypeError, match="float64"):
        LinearSTLLR(4, 3)(torch.rand(2, 4, dtype=torch.float64))


# ----------------------------------------------------------------------------- --precision

def test_16_mixed_is_refused_on_cpu(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--cpu", "--precision", "16-mixed"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--precision 16-mixed needs a CUDA device" in err, err


MODES = [("digits_stllr", "stllr", "online"), ("digits_stllr", "stllr", "sequence"),
         ("digits_stllr", "stllr_online", "online"), ("digits_stllr", "bptt", "sequence"),
         ("digits_bptt", "bptt", "online"), ("digits_bptt", "bptt", "sequence")]


def cpu_16_mixed(monkeypatch):
    """16-mixed on the CPU (float16 autocast and a GradScaler work there too): lets the CPU test the
    scaler's path, which the command line keeps for CUDA."""
    monkeypatch.setattr(training_precision, "CUDA_ONLY", frozenset())


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
@pytest.mark.parametrize("arch,mode,step_mode", MODES, ids=["-".join(m) for m in MODES])
def test_every_training_mode_trains_under_precision(arch, mode, step_mode, precision, seed, monkeypatch):
    cpu_16_mixed(monkeypatch)
    config = parse_config(["--dataset", "Digits", "--arch", arch, "--training-mode", mode, "--step-mode",
                           step_mode, "--delay-ls", "3", "--precision", precision, "--lr", "0.01"])
    model, optimizer, _ = runner.setup_trial(config, torch.device("cpu"))
    policy = Precision(precision, "cpu")
    scaler = policy.make_scaler()
    assert (scaler is not None) == (precision == "16-mixed")
    trainer = Trainer(model, optimizer, make_loss("CE", 10), mode, step_mode, 3, autocast=policy.autocast,
                      scaler=scaler)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    gen = torch.Generator().manual_seed(seed)
    x, y = (torch.rand(6, 4, 64, generator=gen) < 0.3).float(), torch.randint(0, 10, (4,), generator=gen)
    low = training_precision.AUTOCAST_DTYPES[precision]
    learned = lambda: all(not torch.equal(getattr(model, k).weight, before[f"{k}.weight"])  # noqa: E731
                          for k in ("linear1", "classifier"))
    with output_dtypes(model) as seen:
        # the GradScaler skips the steps whose gradients overflow float16 while it lowers its scale
        for _ in range(16 if scaler else 1):
            pred = trainer.train_batch(x, y)
            if learned():
                break
    assert pred.dtype == torch.float32 and pred.isfinite().all() and not pred.requires_grad
    assert seen["linear1"] == {low}, seen  # the forward ran under autocast
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.isfinite().all(), name
    assert learned(), "the hidden layer or the classifier did not learn"


def run_cli(argv):
    return runner.run(parse_config(argv))


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_resume_under_precision_gives_the_uninterrupted_result(precision, tmp_path, monkeypatch):
    """A whole run, and the same run stopped after epoch 1 and resumed: the same weights, and for
    16-mixed the same GradScaler state (it is in the checkpoint)."""
    cpu_16_mixed(monkeypatch)
    monkeypatch.setattr(runner, "build_dataset", lambda args, train: FixedSpikes(16 if train else 6, int(train)))

    def flags(save, epochs, *extra):
        return ["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--val-batch-size", "6",
                "--delay-ls", "3", "--print-freq", "1", "--precision", precision, "--save-path", str(save),
                "--epochs", str(epochs), "--lr", "0.01", *extra]
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_cli(flags(whole, 2))
    run_cli(flags(part, 1))
    first = ckpt.load(str(part / ckpt.RESUME_NAME))
    assert first["flags"]["precision"] == precision
    if precision == "16-mixed":
        assert first["scaler"]["scale"] > 0 and "_growth_tracker" in first["scaler"]
    else:
        assert first["scaler"] is None
    run_cli(flags(part, 2, "--resume", str(part / ckpt.RESUME_NAME)))
    a, b = ckpt.load(str(whole / ckpt.RESUME_NAME)), ckpt.load(str(part / ckpt.RESUME_NAME))
    assert a["epoch"] == b["epoch"] == 2 and a["scaler"] == b["scaler"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"]["train_loss"] == b["history"]["train_loss"]


@pytest.mark.slow
@NO_CUDA
@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_precision_runs_on_cuda(precision, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "build_dataset", lambda args, train: FixedSpikes(16 if train else 6, int(train)))
    summary = run_cli(["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--delay-ls", "3",
                       "--precision", precision, "--device", "cuda", "--save-path", str(tmp_path), "--epochs", "1"])
    assert summary["trials"][0]["final_acc1"] is not None
