"""Jacobians kept where they were computed (EvaluateRequest.keep_jacobians), and the handles that
name them (docs/design.md, "Resident Jacobians").

A replica keeps a unit's Jacobians in its `Resident` store under a key and answers the key; a
frontend (the server) names the request's units and their keys with one handle (`Handles`). The
backward call sends the upstream gradient with the handle and gets the VJP back, so the Jacobians
never travel. Both are bounded: a store by bytes (the least recently kept go first) and both by
time (unused Jacobians of a trainer that died expire). What is gone is answered NOT_FOUND
(`HandleGone`), and the client recomputes it from its inputs.

    store = Resident(max_bytes=2**30, ttl_s=600)
    key = store.put((j_theta, j_angles), header)      # the header of the request that computed them
    j_theta, j_angles, header = store.take(key)       # once: the Jacobians are freed
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from torch import Tensor

from qworker.protocol.errors import HandleGone, OverLimitError


@dataclass
class _Kept:
    jacobians: tuple[Tensor, Tensor]
    header: object  # the request's Header: how its VJP is contracted (its cut, a per-token theta)
    nbytes: int
    expires: float


class Resident:
    """A replica's kept Jacobians by key: at most `max_bytes` (the least recently kept evicted
    first), each expiring `ttl_s` after it was kept. Thread-safe."""

    def __init__(self, max_bytes: int, ttl_s: float, clock=time.monotonic):
        self.max_bytes, self.ttl_s, self._clock = max_bytes, ttl_s, clock
        self._kept: OrderedDict[str, _Kept] = OrderedDict()
        self._lock = threading.Lock()
        self.bytes = 0
        self.evicted = self.expired = 0  # what went before it was asked for

    def put(self, jacobians: tuple[Tensor, Tensor], header) -> str:
        """Keep `jacobians` (J_theta, J_angles) of the request `header` describes; their key.
        OverLimitError if they alone exceed max_bytes (send smaller batches)."""
        nbytes = sum(j.numel() * j.element_size() for j in jacobians)
        if nbytes > self.max_bytes:
            raise OverLimitError(
                f"keep_jacobians: {nbytes:,} bytes of Jacobians exceed this server's max_resident_bytes="
                f"{self.max_bytes:,}; send smaller batches"
            )
        key = uuid.uuid4().hex
        with self._lock:
            self._expire()
            while self._kept and self.bytes + nbytes > self.max_bytes:  # the least recently kept go first
                self._drop(next(iter(self._kept)))
                self.evicted += 1
            self._kept[key] = _Kept(jacobians, header, nbytes, self._clock() + self.ttl_s)
            self.bytes += nbytes
        return key

    def take(self, key: str) -> tuple[Tensor, Tensor, object]:
        """(J_theta, J_angles, header) kept under `key`, which is then forgotten; HandleGone if it
        is not here (evicted, expired, taken, or kept by another process)."""
        with self._lock:
            self._expire()
            kept = self._kept.get(key)
            if kept is None:
                raise HandleGone("handle: its Jacobians are gone (evicted, expired or restarted); send the inputs")
            self._drop(key)
        return (*kept.jacobians, kept.header)

    def __len__(self) -> int:
        return len(self._kept)

    def _expire(self) -> None:
        now = self._clock()
        for key in [k for k, v in self._kept.items() if v.expires <= now]:
            self._drop(key)
            self.expired += 1

    def _drop(self, key: str) -> None:
        self.bytes -= self._kept.pop(key).nbytes


@dataclass(frozen=True)
class Held:
    """Where one unit of a kept request is: its unit, the replica holding it (the pool's own
    object for it), and that replica's key."""

    unit: object
    replica: object
    key: str


class Handles:
    """A frontend's handles: each names the units of one keep_jacobians request and where they are
    kept, and expires with them (`ttl_s`). Used from one event loop."""

    def __init__(self, ttl_s: float, clock=time.monotonic):
        self.ttl_s, self._clock = ttl_s, clock
        self._handles: dict[str, tuple[float, object]] = {}

    def add(self, held) -> str:
        """A new handle for `held`: where each unit is kept, or a future that gives it (Jacobians
        still being computed; cancelled if the handle expires first)."""
        now = self._clock()
        for h in [h for h, (expires, _) in self._handles.items() if expires <= now]:
            _, stale = self._handles.pop(h)
            if hasattr(stale, "cancel"):
                stale.cancel()
        handle = "h" + uuid.uuid4().hex
        self._handles[handle] = (now + self.ttl_s, held)
        return handle

    def take(self, handle: str):
        """The units `handle` names (or the future of them), forgotten now; HandleGone if unknown
        or expired."""
        expires, held = self._handles.pop(handle, (0.0, None))
        if held is None or expires <= self._clock():
            raise HandleGone("handle: unknown to this server (expired, or the server restarted); send the inputs")
        return held

    def __len__(self) -> int:
        return len(self._handles)
