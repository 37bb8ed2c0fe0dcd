"""The networks the benchmarks train, and how one training batch of each is run.

The S-TLLR and BPTT networks are the training package's own (`training.models`), built from the
run configurations of the original README's command lines (`training.config.RunConfig`), with its optimizer and
trained by its engine (`training.engine.Trainer.train_batch`, no progress bar or logging inside).
They include the models' dropout, in train mode, as real training runs them.
What exists only here:
  - `naive` (SHD only): the S-TLLR SHD model whose recurrent layer's backward forms the per-sample
    B x N x K eligibility tensors of the original code (the layer's class swapped in place);
  - `spikingjelly`: the BPTT model with its LIF neurons replaced by SpikingJelly's `LIFNode`;
  - `bptt_lean`: the BPTT model run as a lean plain-torch BPTT would be written: weights standardized
    once per sequence, the input projection (SHD) or every conv (VGG) as one call over all T, the LIF
    stepped in plain torch with beta and theta computed once.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from stllr_kernels import nn as snn
from stllr_kernels.psi import apply_psi
from stllr_kernels.reference import beta_of, pre_trace, standardize_weight, theta_of
from training.config import RunConfig
from training.data import DATASETS
from training.engine import Trainer, make_loss
from training.models import ARCHS, SpikingModel, build_model
from training.runner import make_optimizer


@dataclass(frozen=True)
class ModelSpec:
    """One paper model: the configurations of its S-TLLR and BPTT runs, and the time steps T.

    delay_ls (the loss steps) defaults to the S-TLLR run's --delay-ls."""

    name: str
    kind: str                      # "shd" or "vgg"
    stllr: RunConfig
    bptt: RunConfig
    T: int
    delay_ls: Optional[int] = None

    def __post_init__(self):
        if self.delay_ls is None:
            object.__setattr__(self, "delay_ls", self.stllr.delay_ls)

    def config(self, which: str, **changes) -> RunConfig:
        """The configuration of this model's "stllr" or "bptt" run, with `changes`."""
        return replace(self.stllr if which == "stllr" else self.bptt, **changes)

    @property
    def dataset(self):
        return DATASETS[ARCHS[self.stllr.arch].dataset]

    @property
    def input_shape(self) -> tuple:
        return tuple(self.dataset.frame_shape)

    def with_(self, **changes) -> "ModelSpec":
        return replace(self, **changes)


# The original README's command lines (the settings that change the model, loss or optimizer).
SHD = ModelSpec("SHD", "shd", T=100,
                stllr=RunConfig(arch="stllr_shd_net", dataset="SHD", lr=0.0002,
                                factors_stdp=(0.5, 1.0, 1.0, 1.0), delay_ls=90),
                bptt=RunConfig(arch="bptt_shd_net", dataset="SHD", lr=0.0002, training_mode="bptt"))
GESTURE = ModelSpec("DVS Gesture VGG", "vgg", T=20,
                    stllr=RunConfig(arch="dvs_vgg_stllr", dataset="DVSGesture", delay_ls=5,
                                    factors_stdp=(0.2, 0.75, -1.0, 1.0), pooling="MAX"),
                    bptt=RunConfig(arch="dvs_vgg_bptt", dataset="DVSGesture", delay_ls=5, pooling="MAX",
                                   training_mode="bptt"))
CIFAR10DVS = ModelSpec("CIFAR10-DVS VGG", "vgg", T=10,
                       stllr=RunConfig(arch="dvscifar10_vgg11_stllr", dataset="CIFAR10DVS", lr=0.001, delay_ls=5,
                                       factors_stdp=(0.2, 0.5, -1.0, 1.0), pooling="AVG",
                                       activation="STLLRConv2dSigmoid"),
                       bptt=RunConfig(arch="dvscifar10_vgg_bptt", dataset="CIFAR10DVS", lr=0.001, pooling="AVG",
                                      activation="GradSigmoid", training_mode="bptt"))


def make_batch(spec: ModelSpec, batch: int, device, seed: int = 0):
    """Random input spikes [T, B, ...] (rate 5 %, 10 % for frames) and labels [B]."""
    g = torch.Generator().manual_seed(seed)
    rate = 0.05 if spec.kind == "shd" else 0.1
    x = (torch.rand((spec.T, batch, *spec.input_shape), generator=g) < rate).float()
    y = torch.randint(0, spec.dataset.num_classes, (batch,), generator=g)
    return x.to(device), y.to(device)


