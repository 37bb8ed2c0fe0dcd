"""The `triton` backend: fused Triton kernels for every op of docs/design.md, one module per op family.

Runs on CUDA GPUs; on a CPU only in Triton's interpreter (TRITON_INTERPRET=1 set before this package
is imported), which is how the tests check it. Importing this package never fails: without Triton the
ops raise BackendUnavailable and `unavailable_reason` says why, and the kernel modules below (each
defines `@triton.jit` kernels at import time) are imported only once `import triton` has succeeded.
Inputs may be float32, bfloat16 or float16 (states in float32); float64 inputs run the reference ops
(see _launcher), and every launch runs under a device guard.

Each kernel module holds its kernels first, then the launch functions with the op signatures of
`stllr_kernels.reference`:

    common       Psi and the LIF update as jit helpers, block-size configs, dtype/shape checks
    lif          lif_step (one pass per time step), lif_sequence (all T steps, state in registers)
    trace        pre_trace, trace_sequence
    eligibility  linear_backward (the eligibility GEMM, products formed while loading tiles, and dx),
                 conv_backward (one products kernel + one conv weight-gradient)
    recurrent    recurrent_sequence (a GEMM per step with the LIF and both traces as its epilogue),
                 readout_sequence (one GEMM, the leaky scan), recurrent_backward
    standardize  standardize_backward (one program per row)
"""
from __future__ import annotations

import contextlib
import functools
import os
from typing import Optional

import torch

from ... import reference

try:
    import triton  # noqa: F401
except Exception as exc:  # ImportError, or a broken install
    _IMPORT_ERROR: Optional[str] = f"triton is not importable ({type(exc).__name__}: {exc})"
else:
    _IMPORT_ERROR = None


def _device_guard(device: torch.device):
    """Triton launches on the current CUDA device: make it the tensors' device (`--device cuda:1`,
    one DDP rank per GPU), as the C++ ops' CUDAGuard does."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _launcher(op):
    """Every op of this backend: float64 inputs run the reference op instead (the kernels keep
    float32 state and take their factors as float32 scalars, which float64 tolerances would not
    forgive); the kernels launch under a guard on the first tensor argument's device."""
    reference_op = getattr(reference, op.__name__)

    def launch(*args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        if any(t.dtype == torch.float64 for t in tensors):
            return reference_op(*args, **kwargs)
        with _device_guard(tensors[0].device if tensors else torch.device("cpu")):
            return op(*args, **kwargs)

    @functools.wraps(op)
    def dispatch(*args, **kwargs):
        if torch.compiler.is_compiling():  # one opaque op that torch.compile can trace (custom_ops)
            return getattr(custom_ops, op.__name__)(*args, **kwargs)
        return launch(*args, **kwargs)
    dispatch.launch = launch
    return dispatch


if _IMPORT_ERROR is None:
    from .common import INTERPRETED
    from .eligibility import conv_backward, linear_backward
    from .lif import lif_sequence, lif_step
    from .trace import pre_trace, trace_sequence
    from .recurrent import readout_sequence, recurrent_backward, recurrent_backward_reverse, recurrent_sequence
    from .standardize import standardize_backward
    (lif_step, pre_trace, lif_sequence, trace_sequence, linear_backward, conv_backward,
     recurrent_sequence, readout_sequence, recurrent_backward, standardize_backward,
     recurrent_backward_reverse) = map(
        _launcher,
        (lif_step, pre_trace, lif_sequence, trace_sequence, linear_backward, conv_backward,
         recurrent_sequence, readout_sequence, recurrent_backward, standardize_backward,
         recurrent_backward_reverse))
    from . import custom_ops
    custom_ops.register({f.__name__: f.launch for f in (
        lif_step, pre_trace, lif_sequence, trace_sequence, linear_backward, conv_backward, recurrent_sequence,
        readout_sequence, recurrent_backward, standardize_backward, recurrent_backward_reverse)})
else:
    INTERPRETED = False

    def _missing(*_args, **_kwargs):
        from .. import BackendUnavailable
        raise BackendUnavailable(f"backend 'triton' cannot run: {_IMPORT_ERROR}")

    lif_step = pre_trace = lif_sequence = trace_sequence = linear_backward = conv_backward = _missing
    recurrent_sequence = readout_sequence = recurrent_backward = standardize_backward = _missing
    recurrent_backward_reverse = _missing

__all__ = ["lif_step", "pre_trace", "lif_sequence", "trace_sequence", "linear_backward",
           "conv_backward", "recurrent_sequence", "readout_sequence", "recurrent_backward",
           "standardize_backward", "recurrent_backward_reverse", "unavailable_reason", "is_compile_failure"]

_TRITON_DIR = os.path.dirname(triton.__file__) + os.sep if _IMPORT_ERROR is None else None


def is_compile_failure(exc: BaseException) -> bool:
    """True when `exc` says a kernel could not be compiled or launched on this device (what lets
    `auto` fall back to another backend): Triton's compilation and ptxas errors, too little shared
    memory or too many registers (OutOfResources), and any other error with a Triton frame in its
    traceback (a failed compiler pass, the launcher's C build, a missing C compiler). Never an
    argument error (ValueError, TypeError: ours and Triton's) and never an error of the CUDA runtime
    (a launch that failed on the device, out of memory): falling back would hide a bug or run on
    with corrupted state."""
    if _IMPORT_ERROR is not None or isinstance(exc, (ValueError, TypeError)):
        return False
    from triton.compiler.errors import CompilationError
    from triton.runtime import errors
    typed = (CompilationError, errors.OutOfResources, getattr(errors, "PTXASError", CompilationError))
    if isinstance(exc, typed):
        return True
    if isinstance(exc, getattr(torch, "AcceleratorError", ())) or "CUDA" in str(exc) or \
            isinstance(exc, errors.InterpreterError):
        return False
    tb = exc.__traceback__
    while tb is not None:  # raised while Triton was running (its compiler, its launcher's C build)
        if os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_TRITON_DIR):
            return True
        tb = tb.tb_next
    return False


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
                    "stllr_kernels.backends.triton is imported")
        return None
    return f"Triton kernels do not run on device type {device_type!r} (only 'cuda', or 'cpu' interpreted)"
