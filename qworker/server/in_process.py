"""The in-process pool: one Replica in the server's own process, evaluations on worker threads.

What the service needs of a pool (this one and `RayPool`): `start()` (async), `live`,
`replicas`, `backends()`, `pending()`, `replica_stats()`, `hardware_usage()`, `evaluate(request,
header, timeout)` (async, cancellable) and `close()`. Only the Ray pool can `scale`.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

from qworker.backends import Capabilities, Usage
from qworker.protocol.errors import PoolNotReady, ScaleRefused
from qworker.protocol.evaluation import Header
from qworker.protocol.limits import Limits
from qworker.server.replica import SIMULATORS, Replica, ReplicaStats
from qworker.server.resident import Resident


class InProcessPool:
    """`workers` evaluations at a time on this process's Replica; a cancelled request (its
    client gave up, or its deadline passed) stops at the simulators' next check."""

    def __init__(
        self,
        names: tuple[str, ...] = SIMULATORS,
        workers: int = 4,
        resident: tuple[int, float] = (Limits.max_resident_bytes, Limits.resident_ttl_s),
    ):
        self.replica = Replica(names, resident=Resident(*resident))
        self.names, self.workers = self.replica.names, workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qworker-eval")
        self._capabilities = self.replica.capabilities()
        self.live = False
        self._running = self._evaluations = 0
        self._busy_s = 0.0
        self.usage: dict[str, Usage] = {}  # by backend name: jobs, circuits and shots spent

    max_replicas = 0  # it cannot scale

    @property
    def replicas(self) -> int:
        """Live replicas: 1 once started."""
        return int(self.live)

    def default_inflight(self) -> int:
        return self.workers

    def scale(self, replicas: int) -> tuple[int, int]:
        raise ScaleRefused("this server evaluates in its own process; serve with --replicas N to scale")

    def backends(self) -> dict[str, Capabilities]:
        return self._capabilities

    def pending(self) -> dict:
        """Replicas asked for but not placed: none here."""
        return {}

    def hardware_usage(self) -> dict[str, Usage]:
        """Jobs, circuits and shots spent so far, by backend (those that spent any)."""
        return dict(self.usage)

    def replica_stats(self) -> list[ReplicaStats]:
        """This process as the one replica."""
        return [
            ReplicaStats("in-process", socket.gethostname(), self.live, self._running, self._evaluations, self._busy_s)
        ]

    async def start(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self.replica.start)
        self.live = True

    async def evaluate(self, request: bytes, header: Header, timeout: float | None, parsed=None) -> bytes:
        """The encoded response of `request` (checked into `header` by the server), whole."""
        if not self.live:
            raise PoolNotReady("the qworker pool is starting; retry shortly")
        cancel = threading.Event()
        self._running += 1
        try:
            work = asyncio.get_running_loop().run_in_executor(
                self._executor, self.replica.evaluate, request, timeout, cancel
            )
            try:
                data, seconds, usage = await asyncio.shield(work)
            except asyncio.CancelledError:
                cancel.set()  # the thread stops at its next check
                raise
        finally:
            self._running -= 1
        self._evaluations += 1
        self._busy_s += seconds
        if usage.jobs:
            self.usage[header.backend] = self.usage.get(header.backend, Usage()) + usage
        return data

    def close(self) -> None:
        self.live = False
        self._executor.shutdown(wait=False, cancel_futures=True)
