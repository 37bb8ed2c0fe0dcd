"""The figures README.md and docs/ quote, written from the results files that hold them.

    python -m benchmarks.quote            # rewrite every figure region from benchmarks/results/
    python -m benchmarks.quote --check    # list the regions that differ from their files (exit 1)

A figure region in a markdown file is

    <!-- figures:NAME -->
    (generated: never edit by hand)
    <!-- /figures -->

and NAME is a key of FIGURES, whose function renders it from the results files (the CSVs the
benchmark scripts and the demo write, and the machine tables of their reports). Re-run this after
a benchmark or `python -m training.demo --record`; tests/test_docs.py fails while a region is stale.
"""
from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
# a region's markers are lines of their own (a marker quoted inside a sentence is not one)
REGION = re.compile(r"^(<!-- figures:([\w-]+) -->\n)(.*?)^(<!-- /figures -->)$", re.S | re.M)
OPENING = re.compile(r"^<!-- figures:(\S*) -->$", re.M)
CLOSING = re.compile(r"^<!-- /figures -->$", re.M)


def documents(repo: Path = REPO) -> List[Path]:
    """The markdown files that may quote figures: README.md and docs/*.md."""
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


# ----------------------------------------------------------------------------- reading the results

def _rows(path: Path) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def machine_table(report: Path) -> Dict[str, str]:
    """The '| item | value |' rows of a benchmark report's Machine section."""
    items, inside = {}, False
    for line in report.read_text().splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Machine"
        elif inside and line.startswith("| ") and not line.startswith("| item") and not line.startswith("| ---"):
            key, value = (cell.strip() for cell in line.strip().strip("|").split("|", 1))
            items[key] = value
    return items


def command_of(report: Path) -> str:
    found = re.search(r"^Command: `([^`]+)`", report.read_text(), re.M)
    return found.group(1) if found else "?"


def _link(target: Path, doc: Path) -> str:
    """target relative to the folder of the markdown file that links it."""
    return os.path.relpath(target, doc.parent).replace(os.sep, "/")


def _machine_line(label: str, report: Path, doc: Path) -> str:
    m = machine_table(report)
    backend = m.get("S-TLLR backend (auto)", "?").split(" (")[0]
    load = m.get("load average (1, 5, 15 min) at start", "?").split(" ")[0]
    return (f"{label}: `{command_of(report)}` on {m.get('cpu', '?')}, torch {m.get('torch', '?')}, S-TLLR backend "
            f"`{backend}`, {m.get('date (UTC)', '?')} UTC, 1-minute load average {load} at the start "
            f"([report]({_link(report, doc)})).")


# ----------------------------------------------------------------------------- the figures

def headline(results: Path, doc: Path, short: bool = False) -> str:
    """The benchmark summary table (benchmarks.summary, from the CSVs); short: speed and memory of
    the paper's sizes only."""
    from benchmarks.summary import headline as summary_table

    table, over = summary_table(results, "cpu")
    lines = table.splitlines()
    if short:
        lines = lines[:2] + [line for line in lines[2:] if "(B=32" not in line.split("|")[1]
                             and line.split("|")[2].strip().startswith(("s / batch", "peak memory"))]
    note = (f"Ratios in parentheses: time or memory over {over} (the first S-TLLR figure of the row; chunk is "
            "the training default)" + ("." if short else "; MACs: BPTT over S-TLLR (online; time-fused)."))
    machine = " ".join(_machine_line(label, results / name, doc) for label, name in (
        ("Speed", "train_step_cpu.md"), ("Memory", "memory_cpu.md")) + ((("MACs", "macs.md"),) if not short else ()))
    return "\n".join(lines) + f"\n\n{note} {machine}"


def demo(results: Path, doc: Path) -> str:
    """The Digits demo's table (python -m training.demo --record)."""
    rows = _rows(results / "digits_demo.csv")
    lines = ["| run | best test acc (%) | at epoch | final test acc (%) | s / train epoch | "
             "peak saved for backward (MB) |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['run']} | {float(r['best_acc1']):.2f} | {r['best_epoch']} | {float(r['final_acc1']):.2f} | "
                     f"{float(r['seconds_per_epoch']):.2f} | {float(r['saved_for_backward_peak_mb']):.2f} |")
    report = results / "digits_demo.md"
    found = re.search(r"^Machine: (.*)$", report.read_text(), re.M)
    machine = found.group(1).rstrip(".") if found else "?"
    return ("\n".join(lines) + f"\n\nBest: the highest test accuracy over the epochs (the best-model file's); "
            f"final: the last epoch's. Machine: {machine} ([report]({_link(report, doc)})).")


