"""Device timing: `triton.testing.do_bench` (CUDA events, median) on a GPU; on the CPU (the
interpreter run, whose timings mean nothing) a median of perf_counter around the call.

Two kinds of figure, and every timed row says which (its `timing` column):
- DEVICE (`Clock.us`): do_bench clears the L2 cache with a large memset before each call, and the
  CPU runs ahead while the GPU works through it, so the events bracket the kernels' GPU time only:
  no Python, no launch overhead. Right for kernels against bandwidth or torch.mm; flattering for
  small, launch-bound sizes, where the host is the bottleneck.
- WHOLE_PASS (`Clock.events_s`): CUDA events around a whole training batch or layer pass, recorded
  from the host in order, so host overhead (Python, launches, syncs) is inside the figure.
"""
from __future__ import annotations

import statistics
import time

import torch

DEVICE = "device"              # GPU time of the kernels only (do_bench after an L2 flush)
WHOLE_PASS = "whole pass"      # CUDA events around a whole pass: host overhead included
PROFILER_SPAN = "profiler span"  # first kernel's start to last kernel's end, from torch.profiler


class Clock:
    """Times callables and keeps a stage's budget. The budget starts at `start()`, which a stage
    calls after its warm-up (compiles, autotuning), so that compile time never skips a timing."""

    def __init__(self, device: torch.device, budget_s: float):
        self.device, self.budget_s, self.t0 = device, budget_s, None

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = time.time()

    def over_budget(self) -> bool:
        return self.t0 is not None and time.time() - self.t0 > self.budget_s

    def us(self, fn, rep_ms: int = 100) -> float:
        """Median microseconds per call of fn (already warmed up by the caller)."""
        if self.device.type == "cuda":
            import triton.testing
            return 1e3 * float(triton.testing.do_bench(fn, warmup=25, rep=rep_ms, return_mode="median"))
        t0 = time.perf_counter()  # the interpreter run: one call, the figure means nothing
        fn()
        return (time.perf_counter() - t0) * 1e6

    def events_s(self, fn, reps: int = 3) -> float:
        """Median seconds of fn over `reps` calls, each timed with CUDA events (long calls such as a
        training batch, where do_bench's fixed repetition time would run too few or too many)."""
        times = []
        for _ in range(reps):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            else:
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
        return statistics.median(times)


def copy_gbps(clock: Clock, mib: int) -> float:
    """Measured device-to-device copy bandwidth, bytes read + written per second / 1e9."""
    src = torch.empty(mib * 2 ** 18, dtype=torch.float32, device=clock.device).uniform_()
    dst = torch.empty_like(src)
    dst.copy_(src)
    us = clock.us(lambda: dst.copy_(src))
    return 2 * src.numel() * 4 / us / 1e3
