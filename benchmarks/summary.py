"""The headline table of the benchmark results (the one README.md shows), from their CSVs.

    python -m benchmarks.summary [--device cpu]    # prints it and writes results/summary_<device>.md
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from benchmarks import common


def _read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


# The S-TLLR mode the other columns are divided by: the training default (chunk) when the run has it
BASE_MODES = ("chunk", "online")


def _base(rows: dict, key: str, value: str):
    """The row of the first of BASE_MODES this run measured (`rows` maps a method label to its row)."""
    for mode in BASE_MODES:
        r = rows.get(key.format(mode))
        if r and r.get(value):
            return mode, r
    return None, None


def headline(out: Path, device: str) -> tuple[str, str]:
    """The table, and the mode its ratios are over."""
    speed = _read(out / f"train_step_{device}.csv")
    memory = _read(out / f"memory_{device}.csv")
    macs = _read(out / "macs.csv")
    lines = ["| model | measure | S-TLLR | BPTT (this package) | BPTT (lean torch) | BPTT (SpikingJelly) | naive S-TLLR |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    bases = set()
    threads = next((r["threads"] for r in speed if r.get("threads")), None)  # the run's first thread count
    for model in dict.fromkeys(r["model"] for r in speed + memory + macs):
        t = {r["provider"]: r for r in speed if r["model"] == model and r.get("threads") == threads}
        mode, base = _base(t, "S-TLLR {} [auto]", "median_s")
        if base:
            bases.add(mode)

            def cell(label):
                r = t.get(label)
                return (f"{r['median']} ({float(r['median_s']) / float(base['median_s']):.2f}x)"
                        if r and r.get("median_s") else "—")
            stllr = ", ".join(f"{m} {t[f'S-TLLR {m} [auto]']['median']}"
                              + (f" [{t[f'S-TLLR {m} [auto]']['backend']}]" if m == mode else "")
                              for m in ("chunk", "time-fused", "online")
                              if t.get(f"S-TLLR {m} [auto]", {}).get("median_s"))
            shape = base["shape"] + (f", {threads} thread(s)" if threads else "")
            lines.append(f"| {model} | s / batch ({shape}) | {stllr} | "
                         f"{cell('BPTT (stllr_kernels.nn)')} | {cell('BPTT (lean torch)')} | "
                         f"{cell('BPTT (SpikingJelly)')} | "
                         f"{cell('S-TLLR naive outer-product')} |")
        by_t = {}
        for r in memory:
            if r["model"] == model and r.get("peak_bytes"):
                by_t.setdefault(int(r["T"]), {})[r["method"]] = r
        mode, base = _base(by_t.get(100, {}), "S-TLLR {}", "peak_bytes")
        if base:
            m = by_t[100]
            bases.add(mode)

            def mem(label):
                # BPTT's memory grows with T: where it was left out at T=100, its largest measured T
                at = max((T for T in by_t if T <= 100 and label in by_t[T]), default=None)
                if at is None:
                    return "—"
                r, b = by_t[at][label], by_t[at].get(f"S-TLLR {mode}")
                where = "" if at == 100 else f" at T={at}"
                return f"{r['peak']}{where}" + (f" ({int(r['peak_bytes']) / int(b['peak_bytes']):.1f}x)" if b else "")
            stllr = ", ".join(f"{k} {m[f'S-TLLR {k}']['peak']}" for k in ("chunk", "time-fused", "online")
                              if f"S-TLLR {k}" in m)
            lines.append(f"| {model} | peak memory, T=100, B={base['batch']} | {stllr} | "
                         f"{mem('BPTT (stllr_kernels.nn)')} | — | {mem('BPTT (SpikingJelly)')} | — |")
        c = {r["method"]: r for r in macs if r["model"] == model}
        if c:
            fused = c.get("S-TLLR time-fused")
            stllr = f"online {c['S-TLLR']['total']}" + (f", time-fused {fused['total']}" if fused else "")
            ratios = f"{c['S-TLLR']['BPTT / S-TLLR total']}" + (f"; {fused['BPTT / S-TLLR total']}" if fused else "")
            lines.append(f"| {model} | MACs / sample (T={c['S-TLLR']['T']}, delay-ls "
                         f"{c['S-TLLR']['delay-ls']}) | {stllr} | {c['BPTT']['total']} ({ratios}) | — | — | — |")
    over = " or ".join(f"S-TLLR {m}" for m in BASE_MODES if m in bases) or "S-TLLR"
    return "\n".join(lines), over


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = p.parse_args(argv)
    table, over = headline(args.out, args.device)
    note = (f"Ratios in parentheses: time or memory over {over} (the first S-TLLR figure of the row); "
            "MACs: BPTT over S-TLLR (online; time-fused). "
            f"Details: [train_step_{args.device}.md](train_step_{args.device}.md), "
            f"[memory_{args.device}.md](memory_{args.device}.md), [macs.md](macs.md).")
    (args.out / f"summary_{args.device}.md").write_text(f"# Benchmark summary ({args.device})\n\n{table}\n\n{note}\n")
    print(table)


if __name__ == "__main__":
    main()
