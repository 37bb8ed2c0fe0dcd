"""Trials and epochs of one run: builds the model and optimizer (in one place each), trains,
evaluates, keeps the best checkpoint per trial, writes curves, resumes, survives Ctrl-C."""
from __future__ import annotations

import dataclasses
import json
import os
import resource
import time
from typing import Callable, Optional

import torch

import stllr_kernels
from stllr_kernels.backends import BackendUnavailable, set_backend

from . import checkpoint as ckpt
from .config import RunConfig, resolve_device
from .data import DATASETS, build_dataset, make_loader
from .engine import Trainer, make_loss, run_epoch
from .errors import BackendError, CheckpointError, RunInterrupted
from .models import build_model
from .records import CURVES, setup_logging, write_history


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
        state = torch.load(config.pretrained_model, map_location=device, weights_only=False)
        model.load_state_dict(state.get("state_dict", state), strict=False)
    optimizer = make_optimizer(config, [p for p in model.parameters() if p.requires_grad])
    return model, optimizer, make_scheduler(config, optimizer)


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
    """
    config.validate()
    use_backend(config.backend)
    reduce_result = reduce_result or (lambda result: result)
    started = time.perf_counter()
    device = resolve_device(config)
    log = setup_logging(config.save_path, to_console=is_main).info if is_main else (lambda *_: None)
    log(str(config))
    log(f"=> Everything will be saved to {config.save_path}")
    log(f"device {device}, backend {stllr_kernels.backend_info()['devices'].get(device.type, {}).get('selected')}")
    workers = config.workers if config.workers is not None else (0 if config.dataset == "Digits" else 4)
    train_set, test_set = build_dataset(config, True), build_dataset(config, False)
    generator = torch.Generator()
    sampler = train_sampler_fn(train_set) if train_sampler_fn else None
    train_loader = make_loader(train_set, config.batch_size, True, workers, generator, sampler)
    test_loader = make_loader(test_set, config.val_batch_size, False, workers,
                              sampler=test_sampler_fn(test_set) if test_sampler_fn else None)
    loss_fn = make_loss(config.loss, DATASETS[config.dataset].num_classes)

    resume = ckpt.load(config.resume, device) if config.resume else None
    if resume is not None and resume["arch"] != config.arch:
        raise CheckpointError(f"--resume: the checkpoint is of --arch {resume['arch']}, not {config.arch}")
    first_trial = resume["trial"] if resume else 1
    summary = {"arch": config.arch, "dataset": config.dataset, "training_mode": config.training_mode,
               "step_mode": config.step_mode, "device": str(device), "trials": []}
    ckpt.seed_everything(config.seed)
    for trial in range(first_trial, config.trials + 1):
        ckpt.seed_everything(config.seed + trial - 1)
        model, optimizer, scheduler = setup_trial(config, device)
        if trial == 1 and is_main:
            log(f"Total Parameters: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M")
            log(f"=== Model ===\n{model}")
        history = {name: [] for name in (*CURVES, "val_acc5", "lr", "train_seconds", "saved_peak_mb")}
        best, start_epoch = 0.0, 1
        if resume is not None and resume["trial"] == trial:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
            if scheduler is not None and resume["scheduler"] is not None:
                scheduler.load_state_dict(resume["scheduler"])
            history, best, start_epoch = resume["history"], resume["best_acc1"], resume["epoch"] + 1
            ckpt.set_rng_state(resume["rng"])
            log(f"Resumed trial {trial} after epoch {resume['epoch']} from {config.resume}"
                + (" (interrupted mid-epoch: that epoch restarts from the saved weights)" if resume.get("partial") else ""))
        if config.trials > 1:
            log(f"\nIn trial {trial} of {config.trials}")
        train_model, sync = wrap_model(model) if wrap_model else (model, None)
        trainer = Trainer(train_model, optimizer, loss_fn, config.training_mode, config.step_mode, config.delay_ls)
        if sync is not None:
            trainer.sync_context = sync
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def state(epoch: int, partial: bool = False) -> dict:
            return {"arch": config.arch, "trial": trial, "epoch": epoch, "partial": partial,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler else None,
                    "rng": ckpt.rng_state(), "best_acc1": best, "history": history,
                    "args": dataclasses.asdict(config)}

        epoch = start_epoch - 1
        try:
            for epoch in range(start_epoch, config.epochs + 1):
                log(f"\t Epoch {epoch}...")
                generator.manual_seed(epoch_generator_seed(config.seed, trial, epoch))
                if sampler is not None and hasattr(sampler, "set_epoch"):
                    sampler.set_epoch(epoch)
                lr = optimizer.param_groups[0]["lr"]
                tr = run_epoch(train_loader, device, loss_fn, trainer=trainer, desc=f"trial {trial} epoch {epoch}",
                               print_freq=config.print_freq, log=log, show_progress=is_main)
                tr = reduce_result(tr)
                log(f" @Training * Acc@1 {tr.acc1:.3f} Acc@5 {tr.acc5:.3f} ({tr.seconds:.1f} s, "
                    f"peak saved for backward {tr.saved_peak_mb:.1f} MB)")
                te = run_epoch(test_loader, device, loss_fn, model=model, step_mode=config.step_mode,
                               desc="test", show_progress=is_main)
                te = reduce_result(te)
                log(f" @Testing * Acc@1 {te.acc1:.3f} Acc@5 {te.acc5:.3f}")
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
                    ckpt.save_atomic(state(epoch), os.path.join(config.save_path, ckpt.RESUME_NAME))
        except KeyboardInterrupt:
            if is_main:
                path = os.path.join(config.save_path, ckpt.RESUME_NAME)
                ckpt.save_atomic(state(epoch - 1, partial=True), path)
                log(f"Interrupted in trial {trial}, epoch {epoch}; checkpoint written to {path} "
                    f"(continue with --resume {path})")
            raise RunInterrupted(f"interrupted in trial {trial}, epoch {epoch}; continue with "
                                 f"--resume {os.path.join(config.save_path, ckpt.RESUME_NAME)}") from None
        summary["trials"].append({
            "trial": trial, "best_acc1": best, "final_acc1": history["val_acc"][-1] if history["val_acc"] else None,
            "seconds_per_epoch": (sum(history["train_seconds"]) / len(history["train_seconds"])
                                  if history["train_seconds"] else None),
            "peak_memory_mb": peak_memory_mb(device),
            "saved_for_backward_peak_mb": max(history["saved_peak_mb"], default=0.0)})
        resume = None
    summary["run_seconds"] = time.perf_counter() - started
    summary["memory_kind"] = "cuda max_memory_allocated" if device.type == "cuda" else "process peak RSS"
    if is_main:
        with open(os.path.join(config.save_path, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
        log(f"Best test accuracy per trial: {[t['best_acc1'] for t in summary['trials']]}")
    return summary
