"""`python -m training` end to end on tiny datasets in the real on-disk formats, with each command of
the original's README (docs/rule.md section 7), cut to one epoch, one trial and batches of 2.

The runs go through `training.cli.main` in-process (no second torch import per run); the
missing-files message, whose point is what the user sees, is checked in a real subprocess.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tonic")
pytest.importorskip("aedat")
# every paper command end to end on tiny real-format files, on one torch thread
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

import dataset_fixtures as fx  # noqa: E402

from training.cli import main  # noqa: E402

# The README's commands (only --data-path/--save-path placeholders differ), name -> flags.
PAPER_COMMANDS = {
    "gesture_bptt": "--dataset DVSGesture --arch dvs_vgg_bptt --save-path X --data-path X --trials 5 "
                    "--epochs 300 --batch-size 16 --val-batch-size 16 --feedback-mode BP --print-freq 20 "
                    "--delay-ls 5 --scheduler 300 --pooling MAX --training-mode bptt",
    "gesture_stllr": "--dataset DVSGesture --arch dvs_vgg_stllr --data-path X --save-path X --trials 5 "
                     "--epochs 300 --batch-size 16 --val-batch-size 64 --feedback-mode BP --print-freq 200 "
                     "--delay-ls 5 --factors-stdp 0.2 0.75 -1 1 --pooling MAX --scheduler 300",
    "cifar_bptt": "--dataset CIFAR10DVS --arch dvscifar10_vgg_bptt --save-path X --data-path X --trials 5 "
                  "--epochs 300 --lr 0.001 --batch-size 48 --val-batch-size 128 --print-freq 20 --scheduler 300 "
                  "--pooling AVG --activation GradSigmoid --training-mode bptt",
    "cifar_stllr": "--dataset CIFAR10DVS --arch dvscifar10_vgg11_stllr --save-path X --data-path X --trials 5 "
                   "--epochs 300 --lr 0.001 --batch-size 48 --val-batch-size 128 --feedback-mode BP "
                   "--print-freq 20 --delay-ls 5 --scheduler 300 --factors-stdp 0.2 0.5 -1 1 --pooling AVG "
                   "--activation STLLRConv2dSigmoid",
    "shd_bptt": "--arch bptt_shd_net --dataset SHD --batch-size 128 --val-batch-size 128 --save-path X "
                "--print-freq 10 --data-path X --trials 5 --epochs 200 --lr 0.0002 --training-mode bptt",
    "shd_stllr_bp": "--arch stllr_shd_net --dataset SHD --batch-size 128 --val-batch-size 128 "
                    "--factors-stdp 0.5 1 1 1 --delay-ls 90 --save-path X --print-freq 10 --data-path X "
                    "--trials 5 --epochs 200 --lr 0.0002",
    "shd_stllr_dfa": "--arch stllr_shd_net --dataset SHD --batch-size 128 --val-batch-size 128 "
                     "--factors-stdp 0.5 1 1 1 --delay-ls 90 --save-path X --print-freq 10 --data-path X "
                     "--trials 5 --epochs 200 --lr 0.0002 --label-encoding one-hot --feedback-mode DFA",
}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def command(name: str, data_path, save_path, **overrides) -> list:
    """The README command `name` with its flag values replaced by `overrides` (flag=value)."""
    argv = shlex.split(PAPER_COMMANDS[name])
    values = {"--data-path": str(data_path), "--save-path": str(save_path), **overrides}
    for flag, value in values.items():
        argv[argv.index(flag) + 1] = str(value)
    return argv + ["--cpu", "--workers", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The smallest datasets that still give one training batch and a test set.

    Gesture: one training user with one 1.6 s recording (one 21-frame window) and a 0.15 s test
    recording (2 frames); CIFAR10-DVS: 2 recordings of one class, file indices 0 and 900 (the
    original's split by index gives one to training, one to test; T is 10 whatever the recording);
    SHD: 2 + 2 recordings (T = 100).
    """
    root = tmp_path_factory.mktemp("e2e")
    fx.write_dvs_gesture(str(root / "gesture"), labels=(4,), durations_ms=(1600, 150),
                         folders={"train": fx.GESTURE_FOLDERS["train"][:1], "test": fx.GESTURE_FOLDERS["test"]})
    fx.write_cifar10dvs(str(root / "cifar"), classes=("bird",), indices=(0, 900))
    fx.write_shd(str(root / "shd"), n_train=2, n_test=2)
    return root


@pytest.mark.parametrize("name", sorted(PAPER_COMMANDS))
def test_paper_command_one_epoch(name, tiny, tmp_path, capsys):
    data = tiny / name.split("_")[0]
    save = tmp_path / "run"
    batch = 2 if name.startswith("shd") else 1  # Gesture and CIFAR10-DVS: one training recording
    argv = command(name, data, save, **{"--epochs": 1, "--trials": 1, "--batch-size": batch,
                                        "--val-batch-size": 2, "--print-freq": 1})
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert " @Training * Acc@1 " in err and " @Testing * Acc@1 " in err, err[-2000:]
    assert "Best test accuracy per trial: [" in err
    assert "trial 1 epoch 1 [1/1] loss " in err  # the tiny training set made one batch, as planned

    files = set(os.listdir(save))
    for curve in ("train_acc", "val_acc", "train_loss", "val_loss"):
        values = np.load(save / f"trial_1_{curve}.npy")
        assert values.shape == (1,) and np.isfinite(values).all()
    assert {"checkpoint.pth.tar", "trial_1_history.csv", "trial_1_curves.png", "log.log",
            "summary.json"} <= files
    rows = (save / "trial_1_history.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[0].startswith("epoch,")
    assert (save / "trial_1_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import torch

    from training import checkpoint as ckpt

    state = ckpt.load(str(save / "checkpoint.pth.tar"))
    assert state["epoch"] == 1 and state["arch"] == argv[argv.index("--arch") + 1]
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    # the best-model file exists exactly when the test accuracy beat 0
    assert ("trial_1_model_best.pth.tar" in files) == (state["best_acc1"] > 0)


MISSING_RUN = {"DVSGesture": "gesture_stllr", "CIFAR10DVS": "cifar_stllr", "SHD": "shd_stllr_bp"}


def expected_message(dataset: str, data_path) -> str:
    return f"python -m training: error: {dataset}: dataset files not found under {data_path}"


@pytest.mark.parametrize("dataset", sorted(MISSING_RUN))
def test_missing_files_say_what_to_put_where(dataset, tmp_path, capsys):
    """An existing but empty --data-path: the dataset's message, exit status 2, no traceback."""
    argv = command(MISSING_RUN[dataset], tmp_path, tmp_path / "run", **{"--epochs": 1, "--trials": 1})
    assert main(argv) == 2
    err = capsys.readouterr().err
    message = err[err.index(expected_message(dataset, tmp_path)):]
    assert "Expected layout:" in message and message.rstrip().endswith("or pass --download")
    assert "Traceback" not in err


def test_missing_files_in_a_real_process(tmp_path):
    """What the user sees: the message as the last thing on stderr, no traceback, status 2."""
    argv = command("cifar_bptt", tmp_path, tmp_path / "run", **{"--epochs": 1, "--trials": 1})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, *sys.path]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "training", *argv], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    message = proc.stderr[proc.stderr.index(expected_message("CIFAR10DVS", tmp_path)):]
    assert message.rstrip().endswith("or pass --download")