# ----------------------------------------------------------------------------- naive S-TLLR

class NaiveRecStep(torch.autograd.Function):
    """One step of the recurrent S-TLLR layer whose backward forms the per-sample eligibility
    e_bij = alpha_pre psi_bi trpre_bj + alpha_post trpost_prev_bi x_bj as B x N x K tensors (and
    B x N x N for W_rec) and reduces L_bi e_bij over b: the original code's formula."""

    @staticmethod
    def forward(ctx, x, weight, bias, weight_rec, s_prev, trrec_prev, v, trpost, trpre, beta, theta, cfg):
        with torch.no_grad():
            trpre_new = cfg.lambda_pre * trpre + x
            v_t = beta * v + F.linear(x, weight, bias) + F.linear(s_prev, weight_rec)
            u = v_t - theta
            s = (u > 0).float()
            v_new = v_t - theta * s
            psi = apply_psi(cfg.psi, u)
            trpost_new = cfg.lambda_post * trpost + psi
        ctx.save_for_backward(x, trpre_new, trpost, psi, weight, s_prev, trrec_prev)
        ctx.cfg = cfg
        ctx.mark_non_differentiable(v_new, trpost_new, trpre_new)
        return s, v_new, trpost_new, trpre_new

    @staticmethod
    def backward(ctx, grad_s, *_):
        x, trpre, trpost_prev, psi, weight, s_prev, trrec_prev = ctx.saved_tensors
        cfg = ctx.cfg
        L = grad_s.unsqueeze(2)

        def eligibility_grad(inp, trace):
            e = (cfg.alpha_pre * psi.unsqueeze(2) * trace.unsqueeze(1)
                 + cfg.alpha_post * trpost_prev.unsqueeze(2) * inp.unsqueeze(1))
            return (L * e).sum(0)

        g = grad_s * psi
        return (g @ weight, eligibility_grad(x, trpre), g.sum(0),
                eligibility_grad(s_prev, trrec_prev)) + (None,) * 8


class NaiveLinearRecSTLLR(snn.LinearRecSTLLR):
    """LinearRecSTLLR (same parameters and states) with the naive outer-product backward, stepped
    one time step at a time and standardizing its weights at every step, as the original does."""

    def forward(self, x, loss_steps=None):
        if x.dim() != 2:
            raise ValueError("NaiveLinearRecSTLLR: one time step [B, K] at a time (online mode only)")
        batch, shape_n = x.shape[0], (x.shape[0], self.out_features)
        v, trpost = self._state("v", shape_n, x), self._state("trpost", shape_n, x)
        trpre = self._state("trpre", (batch, self.in_features), x)
        s_prev, trrec = self._state("s_prev", shape_n, x, dtype=x.dtype), self._state("trrec", shape_n, x)
        beta, theta = self._beta_theta()
        s, self.v, self.trpost, self.trpre = NaiveRecStep.apply(
            x, self.effective_weight(), self.bias, self.effective_weight_rec(), s_prev, trrec, v,
            trpost, trpre, beta, theta, self.rule)
        self.s_prev = s.detach()
        self.trrec = pre_trace(trrec, self.s_prev, self.rule.lambda_pre)
        return s


def with_naive_recurrence(model: nn.Module) -> nn.Module:
    """The same model, its recurrent S-TLLR layers running the naive backward (online steps only)."""
    for m in model.modules():
        if type(m) is snn.LinearRecSTLLR:
            m.__class__ = NaiveLinearRecSTLLR
    return model


# ----------------------------------------------------------------------------- SpikingJelly

