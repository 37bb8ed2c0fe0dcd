"""Autotuning that pays once: Triton's autotuner behind bucketed keys and a disk cache.

`@autotune(configs, key=[...])` wraps `@triton.autotune`; a launch `kernel[grid](*args)` then
  1. computes a *bucketed* key: each integer size named in `key` rounded up to a power of two (batch
     sizes, padded lengths T and every size within the same power of two share a key), the other
     key values as they are, the dtypes of the tensor arguments, the device's name;
  2. looks the key up in this process, then in the disk cache (one small JSON file per kernel and
     key under `cache_dir()`, written atomically: concurrent processes and DDP ranks share it);
  3. else takes the config of a tuned key that differs only in sizes that grow with the batch or the
     sequence (the kernel's `reuse`), each at most REUSE_FACTOR (4) times larger: the last partial
     batch, the short first part of a split sequence;
  4. only when all miss, lets Triton benchmark every config on these very arguments (launching
     the best), and stores the winner in both caches. A hit launches the kernel with its config
     directly, with the exact sizes.

Every autotuned kernel is registered in `TUNED` (kernel name -> Tuned), so a check can reach its
configs (`Tuned.gpu_configs`) and run each of them (`with forced_config(i):`, i up to the largest
number of configs: `max_configs()`). In Triton's interpreter and
under STLLR_TRITON_SINGLE_CONFIG=1 a kernel has one candidate config: nothing is tuned or cached.

STLLR_AUTOTUNE_CACHE=DIR moves the disk cache (default: `stllr_autotune/` in Triton's cache
directory, TRITON_CACHE_DIR or ~/.triton/cache); STLLR_AUTOTUNE_CACHE=0 turns it off.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import json
import os
import tempfile
from typing import Callable, NamedTuple, Optional

import torch
import triton

CACHE_ENV = "STLLR_AUTOTUNE_CACHE"
CACHE_OFF = ("0", "off", "none", "false")
# a key not tuned yet takes the config of a tuned one up to this many times larger in each of the
# sizes its kernel names in `reuse` (those that grow with the batch or the sequence)
REUSE_FACTOR = 4

TUNED: dict[str, "Tuned"] = {}
_forced_index: Optional[int] = None


class ConfigSet(NamedTuple):
    """A kernel's configs: `interpreted` alone in Triton's interpreter, `tuned` on a GPU."""
    interpreted: triton.Config
    tuned: list

    def candidates(self, interpreted: bool, single: bool) -> list:
        """What @triton.autotune chooses from: the interpreter's config, or the first tuned one
        alone (STLLR_TRITON_SINGLE_CONFIG=1), or all of them."""
        if interpreted:
            return [self.interpreted]
        return self.tuned[:1] if single else list(self.tuned)


def bucket(size: int) -> int:
    """The tuning bucket of an integer size: the next power of two (sizes <= 1 as they are)."""
    return size if size <= 1 else triton.next_power_of_2(size)


def cache_dir() -> Optional[str]:
    """Where tuned configs are kept on disk, or None when the cache is off."""
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in CACHE_OFF:
        return None
    if setting:
        return setting
    try:
        from triton import knobs
        base = knobs.cache.dir
    except (ImportError, AttributeError):  # a Triton without knobs
        base = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".triton", "cache")
    return os.path.join(base, "stllr_autotune")


@contextlib.contextmanager
def forced_config(index: int):
    """Launch every autotuned kernel with config `index` of its GPU configs (`gpu_configs`, modulo
    their number), without tuning, also under STLLR_TRITON_SINGLE_CONFIG=1 and in the interpreter:
    lets a check run each config of each kernel at least once."""
    global _forced_index
    previous, _forced_index = _forced_index, index
    try:
        yield
    finally:
        _forced_index = previous


def max_configs() -> int:
    """The most GPU configs any autotuned kernel has: forced_config(0 .. max_configs() - 1) runs them all."""
    return max(len(t.gpu_configs) for t in TUNED.values())


@functools.lru_cache(maxsize=None)
def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def _key_value(value, bucketed: bool):
    if isinstance(value, bool) or not isinstance(value, int):
        return str(value)
    return bucket(value) if bucketed else value


class Tuned:
    """One autotuned kernel: `kernel[grid](*args, **kwargs)` as with @triton.autotune."""

    def __init__(self, fn, configs: ConfigSet, key: list, restore_value: Optional[list],
                 interpreted: bool, single: bool, reuse: tuple = ()):
        self.fn = fn
        self.name = fn.__name__
        self.key = list(key)
        # positions in a tuning key (device name first) of the sizes a larger tuned key may stand in for
        self._reusable = {1 + self.key.index(name) for name in reuse}
        self.gpu_configs = list(configs.tuned)
        self.configs = configs.candidates(interpreted, single)
        self.tuner = triton.autotune(configs=self.configs, key=self.key, restore_value=restore_value)(fn)
        self.arg_names = list(fn.arg_names)
        self._chosen: dict[tuple, triton.Config] = {}  # key -> config launched with it
        self._tuned: dict[tuple, triton.Config] = {}   # the keys among them that were tuned (here or on disk)
        self.tuning_runs = 0  # keys benchmarked in this process (each over every config)
        self.launches = 0     # launches in this process: tells a check which kernels ran
        TUNED[self.name] = self

    def __getitem__(self, grid) -> Callable:
        return functools.partial(self._launch, grid)

    def keys(self, args, kwargs) -> tuple:
        """(exact key as @triton.autotune forms it, bucketed key) of one launch."""
        named = {**dict(zip(self.arg_names, args)), **kwargs}
        dtypes = tuple(str(v.dtype) for v in named.values() if isinstance(v, torch.Tensor))
        exact = tuple(_key_value(named[k], False) for k in self.key) + dtypes
        bucketed = tuple(_key_value(named[k], True) for k in self.key) + dtypes
        return exact, bucketed

    def tuning_key(self, args, kwargs) -> tuple:
        """What a launch is tuned and cached by: the device's name and the bucketed key."""
        device = next(v.device for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
        return (_device_name(device), *self.keys(args, kwargs)[1])

    def choose(self, key: tuple) -> Optional[triton.Config]:
        """The config of `key` without tuning, if there is one: this process's, the disk cache's, or
        that of a tuned key equal but for sizes named in `reuse` up to REUSE_FACTOR times larger (the
        last partial batch, a shorter sequence); None: `key` must be tuned."""
        config = self._chosen.get(key)
        if config is None:
            config = self._load(key)
            if config is not None:
                self._tuned[key] = config
            else:
                config = self._larger_neighbour(key)
            if config is not None:
                self._chosen[key] = config
        return config

    def record(self, key: tuple, config: triton.Config, timings: dict) -> None:
        """Keep the tuned config of `key` in this process and on disk."""
        self.tuning_runs += 1
        self._chosen[key] = self._tuned[key] = config
        self._store(key, config, timings)

    def _larger_neighbour(self, key: tuple) -> Optional[triton.Config]:
        best, best_ratio = None, None
        for other, config in self._tuned.items():
            if len(other) != len(key):
                continue
            ratio = 1
            for i, (mine, theirs) in enumerate(zip(key, other)):
                if i in self._reusable and isinstance(mine, int) and isinstance(theirs, int) and mine > 1:
                    if not mine <= theirs <= REUSE_FACTOR * mine:
                        break
                    ratio *= theirs // mine
                elif mine != theirs:
                    break
            else:
                if best_ratio is None or ratio < best_ratio:
                    best, best_ratio = config, ratio
        return best

    def forced(self, index: int) -> triton.Config:
        """The config this kernel launches with under `forced_config(index)`."""
        return self.gpu_configs[index % len(self.gpu_configs)]

    def _launch(self, grid, *args, **kwargs):
        self.launches += 1
        if _forced_index is not None:
            return self._run(grid, self.forced(_forced_index), args, kwargs)
        if len(self.configs) == 1:  # nothing to choose from: Triton launches it without tuning
            return self.tuner[grid](*args, **kwargs)
        key = self.tuning_key(args, kwargs)
        config = self.choose(key)
        if config is not None:
            return self._run(grid, config, args, kwargs)
        # a new key: Triton benchmarks every config on these arguments, then launches the best
        result = self.tuner[grid](*args, **kwargs)
        self.record(key, self.tuner.best_config, getattr(self.tuner, "configs_timings", {}))
        return result

    def _run(self, grid, config: triton.Config, args, kwargs):
        return self.fn[grid](*args, **kwargs, **config.all_kwargs())

    # ------------------------------------------------------------------------- disk cache

    def _path(self, key: tuple) -> Optional[str]:
        root = cache_dir()
        if root is None:
            return None
        ident = json.dumps([triton.__version__, self.name, self._source_key(), [str(c) for c in self.configs],
                            list(key)])
        return os.path.join(root, f"{self.name}-{hashlib.sha256(ident.encode()).hexdigest()[:32]}.json")

    def _source_key(self) -> str:
        """The kernel's source (with the jit functions it calls, on a GPU): a changed kernel re-tunes."""
        key = getattr(self.fn, "cache_key", None)  # JITFunction; the interpreter's function has none
        return key or hashlib.sha256(inspect.getsource(self.fn.fn).encode()).hexdigest()

    def _load(self, key: tuple) -> Optional[triton.Config]:
        path = self._path(key)
        try:
            with open(path) as f:
                return self.configs[int(json.load(f)["config"])]
        except (TypeError, OSError, ValueError, KeyError, IndexError):  # no cache, no entry, or a bad one
            return None

    def _store(self, key: tuple, config: triton.Config, timings: dict) -> None:
        """Write the entry atomically (a temporary file renamed over it): a process or rank
        reading at the same time sees the whole file or none."""
        path = self._path(key)
        if path is None:
            return
        entry = {"kernel": self.name, "device": key[0], "triton": triton.__version__, "key": list(key[1:]),
                 "config": self.configs.index(config), "config_text": str(config),
                 "timings_ms": {str(c): t for c, t in timings.items()}}
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), suffix=".tmp", delete=False) as f:
                json.dump(entry, f)
            os.replace(f.name, path)
        except OSError:  # a read-only or full disk: the tuning still holds for this process
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(f.name)


def autotune(configs: ConfigSet, key: list, restore_value: Optional[list] = None, reuse: tuple = ()):
    """The decorator: `@autotune(configs, key=[...], reuse=(...))` above `@triton.jit` (see the module
    doc); `reuse`: the sizes of `key` that grow with the batch or the sequence, for which a new key
    may take the config of a larger tuned one."""
    from .common import INTERPRETED, SINGLE_CONFIG

    def wrap(fn) -> Tuned:
        return Tuned(fn, configs, key, restore_value, INTERPRETED, SINGLE_CONFIG, tuple(reuse))
    return wrap
