"""The CUDA cases of the tests of everyday PyTorch habits (mixed precision, torch.compile, no stale cached
values, NaN/Inf propagation): the test files in FILES that exist in this tree, `-k cuda` (their
CUDA-parametrized cases, skipped on a machine without a GPU; STLLR_GPU_CHECK_CUDA_TESTS_K overrides
the expression). A file not in the tree is left out; none at all gives a skipped row."""
from __future__ import annotations

import os

from .suite import run_pytest

FILES = tuple(os.path.join("tests", f) for f in
              ("test_precision.py", "test_compile.py", "test_caching.py", "test_nonfinite.py"))
K_DEFAULT = "cuda"


def run(ctx) -> None:
    present = [f for f in FILES if os.path.exists(f)]
    absent = [os.path.basename(f) for f in FILES if f not in present]
    if not present:
        ctx.add("cuda tests", ", ".join(absent), "-", "skipped", note="none of these files is in this tree")
        return
    if absent:
        ctx.add("cuda tests", ", ".join(absent), "-", "skipped", note="not in this tree")
    ctx.clock.start()
    expr = os.environ.get("STLLR_GPU_CHECK_CUDA_TESTS_K") or K_DEFAULT
    run_pytest(ctx, present, expr, "cuda tests", workers=0 if ctx.tiny else 2)
