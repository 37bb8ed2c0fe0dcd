"""The conformance suite (tests/test_conformance.py) on this device, with one Triton config per
kernel (STLLR_TRITON_SINGLE_CONFIG=1), as a `-k` subset that fits the stage's time (about 2 minutes
on the H200; STLLR_GPU_CHECK_CONFORMANCE_K overrides the expression). Without the extension (a
failed build: STLLR_NO_EXTENSION=1) its cuda cases skip and the triton ones run."""
from __future__ import annotations

import os

from .suite import run_pytest

SUITE = os.path.join("tests", "test_conformance.py")
K_GPU = "cuda or triton"
K_TINY = "test_pre_trace and triton_cpu and float32"  # one test: the interpreter run checks the logic


def run(ctx) -> None:
    if not os.path.exists(SUITE):
        ctx.add("conformance suite", SUITE, "-", "skipped", note=f"{SUITE} is not in this tree")
        return
    ctx.clock.start()
    expr = os.environ.get("STLLR_GPU_CHECK_CONFORMANCE_K") or (K_TINY if ctx.tiny else K_GPU)
    run_pytest(ctx, [SUITE], expr, "conformance suite", workers=0 if ctx.tiny else 4)