def spikingjelly_lif(lif: snn.LIF, step_mode: str):
    """SpikingJelly's LIFNode set up as this LIF: v = beta v + I (decay_input=False,
    tau = 1/(1-beta)), soft reset with the spike detached (v_reset=None, detach_reset=True, as
    the original's BPTT LIF, docs/rule.md section 7.1), same threshold; surrogate: Sigmoid(4) for sigmoid
    (identical), SoftSign(100) for fast_sigmoid (same shape, 50x scale), PiecewiseQuadratic(1) for
    triangle (same shape, no 0.3 factor)."""
    from spikingjelly.activation_based import neuron, surrogate
    if lif.reset_mechanism != "soft":
        raise ValueError(f"spikingjelly_lif: only the soft reset maps to LIFNode, got {lif.reset_mechanism!r}")
    sg = {"sigmoid": surrogate.Sigmoid(alpha=4.0), "fast_sigmoid": surrogate.SoftSign(alpha=100.0),
          "triangle": surrogate.PiecewiseQuadratic(alpha=1.0)}[lif.psi]
    beta = float(beta_of(lif.leak.detach().double()))
    return neuron.LIFNode(tau=1.0 / (1.0 - beta), decay_input=False, v_threshold=float(theta_of(lif.threshold)),
                          v_reset=None, detach_reset=True, surrogate_function=sg, step_mode=step_mode)


