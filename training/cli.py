"""The command line of `python -m training`: the original's flags (same names, choices, defaults)
plus a few new ones (the table is `training.config.FLAGS`), checked before any work starts; and
the one place that turns the package's typed errors into a one-line message and an exit code."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Optional, Sequence

from .config import FLAGS, NEW_FLAGS, OPTIMIZERS, ORIGINAL_FLAGS, RunConfig
from .errors import CollectiveFailed, FlagError, TrainingError

PROG = "python -m training"

__all__ = ["FLAGS", "NEW_FLAGS", "OPTIMIZERS", "ORIGINAL_FLAGS", "build_parser", "main", "parse_config"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr, exit status 2 (no usage block, no traceback)."""
        self.exit(FlagError.exit_code, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="S-TLLR training, a drop-in for the original's main.py.")
    for flag, kwargs in FLAGS:
        parser.add_argument(flag, **kwargs)
    return parser


def parse_config(argv: Optional[Sequence[str]] = None) -> RunConfig:
    """The run configuration of `argv`, checked; a bad flag exits with one line (status 2)."""
    parser = build_parser()
    config = RunConfig.from_args(parser.parse_args(argv))
    try:
        return config.validate()
    except FlagError as exc:
        parser.error(str(exc))


def main(argv: Optional[Sequence[str]] = None) -> int:
    config = parse_config(argv)
    from . import distributed  # heavy imports only once the flags are known good
    from .runner import run

    try:
        if distributed.launched():  # a process of `torchrun --nproc_per_node=N -m training ...`
            distributed.run(config)
        else:
            run(config)
    except TrainingError as exc:  # its message says what went wrong and what to do
        sys.stderr.write(f"{PROG}: error: {exc}\n")
        if isinstance(exc, CollectiveFailed):
            end_process_now(exc.exit_code)
        return exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training began: the checkpoint on disk is whole
        sys.stderr.write(f"{PROG}: interrupted: stopped at once; the last checkpoint in {config.save_path}, "
                         "if any, is intact (continue with --resume)\n")
        return 130
    return 0


def end_process_now(code: int) -> None:
    """Exit with `code` without the interpreter's shutdown, after a failed collective.

    torch's Gloo worker threads may still hold the failed operation: releasing its tensors takes
    the interpreter's lock, and in an interpreter that is shutting down that kills the thread inside
    a destructor, which aborts the process (SIGABRT) instead of exiting with `code`. Destroying the
    process group first does not help: DistributedDataParallel keeps it alive (torch's imports
    hold references), so its threads are never joined. Everything worth keeping (checkpoints, the
    log) is on disk once the log and the standard streams are flushed.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken: nothing more to save
            pass
    os._exit(code)
