"""`python -m training` never lies, never loses work, never runs code from a checkpoint.

Each test reproduces one way a run could go wrong (tried as a new user would, on the Digits data)
and checks what must happen now. Runs go through `training.cli.main` in-process (one torch import)
on a small slice of Digits; the command's one-line messages are read from stderr.
"""
from __future__ import annotations

import json
import os
import signal
import stat

import numpy as np
import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import training.runner as runner
from training import checkpoint as ckpt
from training import distributed
from training.cli import main, parse_config
from training.data import DigitsSpikes
from training.engine import SavedTensorMeter, Trainer, make_loss
from training.errors import RunDiverged

RESUME = ckpt.RESUME_NAME


@pytest.fixture(autouse=True)
def tiny_digits(monkeypatch):
    """Digits cut to 40 training and 20 test samples (5 batches of 8): a run's epoch in ~1 s."""
    def build(args, train):
        data = DigitsSpikes(train, seed=args.seed)
        return Subset(data, range(40 if train else 20))

    monkeypatch.setattr(runner, "build_dataset", build)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def argv(save, *extra):
    return ["--dataset", "Digits", "--arch", "digits_stllr", "--batch-size", "8", "--val-batch-size", "20",
            "--delay-ls", "5", "--scheduler", "3", "--epochs", "2", "--print-freq", "100", "--cpu",
            "--workers", "0", "--save-path", str(save), *extra]


