"""One op-level conformance suite for every backend, against `stllr_kernels.reference`.

Every op of docs/design.md (lif_step, pre_trace, lif_sequence, trace_sequence, linear_backward,
conv_backward) over a grid of shapes (batch 1, odd sizes, sizes that cross the kernels' tiles,
non-contiguous inputs, empty inputs), every Psi / reset / post mode and dtype, outputs and every
gradient; then whole multi-step layer runs, each backend against the `torch` backend.

Backends are reached through the public registry (`stllr_kernels.backends`), by name and device:
`torch`, `cpu` and `triton` (in Triton's interpreter) on CPU tensors; `cuda` and `triton` on CUDA
tensors, skipped with the reason when this machine cannot run them. Inputs are drawn on the CPU
(the same values whatever the device) and the reference runs on the CPU: it is the oracle.

On a GPU, `STLLR_TRITON_SINGLE_CONFIG=1` makes the Triton kernels skip autotuning, so that this
file runs in minutes there (benchmarks/gpu_check.py does that).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from types import ModuleType

import pytest
import torch
from torch.nn.modules.utils import _pair

from conftest import assert_close_policy, assert_spikes_match, backend, near_threshold

import stllr_kernels
from stllr_kernels import backends
from stllr_kernels import reference as R
from stllr_kernels.config import RuleConfig
from stllr_kernels.nn import Conv2dSTLLR, LinearRecSTLLR, LinearSTLLR
from stllr_kernels.psi import POST_MODES, PSI_CODES, RESET_MODES

# (backend, device type): every backend on the device type it serves. While the `torch` backend's
# ops are the reference functions themselves, comparing them with the reference could not fail:
# those cases skip (saying so); the layer runs use `torch` as their oracle, and test_reference.py
# checks it against docs/rule.md section 2 written out per sample.
TARGETS = [("torch", "cpu"), ("cpu", "cpu"), ("triton", "cpu"), ("cuda", "cuda"), ("triton", "cuda")]
OPS = ("lif_step", "pre_trace", "lif_sequence", "trace_sequence", "linear_backward", "conv_backward")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
MODES = [(psi, reset, post) for psi in PSI_CODES for reset in RESET_MODES for post in POST_MODES]
# float32 runs every mode; each other dtype (a different load / convert path, the same mode code)
# two modes, both post variants, together every psi and reset
DTYPE_MODES = ([(torch.float32, m) for m in MODES]
               + [(d, MODES[i]) for d, picks in ((torch.float64, (0, 9)), (torch.bfloat16, (3, 6)),
                                                 (torch.float16, (5, 10))) for i in picks])


def dtype_id(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@dataclass
class Target:
    name: str
    device: torch.device
    ops: ModuleType

    def to(self, *tensors):
        return tuple(None if t is None else t.to(self.device) for t in tensors)


def resolve(name: str, device_type: str) -> Target:
    """The op module of backend `name` for `device_type`, through the registry; skips with the
    registry's reason when it cannot run here."""
    reason = backends.unavailable_reason(name, device_type)
    if reason is not None:
        pytest.skip(f"backend {name!r} on {device_type}: {reason}")
    with backend(name):
        assert stllr_kernels.get_backend_name(device_type) == name
        ops = backends.get_ops(device_type)
    return Target(name, torch.device(device_type), ops)


def target_id(target) -> str:
    """torch, cpu, cuda (each backend on its device) and triton_cpu / triton_cuda."""
    name, device_type = target
    return name if name in ("torch", device_type) else f"{name}_{device_type}"


@pytest.fixture(params=TARGETS, ids=target_id)
def target(request) -> Target:
    found = resolve(*request.param)
    if all(getattr(found.ops, op) is getattr(R, op) for op in OPS):
        pytest.skip(f"backend {found.name!r} runs stllr_kernels.reference's functions themselves")
    return found


@pytest.fixture(params=[t for t in TARGETS if t[0] != "torch"], ids=target_id)
def other_target(request) -> Target:
    """Every backend but `torch`, which the layer runs compare them with."""
    return resolve(*request.param)


def cfg_of(psi, reset="soft", post="psi", factors=(0.5, 0.8, -0.2, 1.0)):
    return RuleConfig(*factors, psi=psi, reset=reset, post=post)


