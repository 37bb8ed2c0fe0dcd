"""The GPU check (benchmarks/gpu_check.py, benchmarks/gpu/): its rules decide right, its driver keeps
what finished when a stage times out or crashes, a failed build stops it, and (slow) every stage runs
end to end on tiny shapes in Triton's interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import types

import pytest
import torch

from benchmarks.gpu import compare, deps, driver, rows
from benchmarks.gpu.stages import STAGE_NAMES, Stage, checks
from benchmarks.gpu.stages.inputs import beta_theta, linear_inputs, rule
from stllr_kernels import reference as R
from stllr_kernels import tolerance

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- the rules

def test_the_test_session_turns_tf32_off():
    """tests/conftest.py turns TF32 off for matmuls and cuDNN (and cuBLAS's reduced-precision
    half reductions) when a pytest process starts, so every pytest process the GPU check starts
    (conformance, cuda-tests) compares against exact float32 oracles. torch's own defaults leave
    cuDNN's TF32 and the reduced-precision reductions on (shown in a fresh process)."""
    fresh = subprocess.run([sys.executable, "-c", "import torch; m = torch.backends.cuda.matmul; "
                            "print(torch.backends.cudnn.allow_tf32, m.allow_bf16_reduced_precision_reduction)"],
                           capture_output=True, text=True, timeout=120)
    assert fresh.stdout.split() == ["True", "True"], fresh.stdout + fresh.stderr
    assert tolerance.oracle_state() == {"matmul.allow_tf32": False, "cudnn.allow_tf32": False,
                                        "float32_matmul_precision": "highest",
                                        "bf16_reduced_precision_reduction": False,
                                        "fp16_reduced_precision_reduction": False}


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


def test_checks_fail_wrong_recurrent_and_standardize_ops():
    """The new ops' checks catch one flipped spike of a recurrent layer and a 0.1 % gradient error."""
    from benchmarks.gpu.stages import inputs as I
    args = I.recurrent_inputs("cpu", 4, 3, 7, 33)
    cfg = rule()
    assert checks.recurrent_sequence(R, args, cfg, 2, torch.float32).ok

    def flipped(*a):
        out = list(R.recurrent_sequence(*a))
        out[0] = out[0].clone()
        out[0][-1, 0, 0] = 1 - out[0][-1, 0, 0]
        return tuple(out)

    verdict = checks.recurrent_sequence(types.SimpleNamespace(recurrent_sequence=flipped), args, cfg, 2, torch.float32)
    assert not verdict.ok and "1 spikes differ" in verdict.detail

    def scaled(name, index):
        def op(*a):
            out = list(getattr(R, name)(*a))
            out[index] = out[index] * 1.001
            return tuple(out)
        return types.SimpleNamespace(**{name: op})

    back = I.recurrent_backward_inputs("cpu", 6, 7, 33)
    assert checks.recurrent_backward(R, back, torch.float32).ok
    assert not checks.recurrent_backward(scaled("recurrent_backward", 3), back, torch.float32).ok
    rev = I.reverse_inputs("cpu", 3, 4, 7, 33)
    assert checks.recurrent_backward_reverse(R, rev, torch.float32).ok
    assert not checks.recurrent_backward_reverse(scaled("recurrent_backward_reverse", 1), rev, torch.float32).ok
    std = I.standardize_inputs("cpu", (5, 40))
    assert checks.standardize_backward(R, std).ok
    assert not checks.standardize_backward(scaled("standardize_backward", 0), std).ok
    readout = I.readout_inputs("cpu", 4, 3, 7, 33)
    assert checks.readout_sequence(R, readout, 2).ok
    assert not checks.readout_sequence(scaled("readout_sequence", 0), readout, 2).ok


def test_every_op_has_correctness_rows_and_core_rows_come_first():
    from benchmarks.gpu import sizes
    from benchmarks.gpu.stages import correctness
    ctx = types.SimpleNamespace(device=torch.device("cpu"), S=sizes.sizes(True))
    todo = correctness.core_first(correctness.cases(ctx))
    assert [c[0] for c in todo[:len(correctness.OPS)]] == list(correctness.OPS)
    assert all(c[2] is torch.float32 for c in todo[:len(correctness.OPS)])
    import stllr_kernels.backends.triton as T
    not_ops = {"unavailable_reason", "is_compile_failure"}
    assert set(correctness.OPS) == set(T.__all__) - not_ops, "a row for every op of the backend"


