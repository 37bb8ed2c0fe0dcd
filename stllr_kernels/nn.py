"""The layers users build spiking networks from.

S-TLLR layers (`LinearSTLLR`, `LinearRecSTLLR`, `Conv2dSTLLR`) carry their states between calls,
detached, and learn through the S-TLLR backward of `functional`. Call `reset_state()` before each
sequence, then either one time step at a time (`x` of shape [B, ...]: online mode, memory flat in T)
or the whole sequence at once (`x` of shape [T, B, ...] with `loss_steps`, the number of final steps
that get a loss: time-fused mode). Both give the same gradients.

BPTT baseline layers (`LIF`, `WSLinear`, `WSConv2d`, `LinearRecLIF`, `LeakyReadout`) keep the whole
graph through time and use the Psi functions as surrogate gradients.
"""
from __future__ import annotations

import math
from numbers import Integral
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.modules.utils import _pair

from .config import (DEFAULT_LEAK, DEFAULT_PSI_CONV, DEFAULT_PSI_LINEAR, DEFAULT_THRESHOLD,
                     RuleConfig)
from .functional import (ConvGeometry, ReadoutSTLLR, RecurrentSTLLR, Standardized, STLLRSequence,
                         STLLRStep)
from .precision import cast_input, check_input_dtype, readout_dtype
from .psi import apply_psi, check_psi, check_reset
from .reference import beta_of, spike_of, standardize, standardize_weight, state_dtype, theta_of

__all__ = ["LinearSTLLR", "LinearRecSTLLR", "Conv2dSTLLR", "SpikingDropout", "LIF", "WSLinear",
           "WSConv2d", "LinearRecLIF", "LeakyReadout", "reset_states", "spike_fn"]


# ----------------------------------------------------------------------------- shared machinery

