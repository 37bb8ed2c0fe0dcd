"""Warm-up stages: run a timing stage's Triton work once, in a process of its own, in time the GPU
check would otherwise leave idle (during the build, or beside the correctness checks). Triton keeps
what it compiles in its on-disk cache, so the timing stage later only loads the binaries (its
autotuning still benchmarks each config of each new key: seconds per model and mode, unless the
autotune results are cached on disk too). A warm-up never autotunes: it runs its work once per
config index with every kernel forced to that config (`triton_configs.forced_round`, over
`autotune.forced_config`), which compiles every config without benchmarking any, so no tuning
choice is made while other stages share the GPU. A warm-up still running when its timing stage is
due is stopped: nothing is lost, the timing stage warms up on its own before its clock starts.
Their rows say how long it took."""
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
    case = f"Triton compiles of the {target.name} stage"
    if not ctx.providers(["triton"]):
        return
    from .. import triton_configs as TC
    module = importlib.import_module(f"benchmarks.gpu.stages.{target.module}")
    tuned = TC.kernels()
    rounds = TC.rounds(tuned)
    t0 = time.time()
    for i in range(rounds):  # every config compiled, none benchmarked
        with TC.forced_round(tuned, i):
            module.warm_only(ctx)
        ctx.add("warm-up", case, "triton", note=f"config round {i + 1} of {rounds} done after "
                f"{time.time() - t0:.0f} s (no autotuning)")
