"""Every architecture builds and learns one step; step and sequence modes agree; DFA hooks work."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_close_policy

from training.config import RunConfig
from training.data import DATASETS
from training.engine import Trainer
from training.models import ACTIVATIONS, ARCHS, build_model
from training.models.common import Feedback, FeedbackHook, stllr_psi
from training.models.vgg import VGGSTLLR

from conftest import tol
from stllr_kernels.psi import PSI_FUNCTIONS


def make_config(arch, **kw):
    return RunConfig(**{"arch": arch, "dataset": ARCHS[arch].dataset, **kw})


def random_input(arch, steps, batch, seed):
    gen = torch.Generator().manual_seed(seed)
    shape = DATASETS[ARCHS[arch].dataset].frame_shape
    return (torch.rand(steps, batch, *shape, generator=gen) < 0.3).float()


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_every_arch_steps_forward_and_backward(arch, seed):
    torch.manual_seed(seed)
    model = build_model(make_config(arch))
    spec = DATASETS[ARCHS[arch].dataset]
    x = random_input(arch, 1, 1, seed)[0]
    head = getattr(model, "classifier", None) or model.last_layer
    head_inputs = []
    head.register_forward_hook(lambda module, inputs, out: head_inputs.append(inputs[0].detach()))
    model.reset_states()
    logits = model.step(x)
    assert logits.shape == (1, spec.num_classes)
    labels = torch.tensor([spec.num_classes - 1])
    F.cross_entropy(logits, labels).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads[-2:])  # the head always learns
    assert any(float(g.abs().sum()) > 0 for g in grads if g is not None)
    if hasattr(head, "weight"):  # a linear head (nn.Linear, or the readout at its first step: trpre = x)
        err = torch.softmax(logits.detach(), 1) - F.one_hot(labels, spec.num_classes).float()
        h = head_inputs[0].flatten(1)
        assert_close_policy(head.weight.grad, (err.t() @ h).view_as(head.weight), msg="head weight gradient")
        assert_close_policy(head.bias.grad, err.sum(0), msg="head bias gradient")


def test_alias_and_layer_settings():
    assert ARCHS["dvscifar10_vgg11_stllr"] is ARCHS["dvscifar10_vgg_stllr"]
    shd = build_model(make_config("stllr_shd_net"))
    assert float(shd.linear1.leak) == 5.0 and shd.linear1.rule.psi == "fast_sigmoid"
    assert shd.last_layer.accumulate and float(shd.last_layer.leak) == 5.0
    assert shd.last_layer.factors == (0.0, 0.99, 0.0, 1.0)
    assert float(build_model(make_config("bptt_shd_net")).linear1.lif.leak) == 15.0
    assert all(b.abs().sum() == 0 for n, b in shd.named_parameters() if n.endswith("bias"))


def test_activation_table_maps_onto_psi():
    assert set(ACTIVATIONS) == {"Surrogate", "LinearSpike", "STLLRConv2dGradNormOut", "STLLRConv2dGradExp",
                                "STLLRConv2dSigmoid", "GradSigmoid", "STLLRLinearRecGradNorm",
                                "STLLRLinearRecGradSigmoid"}
    assert all(a.psi in PSI_FUNCTIONS for a in ACTIVATIONS.values())
    assert stllr_psi("STLLRConv2dGradNormOut") == {"psi": "triangle", "post": "spike"}
    assert stllr_psi("LinearSpike")["psi"] is None  # each layer keeps its own default, as the original
    vgg = build_model(make_config("dvs_vgg_stllr", activation="STLLRConv2dSigmoid"))
    assert {c.rule.psi for c in vgg.convs} == {"sigmoid"}
    vgg = build_model(make_config("dvs_vgg_stllr"))
    assert {c.rule.psi for c in vgg.convs} == {"triangle"} and float(vgg.convs[0].leak) == 0.0


def _grads_after_batch(model, x, labels, step_mode, delay):
    model = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(model, opt, F.cross_entropy, "stllr", step_mode, delay)
    torch.manual_seed(0)  # dropout masks
    pred = trainer.train_batch(x, labels)
    return model, pred


@pytest.mark.parametrize("arch,feedback", [("digits_stllr", "BP"), ("digits_stllr", "DFA"),
                                           ("stllr_shd_net", "BP"), ("stllr_shd_net", "sDFA"),
                                           ("small_vgg", "BP"), ("small_vgg", "DFA")])
def test_online_and_sequence_give_the_same_weights(arch, feedback, seed):
    torch.manual_seed(seed)
    if arch == "small_vgg":  # the CIFAR10-DVS VGG (dropout 0.1, AVG pooling), narrow, on 8x8 frames, to stay quick
        model = VGGSTLLR(2, 8, 8, 10, "LinearSpike", [0.2, 0.5, -1, 1], "AVG", 0.1, feedback, channel_scale=1 / 16)
        x = (torch.rand(4, 2, 2, 8, 8, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
    else:
        model = build_model(make_config(arch, feedback_mode=feedback))
        x = random_input(arch, 7, 3, seed)
    batch = x.shape[1]
    labels = torch.arange(batch) % model.num_classes
    online, pred_online = _grads_after_batch(model, x, labels, "online", 3)
    sequence, pred_sequence = _grads_after_batch(model, x, labels, "sequence", 3)
    # the prediction sums T steps of the largest fan-in; a parameter's update also the batch
    fan_in = max(p[0].numel() for p in model.parameters() if p.dim() >= 2)
    assert_close_policy(pred_sequence, pred_online, reduction=x.shape[0] * fan_in)
    changed = 0
    for (name, p0), p1, p2 in zip(model.named_parameters(), online.parameters(), sequence.parameters()):
        assert_close_policy(p2, p1, reduction=x.shape[0] * batch * fan_in, msg=name)
        changed += int(not torch.equal(p0, p1))
    assert changed >= 2


def test_dfa_signal_is_the_projected_error(seed):
    """The hooked layer's gradient equals that of (softmax(logits) - onehot) @ B fed in directly."""
    torch.manual_seed(seed)
    model = build_model(make_config("digits_stllr", feedback_mode="DFA"))
    x = random_input("digits_stllr", 1, 4, seed)[0]
    labels = torch.tensor([0, 3, 5, 9])
    model.reset_states()
    model.feedback.set_target(labels)
    logits = model.step(x)
    F.cross_entropy(logits, labels).backward()
    dfa_grad = model.linear1.weight.grad.clone()
    err = torch.softmax(logits.detach(), 1) - F.one_hot(labels, 10).float()
    signal = err @ model.hook1.matrix
    model.zero_grad()
    model.reset_states()
    model.feedback.set_target(None)
    model.linear1(x).backward(signal)
    assert_close_policy(dfa_grad, model.linear1.weight.grad, reduction=x.shape[0])
    assert not model.hook1.matrix.requires_grad


