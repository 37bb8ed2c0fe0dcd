"""One row of the GPU check, the files the rows become, and the short table printed last.

A stage process appends its rows to a JSON-lines file, one line per row, flushed at once, so that a
stage killed by its time limit or by a sticky CUDA error still leaves every row it finished.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Iterable, Optional

COLUMNS = ("stage", "check", "case", "provider", "verdict", "detail", "us", "ref_us", "timing", "achieved",
           "limit", "pct", "note")
BAD_VERDICTS = ("FAIL", "ERROR", "TIMEOUT", "CRASH")


def make_row(stage: str, check: str, case: str = "", provider: str = "", verdict: str = "info",
             detail: str = "", us: Optional[float] = None, ref_us: Optional[float] = None,
             timing: str = "", achieved: str = "", limit: str = "", pct: Optional[float] = None,
             note: str = "", headline: bool = False) -> dict:
    """A row; `verdict` is ok / FAIL / ERROR / TIMEOUT / CRASH / skipped / info (a timing only).
    `timing` says what `us` / `ref_us` measure (timing.DEVICE, WHOLE_PASS or PROFILER_SPAN).
    `headline` rows are repeated in the short table printed at the end."""
    return {"stage": stage, "check": check, "case": case, "provider": provider, "verdict": verdict,
            "detail": _clean(detail), "us": _num(us), "ref_us": _num(ref_us), "timing": timing,
            "achieved": achieved,
            "limit": limit, "pct": "" if pct is None else f"{pct:.0f}%", "note": _clean(note),
            "headline": headline}


def _num(x: Optional[float]) -> str:
    return "" if x is None else f"{x:.4g}"


def _clean(text: str) -> str:
    """One line, no table separators."""
    return " ".join(str(text).split()).replace("|", "/")[:300]


class RowSink:
    """Appends rows to a JSON-lines file (flushed per row)."""

    def __init__(self, path: str):
        self.path = path

    def add(self, row: dict) -> dict:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row


def read_rows(path: str) -> list[dict]:
    """The rows of a JSON-lines file; a last line cut short by a kill is dropped."""
    rows = []
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def read_rows_csv(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def is_bad(row: dict) -> bool:
    return row["verdict"].startswith(BAD_VERDICTS)


def markdown_table(rows: Iterable[dict], columns=COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: str, rows: list[dict]) -> None:
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(path + ".tmp", path)


def stage_summary(stages: list[dict], rows: list[dict]) -> list[dict]:
    """Per stage: its status, wall seconds and verdict counts."""
    out = []
    for st in stages:
        mine = [r for r in rows if r["stage"] == st["name"]]
        counts = {}
        for r in mine:
            key = r["verdict"].split()[0] if r["verdict"] else "info"
            counts[key] = counts.get(key, 0) + 1
        out.append({"stage": st["name"], "status": st.get("status", "not run"),
                    "seconds": st.get("seconds", ""),
                    "rows": ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"})
    return out


def short_table(stages: list[dict], rows: list[dict]) -> str:
    """What the terminal shows last: the stages, every bad row, the headline figures."""
    parts = [markdown_table(stage_summary(stages, rows), ("stage", "status", "seconds", "rows"))]
    bad = [r for r in rows if is_bad(r)]
    if bad:
        parts += ["", f"{len(bad)} bad rows:",
                  markdown_table(bad[:25], ("stage", "check", "case", "provider", "verdict", "detail"))]
    heads = [r for r in rows if r.get("headline")]
    if heads:
        parts += ["", markdown_table(heads, ("check", "case", "provider", "us", "timing", "achieved",
                                             "limit", "pct", "note"))]
    return "\n".join(parts)
