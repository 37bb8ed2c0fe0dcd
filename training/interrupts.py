"""Ctrl-C (SIGINT) and SIGTERM (what clusters send before preemption) as a request to stop.

The handler only records the signal; the training loop looks at the record between batches and
stops there. An exception raised from inside a signal handler can land anywhere, including in a
finalizer, where Python prints "Exception ignored" and carries on; a flag cannot be lost that way.
The checkpoint on disk always holds the state at the start of the current epoch, so stopping needs
no further writes and the resume repeats exactly the interrupted epoch. A second Ctrl-C while the
first is being honoured stops at once (KeyboardInterrupt); the checkpoint on disk is still whole.
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator, Optional

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequested(Exception):
    """Raised by the training loop at a batch boundary after a SIGINT or SIGTERM."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopFlag:
    """Set by the first SIGINT/SIGTERM; `check()` raises StopRequested once set."""

    def __init__(self):
        self.signum: Optional[int] = None

    def __bool__(self) -> bool:
        return self.signum is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    def check(self) -> None:
        if self.signum is not None:
            raise StopRequested(self.signum)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists
        self.signum = signum


NEVER = StopFlag()  # for callers that do not handle signals (never set)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """Within the block, SIGINT and SIGTERM set the yielded flag instead of raising.

    Outside the main thread signals cannot be caught; the flag then never sets (and the default
    handlers stay)."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, flag._handle) for sig in SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
