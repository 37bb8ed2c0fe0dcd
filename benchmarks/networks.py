"""The networks the benchmarks train, built four ways, and one training batch for each way.

Shapes follow SPEC section 7: the SHD model (700 -> recurrent 450 -> leaky readout 20) and the VGG of
the DVS Gesture / CIFAR10-DVS runs (64, 128, pool, 256, 256, pool, 512, 512, pool, 512, 512, global
average pool, linear). Each exists as
  - S-TLLR with this package's layers (`stllr`): stepped online, or handed the whole sequence
    (time-fused mode);
  - S-TLLR with the naive per-sample outer-product backward (`naive`, SHD only): what the original
    code does for its recurrent layer, B x N x K eligibility tensors per step;
  - BPTT with this package's baseline layers (`bptt`);
  - BPTT of the same network with SpikingJelly's LIF neurons (`spikingjelly`).
Dropout is left out everywhere (it changes no cost worth measuring).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from stllr_kernels import nn as snn
from stllr_kernels.reference import pre_trace
from stllr_kernels.psi import apply_psi

VGG_CHANNELS = (64, 128, "pool", 256, 256, "pool", 512, 512, "pool", 512, 512)


@dataclass(frozen=True)
class ModelSpec:
    """One paper model: its input, time steps, loss steps (--delay-ls) and rule settings."""

    name: str
    kind: str                      # "shd" or "vgg"
    input_shape: tuple             # per sample, per step
    classes: int
    T: int
    delay_ls: int
    factors: tuple
    psi: str
    pool: str = "max"              # vgg only
    extra: dict = field(default_factory=dict)

    def with_(self, **changes) -> "ModelSpec":
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update(changes)
        return ModelSpec(**fields)


SHD = ModelSpec("SHD", "shd", (700,), 20, T=100, delay_ls=90, factors=(0.5, 1.0, 1.0, 1.0),
                psi="fast_sigmoid", extra={"hidden": 450})
GESTURE = ModelSpec("DVS Gesture VGG", "vgg", (2, 32, 32), 11, T=20, delay_ls=5,
                    factors=(0.2, 0.75, -1.0, 1.0), psi="triangle", pool="max")
CIFAR10DVS = ModelSpec("CIFAR10-DVS VGG", "vgg", (2, 48, 48), 10, T=10, delay_ls=5,
                       factors=(0.2, 0.5, -1.0, 1.0), psi="sigmoid", pool="avg")
READOUT_FACTORS = (0.0, 0.99, 0.0, 1.0)  # the SHD readout's factors (SPEC section 4)
SHD_LEAK_STLLR, SHD_LEAK_BPTT, VGG_LEAK = 5.0, 15.0, 0.0


def make_batch(spec: ModelSpec, batch: int, device, seed: int = 0):
    """Random input spikes [T, B, ...] (rate 5 %, 10 % for frames) and labels [B]."""
    g = torch.Generator().manual_seed(seed)
    rate = 0.05 if spec.kind == "shd" else 0.1
    x = (torch.rand((spec.T, batch, *spec.input_shape), generator=g) < rate).float()
    y = torch.randint(0, spec.classes, (batch,), generator=g)
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
    """LinearRecSTLLR (same parameters and states) with the naive outer-product backward."""

    def _step(self, x):
        batch, shape_n = x.shape[0], (x.shape[0], self.out_features)
        v, trpost = self._state("v", shape_n, x), self._state("trpost", shape_n, x)
        trpre = self._state("trpre", (batch, self.in_features), x)
        s_prev, trrec = self._state("s_prev", shape_n, x), self._state("trrec", shape_n, x)
        beta, theta = self._beta_theta()
        s, self.v, self.trpost, self.trpre = NaiveRecStep.apply(
            x, self.effective_weight(), self.bias, self.effective_weight_rec(), s_prev, trrec, v,
            trpost, trpre, beta, theta, self.rule)
        self.s_prev = s.detach()
        self.trrec = pre_trace(trrec, self.s_prev, self.rule.lambda_pre)
        return s


# ----------------------------------------------------------------------------- S-TLLR models

class SHDSTLLR(nn.Module):
    def __init__(self, spec: ModelSpec, naive: bool = False):
        super().__init__()
        rec = NaiveLinearRecSTLLR if naive else snn.LinearRecSTLLR
        hidden = spec.extra["hidden"]
        self.rec = rec(spec.input_shape[0], hidden, leak=SHD_LEAK_STLLR, factors=spec.factors, psi=spec.psi)
        self.readout = snn.LinearSTLLR(hidden, spec.classes, leak=SHD_LEAK_STLLR, accumulate=True,
                                       factors=READOUT_FACTORS)

    def forward(self, x, loss_steps: Optional[int] = None):
        if loss_steps is None:
            return self.readout(self.rec(x))
        return self.readout(self.rec(x, loss_steps=loss_steps), loss_steps=loss_steps)


class VGGSTLLR(nn.Module):
    """The original's S-TLLR VGG: Conv2dSTLLR layers (leak 0), pools, global pool, nn.Linear."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        layers, cin = [], spec.input_shape[0]
        for c in spec.extra.get("channels", VGG_CHANNELS):
            if c == "pool":
                layers.append(nn.MaxPool2d(2) if spec.pool == "max" else nn.AvgPool2d(2))
            else:
                layers.append(snn.Conv2dSTLLR(cin, c, 3, 1, 1, leak=VGG_LEAK, factors=spec.factors,
                                              psi=spec.psi))
                cin = c
        self.features = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, spec.classes)

    def forward(self, x, loss_steps: Optional[int] = None):
        seq = loss_steps is not None
        for layer in self.features:
            if isinstance(layer, snn.Conv2dSTLLR):
                x = layer(x, loss_steps=loss_steps) if seq else layer(x)
            else:
                x = _per_frame(layer, x) if seq else layer(x)
        return self.fc(x.mean((-2, -1)))


