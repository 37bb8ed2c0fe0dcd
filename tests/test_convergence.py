"""Convergence (in the style of Liger-Kernel's): a few optimizer steps of small S-TLLR models on the
embedded Digits data give the same loss at every step, and the same final parameters, with backend
`cpu` and `triton` (interpreted on CPU) as with backend `torch` (the reference ops).

A wrong gradient anywhere in a backend changes the weights after the first step and so every
later loss: `test_a_wrong_gradient_fails_the_comparison` checks that the comparison notices one
term scaled by 10 %.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import assert_close_policy, backend, seed_salt

pytestmark = pytest.mark.slow  # training runs end to end (`make test-seeds` runs them under every salt)

import stllr_kernels
from stllr_kernels import backends
from stllr_kernels.nn import Conv2dSTLLR, LinearRecSTLLR, LinearSTLLR
from training.data import DigitsSpikes, pad_collate
from training.engine import Trainer
from training.models import DigitsSTLLR
from training.models.base import SpikingModel

STEPS, BATCH, BATCHES = 6, 16, 3  # time steps per sample, samples per batch, optimizer steps
FACTORS = [0.5, 0.75, -0.5, 1.0]  # alpha_post != 0: both terms of the rule carry weight


class ConvRecDigits(SpikingModel):
    """Every S-TLLR layer kind on the 8x8 digits: conv, recurrent, and an accumulating readout."""
    input_shape, num_classes = (64,), 10

    def __init__(self):
        super().__init__("BP")
        self.conv = Conv2dSTLLR(1, 4, 3, stride=2, padding=1, leak=0.0, factors=FACTORS, psi="sigmoid")
        self.rec = LinearRecSTLLR(4 * 4 * 4, 24, leak=2.0, factors=FACTORS, psi="sigmoid")
        self.readout = LinearSTLLR(24, 10, leak=5.0, accumulate=True, factors=(0.0, 0.99, 0.0, 1.0))

    def forward_step(self, x):
        return self.readout(self.rec(self.conv(x.view(-1, 1, 8, 8) * 2.0).flatten(1)))

    def forward_sequence(self, x, loss_steps):
        T, B = x.shape[:2]
        h = self.conv(x.reshape(T, B, 1, 8, 8) * 2.0, loss_steps=loss_steps)
        return self.readout(self.rec(h.flatten(2), loss_steps=loss_steps), loss_steps=loss_steps)


MODELS = {
    # the training package's Digits model, narrower
    "digits": lambda: DigitsSTLLR("STLLRConv2dSigmoid", FACTORS, hidden=40),
    "conv_rec": ConvRecDigits,
}


@pytest.fixture(scope="module")
def digits_batches():
    """The first BATCHES x BATCH samples of the Digits test split (a fixed spike encoding)."""
    data = DigitsSpikes(train=False, steps=STEPS, seed=0)
    samples = [data[i] for i in range(BATCHES * BATCH)]
    return [pad_collate(samples[i:i + BATCH]) for i in range(0, len(samples), BATCH)]


def train(model, batches, backend_name, step_mode):
    """SGD with momentum (not Adam, which would forgive a gradient scaled as a whole) on the
    batches; returns the loss of every step (on the batch, before its update) and the model."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(model, optimizer, F.cross_entropy, "stllr", step_mode, delay_ls=STEPS // 2)
    losses = []
    with backend(backend_name):
        assert stllr_kernels.get_backend_name("cpu") == backend_name
        for x, labels in batches:
            pred = trainer.train_batch(x, labels)
            losses.append(F.cross_entropy(pred, labels))
    return torch.stack(losses), model


def reduction_of(model: nn.Module) -> int:
    """The longest sum behind a value after these steps: a parameter's gradient sums the batch
    and the steps (and positions), a layer's output its fan-in; bounded by batch x steps x the
    largest fan-in."""
    fan_in = max(p[0].numel() for p in model.parameters() if p.dim() >= 2)
    return BATCH * STEPS * fan_in


def assert_same_training(got, want, model, msg):
    (got_losses, got_model), (want_losses, want_model) = got, want
    red = reduction_of(model)
    assert_close_policy(got_losses, want_losses, reduction=red, msg=f"{msg}: losses per step")
    for (name, p), q in zip(want_model.named_parameters(), got_model.parameters()):
        assert_close_policy(q.detach(), p.detach(), reduction=red, msg=f"{msg}: final {name}")


def check_backend(name):
    reason = backends.unavailable_reason(name, "cpu")
    if reason is not None:
        pytest.skip(f"backend {name!r} on cpu: {reason}")


# (backend, model, step mode): cpu in all four; triton (slow in its interpreter) the online ops on
# the Digits model and the time-fused ones on every layer kind
CASES = ([("cpu", m, s) for m in MODELS for s in ("online", "sequence")]
         + [("triton", "digits", "online"), ("triton", "conv_rec", "sequence")])


@pytest.fixture(scope="module")
def torch_runs(digits_batches):
    """(model name, step mode) -> (initial model, the torch backend's run): each computed once."""
    runs = {}

    def run(model_name, step_mode):
        if (model_name, step_mode) not in runs:
            torch.manual_seed(seed_salt())  # the initial weights follow STLLR_TEST_SEED_SALT
            model = MODELS[model_name]()
            runs[model_name, step_mode] = model, train(model, digits_batches, "torch", step_mode)
        return runs[model_name, step_mode]
    return run


@pytest.mark.parametrize("backend_name,model_name,step_mode", CASES, ids=["-".join(c) for c in CASES])
def test_training_matches_the_torch_backend(digits_batches, torch_runs, backend_name, model_name, step_mode):
    check_backend(backend_name)
    model, want = torch_runs(model_name, step_mode)
    got = train(model, digits_batches, backend_name, step_mode)
    # the steps trained: the loss moved and every parameter moved
    assert (want[0][0] - want[0][-1]).abs() > 0.05, f"the loss barely moved: {want[0].tolist()}"
    for (name, p0), p in zip(model.named_parameters(), want[1].parameters()):
        if name.endswith("weight"):
            assert not torch.equal(p0, p), f"{name} never moved"
    assert_same_training(got, want, model, f"{backend_name} vs torch")


def test_a_wrong_gradient_fails_the_comparison(digits_batches, torch_runs, monkeypatch):
    """Scale the non-causal term of the cpu backend's linear dW by 1.1: the comparison must fail."""
    check_backend("cpu")
    model, want = torch_runs("digits", "online")
    with backend("cpu"):
        ops = backends.get_ops("cpu")
    real = ops.linear_backward

    def wrong(grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post, alpha_pre, *flags):
        dx, _, db = real(grad_s, psi, causal, trpost_prev, x, trpre, weight, alpha_post, alpha_pre, *flags)
        _, dw, _ = real(grad_s, psi, causal, trpost_prev, x, trpre, weight, 1.1 * alpha_post, alpha_pre, *flags)
        return dx, dw, db

    monkeypatch.setattr(ops, "linear_backward", wrong)
    got = train(model, digits_batches, "cpu", "online")
    with pytest.raises(AssertionError):
        assert_same_training(got, want, model, "wrong cpu vs torch")
