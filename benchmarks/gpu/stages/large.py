"""One case of each kind above 2^31 elements, where 32-bit indexing would wrap: lif_step and
pre_trace on n > 2^31 (int64 offsets), linear_backward with x / trpre of more than 2^31 elements
(the dW kernel's batch split). The reference runs chunk by chunk, so that one GPU's memory
suffices: the lif_step case holds 7 tensors of 8.6 GB (60 GB), the linear case about 52 GB; on an
80 GB H100 that leaves little for the stages running beside this one, so a case whose memory is not
free gets a skipped row saying how much it needed (not an out-of-memory ERROR). The interpreter run
uses small sizes (no 32-bit limit is reached there; it checks the code path only).
"""
from __future__ import annotations

import torch

from ..compare import MAX_FLIP_FRACTION, Verdict
from . import checks
from .inputs import beta_theta, linear_inputs, rule, spikes


def run(ctx) -> None:
    provs = ctx.providers(["triton", ctx.ext_name()])
    ctx.clock.start()
    S, dev = ctx.S, ctx.device
    n = S["large_n"]
    chunk = 2 ** 28 if not ctx.tiny else 1000
    note = "" if n > 2 ** 31 else "tiny run: below 2^31, the code path only"
    rows, k, n_out = S["large_rows"], S["large_k"], S["large_n_out"]
    lin_case = f"x [{rows}, {k}] ({rows * k} elements) -> {n_out} fp32"
    # bytes each case holds at its peak: its tensors, plus a reference chunk's temporaries
    need = {"lif_step": 4 * (7 * n + 10 * chunk), "pre_trace": 4 * (3 * n + 4 * chunk),
            "linear_backward": 4 * (3 * rows * k + 8 * rows * n_out)}
    for name, ops in provs.items():
        if fits(ctx, "lif_step", f"n={n} fp32", name, need["lif_step"]):
            with ctx.guard("lif_step", f"n={n}", name):
                verdict = lif_step_chunked(ops, n, chunk, dev)
                ctx.add("lif_step", f"n={n} fp32", name, verdict.word, detail=verdict.detail, note=note)
            _free(dev)
        if fits(ctx, "pre_trace", f"n={n} fp32", name, need["pre_trace"]):
            with ctx.guard("pre_trace", f"n={n}", name):
                verdict = pre_trace_chunked(ops, n, chunk, dev)
                ctx.add("pre_trace", f"n={n} fp32", name, verdict.word, detail=verdict.detail, note=note)
            _free(dev)
        if fits(ctx, "linear_backward", lin_case, name, need["linear_backward"]):
            with ctx.guard("linear_backward", f"x {rows}x{k}", name):
                args = linear_inputs(dev, (rows,), n_out, k)
                verdict = checks.linear_backward(ops, args, torch.float32)
                del args
                ctx.add("linear_backward", lin_case, name, verdict.word, detail=verdict.detail,
                        note=note if rows * k <= 2 ** 31 else "")
            _free(dev)


def fits(ctx, check, case, provider, need_bytes) -> bool:
    """Whether the GPU has `need_bytes` free now; a skipped row when not."""
    if ctx.device.type != "cuda":
        return True
    free, total = ctx.torch.cuda.mem_get_info()
    if free >= need_bytes:
        return True
    ctx.add(check, case, provider, "skipped",
            note=f"needs about {need_bytes / 1e9:.0f} GB of GPU memory, {free / 1e9:.0f} of {total / 1e9:.0f} GB "
                 f"free now (other stages run beside this one); rerun with --stages large")
    return False


def pre_trace_chunked(ops, n, chunk, dev) -> Verdict:
    """pre_trace on n elements, the reference chunk by chunk."""
    tr, x = torch.rand(n, device=dev), spikes(n, dev)
    got = ops.pre_trace(tr, x, 0.8)
    worst = Verdict(True, "")
    for i in range(0, n, chunk):
        v = checks.values_verdict([("trpre", got[i:i + chunk],
                                    checks.R.pre_trace(tr[i:i + chunk], x[i:i + chunk], 0.8))], torch.float32)
        worst = v if not v.ok or not worst.detail else worst
    return worst


def lif_step_chunked(ops, n, chunk, dev) -> Verdict:
    beta, theta = beta_theta(dev)
    cfg = rule("fast_sigmoid", "soft", "psi")
    cur, v, tr = torch.randn(n, device=dev), torch.randn(n, device=dev), torch.rand(n, device=dev)
    got = ops.lif_step(cur, v, tr, beta, theta, cfg)
    flips = unexplained = 0
    worst, ok = "", True
    for i in range(0, n, chunk):
        sl = slice(i, i + chunk)
        f, values, types = checks.lif_step_parts([g[sl] for g in got], cur[sl], v[sl], tr[sl],
                                                 beta, theta, cfg)
        flips, unexplained = flips + f.flips, unexplained + f.unexplained
        ok &= values.ok and types.ok
        if not values.ok or not worst:
            worst = values.detail
    allowed = max(1, int(MAX_FLIP_FRACTION * n))
    ok &= unexplained == 0 and flips <= allowed
    return Verdict(ok, f"{flips} spike flips ({unexplained} away from the threshold); {worst}; "
                       f"last element checked: {n - 1}")


def _free(dev) -> None:
    if dev.type == "cuda":
        torch.cuda.empty_cache()
