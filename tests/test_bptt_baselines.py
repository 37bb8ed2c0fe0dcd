"""The BPTT baselines against the original's forward (docs/rule.md sections 1, 3, 4 and 7.1) written out
here step by step, gradients included: the LIF reset takes no gradient (the spike is detached in
it), every VGG block runs conv -> LIF -> dropout -> pool (the sixth too), and the VGG classifier's
bias keeps PyTorch's default initialisation.

Everything runs in float64, so that the spikes of the model and of the re-statement agree exactly.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tol

from stllr_kernels.nn import LIF
from training.models.shd import SHDBPTT
from training.models.vgg import VGGBPTT

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small ops run faster on one thread

PSI = {  # docs/rule.md section 3
    "triangle": lambda u: 0.3 * torch.clamp(1 - u.abs(), min=0),
    "sigmoid": lambda u: 4 * torch.sigmoid(4 * u) * (1 - torch.sigmoid(4 * u)),
    "fast_sigmoid": lambda u: 1 / (1 + 100 * u.abs()) ** 2,
}


class Spike(torch.autograd.Function):
    """Heaviside forward (strictly greater than 0), Psi(u) as its derivative."""

    @staticmethod
    def forward(ctx, u, psi):
        ctx.save_for_backward(u)
        ctx.psi = psi
        return (u > 0).to(u.dtype)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * PSI[ctx.psi](u), None


def standardized(weight, gain):
    """docs/rule.md section 4: gain * (W - mean_row) / sqrt(var_row * fan_in + 1e-4), unbiased variance."""
    flat = weight.flatten(1)
    shape = (-1,) + (1,) * (weight.dim() - 1)
    mean, var = flat.mean(1).view(shape), flat.var(1, unbiased=True).view(shape)
    return gain * (weight - mean) / torch.sqrt(var * flat.shape[1] + 1e-4)


def lif(v, current, leak, threshold, psi):
    """One step of docs/rule.md section 1 with the original's reset: v+ = v - theta * s.detach()."""
    beta, theta = torch.sigmoid(leak), torch.clamp(threshold, min=0.5)
    v = current if v is None else beta * v + current
    s = Spike.apply(v - theta, psi)
    return s, v - theta * s.detach()


def leaves(model):
    """Independent copies of the model's parameters (the re-statement's own graph)."""
    return {name: p.detach().clone().requires_grad_(p.requires_grad) for name, p in model.named_parameters()}


def compare_gradients(model, ref, loss_model, loss_ref):
    loss_model.backward()
    loss_ref.backward()
    checked = 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        assert p.grad is not None and ref[name].grad is not None, name
        torch.testing.assert_close(p.grad, ref[name].grad, **tol(torch.float64, p[0].numel()), msg=name)
        checked += 1
    return checked


POOLED_BLOCKS = (1, 3, 5)  # the 2nd, 4th and 6th conv are followed by a 2x2 average pool


def vgg_reference(p, x, psi):
    """The original's BPTT VGG: 8 blocks conv (3x3, standardized) -> LIF (leak 0, threshold 0.6)
    -> dropout (0 here) -> avg pool where pooled; global average, linear; logits per step."""
    T, outputs, v = x.shape[0], [], [None] * 8
    for t in range(T):
        h = x[t]
        for i in range(8):
            current = F.conv2d(h, standardized(p[f"convs.{i}.weight"], p[f"convs.{i}.gain"]),
                               p[f"convs.{i}.bias"], padding=1)
            h, v[i] = lif(v[i], current, p[f"lifs.{i}.leak"], p[f"lifs.{i}.threshold"], psi)
            if i in POOLED_BLOCKS:
                h = F.avg_pool2d(h, 2)
        outputs.append(F.linear(h.mean((-2, -1)), p["classifier.weight"], p["classifier.bias"]))
    return torch.stack(outputs)


@pytest.mark.parametrize("shape, psi, activation", [((2, 32, 32, 11), "triangle", "LinearSpike"),
                                                    ((2, 48, 48, 10), "sigmoid", "GradSigmoid")],
                         ids=["gesture", "cifar10dvs"])
def test_vgg_bptt_matches_the_original_forward_and_gradients(seed, shape, psi, activation):
    model = VGGBPTT(*shape, activation, dropout=0.0, channel_scale=1 / 8).double()  # 8..64 channels: quick
    with torch.no_grad():  # at gain 1 the deep layers stay silent on random input
        for conv in model.convs:
            conv.gain.fill_(3.0)
    ref = leaves(model)
    T, B = 3, 1  # 3 steps: gradients flow through two membrane carries (where the reset matters)
    x = (torch.rand(T, B, *shape[:3], dtype=torch.float64) < 0.3).double() * 2.0
    labels = torch.randint(0, shape[3], (B,))
    model.reset_states()
    out = model.sequence(x, T)
    want = vgg_reference(ref, x, psi)
    torch.testing.assert_close(out, want, **tol(torch.float64, 512))
    assert out.std() > 0, "the last block never spiked: the comparison would be vacuous"
    checked = compare_gradients(model, ref, F.cross_entropy(out.sum(0), labels),
                                F.cross_entropy(want.sum(0), labels))
    assert checked == 3 * 8 + 2  # weight, bias, gain of each conv; the classifier