def cli(capsys, *args) -> tuple:
    """(exit status, stderr lines that are not log lines) of `python -m training *args`."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # a flag rejected by the parser: the same one-line form
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    # a line may follow a cleared progress bar ("...\r"): what the terminal shows is after the last \r
    lines = [line.split("\r")[-1] for line in err.split("\n") if "python -m training: error" in line]
    assert all(line.startswith("python -m training: error") for line in lines), lines
    return code, lines


def one_line_error(capsys, code_expected, *args) -> str:
    code, lines = cli(capsys, *args)
    assert code == code_expected and len(lines) == 1, (code, lines)
    return lines[0]


def load_resume(save) -> dict:
    return ckpt.load(str(save / RESUME))


def all_finite(state_dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# ----------------------------------------------------------------------------- divergence

@pytest.mark.parametrize("extra", [["--optimizer", "SGD", "--lr", "1e38", "--delay-ls", "20", "--step-mode", "online"],
                                   ["--optimizer", "SGD", "--lr", "1e38", "--step-mode", "sequence"],
                                   ["--optimizer", "SGD", "--lr", "1e38", "--step-mode", "online"],
                                   ["--optimizer", "SGD", "--lr", "1e38", "--step-mode", "chunk", "--chunk-size", "2"],
                                   ["--arch", "digits_bptt", "--training-mode", "bptt", "--optimizer", "SGD",
                                    "--lr", "1e38"]],
                         ids=["stllr-online-all-steps", "stllr-sequence", "stllr-online-delay5", "stllr-chunk",
                              "bptt"])
def test_nan_loss_stops_naming_trial_epoch_batch_and_keeps_last_good_checkpoint(tmp_path, capsys, extra):
    line = one_line_error(capsys, RunDiverged.exit_code, *argv(tmp_path, *extra))
    assert "trial 1, epoch 1, batch " in line and "non-finite" in line and "--lr" in line, line
    assert "loss_steps" not in line  # no misleading layer error (NaN weights broke the backward)
    state = load_resume(tmp_path)
    assert state["epoch"] == 0 and all_finite(state["model"])  # the last good state, resumable
    best = tmp_path / ckpt.best_name(1)
    assert not best.exists() or all_finite(torch.load(best, weights_only=True)["state_dict"])


def test_huge_but_finite_loss_is_shown_on_the_epoch_line(tmp_path, capsys):
    assert main(argv(tmp_path, "--epochs", "1", "--lr", "1e3")) == 0
    log = (tmp_path / "log.log").read_text()
    assert " @Training * Acc@1 " in log and " Loss " in log.split(" @Training * ")[1].splitlines()[0]


def test_divergence_check_reads_the_device_once_per_interval(monkeypatch):
    """The guard adds device ops per batch; the host reads them only at print intervals and the end."""
    from training import guard as guard_module
    from training.engine import run_epoch

    reads = []
    real_check = guard_module.FiniteGuard.check
    monkeypatch.setattr(guard_module.FiniteGuard, "check", lambda self, b: (reads.append(b), real_check(self, b)))
    args = parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--delay-ls", "3"])
    model, optimizer, _ = runner.setup_trial(args, torch.device("cpu"))
    data = [((torch.rand(4, 2, 64) < 0.3).float(), torch.randint(0, 10, (2,))) for _ in range(7)]
    trainer = Trainer(model, optimizer, make_loss("CE", 10), "stllr", "online", 3)
    run_epoch(data, torch.device("cpu"), make_loss("CE", 10), trainer=trainer, print_freq=3, show_progress=False,
              guard=guard_module.FiniteGuard(model, torch.device("cpu")))
    assert reads == [3, 6, 7]


# ----------------------------------------------------------------------------- interrupts

def test_no_finalizer_holds_work_an_interrupt_could_land_in():
    """The saved-tensor meter counted frees in __del__, where 3 of 8 Ctrl-Cs were swallowed."""
    assert not any("__del__" in vars(cls) for cls in (SavedTensorMeter, *vars(SavedTensorMeter).values())
                   if isinstance(cls, type))
    meter = SavedTensorMeter()
    w = torch.randn(5, 3, requires_grad=True)
    with meter.measure():
        (torch.randn(4, 5) @ w).sigmoid().sum().backward()
    assert meter.peak >= 4 * 5 * 4  # the saved input at least


class FinalizerMeter:
    """The old meter (frees counted in __del__): the reference for the figures, used in tests only."""

    def __init__(self):
        self.current = self.peak = 0

    class Held:
        def __init__(self, tensor, meter):
            self.tensor, self.meter, self.nbytes = tensor, meter, tensor.numel() * tensor.element_size()
            meter.current += self.nbytes
            meter.peak = max(meter.peak, meter.current)

        def __del__(self):
            self.meter.current -= self.nbytes

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(lambda t: self.Held(t, self), lambda h: h.tensor)


@pytest.mark.parametrize("arch,mode,step_mode", [("digits_stllr", "stllr", "online"),
                                                 ("digits_stllr", "stllr", "sequence"),
                                                 ("digits_stllr", "stllr_online", "online"),
                                                 ("digits_bptt", "bptt", "online"), ("digits_stllr", "bptt", "sequence")])
def test_meter_without_finalizers_gives_the_same_peak(arch, mode, step_mode, seed):
    x, y = (torch.rand(7, 3, 64) < 0.3).float(), torch.randint(0, 10, (3,))
    peaks = []
    for meter in (FinalizerMeter(), SavedTensorMeter()):
        torch.manual_seed(seed)
        config = parse_config(["--dataset", "Digits", "--arch", arch, "--training-mode", mode, "--step-mode",
                               step_mode, "--delay-ls", "4"])
        model, optimizer, _ = runner.setup_trial(config, torch.device("cpu"))
        trainer = Trainer(model, optimizer, make_loss("CE", 10), mode, step_mode, 4)
        if isinstance(meter, SavedTensorMeter):
            trainer.meter = meter
        with meter.measure() if isinstance(meter, SavedTensorMeter) else meter.hooks():
            trainer.train_batch(x, y)
        peaks.append(meter.peak)
    assert peaks[0] == peaks[1] > 0


def interrupt_when_logged(monkeypatch, needle: str, signum=signal.SIGINT):
    """Send `signum` to this process right after the log line containing `needle`."""
    real = runner.setup_logging

    def setup(*args, **kwargs):
        logger = real(*args, **kwargs)
        info = type(logger).info.__get__(logger)

        def log(msg, *a, **k):
            info(msg, *a, **k)
            if needle in str(msg):
                os.kill(os.getpid(), signum)
        monkeypatch.setattr(logger, "info", log, raising=False)
        return logger

    monkeypatch.setattr(runner, "setup_logging", setup)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_right_after_best_acc_resumes_without_repeating_an_epoch(tmp_path, capsys, monkeypatch, signum):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(argv(whole, "--epochs", "3")) == 0
    with monkeypatch.context() as m:
        interrupt_when_logged(m, "Best acc at epoch 2", signum)
        line = one_line_error(capsys, 130, *argv(part, "--epochs", "3"))
    assert signal.Signals(signum).name in line and "--resume" in line and "epoch 3" in line, line
    assert load_resume(part)["epoch"] == 2
    assert main(argv(part, "--epochs", "3", "--resume", str(part / RESUME))) == 0
    a, b = load_resume(whole), load_resume(part)
    assert len(b["history"]["val_acc"]) == 3 and a["history"]["lr"] == b["history"]["lr"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"] == 3


def test_sigterm_mid_epoch_leaves_a_resumable_checkpoint(tmp_path, capsys, monkeypatch):
    with monkeypatch.context() as m:
        interrupt_when_logged(m, "Epoch 2...", signal.SIGTERM)
        line = one_line_error(capsys, 130, *argv(tmp_path))
    assert "SIGTERM in trial 1, epoch 2" in line
    assert load_resume(tmp_path)["epoch"] == 1


# ----------------------------------------------------------------------------- resume with other flags

@pytest.mark.parametrize("change", [["--lr", "0.1"], ["--weight-decay", "0.5"], ["--scheduler", "100"],
                                    ["--scheduler", "0"], ["--batch-size", "7"], ["--seed", "5"],
                                    ["--delay-ls", "9"]], ids=lambda c: c[0] + "=" + c[1])
def test_resume_refuses_a_changed_flag(tmp_path, capsys, change):
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    before = (tmp_path / RESUME).read_bytes()
    line = one_line_error(capsys, 2, *argv(tmp_path, *change, "--resume", str(tmp_path / RESUME)))
    assert f"{change[0]} " in line and "--override" in line, line
    assert (tmp_path / RESUME).read_bytes() == before


def test_resume_lists_every_difference_in_one_line(tmp_path, capsys):
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    line = one_line_error(capsys, 2, *argv(tmp_path, "--lr", "0.1", "--seed", "5", "--resume",
                                          str(tmp_path / RESUME)))
    assert "--lr 0.001 -> 0.1" in line and "--seed 1234 -> 5" in line


def test_override_applies_the_change_and_records_it(tmp_path, capsys):
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    assert main(argv(tmp_path, "--lr", "0.02", "--override", "lr", "--resume", str(tmp_path / RESUME))) == 0
    state = load_resume(tmp_path)
    assert state["flags"]["lr"] == 0.02
    assert state["overrides"] == [{"flag": "--lr", "old": 0.001, "new": 0.02, "trial": 1, "from_epoch": 2}]
    # epoch 2 ran at the new schedule's rate for epoch 2: 0.02 * (1 + cos(pi / 3)) / 2
    assert state["history"]["lr"][1] == pytest.approx(0.02 * 0.75)
    assert json.loads((tmp_path / "summary.json").read_text())["overrides"][0]["flag"] == "--lr"


@pytest.mark.parametrize("scheduler,expected", [("6", 0.001 * (1 + np.cos(np.pi / 6)) / 2), ("0", 0.001)])
def test_override_scheduler_takes_the_new_schedule_at_this_epoch(tmp_path, scheduler, expected):
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    assert main(argv(tmp_path, "--scheduler", scheduler, "--override", "scheduler", "--resume",
                     str(tmp_path / RESUME))) == 0
    state = load_resume(tmp_path)
    assert state["history"]["lr"][0] == pytest.approx(0.001)  # epoch 1 ran on the old schedule
    assert state["history"]["lr"][1] == pytest.approx(expected)
    assert state["overrides"][0]["flag"] == "--scheduler"


def test_override_of_a_structural_flag_is_refused(tmp_path, capsys):
    line = one_line_error(capsys, 2, *argv(tmp_path, "--override", "optimizer", "--resume", str(tmp_path / "x")))
    assert "--override optimizer" in line


def test_more_epochs_on_resume_continue_the_run(tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    assert main(argv(whole, "--epochs", "3")) == 0
    assert main(argv(part, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(argv(part, "--epochs", "1", "--resume", str(part / RESUME))) == 0  # a finished run says so
    assert "Nothing left to train" in capsys.readouterr().err
    assert main(argv(part, "--epochs", "3", "--resume", str(part / RESUME))) == 0
    a, b = load_resume(whole), load_resume(part)
    assert all(torch.equal(v, b["model"][k]) for k, v in a["model"].items())
    line = one_line_error(capsys, 2, *argv(part, "--epochs", "2", "--resume", str(part / RESUME)))
    assert "--epochs 2" in line and "total" in line


# ----------------------------------------------------------------------------- save path

def test_new_run_into_a_used_save_path_is_refused(tmp_path, capsys):
    assert main(argv(tmp_path, "--epochs", "1", "--trials", "2")) == 0
    before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
    line = one_line_error(capsys, 2, *argv(tmp_path, "--epochs", "1"))
    assert f"--resume {tmp_path / RESUME}" in line and "another --save-path" in line
    assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before


def test_every_output_file_gets_the_same_permissions(tmp_path):
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    modes = {f: stat.S_IMODE(os.stat(tmp_path / f).st_mode) for f in os.listdir(tmp_path)}
    assert ckpt.best_name(1) in modes and RESUME in modes
    assert len(set(modes.values())) == 1, modes


# ----------------------------------------------------------------------------- bad checkpoints

def corrupt_files(tmp_path):
    """name -> path of a file --resume must refuse, each with the word its message must contain."""
    good = tmp_path / "good" / RESUME
    data = good.read_bytes()
    files = {}

    def put(name, content):
        path = tmp_path / name
        path.write_bytes(content)
        files[name] = path

    put("truncated", data[: len(data) // 2])
    put("empty", b"")
    put("random", os.urandom(4096))
    put("text", b"hello, I am not a checkpoint\n")
    # four bytes flipped inside the weights: the zip stays readable, only the checksum notices
    payload = bytearray(data)
    weights = load_resume(tmp_path / "good")["model"]["linear1.weight"]
    probe = weights.flatten()[100:104].numpy().tobytes()
    at = bytes(payload).find(probe)
    assert at > 0
    for i in range(4):
        payload[at + i] ^= 0xFF
    put("flipped", bytes(payload))
    torch.save(torch.load(tmp_path / "good" / ckpt.best_name(1), weights_only=True), tmp_path / "best")
    files["best"] = tmp_path / "best"
    torch.save({"w": torch.ones(2)}, tmp_path / "state_dict")
    files["state_dict"] = tmp_path / "state_dict"
    torch.save([1, 2, 3], tmp_path / "list")
    files["list"] = tmp_path / "list"
    return files


class Payload:
    """A pickle that runs code when loaded (writes a marker file)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_corrupt_truncated_foreign_files_are_one_line_naming_file(tmp_path, capsys):
    assert main(argv(tmp_path / "good", "--epochs", "1")) == 0
    for name, path in corrupt_files(tmp_path).items():
        line = one_line_error(capsys, 2, *argv(tmp_path / f"run_{name}", "--resume", str(path)))
        assert str(path) in line and "--resume" in line, (name, line)
        if name == "flipped":
            assert "checksum" in line, line


