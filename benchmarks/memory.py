"""Peak training memory against the number of time steps T: S-TLLR online, time-fused and chunked,
BPTT (this package's layers) and SpikingJelly's BPTT, for the SHD model and the Gesture VGG.

The loss window grows with T in the paper's proportion (SHD 90 of 100 steps, Gesture 5 of 20).
CPU: live tensor bytes tracked op by op (common.LiveTensorTracker); GPU: max_memory_allocated.

    python -m benchmarks.memory            # writes benchmarks/results/memory.{md,csv,png}
    python -m benchmarks.memory --quick
"""
from __future__ import annotations

import gc
import math

import torch

from benchmarks import common, networks, plot
from benchmarks.networks import GESTURE, SHD, ModelSpec
from training.config import RunConfig

METHODS = {  # label -> method of networks.methods
    "S-TLLR online": "stllr_online",
    "S-TLLR time-fused": "stllr_fused",
    "S-TLLR chunk": "stllr_chunk",
    "BPTT (stllr_kernels.nn)": "bptt",
    "BPTT (SpikingJelly)": "spikingjelly",
}
T_VALUES = (10, 25, 50, 100, 200)
BPTT_METHODS = ("bptt", "spikingjelly")
SHD_T_VALUES = T_VALUES + (400,)  # the chunk mode's memory shown flat up to T=400


def configs(args, device: torch.device) -> list[tuple[ModelSpec, int, tuple]]:
    """(model, batch, T values)."""
    if args.quick:
        return [(SHD, 3, (4, 8)), (GESTURE, 1, (4, 8))]
    vgg_ts = tuple(int(t) for t in args.vgg_T.split(",")) if args.vgg_T else T_VALUES
    return [(SHD, 128, SHD_T_VALUES), (GESTURE, args.vgg_batch, vgg_ts)]


def loss_steps(spec: ModelSpec, T: int) -> int:
    """The paper's loss window scaled to T (SHD 90/100, Gesture 5/20), at least one step."""
    return max(1, min(T, math.ceil(T * spec.delay_ls / spec.T)))


def measure(spec: ModelSpec, method: str, batch: int, T: int, device: torch.device, chunk_size=None) -> int:
    """Peak bytes of one training batch at T steps, after a 2-step warm-up batch that creates the
    optimizer state (so that the peak is the batch's own: activations, saved tensors, gradients)."""
    run_spec = spec.with_(T=T, delay_ls=loss_steps(spec, T))
    torch.manual_seed(0)
    trainer = networks.make_trainer(run_spec, method, device, chunk_size)
    x, y = networks.make_batch(run_spec, batch, device)
    trainer.delay_ls = 1
    trainer.train_batch(x[:2], y)
    trainer.delay_ls = run_spec.delay_ls
    gc.collect()
    peak = common.peak_tensor_bytes(lambda: trainer.train_batch(x, y), device)
    del trainer, x, y
    gc.collect()
    return peak


