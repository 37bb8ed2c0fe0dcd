"""The conformance suite (tests/test_conformance.py) on this device, with one Triton config per
kernel (STLLR_TRITON_SINGLE_CONFIG=1), as a `-k` subset that fits the stage's time (about 2 minutes
on the H200; STLLR_GPU_CHECK_CONFORMANCE_K overrides the expression). A row per failed test; one
summary row (partial when the time ran out first: the tests that finished are counted)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

SUITE = os.path.join("tests", "test_conformance.py")
K_GPU = "cuda or triton"
K_TINY = "test_pre_trace and triton_cpu and float32"  # one test: the interpreter run checks the logic


def run(ctx) -> None:
    if not os.path.exists(SUITE):
        ctx.add("conformance suite", SUITE, "-", "skipped", note=f"{SUITE} is not in this tree")
        return
    ctx.clock.start()
    expr = os.environ.get("STLLR_GPU_CHECK_CONFORMANCE_K") or (K_TINY if ctx.tiny else K_GPU)
    cmd = [sys.executable, "-m", "pytest", SUITE, "-v", "-p", "no:cacheprovider", "-k", expr,
           "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    if not ctx.tiny and _has_xdist():
        cmd += ["-n", "4"]  # four processes share the GPU; each compiles its own kernels
    budget = max(10.0, ctx.args.budget - 5)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=budget)
        partial = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        partial = True
    print(out[-30000:])
    outcomes, failed = parse_outcomes(out)
    counts = {word: outcomes.count(word) for word in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    for test in failed[:20]:
        ctx.add("conformance test", test, "-", "FAIL")
    detail = ", ".join(f"{k.lower()} {v}" for k, v in counts.items()) + f"; exit code {proc.returncode}"
    if partial:
        detail += f"; partial: stopped after {budget:.0f} s"
    if not outcomes and not partial:
        ctx.add("conformance suite", f"-k '{expr}'", "pytest", "skipped" if proc.returncode == 5 else "ERROR",
                detail=detail, note="no test matched" if proc.returncode == 5 else out.strip()[-200:])
        return
    ok = counts["FAILED"] == 0 and counts["ERROR"] == 0 and (proc.returncode == 0 or partial)
    ctx.add("conformance suite", f"-k '{expr}'", "pytest", "ok" if ok else "FAIL", detail=detail)


def parse_outcomes(out: str) -> tuple[list[str], list[str]]:
    """The outcome word of every test `pytest -v` reported (plain or pytest-xdist lines, not the
    short summary at the end), and the failed or erred test ids."""
    outcomes = (re.findall(r"^\S+::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", out, re.M)
                + re.findall(r"^\[gw\d+\] \[ *\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) \S+::", out, re.M))
    failed = (re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)\b", out, re.M)
              + re.findall(r"^\[gw\d+\] \[ *\d+%\] (?:FAILED|ERROR) (\S+::\S+)", out, re.M))
    return outcomes, sorted(set(failed))


def _has_xdist() -> bool:
    import importlib.util
    return importlib.util.find_spec("xdist") is not None