def test_pickled_payload_is_refused_never_run(tmp_path, capsys):
    marker = tmp_path / "payload_ran"
    evil = tmp_path / "evil.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": Payload(marker)}, evil)
    for flag in ("--resume", "--pretrained-model"):
        line = one_line_error(capsys, 2, *argv(tmp_path / f"run{flag}", flag, str(evil)))
        assert flag in line and str(evil) in line and "never unpickled" in line, line
    assert not marker.exists()


def test_checkpoint_loads_with_weights_only(tmp_path):
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    wrapped = torch.load(tmp_path / RESUME, weights_only=True)
    assert wrapped["format"] == ckpt.FORMAT and len(wrapped["sha256"]) == 64
    torch.load(tmp_path / ckpt.best_name(1), weights_only=True)


def test_pretrained_model_loads_a_best_model_file(tmp_path):
    assert main(argv(tmp_path / "a", "--epochs", "1")) == 0
    best = torch.load(tmp_path / "a" / ckpt.best_name(1), weights_only=True)["state_dict"]
    args = parse_config(argv(tmp_path / "b", "--pretrained-model", str(tmp_path / "a" / ckpt.best_name(1))))
    model, _, _ = runner.setup_trial(args, torch.device("cpu"))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in best.items())


def test_resume_into_another_optimizer_is_one_line(tmp_path, capsys):
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    line = one_line_error(capsys, 2, *argv(tmp_path, "--optimizer", "SGD", "--resume", str(tmp_path / RESUME)))
    assert "--optimizer 'Adam' -> 'SGD'" in line


