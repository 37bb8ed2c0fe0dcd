"""The typed errors of the training package.

Library modules raise these; only the command line (`training/cli.py`) turns them into a one-line
message and an exit code (`TrainingError.exit_code`). Nothing outside `cli.py` and `__main__`
calls `sys.exit` or raises `SystemExit`.
"""
from __future__ import annotations


class TrainingError(Exception):
    """Base class: the message alone tells the user what went wrong and what to do."""

    exit_code = 2


class FlagError(TrainingError, ValueError):
    """A flag's value, or a combination of flags, that cannot work (names the flag)."""


class DatasetError(TrainingError):
    """A dataset cannot be read (missing or unusable files under --data-path)."""


class BackendError(TrainingError):
    """The kernel backend asked for cannot run here."""


class CheckpointError(TrainingError):
    """A checkpoint or pretrained model cannot be used (missing, corrupt, foreign, or from another run)."""


class SavePathError(TrainingError):
    """--save-path cannot be used (not a folder, not writable, or holding another run's files)."""


class DistributedError(TrainingError):
    """A distributed run cannot start or go on (environment, batch split, a failed or hung rank)."""


class CollectiveFailed(DistributedError):
    """A collective operation failed: another process hung past --dist-timeout, or died. The
    process group is unusable and torch's communication threads may still hold the failed
    operation, so the command ends the process at once (`cli.main`)."""


class RunDiverged(TrainingError):
    """The loss or the weights became non-finite; the last good checkpoint is kept."""

    exit_code = 3


class RunInterrupted(TrainingError):
    """Ctrl-C or SIGTERM: a resumable checkpoint was written."""

    exit_code = 130
