"""Chunked time-fused calls: a sequence fed to the layers (and the training models) in chunks of C
steps, states carried, a backward per chunk holding loss steps, equals one call on the whole
sequence (outputs, states, every gradient); the `chunks` helper; the training's `--step-mode chunk`
(same weights as `sequence`, one all-reduce per optimizer step, resume, divergence guard, memory
flat in T)."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close_policy, backend
from stllr_kernels.backends import unavailable_reason
from stllr_kernels.chunks import Chunk, chunk_bounds, chunks
from stllr_kernels.nn import Conv2dSTLLR, LinearRecSTLLR, LinearSTLLR, SpikingDropout

import training.runner as runner
from training import checkpoint as ckpt
from training.cli import parse_config
from training.config import NEW_FLAGS, RunConfig
from training.engine import STEP_MODES, SavedTensorMeter, Trainer, loss_over_steps, predict, resolve_step_mode
from training.errors import FlagError
from training.models import build_model
from training.models.vgg import VGGSTLLR

BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(unavailable_reason(name, "cpu") is not None,
                                                        reason=str(unavailable_reason(name, "cpu"))))
            for name in ("torch", "cpu", "triton")]


# ----------------------------------------------------------------------------- the helper

@pytest.mark.parametrize("T,D,C", [(7, 5, 3), (6, 6, 2), (5, 1, 2), (4, 3, 1), (5, 2, 8), (9, 4, 4), (3, 0, 2),
                                   (100, 90, 10), (20, 5, 10)])
def test_chunk_bounds_cover_the_sequence_aligned_on_the_loss_window(T, D, C):
    bounds = chunk_bounds(T, D, C)
    assert bounds[0].start == 0 and bounds[-1].stop == T
    assert all(a.stop == b.start for a, b in zip(bounds, bounds[1:]))
    assert all(0 < c.stop - c.start <= C for c in bounds)
    assert T - D in [c.start for c in bounds] + [T]  # no chunk straddles the window's start
    for c in bounds:  # each chunk's loss steps: exactly its steps in the window
        assert c.loss_steps == len(set(range(c.start, c.stop)) & set(range(T - D, T)))
    # C steps per chunk from step 0, and again from the window's first step
    assert [c.start for c in bounds] == sorted(set(range(0, T - D, C)) | set(range(T - D, T, C)))
    x = torch.arange(T * 2.0).view(T, 2)
    pieces = list(chunks(x, D, C))
    assert torch.equal(torch.cat([p for p, _ in pieces]), x)
    assert [n for _, n in pieces] == [c.loss_steps for c in bounds]
    assert chunk_bounds(7, 5, 3) == [Chunk(0, 2, 0), Chunk(2, 5, 3), Chunk(5, 7, 2)]


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(4, 2), 5, 2), r"loss_steps: expected an int in \[0, 4\]"),
    ((torch.zeros(4, 2), -1, 2), r"loss_steps: expected an int in \[0, 4\]"),
    ((torch.zeros(4, 2), 2, 0), r"chunk_size: expected an int >= 1, got 0"),
    ((torch.zeros(4, 2), 2, 2.0), r"chunk_size: expected an int >= 1, got 2.0"),
    ((torch.zeros(4, 2), True, 2), r"loss_steps: .* got True"),
    ((torch.zeros(4), 1, 2), r"x: expected a sequence tensor \[T, B, ...\]"),
    (([1, 2], 1, 2), r"x: expected a sequence tensor"),
])
def test_bad_chunk_arguments_are_named_at_the_call(args, match):
    with pytest.raises(ValueError, match=match):
        chunks(*args)  # raised by the call itself, not at the first chunk


# ----------------------------------------------------------------------------- layers

def dyadic(*shape, scale=1.0):
    """Values on a grid of 2^-6: the currents of 0/1 inputs are exact sums in any order, so a chunk's
    GEMM and the whole sequence's give the same spikes; only the gradients' sums round differently."""
    return torch.randint(-64, 65, shape).float() / 64 * scale


def make_layer(kind: str):
    """(module, input feature shape); module(x, loss_steps) runs a sequence; weights on the dyadic grid."""
    rule = dict(factors=[0.6, 0.7, -0.4, 1.1], leak=0.5)
    if kind == "linear":
        layer, feat = LinearSTLLR(11, 7, psi="sigmoid", **rule), (11,)
    elif kind == "linear-spike-hard":
        layer, feat = LinearSTLLR(11, 7, psi="triangle", post="spike", reset_mechanism="hard", **rule), (11,)
    elif kind == "recurrent":
        layer, feat = LinearRecSTLLR(11, 9, psi="sigmoid", **rule), (11,)
    elif kind == "recurrent-spike":
        layer, feat = LinearRecSTLLR(11, 9, psi="triangle", post="spike", **rule), (11,)
    elif kind == "readout":
        layer, feat = LinearSTLLR(11, 7, accumulate=True, leak=5.0, factors=[0, 0.99, 0, 1]), (11,)
    elif kind == "conv":
        layer, feat = Conv2dSTLLR(3, 4, 3, stride=2, padding=1, psi="triangle", **rule), (3, 7, 7)
    else:  # "dropout": a linear layer whose input goes through a per-sequence dropout mask
        layer, feat = DroppedLinear(), (11,)
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.endswith("weight") or name.endswith("weight_rec") or name.endswith("bias"):
                p.copy_(dyadic(*p.shape, scale=2.0 if name.endswith("weight") else 1.0))
    return layer, feat


class DroppedLinear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.drop, self.linear = SpikingDropout(0.3), LinearSTLLR(11, 7, psi="sigmoid", leak=0.5)

    def reset_state(self):
        self.drop.reset_state()
        self.linear.reset_state()

    def forward(self, x, loss_steps):
        return self.linear(self.drop(x, sequence=True), loss_steps)


def states(layer) -> dict:
    found = {}
    for name, m in layer.named_modules():
        for s in getattr(m, "_state_names", ()):
            found[f"{name}.{s}"] = getattr(m, s)
    return found


def run_full(layer, x, D, g):
    """One call on the whole sequence, one backward of the loss steps' weighted sum."""
    torch.manual_seed(0)  # the dropout mask
    layer.reset_state()
    xq = x.clone().requires_grad_()
    out = layer(xq, D)
    T = x.shape[0]
    (out[T - D:] * g[T - D:]).sum().backward()
    return out.detach(), xq.grad