def _per_frame(module: nn.Module, x_seq):
    """Apply a stateless 4-d module to a [T, B, C, H, W] sequence."""
    out = module(x_seq.flatten(0, 1))
    return out.view(*x_seq.shape[:2], *out.shape[1:])


# ----------------------------------------------------------------------------- BPTT models

class SHDBPTT(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        hidden = spec.extra["hidden"]
        self.rec = snn.LinearRecLIF(spec.input_shape[0], hidden, leak=SHD_LEAK_BPTT, psi=spec.psi)
        self.readout = snn.LeakyReadout(hidden, spec.classes, leak=SHD_LEAK_STLLR)

    def forward(self, x_seq):
        return torch.stack([self.readout(self.rec(x)) for x in x_seq])


class VGGBPTT(nn.Module):
    """WSConv2d over the whole sequence at once, then the package's LIF stepped through time."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        layers, cin = [], spec.input_shape[0]
        for c in spec.extra.get("channels", VGG_CHANNELS):
            if c == "pool":
                layers.append(nn.MaxPool2d(2) if spec.pool == "max" else nn.AvgPool2d(2))
            else:
                layers += [snn.WSConv2d(cin, c, 3, 1, 1), snn.LIF(leak=VGG_LEAK, psi=spec.psi)]
                cin = c
        self.features = nn.ModuleList(layers)
        self.fc = nn.Linear(cin, spec.classes)

    def forward(self, x_seq):
        for layer in self.features:
            if isinstance(layer, snn.LIF):
                x_seq = torch.stack([layer(c) for c in x_seq])
            else:
                x_seq = _per_frame(layer, x_seq)
        return self.fc(x_seq.mean((-2, -1)))


# ----------------------------------------------------------------------------- SpikingJelly models

def _sj_lif(leak: float, psi: str, step_mode: str):
    """SpikingJelly's LIF set up as SPEC's LIF: v = beta v + I (decay_input=False, tau = 1/(1-beta)),
    soft reset (v_reset=None), threshold 0.6; surrogate: Sigmoid(4) for sigmoid (identical),
    SoftSign(100) for fast_sigmoid (same shape, 50x scale), PiecewiseQuadratic(1) for triangle
    (same shape, no 0.3 factor)."""
    from spikingjelly.activation_based import neuron, surrogate
    sg = {"sigmoid": surrogate.Sigmoid(alpha=4.0), "fast_sigmoid": surrogate.SoftSign(alpha=100.0),
          "triangle": surrogate.PiecewiseQuadratic(alpha=1.0)}[psi]
    beta = float(torch.sigmoid(torch.tensor(leak, dtype=torch.float64)))
    tau = 1.0 / (1.0 - beta)
    return neuron.LIFNode(tau=tau, decay_input=False, v_threshold=0.6, v_reset=None,
                          surrogate_function=sg, step_mode=step_mode)


class SHDSpikingJelly(nn.Module):
    """Input projection over the sequence in one GEMM; the recurrence steps SpikingJelly's LIF
    (single-step mode: the recurrence needs s[t-1] before step t); a leaky readout."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        hidden = spec.extra["hidden"]
        self.fc = snn.WSLinear(spec.input_shape[0], hidden)
        self.rec = snn.WSLinear(hidden, hidden, bias=False)
        self.lif = _sj_lif(SHD_LEAK_BPTT, spec.psi, "s")
        self.out = nn.Linear(hidden, spec.classes)
        self.beta = float(torch.sigmoid(torch.tensor(SHD_LEAK_STLLR)))

    def forward(self, x_seq):
        currents = self.fc(x_seq)
        s = torch.zeros_like(currents[0])
        spikes = []
        for c in currents:
            s = self.lif(c + self.rec(s))
            spikes.append(s)
        readout_in = self.out(torch.stack(spikes))
        v, outs = 0.0, []
        for c in readout_in:
            v = self.beta * v + c
            outs.append(v)
        return torch.stack(outs)


class VGGSpikingJelly(nn.Module):
    """WSConv2d and pools over [T*B] (SeqToANNContainer), SpikingJelly's multi-step LIF."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        from spikingjelly.activation_based import layer as sj_layer
        layers, cin = [], spec.input_shape[0]
        for c in spec.extra.get("channels", VGG_CHANNELS):
            if c == "pool":
                layers.append(sj_layer.SeqToANNContainer(nn.MaxPool2d(2) if spec.pool == "max"
                                                         else nn.AvgPool2d(2)))
            else:
                layers += [sj_layer.SeqToANNContainer(snn.WSConv2d(cin, c, 3, 1, 1)),
                           _sj_lif(VGG_LEAK, spec.psi, "m")]
                cin = c
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, spec.classes)

    def forward(self, x_seq):
        return self.fc(self.features(x_seq).mean((-2, -1)))


def reset_all(model: nn.Module) -> None:
    snn.reset_states(model)
    if any(type(m).__module__.startswith("spikingjelly") for m in model.modules()):
        from spikingjelly.activation_based import functional as sj_functional
        sj_functional.reset_net(model)


# ----------------------------------------------------------------------------- training batches

def stllr_online_batch(model, x, y, delay_ls: int, opt) -> None:
    """SPEC section 6 `stllr`: step through T, backward each of the last D steps' loss, one optimizer
    step. Steps before the loss window run without autograd (they keep nothing)."""
    reset_all(model)
    opt.zero_grad()
    T = x.shape[0]
    for t in range(T):
        if t < T - delay_ls:
            with torch.no_grad():
                model(x[t])
        else:
            F.cross_entropy(model(x[t]), y).backward()
    opt.step()


def stllr_fused_batch(model, x, y, delay_ls: int, opt) -> None:
    """The same batch in time-fused mode: the whole sequence per layer, one backward."""
    reset_all(model)
    opt.zero_grad()
    D = min(delay_ls, x.shape[0])
    out = model(x, loss_steps=D)
    sum(F.cross_entropy(o, y) for o in out[-D:]).backward()
    opt.step()


def bptt_batch(model, x, y, delay_ls: int, opt) -> None:
    """SPEC section 6 `bptt`: loss on the summed output, one backward through the whole graph."""
    reset_all(model)
    opt.zero_grad()
    F.cross_entropy(model(x).sum(0), y).backward()
    opt.step()


# method name -> (model builder, batch function); naive only for the SHD model
def methods(spec: ModelSpec) -> dict[str, tuple[Callable, Callable]]:
    shd = spec.kind == "shd"
    table = {
        "stllr_online": (SHDSTLLR if shd else VGGSTLLR, stllr_online_batch),
        "stllr_fused": (SHDSTLLR if shd else VGGSTLLR, stllr_fused_batch),
        "bptt": (SHDBPTT if shd else VGGBPTT, bptt_batch),
        "spikingjelly": (SHDSpikingJelly if shd else VGGSpikingJelly, bptt_batch),
    }
    if shd:
        table["naive"] = (lambda s: SHDSTLLR(s, naive=True), stllr_online_batch)
    return table


def spikingjelly_available() -> Optional[str]:
    """None if SpikingJelly imports, else why not."""
    try:
        import spikingjelly.activation_based.neuron  # noqa: F401
    except Exception as exc:  # not installed or broken: the benchmarks skip it and say so
        return f"{type(exc).__name__}: {exc}"
    return None