# ----------------------------------------------------------------------------- trials across resumes

def test_summary_keeps_every_trial_across_resumes(tmp_path, capsys, monkeypatch):
    with monkeypatch.context() as m:
        interrupt_when_logged(m, "In trial 2 of 2")
        one_line_error(capsys, 130, *argv(tmp_path, "--epochs", "1", "--trials", "2"))
    assert load_resume(tmp_path)["trial"] == 2
    line = one_line_error(capsys, 2, *argv(tmp_path, "--epochs", "1", "--trials", "1", "--resume",
                                          str(tmp_path / RESUME)))
    assert "--trials 1" in line
    assert main(argv(tmp_path, "--epochs", "1", "--trials", "2", "--resume", str(tmp_path / RESUME))) == 0
    trials = json.loads((tmp_path / "summary.json").read_text())["trials"]
    assert [t["trial"] for t in trials] == [1, 2]


# ----------------------------------------------------------------------------- bad input

def test_bad_save_paths_are_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for path, needle in ((afile, "is a file"), (afile / "below", "which is a file"), ("", "empty")):
        line = one_line_error(capsys, 2, *argv(path))
        assert "--save-path" in line and needle in line, line


def test_read_only_save_path_is_one_line(tmp_path, capsys, monkeypatch):
    """Root ignores chmod, so the read-only folder is simulated where the check asks the system."""
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).startswith(str(tmp_path)) else real(p, mode))
    line = one_line_error(capsys, 2, *argv(tmp_path / "run"))
    assert "--save-path" in line and "not writable" in line


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    import errno
    assert main(argv(tmp_path, "--epochs", "1")) == 0
    before = (tmp_path / RESUME).read_bytes()
    real_save = torch.save

    def full(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("format") == ckpt.FORMAT:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full)
    line = one_line_error(capsys, 2, *argv(tmp_path, "--resume", str(tmp_path / RESUME)))
    assert "No space left on device" in line and RESUME in line and "previous file is kept" in line
    assert (tmp_path / RESUME).read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]


