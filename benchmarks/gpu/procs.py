"""Child processes of a stage (pytest, compute-sanitizer) that end with everything they started.

A child runs in its own process group (a new session), and a timeout kills the whole group: killing
only compute-sanitizer would leave the Python program it runs busy on the GPU into the timing stages.
"""
from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Optional


@dataclass
class Result:
    returncode: Optional[int]  # None when it timed out
    output: str                # stdout and stderr together
    timed_out: bool


def run_group(cmd: list[str], timeout_s: float, env: Optional[dict] = None) -> Result:
    """Run `cmd` in its own process group; on a timeout kill the group and return what it printed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
        return Result(proc.returncode, out, False)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        out, _ = proc.communicate()
        return Result(None, out, True)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group `proc` leads (started with start_new_session=True)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
