"""The Digits demo in float32 against `--precision bf16-mixed`, at three seeds.

    python -m benchmarks.precision_digits [--seeds 1234 1 2] [--epochs 15]

Runs `python -m training.demo` (S-TLLR and BPTT, side by side) once per seed and precision, and
writes results/precision_digits.{md,png}: the best and final test accuracies of each pair, their
differences, seconds per epoch and the memory saved for backward; the plot shows the four runs of
the first seed. A run is deterministic on one machine, so the accuracies are exact to it; the
seconds depend on the load.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys

import numpy as np
from tqdm import tqdm

from benchmarks import common
from training.records import CURVES, plot_curves

PRECISIONS = {"float32": [], "bf16-mixed": ["--precision", "bf16-mixed"]}
RUNS = ("S-TLLR", "BPTT")


def run_demo(save_path: str, seed: int, flags: list, epochs: int) -> dict:
    """One demo (both runs): {run name: its demo.csv row}."""
    cmd = [sys.executable, "-m", "training.demo", "--epochs", str(epochs), "--save-path", save_path,
           "--extra", "--seed", str(seed), *flags]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(save_path, "demo.csv")) as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def _pair(a: float, b: float) -> str:
    return f"{a:.2f} / {b:.2f}"


def _diff(a: float, b: float) -> str:
    """b - a with its sign; no sign on a difference that rounds to zero."""
    return "0.00" if abs(b - a) < 0.005 else f"{b - a:+.2f}"


def table(results: dict, seeds: list) -> tuple[str, dict]:
    """The markdown table, and per run the largest |difference| of best and final accuracy."""
    lines = ["| seed | run | float32 best / final (%) | bf16-mixed best / final (%) | difference best / final "
             "(points) | s / train epoch fp32 / bf16 | peak saved for backward fp32 / bf16 (MB) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    worst = {}
    for run in RUNS:
        acc = {p: {k: [] for k in ("best_acc1", "final_acc1")} for p in PRECISIONS}
        for seed in seeds:
            fp, bf = (results[seed, p][run] for p in PRECISIONS)
            for p, r in zip(PRECISIONS, (fp, bf)):
                for k in acc[p]:
                    acc[p][k].append(float(r[k]))
            f = {k: float(fp[k]) for k in fp if k != "run"}
            b = {k: float(bf[k]) for k in bf if k != "run"}
            lines.append(f"| {seed} | {run} | {_pair(f['best_acc1'], f['final_acc1'])} | "
                         f"{_pair(b['best_acc1'], b['final_acc1'])} | {_diff(f['best_acc1'], b['best_acc1'])} / "
                         f"{_diff(f['final_acc1'], b['final_acc1'])} | {_pair(f['seconds_per_epoch'], b['seconds_per_epoch'])} | "
                         f"{_pair(f['saved_for_backward_peak_mb'], b['saved_for_backward_peak_mb'])} |")
        mean = {p: {k: float(np.mean(v)) for k, v in acc[p].items()} for p in PRECISIONS}
        fm, bm = mean["float32"], mean["bf16-mixed"]
        lines.append(f"| mean | {run} | {_pair(fm['best_acc1'], fm['final_acc1'])} | "
                     f"{_pair(bm['best_acc1'], bm['final_acc1'])} | {_diff(fm['best_acc1'], bm['best_acc1'])} / "
                     f"{_diff(fm['final_acc1'], bm['final_acc1'])} | | |")
        worst[run] = max(abs(b - a) for k in ("best_acc1", "final_acc1")
                         for a, b in zip(acc["float32"][k], acc["bf16-mixed"][k]))
    return "\n".join(lines), worst


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[1234, 1, 2])
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--work", default="./experiments/precision", help="where the demo runs write")
    p.add_argument("--out", default=str(common.RESULTS_DIR))
    args = p.parse_args(argv)
    results = {}
    jobs = [(seed, name) for seed in args.seeds for name in PRECISIONS]
    for seed, name in tqdm(jobs, desc="demo runs"):
        results[seed, name] = run_demo(os.path.join(args.work, f"{name}_s{seed}"), seed, PRECISIONS[name], args.epochs)
    text, worst = table(results, args.seeds)
    first = os.path.join(args.work, f"float32_s{args.seeds[0]}", "demo.md")
    with open(first) as f:
        found = re.search(r"^Machine: (.*?); load average at the end", f.read(), re.M)
    commands = "\n".join(f"    python -m training.demo --epochs {args.epochs} --save-path {args.work}/{name}_sS "
                         f"--extra --seed S {' '.join(flags)}".rstrip() for name, flags in PRECISIONS.items())
    report = (f"# Digits demo: float32 against `--precision bf16-mixed` (CPU)\n\n"
              f"Command: `python -m benchmarks.precision_digits --seeds {' '.join(map(str, args.seeds))} --epochs "
              f"{args.epochs}`. It runs, for each seed S (the demo runs S-TLLR and BPTT at once):\n\n{commands}\n\n"
              f"Machine: {found.group(1) if found else '?'}. A run is deterministic on one machine: the "
              "accuracies are exact, the seconds depend on the load. Test set: 359 samples (one sample = "
              "0.28 points).\n\n"
              f"{text}\n\n"
              f"Largest difference between bf16-mixed and float32 at any seed (best or final test accuracy): "
              f"S-TLLR {worst['S-TLLR']:.2f} points, BPTT {worst['BPTT']:.2f} points.\n\n"
              f"![curves](precision_digits.png)\n\nPlot: the four runs of seed {args.seeds[0]}.\n")
    histories = {}
    for name in PRECISIONS:
        for run in RUNS:
            folder = os.path.join(args.work, f"{name}_s{args.seeds[0]}", run.lower().replace("-", ""))
            histories[f"{run} {name}"] = {c: np.load(os.path.join(folder, f"trial_1_{c}.npy")).tolist() for c in CURVES}
    plot_curves(histories, os.path.join(args.out, "precision_digits.png"),
                title=f"Digits, seed {args.seeds[0]}: float32 and bf16-mixed")
    with open(os.path.join(args.out, "precision_digits.md"), "w") as f:
        f.write(report)
    print(text)
    print(f"wrote {args.out}/precision_digits.md")


if __name__ == "__main__":
    main()
