"""Every autotune config of every Triton kernel checked at least once: round i restricts each
kernel to its config i (`benchmarks.gpu.triton_configs`, from the kernels' own autotuners), then
runs the core correctness cases (one float32 case of every op, and linear_backward in bf16, whose
tl.dot takes the tensor-core path) against the reference. One row per op and round, then one
coverage row per kernel: which of its configs ran and passed. The interpreter has one config per
kernel, so the tiny run has one round."""
from __future__ import annotations

import os

import torch

from .. import triton_configs as TC
from . import SINGLE_CONFIG, correctness


def run(ctx) -> None:
    ops = ctx.providers(["triton"]).get("triton")
    if ops is None:
        return
    single = [k for k in SINGLE_CONFIG if os.environ.get(k, "0") not in ("", "0")]
    if single:
        ctx.add("autotune configs", "every kernel", "triton", "ERROR",
                detail=f"{single[0]} is set in this process: the kernels hold their first config only")
        return
    tuners = TC.autotuners()
    if not tuners:
        ctx.add("autotune configs", "every kernel", "triton", "ERROR",
                detail="no triton.runtime.autotuner.Autotuner found in stllr_kernels.backends.triton's modules "
                       "(benchmarks/gpu/triton_configs.py looks for them)")
        return
    todo = correctness.core(correctness.cases(ctx))
    linear_bf16 = next(c for c in correctness.cases(ctx) if c[0] == "linear_backward" and c[2] is torch.bfloat16)
    todo.append(linear_bf16)
    ctx.clock.start()
    ran = {name: set() for name in tuners}      # config indices launched
    failed = {name: set() for name in tuners}   # config indices launched in a round with a bad row
    cut = False  # the stage's budget ran out before every round ran
    for i in range(TC.rounds(tuners)):
        with TC.only_config(tuners, i) as this:
            bad = False
            for check, case, dtype, fn in todo:
                if ctx.skip_if_over_budget(check, f"config round {i}: {case}"):
                    cut = True
                    continue
                good = False
                with ctx.guard(check, f"config round {i}: {case}", "triton"):
                    verdict = fn(ops)
                    ctx.add(check, f"config round {i}: {case}", "triton", verdict.word, detail=verdict.detail)
                    good = verdict.ok
                bad |= not good
        for name in this.launched:
            index = min(i, len(tuners[name].configs) - 1)
            ran[name].add(index)
            if bad:
                failed[name].add(index)
    for name, tuner in tuners.items():
        n = len(tuner.configs)
        missing = sorted(set(range(n)) - ran[name])
        ok = not missing and not failed[name]
        verdict = "ok" if ok else ("skipped" if cut and not failed[name] else "FAIL")
        detail = f"{len(ran[name])} of {n} configs ran" + ("; the stage's budget ran out" if cut else "")
        if missing:
            detail += f"; never launched: {', '.join(TC.describe(tuner.configs[j]) for j in missing)}"
        if failed[name]:
            detail += f"; in a round with a bad row: {', '.join(TC.describe(tuner.configs[j]) for j in sorted(failed[name]))}"
        ctx.add("autotune configs", name, "triton", verdict, detail=detail)
