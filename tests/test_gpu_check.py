"""The GPU check (benchmarks/gpu_check.py, benchmarks/gpu/): its rules decide right, its driver keeps
what finished when a stage times out or crashes, a failed build stops it, and (slow) every stage runs
end to end on tiny shapes in Triton's interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import types

import pytest
import torch

from benchmarks.gpu import compare, driver, rows
from benchmarks.gpu.stages import STAGE_NAMES, Stage, checks
from benchmarks.gpu.stages.inputs import beta_theta, linear_inputs, rule
from stllr_kernels import reference as R

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- the rules

def test_spike_flip_rule():
    want = torch.tensor([0.0, 1.0, 0.0, 1.0])
    near = torch.tensor([True, False, False, False])
    tie = compare.spike_flips(torch.tensor([1.0, 1.0, 0.0, 1.0]), want, near, over_time=False)
    assert tie.ok and tie.flips == 1 and tie.unexplained == 0
    assert tie.keep.tolist() == [False, True, True, True]
    away = compare.spike_flips(torch.tensor([0.0, 0.0, 0.0, 1.0]), want, near, over_time=False)
    assert not away.ok and away.unexplained == 1
    many = compare.spike_flips(torch.ones(4000), torch.zeros(4000), torch.ones(4000, dtype=torch.bool),
                               over_time=False)
    assert not many.ok, "explained flips in more than MAX_FLIP_FRACTION of the neurons must fail"


def test_spike_flip_rule_over_time_counts_first_flips_and_drops_the_rest():
    want = torch.zeros(4, 2)
    got = want.clone()
    got[1, 0] = 1.0  # neuron 0 flips at t=1, its later steps differ as a consequence
    got[3, 0] = 1.0
    near = torch.zeros(4, 2, dtype=torch.bool)
    near[1, 0] = True
    f = compare.spike_flips(got, want, near, over_time=True)
    assert (f.flips, f.unexplained, f.neurons) == (1, 0, 2) and f.ok
    assert f.keep[:, 0].tolist() == [True, False, False, False] and f.keep[:, 1].all()


def test_value_check_follows_the_suite_policy():
    want = torch.ones(10)
    ok, worst = compare.value_check(want + 5e-5, want, torch.float32)
    assert ok and worst < 1
    ok, worst = compare.value_check(want + 1e-3, want, torch.float32)
    assert not ok and worst > 1
    got = want.clone()
    got[3] = float("nan")
    assert not compare.value_check(got, want, torch.float32)[0], "a NaN where the reference has none fails"


def test_checks_fail_a_wrong_kernel():
    """The op checks catch a flipped spike away from the threshold and a wrong gradient."""
    beta, theta = beta_theta("cpu")
    cfg = rule()
    cur, v, tr = torch.randn(64), torch.randn(64), torch.rand(64)
    assert checks.lif_step(R, cur, v, tr, beta, theta, cfg).ok

    def bad_lif_step(*args):
        s, *rest = R.lif_step(*args)
        u = beta * args[1] + args[0] - theta
        s = s.clone()
        i = int(u.abs().argmax())
        s[i] = 1 - s[i]  # the flip farthest from the threshold
        return (s, *rest)

    assert not checks.lif_step(types.SimpleNamespace(lif_step=bad_lif_step), cur, v, tr, beta, theta, cfg).ok

    def bad_linear_backward(*args):
        dx, dw, db = R.linear_backward(*args)
        return dx, dw * 1.001, db

    args = linear_inputs("cpu", (7,), 9, 5)
    assert checks.linear_backward(R, args, torch.float32).ok
    assert not checks.linear_backward(types.SimpleNamespace(linear_backward=bad_linear_backward), args,
                                      torch.float32).ok


def test_small_fp16_signal_fails_a_kernel_with_fp16_eligibility_operands():
    """The fp16 small-signal case passes fp32 operands and fails operands rounded to fp16."""
    from benchmarks.gpu.stages.correctness import SMALL_SIGNAL

    def fp16_operands(grad_s, psi, causal, prev, x, trpre, W, a_post, a_pre, *_):
        L = grad_s.float()
        g_causal, g_prev = (L * a_pre * causal).half().float(), (L * a_post * prev).half().float()
        g = (L * psi).half().float()
        dW = g_causal.t() @ trpre.half().float() + g_prev.t() @ x.float()
        return (g @ W.float()).half(), dW.half(), g.sum(0).half()

    args = linear_inputs("cpu", (67,), 451, 333, torch.float16, scale=SMALL_SIGNAL)
    assert checks.linear_backward(R, args, torch.float16, relative=True).ok
    unsafe = types.SimpleNamespace(linear_backward=fp16_operands)
    assert not checks.linear_backward(unsafe, args, torch.float16, relative=True).ok


def test_conformance_outcomes_are_read_from_plain_and_xdist_output():
    from benchmarks.gpu.stages.conformance import parse_outcomes
    plain = textwrap.dedent("""\
        tests/test_conformance.py::test_lif_step[triton-fp32] PASSED                 [ 33%]
        tests/test_conformance.py::test_lif_step[cuda-fp16] FAILED                   [ 66%]
        tests/test_conformance.py::test_conv[cuda] SKIPPED (no extension)            [100%]
        =========================== short test summary info ============================
        FAILED tests/test_conformance.py::test_lif_step[cuda-fp16] - AssertionError
        """)
    assert parse_outcomes(plain) == (["PASSED", "FAILED", "SKIPPED"],
                                     ["tests/test_conformance.py::test_lif_step[cuda-fp16]"])
    xdist = textwrap.dedent("""\
        [gw0] [ 50%] PASSED tests/test_conformance.py::test_a[triton]
        [gw1] [100%] ERROR tests/test_conformance.py::test_b[cuda]
        """)
    assert parse_outcomes(xdist) == (["PASSED", "ERROR"], ["tests/test_conformance.py::test_b[cuda]"])


def test_bad_arguments_exit_2(capsys):
    from benchmarks import gpu_check
    assert gpu_check.main(["--cpu-interpret", "--stages", "nope"]) == 2
    assert gpu_check.main(["--cpu-interpret", "--stage-limit", "conformance=soon"]) == 2
    assert "--stage-limit" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the driver

ROW_SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {root!r})
    from benchmarks.gpu.rows import RowSink, make_row
    RowSink({path!r}).add(make_row({name!r}, "probe", verdict="ok", note=str(time.time())))
    {then}
""")


