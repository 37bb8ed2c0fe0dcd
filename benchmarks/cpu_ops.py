"""CPU ops of the C++ extension (`cpu` backend) against the reference, as ratios measured in one run.

    PYTHONPATH=. python benchmarks/cpu_ops.py [--min-run-time 1.0] [--out benchmarks/results]

Writes cpu_ops.md (table, machine, torch version, command, load average), appends the rows to
cpu_ops.csv and plots the ratios to cpu_ops.png. Times are medians of torch.utils.benchmark's
blocked_autorange, providers interleaved over
several rounds (median of the round medians), at 1 thread and at torch's default thread count. Goals: LIF step at 1e6 neurons >= 3x
the reference; the SHD recurrent layer's eligibility gradient (B=128, 700->450) at least as fast as
the reference's two GEMMs and >= 20x faster than the naive per-sample outer-product sum.
Ops found slower than the reference go into cpu_cuda.CPU_REFERENCE_FALLBACK; this script times the
compiled op itself (`cpu_cuda.conv_backward_compiled`) so the decision can be revisited.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import sys

import torch
import torch.utils.benchmark as tb
from tqdm import tqdm

from stllr_kernels import reference as ref
from stllr_kernels.backends import cpu_cuda
from stllr_kernels.config import RuleConfig


def naive_eligibility(L, psi, trpost_prev, x, trpre, alpha_post, alpha_pre):
    """docs/rule.md section 2 written per sample: the B x N x K outer products, summed over the batch."""
    return (L[:, :, None] * (alpha_post * trpost_prev[:, :, None] * x[:, None, :]
                             + alpha_pre * psi[:, :, None] * trpre[:, None, :])).sum(0)


def lif_case(neurons):
    cfg = RuleConfig(0.5, 0.8, -0.2, 1.0)
    args = (torch.randn(neurons // 1000, 1000) * 0.8, torch.randn(neurons // 1000, 1000) * 0.5,
            torch.rand(neurons // 1000, 1000), torch.sigmoid(torch.tensor(2.0)), torch.tensor(0.6), cfg)
    return args


def eligibility_args(batch, n, k, needs_x):
    L, psi, prev = torch.randn(batch, n), torch.rand(batch, n) * 0.1, torch.rand(batch, n)
    x, trpre = (torch.rand(batch, k) > 0.9).float(), torch.rand(batch, k)
    return (L, psi, psi, prev, x, trpre, torch.randn(n, k) * 0.05, 0.5, 1.0, needs_x, True)


def cases():
    """(name, shape text, {provider: (fn, args)})."""
    out = []
    lif = lif_case(1_000_000)
    out.append(("lif_step", "1e6 neurons, fast_sigmoid", {"reference": (ref.lif_step, lif), "cpu": (cpu_cuda.lif_step, lif)}))
    tr = (torch.rand(1000, 1000), (torch.rand(1000, 1000) > 0.8).float(), 0.8)
    out.append(("pre_trace", "1e6", {"reference": (ref.pre_trace, tr), "cpu": (cpu_cuda.pre_trace, tr)}))
    seq = (torch.randn(20, 128, 450) * 0.8, torch.zeros(128, 450), torch.zeros(128, 450),
           torch.sigmoid(torch.tensor(5.0)), torch.tensor(0.6), RuleConfig(0.5, 1, 1, 1), 10)
    out.append(("lif_sequence", "T=20, 128x450, 10 saved", {"reference": (ref.lif_sequence, seq), "cpu": (cpu_cuda.lif_sequence, seq)}))
    tseq = ((torch.rand(20, 128, 700) > 0.9).float(), torch.zeros(128, 700), 1.0, 10)
    out.append(("trace_sequence", "T=20, 128x700, 10 saved", {"reference": (ref.trace_sequence, tseq), "cpu": (cpu_cuda.trace_sequence, tseq)}))
    shd = eligibility_args(128, 450, 700, False)
    L, psi, _, prev, x, trpre = shd[:6]
    out.append(("linear_backward (SHD W)", "B=128, 700->450", {
        "reference": (ref.linear_backward, shd), "cpu": (cpu_cuda.linear_backward, shd),
        "naive": (naive_eligibility, (L, psi, prev, x, trpre, 0.5, 1.0))}))
    rec = eligibility_args(128, 450, 450, False)
    out.append(("linear_backward (SHD W_rec)", "B=128, 450->450", {"reference": (ref.linear_backward, rec), "cpu": (cpu_cuda.linear_backward, rec)}))
    hid = eligibility_args(128, 512, 512, True)
    out.append(("linear_backward (+dx)", "B=128, 512->512", {"reference": (ref.linear_backward, hid), "cpu": (cpu_cuda.linear_backward, hid)}))
    read = (torch.randn(128, 20), None, None, None, torch.rand(128, 450), torch.rand(128, 450), torch.randn(20, 450), 0.0, 1.0, True, True)
    out.append(("linear_backward (readout)", "B=128, 450->20", {"reference": (ref.linear_backward, read), "cpu": (cpu_cuda.linear_backward, read)}))
    g = torch.randn(8, 64, 16, 16)
    conv = (g, torch.rand_like(g), torch.rand_like(g), torch.rand_like(g), (torch.rand(8, 32, 16, 16) > 0.8).float(),
            torch.rand(8, 32, 16, 16), torch.randn(64, 32, 3, 3), (1, 1), (1, 1), (1, 1), 1, -1.0, 1.0, True, True)
    out.append(("conv_backward", "B=8, 32->64, 16x16, 3x3", {"reference": (ref.conv_backward, conv), "cpu": (cpu_cuda.conv_backward_compiled, conv)}))
    return out


def median_ms(fn, args, min_run_time, threads):
    timer = tb.Timer("fn(*args)", globals={"fn": fn, "args": args}, num_threads=threads)
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e3


def measure(providers, min_run_time, threads, rounds):
    """Median over `rounds` of each provider's median, the providers taking turns (fair under load)."""
    samples = {p: [] for p in providers}
    for _ in range(rounds):
        for p, (fn, a) in providers.items():
            budget = min_run_time / rounds if p != "naive" else 0.1
            samples[p].append(median_ms(fn, a, budget, threads))
    return {p: sorted(v)[len(v) // 2] for p, v in samples.items()}


def machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, torch.get_num_threads()],
                        help="thread counts to measure at")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    reason = cpu_cuda.unavailable_reason("cpu", "cpu")
    if reason:
        sys.exit(f"cpu backend unavailable: {reason}")
    torch.manual_seed(0)
    load_before = os.getloadavg()
    rows = []
    threads = sorted(set(args.threads))
    work = [(t, c) for t in threads for c in cases()]
    for n_threads, (name, shape, providers) in tqdm(work, desc="cpu ops"):
        rows.append((n_threads, name, shape, measure(providers, args.min_run_time, n_threads, args.rounds)))
    load_after = os.getloadavg()
    write_results(rows, args, load_before, load_after)


