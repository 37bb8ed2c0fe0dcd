"""Shared helpers of the benchmark scripts: machine facts, timing, memory, op counting, reports.

- `machine_info()`: what a figure was measured on (CPU/GPU, threads, versions, backend, load).
- `time_interleaved()`: warm-up, then repetitions that go round all providers in turn (rotating the
  order), so that load changes on a shared machine hit every provider alike; medians.
- `peak_tensor_bytes()`: the peak of live tensor bytes a function allocates (CPU: `LiveTensorTracker`,
  a TorchDispatchMode that follows every storage an op creates until it is freed; CUDA:
  torch.cuda.max_memory_allocated), above what was live before the call.
- `count_macs()`: multiply-accumulates of mm/addmm/bmm/conv (forward and backward) by
  torch.utils.flop_counter.FlopCounterMode (FLOPs / 2).
- `Report`: the markdown report, the CSV beside it; re-running overwrites both.
"""
from __future__ import annotations

import argparse
import csv
import datetime as _dt
import os
import platform
import statistics
import subprocess
import sys
import time
import weakref
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import stllr_kernels

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- machine facts

def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str:
    from importlib import metadata
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, timeout=10)
        return out.stdout.strip() or "n/a"
    except Exception:
        return "n/a"


def machine_info(device: torch.device) -> dict:
    info = {
        "date (UTC)": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "device": str(device),
        "cpu": f"{_cpu_name()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "load average (1, 5, 15 min) at start": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "spikingjelly": _version("spikingjelly"),
        "stllr_kernels": f"{stllr_kernels.__version__} (git {_git_commit()})",
        "S-TLLR backend (auto)": auto_backend(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def auto_backend(device: torch.device) -> str:
    """The backend `auto` picks for this device, and why the others were passed over."""
    entry = stllr_kernels.backend_info()["devices"].get(device.type, {})
    passed = "; ".join(f"{k}: {v}" for k, v in entry.get("unavailable", {}).items())
    return f"{entry.get('selected', '?')}" + (f" (not available: {passed})" if passed else "")


def under_load(threshold_per_core: float = 0.5) -> bool:
    """True when the 1-minute load says other work shared the cores during the measurement."""
    try:
        return os.getloadavg()[0] > threshold_per_core * (os.cpu_count() or 1)
    except OSError:
        return False


def command_line() -> str:
    return "python -m benchmarks." + Path(sys.argv[0]).stem + (" " + " ".join(sys.argv[1:]) if sys.argv[1:] else "")


# ----------------------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --clock: wall time (what a user waits), or the process's CPU time, which on a CPU shared with other
# jobs leaves out the time the process waited for a core (at 1 thread: the compute time)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def time_once(fn: Callable[[], None], device: torch.device, clock: Callable[[], float] = time.perf_counter) -> float:
    _sync(device)
    start = clock()
    fn()
    _sync(device)
    return clock() - start


def time_interleaved(providers: dict[str, Callable[[], None]], device: torch.device, reps: int,
                     warmup: int = 1, reps_of: Optional[dict[str, int]] = None,
                     progress: Optional[Callable[[str], None]] = None,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each provider: `warmup` untimed rounds, then `reps` timed rounds; each
    round calls every provider once, the order rotating by one per round. `reps_of` caps the
    repetitions of slow providers (they sit out the later rounds). `clock`: see CLOCKS."""
    names = list(providers)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + reps):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            if r >= warmup and len(times[name]) >= (reps_of or {}).get(name, reps):
                continue
            if r < warmup and (reps_of or {}).get(name, reps) < reps:
                continue  # slow providers are not warmed up twice: their cost is compute, not set-up
            if progress:
                progress(f"{'warm-up' if r < warmup else f'rep {r - warmup + 1}/{reps}'} {name}")
            t = time_once(providers[name], device, clock)
            if r >= warmup:
                times[name].append(t)
    return times


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


# ----------------------------------------------------------------------------- memory

class LiveTensorTracker(TorchDispatchMode):
    """Follows the bytes of every tensor storage created by an op while the mode is active, until
    the storage is freed (a weakref finalizer on it), and keeps the peak of the live total.

    Storages that an op only views or writes in place (they belong to its inputs) are not new;
    tensors that existed before the mode (weights, the input batch) are not counted."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.current = 0
        self.peak = 0

    def _freed(self, key: int) -> None:
        self.current -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:
                continue
            self.live[key] = storage.nbytes()
            self.current += self.live[key]
            self.peak = max(self.peak, self.current)
            weakref.finalize(storage, self._freed, key)
        return out


def peak_tensor_bytes(fn: Callable[[], None], device: torch.device) -> int:
    """Peak bytes of tensors allocated during fn() above those live before it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    tracker = LiveTensorTracker()
    with tracker:
        fn()
    return tracker.peak


MEMORY_METHOD = {
    "cpu": "peak of live tensor bytes during one training batch, above the tensors live before it "
           "(weights, optimizer state, input batch), tracked by `LiveTensorTracker` in "
           "`benchmarks/common.py` (a TorchDispatchMode that records each storage an op creates and "
           "drops it when the storage is freed); allocator caching and op-internal workspaces are not "
           "included",
    "cuda": "torch.cuda.max_memory_allocated during one training batch minus memory_allocated before it",
}


# ----------------------------------------------------------------------------- op counting

def count_macs(fn: Callable[[], None]) -> int:
    """Multiply-accumulates of the matmuls and convolutions fn() runs, forward and backward."""
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops() // 2


# ----------------------------------------------------------------------------- reports

def fmt_seconds(s: float) -> str:
    if s != s:
        return "n/a"
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def fmt_count(n: float) -> str:
    """1.23 G / 4.56 M / 789 K."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def fmt_bytes(b: float) -> str:
    if b != b:
        return "n/a"
    for unit, scale in (("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if abs(b) >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{int(b)} B"


def markdown_table(rows: Iterable[dict], columns: Sequence[str]) -> str:
    rows = list(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


class Report:
    """A markdown report built section by section; `write()` replaces the previous one."""

    def __init__(self, name: str, title: str, out_dir: Path, device: torch.device, per_device: bool = True):
        # timings and memory are per device type (train_step_cpu.md, train_step_cuda.md); counts are not
        self.name = f"{name}_{device.type}" if per_device else name
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.parts = [f"# {title} ({device.type})" if per_device else f"# {title}", "",
                      f"Command: `{command_line()}`", ""]
        if per_device and device.type == "cpu" and not torch.cuda.is_available():
            self.parts += ["GPU figures: not measured by this run (no CUDA device visible); the same "
                           f"command on a GPU machine writes {name}_cuda.md with the GPU sizes.", ""]
        self.info = machine_info(device)
        self.parts += ["## Machine", "", markdown_table(
            [{"item": k, "value": v} for k, v in self.info.items()], ["item", "value"]), ""]

    def section(self, heading: str, *paragraphs: str) -> None:
        self.parts += [f"## {heading}", ""]
        for p in paragraphs:
            self.parts += [p, ""]

    def path(self, suffix: str) -> Path:
        return self.out_dir / f"{self.name}{suffix}"

    def write(self, rows: Sequence[dict]) -> Path:
        self.parts += [f"Load average (1, 5, 15 min) at the end: {load_average()}", ""]
        write_csv(self.path(".csv"), rows)
        self.path(".md").write_text("\n".join(self.parts))
        return self.path(".md")


def base_parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny sizes, seconds: checks the script runs")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for the report, CSV and plots")
    p.add_argument("--models", default=None, help="comma-separated subset of the models (shd, vgg)")
    p.add_argument("--clock", choices=list(CLOCKS), default="wall",
                   help="timing scripts: wall time, or the process's CPU time (cpu: on a machine shared "
                        "with other jobs, leaves out the waits for a core; meaningful at 1 thread)")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="torch CPU threads (default: torch's choice); train_step measures at each of "
                        "several counts (e.g. --threads 1 2), the other scripts use the first")
    return p


def parse(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Parse the arguments and apply the ones every script shares (CPU threads)."""
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads[0])
    return args


def progress_bar(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


def progress_bar_iter(items, desc: str):
    from tqdm import tqdm
    return tqdm(items, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)
