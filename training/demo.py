"""The embedded demo: S-TLLR and BPTT trained on the Digits dataset, side by side.

    python -m training.demo [--epochs 15] [--save-path ./experiments/demo] [--threads 1]

Each run is an ordinary `python -m training` process (the commands are printed), so its peak memory
is its own; by default the two run at the same time, one CPU thread each (`--sequential`: one
after the other). Prints a table (best and final test accuracy, seconds per training epoch, peak memory)
and writes save-path/demo.png with both runs' curves.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from .records import CURVES, plot_curves
from .run_dir import previous_run_files

# flags shared by both runs; the rest is what makes each run S-TLLR or BPTT
COMMON = ["--dataset", "Digits", "--batch-size", "32", "--val-batch-size", "256", "--lr", "0.01",
          "--delay-ls", "20", "--step-mode", "sequence", "--print-freq", "1000"]
RUNS = {
    "S-TLLR": ["--arch", "digits_stllr", "--training-mode", "stllr"],
    "BPTT": ["--arch", "digits_bptt", "--training-mode", "bptt"],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--save-path", default="./experiments/demo")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads per run (tiny models run fastest on one)")
    parser.add_argument("--sequential", action="store_true", help="run S-TLLR, then BPTT")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further flags for both runs, e.g. --extra --device cuda")
    args = parser.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    rows, histories, procs = [], {}, {}
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
        rows.append((name, trial["best_acc1"], trial["final_acc1"], trial["seconds_per_epoch"],
                     trial["saved_for_backward_peak_mb"], trial["peak_memory_mb"], wall))
    total = time.perf_counter() - start
    plot_path = os.path.join(args.save_path, "demo.png")
    plot_curves(histories, plot_path, title=f"Digits (8x8, T=20 rate-coded), {args.epochs} epochs")
    lines = ["| run | best test acc (%) | final test acc (%) | s / train epoch | peak saved for backward (MB) "
             "| peak process memory (MB) | run time (s) |", "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {n} | {b:.2f} | {f:.2f} | {s:.2f} | {sv:.2f} | {m:.0f} | {w:.1f} |"
              for n, b, f, s, sv, m, w in rows]
    table = "\n".join(lines)
    print(table)
    print(f"total {total:.1f} s. Saved for backward: peak bytes autograd held during a training batch. "
          f"Process memory: peak RSS on CPU (mostly the torch runtime), torch.cuda.max_memory_allocated "
          f"on a GPU. Plot: {plot_path}")
    with open(os.path.join(args.save_path, "demo.md"), "w") as f:
        f.write(table + f"\n\ntotal {total:.1f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
