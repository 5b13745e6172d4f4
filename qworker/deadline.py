"""Deadlines inside an evaluation: the pool runs an evaluation `within(seconds)` of its caller's
deadline, and the simulators `check()` between chunks of work, so an evaluation nobody waits for
any more stops there and frees its replica for the next request.

    with deadline.within(2.0):
        backend.jacobians(...)      # raises DeadlineExceeded at the first check past 2 s

Outside `within` (a trainer's in-process backend), `check()` does nothing.
"""

from __future__ import annotations

import contextvars
import time
from contextlib import contextmanager

_deadline: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar("deadline", default=None)


class DeadlineExceeded(TimeoutError):
    """The evaluation ran past its deadline and was stopped (DEADLINE_EXCEEDED)."""


@contextmanager
def within(seconds: float | None):
    """Run the block under a deadline `seconds` from now (None: no deadline)."""
    if seconds is None:
        yield
        return
    token = _deadline.set((time.monotonic() + seconds, seconds))
    try:
        yield
    finally:
        _deadline.reset(token)


def check() -> None:
    """Raise DeadlineExceeded if the current deadline has passed."""
    current = _deadline.get()
    if current is not None and time.monotonic() > current[0]:
        raise DeadlineExceeded(f"the evaluation did not finish within {current[1]:g} s (deadline); it was stopped")
