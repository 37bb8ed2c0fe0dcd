"""Backend registry: one place chooses which implementation of the op set runs.

Every backend is a module `stllr_kernels.backends.<module>` exposing the ops of docs/design.md with the
signatures of `stllr_kernels.reference` and a function `unavailable_reason(name, device_type)` that returns
None when it can run on that device type, else a sentence saying why not. A backend chosen by `auto`
that cannot load is skipped quietly; one asked for by name fails loudly with that sentence.

A backend that compiles its kernels when they are first launched (Triton) also exposes
`is_compile_failure(exc)`. Under `auto`, an op of such a backend whose kernel fails to compile or
launch on a device moves, for the rest of the process, to the next backend of AUTO_ORDER that can run
there (cuda, then torch), with one BackendFallbackWarning naming the op and the error; the call is
re-run there (every op is functional: it never writes its inputs). A backend forced by name
(set_backend, STLLR_BACKEND) never falls back: its errors surface as they are.

    backend  module                           kernels
    torch    backends/torch_reference.py      stllr_kernels/reference.py itself
    triton   backends/triton/ (a package)     backends/triton/<family>.py
    cpu      backends/cpu_cuda.py             the extension stllr_kernels._C: csrc/<family>.cpp
    cuda     backends/cpu_cuda.py             the same extension: csrc/cuda/<family>.cu

Every op family has a file of the same name in each compiled backend:

    family       ops                                   triton/          csrc/              csrc/cuda/
    lif          lif_step, lif_sequence                lif.py           lif.cpp            lif.cu
    trace        pre_trace, trace_sequence             trace.py         trace.cpp          trace.cu
    eligibility  linear_backward, conv_backward        eligibility.py   eligibility.cpp    eligibility.cu
    recurrent    recurrent_sequence, readout_sequence, recurrent.py     recurrent.cpp      recurrent.cu
                 recurrent_backward
    standardize  standardize_backward                  standardize.py   standardize.cpp    standardize.cu
    shared       Psi, LIF update, checks, configs      common.py        stllr.h, ops.cpp   launch.cuh

(csrc/ops.cpp also holds the op schemas, backends/cpu_cuda.py the extension's fake kernels; a .cu file
holds only a family's device-specific passes, its GEMMs go through ATen as in the .cpp.)
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from types import ModuleType
from typing import Optional

import torch

# name -> module under stllr_kernels.backends
BACKEND_MODULES = {
    "triton": "triton",
    "cuda": "cpu_cuda",
    "cpu": "cpu_cuda",
    "torch": "torch_reference",
}
# per device type, the order `auto` tries (fastest first)
AUTO_ORDER = {
    "cuda": ("triton", "cuda", "torch"),
    "cpu": ("cpu", "torch"),
}
ENV_VAR = "STLLR_BACKEND"

_forced: Optional[str] = None
_chosen: dict[str, str] = {}  # device type -> backend name taken by auto
_modules: dict[str, ModuleType] = {}
_auto_ops: dict[tuple, "FallbackOps"] = {}  # (device type, backend name) -> auto's guarded ops


class BackendUnavailable(RuntimeError):
    """Raised when a backend asked for by name cannot run here; the message says why."""


class BackendFallbackWarning(RuntimeWarning):
    """`auto` moved an op to another backend because its kernel failed to compile or launch."""


def _load(name: str) -> tuple[Optional[ModuleType], Optional[str]]:
    module_name = BACKEND_MODULES[name]
    if module_name not in _modules:
        try:
            _modules[module_name] = importlib.import_module(f"{__name__}.{module_name}")
        except Exception as exc:  # a missing compiler, GPU or package must not break the import
            return None, f"backend {name!r} failed to load: {type(exc).__name__}: {exc}"
    return _modules[module_name], None


def unavailable_reason(name: str, device_type: str) -> Optional[str]:
    """None if backend `name` can run on `device_type`, else why not."""
    if name not in BACKEND_MODULES:
        return f"unknown backend {name!r}; expected one of {['auto', *BACKEND_MODULES]}"
    module, error = _load(name)
    if module is None:
        return error
    return module.unavailable_reason(name, device_type)


def set_backend(name: Optional[str]) -> None:
    """Force one backend for every device ("auto" or None restores the automatic choice).

    Raises BackendUnavailable if the named backend cannot run on any device of this machine.
    """
    global _forced
    if name is None or name == "auto":
        _forced = None
        return
    if name not in BACKEND_MODULES:
        raise BackendUnavailable(f"unknown backend {name!r}; expected one of {['auto', *BACKEND_MODULES]}")
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    reasons = [unavailable_reason(name, d) for d in device_types]
    if all(r is not None for r in reasons):
        raise BackendUnavailable(f"backend {name!r} cannot run here: {reasons[-1]}")
    _forced = name


def get_backend_name(device_type: str) -> str:
    """The backend that runs ops on `device_type` under the current setting (under `auto`, an op
    whose kernel failed may have moved to another: backend_info() lists those)."""
    name = _setting()
    if name != "auto":
        reason = unavailable_reason(name, device_type)
        if reason is not None:
            raise BackendUnavailable(f"backend {name!r} (from "
                                     f"{'set_backend' if _forced else ENV_VAR}) cannot run on "
                                     f"{device_type}: {reason}")
        return name
    if device_type not in _chosen:
        for candidate in AUTO_ORDER.get(device_type, ("torch",)):
            if unavailable_reason(candidate, device_type) is None:
                _chosen[device_type] = candidate
                break
    return _chosen[device_type]


def _setting() -> str:
    return _forced or os.environ.get(ENV_VAR, "auto") or "auto"


class FallbackOps:
    """The ops of the backend `auto` chose for a device type, each guarded: when its kernel fails to
    compile or launch (the backend's `is_compile_failure`), the op moves to the next backend of
    AUTO_ORDER that can run there, once, with one warning, and the call is re-run there."""

    def __init__(self, device_type: str, name: str, module: ModuleType):
        self.device_type, self.name, self.module = device_type, name, module
        self.moved: dict[str, tuple[str, ModuleType, str]] = {}  # op -> (backend, module, error)

    def __getattr__(self, op: str):
        primary = getattr(self.module, op)
        if not callable(primary) or op.startswith("_") or op in ("unavailable_reason", "is_compile_failure"):
            return primary

        @functools.wraps(primary)
        def guarded(*args, **kwargs):
            moved = self.moved.get(op)
            if moved is not None:
                return getattr(moved[1], op)(*args, **kwargs)
            try:
                return primary(*args, **kwargs)
            except Exception as exc:
                if not self.module.is_compile_failure(exc):
                    raise
                return getattr(self._move(op, exc), op)(*args, **kwargs)
        setattr(self, op, guarded)  # found directly from now on
        return guarded

    def _move(self, op: str, exc: Exception) -> ModuleType:
        order = AUTO_ORDER.get(self.device_type, ("torch",))
        later = order[order.index(self.name) + 1:] if self.name in order else ("torch",)
        for candidate in later:
            if unavailable_reason(candidate, self.device_type) is None:
                module, _ = _load(candidate)
                text = getattr(exc, "error_message", None) or str(exc)  # a CompilationError's own message
                error = f"{type(exc).__name__}: {' '.join(str(text).split())[:300]}"
                self.moved[op] = (candidate, module, error)
                warnings.warn(f"stllr_kernels: the {self.name} kernel of {op} failed to compile or launch on "
                              f"{self.device_type} ({error}); backend 'auto' runs {op} with {candidate!r} "
                              f"from now on (set_backend('{self.name}') would raise instead)",
                              BackendFallbackWarning, stacklevel=3)
                return module
        raise exc


def get_ops(device: torch.device | str):
    """The ops of the backend selected for `device`: the backend's module when forced by name,
    under `auto` the module with every op guarded by a fallback (FallbackOps) when the backend
    compiles kernels at run time."""
    device_type = torch.device(device).type
    name = _selected(device_type, _forced)
    module = _modules[BACKEND_MODULES[name]]
    # under torch.compile the op is traced as it is (a guarded call is Python dynamo cannot trace)
    if torch.compiler.is_compiling() or _setting() != "auto" or not hasattr(module, "is_compile_failure"):
        return module
    key = (device_type, name)
    if key not in _auto_ops:
        _auto_ops[key] = FallbackOps(device_type, name, module)
    return _auto_ops[key]


@torch.compiler.assume_constant_result
def _selected(device_type: str, forced: Optional[str]) -> str:
    """get_backend_name, with the backend's module loaded. torch.compile runs it when tracing (an
    import cannot be traced) and keeps the answer, guarded on `forced` (set_backend)."""
    name = get_backend_name(device_type)
    _load(name)
    return name


def backend_info() -> dict:
    """Which backend each device type uses, and why the others are not used."""
    device_types = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    info = {"setting": _setting(), "devices": {}}
    for d in device_types:
        try:
            selected = get_backend_name(d)
        except BackendUnavailable as exc:
            selected = f"error: {exc}"
        info["devices"][d] = {
            "selected": selected,
            "unavailable": {n: r for n in BACKEND_MODULES
                            if (r := unavailable_reason(n, d)) is not None},
            "fallbacks": {op: {"backend": backend, "error": error}
                          for (dt, _), ops in _auto_ops.items() if dt == d
                          for op, (backend, _, error) in ops.moved.items()},
        }
    return info
