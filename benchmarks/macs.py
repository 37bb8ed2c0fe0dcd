"""Multiply-accumulates per training sample, S-TLLR (with its --delay-ls) against BPTT, for the three
paper models, counted from the matmuls and convolutions the forward and backward actually run.

    python -m benchmarks.macs            # writes benchmarks/results/macs.{md,csv,png}
    python -m benchmarks.macs --quick
"""
from __future__ import annotations

import torch

import stllr_kernels
from benchmarks import common, networks, plot
from benchmarks.networks import CIFAR10DVS, GESTURE, SHD, ModelSpec
from training.engine import predict

PAPER_REDUCTION = "1.3-6.6x"  # the paper's reported MAC reduction of S-TLLR against BPTT
# S-TLLR online (docs/rule.md section 6), time-fused (--step-mode sequence: the same gradients; the recurrent
# layer's eligibility in reverse time, (D+1) rows per weight instead of 2 D) and chunked (--step-mode
# chunk: reverse time within each chunk, (D_chunk+1) rows per chunk), against BPTT
METHODS = {"S-TLLR": "stllr_online", "S-TLLR time-fused": "stllr_fused", "S-TLLR chunk": "stllr_chunk",
           "BPTT": "bptt"}


def configs(args) -> list[ModelSpec]:
    if args.quick:
        return [SHD.with_(T=3, delay_ls=2), GESTURE.with_(T=2, delay_ls=1)]
    return [SHD, GESTURE, CIFAR10DVS]


def count(spec: ModelSpec, method: str, batch: int) -> tuple[int, int]:
    """(forward MACs, total MACs of one training batch) per sample."""
    torch.manual_seed(0)
    trainer = networks.make_trainer(spec, method, "cpu")  # its Adam does no matmuls
    x, y = networks.make_batch(spec, batch, "cpu")
    # the `torch` backend runs the rule as aten matmuls/convs the counter sees (a compiled backend
    # does the same arithmetic inside its own ops, invisible to it)
    stllr_kernels.set_backend("torch")
    try:
        # the forward share: the same model over all T without autograd (the engine's predict)
        fwd = common.count_macs(lambda: predict(trainer.model, x))
        total = common.count_macs(lambda: trainer.train_batch(x, y))
    finally:
        stllr_kernels.set_backend("auto")
    return fwd // batch, total // batch


def main(argv=None) -> None:
    p = common.base_parser(__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=1, help="samples per counted batch (counts are per sample)")
    args = common.parse(p, argv)
    report = common.Report("macs", "Multiply-accumulates per training sample", args.out,
                           torch.device("cpu"), per_device=False)
    rows, chart, lines = [], {}, []
    specs = [s for s in configs(args) if not args.models or s.kind in args.models.split(",")]
    bar = common.progress_bar(len(specs) * len(METHODS), "macs")
    for spec in specs:
        counts = {}
        for label, method in METHODS.items():
            bar.set_postfix_str(f"{spec.name} {label}")
            counts[label] = count(spec, method, args.batch)
            bar.update()
        bf, bt = counts["BPTT"]
        for label, (fwd, total) in counts.items():
            row = {"model": spec.name, "T": spec.T, "delay-ls": spec.delay_ls,
                   "input": "x".join(map(str, spec.input_shape)), "method": label,
                   "forward_macs": fwd, "backward_macs": total - fwd, "total_macs": total,
                   "forward": common.fmt_count(fwd), "backward+update": common.fmt_count(total - fwd),
                   "total": common.fmt_count(total), "BPTT / S-TLLR total": "—", "BPTT / S-TLLR backward": "—"}
            if label != "BPTT":
                ratio_total, ratio_bwd = bt / total, (bt - bf) / max(total - fwd, 1)
                row["BPTT / S-TLLR total"], row["BPTT / S-TLLR backward"] = f"{ratio_total:.2f}x", f"{ratio_bwd:.2f}x"
                lines.append(f"{spec.name} (T={spec.T}, delay-ls {spec.delay_ls}): BPTT / {label} = "
                             f"{ratio_total:.2f}x in total, {ratio_bwd:.2f}x in the backward")
                print(lines[-1])
            rows.append(row)
        chart[spec.name] = {label: total / 1e9 for label, (_, total) in counts.items()}
    bar.close()
    report.section("Method", "Counted with torch.utils.flop_counter.FlopCounterMode (MACs = FLOPs / 2) "
                   "over one training batch of the training package's models (`training.models`, built and "
                   "trained as `python -m training` does, see networks.py): every mm/addmm/bmm/convolution the forward and backward "
                   "run, including the S-TLLR eligibility GEMMs and conv weight-gradients inside the "
                   "custom backward (run with the `torch` backend, whose ops the counter sees; every backend "
                   "does the same arithmetic); element-wise work (LIF updates, traces, Psi) is not counted. "
                   "The forward share is the same model run over all T without autograd; "
                   "backward+update = total - forward. S-TLLR is the online procedure (docs/rule.md section 6): "
                   "a backward at each of the last delay-ls steps only; S-TLLR time-fused is --step-mode "
                   "sequence (the same gradients), whose recurrent layer forms its eligibility in reverse "
                   "time: (delay-ls + 1) x B rows per weight instead of 2 x delay-ls x B; S-TLLR chunk "
                   "is --step-mode chunk at the default --chunk-size, one such reverse pass per chunk "
                   "holding loss steps ((loss steps of the chunk + 1) x B rows each). Batch "
                   f"{args.batch}, counts per sample.")
    report.section("Comparison with the paper",
                   f"The paper reports S-TLLR needing {PAPER_REDUCTION} fewer MACs than BPTT. Measured "
                   "here:", *lines,
                   "Why the ratio depends on delay-ls / T: at each loss step S-TLLR's weight gradient "
                   "is two products (the causal term, and the non-causal term when alpha_post != 0), "
                   "where BPTT's is one per step; S-TLLR saves the steps without a loss (T - delay-ls) "
                   "and BPTT's back-propagation through time (for the recurrent layer, the product "
                   "through W_rec at every step). With delay-ls close to T (SHD: 90 of 100, "
                   "alpha_post = 1) the extra product outweighs the savings in the online procedure; the "
                   "time-fused recurrent layer folds the two terms into one product per loss step (reverse "
                   "time), which brings SHD below BPTT. The VGGs (5 of 20 and 5 of 10 steps) fall at the "
                   "lower end of the paper's range.")
    report.section("Results", common.markdown_table(
        rows, ["model", "T", "delay-ls", "input", "method", "forward", "backward+update", "total",
               "BPTT / S-TLLR total", "BPTT / S-TLLR backward"]))
    png = plot.bar_chart(chart, "GMACs per sample", "MACs per training sample", report.path(".png"), log=False)
    report.parts += [f"![MACs]({png.name})", ""]
    print("wrote", report.write(rows))


if __name__ == "__main__":
    main()
