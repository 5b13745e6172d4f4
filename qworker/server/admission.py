"""Admission: at most `inflight` requests evaluating and `queue` more waiting for a slot; beyond
both a request is refused at once (RESOURCE_EXHAUSTED, with a retry-after hint), before it is even
parsed, so a burst holds no memory past its bytes and waits nowhere unseen. The bounds may follow
the pool (its replicas change)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import asynccontextmanager

from qworker.protocol.errors import OverLimitError


class Refused(OverLimitError):
    """The server is full: RESOURCE_EXHAUSTED, with `retry_after_s` for the client."""

    def __init__(self, message: str, retry_after_s: float):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Admission:
    """`inflight()` and `queue()` give the current bounds (they may follow the pool's size)."""

    def __init__(self, inflight: Callable[[], int], queue: Callable[[], int]):
        self.inflight, self.queue = inflight, queue
        self.running = self.waiting = 0
        self.typical_s = 0.1  # a moving average of how long an admitted request holds its slot
        self._freed: asyncio.Condition | None = None  # made on the server's loop, at first use

    @property
    def depth(self) -> int:
        """Requests admitted: evaluating or waiting for a slot."""
        return self.running + self.waiting

    def check(self) -> None:
        """Raise Refused when no slot is free and the queue is full."""
        if self.running >= self.inflight() and self.waiting >= self.queue():
            retry = max(0.05, self.typical_s * (1 + self.waiting) / max(1, self.inflight()))
            raise Refused(
                f"the server is full ({self.running} requests evaluating, {self.waiting} waiting: max_inflight="
                f"{self.inflight()}, max_queue={self.queue()}); retry in {retry:.2g} s",
                retry,
            )

    @asynccontextmanager
    async def slot(self):
        """Hold a slot for the block, waiting for one in the queue; Refused when that is full."""
        self.check()
        if self._freed is None:
            self._freed = asyncio.Condition()
        self.waiting += 1
        try:
            async with self._freed:
                await self._freed.wait_for(lambda: self.running < self.inflight())
                self.running += 1
        finally:
            self.waiting -= 1
        start = time.monotonic()
        try:
            yield
        finally:
            self.running -= 1
            self.typical_s = 0.8 * self.typical_s + 0.2 * (time.monotonic() - start)
            async with self._freed:
                self._freed.notify()