def fake_stage_cmd(behaviour):
    """stage_cmd for the driver: each fake stage writes one row, then does behaviour[name]."""
    def cmd(stage, rows_path, budget, tiny, built):
        then = behaviour.get(stage.name, "")
        script = ROW_SCRIPT.format(root=ROOT, path=rows_path, name=stage.name, then=then)
        return [sys.executable, "-c", script]
    return cmd


def test_driver_keeps_rows_of_a_stage_that_times_out_or_crashes(tmp_path):
    stages = [Stage("quick", "x", 30, 30, needs_build=False),
              Stage("hangs", "x", 3, 3, needs_build=False),
              Stage("crashes", "x", 30, 30, needs_build=False),
              Stage("timed-a", "x", 30, 30, exclusive=True),
              Stage("timed-b", "x", 30, 30, exclusive=True)]
    behaviour = {"hangs": "time.sleep(60)", "crashes": "sys.exit(3)", "timed-a": "time.sleep(0.5)"}
    run = driver.Run(str(tmp_path), tiny=True, total_s=60, stages=stages, build=None,
                     stage_cmd=fake_stage_cmd(behaviour), log=lambda *_: None)
    assert run.run() == 1
    table = list(rows.read_rows_csv(str(tmp_path / "gpu_check.csv")))
    by_stage = {}
    for r in table:
        by_stage.setdefault(r["stage"], []).append(r)
    assert {r["check"] for r in by_stage["hangs"]} == {"probe", "stage"}, "the row written before the hang is kept"
    assert any(r["verdict"].startswith("TIMEOUT") for r in by_stage["hangs"])
    assert any(r["verdict"].startswith("CRASH (exit code 3)") for r in by_stage["crashes"])
    assert [r["verdict"] for r in by_stage["quick"]] == ["ok"]
    # exclusive stages start after everything before them, one at a time
    started = {s: float(next(r["note"] for r in by_stage[s] if r["check"] == "probe")) for s in ("quick", "hangs", "crashes", "timed-a", "timed-b")}
    assert started["timed-a"] >= max(started["quick"], started["hangs"], started["crashes"])
    assert started["timed-b"] >= started["timed-a"] + 0.5
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| hangs | TIMEOUT" in md and "| crashes | CRASH (exit code 3)" in md


