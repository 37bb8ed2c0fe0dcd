"""What compute-sanitizer runs: every op of every GPU backend once on tiny odd shapes (each tensor
its own allocation: the caching allocator is off, so memcheck sees a write past any tensor)."""
from __future__ import annotations

import sys

import torch

from stllr_kernels.backends import BACKEND_MODULES, unavailable_reason

from . import checks
from .inputs import beta_theta, conv_inputs, linear_inputs, rule, spikes


def main() -> int:
    import importlib
    dev = torch.device("cuda")
    beta, theta = beta_theta(dev)
    failures = 0
    for name in ("triton", "cuda"):
        if unavailable_reason(name, "cuda") is not None:
            print(f"{name}: not available: {unavailable_reason(name, 'cuda')}")
            continue
        ops = importlib.import_module(f"stllr_kernels.backends.{BACKEND_MODULES[name]}")
        shape = (3, 37)
        results = {
            "lif_step": checks.lif_step(ops, torch.randn(shape, device=dev), torch.randn(shape, device=dev),
                                        torch.rand(shape, device=dev), beta, theta, rule()),
            "lif_sequence": checks.lif_sequence(ops, torch.randn(5, *shape, device=dev),
                                                torch.zeros(shape, device=dev), torch.zeros(shape, device=dev),
                                                beta, theta, rule("triangle", "hard", "spike"), 3),
            "pre_trace": checks.pre_trace(ops, torch.rand(shape, device=dev), spikes(shape, dev), 0.8),
            "trace_sequence": checks.trace_sequence(ops, spikes((5, *shape), dev),
                                                    torch.rand(shape, device=dev), 0.8, 3),
            "linear_backward": checks.linear_backward(ops, linear_inputs(dev, (5,), 37, 33), torch.float32),
            "conv_backward": checks.conv_backward(ops, conv_inputs(dev, 2, 3, 5, 7), torch.float32),
        }
        torch.cuda.synchronize()
        for op, verdict in results.items():
            print(f"{name} {op}: {verdict.word} {verdict.detail}")
            failures += not verdict.ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