def straddling_chunks(x, D, C):
    """Chunks of C steps from step 0, not aligned on the loss window: a chunk may hold loss steps at
    its end only (n < its length), which the layer API allows too."""
    T = x.shape[0]
    return [(x[t:t + C], max(0, min(t + C, T) - max(t, T - D))) for t in range(0, T, C)]


def run_chunked(layer, x, D, g, C, split=chunks):
    """The same sequence in chunks of C steps: no autograd before the loss window, a backward per
    chunk that holds loss steps."""
    torch.manual_seed(0)
    layer.reset_state()
    xq = x.clone().requires_grad_()
    outs, t = [], 0
    for x_chunk, n in split(xq, D, C):
        with torch.set_grad_enabled(n > 0):
            out = layer(x_chunk, n)
        if n:
            steps = out.shape[0]
            (out[steps - n:] * g[t + steps - n:t + steps]).sum().backward()
        assert out.requires_grad == (n > 0)
        outs.append(out.detach())
        t += out.shape[0]
    return torch.cat(outs), xq.grad


KINDS = ["linear", "linear-spike-hard", "recurrent", "recurrent-spike", "readout", "conv", "dropout"]
# (T, C, D, split): C not dividing T with D across chunk boundaries (the recurrent layer's chunks of
# 3 and 2 loss steps: its reverse-time backward, traces carried in from a chunk with a loss), D = T
# in chunks of 2, D = 1 (its forward-time backward), C = 1, C >= T, a chunk before the window; and
# chunks from step 0 that straddle the window's start (a chunk with fewer loss steps than steps)
TCD = [(7, 3, 5, "aligned"), (6, 2, 6, "aligned"), (5, 2, 1, "aligned"), (4, 1, 3, "aligned"),
       (5, 8, 2, "aligned"), (9, 4, 4, "aligned"), (7, 3, 5, "straddling"), (9, 4, 6, "straddling")]
# the interpreter is slow: the cases that carry traces between chunks with losses, C = 1, C >= T
TRITON_TCD = [TCD[i] for i in (0, 1, 3, 4, 6)]
CASES = [pytest.param(name.values[0], kind, tcd, id=f"{name.values[0]}-{kind}-T{tcd[0]}C{tcd[1]}D{tcd[2]}-{tcd[3]}",
                      marks=name.marks)
         for name in BACKENDS for kind in KINDS
         for tcd in (TRITON_TCD if name.values[0] == "triton" else TCD)]


