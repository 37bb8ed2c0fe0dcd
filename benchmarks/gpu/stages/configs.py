"""Every autotune config of every Triton kernel checked at least once: round i launches each kernel
with its GPU config i modulo its number of configs (`benchmarks.gpu.triton_configs`, over the kernels'
own autotune module: `autotune.forced_config`), then runs the core correctness cases (one float32
case of every op, and linear_backward in bf16, whose tl.dot takes the tensor-core path) against the
reference. One row per op and round, then one coverage row per kernel: which of its configs ran and
passed. Forcing reaches the GPU configs in Triton's interpreter and under STLLR_TRITON_SINGLE_CONFIG=1
too, so the tiny run checks every config on tiny shapes (as many rounds as on a GPU)."""
from __future__ import annotations

import torch

from .. import triton_configs as TC
from . import correctness


def run(ctx) -> None:
    ops = ctx.providers(["triton"]).get("triton")
    if ops is None:
        return
    tuned = TC.kernels()
    if not tuned:
        ctx.add("autotune configs", "every kernel", "triton", "ERROR",
                detail="no kernel registered in stllr_kernels.backends.triton.autotune.TUNED "
                       "(the kernels' @autotune registers them)")
        return
    todo = correctness.core(correctness.cases(ctx))
    linear_bf16 = next(c for c in correctness.cases(ctx) if c[0] == "linear_backward" and c[2] is torch.bfloat16)
    todo.append(linear_bf16)
    ctx.clock.start()
    ran = {name: set() for name in tuned}      # config indices launched
    failed = {name: set() for name in tuned}   # config indices launched in a round with a bad row
    cut = False  # the stage's budget ran out before every round ran
    for i in range(TC.rounds(tuned)):
        with TC.forced_round(tuned, i) as this:
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
            index = this.config_index(tuned[name])
            ran[name].add(index)
            if bad:
                failed[name].add(index)
    for name, kernel in tuned.items():
        configs = kernel.gpu_configs
        missing = sorted(set(range(len(configs))) - ran[name])
        ok = not missing and not failed[name]
        verdict = "ok" if ok else ("skipped" if cut and not failed[name] else "FAIL")
        detail = f"{len(ran[name])} of {len(configs)} configs ran" + ("; the stage's budget ran out" if cut else "")
        if missing:
            detail += f"; never launched: {', '.join(TC.describe(configs[j]) for j in missing)}"
        if failed[name]:
            detail += f"; in a round with a bad row: {', '.join(TC.describe(configs[j]) for j in sorted(failed[name]))}"
        ctx.add("autotune configs", name, "triton", verdict, detail=detail)