def test_driver_stops_when_the_build_fails_and_keeps_its_log(tmp_path):
    build = ([sys.executable, "-c", "import time; print('nvcc: error: no such file', flush=True); "
              "time.sleep(1); raise SystemExit(1)"], {})
    stages = [Stage("needs-no-build", "x", 30, 30, needs_build=False),
              Stage("checks", "x", 30, 30, needs_build=True)]
    run = driver.Run(str(tmp_path), tiny=False, total_s=60, stages=stages, build=build,
                     stage_cmd=fake_stage_cmd({"needs-no-build": "time.sleep(30)"}), log=lambda *_: None)
    assert run.run() == 3
    assert "nvcc: error" in (tmp_path / "build.log").read_text()
    md = (tmp_path / "gpu_check.md").read_text()
    assert "build the CUDA extension" in md and "| checks | not run" in md
    assert "| needs-no-build | stopped: the build failed" in md


def test_driver_skips_stages_the_total_budget_cannot_fit(tmp_path):
    stages = [Stage("first", "x", 30, 30, needs_build=False, exclusive=True),
              Stage("second", "x", 30, 30, needs_build=False, exclusive=True)]
    run = driver.Run(str(tmp_path), tiny=True, total_s=driver.MIN_STAGE_S + 1, stages=stages, build=None,
                     stage_cmd=fake_stage_cmd({"first": "time.sleep(1.5)"}), log=lambda *_: None)
    assert run.run() == 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| second | skipped: total time budget spent" in md


# ----------------------------------------------------------------------------- end to end (slow)

@pytest.mark.slow
def test_every_stage_runs_in_the_interpreter(tmp_path):
    """Every stage's run() on tiny shapes in Triton's interpreter, in this process (one torch import,
    not one per stage: the driver's processes are tested above with fake stages): each writes its
    rows and every check passes (the timings are meaningless here)."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine run the real check instead")
    from benchmarks.gpu import stage as stage_main
    from benchmarks.gpu.stages import STAGES
    table = []
    for s in STAGES:
        path = str(tmp_path / f"{s.name}.jsonl")
        assert stage_main.main([s.name, "--rows", path, "--budget", "300", *s.args, "--tiny"]) == 0, s.name
        got = rows.read_rows(path)
        assert got, f"stage {s.name} wrote no row"
        table += got
    for op in ("lif_step", "lif_sequence", "pre_trace", "trace_sequence", "linear_backward", "conv_backward"):
        assert any(r["check"] == op and r["provider"] == "triton" and r["verdict"] == "ok"
                   and r["stage"] == "correct-triton" for r in table), op
    bad = [r for r in table if rows.is_bad(r)]
    assert not bad, bad


@pytest.mark.slow
def test_command_writes_the_report_and_prints_the_short_table_last(tmp_path):
    """`python -m benchmarks.gpu_check --cpu-interpret` end to end, on the two quickest stages."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine run the real check instead")
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu-interpret", "--out",
                          str(tmp_path), "--stages", "warm-gemm,sanitizer"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    table = rows.read_rows_csv(str(tmp_path / "gpu_check.csv"))
    assert {r["stage"] for r in table} == {"warm-gemm", "sanitizer"}
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| warm-gemm | ok |" in md and "| sanitizer | ok |" in md
    assert "| stage | status | seconds | rows |" in out.stdout.strip().split("\n\n")[-2], \
        "the short table of stages is printed last, before the rows' table"
