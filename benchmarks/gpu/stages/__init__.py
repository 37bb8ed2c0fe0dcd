"""The stages of the GPU check, in the order the driver considers them: most valuable first, so that
a run cut short still answers "is every op correct, and how fast and lean against BPTT".

    while the extension builds   correct-triton (core rows first), warm-end-to-end (its compiles)
    after the build              correct-ext (core rows first)
    alone on the GPU             end-to-end-shd: S-TLLR vs BPTT, time and memory, the paper's SHD size
    then, side by side           warm-* of the other timing stages, triton-configs (every autotune
                                 config), large, sanitizer, conformance, cuda-tests (the CUDA
                                 cases of the precision, compile, caching and NaN tests)
    then alone, one at a time    bandwidth, gemm, layers, end-to-end-vgg, profile

`exclusive` stages time things: they run alone on the GPU, one after another, after every stage
listed before them has finished; warm-ups still running then are stopped (Triton's disk cache keeps
what they compiled; each timing stage warms up on its own before its clock starts). The others only
check, and run side by side (each its own process). `needs_build`: waits for the CUDA extension's
build (ok or failed); `ext_only`: skipped when the build failed (the others go on without the
extension). `requires`: dependencies (deps.DEPS) without which the stage is skipped. `timeout_s`: the
stage process is killed after this long (its finished rows are kept); `budget_s`: the stage's own
clock, started after its warm-up, after which it skips its remaining cases (with a row saying so).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..deps import TRAINING


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
    ext_only: bool = False      # checks the extension alone: skipped when its build failed
    requires: tuple = ()        # names in deps.DEPS


SINGLE_CONFIG = {"STLLR_TRITON_SINGLE_CONFIG": "1"}  # checks need no autotuning, only a config

STAGES = (
    Stage("correct-triton", "correctness", 200, 150, needs_build=False, args=("--provider", "triton"),
          env=SINGLE_CONFIG),
    Stage("warm-end-to-end", "warm", 150, 150, needs_build=False, args=("--target", "end-to-end-shd"),
          may_time_out=True, requires=TRAINING),
    Stage("correct-ext", "correctness", 150, 120, args=("--provider", "ext"), env=SINGLE_CONFIG,
          ext_only=True),
    Stage("end-to-end-shd", "end_to_end", 110, 70, exclusive=True, args=("--case", "shd"), requires=TRAINING),
    Stage("warm-bandwidth", "warm", 150, 150, args=("--target", "bandwidth"), may_time_out=True),
    Stage("warm-gemm", "warm", 150, 150, args=("--target", "gemm"), may_time_out=True),
    Stage("warm-layers", "warm", 120, 120, args=("--target", "layers"), may_time_out=True),
    Stage("triton-configs", "configs", 150, 120),
    Stage("large", "large", 120, 90, env=SINGLE_CONFIG),
    Stage("sanitizer", "sanitizer", 150, 120, env=SINGLE_CONFIG),
    Stage("conformance", "conformance", 110, 100, env=SINGLE_CONFIG, requires=("pytest",)),
    Stage("cuda-tests", "cuda_tests", 110, 100, env=SINGLE_CONFIG, requires=("pytest",)),
    Stage("bandwidth", "bandwidth", 75, 25, exclusive=True),
    Stage("gemm", "gemm", 90, 35, exclusive=True),
    Stage("layers", "layers", 60, 25, exclusive=True),
    Stage("end-to-end-vgg", "end_to_end", 90, 50, exclusive=True, args=("--case", "vgg"), requires=TRAINING),
    Stage("profile", "profile", 45, 20, exclusive=True, requires=TRAINING),
)
STAGE_NAMES = tuple(s.name for s in STAGES)
