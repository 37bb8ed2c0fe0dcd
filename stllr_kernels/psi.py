"""The secondary activations Psi(u) of docs/rule.md section 3: the one table every backend reads.

Each entry has a name (what users and the training flags pass), the torch formula (used by the
reference and as the BPTT surrogate gradient) and a small integer code that the compiled kernels
(Triton, C++, CUDA) switch on at compile time. The kernels re-state the formula in their own
language; tests check every backend against the torch formula here.
"""
from __future__ import annotations

import torch

PSI_CODES = {"fast_sigmoid": 0, "triangle": 1, "sigmoid": 2}
POST_MODES = ("psi", "spike")
RESET_MODES = ("soft", "hard")


def fast_sigmoid(u: torch.Tensor) -> torch.Tensor:
    """1 / (1 + 100|u|)^2: the original's default for linear and recurrent layers."""
    return 1.0 / (1.0 + 100.0 * u.abs()).square()


def triangle(u: torch.Tensor) -> torch.Tensor:
    """0.3 * max(0, 1 - |u|): the original's `LinearSpike`, default of the conv layer."""
    return 0.3 * (1.0 - u.abs()).clamp(min=0.0)


def sigmoid(u: torch.Tensor) -> torch.Tensor:
    """4 * sigmoid(4u) * (1 - sigmoid(4u)): the derivative of sigmoid(4u)."""
    sg = torch.sigmoid(4.0 * u)
    return 4.0 * sg * (1.0 - sg)


PSI_FUNCTIONS = {"fast_sigmoid": fast_sigmoid, "triangle": triangle, "sigmoid": sigmoid}
assert PSI_FUNCTIONS.keys() == PSI_CODES.keys()


def check_psi(name: str) -> str:
    if name not in PSI_FUNCTIONS:
        raise ValueError(f"psi: unknown secondary activation {name!r}; expected one of {sorted(PSI_FUNCTIONS)}")
    return name


def check_reset(name: str) -> str:
    if name not in RESET_MODES:
        raise ValueError(f"reset_mechanism: unknown reset mode {name!r}; expected one of {list(RESET_MODES)}")
    return name


def check_post(name: str) -> str:
    if name not in POST_MODES:
        raise ValueError(f"post: unknown post-trace mode {name!r}; expected one of {list(POST_MODES)}")
    return name


def apply_psi(name: str, u: torch.Tensor) -> torch.Tensor:
    return PSI_FUNCTIONS[check_psi(name)](u)
