"""Trials and epochs of one run: builds the model and optimizer (in one place each), trains,
evaluates, keeps the best checkpoint per trial, writes curves, resumes exactly, stops cleanly on
Ctrl-C/SIGTERM and on divergence."""
from __future__ import annotations

import json
import logging
import os
import resource
import time
from typing import Callable, Optional

import torch

import stllr_kernels
from stllr_kernels.backends import BackendUnavailable, set_backend

from . import checkpoint as ckpt
from . import run_dir, run_flags
from .config import RunConfig, resolve_device
from .data import DATASETS, build_dataset, make_loader
from .engine import Trainer, make_loss, resolve_step_mode, run_epoch
from .errors import BackendError, CheckpointError, FlagError, RunDiverged, RunInterrupted
from .guard import FiniteGuard, NonFinite
from .interrupts import StopRequested, stop_on_signals
from .models import build_model
from .precision import Precision
from .records import CURVES, LOGGER_NAME, setup_logging, write_history


def make_optimizer(config: RunConfig, params) -> torch.optim.Optimizer:
    """The original's optimizers; RMSProp (which the original misspelled and so never built) works."""
    lr, wd = config.lr, config.weight_decay
    if config.optimizer == "SGD":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if config.optimizer == "NAG":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=wd)
    if config.optimizer == "Adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if config.optimizer == "RMSProp":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if config.optimizer == "RProp":
        return torch.optim.Rprop(params, lr=lr)
    raise ValueError(f"optimizer: unknown {config.optimizer!r}")


def make_scheduler(config: RunConfig, optimizer):
    if config.scheduler > 0:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.scheduler)
    return None


def use_backend(name: str) -> None:
    """Make --backend the kernel backend of this process (BackendError if it cannot run here)."""
    try:
        set_backend(name)
    except BackendUnavailable as exc:
        raise BackendError(f"--backend {name}: {exc}") from None


def setup_trial(config: RunConfig, device):
    """The one place that creates the model, optimizer and scheduler of a trial."""
    model = build_model(config).to(device)
    if config.pretrained_model:
        model.load_state_dict(ckpt.load_pretrained(config.pretrained_model, device), strict=False)
    if config.compile:
        compile_model(model, config.compile)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    return model, optimizer, make_scheduler(config, optimizer)


def compile_model(model: torch.nn.Module, backend: str) -> None:
    """--compile: the model's forward, so both model.step and model.sequence, compiled in place
    (module.compile), so its state_dict keeps its plain keys. One graph per call (fullgraph), except
    under DFA/sDFA, whose feedback hooks run between graphs (training.models.common)."""
    torch._dynamo.reset()  # a trial's new model: the last one's graphs would count towards the recompile limit
    model.compile(backend=backend, fullgraph=not model.feedback.active)


def epoch_generator_seed(seed: int, trial: int, epoch: int) -> int:
    """Shuffling order of one epoch: a function of (seed, trial, epoch) alone, so resumes match."""
    return (seed * 1_000_003 + trial * 10_007 + epoch) % (2 ** 63)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run(config: RunConfig, is_main: bool = True, wrap_model: Optional[Callable] = None,
        train_sampler_fn: Optional[Callable] = None, test_sampler_fn: Optional[Callable] = None,
        reduce_result: Optional[Callable] = None) -> dict:
    """Run every trial of `config`; returns a summary (also written to save_path/summary.json).

    is_main / wrap_model / train_sampler_fn are the seams for a distributed launcher: only the
    main process writes files; wrap_model(model) -> (model, sync_context) wraps for DDP;
    test_sampler_fn shards the test set; reduce_result(EpochResult) sums metrics over processes.

    The checkpoint on disk always holds the state at the start of an epoch (written when a trial
    starts and as the last act of every epoch), so a SIGINT/SIGTERM, a divergence or a crash needs
    no further write: `--resume` repeats exactly the unfinished epoch.
    """
    with stop_on_signals() as stop:
        summary = _run(config, stop, is_main, wrap_model, train_sampler_fn, test_sampler_fn, reduce_result)
        if stop and is_main:  # came after the last batch: nothing was lost, but say so
            logging.getLogger(LOGGER_NAME).info(f"{stop.name} received after the last epoch: the run is complete")
    return summary


