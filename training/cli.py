"""The command line of `python -m training`: the original's flags (same names, choices, defaults)
plus a few new ones (the table is `training.config.FLAGS`), checked before any work starts; and
the one place that turns the package's typed errors into a one-line message and an exit code.

`--help`, `--version` and a malformed flag are answered from the table alone, before torch is
imported; the checks that need torch (devices, backends, files) run once the flags parse.
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import runpy
import sys
from typing import Optional, Sequence

from .config import DISTRIBUTED_FLAGS, FLAGS, NEW_FLAGS, OPTIMIZERS, ORIGINAL_FLAGS, RunConfig
from .errors import CollectiveFailed, FlagError, TrainingError

PROG = "python -m training"
GROUPS = (  # (title, description) of --help's three groups, in the order they are shown
    ("the original's flags", "The original code's main.py flags, with its names and defaults (where a "
                             "choice differs, docs/differences.md says why)."),
    ("this package's additions", None),
    ("distributed runs", "Start the same command under torchrun to train on several GPUs or processes."),
)

__all__ = ["FLAGS", "NEW_FLAGS", "OPTIMIZERS", "ORIGINAL_FLAGS", "build_parser", "main", "parse_config",
           "version"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """One line on stderr, exit status 2 (no usage block, no traceback)."""
        self.exit(FlagError.exit_code, f"{self.prog}: error: {message} (see --help)\n")


def version() -> str:
    """stllr_kernels' version, read from its _version.py without importing the package (torch)."""
    spec = importlib.util.find_spec("stllr_kernels")  # finds the package without running its __init__
    folder = spec.submodule_search_locations[0]
    return runpy.run_path(os.path.join(folder, "_version.py"))["__version__"]


def _help(kwargs: dict) -> str:
    """The table's help text with the default appended (unless the text already states it)."""
    text = kwargs.get("help", "")
    if "default" in text.lower() or kwargs.get("action") == "store_true":
        return text
    default = kwargs.get("default")
    shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, list) else default
    return f"{text} (default: {shown})"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, allow_abbrev=False,  # --epoch must not silently mean --epochs
                     description="S-TLLR training, a drop-in for the original's main.py. Each flag's "
                                 "choices are in braces, its default in parentheses.")
    parser.add_argument("--version", action="version", version=f"%(prog)s (stllr-kernels) {version()}")
    original, added, distributed = (parser.add_argument_group(title, text) for title, text in GROUPS)
    original_names = {flag for flag, _ in ORIGINAL_FLAGS}
    for flag, kwargs in FLAGS:
        group = original if flag in original_names else distributed if flag in DISTRIBUTED_FLAGS else added
        group.add_argument(flag, **dict(kwargs, help=_help(kwargs)))
    return parser


def parse_config(argv: Optional[Sequence[str]] = None) -> RunConfig:
    """The run configuration of `argv`, checked; a bad flag exits with one line (status 2)."""
    parser = build_parser()
    config = RunConfig.from_args(parser.parse_args(argv))
    try:
        return config.validate()  # the checks that need torch start here
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