def scalars(leak=0.3, threshold=0.6):
    """beta, theta: 0-d float32 tensors (the layers' parameters are float32 whatever the input)."""
    return R.beta_of(torch.tensor(leak)), R.theta_of(torch.tensor(threshold))


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (a transposed copy transposed back; 1-d: every
    other element of a doubled tensor)."""
    if t.dim() < 2:
        out = torch.stack([t, torch.zeros_like(t)], -1)[..., 0]
    else:
        out = t.transpose(-1, -2).contiguous().transpose(-1, -2)
    assert not out.is_contiguous() or out.numel() <= 1
    return out


def spikes_of(shape, dtype, p=0.5):
    return (torch.rand(shape) < p).to(dtype)


def assert_state_close(got, want, flipped, dtype, reduction=1, msg="state"):
    """Compare a state, leaving out the elements whose spike flipped at the threshold."""
    got = got.cpu()
    if flipped is not None and flipped.any():
        got = torch.where(flipped.expand_as(got), want, got)
    assert_close_policy(got, want, dtype, reduction, msg=msg)


# ----------------------------------------------------------------------------- element-wise ops

# (shape, non-contiguous): one neuron, odd sizes, 1100 crosses the C++ kernels' 1024 and Triton's
# 256-element tiles, a 4-d conv-like state
STEP_SHAPES = [((1,), False), ((3, 37), True), ((1100,), False), ((2, 3, 5, 7), True)]


def lif_inputs(shape, dtype, noncontig):
    sd = R.state_dtype(dtype)
    current = (torch.randn(shape, dtype=sd) * 0.8).to(dtype)
    v = torch.randn(shape, dtype=sd) * 0.5
    trpost = torch.rand(shape, dtype=sd)
    if noncontig:
        current, v, trpost = strided(current), strided(v), strided(trpost)
    return current, v, trpost


def threshold_of_step(current, v, beta, theta, dtype):
    """Where the reference's u = beta v + I - theta is within rounding of 0 at this step."""
    sd = R.state_dtype(dtype)
    bv = beta * v
    u = bv + current.to(sd) - theta
    return near_threshold(u, bv.abs() + current.to(sd).abs() + theta.abs(), dtype)


@pytest.mark.parametrize("dtype,mode", DTYPE_MODES,
                         ids=[f"{dtype_id(d)}-{'-'.join(m)}" for d, m in DTYPE_MODES])
def test_lif_step(target, dtype, mode):
    cfg = cfg_of(*mode)
    beta, theta = scalars()
    for shape, noncontig in STEP_SHAPES:
        current, v, trpost = lif_inputs(shape, dtype, noncontig)
        want = R.lif_step(current, v, trpost, beta, theta, cfg)
        got = target.ops.lif_step(*target.to(current, v, trpost, beta, theta), cfg)
        flipped = assert_spikes_match(got[0], want[0], threshold_of_step(current, v, beta, theta, dtype),
                                      msg=f"spikes at {shape}")
        for name, g, w in zip(("v", "trpost", "psi"), got[1:], want[1:]):
            assert_state_close(g, w, flipped if name != "psi" else None, w.dtype, msg=f"{name} at {shape}")
        if shape[0] > 1:
            assert 0 < want[0].float().mean() < 1, "inputs should cross the threshold both ways"


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_pre_trace(target, dtype):
    for shape, noncontig in STEP_SHAPES:
        x = torch.rand(shape).to(dtype) * spikes_of(shape, dtype)  # analog first-layer input or spikes
        trpre = torch.rand(shape, dtype=R.state_dtype(dtype)) * 2
        if noncontig:
            x, trpre = strided(x), strided(trpre)
        got = target.ops.pre_trace(*target.to(trpre, x), 0.8)
        assert_close_policy(got.cpu(), R.pre_trace(trpre, x, 0.8), msg=f"trpre at {shape}")


# (T, step shape, save_from, non-contiguous currents): one step, a batch of 1, save_from == T
# (no loss step), 2 x 600 crosses the C++ kernel's 512-neuron tiles
SEQUENCE_CASES = [(1, (3, 37), 0, False), (5, (2, 600), 2, True), (4, (1, 7), 4, False),
                  (3, (2, 3, 5), 1, True)]


def reference_thresholds(currents, v, trpost, beta, theta, cfg, dtype):
    """[T, ...]: where the reference's u is within rounding of 0 at each step."""
    marks = []
    for t in range(currents.shape[0]):
        marks.append(threshold_of_step(currents[t], v, beta, theta, dtype))
        _, v, trpost, _ = R.lif_step(currents[t], v, trpost, beta, theta, cfg)
    return torch.stack(marks) if marks else torch.zeros((0, *v.shape), dtype=torch.bool)


