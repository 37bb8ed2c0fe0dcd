"""The GPU check's driver: list what is installed, build the extension, run the stages in their own
processes, keep the report current, print a short table last.

Every stage is a separate process (`benchmarks.gpu.stage`), so a timeout or a sticky CUDA error in
one costs only that stage. The report (DIR/gpu_check.md, DIR/gpu_check.csv) is rewritten whenever
rows arrive and after every stage, so a run cut short still leaves everything it finished. The whole
run keeps to `--total` seconds (build included): a stage gets at most what is left, and a stage that
cannot start in time gets a row saying so.

First the dependencies (`deps`): one row each, found or missing and what is skipped without it; a
stage whose `requires` names a missing one is skipped with a row. A failed build (or one that cannot
start: no nvcc) skips only what needs the extension: the `ext_only` stages, and the extension's rows
in the others (which run with STLLR_NO_EXTENSION=1, so that no older build is checked in its place);
the Triton rows and the timings go on, and the exit code is 3.
"""
from __future__ import annotations

import datetime
import functools
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Optional

from . import deps as DEPS
from . import rows as R
from .procs import kill_group
from .stages import STAGES, Stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIN_STAGE_S = 20.0  # a stage is not started with less time left than this
BUILD_TIMEOUT_S = 300.0
BUILD_NEEDS = ("setuptools", "nvcc")
NO_EXTENSION = {"STLLR_NO_EXTENSION": "1"}
# exit codes
EXIT_OK, EXIT_BAD_ROWS, EXIT_USAGE, EXIT_BUILD_FAILED = 0, 1, 2, 3


def build_command() -> tuple[list[str], dict]:
    """The in-place build of stllr_kernels._C for sm_90 on every core; a failure is an error."""
    env = {"MAX_JOBS": str(os.cpu_count() or 1), "TORCH_CUDA_ARCH_LIST": "9.0",
           "STLLR_REQUIRE_EXTENSION": "1"}
    return [sys.executable, "setup.py", "build_ext", "--inplace"], env


def failing_build_command() -> tuple[list[str], dict]:
    """A build that fails at once (--simulate-build-failure: the failure path, without a GPU)."""
    return [sys.executable, "-c", "import sys; print('error: simulated build failure "
            "(--simulate-build-failure)'); sys.exit(1)"], {}


def stage_command(stage: Stage, rows_path: str, budget_s: float, tiny: bool, built: bool) -> list[str]:
    cmd = [sys.executable, "-m", "benchmarks.gpu.stage", stage.name, "--rows", rows_path,
           "--budget", f"{budget_s:.0f}", *stage.args]
    return cmd + (["--tiny"] if tiny else []) + (["--require-ext"] if built else [])


@dataclass
class Job:
    name: str
    proc: subprocess.Popen
    started: float
    timeout_s: float
    log_path: str
    rows_path: str = ""
    exclusive: bool = False
    state: dict = field(default_factory=dict)
    warm_up: bool = False


def _spawn(cmd, env_extra, log_path) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        # its own process group, so that a timeout ends the stage and every process it started
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill(job: Job) -> None:
    kill_group(job.proc)
    job.proc.wait()


def _tail(path: str, lines: int = 1) -> str:
    try:
        with open(path, errors="replace") as f:
            text = f.read().strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


