"""torch.compile(fullgraph=True) on every layer and on the training models: one graph per call, no
graph break, no recompile per new loss_steps or batch size (after the one of automatic dynamic
shapes), the gradients of eager mode, the first call of a fresh process, `--compile`, and on CUDA
the CUDA graphs of mode="reduce-overhead".

Most tests compile with the cheap backends: "eager" (dynamo's graph only, run by the eager ops)
and "aot_eager" (also AOTAutograd's forward and backward graphs); the inductor test is marked slow
(it compiles C++ on the CPU). Backends: cpu (torch.ops.stllr.* with fake kernels), torch (the
reference: plain torch, whose time loop is unrolled in the graph) and triton (its ops are the custom
ops torch.ops.stllr_triton.*; on a CPU they run in Triton's interpreter).
"""
from __future__ import annotations

import copy
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing

from stllr_kernels import backends
from stllr_kernels.nn import (LIF, Conv2dSTLLR, LeakyReadout, LinearRecLIF, LinearRecSTLLR, LinearSTLLR, WSConv2d,
                              WSLinear, reset_states)

from conftest import FixedSpikes, assert_close_policy, backend, target_id

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# (backend, device type); torch unrolls its time loop (no dynamic T); CUDA runs where there is one
TARGETS = [("cpu", "cpu"), ("torch", "cpu"), ("triton", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]
# kind -> (layer factory, input features, S-TLLR: has a time-fused sequence mode)
LAYERS = {
    "LinearSTLLR": (lambda: LinearSTLLR(7, 5), (7,), True),
    "readout": (lambda: LinearSTLLR(7, 5, accumulate=True), (7,), True),
    "LinearRecSTLLR": (lambda: LinearRecSTLLR(7, 5), (7,), True),
    "Conv2dSTLLR": (lambda: Conv2dSTLLR(2, 3, 3, padding=1), (2, 5, 5), True),
    "LIF": (lambda: LIF(), (5,), False),
    "WSLinear": (lambda: WSLinear(7, 5), (7,), False),
    "WSConv2d": (lambda: WSConv2d(2, 3, 3, padding=1), (2, 5, 5), False),
    "LinearRecLIF": (lambda: LinearRecLIF(7, 5), (7,), False),
    "LeakyReadout": (lambda: LeakyReadout(7, 5), (7,), False),
}
STLLR = [k for k, (_, _, seq) in LAYERS.items() if seq]
BPTT = [k for k, (_, _, seq) in LAYERS.items() if not seq]


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts from empty compile caches: every layer class shares its forward's code
    object, whose recompile limit the tests would otherwise share."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def on(targets=TARGETS):
    return pytest.mark.parametrize("target", targets, ids=target_id, indirect=True)


def skip_unless_bptt_target(device, stllr: bool) -> None:
    """A BPTT layer or model calls no backend: it runs once per device (with the cpu / cuda backend)."""
    if not stllr and backends.get_backend_name(device.type) != device.type:
        pytest.skip(f"BPTT: calls no backend, checked with the {device.type} backend")


def make_input(kind, shape, device, requires_grad=False):
    """Spikes for the layers, a real-valued current for the LIF neuron."""
    x = torch.randn(shape) if kind == "LIF" else (torch.rand(shape) < 0.4).float()
    return x.to(device).requires_grad_(requires_grad)


def step_through(layer, x, loss_from):
    """Online: one call per step; a backward of sum(out * (t + 1)) at each step t >= loss_from."""
    reset_states(layer)
    outs = []
    for t in range(x.shape[0]):
        with torch.set_grad_enabled(t >= loss_from):
            out = layer(x[t])
            if t >= loss_from:
                (out * (t + 1)).sum().backward(retain_graph=True)  # BPTT layers keep the graph
        outs.append(out.detach())
    return torch.stack(outs)


def fused(layer, x, loss_steps):
    """Time-fused: the sequence in one call, one backward over its last loss_steps steps."""
    reset_states(layer)
    out = layer(x, loss_steps=loss_steps)
    T = x.shape[0]
    weights = torch.arange(1, T + 1, device=x.device, dtype=out.dtype).view(-1, *[1] * (out.dim() - 1))
    (out * weights)[T - loss_steps:].sum().backward()
    return out.detach()


def grads_of(layer, x):
    grads = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    if x.grad is not None:
        grads["x"] = x.grad.clone()
        x.grad = None
    layer.zero_grad(set_to_none=True)
    return grads


def assert_same(got, want, reduction, msg):
    (out_a, grads_a), (out_b, grads_b) = got, want
    assert_close_policy(out_a, out_b, reduction=reduction, msg=f"{msg}: outputs")
    assert grads_a.keys() == grads_b.keys() and grads_a, msg
    for name in grads_a:
        assert_close_policy(grads_a[name], grads_b[name], reduction=reduction, msg=f"{msg}: grad {name}")


# ----------------------------------------------------------------------------- the layers

@on([t for t in TARGETS if t != ("triton", "cpu")])
@pytest.mark.parametrize("kind", LAYERS)
def test_a_layer_traces_into_one_graph_after_eager_calls(target, kind):
    """explain: one graph, no break, for a step and for a sequence, after eager calls filled the
    layer's caches (the cache lookup was a data pointer comparison, which dynamo cannot trace).
    (Triton's interpreter: the fullgraph compiles below trace the same calls.)"""
    make, features, stllr = LAYERS[kind]
    skip_unless_bptt_target(target, stllr)
    layer = make().to(target)
    x = make_input(kind, (4, 3, *features), target, requires_grad=True)
    step_through(layer, x, 2)  # eager: states and caches exist
    calls = [("step", (x[0],), {})] + ([("sequence", (x,), {"loss_steps": 2})] if stllr else [])
    for what, args, kwargs in calls:
        reset_states(layer)
        explained = torch._dynamo.explain(layer)(*args, **kwargs)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
            f"{kind} {what}: {explained.break_reasons}"


@on()
@pytest.mark.parametrize("mode", ["online", "time-fused"])
@pytest.mark.parametrize("kind", [k for k in LAYERS if k not in ("WSLinear", "WSConv2d")])  # in the BPTT models
def test_compiled_gradients_equal_eager(target, kind, mode):
    """aot_eager (the forward and backward graphs of AOTAutograd), fullgraph: outputs, parameter
    gradients and the input's gradient of eager mode."""
    make, features, stllr = LAYERS[kind]
    if mode == "time-fused" and not stllr:
        pytest.skip("BPTT layers step (their models loop over time)")
    if mode == "online" and (backends.get_backend_name(target.type), target.type) in (("torch", "cpu"),
                                                                                     ("triton", "cpu")):
        pytest.skip("torch: its time-fused ops are its steps in a loop; Triton's interpreter: its step ops "
                    "are checked by opcheck below")
    skip_unless_bptt_target(target, stllr)
    layer = make().to(target)
    compiled_layer = copy.deepcopy(layer)
    compiled = torch.compile(compiled_layer, fullgraph=True, backend="aot_eager")
    x = make_input(kind, (5, 3, *features), target, requires_grad=True)
    if mode == "online":
        got = step_through(compiled, x, 0), grads_of(compiled_layer, x)
        want = step_through(layer, x, 0), grads_of(layer, x)
    else:
        got = fused(compiled, x, 3), grads_of(compiled_layer, x)
        want = fused(layer, x, 3), grads_of(layer, x)
    assert_same(got, want, 5 * 3 * 7, f"{kind} {mode}")


# (T, B, loss_steps); T x B >= 16 throughout: on the CPU, PyTorch's convolution picks its algorithm
# by the number of images (T x B for a time-fused conv layer), a guard of its own at 16
SEQUENCES = [(6, 3, 3), (7, 4, 2), (5, 4, 4), (9, 5, 7)]


# every S-TLLR layer with the C++ ops; with the triton backend's custom ops, the layers that use
# each of them (conv: lif/trace_sequence, conv_backward; recurrent: recurrent_sequence and its
# backward; readout: readout_sequence, linear_backward)
RECOMPILE_CASES = ([pytest.param(t, k, id=f"{k}-{target_id(t)}") for t in (("cpu", "cpu"), ("cuda", "cuda"))
                    for k in STLLR]
                   + [pytest.param(t, k, id=f"{k}-{target_id(t)}") for t in (("triton", "cpu"), ("triton", "cuda"))
                      for k in ("Conv2dSTLLR", "LinearRecSTLLR", "readout")])


@pytest.mark.parametrize("target,kind", RECOMPILE_CASES, indirect=["target"])
def test_a_new_loss_steps_batch_or_length_does_not_recompile(target, kind):
    """Sequences of new T, B and loss_steps: the first call compiles, the second recompiles once
    with those sizes dynamic (automatic dynamic shapes), then none; with dynamic=True (checked on
    the first kind) one graph. (torch.compile specializes sizes of 1: a batch of 1 or loss_steps=1
    has its own graph.)"""
    make, features, _ = LAYERS[kind]
    layer = make().to(target)
    for dynamic, most in ((None, 2), (True, 1))[:2 if kind == STLLR[0] else 1]:
        torch._dynamo.reset()
        counter = torch._dynamo.testing.CompileCounter()
        compiled = torch.compile(layer, fullgraph=True, dynamic=dynamic, backend=counter)
        for T, B, D in SEQUENCES:
            fused(compiled, make_input(kind, (T, B, *features), target), D)
        assert 1 <= counter.frame_count <= most, (dynamic, counter.frame_count)


@on([("cpu", "cpu"), ("cuda", "cuda")])
@pytest.mark.parametrize("kind", ["LinearSTLLR", "LinearRecSTLLR", "LIF", "WSLinear"])
def test_steps_compile_two_graphs_and_a_new_batch_two_more(target, kind):
    """Online: the first step of a sequence (which creates the states) and the steps after it (a
    stateless WSLinear / WSConv2d: one graph); a new batch size recompiles them once, with the batch
    dynamic; later batches compile nothing."""
    make, features, _ = LAYERS[kind]
    layer = make().to(target)
    counter = torch._dynamo.testing.CompileCounter()
    compiled = torch.compile(layer, fullgraph=True, backend=counter)
    counts = []
    for B in (3, 4, 5, 7):
        step_through(compiled, make_input(kind, (4, B, *features), target, requires_grad=True), 0)
        counts.append(counter.frame_count)
    graphs = 1 if kind in ("WSLinear", "WSConv2d") else 2
    assert counts == [graphs, 2 * graphs, 2 * graphs, 2 * graphs]


@on()
@pytest.mark.parametrize("kind", ["LinearRecSTLLR"])
def test_a_loss_before_the_loss_steps_still_raises_when_compiled(target, kind):
    make, features, _ = LAYERS[kind]
    layer = make().to(target)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    out = compiled(make_input(kind, (5, 2, *features), target, requires_grad=True), loss_steps=2)
    with pytest.raises(RuntimeError, match="a loss reached a step of the sequence before its last loss_steps"):
        out.sum().backward()
        if target.type == "cuda":
            torch.cuda.synchronize()


@on()
@pytest.mark.parametrize("kind", ["LinearRecSTLLR"])
def test_compiled_layers_read_edited_parameters_at_once(target, kind):
    """Traced, a layer caches nothing: a threshold or weight edited through .data is used by the
    next call, as by a fresh layer holding the edited parameters."""
    make, features, _ = LAYERS[kind]
    layer = make().to(target)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    x = make_input(kind, (4, 3, *features), target)
    with torch.no_grad():
        reset_states(layer)
        before = compiled(x, loss_steps=0)
        layer.threshold.data.fill_(0.9)
        layer.weight.data.mul_(-1.0)
        reset_states(layer)
        got = compiled(x, loss_steps=0)
        fresh = make().to(target)
        fresh.load_state_dict(layer.state_dict())
        assert not torch.equal(got, before)
        assert torch.equal(got, fresh(x, loss_steps=0))


@pytest.mark.parametrize("target", [("triton", "cpu"), ("triton", "cuda")], ids=target_id, indirect=True)
def test_the_triton_custom_ops_have_the_shapes_of_their_kernels(target, monkeypatch):
    """Every torch.ops.stllr_triton op, called as torch.compile calls it (is_compiling() patched
    true, so the layers route through the custom ops) with the arguments the four S-TLLR layers
    give it online and time-fused: torch.library.opcheck's schema and fake-kernel checks pass."""
    from torch.utils._python_dispatch import TorchDispatchMode
    calls = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.namespace == "stllr_triton":
                calls.append((func, args, kwargs or {}))
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with Record():
        for kind in STLLR:
            make, features, _ = LAYERS[kind]
            layer = make().to(target)
            x = make_input(kind, (4, 3, *features), target, requires_grad=True)
            fused(layer, x, 2)
            step_through(layer, x[:2], 0)
    monkeypatch.undo()
    assert {f.__name__.split(".")[0] for f, _, _ in calls} == {
        "lif_step", "pre_trace", "lif_sequence", "trace_sequence", "linear_backward", "conv_backward",
        "recurrent_sequence", "readout_sequence", "recurrent_backward", "recurrent_backward_reverse",
        "standardize_backward"}
    for func, args, kwargs in calls:
        result = torch.library.opcheck(func, args, kwargs, test_utils=("test_schema", "test_faketensor"))
        assert set(result.values()) == {"SUCCESS"}, (func, result)


# ----------------------------------------------------------------------------- the training models

def models():
    from training.models.digits import DigitsBPTT, DigitsSTLLR
    from training.models.shd import SHDBPTT, SHDSTLLR
    from training.models.vgg import VGGBPTT, VGGSTLLR
    return {
        "digits_stllr": (lambda: DigitsSTLLR("LinearSpike", None, hidden=16), (64,)),
        "digits_bptt": (lambda: DigitsBPTT("LinearSpike", hidden=16), (64,)),
        "shd_stllr": (lambda: SHDSTLLR("LinearSpike", None), (700,)),
        "shd_bptt": (lambda: SHDBPTT(), (700,)),
        "vgg_stllr": (lambda: VGGSTLLR(2, 8, 8, 10, "LinearSpike", [0.2, 0.5, -1, 1], "AVG", 0.1, "BP",
                                       channel_scale=1 / 32), (2, 8, 8)),
        "vgg_bptt": (lambda: VGGBPTT(2, 8, 8, 10, "LinearSpike", 0.1, channel_scale=1 / 32), (2, 8, 8)),
    }


# (the Digits models train compiled with fullgraph in test_compiled_training_moves_the_weights_as_eager)
MODELS = ["shd_stllr", "shd_bptt", "vgg_stllr", "vgg_bptt"]


@pytest.mark.slow
@on([("cpu", "cpu"), ("triton", "cpu"), ("cuda", "cuda"), ("triton", "cuda")])
@pytest.mark.parametrize("name", MODELS)
def test_a_model_step_and_sequence_trace_into_one_graph(target, name):
    """model.step and model.sequence (training mode, dropout on): one graph each, no break."""
    skip_unless_bptt_target(target, name.endswith("stllr"))
    if name != "shd_stllr" and target.type == "cpu" and backends.get_backend_name("cpu") == "triton":
        pytest.skip("Triton's interpreter: the SHD network here, every layer in the layer tests")
    make, features = models()[name]
    model = make().to(target).train()
    x = (torch.rand(4, 2, *features) < 0.3).float().to(target)
    for what, fn, args in (("step", model.step, (x[0],)), ("sequence", model.sequence, (x, 2))):
        model.reset_states()
        explained = torch._dynamo.explain(fn)(*args)
        assert (explained.graph_count, explained.graph_break_count) == (1, 0), \
            f"{name} {what}: {explained.break_reasons}"


# ----------------------------------------------------------------------------- a fresh process

FRESH_PROCESS = textwrap.dedent("""
    import torch
    from stllr_kernels.nn import LinearRecSTLLR, LinearSTLLR, reset_states

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.readout = LinearRecSTLLR(9, 8), LinearSTLLR(8, 4, accumulate=True)

        def forward(self, x, loss_steps=None):
            if loss_steps is None:
                return self.readout(self.hidden(x))
            return self.readout(self.hidden(x, loss_steps), loss_steps)

    net = Net()
    compiled = torch.compile(net, fullgraph=True, backend="eager")
    x = (torch.rand(5, 3, 9) < 0.4).float()
    compiled(x, 2)[3:].sum().backward()  # the first call of the process: a sequence
    reset_states(net)
    compiled(x[0]).sum().backward()      # then a step
    from stllr_kernels import get_backend_name
    print("compiled on", get_backend_name("cpu"))
""")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["auto", "triton"])
def test_the_first_call_of_a_fresh_process_compiles(name, tmp_path):
    """No eager call before: the backend's module is imported while torch.compile traces (an
    import dynamo cannot trace). auto: the cpu backend; triton: its custom ops, interpreted."""
    if name == "triton" and backends.unavailable_reason("triton", "cpu") is not None:
        pytest.skip(backends.unavailable_reason("triton", "cpu"))
    env = {**os.environ, "STLLR_BACKEND": name, "PYTHONPATH": REPO, "TRITON_INTERPRET": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"compiled on {'cpu' if name == 'auto' else name}" in done.stdout


# ----------------------------------------------------------------------------- inductor

@pytest.mark.slow
def test_inductor_gives_the_gradients_of_eager():
    """The default backend, which generates and compiles C++ here: one S-TLLR network, time-fused."""
    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.hidden, self.readout = LinearSTLLR(9, 8), LinearSTLLR(8, 4, accumulate=True)

        def forward(self, x, loss_steps):
            return self.readout(self.hidden(x, loss_steps), loss_steps)

    with backend("cpu"):
        net = Net()
        compiled_net = copy.deepcopy(net)
        compiled = torch.compile(compiled_net, fullgraph=True)
        x = (torch.rand(6, 3, 9) < 0.4).float().requires_grad_()
        got = fused(compiled, x, 3), grads_of(compiled_net, x)
        want = fused(net, x, 3), grads_of(net, x)
    assert_same(got, want, 6 * 3 * 9, "inductor")


# ----------------------------------------------------------------------------- CUDA graphs

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", ["triton", "cuda"])
def test_reduce_overhead_captures_a_training_step_as_cuda_graphs(name):
    """mode="reduce-overhead": a time-fused training step (forward, loss, backward) of the SHD
    network is captured as CUDA graphs (inductor skips none) and replays without a host
    synchronization, with eager's gradients."""
    from torch._dynamo.utils import counters

    from training.models.shd import SHDSTLLR
    if backends.unavailable_reason(name, "cuda") is not None:
        pytest.skip(backends.unavailable_reason(name, "cuda"))
    torch.manual_seed(0)
    with backend(name):
        model = SHDSTLLR("LinearSpike", None).cuda()
        eager_model = copy.deepcopy(model)
        compiled = torch.compile(model, fullgraph=True, mode="reduce-overhead")
        x = (torch.rand(20, 16, 700, device="cuda") < 0.05).float()
        y = torch.randint(0, 20, (16,), device="cuda")

        def train_step(m, fn):
            m.reset_states()
            out = fn(x, 5)
            loss = torch.nn.functional.cross_entropy(out[-5:].flatten(0, 1), y.repeat(5))
            loss.backward()
            return out

        counters.clear()
        for _ in range(3):  # warm-up and recording
            torch.compiler.cudagraph_mark_step_begin()
            model.zero_grad(set_to_none=True)
            train_step(model, compiled)
        assert counters["inductor"]["cudagraph_skips"] == 0, dict(counters["inductor"])
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.compiler.cudagraph_mark_step_begin()
        torch.cuda.set_sync_debug_mode("error")  # a host synchronization in the replay raises
        try:
            out = train_step(model, compiled).clone()
        finally:
            torch.cuda.set_sync_debug_mode("default")
        want = train_step(eager_model, eager_model)
    assert_close_policy(out, want, reduction=700)
    for (n, p), q in zip(model.named_parameters(), eager_model.parameters()):
        if q.grad is not None:
            assert_close_policy(p.grad, q.grad, reduction=16 * 5 * 700, msg=n)


# ----------------------------------------------------------------------------- python -m training --compile

# every --training-mode with every --step-mode it takes (one under DFA: its graph breaks)
TRAINING_MODES = [("digits_stllr", "stllr", "online", "BP"), ("digits_stllr", "stllr", "sequence", "DFA"),
                  ("digits_stllr", "stllr_online", "online", "BP"), ("digits_stllr", "bptt", "sequence", "BP"),
                  ("digits_bptt", "bptt", "online", "BP")]


@pytest.mark.slow
@pytest.mark.parametrize("arch,mode,step_mode,feedback", TRAINING_MODES, ids=["-".join(m) for m in TRAINING_MODES])
def test_compiled_training_moves_the_weights_as_eager(arch, mode, step_mode, feedback, seed):
    """Two batches of the Trainer and an evaluation, the model compiled by --compile (eager: the
    layers' forward and backward graphs are checked with aot_eager above) against the same model
    eager: the same weights and predictions; the state_dict keys plain."""
    from training import runner
    from training.cli import parse_config
    from training.engine import Trainer, make_loss, predict
    flags = ["--dataset", "Digits", "--arch", arch, "--training-mode", mode, "--step-mode", step_mode,
             "--feedback-mode", feedback, "--delay-ls", "3", "--optimizer", "SGD", "--lr", "0.5"]
    models = {}
    for name, extra in (("compiled", ["--compile", "eager"]), ("eager", [])):
        torch.manual_seed(seed)
        model, optimizer, _ = runner.setup_trial(parse_config(flags + extra), torch.device("cpu"))
        trainer = Trainer(model, optimizer, make_loss("CE", 10), mode, step_mode, 3)
        gen = torch.Generator().manual_seed(seed)
        for size in (4, 6):  # a second batch size: the automatic dynamic recompile
            x, y = (torch.rand(5, size, 64, generator=gen) < 0.3).float(), torch.randint(0, 10, (size,), generator=gen)
            trainer.train_batch(x, y)
        models[name] = (model, predict(model, x, step_mode))
    (compiled, pred_c), (eager, pred_e) = models["compiled"], models["eager"]
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no "_orig_mod." prefix
    assert_close_policy(pred_c, pred_e, reduction=5 * 64)
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        assert_close_policy(p, q, reduction=2 * 5 * 6 * 64, msg=name)


@pytest.mark.slow
def test_compile_runs_and_resumes_with_plain_checkpoints(tmp_path, monkeypatch):
    """python -m training --compile eager: a run of 2 epochs resumed for a 3rd; the checkpoints hold
    the plain module's keys and load into an uncompiled model, which predicts what the run logged."""
    from training import checkpoint as ckpt
    from training import runner
    from training.cli import main
    from training.engine import predict, topk_correct
    from training.models.digits import DigitsSTLLR
    monkeypatch.setattr(runner, "build_dataset", lambda config, train: FixedSpikes(24 if train else 10, int(train)))
    flags = ["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--val-batch-size", "10",
             "--save-path", str(tmp_path), "--delay-ls", "3", "--print-freq", "100", "--cpu", "--compile", "eager"]
    assert main(flags + ["--epochs", "2"]) == 0
    assert main(flags + ["--epochs", "3", "--resume", str(tmp_path / ckpt.RESUME_NAME)]) == 0
    state = ckpt.load(str(tmp_path / ckpt.RESUME_NAME))
    best = torch.load(tmp_path / "trial_1_model_best.pth.tar", weights_only=True)["state_dict"]
    assert state["epoch"] == 3 and list(best) == list(state["model"])
    model = DigitsSTLLR("LinearSpike", [0.2, 0.75, -1, 1])
    assert list(model.state_dict()) == list(state["model"])  # no "_orig_mod." prefix
    model.load_state_dict(state["model"])
    test = FixedSpikes(10, 0)
    correct, _ = topk_correct(predict(model, test.x.transpose(0, 1)), test.y)
    assert state["history"]["val_acc"][-1] == pytest.approx(100.0 * correct / 10)