BAD_FLAGS = [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--weight-decay", "nan"], "--weight-decay"),
    (["--weight-decay", "-1"], "--weight-decay"), (["--device", "xla"], "--device"),
    (["--seed", "99999999999999999999"], "--seed"), (["--seed", "-1"], "--seed"),
    (["--delay-ls", "0"], "--delay-ls 0"), (["--dist-timeout", "0"], "--dist-timeout"),
    (["--override", "lr"], "--override"),
]


@pytest.mark.parametrize("extra,needle", BAD_FLAGS, ids=[" ".join(b[0]) for b in BAD_FLAGS])
def test_bad_flags_are_one_line_naming_the_flag(tmp_path, capsys, extra, needle):
    line = one_line_error_parse(capsys, argv(tmp_path, *extra))
    assert needle in line, line
    assert not (tmp_path / "log.log").exists()


def one_line_error_parse(capsys, args) -> str:
    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_garbage_pretrained_model_is_one_line(tmp_path, capsys):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(1000))
    line = one_line_error(capsys, 2, *argv(tmp_path / "run", "--pretrained-model", str(garbage)))
    assert "--pretrained-model" in line and str(garbage) in line


def test_delay_ls_zero_is_fine_for_bptt(tmp_path):
    parse_config(argv(tmp_path, "--arch", "digits_bptt", "--training-mode", "bptt", "--delay-ls", "0"))


