"""The flags a checkpoint records, and what `--resume` accepts when they change.

A resumed run must be the run that was checkpointed: a flag that changes what is trained (the
learning rate, the schedule, the batch, the seed, the loss window...) is refused unless named with
`--override NAME`, and each override is recorded in the checkpoint with its epoch. Flags that only
change where or how fast the run goes, or how long it lasts, may change freely.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import List

from .errors import CheckpointError, FlagError

# May differ on resume: --epochs and --trials extend the run (both are totals), the rest change
# where it runs, where it reads and writes, how often it prints, not what it computes (the step
# modes and chunk sizes give the same gradients: only speed and memory differ).
FREE = frozenset({"resume", "override", "epochs", "trials", "print_freq", "workers", "device", "cpu",
                  "backend", "data_path", "save_path", "val_batch_size", "dist_timeout", "download",
                  "compile", "step_mode", "chunk_size"})
# Cannot be overridden: the checkpoint's weights or optimizer state would not fit the new value.
FIXED = frozenset({"arch", "dataset", "optimizer", "feedback_mode", "pooling"})
# Applied to the restored optimizer and schedule when overridden (the others take effect by
# themselves, as the run is rebuilt from the flags).
OPTIMIZER_FLAGS = ("lr", "weight_decay", "scheduler")


def flag_name(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def dest_name(name: str) -> str:
    """'lr', '--lr', 'weight-decay' and '--weight_decay' all name the same flag."""
    return name.lstrip("-").replace("-", "_")


def values(args) -> dict:
    """The flags of `args` as a dict of plain types (what the checkpoint stores)."""
    raw = dataclasses.asdict(args) if dataclasses.is_dataclass(args) else dict(vars(args))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in raw.items()}


def check_override_names(names, known) -> None:
    for name in names or ():
        dest = dest_name(name)
        if dest not in known or dest in FREE:
            raise FlagError(f"--override {name}: not a flag that --resume compares "
                            f"(free to change: {', '.join(sorted(flag_name(f) for f in FREE))})")
        if dest in FIXED:
            raise FlagError(f"--override {name}: {flag_name(dest)} cannot change on resume (the "
                            "checkpoint's weights or optimizer state belong to its value)")


def compare(recorded: dict, args, path: str) -> List[str]:
    """The overridden flags (dest names) that differ; CheckpointError listing every difference
    that is not overridden."""
    current = values(args)
    allowed = {dest_name(n) for n in (current.get("override") or ())}
    differences, overridden = [], []
    for dest in sorted(set(recorded) | set(current)):
        if dest in FREE or recorded.get(dest) == current.get(dest):
            continue
        if dest in allowed and dest not in FIXED:
            overridden.append(dest)
        else:
            differences.append(f"{flag_name(dest)} {recorded.get(dest)!r} -> {current.get(dest)!r}")
    if differences:
        raise CheckpointError(f"--resume: {path} was run with other flags: {'; '.join(differences)} "
                              "(resume with the checkpoint's values, or name a change with --override NAME)")
    return overridden


def apply_to_optimizer(overridden: List[str], args, optimizer, make_scheduler, done_epochs: int):
    """After the optimizer state is restored: the overridden learning rate, weight decay or schedule
    take effect from this epoch, as if the new schedule had run from the start. Returns
    (rebuilt, scheduler): rebuilt False means keep the restored scheduler state."""
    if not set(overridden) & set(OPTIMIZER_FLAGS):
        return False, None
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = args.lr
        if "weight_decay" in group:
            group["weight_decay"] = args.weight_decay
    scheduler = make_scheduler(args, optimizer)
    if scheduler is not None:
        with warnings.catch_warnings():  # stepping the schedule forward without optimizer steps
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(done_epochs):
                scheduler.step()
    return True, scheduler
