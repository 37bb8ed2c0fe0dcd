"""NaN and inf propagate, as in PyTorch (the rule: docs/non-finite.md).

A non-finite input, membrane, weight or learning signal must give non-finite spikes or outputs
(`reference.spike_of`: the spike of a NaN or +-inf membrane is NaN), so the loss is non-finite and
training's divergence guard stops the run; Psi(NaN) is NaN; a non-finite learning signal reaches
`.grad`. Each case runs on every backend (cpu, torch and triton in its interpreter here; cuda and
triton on a GPU), one step at a time (online) and as one sequence call (time-fused), and the
non-finite pattern of every output and gradient must equal the `torch` backend's, the finite values
within the suite's tolerance. Finite inputs are the conformance suite's business (test_conformance.py).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch.utils.data import Dataset, Subset

from conftest import assert_close_policy, backend
from test_conformance import TARGETS, cfg_of, resolve, scalars, target_id

from stllr_kernels import reference as R
from stllr_kernels.nn import (LIF, Conv2dSTLLR, LeakyReadout, LinearRecLIF, LinearRecSTLLR, LinearSTLLR,
                              WSConv2d, WSLinear, spike_fn)
from stllr_kernels.psi import POST_MODES, PSI_CODES, PSI_FUNCTIONS, RESET_MODES

NAN, INF = float("nan"), float("inf")
# the Triton interpreter computes u - u with numpy, which warns where u is not finite (on purpose here)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")


@pytest.fixture(params=TARGETS, ids=target_id)
def target(request):
    return resolve(*request.param)


def nonfinite_pattern(t: torch.Tensor) -> tuple:
    t = t.detach().cpu()
    return t.isnan(), t.isposinf(), t.isneginf()


def assert_same_nonfinite(got: torch.Tensor, want: torch.Tensor, dtype, reduction: int, msg: str):
    """NaN, +inf and -inf at the same places; the finite values equal within the suite's tolerance."""
    assert got.shape == want.shape and got.dtype == want.dtype, f"{msg}: {got.dtype}{tuple(got.shape)} != " \
                                                                f"{want.dtype}{tuple(want.shape)}"
    for kind, g, w in zip(("NaN", "+inf", "-inf"), nonfinite_pattern(got), nonfinite_pattern(want)):
        assert torch.equal(g, w), f"{msg}: {kind} at {int((g != w).sum())} other places than in the reference"
    finite = want.detach().cpu().isfinite()
    assert_close_policy(torch.where(finite, got.detach().cpu(), 0), torch.where(finite, want.detach().cpu(), 0),
                        dtype, reduction, msg=msg)


# ----------------------------------------------------------------------------- the ops: spike rule and Psi

MODES = [(psi, reset, post) for psi in PSI_CODES for reset in RESET_MODES for post in POST_MODES]