def test_vgg_bptt_sixth_block_pools_after_lif_and_dropout(seed):
    model = VGGBPTT(2, 32, 32, 11, "LinearSpike", dropout=0.1)
    seen = {}
    def record(name):
        def hook(module, inputs, output):
            seen.setdefault(name, (inputs[0].shape, output.shape))
        return hook

    for name in ("lifs", "drops", "pools"):
        getattr(model, name)[5].register_forward_hook(record(name))
    model.reset_states()
    model.step(torch.rand(2, 2, 32, 32))
    assert seen["lifs"][0][-2:] == (8, 8) and seen["drops"][0][-2:] == (8, 8)  # LIF and dropout at 8x8
    assert seen["pools"][0][-2:] == (8, 8) and seen["pools"][1][-2:] == (4, 4)  # then the pool


def test_vgg_bptt_classifier_bias_keeps_the_default_init(seed):
    """PyTorch's default: U(-1/sqrt(512), 1/sqrt(512)); the convs' biases are zero (docs/rule.md section 7)."""
    biases = torch.stack([VGGBPTT(2, 32, 32, 11, "LinearSpike", 0.0).classifier.bias for _ in range(4)])
    bound = 1 / math.sqrt(512)
    assert (biases.abs() <= bound).all() and (biases != 0).all() and biases.std() > bound / 4
    model = VGGBPTT(2, 32, 32, 11, "LinearSpike", 0.0)
    assert all(not conv.bias.any() for conv in model.convs)


def shd_reference(p, x):
    """The original's BPTT SHD net: recurrent layer I = WS(W) x + b + WS(W_rec) s[t-1] (none at
    t = 0), LIF leak 15 with fast_sigmoid; readout v = beta v + W s + b (leak 5), output v."""
    outputs, v, s, readout = [], None, None, None
    beta_out = torch.sigmoid(p["last_layer.leak"])
    for t in range(x.shape[0]):
        current = F.linear(x[t], standardized(p["linear1.fc.weight"], p["linear1.fc.gain"]), p["linear1.fc.bias"])
        if s is not None:
            current = current + F.linear(s, standardized(p["linear1.rec.weight"], p["linear1.rec.gain"]))
        s, v = lif(v, current, p["linear1.lif.leak"], p["linear1.lif.threshold"], "fast_sigmoid")
        current = F.linear(s, p["last_layer.fc.weight"], p["last_layer.fc.bias"])
        readout = current if readout is None else beta_out * readout + current
        outputs.append(readout)
    return torch.stack(outputs)


def test_shd_bptt_matches_the_original_forward_and_gradients(seed):
    model = SHDBPTT().double()
    with torch.no_grad():
        model.linear1.fc.gain.fill_(3.0)
    ref = leaves(model)
    T, B = 12, 3
    x = (torch.rand(T, B, 700, dtype=torch.float64) < 0.1).double()
    labels = torch.randint(0, 20, (B,))
    model.reset_states()
    out = model.sequence(x, T)
    want = shd_reference(ref, x)
    torch.testing.assert_close(out, want, **tol(torch.float64, 700))
    assert out.std() > 0
    checked = compare_gradients(model, ref, F.cross_entropy(out.sum(0), labels),
                                F.cross_entropy(want.sum(0), labels))
    assert checked == 7  # fc weight/bias/gain, rec weight/gain, readout weight/bias


def test_lif_reset_takes_no_gradient(seed):
    """Over several steps, the gradient of the input equals the detached-reset re-statement's and
    differs from what a reset with gradient would give (so the check can fail)."""
    current = (torch.rand(6, 4, 5, dtype=torch.float64) * 1.5).requires_grad_()
    neuron = LIF(leak=2.0, psi="fast_sigmoid").double()
    out = torch.stack([neuron(current[t]) for t in range(6)])
    weights = torch.rand_like(out)
    (grad,) = torch.autograd.grad((out * weights).sum(), current)

    def unroll(detach: bool):
        c = current.detach().clone().requires_grad_()
        v, spikes = None, []
        beta, theta = torch.sigmoid(neuron.leak.detach()), torch.clamp(neuron.threshold.detach(), min=0.5)
        for t in range(6):
            v = c[t] if v is None else beta * v + c[t]
            s = Spike.apply(v - theta, "fast_sigmoid")
            v = v - theta * (s.detach() if detach else s)
            spikes.append(s)
        return torch.autograd.grad((torch.stack(spikes) * weights).sum(), c)[0]

    torch.testing.assert_close(out.detach(), (out.detach() > 0).double())
    torch.testing.assert_close(grad, unroll(detach=True), **tol(torch.float64, 6))
    assert not torch.allclose(grad, unroll(detach=False))
