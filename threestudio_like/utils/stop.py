"""Stopping a run on a signal without losing or mixing up its state.

While training, SIGINT (Ctrl-C) and SIGTERM (what schedulers and Ray send first) are deferred: the
step in progress finishes, then the loop writes a checkpoint at that step boundary (so the saved
weights, optimizer moments and RNG state all belong to the same step and a resume is exact) and
stops. A second signal interrupts at once; the half-done step is then dropped and the last
checkpoint stays. Outside the loop (start-up, turntable, export) a SIGTERM stops like Ctrl-C.
"""
from __future__ import annotations

import signal
import threading
from typing import Any, Optional

SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}


def exit_code(signum: int) -> int:
    """The shell's convention for a process ended by a signal: 128 + its number (130, 143)."""
    return 128 + int(signum)


class RunStopped(Exception):
    """The run ended early on purpose (a signal) or by a fault; ``str()`` is the one line to print."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """SIGTERM outside the training loop: unwinds like KeyboardInterrupt does for SIGINT."""

    def __init__(self, signum: int) -> None:
        super().__init__(SIGNAL_NAMES.get(signum, str(signum)))
        self.signum = signum


def raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class DeferredSignals:
    """``with DeferredSignals() as stop:`` — ``stop.signum`` is set by the first SIGINT/SIGTERM."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "DeferredSignals":
        if in_main_thread():  # signal handlers can only be set from the main thread
            for signum in SIGNAL_NAMES:
                self.previous[signum] = signal.signal(signum, self.handle)
        return self

    def handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt  # the second signal: stop now
        self.signum = signum

    def __exit__(self, *exc: Any) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)
        self.previous.clear()

    @property
    def name(self) -> str:
        return SIGNAL_NAMES.get(self.signum, str(self.signum))
