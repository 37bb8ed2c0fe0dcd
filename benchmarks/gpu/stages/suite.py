"""Test files of tests/ run by pytest inside a stage (the conformance and cuda-tests stages): one
pytest process (pytest-xdist workers when installed) in its own process group, cut at the stage's
budget; a row per failed test and one summary row (partial when the time ran out first: the tests
that finished are counted). The pytest process loads tests/conftest.py, which turns TF32 off."""
from __future__ import annotations

import importlib.util
import re
import sys

from ..procs import run_group


def run_pytest(ctx, files: list[str], expr: str, check: str, workers: int = 0) -> None:
    """Run `files` with `-k expr`; `workers` > 0 asks pytest-xdist for that many (when installed)."""
    cmd = [sys.executable, "-m", "pytest", *files, "-v", "-p", "no:cacheprovider", "-k", expr,
           "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    if workers and importlib.util.find_spec("xdist") is not None:
        cmd += ["-n", str(workers)]  # processes share the GPU; each compiles its own kernels
    budget = max(10.0, ctx.args.budget - 5)
    result = run_group(cmd, budget)
    out = result.output
    print(out[-30000:])
    outcomes, failed = parse_outcomes(out)
    counts = {word: outcomes.count(word) for word in ("PASSED", "FAILED", "ERROR", "SKIPPED")}
    for test in failed[:20]:
        ctx.add(f"{check} test", test, "-", "FAIL")
    detail = ", ".join(f"{k.lower()} {v}" for k, v in counts.items())
    detail += f"; exit code {result.returncode}" if not result.timed_out else f"; partial: stopped after {budget:.0f} s"
    case = f"{' '.join(files)} -k '{expr}'"
    if not outcomes and not result.timed_out:
        none_matched = result.returncode == 5
        ctx.add(check, case, "pytest", "skipped" if none_matched else "ERROR", detail=detail,
                note="no test matched" if none_matched else out.strip()[-200:])
        return
    if outcomes and counts["SKIPPED"] == len(outcomes):
        ctx.add(check, case, "pytest", "skipped", detail=detail, note="every selected test skipped here")
        return
    ok = counts["FAILED"] == 0 and counts["ERROR"] == 0 and (result.returncode == 0 or result.timed_out)
    ctx.add(check, case, "pytest", "ok" if ok else "FAIL", detail=detail)


def parse_outcomes(out: str) -> tuple[list[str], list[str]]:
    """The outcome word of every test `pytest -v` reported (plain or pytest-xdist lines, not the
    short summary at the end), and the failed or erred test ids."""
    outcomes = (re.findall(r"^\S+::\S+ (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b", out, re.M)
                + re.findall(r"^\[gw\d+\] \[ *\d+%\] (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) \S+::", out, re.M))
    failed = (re.findall(r"^(\S+::\S+) (?:FAILED|ERROR)\b", out, re.M)
              + re.findall(r"^\[gw\d+\] \[ *\d+%\] (?:FAILED|ERROR) (\S+::\S+)", out, re.M))
    return outcomes, sorted(set(failed))
