"""Seconds per training batch: S-TLLR (best backend, online, time-fused and chunked; the `torch`
reference; the naive outer-product formula) against BPTT (this package's layers, and SpikingJelly).

One batch = forward over T steps, the backward at the loss steps, one Adam step. All providers run
in one process, interleaved, median of the repetitions. Each S-TLLR row also gets its share of the
machine: its GEMMs (counted as benchmarks.macs counts them) replayed as torch.mm calls of the same
shapes, timed in the same interleaved rounds (benchmarks.machine).

    python -m benchmarks.train_step --threads 1 2   # writes benchmarks/results/train_step_cpu.{md,csv,png}
    python -m benchmarks.train_step --quick         # tiny sizes, seconds
"""
from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import stllr_kernels
from benchmarks import common, machine, networks, plot
from benchmarks.networks import GESTURE, SHD, ModelSpec

# provider label -> (method of networks.methods, backend forced for it: None = auto)
STLLR_BEST_ONLINE = "S-TLLR online [auto]"
PROVIDERS = {
    STLLR_BEST_ONLINE: ("stllr_online", None),
    "S-TLLR time-fused [auto]": ("stllr_fused", None),
    "S-TLLR chunk [auto]": ("stllr_chunk", None),
    "S-TLLR online [torch]": ("stllr_online", "torch"),
    "S-TLLR naive outer-product": ("naive", "torch"),
    "BPTT (stllr_kernels.nn)": ("bptt", None),
    "BPTT (lean torch)": ("bptt_lean", None),
    "BPTT (SpikingJelly)": ("spikingjelly", None),
}
LEAN_BPTT = "BPTT (lean torch)"
FUSED, CHUNK = "S-TLLR time-fused [auto]", "S-TLLR chunk [auto]"
# S-TLLR methods whose GEMMs are replayed as torch.mm (the naive formula's products are element-wise)
REPLAYED = ("stllr_online", "stllr_fused", "stllr_chunk")
MM_GOAL = 70  # goal: time-fused and chunk rows at >= 70 % of torch.mm on their GEMM shapes
# the original code's S-TLLR measured against at its own comparison size (goal: >= 25x)
SHD_ORIGINAL = SHD.with_(name="SHD (B=32, T=30)", T=30, delay_ls=27)
SLOW = {"S-TLLR naive outer-product": 2}  # repetitions of providers that take many seconds


def configs(args, device: torch.device) -> list[tuple[ModelSpec, int]]:
    """(model, batch) pairs: the paper's shapes, or tiny ones for --quick."""
    if args.quick:
        return [(SHD.with_(T=6, delay_ls=4), 3), (GESTURE.with_(T=3, delay_ls=2), 1)]
    vgg_batch = 16 if device.type == "cuda" else args.vgg_batch
    vgg = GESTURE.with_(T=args.vgg_T) if args.vgg_T else GESTURE
    return [(SHD, 128), (SHD_ORIGINAL, 32), (vgg, vgg_batch)]


def replay_label(method: str) -> str:
    return f"torch.mm replay of {method}"


def build_providers(spec: ModelSpec, batch: int, device: torch.device, skip: dict[str, str],
                    chunk_size=None):
    """label -> zero-argument callable running one training batch (with its backend forced); and
    for each S-TLLR method of REPLAYED, a callable replaying its GEMMs with torch.mm (labelled
    replay_label(method)) and their counted MACs."""
    x, y = networks.make_batch(spec, batch, device)
    table = networks.methods(spec)
    providers, replays, counted = {}, {}, {}
    for label, (method, backend) in PROVIDERS.items():
        if label in skip:
            continue
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
        trainer = networks.make_trainer(spec, method, device, chunk_size)
        if method in REPLAYED and method not in replays:
            shapes = machine.gemm_shapes(lambda trainer=trainer: trainer.train_batch(x, y))
            replays[method], counted[method] = machine.mm_replay(shapes, device), machine.macs(shapes)

        def run(trainer=trainer, backend=backend):
            stllr_kernels.set_backend(backend or "auto")
            try:
                trainer.train_batch(x, y)
            finally:
                stllr_kernels.set_backend("auto")
        providers[label] = run
    return providers, {replay_label(m): fn for m, fn in replays.items()}, counted


