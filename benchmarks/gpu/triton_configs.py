"""Every autotune config of every Triton kernel, one at a time: a thin layer over the kernels' own
autotune module (stllr_kernels/backends/triton/autotune.py), so the configs checked are always the
ones the kernels tune over, whatever the config lists become.

`kernels()` imports every module of `stllr_kernels.backends.triton` (each registers its kernels in
`autotune.TUNED` when it is imported) and returns the registry. `forced_round(kernels, i)` runs a
block under `autotune.forced_config(i)`: every kernel launches its GPU config i modulo its number of
configs, without tuning, also in Triton's interpreter and under STLLR_TRITON_SINGLE_CONFIG=1. The
`Round` it yields says which config each kernel runs and, after the block, which kernels launched.
Rounds 0 .. rounds() - 1 run every config of every kernel at least once. Process-local; the
previous forcing (normally none) holds again after the block.
"""
from __future__ import annotations

import contextlib
import importlib
import pkgutil
from dataclasses import dataclass, field


def kernels() -> dict:
    """Kernel name -> its `autotune.Tuned`, for every autotuned kernel of the triton backend."""
    import stllr_kernels.backends.triton as package
    from stllr_kernels.backends.triton import autotune
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{info.name}")
    return dict(sorted(autotune.TUNED.items()))


def rounds(tuned: dict) -> int:
    """How many forced rounds run every config of every kernel at least once."""
    return max((len(t.gpu_configs) for t in tuned.values()), default=0)


def describe(config) -> str:
    """A config's meta-parameters, warps and stages, short."""
    meta = ",".join(f"{k}={v}" for k, v in config.kwargs.items())
    return f"{meta} w{config.num_warps} s{config.num_stages}"


@dataclass
class Round:
    index: int
    chosen: dict                                  # kernel name -> the config it runs in this round
    launched: set = field(default_factory=set)    # kernels that ran (filled when the block ends)

    def config_index(self, tuned) -> int:
        """The position in `tuned.gpu_configs` of the config a kernel runs in this round."""
        return self.index % len(tuned.gpu_configs)


@contextlib.contextmanager
def forced_round(tuned: dict, index: int):
    """Every kernel launches its GPU config `index` (modulo its number) inside the block; yields a
    Round whose `launched` names, after the block, the kernels of `tuned` that ran in it."""
    from stllr_kernels.backends.triton import autotune
    this = Round(index, {name: t.forced(index) for name, t in tuned.items()})
    before = {name: t.launches for name, t in tuned.items()}
    try:
        with autotune.forced_config(index):
            yield this
    finally:
        this.launched.update(name for name, t in tuned.items() if t.launches != before[name])
