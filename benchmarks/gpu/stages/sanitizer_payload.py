"""What compute-sanitizer runs: every op of every GPU backend once on tiny odd shapes (each tensor
its own allocation: the caching allocator is off, so memcheck sees a write past any tensor)."""
from __future__ import annotations

import sys

import torch

from stllr_kernels.backends import BACKEND_MODULES, unavailable_reason

from . import checks
from .inputs import (beta_theta, conv_inputs, linear_inputs, readout_inputs, recurrent_backward_inputs,
                     recurrent_inputs, reverse_inputs, rule, spikes, standardize_inputs)


def main() -> int:
    import importlib

    from stllr_kernels.tolerance import exact_oracles
    exact_oracles()  # a fresh process: cuDNN would run the float32 oracles in TF32
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
            "recurrent_sequence": checks.recurrent_sequence(ops, recurrent_inputs(dev, 4, 3, 7, 37), rule(), 2,
                                                            torch.float32),
            "readout_sequence": checks.readout_sequence(ops, readout_inputs(dev, 4, 3, 7, 37), 2),
            "recurrent_backward": checks.recurrent_backward(ops, recurrent_backward_inputs(dev, 5, 7, 37),
                                                            torch.float32),
            "recurrent_backward_reverse": checks.recurrent_backward_reverse(
                ops, reverse_inputs(dev, 3, 3, 7, 37), torch.float32),
            "standardize_backward": checks.standardize_backward(ops, standardize_inputs(dev, (5, 33))),
        }
        torch.cuda.synchronize()
        for op, verdict in results.items():
            print(f"{name} {op}: {verdict.word} {verdict.detail}")
            failures += not verdict.ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
