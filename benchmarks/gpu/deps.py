"""What the GPU check needs, found or missing, and what it skips without each.

The driver surveys these first (no import of the packages themselves: `find_spec` and PATH look-ups
only), writes one row per dependency, and skips a stage whose `requires` names a missing one with a
row that says so, instead of letting the stage die at its first import. Optional pieces inside a
stage (SpikingJelly's rows, pytest-xdist's workers) are skipped by the stage, which says so too.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass
from importlib import metadata
from typing import Optional

CUDA_BIN_DIRS = ("/usr/local/cuda/bin", "/opt/cuda/bin")


@dataclass(frozen=True)
class Dep:
    name: str           # as the report names it (the pip name for a module)
    kind: str           # "module" (imported by python) or "tool" (an executable)
    probe: str          # the import name, or the executable's name
    without: str        # what the check skips or loses without it
    gpu_only: bool = False  # not used by --cpu-interpret


# the training package (benchmarks.networks -> training.engine / training.data) imports these
TRAINING = ("numpy", "tqdm")

DEPS = (
    Dep("torch", "module", "torch", "everything (nothing runs)"),
    Dep("triton", "module", "triton", "every triton row (the cuda backend is still checked)"),
    Dep("numpy", "module", "numpy", "the end-to-end, warm-end-to-end and profile stages (training package)"),
    Dep("tqdm", "module", "tqdm", "the end-to-end, warm-end-to-end and profile stages (training package)"),
    Dep("pytest", "module", "pytest", "the conformance and cuda-tests stages"),
    Dep("pytest-xdist", "module", "xdist", "nothing skipped: the conformance suite runs in one process "
        "(fewer of its tests inside its limit)"),
    Dep("setuptools", "module", "setuptools", "the extension build (setup.py): every cuda row", gpu_only=True),
    Dep("nvcc", "tool", "nvcc", "the extension build: every cuda row (the triton rows go on)", gpu_only=True),
    Dep("ninja", "tool", "ninja", "nothing skipped: torch's extension build goes serial, one file at a time "
        "(about 3 min instead of about 1 on 16 cores)", gpu_only=True),
    Dep("compute-sanitizer", "tool", "compute-sanitizer", "the sanitizer stage (memcheck)", gpu_only=True),
    Dep("nvidia-smi", "tool", "nvidia-smi", "nothing skipped: the report names the GPU from torch instead",
        gpu_only=True),
    Dep("spikingjelly", "module", "spikingjelly", "the SpikingJelly BPTT rows of the end-to-end stages"),
    Dep("tonic", "module", "tonic", "nothing: the check trains on synthetic batches (tonic reads the "
        "datasets' files)"),
    Dep("h5py", "module", "h5py", "nothing: the check trains on synthetic batches (h5py reads SHD's files)"),
)
DEP_NAMES = tuple(d.name for d in DEPS)


def find_tool(name: str) -> Optional[str]:
    """The executable on PATH, else in CUDA's usual bin folders ($CUDA_HOME/bin first)."""
    found = shutil.which(name)
    if found:
        return found
    homes = [os.path.join(os.environ[v], "bin") for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    for folder in (*homes, *CUDA_BIN_DIRS):
        path = os.path.join(folder, name)
        if os.access(path, os.X_OK):
            return path
    return None


def _module_version(dep: Dep) -> Optional[str]:
    """The installed version, '' when importable but unversioned, None when missing."""
    try:
        if importlib.util.find_spec(dep.probe) is None:
            return None
    except (ImportError, ValueError):  # a broken parent package, or a half-imported module
        return None
    try:
        return metadata.version(dep.name)
    except metadata.PackageNotFoundError:
        return ""


@dataclass
class Found:
    dep: Dep
    where: Optional[str]  # version (module) or path (tool); None when missing

    @property
    def ok(self) -> bool:
        return self.where is not None


def survey(deps=DEPS) -> dict[str, Found]:
    """name -> Found for every dependency."""
    out = {}
    for dep in deps:
        where = _module_version(dep) if dep.kind == "module" else find_tool(dep.probe)
        out[dep.name] = Found(dep, where)
    return out


def missing(found: dict[str, Found], names) -> list[str]:
    """The names among `names` that are missing."""
    return [n for n in names if n in found and not found[n].ok]


def describe(f: Found, tiny: bool) -> tuple[str, str, str]:
    """(verdict, detail, note) of one dependency's row."""
    if f.ok:
        detail = f.where if f.dep.kind == "tool" else (f.where or "installed")
        return "ok", detail, ""
    if tiny and f.dep.gpu_only:
        return "info", "missing", "not used by --cpu-interpret"
    return "skipped", "missing", f"without it: {f.dep.without}"
