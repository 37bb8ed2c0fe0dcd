"""The entry point of one stage process: `python -m benchmarks.gpu.stage NAME --rows FILE ...`.

Sets the process up the same way for every stage (the interpreter before Triton is imported, TF32
off for every oracle, the device), then runs `benchmarks.gpu.stages.<module>.run(ctx)`. Rows go to
FILE as they are made; an exception outside a row's guard becomes one ERROR row and exit code 1.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import traceback

NO_EXTENSION_ENV = "STLLR_NO_EXTENSION"  # set by the driver for every stage after a failed build


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--rows", required=True, help="JSON-lines file the rows are appended to")
    p.add_argument("--budget", type=float, default=60.0, help="seconds of the stage's own clock")
    p.add_argument("--tiny", action="store_true", help="CPU, Triton interpreter, tiny shapes")
    p.add_argument("--provider", default=None, help="correctness stages: triton or ext")
    p.add_argument("--target", default=None, help="warm-up stages: the timing stage to warm up")
    p.add_argument("--case", default=None, help="end-to-end stages: shd or vgg")
    p.add_argument("--require-ext", action="store_true",
                   help="the driver built the extension: its backend missing is an ERROR, not a skip")
    return p.parse_args(argv)


def is_sticky_cuda_error(exc: BaseException) -> bool:
    """Errors after which this process's CUDA context is unusable."""
    text = f"{type(exc).__name__}: {exc}"
    return "AcceleratorError" in text or "CUDA error" in text or "illegal memory access" in text


class Context:
    """What a stage's run() gets: device, shapes, clock, providers and the row helpers."""

    def __init__(self, args, torch):
        from . import rows, sizes, timing
        from .stages import STAGES
        self.args, self.torch, self.tiny = args, torch, args.tiny
        self.stage = args.name
        self.spec = next(s for s in STAGES if s.name == args.name)
        self.device = torch.device("cpu" if args.tiny else "cuda")
        self.S = sizes.sizes(args.tiny)
        self.clock = timing.Clock(self.device, args.budget)
        self.sink = rows.RowSink(args.rows)
        self._rows = rows

    def add(self, check, case="", provider="", verdict="info", **kw) -> dict:
        return self.sink.add(self._rows.make_row(self.stage, check, case, provider, verdict, **kw))

    def skip_if_over_budget(self, check, case) -> bool:
        if self.clock.over_budget():
            self.add(check, case, "-", "skipped", note="skipped: the stage's time budget is spent")
            return True
        return False

    @contextlib.contextmanager
    def guard(self, check, case, provider):
        """An exception becomes an ERROR row and the stage goes on, unless the CUDA context is
        gone (then the stage ends: the driver records it and runs the other stages)."""
        try:
            yield
        except Exception as exc:  # one failing case must not cost the rest of the stage
            first = (str(exc).strip().splitlines() or [""])[0]
            self.add(check, case, provider, "ERROR", detail=f"{type(exc).__name__}: {first}")
            if is_sticky_cuda_error(exc):
                raise SystemExit(3)

    def ext_name(self) -> str:
        """The C++/CUDA extension's backend on this device."""
        return "cuda" if self.device.type == "cuda" else "cpu"

    def providers(self, names) -> dict:
        """name -> op module for the backends that can run here; rows for those that cannot."""
        from stllr_kernels.backends import BACKEND_MODULES, unavailable_reason
        found = {}
        for name in names:
            reason = unavailable_reason(name, self.device.type)
            if reason is None:
                found[name] = importlib.import_module(f"stllr_kernels.backends.{BACKEND_MODULES[name]}")
            else:
                required = self.args.require_ext and name == self.ext_name()
                if name == self.ext_name() and os.environ.get(NO_EXTENSION_ENV, "0") not in ("", "0"):
                    reason = (f"the run goes on without the extension ({NO_EXTENSION_ENV}=1: its build failed "
                              f"or could not start; see build.log)")
                self.add("backend available", name, name, "ERROR" if required else "skipped",
                         detail=reason)
        return found


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tiny:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton or stllr_kernels is imported
    import torch

    from stllr_kernels.tolerance import exact_oracles
    exact_oracles()  # every float32 oracle in exact float32: cuDNN would use TF32 by default on a GPU
    from .rows import RowSink, make_row
    if not args.tiny and not torch.cuda.is_available():
        RowSink(args.rows).add(make_row(args.name, "stage", verdict="ERROR",
                                        detail="no CUDA device (torch.cuda.is_available() is False)"))
        return 2
    ctx = Context(args, torch)
    torch.manual_seed(0)
    try:
        module = importlib.import_module(f"benchmarks.gpu.stages.{ctx.spec.module}")
        module.run(ctx)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
    except SystemExit:
        raise
    except Exception as exc:  # the stage's own set-up failed: one row, then the driver goes on
        traceback.print_exc()
        first = (str(exc).strip().splitlines() or [""])[0]
        ctx.add("stage", verdict="ERROR", detail=f"{type(exc).__name__}: {first}")
        return 3 if is_sticky_cuda_error(exc) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
