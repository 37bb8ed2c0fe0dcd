"""The `triton` backend: fused Triton kernels for every op of DESIGN.md (kernels in `triton/`).

Runs on CUDA GPUs; on a CPU only in Triton's interpreter (TRITON_INTERPRET=1 set before this module
is imported), which is how the tests check it. Importing this module never fails: without Triton the
ops raise BackendUnavailable and `unavailable_reason` says why.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

try:
    import triton  # noqa: F401
except Exception as exc:  # ImportError, or a broken install
    _IMPORT_ERROR: Optional[str] = f"triton is not importable ({type(exc).__name__}: {exc})"
else:
    _IMPORT_ERROR = None

if _IMPORT_ERROR is None:
    from .triton.common import INTERPRETED
    from .triton.conv import conv_backward
    from .triton.eligibility import linear_backward
    from .triton.lif import lif_step
    from .triton.sequence import lif_sequence
    from .triton.trace import pre_trace, trace_sequence
else:
    INTERPRETED = False

    def _missing(*_args, **_kwargs):
        from . import BackendUnavailable
        raise BackendUnavailable(f"backend 'triton' cannot run: {_IMPORT_ERROR}")

    lif_step = pre_trace = lif_sequence = trace_sequence = linear_backward = conv_backward = _missing

__all__ = ["lif_step", "pre_trace", "lif_sequence", "trace_sequence", "linear_backward",
           "conv_backward", "unavailable_reason"]


def unavailable_reason(name: str, device_type: str) -> Optional[str]:
    """None if the Triton kernels can run on `device_type`, else a sentence saying why not."""
    if _IMPORT_ERROR is not None:
        return f"{_IMPORT_ERROR}; install it with `pip install triton`"
    if device_type == "cuda":
        if not torch.cuda.is_available():
            return "no CUDA device is available (torch.cuda.is_available() is False)"
        return None
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            return ("Triton runs on CUDA GPUs; on a CPU only in its interpreter, enabled by setting "
                    "TRITON_INTERPRET=1 before stllr_kernels is imported")
        if not INTERPRETED:
            return ("TRITON_INTERPRET=1 was set after the Triton kernels were defined; set it before "
                    "stllr_kernels.backends.triton_ops is imported")
        return None
    return f"Triton kernels do not run on device type {device_type!r} (only 'cuda', or 'cpu' interpreted)"