class _Stateful:
    """States are plain attributes (not buffers: DDP must not broadcast them, state_dict must not
    hold them) that follow the module through .to() / .double() and are dropped by reset_state()."""

    _state_names: tuple = ()

    def reset_state(self) -> None:
        for name in self._state_names:
            setattr(self, name, None)

    def _apply(self, fn, recurse=True):
        module = super()._apply(fn, recurse)
        for name in self._state_names:
            value = getattr(self, name, None)
            if value is not None:
                setattr(self, name, fn(value))
        return module

    def _state(self, name: str, shape, like: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
        """The state `name`, zeros at the start of a sequence (in the state dtype unless `dtype`);
        checks it fits this input."""
        value = getattr(self, name)
        if value is None:
            value = torch.zeros(shape, dtype=dtype or state_dtype(like.dtype), device=like.device)
            setattr(self, name, value)
        elif tuple(value.shape) != tuple(shape):
            raise RuntimeError(
                f"{type(self).__name__}: state {name!r} has shape {tuple(value.shape)} from the previous "
                f"steps but this input needs {tuple(shape)}; call reset_state() before each sequence")
        return value


def _check_input(layer: nn.Module, x, feature_shape: Sequence[Optional[int]]) -> bool:
    """Validate x as one step [B, *features] or a sequence [T, B, *features]; True for a sequence."""
    cls = type(layer).__name__
    if not isinstance(x, Tensor):
        raise TypeError(f"{cls}: input x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{cls}: input x must be floating point, got dtype {x.dtype}")
    weight = layer.weight
    if x.device != weight.device:
        raise ValueError(f"{cls}: input x is on {x.device} but the layer's weight is on {weight.device}; "
                         f"move one of them (.to(device))")
    check_input_dtype(cls, x, weight)
    n = len(feature_shape)
    wrong_rank = x.dim() not in (n + 1, n + 2)
    if wrong_rank or any(want is not None and got != want
                         for got, want in zip(x.shape[x.dim() - n:], feature_shape)):
        raise ValueError(f"{cls}: input x must have shape [B, {_fmt(feature_shape)}] (one step) or "
                         f"[T, B, {_fmt(feature_shape)}] (a sequence), got {tuple(x.shape)}")
    if x.dim() == n + 2 and x.shape[0] == 0:
        raise ValueError(f"{cls}: input x is a sequence of zero time steps (shape {tuple(x.shape)}); "
                         f"a sequence [T, B, ...] needs T >= 1")
    return x.dim() == n + 2


def _fmt(shape) -> str:
    return ", ".join("*" if s is None else str(s) for s in shape)


def _save_from(x_seq: Tensor, loss_steps: Optional[int]) -> int:
    """First step that keeps what its backward needs: T - loss_steps (nothing under no_grad).

    loss_steps None means every step may carry a loss."""
    T = x_seq.shape[0]
    if loss_steps is not None and (isinstance(loss_steps, bool) or not isinstance(loss_steps, Integral)
                                   or not 0 <= loss_steps <= T):
        raise ValueError(f"loss_steps: expected an int in [0, T={T}] (the number of final steps that get "
                         f"a loss), got {loss_steps!r}")
    if not torch.is_grad_enabled():
        return T
    return 0 if loss_steps is None else T - int(loss_steps)


class _STLLRMixin(_Stateful):
    """The neuron parameters and rule settings shared by every S-TLLR layer."""

    def _init_neuron(self, threshold, leak, grad_tl, reset_mechanism, factors, psi, post):
        for name, value in (("leak", leak), ("threshold", threshold)):
            try:
                finite = math.isfinite(float(value))
            except (TypeError, ValueError):
                raise TypeError(f"{type(self).__name__}: {name} must be a number, got {value!r}") from None
            if not finite:
                raise ValueError(f"{type(self).__name__}: {name} must be finite, got {value!r}")
        self.leak = nn.Parameter(torch.tensor(float(leak)), requires_grad=grad_tl)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)), requires_grad=grad_tl)
        self.grad_tl = grad_tl
        self.reset_mechanism = check_reset(reset_mechanism)
        self.rule = RuleConfig.from_factors(factors, psi, reset_mechanism, post)

    @property
    def factors(self) -> tuple:
        r = self.rule
        return (r.lambda_post, r.lambda_pre, r.alpha_post, r.alpha_pre)

    def _beta_theta(self):
        """beta and theta, which the fused step treats as constants (as the original does)."""
        dtype = state_dtype(self.leak.dtype)
        return self._cached("beta_theta", (self.leak, self.threshold),
                            lambda: (beta_of(self.leak.to(dtype)), theta_of(self.threshold.to(dtype))))

    def _beta(self) -> Tensor:
        """beta alone (the readout has no threshold)."""
        return self._cached("beta", (self.leak,), lambda: beta_of(self.leak.to(state_dtype(self.leak.dtype))))

    def _standardized(self, weight: Tensor, gain: Optional[Tensor]) -> Standardized:
        """The weight as the steps use it: W_hat and what its backward needs (see `_cached`), or
        the raw weight without standardization (read at every step)."""
        if gain is None:
            return Standardized(weight)
        return self._cached(("standardized", id(weight)), (weight, gain),
                            lambda: Standardized(*standardize(weight, gain)))

    def _cached(self, name, params: tuple, compute):
        """compute() (no graph), computed once per sequence: at the first step after reset_state(),
        again within the sequence when one of `params` changed in a way autograd sees (an optimizer
        step, copy_ under no_grad: its version counter; .to(): its storage, dtype or device), all
        read without a host sync. So reset_state() rebuilds every cached value from the
        parameters' current values whatever changed them, and an edit through `.data` inside a
        sequence (which bumps no version counter) is used from the next reset_state() on.
        Traced by torch.compile nothing is cached: the graph computes these few ops at every call."""
        with torch.no_grad():
            if torch.compiler.is_compiling():
                return compute()
            key = _versions(*params)
            caches = self.__dict__.setdefault("_caches", {})
            cached = caches.get(name)
            if cached is None or cached[0] != key:
                # the entry holds `params` themselves, so their ids in the key cannot be reused
                cached = caches[name] = (key, compute(), params)
            return cached[1]

    def reset_state(self) -> None:
        super().reset_state()
        self.__dict__.pop("_caches", None)

    def _apply(self, fn, recurse=True):
        self.__dict__.pop("_caches", None)  # .to(), .double(): rebuilt on the new device or dtype
        return super()._apply(fn, recurse)

    def _rule_repr(self) -> str:
        r = self.rule
        return (f"factors={list(self.factors)}, psi={r.psi!r}, reset={r.reset!r}"
                + (f", post={r.post!r}" if r.post != "psi" else ""))