def spiking_case(kind: str, T: int, B: int, tries: int = 100):
    """make_layer(kind) and input spikes [T, B, ...] under which it spikes, but not everywhere (the
    readout: a non-zero output), so that the comparison below cannot pass on all-zero outputs. A
    random draw leaves a small layer silent over a short sequence now and then: draw again."""
    for _ in range(tries):
        layer, feat = make_layer(kind)
        x = (torch.rand(T, B, *feat) < 0.5).float()
        with torch.no_grad():
            torch.manual_seed(0)  # the dropout mask, as in the runs
            layer.reset_state()
            out = layer(x, 0)
        if 0 < out.abs().mean() and (kind == "readout" or out.mean() < 1):
            return layer, x
    raise AssertionError(f"no {kind} layer and input in {tries} draws give a spike")


@pytest.mark.parametrize("name,kind,tcd", CASES)
def test_chunked_calls_equal_one_call(seed, name, kind, tcd):
    T, C, D, split = tcd
    B = 3
    layer, x = spiking_case(kind, T, B)
    with torch.no_grad():
        g = torch.randn(layer(x, 0).shape)
    full, chunked = layer, copy.deepcopy(layer)
    with backend(name):
        out_full, dx_full = run_full(full, x, D, g)
        out_chunked, dx_chunked = run_chunked(chunked, x, D, g, C,
                                              chunks if split == "aligned" else straddling_chunks)
    # spikes and states: the same arithmetic step by step (exact currents on the dyadic grid)
    assert torch.equal(out_chunked, out_full)
    assert 0 < out_full.abs().mean() and (kind == "readout" or out_full.mean() < 1)
    for (key, a), b in zip(states(full).items(), states(chunked).values()):
        assert_close_policy(b, a, reduction=T, msg=f"state {key}")
    fan_in = max(p[0].numel() for p in full.parameters() if p.dim() >= 2)
    grads = {n: p.grad for n, p in full.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
    for (n, p) in chunked.named_parameters():
        if p.requires_grad:  # sums over the loss steps' B x fan-in products, in another order
            assert_close_policy(p.grad, grads[n], reduction=D * B * fan_in, msg=f"gradient of {n}")
    assert_close_policy(dx_chunked, dx_full, reduction=D * fan_in, msg="input gradient")
    assert float(grads[[n for n in grads if n.endswith("weight")][0]].abs().sum()) > 0


@pytest.mark.parametrize("kind", ["recurrent", "conv"])
def test_a_loss_outside_the_chunks_share_is_refused(kind):
    """A chunk run with loss_steps n keeps nothing for its earlier steps: a loss there is an error."""
    layer, feat = make_layer(kind)
    x = torch.rand(4, 2, *feat)
    out = layer(x[:2], 1)
    with pytest.raises(RuntimeError, match="loss_steps"):
        out[0].sum().backward()


# ----------------------------------------------------------------------------- training models

def small_vgg(feedback="BP"):
    """The CIFAR10-DVS VGG (dropout 0.1, AVG pooling), narrow, on 8x8 frames."""
    return VGGSTLLR(2, 8, 8, 10, "LinearSpike", [0.2, 0.5, -1, 1], "AVG", 0.1, feedback, channel_scale=1 / 16)


def model_and_input(arch, feedback, T, B, seed):
    gen = torch.Generator().manual_seed(seed)
    if arch == "small_vgg":
        return small_vgg(feedback), (torch.rand(T, B, 2, 8, 8, generator=gen) < 0.5).float()
    config = RunConfig(arch=arch, dataset={"digits_stllr": "Digits", "stllr_shd_net": "SHD"}[arch],
                       feedback_mode=feedback)
    model = build_model(config)
    return model, (torch.rand(T, B, *model.input_shape, generator=gen) < 0.3).float()


MODEL_CASES = [("digits_stllr", "BP"), ("digits_stllr", "sDFA"), ("stllr_shd_net", "BP"),
               ("stllr_shd_net", "DFA"), ("small_vgg", "BP"), ("small_vgg", "DFA")]


@pytest.mark.parametrize("split", ["aligned", "straddling"])
@pytest.mark.parametrize("arch,feedback", MODEL_CASES)
def test_models_sequence_in_chunks_equals_one_call(arch, feedback, split, seed):
    """model.sequence on chunks (states, dropout masks and DFA errors per chunk) == one call."""
    torch.manual_seed(seed)
    T, D, C, B = 7, 5, 3, 3
    model, x = model_and_input(arch, feedback, T, B, seed)
    labels = torch.arange(B) % model.num_classes
    full, chunked = model, copy.deepcopy(model)
    torch.manual_seed(1)
    full.reset_states()
    full.feedback.set_target(labels)
    out = full.sequence(x, D)
    loss_over_steps(F.cross_entropy, out[T - D:], labels).backward()
    torch.manual_seed(1)
    chunked.reset_states()
    chunked.feedback.set_target(labels)
    outs = []
    for x_chunk, n in (chunks if split == "aligned" else straddling_chunks)(x, D, C):
        with torch.set_grad_enabled(n > 0):
            o = chunked.sequence(x_chunk, n)
        if n:
            loss_over_steps(F.cross_entropy, o[o.shape[0] - n:], labels).backward()
        outs.append(o.detach())
    fan_in = max(p[0].numel() for p in model.parameters() if p.dim() >= 2)
    assert_close_policy(torch.cat(outs), out.detach(), reduction=fan_in)
    moved = 0
    for (name, a), b in zip(full.named_parameters(), chunked.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            assert_close_policy(b.grad, a.grad, reduction=D * B * fan_in, msg=name)
            moved += int(a.grad.abs().sum() > 0)
    assert moved >= 2


# ----------------------------------------------------------------------------- training

def digits_batch(seed, steps=7, size=4):
    gen = torch.Generator().manual_seed(seed)
    return ((torch.rand(steps, size, 64, generator=gen) < 0.3).float(),
            torch.randint(0, 10, (size,), generator=gen))


def train_copies(model, optimizer_fn, step_modes, batches, delay, chunk_size, loss=F.cross_entropy):
    """A float64 copy of `model` trained per step mode on the same batches (the same dropout masks)."""
    trained = {}
    for mode in step_modes:
        m = copy.deepcopy(model).double()
        trainer = Trainer(m, optimizer_fn(m.parameters()), loss, "stllr", mode, delay, chunk_size=chunk_size)
        preds = []
        for i, (x, y) in enumerate(batches):
            torch.manual_seed(100 + i)
            preds.append(trainer.train_batch(x.double(), y))
        trained[mode] = m, preds
    return trained


def assert_same_updates(model, a, b, reduction):
    """Each weight's update in `a` equals `b`'s relative to its largest element (the style of
    test_training_engine: float64, so that a wrong loss scale or missed step shows far above noise)."""
    before = dict(model.double().named_parameters())
    moved = []
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        step_a, step_b = pa - before[name], pb - before[name]
        scale = step_b.abs().max()
        if scale > 0:
            moved.append(name)
            step_a, step_b = step_a / scale, step_b / scale
        assert_close_policy(step_a, step_b, torch.float64, reduction=reduction, msg=name)
    return moved


# every model with the loss window across chunks of 3; on Digits: D = T in chunks of 2, chunks of 1,
# one chunk longer than the sequence
TRAIN_CASES = ([(arch, feedback, 5, 3) for arch, feedback in MODEL_CASES]
               + [("digits_stllr", "BP", 7, 2), ("digits_stllr", "DFA", 2, 1), ("digits_stllr", "BP", 5, 10)])


@pytest.mark.parametrize("arch,feedback,delay,chunk_size", TRAIN_CASES, ids=["-".join(map(str, c)) for c in TRAIN_CASES])
def test_chunk_mode_trains_the_weights_of_sequence_mode(arch, feedback, delay, chunk_size, seed):
    torch.manual_seed(seed)
    model, _ = model_and_input(arch, feedback, 1, 1, seed)
    batches = []
    for i in range(2):
        _, x = model_and_input(arch, feedback, 7, 3, seed + 1 + i)
        batches.append((x, torch.randint(0, model.num_classes, (3,), generator=torch.Generator().manual_seed(i))))
    trained = train_copies(model, lambda p: torch.optim.Adam(p, lr=1e-3), ("sequence", "chunk"), batches,
                           delay, chunk_size)
    (seq, seq_preds), (chunk, chunk_preds) = trained["sequence"], trained["chunk"]
    fan_in = max(p[0].numel() for p in model.parameters() if p.dim() >= 2)
    for a, b in zip(chunk_preds, seq_preds):
        assert a.shape == (3, model.num_classes) and not a.requires_grad
        assert_close_policy(a, b, torch.float64, reduction=7 * fan_in)
    moved = assert_same_updates(model, chunk, seq, reduction=7 * 3 * fan_in)
    assert len(moved) >= 2, moved


def test_chunk_mode_equals_the_online_procedure_for_sgd(seed):
    """Against the training procedure run step by step (the online mode): plain SGD, the update is the gradient."""
    torch.manual_seed(seed)
    model, _ = model_and_input("digits_stllr", "BP", 1, 1, seed)
    batches = [digits_batch(seed + i) for i in range(2)]
    trained = train_copies(model, lambda p: torch.optim.SGD(p, lr=0.5), ("online", "chunk"), batches, 5, 2)
    moved = assert_same_updates(model, trained["chunk"][0], trained["online"][0], reduction=7 * 4 * 64)
    assert any("linear1.weight" in n for n in moved) and any("classifier.weight" in n for n in moved)


def test_bptt_refuses_chunks_and_takes_auto_as_online(seed):
    torch.manual_seed(seed)
    model = build_model(RunConfig(arch="digits_bptt", dataset="Digits"))
    with pytest.raises(ValueError, match="step_mode: BPTT back-propagates through the whole sequence"):
        Trainer(model, torch.optim.SGD(model.parameters(), lr=0.5), F.cross_entropy, "bptt", "chunk", 3, chunk_size=2)
    step_mode = "auto"
    weights = {}
    for mode in ("online", step_mode):
        m = copy.deepcopy(model).double()
        trainer = Trainer(m, torch.optim.SGD(m.parameters(), lr=0.5), F.cross_entropy, "bptt", mode, 3, chunk_size=2)
        for i in range(2):
            x, y = digits_batch(seed + i)
            trainer.train_batch(x.double(), y)
        weights[mode] = m
    for (name, a), b in zip(weights["online"].named_parameters(), weights[step_mode].parameters()):
        assert_close_policy(b, a, reduction=7 * 4 * 64, msg=name)


def test_auto_step_mode_and_the_flags():
    assert resolve_step_mode("stllr", "auto") == "chunk"
    assert resolve_step_mode("stllr_online", "auto") == "online"
    assert resolve_step_mode("bptt", "auto") == "online"
    assert resolve_step_mode("stllr", "sequence") == "sequence"
    with pytest.raises(ValueError, match="step_mode: expected one of"):
        resolve_step_mode("stllr", "chunks")
    table = dict(NEW_FLAGS)
    assert tuple(table["--step-mode"]["choices"]) == STEP_MODES and table["--step-mode"]["default"] == "auto"
    assert isinstance(table["--chunk-size"]["default"], int) and table["--chunk-size"]["default"] >= 1
    config = parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--step-mode", "chunk",
                           "--chunk-size", "4"])
    assert (config.step_mode, config.chunk_size) == ("chunk", 4)
    good = RunConfig(dataset="Digits", arch="digits_stllr")
    for changes, match in ((dict(chunk_size=0), "--chunk-size must be >= 1, got 0"),
                           (dict(training_mode="stllr_online", step_mode="chunk"), "needs --step-mode online"),
                           (dict(arch="digits_bptt", training_mode="bptt", step_mode="chunk"),
                            "bptt back-propagates through the whole sequence")):
        with pytest.raises(FlagError, match=match):
            RunConfig(**{**good.__dict__, **changes}).validate()
    RunConfig(**{**good.__dict__, "training_mode": "stllr_online"}).validate()  # auto: online
    for step_mode in ("auto", "online", "sequence"):
        RunConfig(**{**good.__dict__, "arch": "digits_bptt", "training_mode": "bptt", "step_mode": step_mode}).validate()