@pytest.mark.parametrize("dtype,mode", DTYPE_MODES,
                         ids=[f"{dtype_id(d)}-{'-'.join(m)}" for d, m in DTYPE_MODES])
def test_lif_sequence(target, dtype, mode):
    cfg = cfg_of(*mode)
    beta, theta = scalars()
    for steps, shape, save_from, noncontig in SEQUENCE_CASES:
        currents, v, trpost = lif_inputs((steps, *shape), dtype, noncontig)
        v, trpost = v[0], trpost[0]
        if noncontig:  # non-contiguous states too
            v, trpost = strided(v.contiguous()), strided(trpost.contiguous())
        want = R.lif_sequence(currents, v, trpost, beta, theta, cfg, save_from)
        got = target.ops.lif_sequence(*target.to(currents, v, trpost, beta, theta), cfg, save_from)
        assert len(got) == len(want) == 5
        flipped = assert_spikes_match(got[0], want[0],
                                      reference_thresholds(currents, v, trpost, beta, theta, cfg, dtype),
                                      time_dim=0, msg=f"spikes at T={steps} {shape}")
        for name, g, w in zip(("v", "trpost", "psi[save_from:]", "trpost_prev[save_from:]"), got[1:], want[1:]):
            assert_state_close(g, w, flipped, w.dtype, steps, msg=f"{name} at T={steps} {shape}")


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_trace_sequence(target, dtype):
    # (T, step shape, save_from): T = 0, one step, 2 x 1100 crosses the C++ kernel's 1024 tiles
    for steps, shape, save_from, noncontig in [(0, (3,), 0, False), (1, (1,), 0, False),
                                               (6, (2, 1100), 3, True), (4, (3, 2, 5), 4, True)]:
        x = spikes_of((steps, *shape), dtype, 0.4)
        trace = torch.rand(shape, dtype=R.state_dtype(dtype))
        if noncontig:
            x = strided(x)
        want = R.trace_sequence(x, trace, 0.75, save_from)
        got = target.ops.trace_sequence(*target.to(x, trace), 0.75, save_from)
        for name, g, w in zip(("trace[save_from:]", "trace[T-1]"), got, want):
            assert_close_policy(g.cpu(), w, reduction=max(steps, 1), msg=f"{name} at T={steps} {shape}")


def test_empty_inputs(target):
    """Zero neurons or an empty batch: shapes (and zeros) as the reference, no launch goes wrong."""
    beta, theta = scalars()
    cfg = cfg_of("triangle")
    empty = torch.zeros(0, 5)
    for g, w in zip(target.ops.lif_step(*target.to(empty, empty, empty, beta, theta), cfg),
                    R.lif_step(empty, empty, empty, beta, theta, cfg)):
        assert g.shape == w.shape and g.dtype == w.dtype
    assert target.ops.pre_trace(*target.to(empty, empty), 0.5).shape == (0, 5)
    seq = torch.zeros(3, 0, 5)
    got = target.ops.lif_sequence(*target.to(seq, empty, empty, beta, theta), cfg, 1)
    assert [tuple(t.shape) for t in got] == [(3, 0, 5), (0, 5), (0, 5), (2, 0, 5), (2, 0, 5)]
    args = linear_inputs((0,), 4, 6, torch.float32, "spike", False)
    for g, w in zip(target.ops.linear_backward(*target.to(*args[:7]), *args[7:]), R.linear_backward(*args)):
        assert g.shape == w.shape
        assert_close_policy(g.cpu(), w)


# ----------------------------------------------------------------------------- linear eligibility

# (batch shape, N, K): batch 1, odd sizes, sizes over the Triton GEMMs' 32-blocks in every dim,
# leading dims flattened into the batch (the time-fused mode)
LINEAR_SHAPES = [((1,), 1, 1), ((1,), 5, 7), ((37,), 33, 70), ((2, 3), 17, 40)]
# which optional inputs: causal = spikes (post="spike"), causal = psi, the readout (all None), no
# non-causal term (alpha_post = 0), no trpost_prev (the first step)
LINEAR_VARIANTS = ["spike", "psi", "readout", "alpha_post_0", "no_prev"]


