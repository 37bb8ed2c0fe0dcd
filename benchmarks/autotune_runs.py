"""How many autotuning runs one training epoch starts, per model and mode, before and after the
bucketed keys and the disk cache (stllr_kernels/backends/triton/autotune.py).

    python -m benchmarks.autotune_runs            # writes benchmarks/results/autotune_runs.md
    python -m benchmarks.autotune_runs --quick    # SHD online, two tiny batches (what the tests run)

Runs on the CPU, the `triton` backend in Triton's interpreter, kernels *not executed* (the
interpreter would take hours at the paper's sizes): every launch of an autotuned kernel is recorded
with the arguments a real run passes (shapes, dtypes: all that a tuning key depends on) and skipped,
as are the two kernels without autotuning (the recurrent step, standardize). A short epoch: full
batches, a partial last batch and, for SHD, a different padded T per batch (SHD batches are padded
to their longest sample, T <= 99). Per model and mode:

  - keys before: distinct keys as @triton.autotune formed them (the exact sizes named in the key and
    the dtype of every tensor argument); each benchmarked every config of its kernel, in every
    process and DDP rank;
  - keys after: bucketed keys (sizes rounded up to a power of two) that autotune.Tuned tunes (a
    bucket up to 4x smaller than a tuned one takes its config), benchmarked once, then read from
    the disk cache by every later process and rank (measured: a second pass as a new process);
  - tuning runs: sum over keys of the kernel's number of GPU configs (do_bench runs).
"""
from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before any Triton kernel is defined

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

import stllr_kernels  # noqa: E402
from benchmarks import networks  # noqa: E402
from benchmarks.networks import GESTURE, SHD  # noqa: E402
from stllr_kernels.backends.triton.autotune import CACHE_ENV, REUSE_FACTOR  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "autotune_runs.md"
# do_bench's defaults (triton.testing.do_bench: warmup=25 ms, rep=100 ms) per config, at least
BENCH_SECONDS_PER_CONFIG = 0.125
MODES = {"online": "stllr_online", "time-fused": "stllr_fused"}


