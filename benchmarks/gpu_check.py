"""The GPU check: build, check and time every kernel on one GPU in one command, files under DIR.

    python3 -m benchmarks.gpu_check --out DIR        # on the GPU machine (also: make gpu-check)
    python3 -m benchmarks.gpu_check --out DIR --cpu-interpret   # the same stages, tiny, on a CPU

Uses the running python3 and installs nothing. First lists the modules and tools it needs, found or
missing, and what it skips without each (`benchmarks/gpu/deps.py`); builds the CUDA extension in
place (every core, sm_90; its log in DIR/build.log) while the Triton correctness rows and the
compile warm-ups run; then runs the stages of `benchmarks/gpu/stages/` each in its own process,
most valuable first: every op of the `triton` and `cuda` backends against the reference (TF32 off;
one float32 case of every op first), one end-to-end SHD training batch of S-TLLR against BPTT (time
and memory), every autotune config of every Triton kernel, one case above 2^31 elements,
compute-sanitizer memcheck, the conformance suite, the CUDA cases of the precision, compile, caching and NaN tests; then, alone on the
GPU, the timings (element-wise and sequence kernels vs copy bandwidth, eligibility GEMM vs torch.mm,
the time-fused layer, the Gesture VGG batch, a profile of one SHD online batch). DIR/gpu_check.md
and DIR/gpu_check.csv are rewritten after every stage; DIR/gpu_check.log holds every stage's output.
A failed build skips only the extension's rows. Exit code 0: every row passed; 1: some row FAILed,
erred or timed out; 2: bad arguments, no GPU or no torch; 3: the extension did not build (the rest
of the report is complete).
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.gpu import driver  # noqa: E402
from benchmarks.gpu.stages import STAGE_NAMES, STAGES  # noqa: E402

TOTAL_S = 470.0  # the 8 minutes the whole command must fit in, less the interpreter's start
# the stage limits are sized for the GPU machine; the interpreter run has no such limit, only a CPU
# that may be shared
INTERPRET_TOTAL_S, INTERPRET_SCALE = 1800.0, 3.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="gpu-check-out", help="directory for the report and logs")
    p.add_argument("--cpu-interpret", action="store_true",
                   help="tiny shapes on the CPU in Triton's interpreter (checks the logic; no build)")
    p.add_argument("--stages", default="", help=f"comma-separated subset of {', '.join(STAGE_NAMES)}")
    p.add_argument("--skip-build", action="store_true",
                   help="use the extension already built (a second run on the same machine)")
    p.add_argument("--simulate-build-failure", action="store_true",
                   help="replace the build by one that fails at once (the failure path, testable without a "
                        "GPU: with --cpu-interpret the extension's rows are skipped and the rest runs)")
    p.add_argument("--total", type=float, default=None,
                   help=f"seconds for the whole run, build included (default {TOTAL_S:.0f}; "
                        f"{INTERPRET_TOTAL_S:.0f} with --cpu-interpret)")
    p.add_argument("--time-scale", type=float, default=None,
                   help="multiply every stage's time limits (default 1; "
                        f"{INTERPRET_SCALE:g} with --cpu-interpret, on a possibly busy CPU)")
    p.add_argument("--stage-limit", action="append", default=[], metavar="NAME=SECONDS",
                   help="one stage's time limit (its process and its own budget), e.g. conformance=300 "
                        "for a fuller conformance run in a second call")
    return p.parse_args(argv)


def stage_limits(items) -> dict:
    """{stage name: seconds} from NAME=SECONDS items; ValueError naming the bad item."""
    limits = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in STAGE_NAMES or not value.replace(".", "", 1).isdigit():
            raise ValueError(f"--stage-limit: expected NAME=SECONDS with NAME one of {list(STAGE_NAMES)}, "
                             f"got {item!r}")
        limits[name] = float(value)
    return limits


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.total is None:
        args.total = INTERPRET_TOTAL_S if args.cpu_interpret else TOTAL_S
    if args.time_scale is None:
        args.time_scale = INTERPRET_SCALE if args.cpu_interpret else 1.0
    chosen = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(chosen) - set(STAGE_NAMES))
    if unknown:
        print(f"gpu_check: --stages: unknown {unknown}; expected some of {list(STAGE_NAMES)}",
              file=sys.stderr)
        return 2
    if importlib.util.find_spec("torch") is None:
        print("gpu_check: torch is not importable by this python3; nothing can run.", file=sys.stderr)
        return 2
    if not args.cpu_interpret and shutil.which("nvidia-smi") is None and not _torch_sees_cuda():
        print("gpu_check: no CUDA device here. Run it on a GPU machine, or add --cpu-interpret for "
              "the tiny logic check in Triton's interpreter.", file=sys.stderr)
        return 2
    try:
        limits = stage_limits(args.stage_limit)
    except ValueError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    stages = [dataclasses.replace(s, timeout_s=limits.get(s.name, s.timeout_s * args.time_scale),
                                  budget_s=limits.get(s.name, s.budget_s * args.time_scale))
              for s in STAGES if not chosen or s.name in chosen]
    if args.simulate_build_failure:
        build = driver.failing_build_command()
    else:
        build = None if (args.cpu_interpret or args.skip_build) else driver.build_command()
    command = "python3 -m benchmarks.gpu_check " + " ".join(argv if argv is not None else sys.argv[1:])
    run = driver.Run(os.path.abspath(args.out), args.cpu_interpret, args.total, stages, build,
                     command=command.strip())
    return run.run()


def _torch_sees_cuda() -> bool:
    import torch
    return torch.cuda.is_available()


if __name__ == "__main__":
    sys.exit(main())