def goal_rows(chart: dict, share: dict, threads: int) -> list[dict]:
    """The speed goals, measured as ratios of this run's medians (at one thread
    count); `share`: model -> label -> % of torch.mm."""
    rows = []

    def met(ok: bool) -> str:
        return "yes" if ok else "no"

    def ratio(model, a, b, goal, text, at_most=True):
        t = chart.get(model, {})
        if a in t and b in t:
            r = t[a] / t[b]
            rows.append({"threads": threads, "goal": text, "measured": f"{r:.2f}x",
                         "met": met(r <= goal if at_most else r >= goal)})
    ratio(SHD.name, STLLR_BEST_ONLINE, LEAN_BPTT, 0.9, "SHD online <= 0.9x lean BPTT")
    ratio(SHD.name, FUSED, LEAN_BPTT, 0.35, "SHD time-fused <= 0.35x lean BPTT")
    ratio(GESTURE.name, STLLR_BEST_ONLINE, "BPTT (SpikingJelly)", 1.0,
          "Gesture VGG online no slower than SpikingJelly BPTT")
    ratio(SHD_ORIGINAL.name, "S-TLLR naive outer-product", STLLR_BEST_ONLINE, 25.0,
          "SHD B=32 T=30: online >= 25x faster than the original's S-TLLR (naive)", at_most=False)
    ratio(SHD.name, CHUNK, LEAN_BPTT, 0.85, "SHD chunk <= 0.85x lean BPTT")
    ratio(SHD.name, CHUNK, FUSED, 1.15, "SHD chunk <= 1.15x time-fused")
    ratio(GESTURE.name, CHUNK, FUSED, 1.15, "Gesture VGG chunk <= 1.15x time-fused")
    for model in (SHD.name, GESTURE.name):
        for label in (FUSED, CHUNK):
            pct = share.get(model, {}).get(label)
            if pct is not None:
                rows.append({"threads": threads, "goal": f"{model} {label.split(' [')[0]} >= {MM_GOAL} % of "
                             "torch.mm on its GEMM shapes", "measured": f"{pct:.0f} %", "met": met(pct >= MM_GOAL)})
    return rows


