"""Seconds per training batch: S-TLLR (best backend, online and time-fused; the `torch` reference;
the naive outer-product formula) against BPTT (this package's layers, and SpikingJelly).

One batch = forward over T steps, the backward at the loss steps, one Adam step. All providers run
in one process, interleaved, median of the repetitions.

    python -m benchmarks.train_step            # writes benchmarks/results/train_step.{md,csv,png}
    python -m benchmarks.train_step --quick    # tiny sizes, seconds
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import stllr_kernels
from benchmarks import common, networks, plot
from benchmarks.networks import GESTURE, SHD, ModelSpec

# provider label -> (method of networks.methods, backend forced for it: None = auto)
STLLR_BEST_ONLINE = "S-TLLR online [auto]"
PROVIDERS = {
    STLLR_BEST_ONLINE: ("stllr_online", None),
    "S-TLLR time-fused [auto]": ("stllr_fused", None),
    "S-TLLR online [torch]": ("stllr_online", "torch"),
    "S-TLLR naive outer-product": ("naive", "torch"),
    "BPTT (stllr_kernels.nn)": ("bptt", None),
    "BPTT (lean torch)": ("bptt_lean", None),
    "BPTT (SpikingJelly)": ("spikingjelly", None),
}
LEAN_BPTT = "BPTT (lean torch)"
# the original code's S-TLLR measured against at its own comparison size (issue 11: >= 25x)
SHD_ORIGINAL = SHD.with_(name="SHD (B=32, T=30)", T=30, delay_ls=27)
SLOW = {"S-TLLR naive outer-product": 2}  # repetitions of providers that take many seconds


def configs(args, device: torch.device) -> list[tuple[ModelSpec, int]]:
    """(model, batch) pairs: the paper's shapes, or tiny ones for --quick."""
    if args.quick:
        return [(SHD.with_(T=6, delay_ls=4), 3), (GESTURE.with_(T=3, delay_ls=2), 1)]
    vgg_batch = 16 if device.type == "cuda" else args.vgg_batch
    vgg = GESTURE.with_(T=args.vgg_T) if args.vgg_T else GESTURE
    return [(SHD, 128), (SHD_ORIGINAL, 32), (vgg, vgg_batch)]


def build_providers(spec: ModelSpec, batch: int, device: torch.device, skip: dict[str, str]):
    """label -> zero-argument callable running one training batch (with its backend forced)."""
    x, y = networks.make_batch(spec, batch, device)
    table = networks.methods(spec)
    providers = {}
    for label, (method, backend) in PROVIDERS.items():
        if method not in table:
            skip[label] = "not applicable to this model (the naive formula is the recurrent layer's)"
            continue
        if method == "spikingjelly" and (why := networks.spikingjelly_available()):
            skip[label] = f"SpikingJelly not importable: {why}"
            continue
        if backend == "torch" and stllr_kernels.get_backend_name(device.type) == "torch" and method != "naive":
            skip[label] = "same as the [auto] row: auto picked `torch` here"
            continue
        torch.manual_seed(0)
        trainer = networks.make_trainer(spec, method, device)

        def run(trainer=trainer, backend=backend):
            stllr_kernels.set_backend(backend or "auto")
            try:
                trainer.train_batch(x, y)
            finally:
                stllr_kernels.set_backend("auto")
        providers[label] = run
    return providers


def goal_rows(chart: dict) -> list[dict]:
    """Issue 11's speed goals, measured as ratios of this run's medians."""
    rows = []

    def ratio(model, a, b, goal, text, at_most=True):
        t = chart.get(model, {})
        if a in t and b in t:
            r = t[a] / t[b]
            rows.append({"goal": text, "measured": f"{r:.2f}x", "met": "yes" if (r <= goal if at_most else r >= goal)
                         else "no"})
    ratio(SHD.name, STLLR_BEST_ONLINE, LEAN_BPTT, 0.9, "SHD online <= 0.9x lean BPTT")
    ratio(SHD.name, "S-TLLR time-fused [auto]", LEAN_BPTT, 0.35, "SHD time-fused <= 0.35x lean BPTT")
    ratio(GESTURE.name, STLLR_BEST_ONLINE, "BPTT (SpikingJelly)", 1.0,
          "Gesture VGG online no slower than SpikingJelly BPTT")
    ratio(SHD_ORIGINAL.name, "S-TLLR naive outer-product", STLLR_BEST_ONLINE, 25.0,
          "SHD B=32 T=30: online >= 25x faster than the original's S-TLLR (naive)", at_most=False)
    return rows