class _NoLaunch:
    """Stands in for a kernel without autotuning: `kernel[grid](...)` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


class KeyRecorder:
    """Every autotuned launch: records (kernel, exact key, bucketed key) and runs the real choice of
    autotune.Tuned (this process, the disk cache, a larger tuned neighbour), a "tuning" recording
    the first config as the winner; the launch itself is skipped."""

    def __init__(self):
        from stllr_kernels.backends.triton import autotune
        self.autotune = autotune
        self.launches: list = []
        self.tuned: set = set()  # (kernel, key) tuned in this run

    def __enter__(self):
        from stllr_kernels.backends.triton import recurrent, standardize
        Tuned, recorder = self.autotune.Tuned, self
        self.saved = [(Tuned, "_launch", Tuned._launch),
                      (recurrent, "_recurrent_step_kernel", recurrent._recurrent_step_kernel),
                      (standardize, "_standardize_backward_kernel", standardize._standardize_backward_kernel)]

        def record(tuned, grid, *args, **kwargs):
            recorder.launches.append((tuned.name, *tuned.keys(args, kwargs)))
            key = tuned.tuning_key(args, kwargs)
            if tuned.choose(key) is None:
                tuned.record(key, tuned.configs[0], {})
                recorder.tuned.add((tuned.name, key))
        Tuned._launch = record
        recurrent._recurrent_step_kernel = standardize._standardize_backward_kernel = _NoLaunch()
        return self

    def __exit__(self, *exc):
        for owner, name, value in self.saved:
            setattr(owner, name, value)

    def runs(self, keys) -> tuple[int, int]:
        """(distinct keys, tuning runs = keys x their kernel's GPU configs) of (kernel, key) pairs."""
        configs = {name: len(t.gpu_configs) for name, t in self.autotune.TUNED.items()}
        keys = set(keys)
        return len(keys), sum(configs[name] for name, _ in keys)

    def exact(self):
        return {(launch[0], launch[1]) for launch in self.launches}

    def bucketed(self):
        return {(launch[0], launch[2]) for launch in self.launches}


def fresh_process() -> None:
    """Forget every choice held in memory, as a new process starts (the disk cache stays)."""
    from stllr_kernels.backends.triton import autotune
    for tuned in autotune.TUNED.values():
        tuned._chosen.clear()
        tuned._tuned.clear()


def epoch(spec, quick: bool) -> list[tuple[int, int]]:
    """(batch size, T) of a short epoch: full batches, then a partial one; SHD's T varies."""
    if quick:
        return [(4, 12), (3, 11)]
    batch = spec.config("stllr").batch_size
    ts = (99, 97, 98, 95, 99, 96) if spec.kind == "shd" else (spec.T,) * 3
    return [(batch if i < len(ts) - 1 else max(1, batch * 2 // 3), T) for i, T in enumerate(ts)]


def measure(spec, mode: str, quick: bool) -> dict:
    """Two passes over a short epoch, each as a new process would run it, sharing one empty disk
    cache: the first tunes, the second (a later process, another rank) should tune nothing."""
    shapes = epoch(spec, quick)
    passes = []
    with tempfile.TemporaryDirectory() as cache:
        os.environ[CACHE_ENV] = cache
        try:
            for _ in range(2):
                fresh_process()
                trainer = networks.make_trainer(spec, MODES[mode], torch.device("cpu"))
                # the skipped kernels leave their outputs unset: no optimizer step, so that the
                # weights stay finite (an early step's zero gradient times a NaN weight is NaN)
                trainer.optimizer.step = lambda *args, **kwargs: None
                with KeyRecorder() as rec:
                    first_batch = None
                    for i, (batch, T) in enumerate(shapes):
                        x, y = networks.make_batch(spec.with_(T=T), batch, "cpu", seed=i)
                        trainer.train_batch(x, y)
                        if first_batch is None:
                            first_batch = rec.runs(rec.exact())
                passes.append(rec)
        finally:
            del os.environ[CACHE_ENV]
    first, later = passes
    return {"model": spec.name, "mode": mode, "shapes": shapes, "launches": len(first.launches),
            "first_batch": first_batch, "before": first.runs(first.exact()), "buckets": len(first.bucketed()),
            "after": first.runs(first.tuned), "later": later.runs(later.tuned)}


def report(rows: list, seconds: float, command: str) -> str:
    lines = [
        "# Autotuning runs per training epoch, before and after bucketed keys + disk cache",
        "",
        f"- command: `{command}`; {seconds:.0f} s on the CPU (Triton's interpreter, kernels not executed: their "
        "tuning keys are formed from the arguments a real run passes, and autotune.Tuned chooses as on a GPU)",
        "- keys: distinct autotuning keys met in the epoch; runs: keys x the kernel's GPU configs, each a "
        f"`do_bench` of >= {BENCH_SECONDS_PER_CONFIG * 1000:.0f} ms (25 ms warm-up + 100 ms repetitions) plus "
        "the config's first compile; the seconds are that estimate, not measured on a GPU",
        "- before: @triton.autotune keyed by the exact sizes, no disk cache: the runs repeat in every "
        "process and every DDP rank, and on each new batch size or padded T",
        f"- after: sizes rounded up to powers of two (buckets); a bucket not tuned yet takes the config of a tuned "
        f"one up to {REUSE_FACTOR}x larger in the sizes that grow with the batch or the sequence (the GEMMs' rows B; "
        "the element-wise and sequence kernels' n and T); the winners kept on disk (STLLR_AUTOTUNE_CACHE, default "
        "`<TRITON_CACHE_DIR>/stllr_autotune`); later processes: the same epoch again in a new process (memory "
        "cleared) on the same disk cache, as a resumed run or another DDP rank would",
        "",
        "| model | mode | epoch: (batch, T) per batch | autotuned launches | first batch, before: keys / runs "
        "| epoch, before: keys / runs (~s) | buckets | epoch, after, first process: tuned keys / runs (~s) "
        "| later processes: runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        (kb, rb), (ke, re_), (ka, ra), (_, rl) = r["first_batch"], r["before"], r["after"], r["later"]
        lines.append(f"| {r['model']} | {r['mode']} | {', '.join(f'({b}, {t})' for b, t in r['shapes'])} | "
                     f"{r['launches']} | {kb} / {rb} | {ke} / {re_} (~{re_ * BENCH_SECONDS_PER_CONFIG:.0f} s) | "
                     f"{r['buckets']} | {ka} / {ra} (~{ra * BENCH_SECONDS_PER_CONFIG:.0f} s) | {rl} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="SHD online only, two tiny batches")
    p.add_argument("--out", default=None, help=f"markdown output (default {RESULTS}; none with --quick)")
    args = p.parse_args(argv)
    stllr_kernels.set_backend("triton")
    start = time.time()
    cases = [(SHD, "online")] if args.quick else [(s, m) for s in (SHD, GESTURE) for m in MODES]
    rows = []
    try:
        from tqdm import tqdm
        cases_iter = tqdm(cases, desc="models x modes")
    except ImportError:
        cases_iter = cases
    for spec, mode in cases_iter:
        rows.append(measure(spec, mode, args.quick))
    command = "python -m benchmarks.autotune_runs" + (" --quick" if args.quick else "")
    text = report(rows, time.time() - start, command)
    out = args.out or (None if args.quick else RESULTS)
    if out:
        Path(out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