def test_forced_rounds_run_each_gpu_config_of_the_package_autotuner(monkeypatch, tmp_path):
    """triton_configs.forced_round (over autotune.forced_config) makes a kernel decorated with the
    package's autotune launch its GPU config i modulo their number (in the interpreter too, where
    its one candidate is the interpreter's config), says which kernels ran, and afterwards the
    kernel runs its own candidates again."""
    import triton
    import triton.language as tl

    from benchmarks.gpu import triton_configs as TC
    from stllr_kernels.backends.triton import autotune
    from stllr_kernels.backends.triton.autotune import ConfigSet
    from stllr_kernels.backends.triton.autotune import autotune as package_autotune

    real = TC.kernels()
    assert {"_lif_step_kernel", "_eligibility_dw_kernel", "_trace_sequence_kernel"} <= set(real)
    assert TC.rounds(real) == autotune.max_configs() > 1
    monkeypatch.setattr(autotune, "TUNED", {})  # the kernels below only
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path))  # on a GPU, launches outside a round tune

    @package_autotune(ConfigSet(triton.Config({"BLOCK": 8}), [triton.Config({"BLOCK": b}) for b in (16, 32, 64)]),
                      key=["n"])
    @triton.jit
    def write_block(out_ptr, n, BLOCK: tl.constexpr):
        tl.store(out_ptr, BLOCK)

    @package_autotune(ConfigSet(triton.Config({"BLOCK": 8}), [triton.Config({"BLOCK": b}) for b in (16, 128)]),
                      key=["n"])
    @triton.jit
    def idle(out_ptr, n, BLOCK: tl.constexpr):
        tl.store(out_ptr, BLOCK)

    tuned = dict(autotune.TUNED)
    assert set(tuned) == {"write_block", "idle"} and TC.rounds(tuned) == 3
    out = torch.zeros(1, dtype=torch.int32, device="cuda" if torch.cuda.is_available() else "cpu")

    def own(name):  # its candidates outside a round: the interpreter's config alone here
        return {c.kwargs["BLOCK"] for c in tuned[name].configs}
    if not torch.cuda.is_available():
        assert own("write_block") == own("idle") == {8}
    for i, block in enumerate((16, 32, 64, 16, 32)):
        with TC.forced_round(tuned, i) as this:
            assert TC.describe(this.chosen["write_block"]).startswith(f"BLOCK={block} ")
            assert this.chosen["idle"].kwargs["BLOCK"] == (16, 128)[i % 2]
            assert this.launched == set(), "filled when the block ends"
            write_block[(1,)](out, 1)
            assert int(out) == block
        assert this.launched == {"write_block"}
        assert this.config_index(tuned["write_block"]) == i % 3 and this.config_index(tuned["idle"]) == i % 2
        write_block[(1,)](out, 1)
        assert int(out) in own("write_block"), "outside the round the kernel runs its own config again"
    with pytest.raises(RuntimeError):
        with TC.forced_round(tuned, 3) as this:
            idle[(1,)](out, 1)
            raise RuntimeError("a failing check")
    assert int(out) == 128 and this.launched == {"idle"}, "a round that raised still says what ran"
    idle[(1,)](out, 1)
    assert int(out) in own("idle") and autotune._forced_index is None
    assert tuned["write_block"].launches == 10 and tuned["idle"].launches == 2


def test_conformance_outcomes_are_read_from_plain_and_xdist_output():
    from benchmarks.gpu.stages.suite import parse_outcomes
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
    path = {path!r}
    RowSink(path).add(make_row({name!r}, "probe", verdict="ok", note=str(time.time())))
    {then}
