"""The scripts of examples/ run as a researcher would run them, on their --tiny settings."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def _run(script, *args, cwd):
    import torch

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), MPLBACKEND="Agg", OMP_NUM_THREADS=str(torch.get_num_threads()))
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc.stdout


def test_every_example_is_tested():
    tested = {"layers_in_your_model.py", "digits_conv.py", "load_checkpoint.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


@pytest.mark.slow
def test_layers_in_your_model(tmp_path):
    out = _run("layers_in_your_model.py", "--tiny", cwd=tmp_path)
    worst = float(re.search(r"largest relative difference (\S+)", out).group(1))
    assert worst < 1e-3
    assert re.findall(r"batch \d \((online|chunked)\)", out) == ["online", "chunked", "online", "chunked"]


@pytest.mark.slow
def test_digits_conv(tmp_path):
    out = _run("digits_conv.py", "--tiny", cwd=tmp_path)
    accuracy = float(re.search(r"epoch 1: test accuracy (\S+)%", out).group(1))
    assert accuracy > 30  # above chance (10 %) after one tiny epoch: it learns (68.75 % when written)


@pytest.mark.slow
def test_load_checkpoint_reproduces_the_recorded_accuracy(tmp_path):
    """Without a run folder it trains one (one epoch with --tiny) into ./experiments/example_digits,
    then loads trial_1_model_best.pth.tar and evaluates it: the run's recorded best accuracy again."""
    out = _run("load_checkpoint.py", "--tiny", cwd=tmp_path)
    assert (tmp_path / "experiments" / "example_digits" / "trial_1_model_best.pth.tar").is_file()
    measured, recorded = map(float, re.search(r"test accuracy (\S+)% \(recorded best (\S+)%\)", out).groups())
    assert abs(measured - recorded) < 0.3, out  # the same fixed test spikes (one sample is 0.28 %)
    again = _run("load_checkpoint.py", "experiments/example_digits", cwd=tmp_path)  # a given run folder
    assert re.search(r"test accuracy (\S+)%", again).group(1) == re.search(r"test accuracy (\S+)%", out).group(1)
