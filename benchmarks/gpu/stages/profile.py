"""torch.profiler over one SHD training batch in S-TLLR online mode (after a warm-up batch):
CUDA kernels per batch and per time step, GPU busy (the union of kernel intervals) against the
span from the first kernel's start to the last one's end, and the most frequent kernels. The
interpreter run counts CPU ops instead (no GPU)."""
from __future__ import annotations

from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks import networks

from ..timing import PROFILER_SPAN


def busy_us(intervals) -> float:
    """Length of the union of (start, end) intervals."""
    total, end = 0.0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total += b - a
            end = b
        elif b > end:
            total += b - end
            end = b
    return total


def run(ctx) -> None:
    S, dev = ctx.S, ctx.device
    cfg = S["e2e_shd"]
    spec = networks.SHD.with_(T=cfg["T"], delay_ls=cfg["delay_ls"])
    case = f"SHD S-TLLR online, one batch B={cfg['batch']} T={spec.T} loss steps {spec.delay_ls}"
    x, y = networks.make_batch(spec, cfg["batch"], dev)
    torch.manual_seed(0)
    trainer = networks.make_trainer(spec, "stllr_online", dev)
    trainer.train_batch(x, y)
    ctx.clock.start()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        trainer.train_batch(x, y)
        if dev.type == "cuda":
            torch.cuda.synchronize()
    events = prof.events()
    if dev.type == "cuda":
        kernels = [e for e in events if str(getattr(e, "device_type", "")).endswith("CUDA")]
        spans = [(e.time_range.start, e.time_range.end) for e in kernels]
        busy = busy_us(spans)
        span = (max(b for _, b in spans) - min(a for a, _ in spans)) if spans else 0.0
        if not kernels:
            ctx.add("profile", case, "auto", "ERROR", detail="the profile holds no CUDA kernel events")
            return
        top = Counter(e.name for e in kernels).most_common(6)
        ctx.add("profile", case, "auto", us=span, timing=PROFILER_SPAN,
                achieved=f"{len(kernels)} kernels ({len(kernels) / spec.T:.1f} per time step); GPU busy "
                         f"{busy / 1e3:.3g} ms of {span / 1e3:.3g} ms ({100 * busy / max(span, 1e-9):.0f}%), "
                         f"idle {(span - busy) / 1e3:.3g} ms",
                note="most frequent: " + "; ".join(f"{n[:40]} x{c}" for n, c in top), headline=True)
    else:
        ops = [e for e in events if e.name.startswith("aten::")]
        ctx.add("profile", case, "auto", achieved=f"{len(ops)} aten ops on the CPU "
                f"({len(ops) / spec.T:.1f} per time step)", note="interpreter run: no GPU timeline")
