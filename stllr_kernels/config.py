"""Validated settings of one S-TLLR layer: the four factors, Psi, reset and post-trace mode.

Also the one table of layer defaults (docs/rule.md section 4), so that layers, models and the training
flags read them from a single place.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from .psi import check_post, check_psi, check_reset

# docs/rule.md section 4: defaults of the original's layers.
DEFAULT_FACTORS = (0.5, 0.8, -0.2, 1.0)  # [lambda_post, lambda_pre, alpha_post, alpha_pre]
DEFAULT_THRESHOLD = 0.6
DEFAULT_LEAK = 2.0
DEFAULT_PSI_LINEAR = "fast_sigmoid"
DEFAULT_PSI_CONV = "triangle"
MIN_THRESHOLD = 0.5  # theta = max(threshold, 0.5)
STANDARDIZE_EPS = 1e-4
FACTOR_NAMES = ("lambda_post", "lambda_pre", "alpha_post", "alpha_pre")


@dataclass(frozen=True)
class RuleConfig:
    """Everything the fused step needs besides tensors; hashable so kernels can specialise on it."""

    lambda_post: float
    lambda_pre: float
    alpha_post: float
    alpha_pre: float
    psi: str = DEFAULT_PSI_LINEAR
    reset: str = "soft"
    post: str = "psi"

    @classmethod
    def from_factors(cls, factors: Sequence[float] | None, psi: str, reset: str = "soft",
                     post: str = "psi") -> "RuleConfig":
        return cls(*check_factors(factors), psi=check_psi(psi), reset=check_reset(reset),
                   post=check_post(post))


def check_factors(factors: Sequence[float] | None) -> tuple[float, float, float, float]:
    """Turn `factors` into four finite floats, or say exactly what is wrong with it."""
    if factors is None:
        return DEFAULT_FACTORS
    if hasattr(factors, "tolist"):  # a tensor or numpy array
        factors = factors.tolist()
    try:
        values = [float(f) for f in factors]
    except (TypeError, ValueError):
        raise TypeError(f"factors: expected 4 numbers {list(FACTOR_NAMES)}, got {factors!r}") from None
    if len(values) != 4:
        raise ValueError(f"factors: expected 4 numbers {list(FACTOR_NAMES)}, got {len(values)}: {values}")
    bad = [n for n, v in zip(FACTOR_NAMES, values) if not math.isfinite(v)]
    if bad:
        raise ValueError(f"factors: {', '.join(bad)} must be finite, got {values}")
    return tuple(values)  # type: ignore[return-value]