def test_evaluation_in_chunks_equals_one_call(seed):
    torch.manual_seed(seed)
    model, x = model_and_input("stllr_shd_net", "BP", 9, 2, seed)
    whole = predict(model, x, "sequence")
    for mode, size in (("chunk", 4), ("chunk", 1), ("chunk", None), ("online", None)):
        assert_close_policy(predict(model, x, mode, size), whole, reduction=9 * 700, msg=f"{mode} {size}")


def test_chunk_mode_memory_is_flat_in_time(seed):
    """What autograd holds for backward at once is one chunk's: the same at T = 20 and T = 80."""
    torch.manual_seed(seed)
    model = build_model(RunConfig(arch="stllr_shd_net", dataset="SHD"))

    def saved_peak(T, mode):
        x = (torch.rand(T, 4, 700) < 0.05).float()
        meter = SavedTensorMeter()
        trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.0), F.cross_entropy, "stllr", mode,
                          delay_ls=T - 5, chunk_size=5)
        trainer.meter = meter
        with meter.measure():
            trainer.train_batch(x, torch.zeros(4, dtype=torch.long))
        return meter.peak

    assert saved_peak(80, "chunk") == saved_peak(20, "chunk") > 0
    assert saved_peak(80, "sequence") > 3 * saved_peak(20, "chunk")


