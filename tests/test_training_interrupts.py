"""Ctrl-C anywhere: SIGINT sent at many points of a short Digits run (2 trials of 2 epochs), each
followed by `--resume`, must end with the same weights, optimizer state, histories and summary as
the uninterrupted run.

The points are counted in Python function calls (sys.setprofile) from the start of the run, so the
sweep is deterministic and reaches everywhere: data loading, autograd hooks, optimizer steps,
logging, checkpoint writing, the end of an epoch and of a trial.
"""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

import training.runner as runner
from training import checkpoint as ckpt
from training import records
from training.cli import main
from training.data import DigitsSpikes

POINTS = 12


@pytest.fixture(autouse=True)
def tiny_digits(monkeypatch):
    monkeypatch.setattr(runner, "build_dataset",
                        lambda args, train: Subset(DigitsSpikes(train, seed=args.seed), range(16 if train else 10)))
    # no PNG per epoch: matplotlib's many calls would take most of the time and most of the points
    monkeypatch.setattr(records, "plot_curves", lambda *args, **kwargs: None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def argv(save, *extra):
    # the default step mode (chunk) in chunks of one step: as many calls inside the batches as the
    # online mode makes, so that nearly every point of the sweep lands inside a batch
    return ["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--val-batch-size", "10",
            "--delay-ls", "5", "--scheduler", "2", "--lr", "0.01", "--epochs", "2", "--trials", "2", "--print-freq", "2",
            "--cpu", "--workers", "0", "--step-mode", "chunk", "--chunk-size", "1", "--save-path", str(save), *extra]


class CallCounter:
    """Counts Python calls inside the run; sends SIGINT to this process at call `at` (if given)."""

    def __init__(self, at=None):
        self.calls, self.at = 0, at

    def __call__(self, frame, event, arg):
        if event == "call":
            self.calls += 1
            if self.calls == self.at:
                sys.setprofile(None)  # the rest of the run at full speed
                os.kill(os.getpid(), signal.SIGINT)


def run_counted(monkeypatch, counter, args) -> int:
    """main(args) with `counter` profiling the run (after the signal handlers are in place)."""
    real = runner._run

    def profiled(*a, **k):
        sys.setprofile(counter)
        try:
            return real(*a, **k)
        finally:
            sys.setprofile(None)

    with monkeypatch.context() as m:
        m.setattr(runner, "_run", profiled)
        return main(args)


def outcome(save) -> dict:
    state = ckpt.load(str(save / ckpt.RESUME_NAME))
    best = {t: torch.load(save / ckpt.best_name(t), weights_only=True) for t in (1, 2)
            if (save / ckpt.best_name(t)).exists()}
    return {"state": state, "best": best, "summary": json.loads((save / "summary.json").read_text()),
            "trial_1_val_acc": np.load(save / "trial_1_val_acc.npy")}


def assert_same(a: dict, b: dict, where: str) -> None:
    sa, sb = a["state"], b["state"]
    assert (sa["trial"], sa["epoch"]) == (sb["trial"], sb["epoch"]) == (2, 2), where
    for key, value in sa["model"].items():
        assert torch.equal(value, sb["model"][key]), (where, key)
    for i, s in sa["optimizer"]["state"].items():
        assert all(torch.equal(v, sb["optimizer"]["state"][i][k]) for k, v in s.items()), where
    assert sa["scheduler"] == sb["scheduler"], where
    for name in ("train_loss", "val_acc", "lr"):
        assert sa["history"][name] == sb["history"][name], (where, name)
    assert set(a["best"]) == set(b["best"]), where
    for t in a["best"]:
        assert a["best"][t]["epoch"] == b["best"][t]["epoch"], where
        assert all(torch.equal(v, b["best"][t]["state_dict"][k]) for k, v in a["best"][t]["state_dict"].items())
    assert [t["best_acc1"] for t in a["summary"]["trials"]] == [t["best_acc1"] for t in b["summary"]["trials"]]
    assert np.array_equal(a["trial_1_val_acc"], b["trial_1_val_acc"]), where


@pytest.mark.slow
def test_sigint_anywhere_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, capsys):
    assert main(argv(tmp_path / "ref")) == 0  # also makes the first-use imports (plotting)
    expected = outcome(tmp_path / "ref")
    counting = CallCounter()
    assert run_counted(monkeypatch, counting, argv(tmp_path / "counted")) == 0
    assert_same(expected, outcome(tmp_path / "counted"), "profiled")
    capsys.readouterr()
    total = int(counting.calls * 0.97)  # the count varies by a few hundred (progress-bar refreshes)
    rng = np.random.default_rng(15)
    points = sorted({int(p) for p in np.linspace(1, total, POINTS // 2)} |
                    {int(p) for p in rng.integers(1, total, POINTS - POINTS // 2)})
    stopped = 0
    for at in points:
        save = tmp_path / f"at_{at}"
        counter = CallCounter(at)
        code = run_counted(monkeypatch, counter, argv(save))
        err = capsys.readouterr().err
        assert counter.calls == at, f"the run made only {counter.calls} calls, the signal was never sent"
        assert "Exception ignored" not in err and "Traceback" not in err, (at, err[-2000:])
        if code == 130:  # stopped: one clear line naming the checkpoint; resume to the end
            stopped += 1
            lines = [line.split("\r")[-1] for line in err.split("\n") if "python -m training: error" in line]
            assert len(lines) == 1 and "SIGINT" in lines[0] and "--resume" in lines[0], (at, err[-3000:])
            assert main(argv(save, "--resume", str(save / ckpt.RESUME_NAME))) == 0
        else:  # the signal came after the last batch: the run completed and says so
            assert code == 0 and "received after the last epoch" in err, (at, code)
        assert_same(expected, outcome(save), f"SIGINT at call {at} of {total}")
    assert stopped >= len(points) - 1  # nearly every point lands before the last batch
