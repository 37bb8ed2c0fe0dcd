"""The GPU check's driver: build the extension, run the stages in their own processes, keep the
report current, print a short table last.

Every stage is a separate process (`benchmarks.gpu.stage`), so a timeout or a sticky CUDA error in
one costs only that stage. The report (DIR/gpu_check.md, DIR/gpu_check.csv) is rewritten whenever
rows arrive and after every stage, so a run cut short still leaves everything it finished. The whole
run keeps to `--total` seconds (build included): a stage gets at most what is left, and a stage that
cannot start in time gets a row saying so.
"""
from __future__ import annotations

import datetime
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from typing import Callable, Optional

from . import rows as R
from .stages import STAGES, Stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIN_STAGE_S = 20.0  # a stage is not started with less time left than this
BUILD_TIMEOUT_S = 300.0


def build_command() -> tuple[list[str], dict]:
    """The in-place build of stllr_kernels._C for sm_90 on every core; a failure is an error."""
    env = {"MAX_JOBS": str(os.cpu_count() or 1), "TORCH_CUDA_ARCH_LIST": "9.0",
           "STLLR_REQUIRE_EXTENSION": "1"}
    return [sys.executable, "setup.py", "build_ext", "--inplace"], env


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


def _spawn(cmd, env_extra, log_path) -> subprocess.Popen:
    env = {**os.environ, **env_extra, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
        # its own process group, so that a timeout ends the stage and every process it started
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _kill(job: Job) -> None:
    try:
        os.killpg(job.proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
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
                 stage_cmd: Callable = stage_command, log=print):
        self.out_dir, self.tiny, self.total_s = out_dir, tiny, total_s
        self.stages, self.build, self.command, self.stage_cmd = list(stages), build, command, stage_cmd
        self.log = log
        self.t0 = time.time()
        self.work = tempfile.mkdtemp(prefix="gpu_check_")
        self.states = [{"name": "build"}] + [{"name": s.name} for s in self.stages]
        self.driver_rows: list[dict] = []
        self.built = False
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

    # ------------------------------------------------------------------ scheduling
    def _can_start(self, i: int, running: list[Job], done: set) -> bool:
        stage = self.stages[i]
        if stage.needs_build and not self.built:
            return False
        earlier = self.stages[:i]
        if any(s.exclusive and s.name not in done for s in earlier):
            return False
        if stage.exclusive:
            return not running and all(s.name in done for s in earlier)
        return not any(j.exclusive for j in running)

    def _start_stage(self, stage: Stage) -> Job:
        timeout = min(stage.timeout_s, self.left())
        rows_path = os.path.join(self.work, f"{stage.name}.jsonl")
        log_path = os.path.join(self.work, f"{stage.name}.log")
        cmd = self.stage_cmd(stage, rows_path, min(stage.budget_s, timeout), self.tiny,
                             self.build is not None)
        self.log(f"[gpu_check] {time.time() - self.t0:5.0f} s  start {stage.name} (limit {timeout:.0f} s)")
        st = self.state(stage.name)
        st["status"] = "running"
        return Job(stage.name, _spawn(cmd, stage.env, log_path), time.time(), timeout, log_path,
                   rows_path, stage.exclusive, st)

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
            job.state["status"] = f"CRASH (exit code {rc})"
        if job.name != "build" and job.state["status"] != "ok" and not job.state["status"].startswith("stopped"):
            self.driver_rows.append(R.make_row(job.name, "stage", verdict=job.state["status"],
                                               detail=_tail(job.log_path, 2)))
        self._append_log(job)
        self.log(f"[gpu_check] {time.time() - self.t0:5.0f} s  {job.name}: {job.state['status']}")

    def run(self) -> int:
        running: list[Job] = []
        done: set = set()
        pending = list(range(len(self.stages)))
        if self.build is None:  # the stages use whatever extension is there
            self.built = True
            self.state("build")["status"] = "skipped (--skip-build or --cpu-interpret)"
        else:
            cmd, env = self.build
            log_path = os.path.join(self.out_dir, "build.log")
            self.log(f"[gpu_check] build: {' '.join(cmd)} (log: {log_path})")
            running.append(Job("build", _spawn(cmd, env, log_path), time.time(),
                               min(BUILD_TIMEOUT_S, self.left()), log_path, state=self.state("build")))
            self.state("build")["status"] = "running"
        last_write = 0.0
        while pending or running:
            for i in list(pending):
                if self._can_start(i, running, done):
                    stage = self.stages[i]
                    pending.remove(i)
                    if self.left() < MIN_STAGE_S:
                        self.state(stage.name)["status"] = "skipped: total time budget spent"
                        self.driver_rows.append(R.make_row(stage.name, "stage", verdict="skipped",
                                                           note="the run's total time budget is spent"))
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
                    if job.state["status"] != "ok":
                        return self._build_failed(job, running)
                    self.built = True
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
        return 1 if any(R.is_bad(r) for r in rows) else 0

    def _build_failed(self, job: Job, running: list[Job]) -> int:
        for other in running:  # stages that needed no extension: stopped, with what they wrote
            _kill(other)
            other.state.update(status="stopped: the build failed", seconds=f"{time.time() - other.started:.0f}")
            self._append_log(other)
        self.driver_rows.append(R.make_row("build", "build the CUDA extension", verdict="ERROR",
                                           detail=f"{job.state['status']}; see build.log: "
                                           f"{_tail(job.log_path, 3)}"))
        rows = self.write_report()
        self.log("\n" + R.short_table(self.states, rows))
        self.log(f"[gpu_check] the CUDA extension did not build: nothing else runs. Log: {job.log_path}")
        shutil.rmtree(self.work, ignore_errors=True)
        return 3


def _version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def gpu_name() -> str:
    """The GPU as nvidia-smi names it (no CUDA context in the driver process)."""
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
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
        "(`torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False`); TF32 "
        "only in the rows marked tf32, which time it",
        "- values: the test suite's tolerance policy (`tests/conftest.py` `tol(dtype, reduction)`; "
        "`detail` gives the worst error over the allowed error, <= 1 passes)",
        f"- spikes: exact, except a flip where the reference's u = beta*v + I - theta is within "
        f"{U_ULPS} float32 ulps of |beta*v| + |I| + theta of 0 (a rounding tie); any other flip, or "
        f"explained flips in more than {MAX_FLIP_FRACTION:g} of the neurons, FAILs; a flipped "
        "neuron's values are compared up to the flip only",
        "- timings: `triton.testing.do_bench` medians (CUDA events), end to end the median of CUDA-"
        "event-timed batches after one warm-up batch; each stage's time budget starts after its warm-up",
        "- goals (recorded, not asserted): element-wise and sequence kernels >= 80% of the measured copy "
        "bandwidth at the large case; eligibility GEMM >= 70% of torch.mm's rate; time-fused SHD "
        "layer >= 3x its step-by-step time; S-TLLR online peak memory >= 10x below BPTT at T=100",
    ]
    if tiny:
        lines.append("- **interpreter run on tiny shapes: it checks the script's logic; its timings "
                     "mean nothing**")
    return lines
