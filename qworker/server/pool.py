"""What the service asks of a pool of replicas: one protocol, two pools (`InProcessPool`,
`RayPool`), so the servicer never asks which one it has (docs/design.md, "The service")."""

from __future__ import annotations

from typing import Protocol

from qworker.backends import Capabilities, Usage
from qworker.protocol.evaluation import Header
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.server.replica import ReplicaStats


class Pool(Protocol):
    names: tuple[str, ...]  # the backends it serves

    @property
    def replicas(self) -> int:
        """Live replicas."""

    @property
    def max_replicas(self) -> int:
        """Most replicas `scale` may ask for; 0 when the pool cannot scale."""

    def default_inflight(self) -> int:
        """Requests to evaluate at once when the server sets no --max-inflight."""

    def backends(self) -> dict[str, Capabilities]:
        """Served name -> what it can do."""

    def pending(self) -> dict:
        """Replicas asked for but not placed yet: {} or {pending_replicas, pending_reason}."""

    def hardware_usage(self) -> dict[str, Usage]:
        """Jobs, circuits and shots spent so far, by backend."""

    def replica_stats(self) -> list[ReplicaStats]:
        """Every replica's counters, for the metrics."""

    async def start(self) -> None:
        """Bring the replicas up; the server is SERVING once this returns."""

    async def evaluate(
        self, request: bytes, header: Header, timeout: float | None, parsed: pb.EvaluateRequest | None = None
    ) -> bytes:
        """The encoded response of `request` (checked into `header`; `parsed` if the caller parsed it)."""

    def scale(self, replicas: int) -> tuple[int, int]:
        """(live, target) after asking for `replicas`; ScaleRefused when it cannot."""

    def close(self) -> None:
        """Stop the replicas; in-flight requests fail."""