def launches(results: Path, doc: Path) -> str:
    """Ops per time step (python -m benchmarks.launches)."""
    rows = _rows(results / "launches_cpu.csv")
    lines = ["| model | mode | B | T | loss steps | ops per time step | host syncs |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['model']} | {r['mode']} | {r['B']} | {r['T']} | {r['loss_steps']} | {r['ops_per_step']} | "
              f"{r['host_syncs']} |" for r in rows]
    report = results / "launches_cpu.md"
    backend = rows[0]["backend"] if rows else "?"
    return ("\n".join(lines) + f"\n\n`{command_of(report)}`, backend `{backend}` ([report]({_link(report, doc)})): "
            "exact counts, independent of load.")


def precision_digits(results: Path, doc: Path) -> str:
    """float32 against bf16-mixed on the Digits demo (python -m benchmarks.precision_digits)."""
    report = results / "precision_digits.md"
    lines = report.read_text().splitlines()
    table = [line for line in lines if line.startswith("| ")]
    verdict = next((line for line in lines if line.startswith("Largest difference")), "")
    machine = re.search(r"^Machine: (.*?)\. A run", report.read_text(), re.M)
    return ("\n".join(table) + f"\n\n{verdict} `{command_of(report)}` on {machine.group(1) if machine else '?'} "
            f"([report]({_link(report, doc)})).")


def paper_targets(results: Path, doc: Path) -> str:
    """The paper's Table 3 (training.report.PAPER_TABLE3, the one place it is written)."""
    from training.report import paper_table

    return paper_table()


FIGURES: Dict[str, Callable[[Path, Path], str]] = {
    "headline-cpu": headline,
    "headline-short": lambda results, doc: headline(results, doc, short=True),
    "demo": demo,
    "launches-cpu": launches,
    "paper-targets": paper_targets,
    "precision-digits": precision_digits,
}


# ----------------------------------------------------------------------------- rewriting

class QuoteError(ValueError):
    """A malformed or unknown figure region."""


def rewrite(text: str, doc: Path, results: Path = RESULTS) -> str:
    """`text` (the markdown file `doc`) with every figure region rendered afresh."""
    names = OPENING.findall(text)
    closed = [m.group(2) for m in REGION.finditer(text)]
    if names != closed or len(CLOSING.findall(text)) != len(names):
        raise QuoteError(f"{doc}: a figure region is not closed by <!-- /figures --> (opened: {names})")
    unknown = sorted(set(names) - set(FIGURES))
    if unknown:
        raise QuoteError(f"{doc}: unknown figure region(s) {unknown}; known: {sorted(FIGURES)}")
    return REGION.sub(lambda m: f"{m.group(1)}{FIGURES[m.group(2)](results, doc)}\n{m.group(4)}", text)


def stale(docs: List[Path] = None, results: Path = RESULTS) -> List[str]:
    """'file: region NAME' for every region whose text differs from its results files."""
    found = []
    for doc in docs or documents():
        text = doc.read_text()
        fresh = rewrite(text, doc, results)
        if fresh != text:
            old = {m.start(): m.group(2) for m in REGION.finditer(text)}
            new = dict(zip(old, (m.group(3) for m in REGION.finditer(fresh))))
            found += [f"{doc.relative_to(REPO) if doc.is_relative_to(REPO) else doc}: region {name}"
                      for start, name in old.items()
                      if REGION.search(text, start).group(3) != new[start]]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quote", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a region is stale")
    args = parser.parse_args(argv)
    if args.check:
        out = stale()
        for line in out:
            print(f"stale: {line} (run python -m benchmarks.quote)")
        return 1 if out else 0
    for doc in documents():
        text = doc.read_text()
        fresh = rewrite(text, doc)
        if fresh != text:
            doc.write_text(fresh)
            print(f"updated {doc.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