def currents_with_nonfinite(n: int, dtype) -> tuple:
    """Random currents [n] with NaN, +inf and -inf at spread positions (inside the vectorised body
    and in the tail of the C++ loops, in several Triton blocks); returns (currents, nan, pos, neg)."""
    current = (torch.randn(n) * 0.8).to(dtype)
    idx = torch.randperm(n)[:3 * max(1, n // 20)].view(3, -1)
    for values, value in zip(idx, (NAN, INF, -INF)):
        current[values] = value
    masks = [torch.zeros(n, dtype=torch.bool).index_fill_(0, values, True) for values in idx]
    return (current, *masks)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("mode", MODES, ids=["-".join(m) for m in MODES])
def test_lif_step_spike_rule_and_psi_of_nan(target, mode, dtype):
    """A NaN or +-inf membrane spikes NaN and leaves a NaN membrane (either reset); Psi(NaN) = NaN
    for every Psi, Psi(+-inf) = 0; finite membranes are untouched (the same as the reference)."""
    cfg = cfg_of(*mode)
    beta, theta = scalars()
    n = 1100
    current, nan, pos, neg = currents_with_nonfinite(n, dtype)
    v = torch.randn(n) * 0.5
    v[:7] = NAN  # a NaN membrane from the state: the current there is finite or not
    trpost = torch.rand(n)
    s, v_new, trpost_new, psi = (t.cpu() for t in target.ops.lif_step(*target.to(current, v, trpost, beta, theta),
                                                                        cfg))
    membrane_nan = nan.clone()
    membrane_nan[:7] = True
    diverged = membrane_nan | pos | neg
    assert s.dtype == dtype and s[diverged].isnan().all(), "a NaN or +-inf membrane must spike NaN"
    assert v_new[diverged].isnan().all(), "the membrane of a NaN spike stays NaN"
    assert psi[membrane_nan].isnan().all(), f"Psi {cfg.psi}(NaN) must be NaN"
    assert (psi[(pos | neg) & ~membrane_nan] == 0).all(), f"Psi {cfg.psi}(+-inf) is 0"
    if cfg.post == "spike":
        assert trpost_new[diverged].isnan().all()
    else:
        assert trpost_new[membrane_nan].isnan().all() and trpost_new[~membrane_nan].isfinite().all()
    assert s[~diverged].isfinite().all() and v_new[~diverged].isfinite().all()
    want = R.lif_step(current, v, trpost, beta, theta, cfg)
    # spikes equal exactly: the same u in every backend (test_conformance.py's threshold cases aside)
    assert_same_nonfinite(s.double(), want[0].double(), torch.float64, 1, "spikes")
    for name, g, w in zip(("v", "trpost", "psi"), (v_new, trpost_new, psi), want[1:]):
        assert_same_nonfinite(g, w, w.dtype, 1, name)


@pytest.mark.parametrize("psi", list(PSI_CODES))
def test_lif_sequence_nan_membrane_persists(target, psi):
    """The time-fused op: a NaN / +-inf current at step 1 makes the spikes NaN from then on, and
    the saved Psi NaN from the step after an infinite membrane (Psi(inf) = 0, then the membrane is NaN)."""
    cfg = cfg_of(psi, "soft", "psi")
    beta, theta = scalars()
    T, n = 4, 300
    currents = torch.randn(T, n) * 0.8
    _, nan, pos, neg = currents_with_nonfinite(n, torch.float32)
    currents[1, nan], currents[1, pos], currents[1, neg] = NAN, INF, -INF
    v, trpost = torch.zeros(n), torch.zeros(n)
    got = [t.cpu() for t in target.ops.lif_sequence(*target.to(currents, v, trpost, beta, theta), cfg, 1)]
    s, v_last, _, psi_saved, _ = got
    diverged = nan | pos | neg
    assert s[1:, diverged].isnan().all() and s[:1].isfinite().all() and s[:, ~diverged].isfinite().all()
    assert v_last[diverged].isnan().all()
    assert psi_saved[0, nan].isnan().all() and (psi_saved[0, pos | neg] == 0).all()
    assert psi_saved[1:, diverged].isnan().all(), "Psi(NaN) of the NaN membrane after the spike"
    want = R.lif_sequence(currents, v, trpost, beta, theta, cfg, 1)
    for name, g, w in zip(("spikes", "v", "trpost", "psi", "trpost_prev"), got, want):
        assert_same_nonfinite(g, w, w.dtype, 1, name)


@pytest.mark.parametrize("name", list(PSI_FUNCTIONS))
def test_psi_functions_and_bptt_spike_of_nonfinite(name):
    """The torch Psi table (reference and BPTT surrogate) and spike_fn, the BPTT spike."""
    u = torch.tensor([NAN, INF, -INF, 0.0, 0.25, -0.25], requires_grad=True)
    psi = PSI_FUNCTIONS[name](u.detach())
    assert psi[0].isnan() and (psi[1:3] == 0).all() and psi[3:].isfinite().all()
    s = spike_fn(u, name)
    assert s[:3].isnan().all() and s[3:].tolist() == [0.0, 1.0, 0.0]
    s.backward(torch.ones_like(s))
    assert u.grad[0].isnan() and u.grad[1:].isfinite().all(), "surrogate gradient Psi(u)"


# ----------------------------------------------------------------------------- whole S-TLLR layers

STEPS, LOSS_STEPS, FAULT_STEP = 4, 3, 1
# name -> (factory, features of one input step); LOSS_STEPS = 3 runs the recurrent layer's
# reverse-time backward in the time-fused mode (the forward-time one online)
LAYERS = {
    "linear": (lambda: LinearSTLLR(9, 7, leak=0.5), (9,)),
    "linear_hard_spike": (lambda: LinearSTLLR(9, 7, leak=0.5, psi="triangle", reset_mechanism="hard",
                                              post="spike"), (9,)),
    "recurrent": (lambda: LinearRecSTLLR(9, 7, leak=0.5, psi="sigmoid"), (9,)),
    "conv": (lambda: Conv2dSTLLR(2, 3, 3, padding=1, leak=0.0), (2, 5, 4)),
    "readout": (lambda: LinearSTLLR(9, 5, leak=5.0, accumulate=True, factors=(0.0, 0.99, 0.0, 1.0)), (9,)),
}
# Samples are independent, so one run holds several faults, one per sample: "samples" puts a NaN,
# a +inf and a -inf input element (at step FAULT_STEP) and a NaN membrane (from the start) into
# samples 0-3, sample 4 stays clean; "weights" a NaN into the first weight of output row 0 and a
# +inf into the last of the last row; "signal" a NaN learning signal (the gradient arriving at the
# output) at neuron 0 of sample 0 and a +inf one at the last neuron of sample 1.
SAMPLE_FAULTS = {0: NAN, 1: INF, 2: -INF}  # input faults by sample; sample 3: the membrane
MEMBRANE_SAMPLE, CLEAN_SAMPLE = 3, 4
FAULTS = ["samples", "weights", "signal"]


def layer_case(kind: str, fault: str):
    """A layer, its inputs [T, B, ...] and loss probe [T, B, ...] and initial membrane (or None)
    with `fault` (drawn from the test's seed: the same for every backend)."""
    make, features = LAYERS[kind]
    layer = make()
    batch = 5 if fault == "samples" else 3
    with torch.no_grad():
        layer.weight.mul_(3.0)  # spikes at some steps and not at others
        if fault == "weights":
            rows = layer.weight.flatten(1)
            rows[0, 0], rows[-1, -1] = NAN, INF
    xs = (torch.rand(STEPS, batch, *features) < 0.5).float() * 2.0
    membrane = None
    if fault == "samples":
        for sample, value in SAMPLE_FAULTS.items():
            xs[(FAULT_STEP, sample) + (0,) * len(features)] = value
    with torch.no_grad():
        out_shape = copy.deepcopy(layer)(xs[0]).shape
    probe = torch.randn(STEPS, *out_shape)
    if fault == "samples":
        membrane = torch.zeros(out_shape)
        membrane[MEMBRANE_SAMPLE].view(-1)[0] = NAN
    if fault == "signal":
        probe[STEPS - 2, 0].view(-1)[0] = NAN
        probe[STEPS - 1, 1].view(-1)[-1] = INF
    return layer, xs, probe, membrane


def run_layer(layer, xs, probe, membrane, sequence: bool, backend_name: str, device):
    """Reset, then all steps with a backward per loss step (online) or one sequence call; returns
    the outputs, the loss, the input gradient and the parameter gradients."""
    layer = copy.deepcopy(layer).to(device)
    layer.reset_state()
    if membrane is not None:
        layer.v = membrane.to(device)  # a NaN in the membrane state (as a diverged previous step leaves it)
    xs = xs.to(device).requires_grad_()
    probe = probe.to(device)
    first_loss = STEPS - LOSS_STEPS
    with backend(backend_name):
        if sequence:
            out = layer(xs, loss_steps=LOSS_STEPS)
            loss = (out[first_loss:].float() * probe[first_loss:]).sum()
            loss.backward()
            outs = out.detach()
        else:
            outs, loss = [], 0.0
            for t in range(STEPS):
                out = layer(xs[t])
                if t >= first_loss:
                    step_loss = (out.float() * probe[t]).sum()
                    step_loss.backward()
                    loss = loss + step_loss.detach()
                outs.append(out.detach())
            outs = torch.stack(outs)
    grads = {n: p.grad.cpu() for n, p in layer.named_parameters() if p.grad is not None}
    return outs.cpu(), torch.as_tensor(loss).cpu(), xs.grad.cpu(), grads


def assert_follows_the_rule(kind: str, fault: str, out, loss, dx, grads):
    """The rule, literally: each fault gives non-finite outputs (or .grad, for a learning signal)
    where it reaches, and a non-finite loss; everything it does not reach stays finite."""
    assert not loss.isfinite(), f"the loss stayed finite ({float(loss)})"
    rows = grads["weight"].flatten(1)
    if fault == "samples":
        for sample in (*SAMPLE_FAULTS, MEMBRANE_SAMPLE):
            start = 0 if sample == MEMBRANE_SAMPLE else FAULT_STEP
            steps = out[:, sample].flatten(1)
            assert steps[:start].isfinite().all(), f"sample {sample}: non-finite before its fault"
            assert (~steps[start:].isfinite()).any(1).all(), \
                f"sample {sample}: an output step after its fault stayed finite: {steps}"
        assert out[:, CLEAN_SAMPLE].isfinite().all(), "the clean sample must stay finite"
        # every S-TLLR weight gradient reads the pre trace (holding x) or Psi (NaN from the membrane)
        assert not rows.isfinite().all(), "weight.grad stayed finite"
    elif fault == "weights":
        per_neuron = out.movedim(2, 0).flatten(1)  # [N or C_out, ...]
        assert not per_neuron[0].isfinite().any(), "a NaN weight of neuron 0: all its outputs are NaN"
        assert not per_neuron[0].isfinite().all() and not per_neuron[-1].isfinite().all()
        if kind != "recurrent":  # the recurrent layer spreads a NaN spike to every neuron (W_rec)
            assert per_neuron[1:-1].isfinite().all(), "the other neurons must stay finite"
        if kind != "readout":  # the readout's dW = L^T trpre does not read W (nor does nn.Linear's)
            assert not rows[0].isfinite().all() and not rows[-1].isfinite().all()
    else:  # a non-finite learning signal: the forward untouched; weight.grad rows 0 and -1, dx
        assert out.isfinite().all()
        assert not rows[0].isfinite().all() and not rows[-1].isfinite().all(), "weight.grad stayed finite"
        assert rows[1:-1].isfinite().all(), "a learning signal reaches only its own neuron's weights"
        assert not dx[STEPS - 2, 0].isfinite().all() and not dx[STEPS - 1, 1].isfinite().all()
        if "weight_rec" in grads:
            rec = grads["weight_rec"]
            assert not rec[0].isfinite().all() and not rec[-1].isfinite().all() and rec[1:-1].isfinite().all()


_torch_runs: dict = {}  # the torch backend's run of each case, computed once for every other backend


@pytest.mark.parametrize("sequence", [False, True], ids=["online", "time_fused"])
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_propagates_nonfinite(target, kind, fault, sequence, seed):
    layer, xs, probe, membrane = layer_case(kind, fault)
    got = run_layer(layer, xs, probe, membrane, sequence, target.name, target.device)
    assert_follows_the_rule(kind, fault, *got)
    # and every backend gives the torch backend's non-finite pattern, everywhere
    key = (kind, fault, sequence, seed, str(target.device))
    if target.name == "torch":
        _torch_runs[key] = got
        return
    if key not in _torch_runs:
        _torch_runs[key] = run_layer(layer, xs, probe, membrane, sequence, "torch", target.device)
    (got_out, got_loss, got_dx, got_grads), (want_out, want_loss, want_dx, want_grads) = got, _torch_runs[key]
    if kind == "readout":
        assert_same_nonfinite(got_out, want_out, torch.float32, 9 * STEPS, "readout output")
    else:  # spikes equal exactly, NaN included (the same currents in every backend)
        assert_same_nonfinite(got_out, want_out, torch.float64, 1, "spikes")
    assert_same_nonfinite(got_loss, want_loss, torch.float32, got_out.numel(), "loss")
    assert_same_nonfinite(got_dx, want_dx, torch.float32, got_out[0].numel(), "input gradient")
    assert got_grads.keys() == want_grads.keys()
    for name in want_grads:
        assert_same_nonfinite(got_grads[name], want_grads[name], torch.float32, 2000, f"gradient of {name}")


# ----------------------------------------------------------------------------- BPTT baseline layers

class _Seq(torch.nn.Module):
    def __init__(self, *layers):
        super().__init__()
        self.layers = torch.nn.ModuleList(layers)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


BATCH, FAULT_SAMPLE = 3, 1
BPTT_NETS = {  # name -> (factory, input features); each ends in spikes or the leaky readout
    "ws_linear_lif": (lambda: _Seq(WSLinear(9, 7), LIF(leak=0.5)), (9,)),
    "ws_conv_lif": (lambda: _Seq(WSConv2d(2, 3, 3, padding=1), LIF(leak=0.0, psi="triangle")), (2, 5, 4)),
    "recurrent_lif": (lambda: LinearRecLIF(9, 7, leak=0.5, psi="sigmoid", reset_mechanism="hard"), (9,)),
    "leaky_readout": (lambda: LeakyReadout(9, 5, leak=5.0), (9,)),
}


@pytest.mark.parametrize("fault", ["nan_input", "inf_input", "neg_inf_input", "nan_weight", "nan_membrane",
                                   "nan_signal"])
@pytest.mark.parametrize("net", list(BPTT_NETS))
def test_bptt_layers_propagate_nonfinite(net, fault):
    make, features = BPTT_NETS[net]
    model = make()
    weight = next(p for n, p in model.named_parameters() if n.endswith("weight"))
    with torch.no_grad():
        weight.mul_(3.0)
        if fault == "nan_weight":
            weight.view(-1)[0] = NAN
    xs = ((torch.rand(STEPS, BATCH, *features) < 0.5).float() * 2.0).requires_grad_()
    with torch.no_grad():
        if fault.endswith("_input"):
            xs[(FAULT_STEP, FAULT_SAMPLE) + (0,) * len(features)] = {"nan": NAN, "inf": INF, "neg": -INF}[
                fault.split("_")[0]]
    outs = []
    for t in range(STEPS):
        if t == 1 and fault == "nan_membrane":  # the membrane carried from step 0 turns NaN
            stateful = [m for m in model.modules() if getattr(m, "v", None) is not None][0]
            stateful.v = stateful.v.clone()
            stateful.v[FAULT_SAMPLE].view(-1)[0] = NAN
        outs.append(model(xs[t]))
    out = torch.stack(outs)
    probe = torch.randn_like(out)
    if fault == "nan_signal":
        probe[STEPS - 1, FAULT_SAMPLE].view(-1)[0] = NAN
    loss = (out * probe).sum()
    loss.backward()
    assert not loss.isfinite()
    if net != "leaky_readout" or fault not in ("nan_weight", "nan_membrane"):  # as the S-TLLR readout
        assert not weight.grad.isfinite().all(), "the weight gradient stayed finite"
    if fault == "nan_signal":
        assert out.isfinite().all()
        return
    assert not out[:, FAULT_SAMPLE].isfinite().all()
    others = torch.cat([out[:, :FAULT_SAMPLE], out[:, FAULT_SAMPLE + 1:]], 1)
    assert others.isfinite().all() or fault == "nan_weight", "the other samples must stay finite"


# ----------------------------------------------------------------------------- training stops

class _NaNSample(Dataset):
    """`data` with one NaN in the input of sample `bad`; records the order samples are read in."""

    def __init__(self, data, bad: int):
        self.data, self.bad, self.reads = data, bad, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        x, label = self.data[i]
        self.reads.append(i)
        if i == self.bad:
            x = x.clone()
            x[3, 10] = NAN
        return x, label


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["--step-mode", "sequence"],
                                   ["--arch", "digits_bptt", "--training-mode", "bptt"]],
                         ids=["stllr-online", "stllr-sequence", "bptt"])
def test_training_with_a_nan_in_the_data_stops_at_that_batch(tmp_path, capsys, monkeypatch, extra):
    """One NaN input element: the divergence guard's one-line error names the batch that held it and
    exits with RunDiverged's status (before: finite loss, NaN weights, a dead hidden layer)."""
    import training.runner as runner
    from training.cli import main
    from training.data import DigitsSpikes
    from training.errors import RunDiverged

    train_sets = []

    def build(args, train):
        data = Subset(DigitsSpikes(train, seed=args.seed), range(40 if train else 20))
        if train:
            train_sets.append(_NaNSample(data, bad=17))
            return train_sets[-1]
        return data

    monkeypatch.setattr(runner, "build_dataset", build)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--val-batch-size", "20",
                     "--epochs", "1", "--print-freq", "100", "--cpu", "--workers", "0", "--save-path",
                     str(tmp_path), *extra])
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    lines = [line.split("\r")[-1] for line in err.split("\n") if "python -m training: error" in line]
    assert code == RunDiverged.exit_code and len(lines) == 1, (code, err[-2000:])
    batch = train_sets[0].reads.index(17) // 8 + 1
    assert f"batch {batch}/5: the loss became non-finite" in lines[0], (batch, lines[0])
    assert "Traceback" not in err