def profile_table(fn, rows: int = 12) -> str:
    """torch.profiler's table of one call, top ops by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def main(argv=None) -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per provider (median)")
    p.add_argument("--vgg-batch", type=int, default=4, help="VGG batch on CPU (GPU: 16)")
    p.add_argument("--vgg-T", type=int, default=None, help="override the VGG's T (default 20)")
    args = common.parse(p, argv)
    device = torch.device(args.device)
    reps = 1 if args.quick else args.reps
    report = common.Report("train_step", "Seconds per training batch", args.out, device)
    rows, chart, notes = [], {}, []
    for spec, batch in configs(args, device):
        if args.models and spec.kind not in args.models.split(","):
            continue
        skip: dict[str, str] = {}
        providers = build_providers(spec, batch, device, skip)
        bar = common.progress_bar(len(providers) * (reps + 1), spec.name)

        def tick(msg, bar=bar):
            bar.set_postfix_str(msg)
            bar.update()
        loaded = common.under_load()
        times = common.time_interleaved(providers, device, reps, warmup=1,
                                        reps_of={k: min(v, reps) for k, v in SLOW.items()}, progress=tick)
        loaded = loaded or common.under_load()
        bar.close()
        base = common.median(times[STLLR_BEST_ONLINE])
        shape = (f"B={batch}, T={spec.T}, loss steps (delay-ls) {spec.delay_ls}, input "
                 f"{'x'.join(map(str, spec.input_shape))}")
        for label in PROVIDERS:
            if label in skip:
                rows.append({"model": spec.name, "shape": shape, "provider": label,
                             "median": "—", "ratio": "—", "note": skip[label]})
                continue
            med = common.median(times[label])
            method, backend = PROVIDERS[label]
            ran = backend or stllr_kernels.get_backend_name(device.type)
            rows.append({"model": spec.name, "shape": shape, "provider": label,
                         "backend": ran if method != "spikingjelly" else "spikingjelly",
                         "median_s": f"{med:.4f}", "median": common.fmt_seconds(med),
                         "reps": len(times[label]),
                         "all_s": " ".join(f"{t:.3f}" for t in times[label]),
                         "ratio": f"{med / base:.2f}x", "under_load": loaded, "note": ""})
            chart.setdefault(spec.name, {})[label] = med
            print(f"{spec.name:16s} {label:30s} {common.fmt_seconds(med):>10s}  {med / base:6.2f}x "
                  f"of S-TLLR online")
        # where the time goes when S-TLLR is slower than SpikingJelly
        sj = chart[spec.name].get("BPTT (SpikingJelly)")
        best = min(v for k, v in chart[spec.name].items() if k.startswith("S-TLLR") and "[auto]" in k)
        if spec is not SHD_ORIGINAL and (sj is not None and best > sj or args.quick):
            notes.append((spec.name, best, sj, profile_table(providers[STLLR_BEST_ONLINE]),
                          profile_table(providers["BPTT (SpikingJelly)"]) if sj is not None else ""))
    columns = ["model", "shape", "provider", "backend", "median", "reps", "ratio", "note"]
    goals = goal_rows(chart)
    report.section("Results", "Median seconds per training batch (forward over T, backward at the loss "
                   "steps, Adam step); `ratio` is the provider's time over S-TLLR online [auto] "
                   "(> 1: slower than S-TLLR). Providers ran interleaved in one process, one warm-up "
                   "round, the order rotating each round; the naive formula is capped at "
                   f"{SLOW['S-TLLR naive outer-product']} repetitions (many seconds each). "
                   "Figures marked `under_load` in the CSV were taken while the 1-minute load "
                   "average exceeded half the cores (other jobs shared the machine).",
                   common.markdown_table(rows, columns))
    if goals:
        report.section("Goals (issue 11)", "Ratios of medians from the table above (one run, the providers "
                       "interleaved).", common.markdown_table(goals, ["goal", "measured", "met"]))
    report.section("Setup",
                   "Models: the training package's (`training.models`: stllr_shd_net / bptt_shd_net, "
                   "dvs_vgg_stllr / dvs_vgg_bptt) built from the run configurations (`RunConfig`) of the "
                   "original README's command lines, with its optimizer (Adam, README learning rates) "
                   "and trained by its engine (`Trainer.train_batch`, training mode `stllr`: one "
                   "optimizer step per batch; time-fused = --step-mode sequence). SHD = recurrent "
                   "S-TLLR 700->450 (leak 5, factors 0.5 1 1 1, fast_sigmoid) + leaky readout 450->20 "
                   "(factors 0 0.99 0 1); BPTT: `LinearRecLIF` (leak 15) + `LeakyReadout`. VGG = "
                   "2->64->128->pool->256->256->pool->512->512->pool->512->512, global average pool, "
                   "linear, with the models' per-sequence dropout in train mode (p = 0 for Gesture). "
                   "SpikingJelly: a copy of the BPTT model with its `LIFNode` (multi-step for the VGG, "
                   "single-step inside the recurrence for SHD), decay_input=False, v_reset=None, "
                   "tau=1/(1-beta), same threshold. The naive row is the S-TLLR SHD model with its "
                   "recurrent layer's backward swapped for the per-sample outer-product formula. "
                   "S-TLLR online runs the steps before the loss window without autograd. Random "
                   "input spikes (5 % SHD, 10 % frames).")
    for name, best, sj, ours, theirs in notes:
        report.section(f"Where the time goes: {name}",
                       f"S-TLLR best {common.fmt_seconds(best)} vs SpikingJelly BPTT "
                       f"{common.fmt_seconds(sj) if sj else 'n/a'}. torch.profiler, one batch each, "
                       "top ops by self CPU time. Reading: `aten::var`, `div`, `sub`, `neg`, `mean` "
                       "are mostly weight standardization, which each S-TLLR layer recomputes at every "
                       "time step and back-propagates at every loss step (BPTT models standardize the "
                       "feed-forward weights once per batch); `mm`/`addmm`/`convolution*` are the "
                       "currents and the eligibility GEMMs/conv weight-gradients (S-TLLR's weight "
                       "gradient costs two weight-gradient products per loss step, causal and non-causal "
                       "terms, where BPTT's costs one per step, see macs.md); "
                       "`stllr::*` are the backend's fused ops.",
                       "S-TLLR online [auto]:", f"```\n{ours}\n```",
                       "SpikingJelly BPTT:", f"```\n{theirs}\n```")
    png = plot.bar_chart(chart, "seconds per batch", f"Training batch time ({device.type})",
                         report.path(".png"))
    report.parts += [f"![seconds per batch]({png.name})", ""]
    print("wrote", report.write(rows))


if __name__ == "__main__":
    main()
