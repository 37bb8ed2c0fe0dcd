"""The embedded demo: S-TLLR and BPTT trained on the Digits dataset, side by side.

    python -m training.demo [--epochs 15] [--save-path ./experiments/demo] [--threads 1]

Each run is an ordinary `python -m training` process (the commands are printed), so its peak memory
is its own; by default the two run at the same time, one CPU thread each (`--sequential`: one
after the other). Prints a table and writes it to save-path/demo.md (with the machine and the
command) and save-path/demo.csv, and both runs' curves to save-path/demo.png. `--record` also
copies the three files to benchmarks/results/digits_demo.{md,csv,png}, the figures the README and
docs quote (`python -m benchmarks.quote` writes them there).

The table's columns, per run: the best test accuracy over the epochs and the epoch it was reached
(the accuracy of the best-model file, trial_1_model_best.pth.tar), the final epoch's test accuracy,
seconds per training epoch, and memory.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time

import numpy as np

from .records import CURVES, plot_curves
from .run_dir import previous_run_files

# flags shared by both runs; the rest is what makes each run S-TLLR or BPTT
COMMON = ["--dataset", "Digits", "--batch-size", "32", "--val-batch-size", "256", "--lr", "0.01",
          "--delay-ls", "20", "--print-freq", "1000"]
RUNS = {
    "S-TLLR": ["--arch", "digits_stllr", "--training-mode", "stllr"],
    "BPTT": ["--arch", "digits_bptt", "--training-mode", "bptt"],
}
RESULTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "results")
RECORD_NAME = "digits_demo"  # --record writes RESULTS/digits_demo.{md,csv,png}
# demo.csv's columns, one row per run (benchmarks.quote reads them)
COLUMNS = ("run", "best_acc1", "best_epoch", "final_acc1", "seconds_per_epoch", "saved_for_backward_peak_mb",
           "peak_memory_mb", "run_seconds")
HEADER = ("| run | best test acc (%) | best epoch | final test acc (%) | s / train epoch | "
          "peak saved for backward (MB) | peak process memory (MB) | run time (s) |")


def table(rows) -> str:
    """The markdown table of demo.csv's rows (dicts of COLUMNS, as strings or numbers)."""
    lines = [HEADER, "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['run']} | {float(r['best_acc1']):.2f} | {int(r['best_epoch'])} | "
                     f"{float(r['final_acc1']):.2f} | {float(r['seconds_per_epoch']):.2f} | "
                     f"{float(r['saved_for_backward_peak_mb']):.2f} | {float(r['peak_memory_mb']):.0f} | "
                     f"{float(r['run_seconds']):.1f} |")
    return "\n".join(lines)


def machine(load_at_start: str, backend: str, threads: int) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        torch_version = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch_version = "?"
    return (f"{os.cpu_count()}-core {cpu}, {threads} thread(s) per run, torch {torch_version}, S-TLLR backend "
            f"{backend}, load average at start {load_at_start}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d} (UTC)")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--save-path", default="./experiments/demo")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per run (tiny models run fastest on one)")
    parser.add_argument("--sequential", action="store_true", help="run S-TLLR, then BPTT")
    parser.add_argument("--record", action="store_true",
                        help=f"also copy the results to benchmarks/results/{RECORD_NAME}.{{md,csv,png}}")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further flags for both runs, e.g. --extra --device cuda")
    args = parser.parse_args(argv)
    load_at_start = _load()
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows, histories, procs, backends = [], {}, {}, {}
    start = time.perf_counter()
    for name, flags in RUNS.items():
        out = os.path.join(args.save_path, name.lower().replace("-", ""))
        for old in previous_run_files(out):  # the demo's own previous results: a new run refuses to mix
            os.remove(os.path.join(out, old))
        cmd = [sys.executable, "-m", "training", *COMMON, *flags, "--epochs", str(args.epochs),
               "--scheduler", str(args.epochs), "--save-path", out, *args.extra]
        print("$", "python", " ".join(cmd[1:]), flush=True)
        procs[name] = (out, subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                                  stderr=subprocess.DEVNULL))
        if args.sequential:
            procs[name][1].wait()
    for name, (out, proc) in procs.items():
        if proc.wait() != 0:
            print(f"{name} run failed (exit {proc.returncode}); rerun its command above to see why; log in {out}/log.log", file=sys.stderr)
            return proc.returncode
        with open(os.path.join(out, "summary.json")) as f:
            summary = json.load(f)
        trial, wall = summary["trials"][0], summary["run_seconds"]
        histories[name] = {c: np.load(os.path.join(out, f"trial_1_{c}.npy")).tolist() for c in CURVES}
        val = histories[name]["val_acc"]
        rows.append(dict(run=name, best_acc1=trial["best_acc1"], best_epoch=val.index(max(val)) + 1,
                         final_acc1=trial["final_acc1"], seconds_per_epoch=trial["seconds_per_epoch"],
                         saved_for_backward_peak_mb=trial["saved_for_backward_peak_mb"],
                         peak_memory_mb=trial["peak_memory_mb"], run_seconds=wall))
        with open(os.path.join(out, "log.log")) as f:
            found = re.search(r"device \S+, backend (\S+)", f.read())
        backends[name] = found.group(1) if found else "?"
    total = time.perf_counter() - start
    plot_path = os.path.join(args.save_path, "demo.png")
    plot_curves(histories, plot_path, title=f"Digits (8x8, T=20 rate-coded), {args.epochs} epochs")
    text = table(rows)
    notes = (f"Total {total:.1f} s. Best: the highest test accuracy over the epochs (the best-model file's); "
             "final: the last epoch's. Saved for backward: peak bytes autograd held during a training batch. "
             "Process memory: peak RSS on CPU (mostly the torch runtime), torch.cuda.max_memory_allocated "
             "on a GPU.")
    print(text)
    print(notes, f"Plot: {plot_path}")
    command = " ".join(["python -m training.demo", *(sys.argv[1:] if argv is None else argv)])
    with open(os.path.join(args.save_path, "demo.md"), "w") as f:
        f.write(f"# Digits demo: S-TLLR vs BPTT\n\nCommand: `{command}` (both runs' commands are printed by "
                f"the demo).\nMachine: {machine(load_at_start, backends['S-TLLR'], args.threads)}; load average "
                f"at the end {_load()}.\n\n{text}\n\n{notes}\n")
    with open(os.path.join(args.save_path, "demo.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    if args.record:
        for ext in ("md", "csv", "png"):
            shutil.copyfile(os.path.join(args.save_path, f"demo.{ext}"), os.path.join(RESULTS, f"{RECORD_NAME}.{ext}"))
        print(f"recorded in {RESULTS}/{RECORD_NAME}.{{md,csv,png}}; `python -m benchmarks.quote` updates the docs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