def test_carried_states_do_not_hold_the_chunk():
    """After a chunk, the states are one step's tensors: the chunk's outputs can be freed."""
    layer = LinearRecSTLLR(11, 9)
    s = layer(torch.rand(6, 3, 11), 6)
    for name in layer._state_names:
        state = getattr(layer, name)
        assert state.untyped_storage().nbytes() == state.numel() * state.element_size(), name
    assert s.untyped_storage().nbytes() == s.numel() * s.element_size()


# ----------------------------------------------------------------------------- the command

def run_cli(argv):
    return runner.run(parse_config(argv))


def cli_flags(save, *extra):
    return ["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--val-batch-size", "5",
            "--save-path", str(save), "--delay-ls", "3", "--print-freq", "1", "--step-mode", "chunk",
            "--chunk-size", "2", *extra]


@pytest.fixture
def tiny_digits(monkeypatch):
    """24 training and 10 test samples of the Digits set (unequal lengths padded by the loader)."""
    real = runner.build_dataset

    def small(args, train):
        data = real(args, train)
        return torch.utils.data.Subset(data, range(24 if train else 10))
    monkeypatch.setattr(runner, "build_dataset", small)


@pytest.mark.slow
def test_chunk_mode_resumes_exactly(tmp_path, tiny_digits):
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_cli(cli_flags(whole, "--epochs", "2"))
    run_cli(cli_flags(part, "--epochs", "1"))
    summary = run_cli(cli_flags(part, "--epochs", "2", "--resume", str(part / ckpt.RESUME_NAME)))
    assert summary["step_mode"] == "chunk" and summary["chunk_size"] == 2
    a, b = ckpt.load(str(whole / ckpt.RESUME_NAME)), ckpt.load(str(part / ckpt.RESUME_NAME))
    assert a["epoch"] == b["epoch"] == 2
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"]["val_acc"] == b["history"]["val_acc"]