# ----------------------------------------------------------------------------- S-TLLR layers

def _versions(*params: Tensor) -> tuple:
    """What identifies the values of these tensors as autograd sees them, without reading them
    (no host sync): which tensor, its storage, version counter, dtype and device."""
    return tuple((id(p), p.data_ptr(), p._version, p.dtype, p.device) for p in params)


class LinearSTLLR(_STLLRMixin, nn.Linear):
    """Linear S-TLLR layer (or, with accumulate=True, the non-spiking readout layer).

    Parameters keep the original's names: weight, bias, gain, leak, threshold.
    """

    _state_names = ("v", "trpost", "trpre")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 threshold: float = DEFAULT_THRESHOLD, leak: float = DEFAULT_LEAK,
                 grad_tl: bool = False, reset_mechanism: str = "soft", accumulate: bool = False,
                 factors=None, psi: Optional[str] = None, normalization: bool = True,
                 post: str = "psi", device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_neuron(threshold, leak, grad_tl, reset_mechanism, factors,
                          psi or DEFAULT_PSI_LINEAR, post)
        self.accumulate = accumulate
        self.normalization = normalization and not accumulate  # the readout uses the raw weight
        if self.normalization:
            self.gain = nn.Parameter(torch.ones(out_features, 1, device=device, dtype=dtype))
        else:
            self.register_parameter("gain", None)
        self.reset_state()

    def effective_weight(self) -> Tensor:
        return standardize_weight(self.weight, self.gain) if self.normalization else self.weight

    def forward(self, x: Tensor, loss_steps: Optional[int] = None) -> Tensor:
        sequence = _check_input(self, x, (self.in_features,))
        x = cast_input(x, self.weight)
        batch = x.shape[1] if sequence else x.shape[0]
        v = self._state("v", (batch, self.out_features), x)
        trpre = self._state("trpre", (batch, self.in_features), x)
        if self.accumulate:
            x_seq = x if sequence else x.unsqueeze(0)
            save_from = _save_from(x_seq, loss_steps if sequence else None)
            out, self.trpre = ReadoutSTLLR.apply(x_seq, self.weight, self.bias, v, trpre, self._beta(),
                                                 self.rule.lambda_pre, save_from)
            out = out if sequence else out.view(out.shape[1:])  # a view: no op, and none in the backward
            self.v = (out[-1] if sequence else out).detach()
            return out.to(readout_dtype(self.weight))
        trpost = self._state("trpost", (batch, self.out_features), x)
        beta, theta = self._beta_theta()
        std = self._standardized(self.weight, self.gain)
        if sequence:
            s, self.v, self.trpost, self.trpre = STLLRSequence.apply(
                x, self.weight, self.gain, self.bias, std, v, trpost, trpre, beta, theta, self.rule,
                None, _save_from(x, loss_steps))
        else:
            s, self.v, self.trpost, self.trpre = STLLRStep.apply(
                x, self.weight, self.gain, self.bias, std, v, trpost, trpre, beta, theta, self.rule, None)
        return s

    def extra_repr(self) -> str:
        return (super().extra_repr() + (", accumulate=True" if self.accumulate else ", " + self._rule_repr())
                + f", normalization={self.normalization}")