class _TimeFolded(nn.Module):
    """Inside a BPTT VGG's step run on [T*B, ...]: applies a [T, B, ...] module (SpikingJelly's
    multi-step LIF, the per-sequence dropout) to the unfolded tensor."""

    def __init__(self, module: nn.Module, owner: "SpikingJellyModel", **kwargs):
        super().__init__()
        self.module, self.kwargs = module, kwargs
        self.owner = [owner]  # a list: not registered as a submodule (no cycle)

    def forward(self, x):
        T = self.owner[0].T
        return self.module(x.view(T, x.shape[0] // T, *x.shape[1:]), **self.kwargs).flatten(0, 1)


class SpikingJellyModel(SpikingModel):
    """A copy of a training BPTT model whose LIF neurons are SpikingJelly's.

    VGG: the whole sequence goes through the copy's own `step` as [T*B, ...] (convs and pools per
    frame), each LIF being SpikingJelly's multi-step LIFNode over [T, B, ...]. SHD: the input
    projection over the sequence in one GEMM, the recurrence stepping a single-step LIFNode (it
    needs s[t-1] before step t), the same leaky readout."""

    def __init__(self, bptt: SpikingModel):
        self.input_shape, self.num_classes = bptt.input_shape, bptt.num_classes
        super().__init__("BP")
        self.net, self.T = copy.deepcopy(bptt), 1
        rec = getattr(self.net, "linear1", None)
        if isinstance(rec, snn.LinearRecLIF):
            self.sj_lif = spikingjelly_lif(rec.lif, "s")
        else:
            net = self.net
            net.lifs = nn.ModuleList(_TimeFolded(spikingjelly_lif(lif, "m"), self) for lif in net.lifs)
            net.drops = nn.ModuleList(_TimeFolded(d, self, sequence=True) for d in net.drops)

    def reset_states(self) -> None:
        from spikingjelly.activation_based import functional as sj_functional
        snn.reset_states(self)
        sj_functional.reset_net(self)

    def forward_step(self, x):
        raise ValueError("SpikingJellyModel: runs whole sequences only: call model.sequence(x, loss_steps)")

    def forward_sequence(self, x, loss_steps: int):
        if hasattr(self, "sj_lif"):
            rec, readout = self.net.linear1, self.net.last_layer
            s, outs = torch.zeros(x.shape[1], rec.rec.out_features, device=x.device), []
            for c in rec.fc(x):
                s = self.sj_lif(c + rec.rec(s))
                outs.append(readout(s))
            return torch.stack(outs)
        self.T = x.shape[0]
        out = self.net.forward_step(x.flatten(0, 1))
        return out.view(self.T, x.shape[1], *out.shape[1:])


# ----------------------------------------------------------------------------- lean plain-torch BPTT

class _LeanLIFSequence(nn.Module):
    """The LIF of `nn.LIF` over a whole sequence [T, B, ...] in plain torch, beta and theta computed
    once; the same arithmetic as the step-by-step LIF (soft or hard reset, Psi surrogate)."""

    def __init__(self, lif: snn.LIF):
        super().__init__()
        self.lif = lif

    def forward(self, currents):
        lif = self.lif
        beta, theta = beta_of(lif.leak), theta_of(lif.threshold)
        v, spikes = None, []
        for current in currents:
            v = current if v is None else beta * v + current
            s = snn.spike_fn(v - theta, lif.psi)
            v = v - theta * s.detach() if lif.reset_mechanism == "soft" else v * (1.0 - s.detach())
            spikes.append(s)
        return torch.stack(spikes)


class LeanBPTTModel(SpikingModel):
    """A copy of a training BPTT model run as a lean plain-torch BPTT: SHD standardizes W and W_rec
    once, projects the whole input sequence in one GEMM, steps only W_rec s[t-1] and the LIF, and
    runs the readout's GEMM over all T before its leaky scan; the VGG runs every conv and pool on
    [T*B, ...] (standardization once per sequence) with a multi-step plain-torch LIF."""

    def __init__(self, bptt: SpikingModel):
        self.input_shape, self.num_classes = bptt.input_shape, bptt.num_classes
        super().__init__("BP")
        self.net, self.T = copy.deepcopy(bptt), 1
        if not isinstance(getattr(self.net, "linear1", None), snn.LinearRecLIF):
            net = self.net
            net.lifs = nn.ModuleList(_TimeFolded(_LeanLIFSequence(lif), self) for lif in net.lifs)
            net.drops = nn.ModuleList(_TimeFolded(d, self, sequence=True) for d in net.drops)

    def forward_step(self, x):
        raise ValueError("LeanBPTTModel: runs whole sequences only: call model.sequence(x, loss_steps)")

    def forward_sequence(self, x, loss_steps: int):
        if isinstance(getattr(self.net, "linear1", None), snn.LinearRecLIF):
            rec, readout = self.net.linear1, self.net.last_layer
            w = standardize_weight(rec.fc.weight, rec.fc.gain)
            w_rec = standardize_weight(rec.rec.weight, rec.rec.gain)
            lif, beta, theta = rec.lif, beta_of(rec.lif.leak), theta_of(rec.lif.threshold)
            v, s, spikes = None, None, []
            for current in F.linear(x, w, rec.fc.bias):
                v = current if v is None else beta * v + current + F.linear(s, w_rec)
                s = snn.spike_fn(v - theta, lif.psi)
                v = v - theta * s.detach() if lif.reset_mechanism == "soft" else v * (1.0 - s.detach())
                spikes.append(s)
            beta_out, v, outs = beta_of(readout.leak), None, []
            for current in readout.fc(torch.stack(spikes)):
                v = current if v is None else beta_out * v + current
                outs.append(v)
            return torch.stack(outs)
        self.T = x.shape[0]
        out = self.net.forward_step(x.flatten(0, 1))
        return out.view(self.T, x.shape[1], *out.shape[1:])


def spikingjelly_available() -> Optional[str]:
    """None if SpikingJelly imports, else why not."""
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401
    except Exception as exc:  # not installed or broken: the benchmarks skip it and say so
        return f"{type(exc).__name__}: {exc}"
    return None


# ----------------------------------------------------------------------------- methods

# method -> (which run's configuration, changes to it, model transform)
METHODS = {
    "stllr_online": ("stllr", {"step_mode": "online"}, None),         # stepped, one optimizer step
    "stllr_fused": ("stllr", {"step_mode": "sequence"}, None),        # time-fused sequence calls
    "stllr_chunk": ("stllr", {"step_mode": "chunk"}, None),           # time-fused chunks (--chunk-size)
    "naive": ("stllr", {"step_mode": "online"}, with_naive_recurrence),
    "bptt": ("bptt", {}, None),
    "spikingjelly": ("bptt", {"step_mode": "sequence"}, SpikingJellyModel),
    "bptt_lean": ("bptt", {"step_mode": "sequence"}, LeanBPTTModel),
}


def methods(spec: ModelSpec) -> list[str]:
    """The methods that apply to a model (the naive formula is the recurrent layer's: SHD only)."""
    return [m for m in METHODS if m != "naive" or spec.kind == "shd"]


def make_trainer(spec: ModelSpec, method: str, device, chunk_size: Optional[int] = None) -> Trainer:
    """The training CLI's model, optimizer and loss for this method; train_batch(x, y) runs a batch.
    chunk_size: the chunk method's --chunk-size (default: the flag's)."""
    which, changes, transform = METHODS[method]
    if chunk_size is not None:
        changes = {**changes, "chunk_size": chunk_size}
    config = spec.config(which, **changes)
    model = build_model(config)
    if transform is not None:
        model = transform(model)
    model = model.to(device)
    opt = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    loss = make_loss(config.loss, spec.dataset.num_classes)
    return Trainer(model, opt, loss, config.training_mode, config.step_mode, spec.delay_ls,
                   chunk_size=config.chunk_size)