def original_feedback_bound(shape) -> float:
    """The original's B: kaiming_uniform_ with its defaults (a = 0, leaky_relu gain sqrt(2), fan_in
    = the hooked layer's size) on [classes, *shape], i.e. U(-sqrt(6 / fan_in), +sqrt(6 / fan_in))."""
    return math.sqrt(6 / math.prod(shape))


@pytest.mark.parametrize("classes,shape", [(20, (450,)), (10, (512,)), (11, (16, 4, 4))],
                         ids=["shd", "digits", "conv"])
def test_dfa_feedback_matrix_is_drawn_as_the_original(classes, shape, seed):
    """The same draw as the original's U(+-sqrt(6 / fan_in)) from the same seed, and over the draw
    the uniform's bound and spread (a 2.45x smaller matrix, kaiming's a = sqrt(5), fails both)."""
    bound = original_feedback_bound(shape)
    torch.manual_seed(seed)
    hook = FeedbackHook(Feedback("DFA", classes), shape)
    torch.manual_seed(seed)
    assert_close_policy(hook.matrix, torch.empty(classes, *shape).uniform_(-bound, bound))
    values = hook.matrix.double()
    assert values.abs().max() <= bound * (1 + 1e-6)
    assert values.abs().max() >= 0.99 * bound  # P(fail) = 0.99^(2816 or more) < 1e-12
    assert abs(values.std().item() / (bound / math.sqrt(3)) - 1) < 0.05  # its own error ~1%
    assert not hook.matrix.requires_grad and "matrix" in dict(hook.named_buffers())


def test_every_dfa_hook_of_the_models_has_the_original_scale():
    models = [build_model(make_config(arch, feedback_mode="DFA")) for arch in ("digits_stllr", "stllr_shd_net")]
    models.append(VGGSTLLR(2, 8, 8, 10, "LinearSpike", [0.2, 0.5, -1, 1], "AVG", 0.0, "DFA", channel_scale=1 / 16))
    hooks = [m for model in models for m in model.modules() if isinstance(m, FeedbackHook)]
    assert len(hooks) >= 10
    for hook in hooks:
        bound = original_feedback_bound(hook.matrix.shape[1:])
        assert 0.95 * bound <= hook.matrix.abs().max() <= bound * (1 + 1e-6), hook.matrix.shape


