"""How every correctness row of the GPU check decides ok / FAIL.

Values: the package's one tolerance policy, the test suite's too (`stllr_kernels/tolerance.py`,
`tol(dtype, reduction)`; no pytest needed): |got - want| <= atol * sqrt(reduction) + rtol * |want|
element by element, atol/rtol by the dtype the op computes in, `reduction` the length of the sums
behind the value (1 for element-wise ops).

Spikes compare exactly, except a flip the arithmetic can explain. A flip at an element whose
reference membrane u = beta*v + I - theta lies within `U_ULPS` (the policy's THRESHOLD_ULPS)
float32 ulps of the operands' magnitude (|beta*v| + |I| + theta) of the threshold is a rounding tie
(the policy's `near_threshold`): two correct implementations may round it to different sides. Any other flip is a FAIL, and so are more than
`MAX_FLIP_FRACTION` of the neurons flipping even within the bound (rounding ties are rare; many of
them mean a systematic shift). After a flip the neuron's later steps follow a different
trajectory, so its values (v, traces, psi) from that step on are left out of the value comparison.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from stllr_kernels.tolerance import THRESHOLD_ULPS, near_threshold, tol  # noqa: F401 (tol: the policy)

U_ULPS = THRESHOLD_ULPS     # the rounding bound on u, in float32 ulps of the operands' magnitude
MAX_FLIP_FRACTION = 1e-3    # explained flips allowed, as a fraction of the neurons (at least 1)
CHUNK = 2 ** 27             # elements compared at a time


@dataclass
class Verdict:
    ok: bool
    detail: str

    @property
    def word(self) -> str:
        return "ok" if self.ok else "FAIL"


def value_check(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, reduction: int = 1,
                keep: Optional[torch.Tensor] = None) -> tuple[bool, float]:
    """(within the policy, worst |error| / allowed) over the elements where `keep` is True."""
    if got.shape != want.shape:
        raise AssertionError(f"shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    t = tol(dtype, reduction)
    if keep is not None:
        keep = keep.expand_as(got).reshape(-1)
    got, want = got.detach().reshape(-1), want.detach().reshape(-1)
    worst = 0.0
    for i in range(0, got.numel(), CHUNK):  # chunks: the temporaries of a 2^31-element check fit
        g, w = got[i:i + CHUNK].float(), want[i:i + CHUNK].float()
        ratio = (g - w).abs() / (t["atol"] + t["rtol"] * w.abs())
        ratio = torch.where(torch.isnan(g) != torch.isnan(w), torch.full_like(ratio, float("inf")), ratio)
        ratio = torch.nan_to_num(ratio, nan=0.0)  # NaN in both: the same answer
        if keep is not None:
            ratio = ratio[keep[i:i + CHUNK]]
        if ratio.numel():
            worst = max(worst, float(ratio.max()))
    return worst <= 1.0, worst


def values_verdict(pairs, dtype: torch.dtype, reduction: int = 1) -> Verdict:
    """pairs: (name, got, want[, keep]); ok if every one is within the policy."""
    worst_name, worst, ok = "", 0.0, True
    for name, got, want, *keep in pairs:
        if want is None and got is None:
            continue
        if (want is None) != (got is None):
            return Verdict(False, f"{name}: {'missing' if got is None else 'unexpected'} output")
        good, ratio = value_check(got, want, dtype, reduction, keep[0] if keep else None)
        ok &= good
        if ratio >= worst:
            worst_name, worst = name, ratio
    return Verdict(ok, f"worst {worst_name} err/allowed {worst:.2g}")


def at_threshold(beta_v: torch.Tensor, current: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Where the reference's u = beta*v + I - theta is a rounding tie (a spike flip is explained)."""
    u = beta_v + current.float() - theta
    return near_threshold(u, beta_v.abs() + current.float().abs() + theta.abs(), torch.float32)


@dataclass
class Flips:
    flips: int            # neurons (or elements) whose spike differs first at some step
    unexplained: int      # of those, flips away from the threshold (a FAIL)
    neurons: int          # neurons compared
    keep: torch.Tensor    # True where values are comparable (no flip so far)

    @property
    def ok(self) -> bool:
        return self.unexplained == 0 and self.flips <= max(1, int(MAX_FLIP_FRACTION * self.neurons))

    def text(self) -> str:
        return f"{self.flips} spike flips ({self.unexplained} away from the threshold)"


def spike_flips(got_s: torch.Tensor, want_s: torch.Tensor, near: torch.Tensor, over_time: bool) -> Flips:
    """Compare spikes; `near` marks elements whose reference u is within the rounding bound.
    over_time: dim 0 is time, and a neuron is out of the comparison from its first flip on."""
    flipped = got_s != want_s
    if over_time:
        seen = flipped.to(torch.int32).cumsum(0)
        first = flipped & (seen == 1)
        keep = seen == 0
        neurons = flipped[0].numel()
    else:
        first, keep, neurons = flipped, ~flipped, flipped.numel()
    return Flips(int(first.sum()), int((first & ~near).sum()), neurons, keep)