class LinearRecSTLLR(LinearSTLLR):
    """Recurrent S-TLLR layer: I[t] = W x[t] + b + W_rec s[t-1]; W_rec learns by the same rule."""

    _state_names = ("v", "trpost", "trpre", "s_prev", "trrec")

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 threshold: float = DEFAULT_THRESHOLD, leak: float = DEFAULT_LEAK,
                 grad_tl: bool = False, reset_mechanism: str = "soft", factors=None,
                 psi: Optional[str] = None, normalization: bool = True, post: str = "psi",
                 device=None, dtype=None):
        super().__init__(in_features, out_features, bias, threshold, leak, grad_tl, reset_mechanism,
                         False, factors, psi, normalization, post, device, dtype)
        self.weight_rec = nn.Parameter(torch.empty(out_features, out_features, device=device, dtype=dtype))
        nn.init.kaiming_uniform_(self.weight_rec, a=5 ** 0.5)
        if self.normalization:
            self.gain_rec = nn.Parameter(torch.ones(out_features, 1, device=device, dtype=dtype))
        else:
            self.register_parameter("gain_rec", None)

    def effective_weight_rec(self) -> Tensor:
        if self.normalization:
            return standardize_weight(self.weight_rec, self.gain_rec)
        return self.weight_rec

    def forward(self, x: Tensor, loss_steps: Optional[int] = None) -> Tensor:
        """One step x [B, K] or a sequence x [T, B, K] (then one input GEMM over all T, the
        recurrence stepped inside one op, and one eligibility GEMM per weight over the loss steps)."""
        sequence = _check_input(self, x, (self.in_features,))
        x = cast_input(x, self.weight)
        x_seq = x if sequence else x.unsqueeze(0)
        save_from = _save_from(x_seq, loss_steps if sequence else None)
        batch = x_seq.shape[1]
        shape_n = (batch, self.out_features)
        v, trpost = self._state("v", shape_n, x), self._state("trpost", shape_n, x)
        trpre = self._state("trpre", (batch, self.in_features), x)
        trrec = self._state("trrec", shape_n, x)
        s_prev = self._state("s_prev", shape_n, x, dtype=x.dtype)
        beta, theta = self._beta_theta()
        s, self.v, self.trpost, self.trpre, self.trrec = RecurrentSTLLR.apply(
            x_seq, self.weight, self.gain, self.bias, self.weight_rec, self.gain_rec,
            self._standardized(self.weight, self.gain), self._standardized(self.weight_rec, self.gain_rec),
            s_prev, v, trpost, trpre, trrec, beta, theta, self.rule, save_from)
        s = s if sequence else s.view(s.shape[1:])  # a view: no op, and none in the backward
        # a copy of a sequence's last step: a view would keep all T steps' spikes alive with the state
        self.s_prev = (s[-1].clone() if sequence and s.shape[0] > 1 else s[-1] if sequence else s).detach()
        return s


