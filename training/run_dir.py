"""What `--save-path` may be: a folder that can be written, and, for a new run, one that holds no
other run's files (a new run refuses to overwrite or mix with them; `--resume` continues them)."""
from __future__ import annotations

import os
from typing import List, Optional

from .errors import SavePathError

RESUME_NAME = "checkpoint.pth.tar"  # the same as checkpoint.RESUME_NAME (kept import-free: torch)
RUN_FILES = (RESUME_NAME, "log.log", "summary.json")
RUN_PREFIX = "trial_"


def problem(path: str) -> Optional[str]:
    """None if `path` is or can become a writable folder, else why not (one sentence)."""
    if not path or not path.strip():
        return "--save-path is empty"
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        return f"--save-path {path!r} is a file, not a folder"
    ancestor = full
    while not os.path.exists(ancestor):
        parent = os.path.dirname(ancestor)
        if parent == ancestor:
            break
        ancestor = parent
    if not os.path.isdir(ancestor):
        return f"--save-path {path!r} is below {ancestor!r}, which is a file"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"--save-path {path!r}: {ancestor!r} is not writable"
    return None


def previous_run_files(path: str) -> List[str]:
    if not os.path.isdir(path):
        return []
    return sorted(f for f in os.listdir(path) if f in RUN_FILES or f.startswith(RUN_PREFIX))


def refuse_previous_run(path: str) -> None:
    """A new run (no --resume) into a folder that holds another run's files: SavePathError."""
    found = previous_run_files(path)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise SavePathError(
            f"--save-path {path} holds a previous run ({shown}): continue it with --resume "
            f"{os.path.join(path, RESUME_NAME)}, or start fresh with another --save-path (or delete the folder)")