@pytest.mark.slow
def test_step_mode_and_chunk_size_may_change_on_resume(tmp_path, tiny_digits):
    """They change speed and memory, not the gradients: --resume accepts them like --backend."""
    run_cli(cli_flags(tmp_path, "--epochs", "1"))
    argv = cli_flags(tmp_path, "--epochs", "2", "--resume", str(tmp_path / ckpt.RESUME_NAME))
    argv[argv.index("--chunk-size") + 1] = "3"
    argv[argv.index("--step-mode") + 1] = "sequence"
    assert run_cli(argv)["step_mode"] == "sequence"


CUDA_BACKENDS = [pytest.param(name, marks=pytest.mark.skipif(
    not torch.cuda.is_available() or unavailable_reason(name, "cuda") is not None, reason="no CUDA device"))
    for name in ("torch", "cuda", "triton")]


@pytest.mark.parametrize("name", CUDA_BACKENDS)
@pytest.mark.parametrize("kind", ["recurrent", "readout", "conv"])
@pytest.mark.parametrize("split", ["aligned", "straddling"])
def test_chunked_calls_on_cuda(seed, name, kind, split):
    """Where a GPU exists (the GPU check): chunks on CUDA equal one call, on each CUDA backend."""
    T, C, D = 9, 4, 6
    layer, feat = make_layer(kind)
    layer = layer.cuda()
    x = (torch.rand(T, 3, *feat) < 0.5).float().cuda()
    with torch.no_grad():
        g = torch.randn(layer(x, 0).shape, device="cuda")
    chunked = copy.deepcopy(layer)
    with backend(name):
        out_full, dx_full = run_full(layer, x, D, g)
        out_chunked, dx_chunked = run_chunked(chunked, x, D, g, C, chunks if split == "aligned" else straddling_chunks)
    assert torch.equal(out_chunked, out_full)
    fan_in = max(p[0].numel() for p in layer.parameters() if p.dim() >= 2)
    for (n, a), b in zip(layer.named_parameters(), chunked.parameters()):
        if a.requires_grad:
            assert_close_policy(b.grad, a.grad, reduction=D * 3 * fan_in, msg=n)
    assert_close_policy(dx_chunked, dx_full, reduction=D * fan_in, msg="input gradient")