def main(argv=None) -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--vgg-batch", type=int, default=1)
    p.add_argument("--vgg-T", default=None, help="comma-separated T values for the VGG (default all)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="the chunk rows' --chunk-size (default: the training flag's default)")
    p.add_argument("--vgg-bptt-max-T", type=int, default=None,
                   help="leave out the VGG's BPTT rows above this T (this package's BPTT VGG holds "
                        "about 0.1 GiB per step at batch 1: 21 GiB at T=200)")
    args = common.parse(p, argv)
    device = torch.device(args.device)
    report = common.Report("memory", "Peak training memory against time steps", args.out, device)
    rows, series, summary = [], {}, []
    plans = [c for c in configs(args, device) if not args.models or c[0].kind in args.models.split(",")]
    methods = {k: v for k, v in METHODS.items()
               if v != "spikingjelly" or networks.spikingjelly_available() is None}
    bar = common.progress_bar(sum(len(ts) for _, _, ts in plans) * len(methods), "memory")
    for spec, batch, ts in plans:
        peaks: dict[tuple[str, int], int] = {}
        for T in ts:
            for label, method in methods.items():
                bar.set_postfix_str(f"{spec.name} T={T} {label}")
                if (spec.kind == "vgg" and method in BPTT_METHODS and args.vgg_bptt_max_T is not None
                        and T > args.vgg_bptt_max_T):
                    rows.append({"model": spec.name, "batch": batch, "T": T, "loss steps": loss_steps(spec, T),
                                 "method": label, "peak": "—", "note": "left out (--vgg-bptt-max-T)"})
                    bar.update()
                    continue
                peaks[label, T] = measure(spec, method, batch, T, device, args.chunk_size)
                bar.update()
                base = peaks.get(("S-TLLR online", T))
                rows.append({"model": spec.name, "batch": batch, "T": T, "loss steps": loss_steps(spec, T),
                             "method": label, "peak_bytes": peaks[label, T],
                             "peak": common.fmt_bytes(peaks[label, T]),
                             "x S-TLLR online": f"{peaks[label, T] / base:.1f}x" if base else ""})
                series.setdefault(spec.name, {}).setdefault(label, []).append(
                    (T, peaks[label, T] / 2 ** 20))
        model = networks.make_trainer(spec, "stllr_online", "cpu").model
        params = sum(p.numel() * p.element_size() for p in model.parameters())
        summary.append(_goals(spec, ts, peaks, args.chunk_size) + f" (model parameters: {common.fmt_bytes(params)}; the "
                       "gradients, standardized weights and their autograd intermediates are "
                       "weight-sized tensors that do not grow with T)")
    bar.close()
    for line in summary:
        print(line)
    report.section("Method", f"Memory = {common.MEMORY_METHOD[device.type]}. Each configuration builds "
                   "a fresh model and optimizer, runs a 2-step warm-up batch (creating Adam's state), "
                   "then measures one training batch (the training package's models and engine, see "
                   "networks.py; dropout as in training, train mode). Tensor bytes do not depend on the machine's load. Loss steps scale with T in the paper's proportion "
                   f"(SHD {SHD.delay_ls}/{SHD.T}, Gesture {GESTURE.delay_ls}/{GESTURE.T}). Batch: SHD 128, "
                   f"VGG {args.vgg_batch if not args.quick else 1} (input 2x32x32). S-TLLR chunk: "
                   f"--step-mode chunk --chunk-size {args.chunk_size or RunConfig().chunk_size}.")
    report.section("Goals", *summary)
    report.section("Results", common.markdown_table(
        rows, ["model", "batch", "T", "loss steps", "method", "peak", "x S-TLLR online", "note"]))
    png = plot.lines_vs_t(series, "peak MiB", f"Peak training memory ({device.type})", report.path(".png"))
    report.parts += [f"![memory against T]({png.name})", ""]
    print("wrote", report.write(rows))


def _goals(spec: ModelSpec, ts, peaks, chunk_size=None) -> str:
    """The issue's goals, measured: flatness of S-TLLR online in T and BPTT / S-TLLR at T=100."""
    parts = [f"**{spec.name}**:"]
    online = {T: peaks["S-TLLR online", T] for T in ts}
    lo, hi = min(ts), max(ts)
    ref = 25 if 25 in ts else lo
    parts.append(f"S-TLLR online peak at T={hi} is {online[hi] / online[ref]:.3f}x its peak at T={ref} "
                 f"(goal: within 1.10x);")
    mid = 100 if 100 in ts else hi
    if ("S-TLLR chunk", hi) in peaks:  # goals: flat in T; SHD: growth <= 5 % from T=50, <= 2x online at T=100
        chunk = {T: peaks["S-TLLR chunk", T] for T in ts}
        # from the first T whose loss window holds two chunks on, nothing grows with T (a chunk's
        # activations, the gradients, the optimizer's temporaries); before, later chunks are shorter
        size = chunk_size or RunConfig().chunk_size
        flat_from = next((T for T in ts if loss_steps(spec, T) >= 2 * size), hi)
        start = 50 if spec.kind == "shd" and 50 in ts else flat_from
        growth = chunk[hi] / chunk[start]
        goal = f" (goal: <= 1.05x, {'met' if growth <= 1.05 else 'not met'})" if spec.kind == "shd" else ""
        parts.append(f"S-TLLR chunk peak at T={hi} is {growth:.3f}x its peak at T={start}{goal}, at most "
                     f"{max(chunk.values()) / min(online.values()):.2f}x S-TLLR online's at any T; S-TLLR "
                     f"chunk / S-TLLR online at T={mid}: {chunk[mid] / online[mid]:.2f}x"
                     + (f" (goal: <= 2x, {'met' if chunk[mid] <= 2 * online[mid] else 'not met'});"
                        if spec.kind == "shd" else ";"))
    for label in ("BPTT (stllr_kernels.nn)", "BPTT (SpikingJelly)"):
        if (label, mid) in peaks:
            parts.append(f"{label} / S-TLLR online at T={mid}: {peaks[label, mid] / online[mid]:.1f}x"
                         + (" (goal >= 10x for SHD);" if spec.kind == "shd" else ";"))
    return " ".join(parts)


if __name__ == "__main__":
    main()
