"""Warm-up stages: run a timing stage's Triton work once, in a process of its own, while the CUDA
extension builds (the CPU is otherwise idle then). Triton keeps what it compiles in its on-disk
cache, and the autotuned configs go to the autotune disk cache (backends/triton/autotune.py), so
the timing stage later only loads the binaries and reads the configs. Without the warm-up it would
also tune: each new key benchmarks every config of its kernel (do_bench, >= 0.125 s a config), 5-10
s per model and mode (benchmarks/results/autotune_runs.md), not milliseconds. Their rows say how
long the compiles and tuning took."""
from __future__ import annotations

import importlib
import time


def run(ctx) -> None:
    from . import STAGES
    if ctx.tiny:  # the interpreter compiles nothing: warming up would only repeat the stage's work
        ctx.add("warm-up", f"Triton compiles of the {ctx.args.target} stage", "triton",
                note="skipped: the interpreter compiles nothing")
        return
    target = next(s for s in STAGES if s.name == ctx.args.target)
    module = importlib.import_module(f"benchmarks.gpu.stages.{target.module}")
    t0 = time.time()
    module.warm_only(ctx)
    ctx.add("warm-up", f"Triton compiles of the {target.name} stage", "triton",
            note=f"{time.time() - t0:.0f} s")
