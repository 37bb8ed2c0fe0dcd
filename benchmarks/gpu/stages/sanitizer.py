"""compute-sanitizer memcheck over one tiny call of every op on every GPU backend
(`sanitizer_payload`), where the machine has compute-sanitizer (a skipped row otherwise). The tool
and the program it runs share one process group: a timeout ends both (`procs.run_group`)."""
from __future__ import annotations

import os
import re
import sys

from ..deps import find_tool
from ..procs import run_group


def find_sanitizer():
    return find_tool("compute-sanitizer")


def run(ctx) -> None:
    tool = find_sanitizer()
    case = "memcheck, every op, tiny shapes"
    if ctx.tiny or tool is None:
        ctx.add("compute-sanitizer", case, "-", "skipped",
                note="the interpreter run has no GPU" if ctx.tiny else "compute-sanitizer not found")
        return
    ctx.clock.start()
    env = {**os.environ, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"}
    cmd = [tool, "--tool", "memcheck", "--error-exitcode", "86", "--print-limit", "20",
           sys.executable, "-m", "benchmarks.gpu.stages.sanitizer_payload"]
    result = run_group(cmd, max(10.0, ctx.args.budget), env)
    text = result.output
    print(text[-20000:])
    if result.timed_out:
        ctx.add("compute-sanitizer", case, "triton+cuda", "TIMEOUT",
                detail=f"memcheck did not finish in {ctx.args.budget:.0f} s (it and its program were ended)")
        return
    summary = re.search(r"ERROR SUMMARY: (\d+) error", text)
    errors = int(summary.group(1)) if summary else None
    ok = result.returncode == 0 and errors == 0
    lines = [ln for ln in text.splitlines() if "Invalid" in ln or ": FAIL" in ln or "not available" in ln]
    ctx.add("compute-sanitizer", case, "triton+cuda", "ok" if ok else "FAIL",
            detail=f"exit code {result.returncode}; {errors if errors is not None else '?'} memcheck errors"
                   + (f"; {' / '.join(lines[:3])}" if lines else ""))
