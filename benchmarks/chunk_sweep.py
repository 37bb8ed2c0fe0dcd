"""Chunk-size sweep of --step-mode chunk: seconds per training batch and peak memory against the
chunk size C, beside the time-fused (--step-mode sequence) and online modes, for the SHD model and
the Gesture VGG at the paper's shapes. The default --chunk-size is chosen from it.

Time: all chunk sizes and the time-fused mode run interleaved in one process (median of the
repetitions; ratios to time-fused from the same rounds). Memory: peak live tensor bytes of one
batch (as benchmarks.memory measures it), which does not depend on the machine's load.

    python -m benchmarks.chunk_sweep --threads 1    # writes benchmarks/results/chunk_sweep_cpu.{md,csv,png}
    python -m benchmarks.chunk_sweep --quick
"""
from __future__ import annotations

import torch

from benchmarks import common, memory, networks
from benchmarks.networks import GESTURE, SHD, ModelSpec
from training.config import RunConfig

SIZES = (1, 2, 5, 10, 15, 20, 25, 30, 50)
FUSED, ONLINE = "time-fused", "online"


def configs(args) -> list[tuple[ModelSpec, int, tuple]]:
    """(model, batch, chunk sizes): SHD B=128 T=100 D=90; Gesture VGG B=--vgg-batch T=20 D=5."""
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else SIZES
    if args.quick:
        return [(SHD.with_(T=6, delay_ls=4), 3, (1, 2, 4)), (GESTURE.with_(T=3, delay_ls=2), 1, (1, 2))]
    return [(SHD, 128, tuple(s for s in sizes if s <= SHD.T)),
            (GESTURE, args.vgg_batch, tuple(s for s in sizes if s <= GESTURE.T))]


def label(size: int) -> str:
    return f"chunk {size}"


def sweep(spec: ModelSpec, batch: int, sizes: tuple, device: torch.device, reps: int,
          clock=common.CLOCKS["wall"]) -> list[dict]:
    x, y = networks.make_batch(spec, batch, device)
    trainers = {FUSED: networks.make_trainer(spec, "stllr_fused", device)}
    trainers.update({label(c): networks.make_trainer(spec, "stllr_chunk", device, c) for c in sizes})
    bar = common.progress_bar(len(trainers) * (reps + 1), f"{spec.name} time")

    def tick(msg):
        bar.set_postfix_str(msg)
        bar.update()
    load = common.load_average()
    times = common.time_interleaved({k: (lambda t=t: t.train_batch(x, y)) for k, t in trainers.items()},
                                    device, reps, progress=tick, clock=clock)
    bar.close()
    fused = common.median(times[FUSED])
    peaks = {ONLINE: memory.measure(spec, "stllr_online", batch, spec.T, device),
             FUSED: memory.measure(spec, "stllr_fused", batch, spec.T, device)}
    for c in common.progress_bar_iter(sizes, f"{spec.name} memory"):
        peaks[label(c)] = memory.measure(spec, "stllr_chunk", batch, spec.T, device, c)
    rows = []
    for name in [ONLINE, FUSED] + [label(c) for c in sizes]:
        med = common.median(times[name]) if name in times else float("nan")
        rows.append({"model": spec.name, "batch": batch, "T": spec.T, "loss steps": spec.delay_ls,
                     "threads": torch.get_num_threads(), "mode": name,
                     "chunk_size": int(name.split()[1]) if name.startswith("chunk") else "",
                     "median_s": f"{med:.4f}" if med == med else "", "median": common.fmt_seconds(med),
                     "x time-fused": f"{med / fused:.3f}x" if med == med else "—",
                     "all_s": " ".join(f"{t:.3f}" for t in times.get(name, [])),
                     "peak_bytes": peaks[name], "peak": common.fmt_bytes(peaks[name]),
                     "x online memory": f"{peaks[name] / peaks[ONLINE]:.2f}x", "load_avg_at_start": load})
    return rows


def plot(rows: list[dict], path) -> None:
    """Per model: time over time-fused (left axis) and memory over online (right axis) against C."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(5.8 * len(models), 4.2), squeeze=False)
    for ax, model in zip(axes[0], models):
        chunk = [r for r in rows if r["model"] == model and r["chunk_size"] != ""]
        sizes = [r["chunk_size"] for r in chunk]
        ax.plot(sizes, [float(r["x time-fused"].rstrip("x")) for r in chunk], "o-", color="C0",
                label="time / time-fused")
        ax.axhline(1.0, color="C0", ls=":", lw=1)
        ax.axhline(1.15, color="C0", ls="--", lw=1, label="goal: time <= 1.15x time-fused")
        ax.set_xscale("log")
        ax.set_xticks(sizes)
        ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xlabel("chunk size C (time steps per call)")
        ax.set_ylabel("seconds per batch / time-fused", color="C0")
        ax.set_title(f"{model} (B={chunk[0]['batch']}, T={chunk[0]['T']}, D={chunk[0]['loss steps']})", fontsize=10)
        ax2 = ax.twinx()
        ax2.plot(sizes, [r["peak_bytes"] / 2 ** 20 for r in chunk], "s-", color="C1", label="peak memory (chunk)")
        for r, style in ((next(r for r in rows if r["model"] == model and r["mode"] == ONLINE), ":"),
                         (next(r for r in rows if r["model"] == model and r["mode"] == FUSED), "-.")):
            ax2.axhline(r["peak_bytes"] / 2 ** 20, color="C1", ls=style, lw=1, label=f"peak memory ({r['mode']})")
        ax2.set_ylabel("peak MiB", color="C1")
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=7, loc="upper center")
    fig.suptitle("Chunk-size sweep of --step-mode chunk", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5, help="timed repetitions (median)")
    p.add_argument("--vgg-batch", type=int, default=4, help="VGG batch (as train_step on CPU)")
    p.add_argument("--sizes", default=None, help=f"comma-separated chunk sizes (default {','.join(map(str, SIZES))})")
    args = common.parse(p, argv)
    device = torch.device(args.device)
    reps = 1 if args.quick else args.reps
    report = common.Report("chunk_sweep" + ("_cpuclock" if args.clock == "cpu" else ""), "Chunk-size sweep", args.out, device)
    rows = []
    for spec, batch, sizes in configs(args):
        if args.models and spec.kind not in args.models.split(","):
            continue
        rows += sweep(spec, batch, sizes, device, reps, common.CLOCKS[args.clock])
        for r in rows[-len(sizes) - 2:]:
            print(f"{r['model']:16s} {r['mode']:11s} {r['median']:>10s} {r['x time-fused']:>8s} of time-fused  "
                  f"{r['peak']:>10s} {r['x online memory']:>6s} of online memory")
    default = RunConfig().chunk_size
    report.section("Method", "Seconds: median of the repetitions of one training batch (forward, a backward per "
                   "chunk holding loss steps, one Adam step), all modes interleaved in one process, "
                   f"{reps} repetitions after a warm-up round, {args.clock} clock; `x time-fused` is the ratio of medians "
                   "from the same rounds. Memory: " + common.MEMORY_METHOD[device.type] + ". Models and "
                   "engine as benchmarks/train_step.py and benchmarks/memory.py. The default "
                   f"--chunk-size is {default} (docs/chunked.md says why).")
    report.section("Results", common.markdown_table(
        rows, ["model", "threads", "mode", "median", "x time-fused", "peak", "x online memory"]))
    png = report.path(".png")
    plot(rows, png)
    report.parts += [f"![chunk-size sweep]({png.name})", ""]
    print("wrote", report.write(rows))


if __name__ == "__main__":
    main()