class Conv2dSTLLR(_STLLRMixin, nn.Conv2d):
    """Conv2d S-TLLR layer: nn.Conv2d's arguments plus the neuron and rule settings."""

    _state_names = ("v", "trpost", "trpre")

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, threshold: float = DEFAULT_THRESHOLD,
                 leak: float = DEFAULT_LEAK, grad_tl: bool = False, reset_mechanism: str = "soft",
                 factors=None, psi: Optional[str] = None, normalization: bool = True,
                 post: str = "psi", device=None, dtype=None):
        padding = _explicit_padding(padding, _pair(kernel_size), _pair(stride), _pair(dilation))
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups,
                         bias, device=device, dtype=dtype)
        self._init_neuron(threshold, leak, grad_tl, reset_mechanism, factors,
                          psi or DEFAULT_PSI_CONV, post)
        self.normalization = normalization
        if normalization:
            self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1, device=device, dtype=dtype))
        else:
            self.register_parameter("gain", None)
        self.geometry = ConvGeometry(self.stride, self.padding, self.dilation, groups)
        self.reset_state()

    def effective_weight(self) -> Tensor:
        return standardize_weight(self.weight, self.gain) if self.normalization else self.weight

    def output_shape(self, height: int, width: int) -> tuple:
        (ph, pw), (sh, sw), (dh, dw) = self.padding, self.stride, self.dilation
        kh, kw = self.kernel_size
        return ((height + 2 * ph - dh * (kh - 1) - 1) // sh + 1,
                (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1)

    def forward(self, x: Tensor, loss_steps: Optional[int] = None) -> Tensor:
        sequence = _check_input(self, x, (self.in_channels, None, None))
        x = cast_input(x, self.weight)
        batch, _, height, width = x.shape[-4:]
        out_hw = self.output_shape(height, width)
        if min(out_hw) < 1:
            raise ValueError(f"Conv2dSTLLR: input x of spatial size {height}x{width} is too small "
                             f"for kernel {self.kernel_size} with padding {self.padding}")
        v = self._state("v", (batch, self.out_channels, *out_hw), x)
        trpost = self._state("trpost", (batch, self.out_channels, *out_hw), x)
        trpre = self._state("trpre", tuple(x.shape[-4:]), x)
        beta, theta = self._beta_theta()
        std = self._standardized(self.weight, self.gain)
        if sequence:
            s, self.v, self.trpost, self.trpre = STLLRSequence.apply(
                x, self.weight, self.gain, self.bias, std, v, trpost, trpre, beta, theta, self.rule,
                self.geometry, _save_from(x, loss_steps))
        else:
            s, self.v, self.trpost, self.trpre = STLLRStep.apply(
                x, self.weight, self.gain, self.bias, std, v, trpost, trpre, beta, theta, self.rule,
                self.geometry)
        return s

    def extra_repr(self) -> str:
        return super().extra_repr() + ", " + self._rule_repr() + f", normalization={self.normalization}"


def _explicit_padding(padding, kernel, stride, dilation):
    """Turn 'valid' / 'same' into explicit (symmetric) padding, which the backward needs."""
    if padding == "valid":
        return 0
    if padding == "same":
        if stride != (1, 1) or any(d * (k - 1) % 2 for k, d in zip(kernel, dilation)):
            raise ValueError("padding='same' needs stride 1 and an odd effective kernel size for "
                             "symmetric padding; give the padding explicitly")
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    if isinstance(padding, str):
        raise ValueError(f"padding: expected an int, a pair, 'valid' or 'same', got {padding!r}")
    return padding


class SpikingDropout(_Stateful, nn.Module):
    """Dropout with one keep-mask per sequence, drawn at the first step after reset_state().

    As in the original, the mask is nn.Dropout's rescaled mask truncated to integers: plain 0/1
    values for p < 0.5 (no 1/(1-p) rescaling). Identity in eval mode. For a whole sequence
    [T, B, ...] pass sequence=True: the mask is drawn for [B, ...] and applied at every step.
    """

    _state_names = ("mask",)

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"SpikingDropout: p must be in [0, 1), got {p}")
        self.p = p
        self.reset_state()

    def forward(self, x: Tensor, sequence: bool = False) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        shape = x.shape[1:] if sequence else x.shape
        if self.mask is None:
            self.mask = torch.trunc(F.dropout(torch.ones(shape, dtype=x.dtype, device=x.device), self.p, True))
        elif self.mask.shape != shape:
            raise RuntimeError(f"SpikingDropout: mask of shape {tuple(self.mask.shape)} from the previous "
                               f"steps, input step of shape {tuple(shape)}; call reset_state() before each sequence")
        return x * self.mask

    def extra_repr(self) -> str:
        return f"p={self.p}"


def reset_states(module: nn.Module) -> None:
    """reset_state() on every stateful layer of a model (call before each sequence)."""
    for m in module.modules():
        if isinstance(m, _Stateful):
            m.reset_state()


# ----------------------------------------------------------------------------- BPTT baseline

class _SurrogateSpike(torch.autograd.Function):
    """s = reference.spike_of(u) (u > 0; NaN where u is not finite), with surrogate gradient ds/du = Psi(u)."""

    @staticmethod
    def forward(ctx, u, psi: str):
        ctx.save_for_backward(u)
        ctx.psi = psi
        return spike_of(u)

    @staticmethod
    def backward(ctx, grad):
        (u,) = ctx.saved_tensors
        return grad * apply_psi(ctx.psi, u), None


def spike_fn(u: Tensor, psi: str = DEFAULT_PSI_LINEAR) -> Tensor:
    """Heaviside spike of u with Psi as its surrogate gradient (the BPTT baseline)."""
    return _SurrogateSpike.apply(u, check_psi(psi))


