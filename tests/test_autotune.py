"""Autotuning that pays once (stllr_kernels/backends/triton/autotune.py): bucketed keys, the disk
cache shared by processes and ranks, forced configs, the registry of autotuned kernels.

Triton's interpreter benchmarks nothing, so a tuned kernel here gets a stand-in for Triton's
autotuner (`FakeTuner`): it "benchmarks" by launching every config once, picks a fixed winner and
launches it, as @triton.autotune does on a GPU; the rest (keys, caches, launches) is the real code.
"""
from __future__ import annotations

import json
import os
import threading

import pytest
import torch

from stllr_kernels.backends import unavailable_reason

from conftest import assert_close_policy

pytestmark = pytest.mark.skipif(unavailable_reason("triton", "cpu") is not None,
                                reason=str(unavailable_reason("triton", "cpu")))

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from stllr_kernels.backends.triton import autotune  # noqa: E402
from stllr_kernels.backends.triton.autotune import ConfigSet, Tuned, bucket  # noqa: E402


@triton.jit
def _scale_kernel(x_ptr, out_ptr, n, T, factor, BLOCK: tl.constexpr):
    """out = factor * x over n elements (T: a size in the key only, as a sequence kernel's)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, factor * tl.load(x_ptr + offs, mask=mask), mask=mask)


CONFIGS = [triton.Config({"BLOCK": b}, num_warps=4) for b in (16, 32, 64)]
WINNER = 2


class FakeTuner:
    """@triton.autotune's part: runs every config once ("benchmarks"), keeps CONFIGS[WINNER]."""

    def __init__(self, tuned: Tuned):
        self.tuned, self.benchmarks = tuned, 0

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.benchmarks += 1
            for config in self.tuned.configs:
                self.tuned.fn[grid](*args, **kwargs, **config.all_kwargs())
            self.best_config = self.tuned.configs[WINNER]
            self.configs_timings = {c: [float(i)] for i, c in enumerate(self.tuned.configs)}
        return run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(autotune.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(autotune, "TUNED", {})  # tuned kernels of this test only
    return tmp_path / "cache"


def new_process_kernel(reuse=("n", "T")) -> tuple[Tuned, FakeTuner]:
    """The kernel as a new process defines it: nothing tuned in memory."""
    tuned = Tuned(_scale_kernel, ConfigSet(CONFIGS[0], CONFIGS), key=["n", "T"], restore_value=None,
                  interpreted=False, single=False, reuse=reuse)
    tuned.tuner = FakeTuner(tuned)
    return tuned, tuned.tuner


def launch(tuned: Tuned, n: int, T: int, seed: int = 0):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed))
    out = torch.full_like(x, float("nan"))
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK"]),)  # noqa: E731
    tuned[grid](x, out, n, T, 3.0)
    assert_close_policy(out, 3.0 * x)


def test_bucket():
    assert [bucket(s) for s in (0, 1, 2, 3, 16, 17, 99, 100, 128, 450, 700)] == \
        [0, 1, 2, 4, 16, 32, 128, 128, 128, 512, 1024]


def test_partial_batch_and_new_padded_T_reuse_the_tuned_config(cache):
    tuned, tuner = new_process_kernel()
    launch(tuned, 16 * 45, 99)  # batch 16 of 45 neurons, T = 99: n in (512, 1024], T in (64, 128]
    assert tuner.benchmarks == 1 and tuned.tuning_runs == 1
    for n, T in ((16 * 45, 97), (12 * 45, 95), (13 * 45, 99), (16 * 45, 65)):  # the same buckets
        launch(tuned, n, T)
    for n, T in ((3 * 45, 99), (16 * 45, 40), (5 * 45, 33)):  # buckets up to 4x smaller: reused
        launch(tuned, n, T)
    assert tuner.benchmarks == 1
    assert len(tuned._chosen) == 4 and len(tuned._tuned) == 1
    launch(tuned, 16 * 45, 130)  # T past the tuned power of two: a new bucket, tuned
    launch(tuned, 1 * 45, 99)  # 16x smaller: tuned
    assert tuner.benchmarks == 3
    exact = {tuned.keys((None, None, n, T, 3.0), {})[0] for n, T in ((720, 99), (720, 97))}
    assert len(exact) == 2, "the exact keys (what @triton.autotune used) differ"


def test_only_the_named_sizes_reuse_a_larger_key(cache):
    tuned, tuner = new_process_kernel(reuse=("n",))
    launch(tuned, 720, 99)
    launch(tuned, 200, 99)  # n 4x smaller: reused
    launch(tuned, 720, 40)  # T is not in reuse: tuned
    assert tuner.benchmarks == 2