def test_delay_ls_beyond_the_sequence_puts_the_loss_on_every_step(seed):
    """The original's semantics (documented): a sequence shorter than --delay-ls gets a learning
    signal on every step, so any delay >= T trains exactly like delay = T."""
    x, y = (torch.rand(6, 4, 64) < 0.3).float(), torch.randint(0, 10, (4,))
    results = []
    for delay in (6, 25, 10 ** 6):
        torch.manual_seed(seed)
        args = parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--delay-ls", str(delay)])
        model, optimizer, _ = runner.setup_trial(args, torch.device("cpu"))
        Trainer(model, optimizer, make_loss("CE", 10), "stllr", "online", delay).train_batch(x, y)
        results.append(model.state_dict())
    torch.manual_seed(seed)
    args = parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--delay-ls", "5"])
    model, optimizer, _ = runner.setup_trial(args, torch.device("cpu"))
    Trainer(model, optimizer, make_loss("CE", 10), "stllr", "online", 5).train_batch(x, y)
    for other in results[1:]:
        assert all(torch.equal(v, other[k]) for k, v in results[0].items())
    assert not all(torch.equal(v, model.state_dict()[k]) for k, v in results[0].items())


# ----------------------------------------------------------------------------- distributed timeout

def test_collective_timeout_flag_defaults_to_minutes():
    args = parse_config(["--dataset", "Digits", "--arch", "digits_stllr"])
    assert distributed.collective_timeout(args).total_seconds() == 600
    args = parse_config(["--dataset", "Digits", "--arch", "digits_stllr", "--dist-timeout", "0.5"])
    assert distributed.collective_timeout(args).total_seconds() == 30


HUNG_RANK_TIMEOUT_MINUTES = 0.05  # 3 s: past any skew of the two ranks' identical, warmed-up work


