"""Training modes, optimizers, a whole run with its files, exact resume and Ctrl-C."""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

import training.runner as runner
from training import checkpoint as ckpt
from training.cli import OPTIMIZERS, parse_config
from training.engine import Trainer, loss_over_steps, make_loss
from training.models.common import one_hot

from conftest import assert_close_policy, tol
from training.errors import RunInterrupted


class RandomSpikes(Dataset):
    """Digits-shaped samples whose spikes are drawn on every access (from torch's global RNG,
    like the Digits training set), with unequal lengths to exercise the padding collate."""

    def __init__(self, n: int, train: bool):
        gen = torch.Generator().manual_seed(7 if train else 8)
        self.rates = torch.rand(n, 64, generator=gen)
        self.labels = torch.randint(0, 10, (n,), generator=gen)
        self.lengths = torch.randint(5, 9, (n,), generator=gen)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return (torch.rand(int(self.lengths[i]), 64) < self.rates[i]).float(), int(self.labels[i])


@pytest.fixture
def tiny_data(monkeypatch):
    monkeypatch.setattr(runner, "build_dataset", lambda args, train: RandomSpikes(24 if train else 10, train))


def batch(seed, steps=6, size=4):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(steps, size, 64, generator=gen) < 0.3).float(), torch.randint(0, 10, (size,), generator=gen)


MODES = [("digits_stllr", "stllr", "online", "BP"), ("digits_stllr", "stllr", "sequence", "BP"),
         ("digits_stllr", "stllr_online", "online", "BP"), ("digits_stllr", "bptt", "online", "BP"),
         ("digits_stllr", "bptt", "sequence", "BP"), ("digits_stllr", "stllr", "online", "DFA"),
         ("digits_stllr", "stllr", "sequence", "sDFA"), ("digits_stllr", "stllr_online", "online", "sDFA"),
         ("digits_bptt", "bptt", "online", "BP"), ("digits_bptt", "bptt", "sequence", "BP")]


# the losses and the original's optimizers by their torch definitions, written here independently of
# training.engine.StepLoss and training.runner.make_optimizer (the oracle of the two tests below)
REFERENCE_LOSSES = {
    "CE": lambda out, y: torch.nn.functional.cross_entropy(out, y),
    "MSE": lambda out, y: torch.nn.functional.mse_loss(out, torch.nn.functional.one_hot(y, 10).float()),
    "BCE": lambda out, y: torch.nn.functional.binary_cross_entropy_with_logits(
        out, torch.nn.functional.one_hot(y, 10).float()),
}
REFERENCE_OPTIMIZERS = {
    "SGD": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, weight_decay=wd),
    "NAG": lambda p, lr, wd: torch.optim.SGD(p, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd),
    "Adam": lambda p, lr, wd: torch.optim.Adam(p, lr=lr, weight_decay=wd),
    "RMSProp": lambda p, lr, wd: torch.optim.RMSprop(p, lr=lr, weight_decay=wd),
    "RProp": lambda p, lr, wd: torch.optim.Rprop(p, lr=lr),
}


def batch_by_hand(model, opt, loss, mode, x, y, delay_ls):
    """docs/rule.md section 6 for one batch, literally, with the model's step API: every step run with
    autograd on, a loss and backward at each of the last D steps (stllr_online: an optimizer step
    after each), BPTT one loss on the summed output."""
    T = x.shape[0]
    model.reset_states()
    model.feedback.set_target(y)
    opt.zero_grad()
    if mode == "bptt":
        loss(sum(model.step(x[t]) for t in range(T)), y).backward()
        opt.step()
        return
    for t in range(T):
        out = model.step(x[t])
        if t >= T - delay_ls:
            if mode == "stllr_online":
                opt.zero_grad()
            loss(out, y).backward()
            if mode == "stllr_online":
                opt.step()
    if mode == "stllr":
        opt.step()


def assert_same_batch(config, training_mode, step_mode, loss, seed, batches=2):
    """The Trainer's batches move every weight as batch_by_hand does (online steps, the reference
    loss and optimizer), within the tolerance policy. In float64, and each weight's update compared
    relative to its largest element: a wrong momentum, loss scale or step would show far above the
    noise, while float32 weights would hide small updates in their rounding."""
    torch.manual_seed(seed)
    model, optimizer, _ = runner.setup_trial(config, torch.device("cpu"))
    model.double()  # in place: the optimizer keeps the same parameters
    by_hand = copy.deepcopy(model)
    before = {k: v.clone() for k, v in model.named_parameters()}
    by_hand_opt = REFERENCE_OPTIMIZERS[config.optimizer](by_hand.parameters(), config.lr, config.weight_decay)
    trainer = Trainer(model, optimizer, make_loss(loss, 10), training_mode, step_mode, 3)
    for i in range(batches):
        x, y = batch(seed + i)
        torch.manual_seed(seed + 100 + i)  # the same dropout masks on both sides
        pred = trainer.train_batch(x.double(), y)
        assert pred.shape == (4, 10) and not pred.requires_grad
        torch.manual_seed(seed + 100 + i)
        batch_by_hand(by_hand, by_hand_opt, REFERENCE_LOSSES[loss], training_mode, x.double(), y, 3)
    want = dict(by_hand.named_parameters())
    moved = []
    for name, p in model.named_parameters():
        got_step, want_step = p - before[name], want[name] - before[name]
        scale = want_step.abs().max()
        if scale > 0:
            moved.append(name)
            got_step, want_step = got_step / scale, want_step / scale
        assert_close_policy(got_step, want_step, torch.float64, reduction=6 * 4 * 64, msg=name)
    assert any("linear1.weight" in k for k in moved) and any("classifier.weight" in k for k in moved), moved


