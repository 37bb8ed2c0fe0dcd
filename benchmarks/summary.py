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


def headline(out: Path, device: str) -> str:
    speed = _read(out / f"train_step_{device}.csv")
    memory = _read(out / f"memory_{device}.csv")
    macs = _read(out / "macs.csv")
    lines = ["| model | measure | S-TLLR | BPTT (this package) | BPTT (lean torch) | BPTT (SpikingJelly) | naive S-TLLR |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    threads = next((r["threads"] for r in speed if r.get("threads")), None)  # the run's first thread count
    for model in dict.fromkeys(r["model"] for r in speed + memory + macs):
        t = {r["provider"]: r for r in speed if r["model"] == model and r.get("threads") == threads}
        if t:
            def cell(label):
                r = t.get(label)
                return f"{r['median']} ({r['ratio']})" if r and r.get("median_s") else "—"
            online, fused, chunk = (t.get(f"S-TLLR {m} [auto]") for m in ("online", "time-fused", "chunk"))
            stllr = (f"online {online['median']} [{online['backend']}], time-fused "
                     f"{fused['median'] if fused else '—'}"
                     + (f", chunk {chunk['median']} ({chunk['ratio']})" if chunk and chunk.get("median_s") else "")
                     ) if online else "—"
            shape = t[next(iter(t))]["shape"] + (f", {threads} thread(s)" if threads else "")
            lines.append(f"| {model} | s / batch ({shape}) | {stllr} | "
                         f"{cell('BPTT (stllr_kernels.nn)')} | {cell('BPTT (lean torch)')} | "
                         f"{cell('BPTT (SpikingJelly)')} | "
                         f"{cell('S-TLLR naive outer-product')} |")
        m = {r["method"]: r for r in memory if r["model"] == model and r["T"] == "100"}
        if m:
            def mem(label):
                r = m.get(label)
                return f"{r['peak']} ({r['x S-TLLR online']})" if r and r.get("peak_bytes") else "—"
            chunk = f", chunk {m['S-TLLR chunk']['peak']}" if "S-TLLR chunk" in m else ""
            lines.append(f"| {model} | peak memory, T=100, B={m['S-TLLR online']['batch']} | online "
                         f"{m['S-TLLR online']['peak']}, time-fused {m['S-TLLR time-fused']['peak']}{chunk} | "
                         f"{mem('BPTT (stllr_kernels.nn)')} | — | {mem('BPTT (SpikingJelly)')} | — |")
        c = {r["method"]: r for r in macs if r["model"] == model}
        if c:
            fused = c.get("S-TLLR time-fused")
            stllr = f"online {c['S-TLLR']['total']}" + (f", time-fused {fused['total']}" if fused else "")
            ratios = f"{c['S-TLLR']['BPTT / S-TLLR total']}" + (f"; {fused['BPTT / S-TLLR total']}" if fused else "")
            lines.append(f"| {model} | MACs / sample (T={c['S-TLLR']['T']}, delay-ls "
                         f"{c['S-TLLR']['delay-ls']}) | {stllr} | {c['BPTT']['total']} ({ratios}) | — | — | — |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, default=common.RESULTS_DIR)
    args = p.parse_args(argv)
    table = headline(args.out, args.device)
    note = ("Ratios in parentheses: time or memory over S-TLLR online; MACs BPTT over S-TLLR (online; time-fused). "
            f"Details: [train_step_{args.device}.md](train_step_{args.device}.md), "
            f"[memory_{args.device}.md](memory_{args.device}.md), [macs.md](macs.md).")
    (args.out / f"summary_{args.device}.md").write_text(f"# Benchmark summary ({args.device})\n\n{table}\n\n{note}\n")
    print(table)


if __name__ == "__main__":
    main()