def profile_table(fn, rows: int = 12) -> str:
    """torch.profiler's table of one call, top ops by self CPU time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40)


def measure_model(spec: ModelSpec, batch: int, device: torch.device, args, reps: int, threads: int):
    """Rows of one model at one thread count; its chart values; its S-TLLR rows' % of torch.mm;
    profiles of the time-fused and chunk rows below the goal."""
    skip: dict[str, str] = {label: "left out (--skip-slow)" for label in SLOW} if args.skip_slow else {}
    providers, replays, counted = build_providers(spec, batch, device, skip, args.chunk_size)
    bar = common.progress_bar((len(providers) + len(replays)) * (reps + 1), f"{spec.name}, {threads} thread(s)")

    def tick(msg):
        bar.set_postfix_str(msg)
        bar.update()
    loaded, load = common.under_load(), common.load_average()
    times = common.time_interleaved({**providers, **replays}, device, reps, warmup=1,
                                    reps_of={k: min(v, reps) for k, v in SLOW.items()}, progress=tick,
                                    clock=common.CLOCKS[args.clock])
    loaded = loaded or common.under_load()
    bar.close()
    base = common.median(times[STLLR_BEST_ONLINE])
    shape = (f"B={batch}, T={spec.T}, loss steps (delay-ls) {spec.delay_ls}, input "
             f"{'x'.join(map(str, spec.input_shape))}")
    rows, chart, share, profiles = [], {}, {}, []
    for label in PROVIDERS:
        row = {"model": spec.name, "shape": shape, "threads": threads, "provider": label}
        if label in skip:
            rows.append({**row, "median": "—", "ratio": "—", "note": skip[label]})
            continue
        med = common.median(times[label])
        method, backend = PROVIDERS[label]
        ran = backend or stllr_kernels.get_backend_name(device.type)
        row.update({"backend": ran if method != "spikingjelly" else "spikingjelly",
                    "median_s": f"{med:.4f}", "median": common.fmt_seconds(med), "reps": len(times[label]),
                    "all_s": " ".join(f"{t:.3f}" for t in times[label]), "ratio": f"{med / base:.2f}x",
                    "under_load": loaded, "load_avg_at_start": load, "note": ""})
        if method in counted:
            mm = common.median(times[replay_label(method)])
            pct = 100.0 * mm / med
            row.update({"gemm_macs": counted[method], "gmac_per_s": f"{counted[method] / med / 1e9:.1f}",
                        "torch_mm_s": f"{mm:.4f}", "pct_of_torch_mm": f"{pct:.0f} %",
                        "all_torch_mm_s": " ".join(f"{t:.3f}" for t in times[replay_label(method)])})
            share[label] = pct
            if label in (FUSED, CHUNK) and (pct < MM_GOAL or args.quick):
                profiles.append((label, pct, profile_table(providers[label])))
        rows.append(row)
        chart[label] = med
        print(f"{spec.name:16s} {threads}t {label:30s} {common.fmt_seconds(med):>10s}  {med / base:6.2f}x "
              f"of S-TLLR online" + (f"  {share[label]:3.0f} % of torch.mm" if label in share else ""))
    notes = []
    # where the time goes when S-TLLR is slower than SpikingJelly
    sj = chart.get("BPTT (SpikingJelly)")
    best = min(v for k, v in chart.items() if k.startswith("S-TLLR") and "[auto]" in k)
    if spec is not SHD_ORIGINAL and (sj is not None and best > sj or args.quick):
        notes.append((spec.name, best, sj, profile_table(providers[STLLR_BEST_ONLINE]),
                      profile_table(providers["BPTT (SpikingJelly)"]) if sj is not None else ""))
    return rows, chart, share, notes, profiles


def main(argv=None) -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per provider (median)")
    p.add_argument("--vgg-batch", type=int, default=4, help="VGG batch on CPU (GPU: 16)")
    p.add_argument("--vgg-T", type=int, default=None, help="override the VGG's T (default 20)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="the chunk rows' --chunk-size (default: the training flag's default)")
    p.add_argument("--skip-slow", action="store_true",
                   help="leave out the naive outer-product rows (minutes per batch at the SHD shape)")
    args = common.parse(p, argv)
    device = torch.device(args.device)
    reps = 1 if args.quick else args.reps
    report = common.Report("train_step" + ("_cpuclock" if args.clock == "cpu" else ""), "Seconds per training batch", args.out, device)
    thread_counts = args.threads if args.threads and device.type == "cpu" else [torch.get_num_threads()]
    rows, charts, notes, profiles, goals = [], {}, [], [], []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        chart, share = {}, {}
        for spec, batch in configs(args, device):
            if args.models and spec.kind not in args.models.split(","):
                continue
            r, chart[spec.name], share[spec.name], n, prof = measure_model(spec, batch, device, args, reps, threads)
            rows += r
            notes += n
            profiles += [(spec.name, threads, *x) for x in prof]
            charts[f"{spec.name}, {threads} thread(s)"] = chart[spec.name]
        goals += goal_rows(chart, share, threads)
    torch.set_num_threads(thread_counts[0])
    columns = ["model", "shape", "threads", "provider", "backend", "median", "reps", "ratio", "gmac_per_s",
               "pct_of_torch_mm", "note"]
    chunk = networks.SHD.config("stllr", step_mode="chunk", **({"chunk_size": args.chunk_size}
                                                                if args.chunk_size else {})).chunk_size
    report.section("Results", "Median seconds per training batch (forward over T, backward at the loss "
                   "steps, Adam step); `ratio` is the provider's time over S-TLLR online [auto] "
                   "(> 1: slower than S-TLLR). Providers ran interleaved in one process, one warm-up "
                   "round, the order rotating each round; the naive formula is capped at "
                   f"{SLOW['S-TLLR naive outer-product']} repetitions (many seconds each). "
                   f"`chunk` is --step-mode chunk with --chunk-size {chunk}. "
                   "`gmac_per_s`: the row's GEMM multiply-accumulates (counted with the `torch` backend, as "
                   "benchmarks/macs.py counts them) per second of the row; `pct_of_torch_mm`: the time of "
                   "those same GEMMs run as plain torch.mm calls of the same shapes (timed in the same "
                   "interleaved rounds) over the row's time, i.e. the row's MACs per second as a share of "
                   "torch.mm's throughput on its own GEMM shapes. "
                   f"Clock: {args.clock} time ({'the process CPU time, without the waits for a core' if args.clock == 'cpu' else 'what a user waits'}). "
                   "Figures marked `under_load` in the CSV were taken while the 1-minute load "
                   "average exceeded half the cores (other jobs shared the machine); `load_avg_at_start` "
                   "gives it per model.",
                   common.markdown_table(rows, columns))
    if goals:
        report.section("Goals", "Ratios of medians from the table above (one run, the "
                       "providers interleaved).", common.markdown_table(goals, ["threads", "goal", "measured", "met"]))
    report.section("Setup",
                   "Models: the training package's (`training.models`: stllr_shd_net / bptt_shd_net, "
                   "dvs_vgg_stllr / dvs_vgg_bptt) built from the run configurations (`RunConfig`) of the "
                   "original README's command lines, with its optimizer (Adam, README learning rates) "
                   "and trained by its engine (`Trainer.train_batch`, training mode `stllr`: one "
                   "optimizer step per batch; time-fused = --step-mode sequence; chunk = --step-mode "
                   "chunk). SHD = recurrent "
                   "S-TLLR 700->450 (leak 5, factors 0.5 1 1 1, fast_sigmoid) + leaky readout 450->20 "
                   "(factors 0 0.99 0 1); BPTT: `LinearRecLIF` (leak 15) + `LeakyReadout`. VGG = "
                   "2->64->128->pool->256->256->pool->512->512->pool->512->512, global average pool, "
                   "linear, with the models' per-sequence dropout in train mode (p = 0 for Gesture). "
                   "SpikingJelly: a copy of the BPTT model with its `LIFNode` (multi-step for the VGG, "
                   "single-step inside the recurrence for SHD), decay_input=False, v_reset=None, "
                   "tau=1/(1-beta), same threshold. The naive row is the S-TLLR SHD model with its "
                   "recurrent layer's backward swapped for the per-sample outer-product formula. "
                   "S-TLLR online runs the steps before the loss window without autograd, and so do "
                   "the chunks before it. Random input spikes (5 % SHD, 10 % frames).")
    for name, threads, label, pct, table in profiles:
        report.section(f"Where the time goes: {name}, {label}, {threads} thread(s) ({pct:.0f} % of torch.mm)",
                       "torch.profiler, one batch, top ops by self CPU time. `stllr::*` are the backend's "
                       "fused ops (the recurrent layer's forward steps its recurrence inside "
                       "`stllr::recurrent_sequence`: T small GEMMs W_rec s[t-1], plus the LIF; its backward "
                       "`stllr::recurrent_backward_reverse` a reverse pass over the loss steps and the "
                       "eligibility GEMMs); `aten::mm`/`addmm` are the input currents and the readout; the "
                       "rest is element-wise work (loss, Adam, standardization) that counts no MACs.",
                       f"```\n{table}\n```")
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
    png = plot.bar_chart(charts, "seconds per batch", f"Training batch time ({device.type})",
                         report.path(".png"))
    report.parts += [f"![seconds per batch]({png.name})", ""]
    print("wrote", report.write(rows))


if __name__ == "__main__":
    main()
