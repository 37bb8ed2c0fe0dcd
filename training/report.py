"""The paper's Table 3 from finished runs: one markdown row per run, the paper's figure beside it.

    python -m training.report DIR [DIR ...] [--out FILE]

Each DIR is a run's --save-path (it holds `summary.json`, written when the run finishes) or a folder
of such runs (e.g. ./experiments). A row: dataset, method (BPTT, or S-TLLR with its feedback mode),
the number of trials, the mean +- standard deviation of the trials' best test accuracy (what the
paper reports, over 5 trials), and the paper's figure for the same run (arXiv 2306.15220v4, Table 3).
Plain Python (no torch): it reads JSON only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import dataclass
from typing import Iterable, List, Optional

PROG = "python -m training.report"
SUMMARY = "summary.json"
DATASET_NAMES = {"DVSGesture": "DVS Gesture", "CIFAR10DVS": "CIFAR10-DVS", "SHD": "SHD", "Digits": "Digits"}
METHOD_ORDER = ("BPTT", "S-TLLR (BP)", "S-TLLR (DFA)", "S-TLLR (sDFA)")


@dataclass(frozen=True)
class PaperFigure:
    dataset: str            # the --dataset value
    method: str             # as `method()` names a run
    mean: float
    std: float
    delay_ls: Optional[int] = None  # the figure holds for this --delay-ls only (None: the paper's command's)


# The paper's results (mean +- std of 5 trials, best test accuracy per trial), the targets of a full
# reproduction. CIFAR10-DVS S-TLLR has two: the original README's command uses --delay-ls 5.
PAPER_TABLE3 = (
    PaperFigure("DVSGesture", "BPTT", 95.58, 1.08),
    PaperFigure("DVSGesture", "S-TLLR (BP)", 97.72, 0.38),
    PaperFigure("CIFAR10DVS", "BPTT", 75.44, 0.76),
    PaperFigure("CIFAR10DVS", "S-TLLR (BP)", 73.93, 0.62, delay_ls=5),
    PaperFigure("CIFAR10DVS", "S-TLLR (BP)", 75.6, 0.10, delay_ls=10),
    PaperFigure("SHD", "BPTT", 70.57, 0.96),
    PaperFigure("SHD", "S-TLLR (BP)", 78.24, 1.84),
    PaperFigure("SHD", "S-TLLR (DFA)", 74.60, 0.52),
)


class ReportError(Exception):
    """A folder that holds no finished run, or a summary.json this module cannot read."""


@dataclass(frozen=True)
class Run:
    path: str
    dataset: str
    method: str
    accuracies: tuple       # each trial's best test accuracy (%)
    delay_ls: Optional[int]  # None in a summary.json written before the flags were recorded


def method(summary: dict) -> str:
    if summary.get("training_mode") == "bptt":
        return "BPTT"
    return f"S-TLLR ({summary.get('flags', {}).get('feedback_mode', 'BP')})"


def read_run(path: str) -> Run:
    file = os.path.join(path, SUMMARY)
    try:
        with open(file) as f:
            summary = json.load(f)
        accuracies = tuple(float(t["best_acc1"]) for t in summary["trials"])
        dataset = summary["dataset"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReportError(f"{file}: not a summary.json of python -m training ({type(exc).__name__}: {exc})") from None
    if not accuracies:
        raise ReportError(f"{file}: no finished trial")
    return Run(path, dataset, method(summary), accuracies, summary.get("flags", {}).get("delay_ls"))


def find_runs(folders: Iterable[str]) -> List[Run]:
    """The runs in `folders`: each a run folder, or a folder whose sub-folders are runs."""
    runs = []
    for folder in folders:
        if os.path.isfile(os.path.join(folder, SUMMARY)):
            runs.append(read_run(folder))
            continue
        if not os.path.isdir(folder):
            raise ReportError(f"{folder}: no such folder")
        inside = sorted(os.path.join(folder, d) for d in os.listdir(folder)
                        if os.path.isfile(os.path.join(folder, d, SUMMARY)))
        if not inside:
            unfinished = os.path.isfile(os.path.join(folder, "checkpoint.pth.tar"))
            raise ReportError(f"{folder}: no {SUMMARY} in it or its sub-folders"
                              + (" (the run has not finished: continue it with --resume "
                                 f"{os.path.join(folder, 'checkpoint.pth.tar')})" if unfinished else ""))
        runs.extend(read_run(d) for d in inside)
    return runs


def mean_std(values) -> tuple:
    """Mean and sample standard deviation (n - 1; None for a single value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def paper_figure(run: Run) -> str:
    figures = [p for p in PAPER_TABLE3 if (p.dataset, p.method) == (run.dataset, run.method)]
    if not figures:
        return "—"
    exact = [p for p in figures if p.delay_ls is None or p.delay_ls == run.delay_ls]
    if len(exact) == 1:
        return f"{exact[0].mean:.2f} ± {exact[0].std:.2f}"
    return "; ".join(f"{p.mean:.2f} ± {p.std:.2f} (delay-ls {p.delay_ls})" for p in figures)


def table(runs: List[Run]) -> str:
    order = list(DATASET_NAMES)

    def key(run):
        return (order.index(run.dataset) if run.dataset in order else len(order),
                METHOD_ORDER.index(run.method) if run.method in METHOD_ORDER else len(METHOD_ORDER), run.path)

    lines = ["| dataset | method | trials | best test accuracy (%), mean ± std | paper, Table 3 (%) | run |",
             "| --- | --- | --- | --- | --- | --- |"]
    for run in sorted(runs, key=key):
        mean, std = mean_std(run.accuracies)
        measured = f"{mean:.2f}" + (f" ± {std:.2f}" if std is not None else "")
        lines.append(f"| {DATASET_NAMES.get(run.dataset, run.dataset)} | {run.method} | {len(run.accuracies)} | "
                     f"{measured} | {paper_figure(run)} | {run.path} |")
    return "\n".join(lines)


def paper_table() -> str:
    """The paper's Table 3 itself, as docs/rule.md shows it (written there by benchmarks.quote)."""
    lines = ["| dataset | method | paper, Table 3 (%) |", "| --- | --- | --- |"]
    for p in PAPER_TABLE3:
        note = f" with `--delay-ls {p.delay_ls}`" if p.delay_ls is not None else ""
        lines.append(f"| {DATASET_NAMES[p.dataset]} | {p.method} | {p.mean:.2f} ± {p.std:.2f}{note} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", metavar="DIR", help="a run's --save-path, or a folder of runs")
    parser.add_argument("--out", metavar="FILE", help="also write the table to FILE")
    args = parser.parse_args(argv)
    try:
        text = table(find_runs(args.folders))
    except ReportError as exc:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        return 2
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