class LIF(_Stateful, nn.Module):
    """LIF neuron of docs/rule.md section 1 for BPTT: the membrane keeps its graph through time."""

    _state_names = ("v",)

    def __init__(self, threshold: float = DEFAULT_THRESHOLD, leak: float = DEFAULT_LEAK,
                 reset_mechanism: str = "soft", psi: str = DEFAULT_PSI_LINEAR, grad_tl: bool = False):
        super().__init__()
        self.leak = nn.Parameter(torch.tensor(float(leak)), requires_grad=grad_tl)
        self.threshold = nn.Parameter(torch.tensor(float(threshold)), requires_grad=grad_tl)
        self.reset_mechanism = check_reset(reset_mechanism)
        self.psi = check_psi(psi)
        self.reset_state()

    def forward(self, current: Tensor) -> Tensor:
        if self.v is None:
            self.v = torch.zeros_like(current, dtype=state_dtype(current.dtype))
        elif self.v.shape != current.shape:
            raise RuntimeError(f"LIF: state of shape {tuple(self.v.shape)} from the previous steps, input "
                               f"of shape {tuple(current.shape)}; call reset_state() before each sequence")
        theta = theta_of(self.threshold)
        v = beta_of(self.leak) * self.v + current
        s = spike_fn(v - theta, self.psi)
        reset = s.detach()  # as the original: no gradient through the reset (docs/rule.md section 7.1)
        self.v = v - theta * reset if self.reset_mechanism == "soft" else v * (1.0 - reset)
        return s.to(current.dtype)

    def extra_repr(self) -> str:
        return f"psi={self.psi!r}, reset={self.reset_mechanism!r}"


class WSLinear(nn.Linear):
    """nn.Linear with weight standardization and a learnable gain (the BPTT models' linear)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.gain = nn.Parameter(torch.ones(out_features, 1, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, standardize_weight(self.weight, self.gain), self.bias)


class WSConv2d(nn.Conv2d):
    """nn.Conv2d with weight standardization and a learnable gain (the BPTT models' conv)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1, device=self.weight.device,
                                            dtype=self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(x, standardize_weight(self.weight, self.gain), self.bias)


class LinearRecLIF(_Stateful, nn.Module):
    """Recurrent LIF layer for BPTT: I[t] = WS(W) x[t] + b + WS(W_rec) s[t-1], then LIF."""

    _state_names = ("s_prev",)

    def __init__(self, in_features: int, out_features: int, threshold: float = DEFAULT_THRESHOLD,
                 leak: float = DEFAULT_LEAK, reset_mechanism: str = "soft", psi: str = DEFAULT_PSI_LINEAR,
                 grad_tl: bool = False):
        super().__init__()
        self.fc = WSLinear(in_features, out_features)
        self.rec = WSLinear(out_features, out_features, bias=False)
        self.lif = LIF(threshold, leak, reset_mechanism, psi, grad_tl)
        self.reset_state()

    def reset_state(self) -> None:
        super().reset_state()
        if hasattr(self, "lif"):
            self.lif.reset_state()

    def forward(self, x: Tensor) -> Tensor:
        current = self.fc(x)
        if self.s_prev is not None:
            current = current + self.rec(self.s_prev)
        self.s_prev = self.lif(current)
        return self.s_prev


class LeakyReadout(_Stateful, nn.Module):
    """Non-spiking readout for BPTT: v[t] = beta v[t-1] + W x[t] + b, output v[t]."""

    _state_names = ("v",)

    def __init__(self, in_features: int, out_features: int, leak: float = DEFAULT_LEAK, bias: bool = True):
        super().__init__()
        self.fc = nn.Linear(in_features, out_features, bias)
        self.leak = nn.Parameter(torch.tensor(float(leak)), requires_grad=False)
        self.reset_state()

    def forward(self, x: Tensor) -> Tensor:
        current = self.fc(x)
        current = current.to(state_dtype(current.dtype))  # the membrane stays in the state dtype
        self.v = current if self.v is None else beta_of(self.leak) * self.v + current
        return self.v.to(readout_dtype(self.fc.weight))