def test_disk_cache_serves_a_new_process(cache):
    tuned, tuner = new_process_kernel()
    launch(tuned, 100, 10)
    assert tuner.benchmarks == 1
    (entry,) = list(cache.iterdir())
    stored = json.loads(entry.read_text())
    assert stored["config"] == WINNER and stored["triton"] == triton.__version__
    assert stored["kernel"] == "_scale_kernel" and stored["device"] == "cpu"
    assert stored["key"][:2] == [128, 16]
    again, tuner2 = new_process_kernel()
    launch(again, 90, 12)  # same bucket: read from disk
    assert tuner2.benchmarks == 0 and again.tuning_runs == 0
    assert list(again._chosen.values()) == [CONFIGS[WINNER]]


def test_cache_off_and_bad_entries(cache, monkeypatch):
    tuned, _ = new_process_kernel()
    launch(tuned, 100, 10)
    (entry,) = list(cache.iterdir())
    entry.write_text("{not json")
    again, tuner = new_process_kernel()
    launch(again, 100, 10)
    assert tuner.benchmarks == 1, "a bad entry is a miss"
    assert json.loads(entry.read_text())["config"] == WINNER, "and is rewritten"
    monkeypatch.setenv(autotune.CACHE_ENV, "0")
    assert autotune.cache_dir() is None
    off, tuner = new_process_kernel()
    launch(off, 100, 10)
    assert tuner.benchmarks == 1


def test_entries_are_per_device_model(cache, monkeypatch):
    tuned, tuner = new_process_kernel()
    monkeypatch.setattr(autotune, "_device_name", lambda device: "GPU model A")
    launch(tuned, 100, 10)
    monkeypatch.setattr(autotune, "_device_name", lambda device: "GPU model B")
    launch(tuned, 100, 10)
    assert tuner.benchmarks == 2 and len(list(cache.iterdir())) == 2


def test_forced_config_runs_that_config_without_tuning(cache):
    tuned, tuner = new_process_kernel()
    used = []
    real_run = tuned._run
    tuned._run = lambda grid, config, args, kwargs: (used.append(config), real_run(grid, config, args, kwargs))
    for i in range(len(CONFIGS) + 1):
        with autotune.forced_config(i):
            launch(tuned, 100, 3)
    assert used == [CONFIGS[0], CONFIGS[1], CONFIGS[2], CONFIGS[0]]
    assert tuner.benchmarks == 0 and not tuned._chosen


def test_forced_config_reaches_every_gpu_config_of_the_real_kernels(seed):
    """In the interpreter each kernel has one candidate, but forced_config runs its GPU configs:
    pre_trace with each of its block sizes gives the reference's result."""
    from stllr_kernels import reference as R
    from stllr_kernels.backends.triton import trace
    assert autotune.max_configs() >= len(autotune.TUNED["_pre_trace_kernel"].gpu_configs) > 1
    g = torch.Generator().manual_seed(seed)
    x, tr = (torch.rand(5000, generator=g) < 0.3).float(), torch.rand(5000, generator=g)
    for i in range(len(autotune.TUNED["_pre_trace_kernel"].gpu_configs)):
        with autotune.forced_config(i):
            assert_close_policy(trace.pre_trace(tr, x, 0.7), R.pre_trace(tr, x, 0.7))


def test_concurrent_writers_and_readers_see_whole_entries(cache):
    """Ranks tuning the same key at once: every read finds no entry or a whole one."""
    tuned, _ = new_process_kernel()
    key = ("cpu", 128, 16, "torch.float32", "torch.float32")
    bad, stop = [], threading.Event()

    def write():
        for i in range(100):
            tuned._store(key, CONFIGS[i % len(CONFIGS)], {})

    def read():
        while not stop.is_set():
            path = tuned._path(key)
            if os.path.exists(path) and tuned._load(key) is None:
                bad.append(path)
    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write) for _ in range(3)]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    assert not bad
    assert [p.suffix for p in cache.iterdir()] == [".json"], "no temporary file left behind"


def test_every_autotuned_kernel_is_registered():
    names = set(autotune.TUNED)
    assert {"_lif_step_kernel", "_lif_sequence_kernel", "_pre_trace_kernel", "_trace_sequence_kernel",
            "_eligibility_dw_kernel", "_signal_dx_kernel", "_conv_products_kernel", "_leaky_scan_kernel",
            "_reverse_eligibility_kernel"} <= names
    for tuned in autotune.TUNED.values():
        assert len(tuned.gpu_configs) > 1 and all(isinstance(c, triton.Config) for c in tuned.gpu_configs)


@pytest.mark.slow
def test_autotune_runs_benchmark(capsys):
    """benchmarks/autotune_runs.py --quick: a second process on the same disk cache tunes nothing."""
    import stllr_kernels
    from benchmarks import autotune_runs
    try:
        assert autotune_runs.main(["--quick"]) == 0
    finally:
        stllr_kernels.set_backend(None)
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| SHD | online")]
    assert len(row) == 1, row
    cells = [c.strip() for c in row[0].strip("|").split("|")]
    before_runs = int(cells[5].split("/")[1].split("(")[0])
    after_runs = int(cells[7].split("/")[1].split("(")[0])
    assert 0 < after_runs < before_runs
    assert cells[8] == "0", "the later process must tune nothing"