def linear_inputs(batch, N, K, dtype, variant, noncontig):
    sd = R.state_dtype(dtype)
    L = torch.randn(*batch, N).to(dtype)
    psi = torch.rand(*batch, N, dtype=sd)
    causal = spikes_of((*batch, N), dtype) if variant == "spike" else psi
    prev = None if variant == "no_prev" else torch.rand(*batch, N, dtype=sd)
    x = spikes_of((*batch, K), dtype)
    trpre = 2 * torch.rand(*batch, K, dtype=sd)
    weight = torch.randn(N, K).to(dtype)
    if noncontig:
        x, trpre, weight = strided(x), strided(trpre), strided(weight)
    if variant == "readout":
        psi = causal = prev = None
    alpha_post = 0.0 if variant == "alpha_post_0" else -0.2
    return (L, psi, causal, prev, x, trpre, weight, alpha_post, 0.9)


# float32 runs every variant; the other dtypes the two extremes
LINEAR_CASES = ([(torch.float32, v) for v in LINEAR_VARIANTS]
                + [(d, v) for d in DTYPES[1:] for v in ("spike", "readout")])


@pytest.mark.parametrize("dtype,variant", LINEAR_CASES, ids=[f"{dtype_id(d)}-{v}" for d, v in LINEAR_CASES])
def test_linear_backward(target, dtype, variant):
    for i, (batch, N, K) in enumerate(LINEAR_SHAPES):
        args = linear_inputs(batch, N, K, dtype, variant, noncontig=i >= 2)
        rows = 1
        for b in batch:
            rows *= b
        skip_dx_db = dtype == torch.float32 and i < 2  # the launch without dx / db, on small shapes
        for needs_x, needs_b in ((True, True), (False, False))[: 2 if skip_dx_db else 1]:
            want = R.linear_backward(*args, needs_x, needs_b)
            got = target.ops.linear_backward(*target.to(*args[:7]), *args[7:], needs_x, needs_b)
            for name, g, w, red in zip(("dx", "dW", "db"), got, want, (N, 2 * rows, rows)):
                assert (g is None) == (w is None), name
                if w is not None:
                    assert_close_policy(g.cpu(), w, reduction=red, msg=f"{name} at {batch}x{N}x{K}")


# ----------------------------------------------------------------------------- conv eligibility

# (B, C_in, C_out, H, W, kernel, stride, padding, dilation, groups): all ones, batch 1 with
# padding, C_out over a 32-block with stride 2 and groups, dilation without padding, rectangular
# kernel / stride / padding / dilation
CONV_SHAPES = [(1, 1, 1, 5, 5, 3, 1, 0, 1, 1), (1, 3, 5, 7, 6, 3, 1, 1, 1, 1),
               (2, 4, 34, 9, 8, 3, 2, 1, 1, 2), (3, 2, 7, 5, 5, 2, 1, 0, 2, 1),
               (2, 6, 3, 8, 9, (3, 2), (2, 1), (1, 0), (1, 2), 1)]
CONV_VARIANTS = [(-0.2, True, True), (0.0, False, True), (1.0, True, False)]  # alpha_post, dx?, db?


def conv_inputs(shape, dtype, noncontig, alpha_post=-0.2):
    B, ci, co, H, W, k, st, pad, dil, g = shape
    sd = R.state_dtype(dtype)
    out_hw = [(size + 2 * p - d * (kk - 1) - 1) // s + 1
              for size, kk, s, p, d in zip((H, W), _pair(k), _pair(st), _pair(pad), _pair(dil))]
    post = (B, co, *out_hw)
    L = torch.randn(post).to(dtype)
    psi, prev = torch.rand(post, dtype=sd), torch.rand(post, dtype=sd)
    causal = spikes_of(post, dtype)
    x = spikes_of((B, ci, H, W), dtype)
    trpre = 2 * torch.rand(B, ci, H, W, dtype=sd)
    weight = torch.randn(co, ci // g, *_pair(k)).to(dtype)
    if noncontig:
        x, trpre = strided(x), trpre.to(memory_format=torch.channels_last)
    return (L, psi, causal, prev, x, trpre, weight, _pair(st), _pair(pad), _pair(dil), g, alpha_post, 0.9)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_id)
def test_conv_backward(target, dtype):
    for i, shape in enumerate(CONV_SHAPES):
        for alpha_post, needs_x, needs_b in CONV_VARIANTS[: 1 if i == 0 else 3]:
            args = conv_inputs(shape, dtype, noncontig=i % 2 == 1, alpha_post=alpha_post)
            L, weight = args[0], args[6]
            positions = L.shape[0] * L.shape[2] * L.shape[3]
            want = R.conv_backward(*args, needs_x, needs_b)
            got = target.ops.conv_backward(*target.to(*args[:7]), *args[7:], needs_x, needs_b)
            taps = weight.shape[0] // args[10] * weight.shape[2] * weight.shape[3]
            for name, g, w, red in zip(("dx", "dW", "db"), got, want, (taps, 2 * positions, positions)):
                assert (g is None) == (w is None), name
                if w is not None:
                    assert_close_policy(g.cpu(), w, reduction=red, msg=f"{name} at {shape}")