def write_results(rows, args, load_before, load_after):
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    command = "PYTHONPATH=. python " + " ".join(["benchmarks/cpu_ops.py", *sys.argv[1:]])
    lines = [
        "# CPU ops: the `cpu` backend (C++ extension) against the reference", "",
        f"- date: {stamp}", f"- machine: {machine()}", f"- command: `{command}`",
        "- time: median of torch.utils.benchmark blocked_autorange, milliseconds; ratio = reference / cpu "
        "(higher is faster)",
        f"- load average (1 min) before / after: {load_before[0]:.1f} / {load_after[0]:.1f}. The 2 cores were "
        "shared with other jobs while this ran, so absolute times are noisy; each ratio comes from "
        "back-to-back measurements in the same run.",
        *([f"- WARNING: the load average exceeded the {os.cpu_count()} cores: multi-thread rows are then "
           "dominated by OpenMP threads waiting for descheduled peers (both providers, erratically); judge "
           "by the 1-thread rows and rerun on an idle machine."] if max(load_before[0], load_after[0]) > os.cpu_count() else []),
        "",
        "| threads | op | shape | reference ms | cpu ms | reference / cpu | naive ms | naive / cpu |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    csv_path = os.path.join(args.out, "cpu_ops.csv")
    new_csv = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        writer = csv.writer(f)
        if new_csv:
            writer.writerow(["date", "threads", "op", "shape", "provider", "median_ms", "machine"])
        for n_threads, name, shape, t in rows:
            naive = t.get("naive")
            lines.append(f"| {n_threads} | {name} | {shape} | {t['reference']:.3f} | {t['cpu']:.3f} | {t['reference'] / t['cpu']:.2f}x | "
                         + (f"{naive:.1f} | {naive / t['cpu']:.0f}x |" if naive else "| |"))
            for provider, ms in t.items():
                writer.writerow([stamp, n_threads, name, shape, provider, f"{ms:.4f}", machine()])
    slower = sorted({name.split()[0] for k, name, _, t in rows if k == 1 and t["reference"] < t["cpu"]})
    lines += ["", f"Ops slower than the reference at 1 thread in this run: {', '.join(slower) or 'none'}. "
              f"Ops for which the cpu backend runs the reference on CPU tensors (cpu_cuda.CPU_REFERENCE_FALLBACK): "
              f"{', '.join(sorted(cpu_cuda.CPU_REFERENCE_FALLBACK)) or 'none'}."]
    with open(os.path.join(args.out, "cpu_ops.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(rows, os.path.join(args.out, "cpu_ops.png"), stamp)
    print("\n".join(lines))


def plot(rows, path, stamp):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{n} ({k} thr)\n{s}" for k, n, s, _ in rows]
    ratios = [t["reference"] / t["cpu"] for _, _, _, t in rows]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    ax.set_xscale("log")
    ax.barh(names[::-1], ratios[::-1], color=["tab:green" if r >= 1 else "tab:red" for r in ratios[::-1]])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xlabel("speed-up of the cpu backend over the reference (reference time / cpu time)")
    ax.set_title(f"stllr cpu ops, {stamp}", fontsize=10)
    ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