@pytest.mark.parametrize("arch,mode,step_mode,feedback", MODES, ids=["-".join(m) for m in MODES])
def test_training_modes_follow_the_procedure(arch, mode, step_mode, feedback, seed):
    config = parse_config(["--dataset", "Digits", "--arch", arch, "--training-mode", mode, "--step-mode", step_mode,
                           "--feedback-mode", feedback, "--delay-ls", "3"])
    assert_same_batch(config, mode, step_mode, "CE", seed)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
@pytest.mark.parametrize("loss", ["CE", "MSE", "BCE"])
def test_every_optimizer_and_loss_is_its_definition(optimizer, loss, seed):
    config = parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--optimizer", optimizer, "--loss", loss,
                           "--weight-decay", "1e-4"])
    assert_same_batch(config, "stllr", "online", loss, seed, batches=1)


def run_cli(argv):
    return runner.run(parse_config(argv))


def flags(save, *extra):
    return ["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--val-batch-size", "5",
            "--save-path", str(save), "--scheduler", "3", "--delay-ls", "3", "--print-freq", "1", *extra]


@pytest.mark.slow
def test_run_writes_the_originals_files_and_more(tmp_path, tiny_data):
    summary = run_cli(flags(tmp_path, "--epochs", "2", "--trials", "2"))
    for trial in (1, 2):
        for name in ("train_acc", "val_acc", "train_loss", "val_loss"):
            assert np.load(tmp_path / f"trial_{trial}_{name}.npy").shape == (2,)
        assert (tmp_path / f"trial_{trial}_model_best.pth.tar").is_file()
        assert (tmp_path / f"trial_{trial}_curves.png").stat().st_size > 1000
        assert len((tmp_path / f"trial_{trial}_history.csv").read_text().splitlines()) == 3
    best = torch.load(tmp_path / "trial_1_model_best.pth.tar", weights_only=True)
    assert set(best) == {"epoch", "state_dict", "best_acc1", "optimizer"}
    assert "Acc@1" in (tmp_path / "log.log").read_text()
    assert json.loads((tmp_path / "summary.json").read_text())["trials"][1]["trial"] == 2
    assert len(summary["trials"]) == 2
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


@pytest.mark.slow
def test_resume_gives_the_uninterrupted_result(tmp_path, tiny_data):
    whole, part = tmp_path / "whole", tmp_path / "part"
    run_cli(flags(whole, "--epochs", "3"))
    run_cli(flags(part, "--epochs", "2"))
    run_cli(flags(part, "--epochs", "3", "--resume", str(part / ckpt.RESUME_NAME)))
    a = ckpt.load(str(whole / ckpt.RESUME_NAME))
    b = ckpt.load(str(part / ckpt.RESUME_NAME))
    assert a["epoch"] == b["epoch"] == 3
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["history"]["val_acc"] == b["history"]["val_acc"]
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    assert a["optimizer"]["state"][0]["exp_avg"].equal(b["optimizer"]["state"][0]["exp_avg"])


@pytest.mark.slow
def test_ctrl_c_writes_a_checkpoint_and_exits_cleanly(tmp_path, tiny_data, monkeypatch):
    import signal

    real = runner.run_epoch
    calls = {"n": 0}

    def interrupt_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:  # train, test of epoch 1, then train of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "run_epoch", interrupt_in_second_epoch)
    with pytest.raises(RunInterrupted, match="--resume") as exc:
        run_cli(flags(tmp_path, "--epochs", "3"))
    assert exc.value.exit_code == 130
    state = ckpt.load(str(tmp_path / ckpt.RESUME_NAME))
    assert state["epoch"] == 1 and state["trial"] == 1  # the state at the start of the interrupted epoch
    monkeypatch.setattr(runner, "run_epoch", real)
    summary = run_cli(flags(tmp_path, "--epochs", "3", "--resume", str(tmp_path / ckpt.RESUME_NAME)))
    assert len(np.load(tmp_path / "trial_1_val_acc.npy")) == 3 and summary["trials"][0]["best_acc1"] >= 0


def test_atomic_save_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "c.pth"
    ckpt.save_atomic({"a": 1}, str(path))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        ckpt.save_atomic({"a": Unpicklable()}, str(path))
    assert torch.load(path, weights_only=False) == {"a": 1}
    assert os.listdir(tmp_path) == ["c.pth"]