class Run:
    """One run of the GPU check into `out_dir`."""

    def __init__(self, out_dir: str, tiny: bool, total_s: float, stages=STAGES,
                 build: Optional[tuple[list[str], dict]] = None, command: str = "",
                 stage_cmd: Callable = stage_command, log=print, found: Optional[dict] = None):
        self.out_dir, self.tiny, self.total_s = out_dir, tiny, total_s
        self.stages, self.build, self.command, self.stage_cmd = list(stages), build, command, stage_cmd
        self.log = log
        self.found = DEPS.survey() if found is None else found
        self.t0 = time.time()
        self.work = tempfile.mkdtemp(prefix="gpu_check_")
        self.states = [{"name": "setup"}, {"name": "build"}] + [{"name": s.name} for s in self.stages]
        self.driver_rows: list[dict] = []
        self.built = False          # the extension is there (built now, or --skip-build / --cpu-interpret)
        self.build_done = False     # the build finished (ok or not), or was never to run
        self.build_failed = False
        os.makedirs(out_dir, exist_ok=True)
        self.main_log = os.path.join(out_dir, "gpu_check.log")
        open(self.main_log, "w").close()

    # ------------------------------------------------------------------ report
    def left(self) -> float:
        return self.total_s - (time.time() - self.t0)

    def all_rows(self) -> list[dict]:
        out = list(self.driver_rows)
        for s in self.stages:
            out += R.read_rows(os.path.join(self.work, f"{s.name}.jsonl"))
        return out

    def state(self, name: str) -> dict:
        return next(s for s in self.states if s["name"] == name)

    def write_report(self) -> list[dict]:
        rows = self.all_rows()
        R.write_csv(os.path.join(self.out_dir, "gpu_check.csv"), rows)
        text = "\n".join([*header(self.tiny, self.command, time.time() - self.t0), "",
                          "## Stages", "", R.markdown_table(R.stage_summary(self.states, rows),
                                                             ("stage", "status", "seconds", "rows")),
                          "", "## Rows", "", R.markdown_table(rows), ""])
        path = os.path.join(self.out_dir, "gpu_check.md")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        return rows

    def _append_log(self, job: Job) -> None:
        with open(self.main_log, "a") as out, open(job.log_path, errors="replace") as src:
            out.write(f"\n===== {job.name} ({job.state.get('status')}, {job.state.get('seconds')} s)\n")
            out.write(src.read())

    # ------------------------------------------------------------------ dependencies
    def list_dependencies(self) -> None:
        """One row per dependency; the log says what is missing and what that skips."""
        for name, f in self.found.items():
            verdict, detail, note = DEPS.describe(f, self.tiny)
            self.driver_rows.append(R.make_row("setup", "dependency", name, f.dep.kind, verdict,
                                               detail=detail, note=note))
        missing = [f for f in self.found.values() if not f.ok and not (self.tiny and f.dep.gpu_only)]
        have = ", ".join(f"{n} {f.where}" if f.dep.kind == "module" and f.where else n
                         for n, f in self.found.items() if f.ok)
        self.log(f"[gpu_check] found: {have}")
        for f in missing:
            self.log(f"[gpu_check] missing: {f.dep.name}; without it: {f.dep.without}")
        self.state("setup")["status"] = "ok" if not missing else f"missing: {', '.join(f.dep.name for f in missing)}"

    # ------------------------------------------------------------------ scheduling
    def _can_start(self, i: int, running: list[Job], done: set) -> bool:
        stage = self.stages[i]
        if stage.needs_build and not self.build_done:
            return False
        earlier = self.stages[:i]
        if any(s.exclusive and s.name not in done for s in earlier):
            return False
        if stage.exclusive:
            return not running and all(s.name in done for s in earlier)
        return not any(j.exclusive for j in running)

    def _why_skipped(self, stage: Stage) -> Optional[str]:
        """Why `stage` will not run at all, or None."""
        gone = DEPS.missing(self.found, stage.requires)
        if gone:
            return f"skipped: needs {', '.join(gone)} (missing)"
        if stage.ext_only and self.build_failed:
            return "skipped: the extension did not build (see build.log)"
        if self.left() < MIN_STAGE_S:
            return "skipped: total time budget spent"
        return None

    def _free_gpu_for_timing(self, pending: list[int], running: list[Job], done: set) -> None:
        """Stop the warm-ups still running once the next exclusive stage waits only for them: a
        warm-up never holds up a timing (Triton's cache keeps what it compiled)."""
        nxt = next((i for i in pending if self.stages[i].exclusive), None)
        if nxt is None or not running or not all(j.warm_up for j in running):
            return
        earlier = self.stages[:nxt]
        if not all(s.name in done or any(j.name == s.name for j in running) for s in earlier):
            return
        if any(pending_i < nxt for pending_i in pending):
            return
        for job in list(running):
            _kill(job)
            running.remove(job)
            job.state.update(status=f"stopped after {time.time() - job.started:.0f} s to free the GPU for "
                                    f"{self.stages[nxt].name} (a warm-up: nothing lost)",
                             seconds=f"{time.time() - job.started:.0f}")
            self._append_log(job)
            done.add(job.name)
            self.log(f"[gpu_check] {time.time() - self.t0:5.0f} s  {job.name}: {job.state['status']}")

    def _start_stage(self, stage: Stage) -> Job:
        timeout = min(stage.timeout_s, self.left())
        rows_path = os.path.join(self.work, f"{stage.name}.jsonl")
        log_path = os.path.join(self.work, f"{stage.name}.log")
        cmd = self.stage_cmd(stage, rows_path, min(stage.budget_s, timeout), self.tiny,
                             self.build is not None and self.built)
        env = {**stage.env, **(NO_EXTENSION if self.build_failed else {})}
        self.log(f"[gpu_check] {time.time() - self.t0:5.0f} s  start {stage.name} (limit {timeout:.0f} s)")
        st = self.state(stage.name)
        st["status"] = "running"
        return Job(stage.name, _spawn(cmd, env, log_path), time.time(), timeout, log_path,
                   rows_path, stage.exclusive, st, warm_up=stage.may_time_out)

    def _finish(self, job: Job, timed_out: bool) -> None:
        seconds = time.time() - job.started
        rc = job.proc.returncode
        job.state["seconds"] = f"{seconds:.0f}"
        stage = next((s for s in self.stages if s.name == job.name), None)
        if timed_out and stage is not None and stage.may_time_out:
            job.state["status"] = f"stopped at its {seconds:.0f} s limit (a warm-up: nothing lost)"
        elif timed_out:
            job.state["status"] = f"TIMEOUT after {seconds:.0f} s"
        elif rc == 0:
            job.state["status"] = "ok"
        else:
            job.state["status"] = f"{'FAILED' if job.name == 'build' else 'CRASH'} (exit code {rc})"
        if job.name != "build" and job.state["status"] != "ok" and not job.state["status"].startswith("stopped"):
            self.driver_rows.append(R.make_row(job.name, "stage", verdict=job.state["status"],
                                               detail=_tail(job.log_path, 2)))
        self._append_log(job)
        self.log(f"[gpu_check] {time.time() - self.t0:5.0f} s  {job.name}: {job.state['status']}")

    def _start_build(self, running: list[Job]) -> None:
        build_state = self.state("build")
        if self.build is None:  # the stages use whatever extension is there
            self.built = self.build_done = True
            build_state["status"] = "skipped (--skip-build or --cpu-interpret)"
            return
        gone = DEPS.missing(self.found, BUILD_NEEDS)
        if gone:
            build_state.update(status=f"not started: {', '.join(gone)} missing", seconds="0")
            self._build_failed(f"cannot build: {', '.join(gone)} not found")
            return
        if DEPS.missing(self.found, ("ninja",)):
            self.log("[gpu_check] ninja not found: torch's extension build goes serial, one file at a time "
                     "(about 3 min instead of about 1 on 16 cores)")
        cmd, env = self.build
        log_path = os.path.join(self.out_dir, "build.log")
        self.log(f"[gpu_check] build: {' '.join(cmd)} (log: {log_path})")
        running.append(Job("build", _spawn(cmd, env, log_path), time.time(),
                           min(BUILD_TIMEOUT_S, self.left()), log_path, state=build_state))
        build_state["status"] = "running"

    def _build_failed(self, detail: str) -> None:
        """The run goes on without the extension: its rows are skipped, the exit code says so."""
        self.build_done, self.build_failed, self.built = True, True, False
        self.driver_rows.append(R.make_row("build", "build the CUDA extension", verdict="ERROR", detail=detail,
                                           note="the extension's rows are skipped; the Triton rows and the "
                                                "timings go on"))
        self.log(f"[gpu_check] the CUDA extension did not build ({detail}): its rows are skipped, the rest "
                 "goes on")

    def run(self) -> int:
        running: list[Job] = []
        done: set = set()
        pending = list(range(len(self.stages)))
        self.state("setup").update(status="running")
        self.list_dependencies()
        self._start_build(running)
        self.write_report()
        last_write = 0.0
        while pending or running:
            self._free_gpu_for_timing(pending, running, done)
            for i in list(pending):
                if self._can_start(i, running, done):
                    stage = self.stages[i]
                    pending.remove(i)
                    why = self._why_skipped(stage)
                    if why:
                        self.state(stage.name)["status"] = why
                        self.driver_rows.append(R.make_row(stage.name, "stage", verdict="skipped", note=why))
                        done.add(stage.name)
                        continue
                    running.append(self._start_stage(stage))
            for job in list(running):
                timed_out = False
                if job.proc.poll() is None:
                    if time.time() - job.started <= job.timeout_s:
                        continue
                    _kill(job)
                    timed_out = True
                running.remove(job)
                self._finish(job, timed_out)
                done.add(job.name)
                if job.name == "build":
                    if job.state["status"] == "ok":
                        self.built = self.build_done = True
                    else:
                        self._build_failed(f"{job.state['status']}; see build.log: {_tail(job.log_path, 3)}")
                self.write_report()
            if time.time() - last_write > 10:
                self.write_report()
                last_write = time.time()
            time.sleep(0.2)
        rows = self.write_report()
        self.log("\n" + R.short_table(self.states, rows))
        self.log(f"\n[gpu_check] {time.time() - self.t0:.0f} s; report: "
                 f"{os.path.join(self.out_dir, 'gpu_check.md')}")
        shutil.rmtree(self.work, ignore_errors=True)
        if self.build_failed:
            self.log("[gpu_check] exit code 3: the CUDA extension did not build (build.log); the other rows "
                     "are in the report")
            return EXIT_BUILD_FAILED
        return EXIT_BAD_ROWS if any(R.is_bad(r) for r in rows) else EXIT_OK


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