def _hung_rank_worker(rank: int, port: int, root: str, ready) -> None:
    """One process of `torchrun --nproc_per_node=2 -m training` on a slice of Digits; rank 1 hangs
    (alive, silent) in its second batch until the test says rank 0's process has ended, then goes
    on into its next collective. stderr goes to root/stderr{rank}."""
    import importlib
    import time

    fd = os.open(os.path.join(root, f"stderr{rank}"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 2)
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    gen = torch.Generator().manual_seed(0)
    data = {train: TensorDataset((torch.rand(n, 20, 64, generator=gen) < 0.3).float(),
                                 torch.randint(0, 10, (n,), generator=gen)) for train, n in ((True, 32), (False, 16))}
    runner.build_dataset = distributed.build_dataset = lambda args, train: data[train]
    importlib.import_module("torch._dynamo")  # DDP's constructor imports it: seconds on a loaded machine
    if rank == 1:
        train_batch, calls = Trainer.train_batch, [0]

        def hang_in_second_batch(self, *args, **kwargs):
            calls[0] += 1
            if calls[0] == 2:
                deadline = time.monotonic() + 300
                while not os.path.exists(os.path.join(root, "rank0_ended")) and time.monotonic() < deadline:
                    time.sleep(0.05)
            return train_batch(self, *args, **kwargs)

        Trainer.train_batch = hang_in_second_batch
    ready.wait()  # both warmed up: the timeout measures the hang, not the imports
    code = main(["--dataset", "Digits", "--arch", "digits_stllr", "--epochs", "1", "--batch-size", "16", "--cpu",
                 "--workers", "0", "--print-freq", "100", "--dist-timeout", str(HUNG_RANK_TIMEOUT_MINUTES),
                 "--save-path", os.path.join(root, "run")])
    raise AssertionError(f"rank {rank}: main returned {code}; a failed collective must end the process")


@pytest.mark.slow
def test_hung_rank_ends_the_job_with_one_line_and_status_2(tmp_path):
    """Rank 1 hangs: rank 0's collective times out and rank 0 exits with status 2 and one line; then
    rank 1, finding rank 0 gone, exits likewise. Never a traceback, never SIGABRT at exit (torch's
    Gloo threads may still hold the failed collective when the process ends)."""
    import socket

    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ready = mp.get_context("spawn").Barrier(2)
    job = mp.start_processes(_hung_rank_worker, args=(port, str(tmp_path), ready), nprocs=2, join=False,
                             start_method="spawn")
    rank0, rank1 = job.processes
    try:
        rank0.join(180)
        (tmp_path / "rank0_ended").touch()
        rank1.join(180)
    finally:
        for process in job.processes:
            if process.is_alive():
                process.kill()
    errors = {}
    for rank, process in enumerate(job.processes):
        err = (tmp_path / f"stderr{rank}").read_text()
        raised = job.error_files[rank]  # a Python exception in the worker (torch.multiprocessing writes it)
        raised = open(raised).read() if os.path.exists(raised) else ""
        assert process.exitcode == 2, (rank, process.exitcode, raised, err[-3000:])
        assert "Traceback" not in err and "terminate called" not in err, err[-3000:]
        lines = [line.split("\r")[-1] for line in err.split("\n") if "python -m training: error" in line]
        assert len(lines) == 1, lines
        errors[rank] = lines[0]
    assert errors[0].startswith("python -m training: error: rank 0: a collective waited longer than "
                                "--dist-timeout 0:00:03"), errors[0]
    assert errors[1].startswith("python -m training: error: rank 1: another process of the job stopped"), errors[1]
    assert (tmp_path / "run" / RESUME).exists()  # "the last checkpoint is kept"


def test_rank_that_never_joins_is_one_line(tmp_path, capsys, monkeypatch):
    """Rank 1 never starts: rank 0 waits --dist-timeout at the rendezvous, then one line, status 2."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    line = one_line_error(capsys, 2, *argv(tmp_path / "run", "--dist-timeout", "0.02"))
    assert line.startswith("python -m training: error: rank 0: the 2 processes did not all join within "
                           "--dist-timeout 0:00:01.200000"), line
    assert not distributed.active()


def _used_save_path_worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    code = main(["--dataset", "Digits", "--arch", "digits_stllr", "--epochs", "1", "--batch-size", "64", "--cpu",
                 "--workers", "0", "--dist-timeout", "1", "--save-path", os.path.join(root, "used")])
    with open(os.path.join(root, f"rank{rank}"), "w") as f:
        f.write(str(code))


@pytest.mark.slow
def test_distributed_refusal_stops_every_rank(tmp_path):
    """Rank 0 refuses a used --save-path; the other rank must stop too, not wait in a collective."""
    import socket
    import time

    import torch.multiprocessing as mp
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "log.log").write_text("a previous run\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    mp.spawn(_used_save_path_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    assert time.monotonic() - start < 50  # far less than the 1-minute collective timeout
    assert (tmp_path / "rank0").read_text() == "2" and (tmp_path / "rank1").read_text() == "2"
    assert (tmp_path / "used" / "log.log").read_text() == "a previous run\n"
