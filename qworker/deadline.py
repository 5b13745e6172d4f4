"""When an evaluation stops early: its deadline, or its caller's cancellation.

A server runs each evaluation `within(seconds, cancel)`; the simulators `check()` between chunks
of work, so an evaluation nobody waits for any more (past its deadline, or cancelled by a client
that gave up) stops there and frees its replica for the next request.

    cancel = threading.Event()
    with deadline.within(2.0, cancel):
        backend.jacobians(...)      # raises DeadlineExceeded at the first check past 2 s,
                                    # Cancelled at the first check after cancel.set()

Outside `within` (a trainer's in-process backend), `check()` does nothing but one read.
"""

from __future__ import annotations

import contextvars
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class _Stop:
    until: float | None  # time.monotonic() past which the evaluation stops; None: no deadline
    seconds: float | None
    cancel: threading.Event | None


_current: contextvars.ContextVar[_Stop | None] = contextvars.ContextVar("qworker_stop", default=None)


class DeadlineExceeded(TimeoutError):
    """The evaluation ran past its deadline and was stopped (DEADLINE_EXCEEDED)."""


class Cancelled(Exception):
    """The evaluation's caller cancelled it; it was stopped (CANCELLED)."""


@contextmanager
def within(seconds: float | None, cancel: threading.Event | None = None):
    """Run the block under a deadline `seconds` from now (None: none) and, if given, a cancel event."""
    if seconds is None and cancel is None:
        yield
        return
    until = None if seconds is None else time.monotonic() + seconds
    token = _current.set(_Stop(until, seconds, cancel))
    try:
        yield
    finally:
        _current.reset(token)


def check() -> None:
    """Raise DeadlineExceeded or Cancelled if the current evaluation should stop now."""
    stop = _current.get()
    if stop is None:
        return
    if stop.cancel is not None and stop.cancel.is_set():
        raise Cancelled("the evaluation was cancelled by its caller; it was stopped")
    if stop.until is not None and time.monotonic() > stop.until:
        raise DeadlineExceeded(f"the evaluation did not finish within {stop.seconds:g} s (deadline); it was stopped")