""")


def fake_stage_cmd(behaviour):
    """stage_cmd for the driver: each fake stage writes one row, then does behaviour[name]."""
    def cmd(stage, rows_path, budget, tiny, built):
        then = behaviour.get(stage.name, "")
        script = ROW_SCRIPT.format(root=ROOT, path=rows_path, name=stage.name, then=then)
        return [sys.executable, "-c", script]
    return cmd


def all_found() -> dict:
    """A dependency survey where everything is installed (the driver tests need no real survey)."""
    return {d.name: deps.Found(d, "1.0" if d.kind == "module" else f"/bin/{d.name}") for d in deps.DEPS}


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


def test_driver_goes_on_without_the_extension_when_the_build_fails(tmp_path):
    """A failed build skips only what needs the extension: the stage that needs no build runs to
    its end, a stage after the build runs with STLLR_NO_EXTENSION=1 (no older build checked in its
    place), the extension-only stage is skipped, and the exit code says the build failed."""
    build = ([sys.executable, "-c", "import time; print('nvcc: error: no such file', flush=True); "
              "time.sleep(1); raise SystemExit(1)"], {})
    stages = [Stage("needs-no-build", "x", 30, 30, needs_build=False),
              Stage("ext-only", "x", 30, 30, ext_only=True),
              Stage("checks", "x", 30, 30, needs_build=True),
              Stage("timed", "x", 30, 30, exclusive=True)]
    behaviour = {"needs-no-build": "time.sleep(2)",
                 "checks": "import os; RowSink(path).add(make_row('checks', 'env', "
                           "note=os.environ.get('STLLR_NO_EXTENSION', 'unset')))"}
    run = driver.Run(str(tmp_path), tiny=False, total_s=60, stages=stages, build=build,
                     stage_cmd=fake_stage_cmd(behaviour), log=lambda *_: None, found=all_found())
    assert run.run() == driver.EXIT_BUILD_FAILED == 3
    assert "nvcc: error" in (tmp_path / "build.log").read_text()
    table = rows.read_rows_csv(str(tmp_path / "gpu_check.csv"))
    by = {(r["stage"], r["check"]): r for r in table}
    assert by[("build", "build the CUDA extension")]["verdict"] == "ERROR"
    assert by[("needs-no-build", "probe")]["verdict"] == "ok"
    assert by[("checks", "env")]["note"] == "1", "stages after a failed build run without the extension"
    assert by[("timed", "probe")]["verdict"] == "ok", "the timings go on"
    assert by[("ext-only", "stage")]["verdict"] == "skipped"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| needs-no-build | ok |" in md and "| checks | ok |" in md
    assert "| ext-only | skipped: the extension did not build" in md


def test_driver_without_nvcc_does_not_start_the_build(tmp_path):
    found = all_found()
    found["nvcc"] = deps.Found(found["nvcc"].dep, None)
    build = ([sys.executable, "-c", "raise SystemExit('the build must not start')"], {})
    stages = [Stage("checks", "x", 30, 30)]
    run = driver.Run(str(tmp_path), tiny=False, total_s=60, stages=stages, build=build,
                     stage_cmd=fake_stage_cmd({}), log=lambda *_: None, found=found)
    assert run.run() == 3
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| build | not started: nvcc missing" in md and "| checks | ok |" in md
    assert not (tmp_path / "build.log").exists()


def test_driver_lists_dependencies_and_skips_stages_that_need_a_missing_one(tmp_path):
    found = all_found()
    found["pytest"] = deps.Found(found["pytest"].dep, None)
    stages = [Stage("needs-pytest", "x", 30, 30, needs_build=False, requires=("pytest",)),
              Stage("plain", "x", 30, 30, needs_build=False)]
    lines = []
    run = driver.Run(str(tmp_path), tiny=True, total_s=60, stages=stages, build=None,
                     stage_cmd=fake_stage_cmd({}), log=lines.append, found=found)
    assert run.run() == 0, "a missing dependency skips, it does not fail"
    table = rows.read_rows_csv(str(tmp_path / "gpu_check.csv"))
    listed = {r["case"]: r for r in table if r["check"] == "dependency"}
    assert set(listed) == set(deps.DEP_NAMES)
    assert listed["pytest"]["verdict"] == "skipped" and "conformance" in listed["pytest"]["note"]
    assert listed["torch"]["verdict"] == "ok"
    assert any("missing: pytest" in line for line in lines), "the log says what is missing, first"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| needs-pytest | skipped: needs pytest (missing)" in md and "| plain | ok |" in md


def test_warm_ups_never_hold_up_a_timing_stage(tmp_path):
    stages = [Stage("warm", "x", 60, 60, needs_build=False, may_time_out=True),
              Stage("timed", "x", 30, 30, needs_build=False, exclusive=True)]
    behaviour = {"warm": "time.sleep(50)"}
    t0 = time.time()
    run = driver.Run(str(tmp_path), tiny=True, total_s=60, stages=stages, build=None,
                     stage_cmd=fake_stage_cmd(behaviour), log=lambda *_: None, found=all_found())
    assert run.run() == 0
    assert time.time() - t0 < 30, "the warm-up was stopped for the timing stage"
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| warm | stopped after" in md and "to free the GPU for timed" in md and "| timed | ok |" in md


def test_no_stage_dies_at_import_without_an_optional_module():
    """With numpy, tqdm, pytest, SpikingJelly, tonic and h5py blocked, the driver, the tolerance
    policy (the package's: no pytest needed for a verdict) and every stage that does not name one of
    them in `requires` import (those that do are skipped by the driver with a row, see above), and
    the survey reports them missing."""
    blocked = ("numpy", "tqdm", "pytest", "xdist", "spikingjelly", "tonic", "h5py")
    code = textwrap.dedent(f"""
        import importlib, sys, warnings
        warnings.simplefilter("ignore")
        for m in {blocked!r}:
            sys.modules[m] = None
        import benchmarks.gpu_check
        from benchmarks.gpu import compare, deps, driver
        from benchmarks.gpu.stages import STAGES
        from stllr_kernels import tolerance
        assert compare.tol is tolerance.tol
        for s in STAGES:
            if not set(s.requires) & {{"numpy", "tqdm", "pytest"}}:
                importlib.import_module("benchmarks.gpu.stages." + s.module)
        found = deps.survey()
        print(sorted(n for n, f in found.items() if not f.ok))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT, "TRITON_INTERPRET": "1"})
    assert out.returncode == 0, out.stderr[-3000:]
    missing = eval(out.stdout.strip().splitlines()[-1])
    assert {"numpy", "tqdm", "pytest", "pytest-xdist", "spikingjelly", "tonic", "h5py"} <= set(missing)