# ----------------------------------------------------------------------------- whole layers

# name -> (factory, input features, dtype): every layer kind, soft and hard reset, psi and spike
# post traces, a bf16 layer
LAYERS = {
    "linear": (lambda: LinearSTLLR(37, 35, leak=0.5, factors=(0.5, 0.8, -0.2, 1.0)), (37,), torch.float32),
    "linear_bf16": (lambda: LinearSTLLR(37, 35, leak=0.5, psi="sigmoid"), (37,), torch.bfloat16),
    "linear_hard_spike": (lambda: LinearSTLLR(20, 9, leak=0.5, psi="triangle", reset_mechanism="hard",
                                              post="spike"), (20,), torch.float32),
    "recurrent": (lambda: LinearRecSTLLR(19, 34, leak=0.5, psi="sigmoid"), (19,), torch.float32),
    "conv": (lambda: Conv2dSTLLR(3, 6, 3, stride=1, padding=1, leak=0.0), (3, 6, 5), torch.float32),
    "readout": (lambda: LinearSTLLR(33, 5, leak=5.0, accumulate=True, factors=(0.0, 0.99, 0.0, 1.0)),
                (33,), torch.float32),
}


def run_layer(layer, xs, loss_steps, sequence, backend_name, device, probe):
    """Reset, run all steps (a backward per loss step, as training does) or one sequence call;
    return the outputs, the input gradient and every parameter gradient."""
    layer = copy.deepcopy(layer).to(device)
    layer.reset_state()
    xs = xs.to(device).requires_grad_()
    probe = probe.to(device)
    steps = xs.shape[0]
    with backend(backend_name):
        if sequence:
            out = layer(xs, loss_steps=loss_steps)
            (out[steps - loss_steps:].float() * probe[steps - loss_steps:]).sum().backward()
            outs = out.detach()
        else:
            outs = []
            for t in range(steps):
                out = layer(xs[t])
                if t >= steps - loss_steps:
                    (out.float() * probe[t]).sum().backward()
                outs.append(out.detach())
            outs = torch.stack(outs)
    grads = {n: p.grad.cpu() for n, p in layer.named_parameters() if p.grad is not None}
    return outs.cpu(), xs.grad.cpu(), grads


@pytest.mark.parametrize("sequence", [False, True], ids=["step", "sequence"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_layer_matches_torch_backend(other_target, kind, sequence):
    make, features, dtype = LAYERS[kind]
    steps, loss_steps, batch = 4, 2, 3
    layer = make().to(dtype=dtype)
    with torch.no_grad():  # larger currents: the layers spike at some steps and not at others
        layer.weight.mul_(3.0)
    xs = (spikes_of((steps, batch, *features), dtype) * 2.0)
    with torch.no_grad():
        out_shape = copy.deepcopy(layer)(xs[0]).shape
    probe = torch.randn(steps, *out_shape)  # a random linear loss per step
    want_out, want_dx, want_grads = run_layer(layer, xs, loss_steps, sequence, "torch",
                                              other_target.device, probe)
    got_out, got_dx, got_grads = run_layer(layer, xs, loss_steps, sequence, other_target.name,
                                           other_target.device, probe)
    fan_in = features[0] * (9 if kind == "conv" else 1)
    positions = batch * loss_steps * (features[1] * features[2] if kind == "conv" else 1)
    if kind == "readout":
        assert_close_policy(got_out, want_out, dtype, fan_in * steps, msg="readout output")
    else:  # spikes: both backends compute the same currents, so the same spikes
        assert torch.equal(got_out, want_out), "spikes differ between backends"
        assert 0 < want_out.float().mean() < 1, "test inputs should make the layer spike sometimes"
    assert_close_policy(got_dx, want_dx, dtype, want_out[0].numel() // batch, msg="input gradient")
    assert want_grads.keys() == got_grads.keys() and want_grads
    for name in want_grads:
        # W standardization: a parameter's gradient sums its rows' eligibilities over the batch,
        # steps and positions, then over the row (fan-in)
        assert_close_policy(got_grads[name], want_grads[name], dtype, positions * fan_in,
                            msg=f"gradient of {name}")
