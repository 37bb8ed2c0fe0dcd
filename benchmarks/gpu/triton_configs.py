"""Every autotune config of every Triton kernel, one at a time.

`autotuners()` finds the kernels' autotuner objects (the `@triton.autotune` kernels defined in the
modules of `stllr_kernels.backends.triton`), so the configs checked are always the ones the code
tunes over, whatever the config lists become. `only_config(tuners, i)` restricts each to its config
i (its last when it has fewer) for a block: an autotuner with a single config launches it without
benchmarking, so the ops then run exactly that config. Process-local; the lists are restored after.
The process must not set STLLR_TRITON_SINGLE_CONFIG (the lists would hold the first config only).
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
from dataclasses import dataclass, field


def autotuners() -> dict:
    """'module.kernel' -> the autotuner, for every autotuned kernel of the triton backend."""
    from triton.runtime.autotuner import Autotuner

    import stllr_kernels.backends.triton as package
    found = {}
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        for attr, obj in vars(module).items():
            if isinstance(obj, Autotuner) and all(obj is not t for t in found.values()):
                found[f"{info.name}.{attr}"] = obj
    return found


def rounds(tuners: dict) -> int:
    """How many restricted runs check every config of every kernel at least once."""
    return max((len(t.configs) for t in tuners.values()), default=0)


def describe(config) -> str:
    """A config's meta-parameters, warps and stages, short."""
    meta = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{meta} w{config.num_warps} s{config.num_stages}"


@dataclass
class Round:
    index: int
    chosen: dict                                  # kernel name -> the config it runs in this round
    launched: set = field(default_factory=set)    # kernels that ran (filled when the block ends)


@contextlib.contextmanager
def only_config(tuners: dict, index: int):
    """Each autotuner restricted to config `index` (its last when it has fewer) inside the block;
    yields a Round whose `launched` names, after the block, the kernels that ran in it."""
    saved = {name: (t.configs, dict(t.cache)) for name, t in tuners.items()}
    this = Round(index, {name: t.configs[min(index, len(t.configs) - 1)] for name, t in tuners.items()})
    for name, t in tuners.items():
        t.configs = [this.chosen[name]]
        t.cache.clear()
        t.best_config = None  # set again by every launch: tells which kernels ran
    try:
        yield this
    finally:
        for name, t in tuners.items():
            if getattr(t, "best_config", None) is not None:
                this.launched.add(name)
            t.configs, cache = saved[name]
            t.cache.clear()
            t.cache.update(cache)