def test_dfa_sgd_update_is_the_originals(seed):
    """One S-TLLR batch under SGD: the hidden layer moves by -lr times the gradient of its output
    contracted with the original's signal (softmax(logits_t) - onehot) @ B at each loss step, B of
    the original's scale."""
    steps, delay, lr = 5, 3, 0.1
    model = build_model(make_config("digits_stllr", feedback_mode="DFA"))
    before = copy.deepcopy(model)
    x = random_input("digits_stllr", steps, 6, seed)
    labels = torch.arange(6) % 10
    Trainer(model, torch.optim.SGD(model.parameters(), lr=lr), F.cross_entropy, "stllr", "online", delay).train_batch(
        x, labels)
    # the original's formula, step by step on the untouched copy (the hook left out: the signal is fed in)
    matrix = before.hook1.matrix
    assert matrix.abs().max() >= 0.95 * original_feedback_bound(matrix.shape[1:])
    before.reset_states()
    before.feedback.set_target(None)
    for t in range(steps):
        with torch.set_grad_enabled(t >= steps - delay):
            hidden = before.linear1(x[t])
            logits = before.classifier(hidden.detach())
            if t >= steps - delay:
                error = torch.softmax(logits.detach(), 1) - F.one_hot(labels, 10).float()
                hidden.backward(error @ matrix)
    for name in ("weight", "bias"):
        update = getattr(model.linear1, name) - getattr(before.linear1, name)
        expected = -lr * getattr(before.linear1, name).grad
        assert_close_policy(update, expected, reduction=steps * x.shape[1] * 64, msg=name)
    assert not torch.equal(model.linear1.weight, before.linear1.weight)


def small_vgg(dropout: float = 0.5) -> VGGSTLLR:
    """The S-TLLR VGG, narrow, on 8x8 frames (quick), with a dropout whose masks matter."""
    return VGGSTLLR(2, 8, 8, 10, "LinearSpike", [0.2, 0.5, -1, 1], "AVG", dropout, "BP", channel_scale=1 / 16)


@pytest.mark.parametrize("arch", ["digits_stllr", "digits_bptt", "stllr_shd_net", "small_vgg"])
def test_a_sequence_needs_loss_steps_and_says_how(arch, seed):
    model = small_vgg() if arch == "small_vgg" else build_model(make_config(arch))
    x = (torch.rand(3, 2, *model.input_shape, generator=torch.Generator().manual_seed(seed)) < 0.3).float()
    for call in (lambda: model(x), lambda: model.sequence(x)):
        model.reset_states()
        with pytest.raises(ValueError, match=r"loss_steps.*model\.sequence\(x, loss_steps\).*model\.step\(x\[t\]\)"):
            call()
    with pytest.raises(ValueError, match=r"model\.sequence\(x, loss_steps\)"):
        model.step(x)
    with pytest.raises(ValueError, match=r"model\.step\(x\)"):
        model.sequence(x[0], 1)
    with pytest.raises(ValueError, match="a step takes no loss_steps"):
        model(x[0], 2)
    for bad in (-1, 4, 1.0, True):
        with pytest.raises(ValueError, match=r"loss_steps must be an int in \[0, T=3\]"):
            model.sequence(x, bad)
    model.reset_states()
    assert model.sequence(x, 2).shape == (3, 2, model.num_classes)


def test_dropout_mask_is_one_per_sequence_in_both_modes(seed):
    """Sequence mode draws each layer's mask for [B, ...] once (not [T, B, ...]), as step mode does at
    its first step; seeded alike, the two modes give the same outputs."""
    torch.manual_seed(seed)
    model = small_vgg().train()
    x = (torch.rand(4, 3, 2, 8, 8, generator=torch.Generator().manual_seed(seed)) < 0.5).float()

    def masks():
        return [d.mask.clone() for d in model.drops]

    torch.manual_seed(seed + 1)
    model.reset_states()
    out_sequence = model.sequence(x, 0)
    seq_masks = masks()
    torch.manual_seed(seed + 1)
    model.reset_states()
    out_step = torch.stack([model.step(x[t]) for t in range(x.shape[0])])
    step_masks = masks()
    for conv, m_seq, m_step in zip(model.convs, seq_masks, step_masks):
        assert m_seq.shape == (3, conv.out_channels, *m_seq.shape[2:]) and m_seq.dim() == 4
        assert torch.equal(m_seq, m_step)
    assert any((m == 0).any() for m in seq_masks)  # the masks dropped something: they matter
    torch.testing.assert_close(out_sequence, out_step, **tol(torch.float32, 2 * 3 * 3 * 8))
