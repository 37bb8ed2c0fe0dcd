"""The stages of the GPU check, in the order the driver considers them.

The `warm-*` stages compile the Triton kernels of the timing stages while the extension builds.
`exclusive` stages time things: they run alone on the GPU, one after another, after every stage
listed before them has finished. The others only check, and run side by side (each its own process).
`needs_build`: waits for the CUDA extension. `timeout_s`: the stage process is killed after this
long (its finished rows are kept); `budget_s`: the stage's own clock, started after its warm-up,
after which it skips its remaining cases (with a row saying so).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Stage:
    name: str
    module: str            # benchmarks.gpu.stages.<module>, with run(ctx)
    timeout_s: float
    budget_s: float
    exclusive: bool = False
    needs_build: bool = True
    args: tuple = ()
    env: dict = field(default_factory=dict)
    may_time_out: bool = False  # warm-ups: stopping at the limit loses nothing (the cache keeps the rest)


SINGLE_CONFIG = {"STLLR_TRITON_SINGLE_CONFIG": "1"}  # checks need no autotuning, only a config

STAGES = (
    Stage("warm-bandwidth", "warm", 150, 150, needs_build=False, args=("--target", "bandwidth"),
          may_time_out=True),
    Stage("warm-gemm", "warm", 150, 150, needs_build=False, args=("--target", "gemm"),
          may_time_out=True),
    Stage("warm-end-to-end", "warm", 150, 150, needs_build=False, args=("--target", "end-to-end"),
          may_time_out=True),
    Stage("warm-layers", "warm", 120, 120, needs_build=False, args=("--target", "layers"),
          may_time_out=True),
    Stage("correct-triton", "correctness", 200, 150, needs_build=False, args=("--provider", "triton"),
          env=SINGLE_CONFIG),
    Stage("correct-ext", "correctness", 150, 120, args=("--provider", "ext"), env=SINGLE_CONFIG),
    Stage("large", "large", 120, 90, env=SINGLE_CONFIG),
    Stage("sanitizer", "sanitizer", 150, 120, env=SINGLE_CONFIG),
    Stage("conformance", "conformance", 110, 100, env=SINGLE_CONFIG),
    Stage("bandwidth", "bandwidth", 75, 25, exclusive=True),
    Stage("gemm", "gemm", 90, 35, exclusive=True),
    Stage("end-to-end", "end_to_end", 130, 70, exclusive=True),
    Stage("layers", "layers", 60, 25, exclusive=True),
    Stage("profile", "profile", 45, 20, exclusive=True),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