def test_the_docs_name_every_stage_and_dependency():
    text = open(os.path.join(ROOT, "docs", "gpu-check.md")).read()
    missing = [n for n in (*STAGE_NAMES, *deps.DEP_NAMES) if n.lower() not in text.lower()]
    assert not missing, f"docs/gpu-check.md does not mention {missing}"
    from benchmarks.gpu.timing import DEVICE, PROFILER_SPAN, WHOLE_PASS
    assert all(f"`{label}`" in text for label in (DEVICE, WHOLE_PASS, PROFILER_SPAN))


def test_dependency_survey_finds_what_this_machine_has():
    found = deps.survey()
    assert found["torch"].ok and found["pytest"].ok and found["numpy"].ok
    assert not deps.survey([deps.Dep("nope", "module", "no_such_module_xyz", "x")])["nope"].ok
    assert not deps.survey([deps.Dep("nope", "tool", "no-such-tool-xyz", "x")])["nope"].ok


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
    from benchmarks.gpu.stages.correctness import OPS
    for op in OPS:  # a row for every op of both backends (the extension's CPU build here)
        for stage, provider in (("correct-triton", "triton"), ("correct-ext", "cpu")):
            assert any(r["check"] == op and r["provider"] == provider and r["verdict"] == "ok"
                       and r["stage"] == stage for r in table), (op, provider)
    bad = [r for r in table if rows.is_bad(r)]
    assert not bad, bad


@pytest.mark.slow
def test_command_after_a_failed_build_skips_only_the_extension_rows(tmp_path):
    """`python -m benchmarks.gpu_check --cpu-interpret --simulate-build-failure`, the failure path
    without a GPU: the dependencies are listed first, the extension-only stage is skipped, the other
    stage runs its Triton rows and skips the extension's, exit code 3, and the short table of
    stages is printed last."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine run the real check instead")
    env = {**os.environ, "PYTHONPATH": ROOT}
    out = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--cpu-interpret", "--simulate-build-failure",
                          "--out", str(tmp_path), "--stages", "correct-ext,large,sanitizer"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 3, out.stdout[-3000:] + out.stderr[-3000:]
    table = rows.read_rows_csv(str(tmp_path / "gpu_check.csv"))
    assert {r["stage"] for r in table} == {"setup", "build", "correct-ext", "large", "sanitizer"}
    assert {r["case"] for r in table if r["check"] == "dependency"} == set(deps.DEP_NAMES)
    large = [r for r in table if r["stage"] == "large"]
    assert {r["check"] for r in large if r["provider"] == "triton" and r["verdict"] == "ok"} == \
        {"lif_step", "pre_trace", "linear_backward"}
    ext = [r for r in large if r["provider"] == "cpu"]
    assert [(r["check"], r["verdict"]) for r in ext] == [("backend available", "skipped")], ext
    assert "STLLR_NO_EXTENSION" in ext[0]["detail"]
    bad = [r for r in table if rows.is_bad(r)]
    assert [(r["stage"], r["verdict"]) for r in bad] == [("build", "ERROR")], bad
    md = (tmp_path / "gpu_check.md").read_text()
    assert "| build | FAILED (exit code 1)" in md and "| correct-ext | skipped: the extension did not build" in md
    assert "| sanitizer | ok |" in md
    assert "simulated build failure" in (tmp_path / "build.log").read_text()
    text = out.stdout
    assert text.rindex("[gpu_check]", 0, text.index("| stage | status | seconds | rows |")) == \
        text.rindex("[gpu_check]", 0, text.index("1 bad rows:")), "the short table comes after every stage's line"