def test_digits_dataset_is_fixed_and_rate_coded():
    from training.data import DigitsSpikes, pad_collate
    train, test = DigitsSpikes(True), DigitsSpikes(False)
    assert len(train) + len(test) == 1797 and abs(len(test) - 360) < 5
    x, y = test[3]
    assert x.shape == (20, 64) and set(x.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(DigitsSpikes(False)[3][0], x)  # the test encoding never changes
    xb, yb = pad_collate([(torch.ones(3, 64), 1), (torch.ones(5, 64), 2)])
    assert xb.shape == (5, 2, 64) and xb[3:, 0].sum() == 0 and yb.tolist() == [1, 2]


def test_dataset_table_matches_the_pipelines():
    import importlib

    from training.data import DATASETS
    for name, spec in DATASETS.items():
        if spec.module is None:
            continue
        module = importlib.import_module(f"training.datasets.{spec.module}")
        assert (module.NAME, tuple(module.INPUT_SHAPE), module.NUM_CLASSES) == (name, spec.frame_shape,
                                                                              spec.num_classes)


@pytest.mark.slow
def test_shd_end_to_end_on_a_tiny_recording_set(tmp_path):
    """`python -m training`'s SHD path, on the datasets helper's tiny real-format files."""
    pytest.importorskip("h5py")
    pytest.importorskip("tonic")
    import dataset_fixtures as fx
    data = fx.write_shd(str(tmp_path / "data"))
    summary = run_cli(["--arch", "stllr_shd_net", "--dataset", "SHD", "--data-path", data, "--epochs", "1",
                       "--batch-size", "3", "--val-batch-size", "3", "--delay-ls", "90", "--workers", "0",
                       "--factors-stdp", "0.5", "1", "1", "1", "--save-path", str(tmp_path / "run"),
                       "--step-mode", "sequence"])
    assert summary["trials"][0]["final_acc1"] is not None
    assert (tmp_path / "run" / "trial_1_val_acc.npy").is_file()


def test_missing_dataset_files_is_a_message_not_a_traceback(tmp_path, capsys):
    from training.cli import main
    assert main(["--arch", "stllr_shd_net", "--dataset", "SHD", "--data-path", str(tmp_path),
                 "--save-path", str(tmp_path / "run"), "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "error: SHD" in err and "Traceback" not in err


@pytest.mark.parametrize("loss", ["CE", "MSE", "BCE"])
@pytest.mark.parametrize("steps,size,classes", [(1, 1, 2), (5, 3, 10), (18, 16, 20)])
def test_loss_over_steps_is_the_sum_of_the_step_losses(loss, steps, size, classes, seed):
    """The sequence mode's one loss over all loss rows: the same value and gradient as summing the
    per-step losses (what the engine did before, and what any user callable still gets)."""
    fn = make_loss(loss, classes)
    out = torch.randn(steps, size, classes, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, classes, (size,))
    fused = fn.over_steps(out, labels)
    per_step = sum(fn(out[t], labels) for t in range(steps))
    torch.testing.assert_close(fused, per_step, **tol(torch.float64, steps * size * classes))
    fused_grad, = torch.autograd.grad(fused, out)
    step_grad, = torch.autograd.grad(per_step, out)
    torch.testing.assert_close(fused_grad, step_grad, **tol(torch.float64, steps))
    assert torch.equal(loss_over_steps(fn, out, labels), fused)
    plain = {"CE": torch.nn.functional.cross_entropy}.get(loss)
    if plain is not None:  # a user's callable takes the per-step sum
        torch.testing.assert_close(loss_over_steps(plain, out, labels), per_step, **tol(torch.float64, steps))


def test_one_hot_matches_torch(seed):
    labels = torch.randint(0, 7, (3, 5))
    assert torch.equal(one_hot(labels, 7), torch.nn.functional.one_hot(labels, 7).float())
    assert one_hot(labels, 7, torch.float64).dtype == torch.float64


@pytest.mark.parametrize("loss", ["CE", "MSE"])
def test_sequence_mode_loss_gives_the_per_step_sums_gradients(loss, seed):
    """Trainer's sequence mode with the fused loss moves the weights as a per-step sum would."""
    torch.manual_seed(seed)
    config = parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--training-mode", "stllr",
                           "--step-mode", "sequence", "--delay-ls", "3", "--optimizer", "SGD"])
    model, optimizer, _ = runner.setup_trial(config, torch.device("cpu"))
    twin = copy.deepcopy(model)
    twin_opt = type(optimizer)(twin.parameters(), **optimizer.defaults)
    fn = make_loss(loss, 10)
    x, y = batch(seed)
    Trainer(model, optimizer, fn, "stllr", "sequence", 3).train_batch(x, y)
    Trainer(twin, twin_opt, lambda out, labels: fn(out, labels), "stllr", "sequence", 3).train_batch(x, y)
    for (name, a), b in zip(model.state_dict().items(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, **tol(a.dtype, 64), msg=name)