def _run(config, stop, is_main, wrap_model, train_sampler_fn, test_sampler_fn, reduce_result) -> dict:
    config.validate()
    use_backend(config.backend)
    reduce_result = reduce_result or (lambda result: result)
    started = time.perf_counter()
    device = resolve_device(config)
    resume = ckpt.load(config.resume, device) if config.resume else None
    overridden = []
    if resume is not None:
        if resume["arch"] != config.arch:
            raise CheckpointError(f"--resume: the checkpoint is of --arch {resume['arch']}, not {config.arch}")
        overridden = run_flags.compare(resume["flags"], config, config.resume)
        if config.trials < resume["trial"]:
            raise FlagError(f"--trials {config.trials}: the checkpoint is in trial {resume['trial']} "
                            f"(--trials is the total number of trials)")
        if config.epochs < resume["epoch"]:
            raise FlagError(f"--epochs {config.epochs}: the checkpoint has {resume['epoch']} epochs of trial "
                            f"{resume['trial']} done (--epochs is the total number of epochs)")
    elif is_main:
        run_dir.refuse_previous_run(config.save_path)
    log = setup_logging(config.save_path, to_console=is_main).info if is_main else (lambda *_: None)
    log(str(config))
    log(f"=> Everything will be saved to {config.save_path}")
    log(f"device {device}, backend {stllr_kernels.backend_info()['devices'].get(device.type, {}).get('selected')}")
    if resume is not None and (resume["trial"], resume["epoch"]) == (config.trials, config.epochs):
        log(f"Nothing left to train: {config.resume} holds the end of the run (trial {config.trials}, epoch "
            f"{config.epochs}); --epochs and --trials are totals: raise one to go on")
    workers = config.workers if config.workers is not None else (0 if config.dataset == "Digits" else 4)
    train_set, test_set = build_dataset(config, True), build_dataset(config, False)
    generator = torch.Generator()
    sampler = train_sampler_fn(train_set) if train_sampler_fn else None
    train_loader = make_loader(train_set, config.batch_size, True, workers, generator, sampler)
    test_loader = make_loader(test_set, config.val_batch_size, False, workers,
                              sampler=test_sampler_fn(test_set) if test_sampler_fn else None)
    loss_fn = make_loss(config.loss, DATASETS[config.dataset].num_classes)
    precision = Precision(config.precision, device.type)
    resume_path = os.path.join(config.save_path, ckpt.RESUME_NAME)

    first_trial = resume["trial"] if resume else 1
    summary = {"arch": config.arch, "dataset": config.dataset, "training_mode": config.training_mode,
               "step_mode": resolve_step_mode(config.training_mode, config.step_mode),
               "chunk_size": config.chunk_size, "device": str(device),
               "trials": list(resume["finished_trials"]) if resume else []}
    summary["flags"] = run_flags.values(config)  # what `python -m training.report` reads (feedback, delay-ls)
    overrides = list(resume["overrides"]) if resume else []
    for trial in range(first_trial, config.trials + 1):
        ckpt.seed_everything(config.seed + trial - 1)
        model, optimizer, scheduler = setup_trial(config, device)
        scaler = precision.make_scaler()
        if trial == 1 and is_main:
            log(f"Total Parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M")
            log(f"=== Model ===\n{model}")
        history = {name: [] for name in (*CURVES, "val_acc5", "lr", "train_seconds", "saved_peak_mb")}
        best, start_epoch = 0.0, 1
        resumed = resume is not None and resume["trial"] == trial
        if resumed:
            try:
                model.load_state_dict(resume["model"])
                optimizer.load_state_dict(resume["optimizer"])
                if scheduler is not None and resume["scheduler"] is not None:
                    scheduler.load_state_dict(resume["scheduler"])
                if scaler is not None and resume.get("scaler"):  # absent: the run was not 16-mixed before
                    scaler.load_state_dict(resume["scaler"])
            except (RuntimeError, KeyError, ValueError) as exc:
                raise CheckpointError(f"--resume: {config.resume} does not fit this model or optimizer "
                                      f"({str(exc).strip().splitlines()[0][:160]})") from None
            rebuilt, new_scheduler = run_flags.apply_to_optimizer(overridden, config, optimizer, make_scheduler,
                                                                  resume["epoch"])
            if rebuilt:
                scheduler = new_scheduler
            history, best, start_epoch = resume["history"], resume["best_acc1"], resume["epoch"] + 1
            ckpt.set_rng_state(resume["rng"])
            for dest in overridden:
                overrides.append({"flag": run_flags.flag_name(dest), "old": resume["flags"].get(dest),
                                  "new": run_flags.values(config)[dest], "trial": trial,
                                  "from_epoch": start_epoch})
                log(f"--override: {run_flags.flag_name(dest)} {resume['flags'].get(dest)!r} -> "
                    f"{run_flags.values(config)[dest]!r} from trial {trial}, epoch {start_epoch}")
            log(f"Resumed trial {trial} after epoch {resume['epoch']} from {config.resume}")
        if config.trials > 1:
            log(f"\nIn trial {trial} of {config.trials}")
        train_model, sync = wrap_model(model) if wrap_model else (model, None)
        trainer = Trainer(train_model, optimizer, loss_fn, config.training_mode, config.step_mode, config.delay_ls,
                          chunk_size=config.chunk_size, autocast=precision.autocast, scaler=scaler)
        if sync is not None:
            trainer.sync_context = sync
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def state(epoch: int) -> dict:
            """Plain types and tensors only (the checkpoint loads with weights_only=True)."""
            return {"arch": config.arch, "trial": trial, "epoch": epoch,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "scaler": scaler.state_dict() if scaler else None,
                    "rng": ckpt.rng_state(), "best_acc1": best, "history": history,
                    "flags": run_flags.values(config), "overrides": overrides,
                    "finished_trials": list(summary["trials"])}

        if is_main and not resumed:  # the state before epoch 1: what an interrupt in epoch 1 resumes from
            ckpt.save_checkpoint(state(0), resume_path)
        epoch = start_epoch
        try:
            for epoch in range(start_epoch, config.epochs + 1):
                log(f"\t Epoch {epoch}...")
                generator.manual_seed(epoch_generator_seed(config.seed, trial, epoch))
                if sampler is not None and hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                lr = optimizer.param_groups[0]["lr"]
                tr = run_epoch(train_loader, device, loss_fn, trainer=trainer, desc=f"trial {trial} epoch {epoch}",
                               print_freq=config.print_freq, log=log, show_progress=is_main, stop=stop,
                               guard=FiniteGuard(model, device))
                tr = reduce_result(tr)
                log(f" @Training * Acc@1 {tr.acc1:.3f} Acc@5 {tr.acc5:.3f} Loss {tr.loss:.4e} ({tr.seconds:.1f} s, "
                    f"peak saved for backward {tr.saved_peak_mb:.1f} MB)")
                with precision.autocast():
                    te = run_epoch(test_loader, device, loss_fn, model=model, step_mode=trainer.step_mode,
                                   desc="test", show_progress=is_main, stop=stop, chunk_size=config.chunk_size)
                te = reduce_result(te)
                log(f" @Testing * Acc@1 {te.acc1:.3f} Acc@5 {te.acc5:.3f} Loss {te.loss:.4e}")
                # The end of the epoch: no interrupt is honoured inside it, and the checkpoint is
                # written last, so a crash within it leaves the previous epoch's checkpoint.
                for name, value in (("train_acc", tr.acc1), ("train_loss", tr.loss), ("val_acc", te.acc1),
                                    ("val_loss", te.loss), ("val_acc5", te.acc5), ("lr", lr),
                                    ("train_seconds", tr.seconds), ("saved_peak_mb", tr.saved_peak_mb)):
                    history[name].append(value)
                if te.acc1 > best:
                    best = te.acc1
                    if is_main:
                        ckpt.save_atomic({"epoch": epoch, "state_dict": model.state_dict(), "best_acc1": best,
                                          "optimizer": optimizer.state_dict()},
                                         os.path.join(config.save_path, ckpt.best_name(trial)))
                log(f"Best acc at epoch {epoch}: {best}")
                if scheduler is not None:
                    scheduler.step()
                if is_main:
                    write_history(config.save_path, trial, history)
                    ckpt.save_checkpoint(state(epoch), resume_path)
        except (StopRequested, RuntimeError) as exc:
            # RuntimeError after a signal: a distributed peer stopped first and broke a collective
            if isinstance(exc, RuntimeError) and not stop:
                raise
            raise RunInterrupted(
                f"{stop.name} in trial {trial}, epoch {epoch}: stopped; {resume_path} holds the state after epoch "
                f"{epoch - 1} (continue with --resume {resume_path}; epoch {epoch} restarts)") from None
        except NonFinite as exc:
            raise RunDiverged(
                f"trial {trial}, epoch {epoch}, batch {exc.batch}/{len(train_loader)}: {exc.what}; stopped. "
                f"{resume_path} keeps the last good state (after epoch {epoch - 1}); try a lower --lr "
                f"(now {config.lr:g}), or look for NaN or inf in the data") from None
        summary["trials"].append({
            "trial": trial, "best_acc1": best, "final_acc1": history["val_acc"][-1] if history["val_acc"] else None,
            "seconds_per_epoch": (sum(history["train_seconds"]) / len(history["train_seconds"])
                                  if history["train_seconds"] else None),
            "peak_memory_mb": peak_memory_mb(device),
            "saved_for_backward_peak_mb": max(history["saved_peak_mb"], default=0.0)})
        resume = None
    summary["run_seconds"] = time.perf_counter() - started
    summary["memory_kind"] = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    summary["overrides"] = overrides
    if is_main:
        ckpt.write_atomic(os.path.join(config.save_path, "summary.json"),
                          lambda f: f.write(json.dumps(summary, indent=1).encode()))
        log(f"Best test accuracy per trial: {[t['best_acc1'] for t in summary['trials']]}")
    return summary