@functools.lru_cache(maxsize=None)
def gpu_name() -> str:
    """The GPU as nvidia-smi names it (no CUDA context in the driver process); without nvidia-smi,
    as torch names it (in a short child process)."""
    if DEPS.find_tool("nvidia-smi") is None:
        try:
            out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.get_device_name(), "
                                  "torch.cuda.get_device_properties(0).total_memory >> 20, 'MiB')"],
                                 capture_output=True, text=True, timeout=120)
            return (out.stdout.strip() or out.stderr.strip()[-200:]) + " (no nvidia-smi: named by torch)"
        except Exception as exc:  # the report says so instead of failing
            return f"no nvidia-smi, and torch could not name the GPU: {exc}"
    try:
        out = subprocess.run([DEPS.find_tool("nvidia-smi"), "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        return out.stdout.strip().replace("\n", "; ") or out.stderr.strip()
    except Exception as exc:  # the report says so instead of failing
        return f"nvidia-smi failed: {exc}"


def header(tiny: bool, command: str, seconds: float) -> list[str]:
    from .compare import MAX_FLIP_FRACTION, U_ULPS
    device = (f"CPU ({platform.machine()}), Triton interpreter, tiny shapes" if tiny else gpu_name())
    lines = [
        "# gpu_check: every kernel checked and timed on the device",
        "",
        f"- device: {device}; {os.cpu_count()} CPU cores; python {platform.python_version()}, torch "
        f"{_version('torch')}, triton {_version('triton')}, numpy {_version('numpy')}",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; "
        f"{seconds:.0f} s so far; command: `{command}`",
        "- oracles: `stllr_kernels.reference` on the same device and inputs, in float32 with TF32 off "
        "(`stllr_kernels.tolerance.exact_oracles()` in every stage process, and in every pytest process "
        "through tests/conftest.py); TF32 only in the gemm rows marked tf32, which time it",
        "- values: the package's tolerance policy, the test suite's too (`stllr_kernels/tolerance.py` "
        "`tol(dtype, reduction)`; `detail` gives the worst error over the allowed error, <= 1 passes)",
        f"- spikes: exact, except a flip where the reference's u = beta*v + I - theta is within "
        f"{U_ULPS} float32 ulps of |beta*v| + |I| + theta of 0 (a rounding tie); any other flip, or "
        f"explained flips in more than {MAX_FLIP_FRACTION:g} of the neurons, FAILs; a flipped "
        "neuron's values are compared up to the flip only",
        "- timings (the `timing` column says which): `device` = `triton.testing.do_bench` medians, CUDA "
        "events after an L2 flush, the kernels' GPU time only (no Python or launch overhead); `whole pass` "
        "= CUDA events around a whole layer pass or training batch (median after one warm-up batch), host "
        "overhead included; `profiler span` = first kernel start to last kernel end in torch.profiler. "
        "Each stage's time budget starts after its warm-up",
        "- goals (recorded, not asserted): element-wise and sequence kernels >= 80% of the measured copy "
        "bandwidth at the large case; eligibility GEMM >= 70% of torch.mm's rate; time-fused SHD "
        "layer >= 3x its step-by-step time; S-TLLR online peak memory >= 10x below BPTT at T=100",
    ]
    if tiny:
        lines.append("- **interpreter run on tiny shapes: it checks the script's logic; its timings "
                     "mean nothing**")
    return lines
