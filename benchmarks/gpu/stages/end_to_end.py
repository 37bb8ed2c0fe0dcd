"""End to end: one training batch of the SHD net (B=128, T=100, 90 loss steps; `--case shd`, early
in the run: the headline "how fast and how lean against BPTT") or of the Gesture VGG (B=16, T=20, 5
loss steps; `--case vgg`, late), built, optimised and trained by the training package
(`benchmarks.networks.make_trainer`), per method: S-TLLR online and time-fused (backend auto),
this package's BPTT, the benchmarks' lean BPTT (when this tree has it) and SpikingJelly (when
importable). Time: median of CUDA-event-timed batches after one warm-up batch (a whole pass: host
overhead included). Memory:
torch.cuda.max_memory_allocated during one batch minus the memory allocated before it (weights,
optimizer state and the input batch excluded).
"""
from __future__ import annotations

from typing import Optional

import torch

from benchmarks import common, networks

from ..timing import WHOLE_PASS

LABELS = {"stllr_online": "S-TLLR online", "stllr_fused": "S-TLLR time-fused", "bptt": "BPTT (stllr_kernels.nn)",
          "spikingjelly": "BPTT (SpikingJelly)"}


def lean_bptt_method() -> Optional[str]:
    """The lean BPTT's method name in benchmarks.networks (added by the launch-count work), if any."""
    return next((m for m in networks.METHODS if "lean" in m), None)


def methods(spec) -> list[tuple[str, Optional[str]]]:
    """(method, why it is skipped or None) in the order they are timed."""
    out = [(m, None) for m in ("stllr_online", "stllr_fused", "bptt")]
    lean = lean_bptt_method()
    out.append((lean or "lean_bptt", None if lean else "the lean BPTT is not in benchmarks/networks.py "
                "on this branch"))
    why = networks.spikingjelly_available()
    out.append(("spikingjelly", f"SpikingJelly not importable: {why}" if why else None))
    return [(m, w) for m, w in out if w or m in networks.methods(spec)]


CASES = ("shd", "vgg")


def specs(S, case=None):
    """(model spec, batch) of the SHD net and the Gesture VGG at this run's sizes (`case`: one)."""
    shd, vgg = S["e2e_shd"], S["e2e_vgg"]
    both = {"shd": (networks.SHD.with_(T=shd["T"], delay_ls=shd["delay_ls"]), shd["batch"]),
            "vgg": (networks.GESTURE.with_(T=vgg["T"], delay_ls=vgg["delay_ls"]), vgg["batch"])}
    return [both[c] for c in CASES if case in (None, c)]


def warm_only(ctx) -> None:
    """The warm-up stage's part: one batch of each S-TLLR method with the triton backend (its
    compiles), while the extension builds. The interpreter run keeps the automatic backend: whole
    training batches in Triton's interpreter would take minutes."""
    import stllr_kernels
    stllr_kernels.set_backend(None if ctx.tiny else "triton")
    for spec, batch in specs(ctx.S)[:ctx.S["cases"]]:  # SHD first: the early stage's
        x, y = networks.make_batch(spec, batch, ctx.device)
        for method in ("stllr_online", "stllr_fused"):
            with ctx.guard("warm-up", spec.name, method):
                networks.make_trainer(spec, method, ctx.device).train_batch(x, y)


def run(ctx) -> None:
    dev, S = ctx.device, ctx.S
    ctx.clock.start()  # the warm-up batch of each method is inside; the rows say which ran
    if ctx.tiny and ctx.args.case == "vgg":  # the SHD stage checks the same logic, in less CI time
        ctx.add("train batch", "Gesture VGG", "-", "skipped", note="interpreter run: the SHD stage covers the logic")
        return
    for spec, batch in specs(S, ctx.args.case)[:S["cases"]]:
        case = f"{spec.name} B={batch} T={spec.T} loss steps {spec.delay_ls}"
        x, y = networks.make_batch(spec, batch, dev)
        results, peak_of = {}, []
        for method, why in methods(spec):
            label = LABELS.get(method, method)
            if why:
                ctx.add("train batch", case, label, "skipped", note=why)
                continue
            if ctx.skip_if_over_budget("train batch", f"{case} {label}"):
                continue
            with ctx.guard("train batch", case, label):
                torch.manual_seed(0)
                trainer = networks.make_trainer(spec, method, dev)
                for _ in range(S["warm_batches"]):  # compiles, autotuning, cuDNN plans
                    trainer.train_batch(x, y)
                if ctx.tiny:  # one batch gives both: its time means nothing here anyway
                    seconds = ctx.clock.events_s(lambda: peak_of.append(
                        common.peak_tensor_bytes(lambda: trainer.train_batch(x, y), dev)), reps=1)
                    peak = peak_of.pop()
                else:
                    seconds = ctx.clock.events_s(lambda: trainer.train_batch(x, y), reps=S["reps"])
                    peak = common.peak_tensor_bytes(lambda: trainer.train_batch(x, y), dev)
                results[method] = (seconds, peak)
                ctx.add("train batch", case, label, us=seconds * 1e6, timing=WHOLE_PASS,
                        achieved=f"{seconds * 1e3:.4g} ms, peak {common.fmt_bytes(peak)}",
                        note=f"backend {_backend(dev)}" if method.startswith("stllr") else "")
                trainer = None  # free its memory before the next method
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
        summarize(ctx, case, results)


def summarize(ctx, case, results) -> None:
    """S-TLLR against this package's BPTT: time and memory ratios (goal: memory >= 10x below)."""
    bptt = results.get("bptt")
    for method in ("stllr_online", "stllr_fused"):
        if method not in results or bptt is None:
            continue
        seconds, peak = results[method]
        ctx.add("vs BPTT", case, LABELS[method],
                timing=WHOLE_PASS,
                achieved=f"time {bptt[0] / seconds:.2f}x faster, memory {bptt[1] / max(peak, 1):.1f}x less",
                limit="goal: memory >= 10x less at T=100", headline=True)


def _backend(dev) -> str:
    import stllr_kernels
    return stllr_kernels.get_backend_name(dev.type)
