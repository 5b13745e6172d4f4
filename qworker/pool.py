"""Where the service sends Evaluations: a pool of simulator replicas (DESIGN.md §5).

The service needs only `start()`, `ready`, `replicas`, `queue_depth`, `backends()`,
`replica_stats()`, `evaluate(ev, timeout)` and `close()`; the in-process pool here holds one
Backend per simulator name in the server's own process. The Ray pool (`qworker/ray_pool.py`)
runs many replicas behind the same methods, and can `scale`.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

import torch

from qworker import deadline
from qworker.backends import Backend, Capabilities, backend_class, get_backend
from qworker.circuit import CircuitSpec
from qworker.evaluation import Evaluation, Result, run

SIMULATORS = ("auto", "qulacs", "local", "shots")
STATEFUL = ("shots", "qiskit")  # may hold a random generator: built per request, never shared by threads


class PoolNotReady(Exception):
    """The pool has no live replica yet (UNAVAILABLE: the client may retry)."""


class ReplicasDied(Exception):
    """Several replicas died running one request: the request itself kills them (INTERNAL)."""


@dataclass(frozen=True)
class ReplicaStats:
    """What one replica has done, for the metrics: evaluations answered and the seconds the
    replica spent on them (measured where they ran), deaths seen, requests on it now."""

    name: str
    node: str
    live: bool
    in_flight: int
    evaluations: int
    busy_s: float
    deaths: int = 0


class InProcessPool:
    """One Backend per simulator name, built by `get_backend` and shared by the server's threads
    (local and qulacs keep no per-call state). A request with backend options (shots, seed, noise)
    or for a backend with a random generator gets a fresh backend, so a seeded request always
    returns the same result (what makes retries safe) and no generator is shared by threads."""

    def __init__(self, names: tuple[str, ...] = SIMULATORS):
        for name in names:  # ValueError naming the available ones, or PluginError naming a broken plug-in
            backend_class(name)
        self.names = tuple(names)
        self._backends: dict[str, Backend] = {}
        self.ready = threading.Event()
        self._capabilities = None
        self._lock = threading.Lock()
        self._running = self._evaluations = 0
        self._busy_s = 0.0

    @property
    def replicas(self) -> int:
        """Live replicas: 1 once started."""
        return int(self.ready.is_set())

    @property
    def queue_depth(self) -> int:
        return self._running

    def replica_stats(self) -> list[ReplicaStats]:
        """This process as the one replica."""
        with self._lock:
            stats = (self._running, self._evaluations, self._busy_s)
            return [ReplicaStats("in-process", socket.gethostname(), self.ready.is_set(), *stats)]

    def backends(self) -> dict[str, Capabilities]:
        """Simulator name -> what it can do (known before the pool is live)."""
        if self._capabilities is None:
            self._capabilities = {name: get_backend(name).capabilities() for name in self.names}
        return self._capabilities

    def start(self) -> None:
        """Build every backend and run a one-token circuit on each; then the pool is ready."""
        spec = CircuitSpec(1, 1)
        theta, angles = torch.zeros(spec.n_params), torch.zeros(1, spec.n_angles)
        for name in self.names:
            backend = get_backend(name)
            backend.expectations(spec, theta, angles)  # import and warm up: fail here, not on a request
            self._backends[name] = backend
        self.ready.set()

    def evaluate(self, ev: Evaluation, timeout: float | None = None) -> Result:
        """Run `ev` in this thread; past `timeout` seconds the simulators stop it at their next
        check (`qworker.deadline`: DeadlineExceeded, a TimeoutError)."""
        if not self.ready.is_set():
            raise PoolNotReady("the qworker pool is starting; retry shortly")
        with self._lock:
            self._running += 1
        try:
            with deadline.within(timeout):
                result = run(self.backend_for(ev), ev)
        finally:
            with self._lock:
                self._running -= 1
        with self._lock:
            self._evaluations += 1
            self._busy_s += result.compute_seconds
        return result

    def backend_for(self, ev: Evaluation) -> Backend:
        """The backend `ev` names, built with its options; ValueError if not served or bad options."""
        if ev.backend not in self.names:
            raise ValueError(f"backend.name: {ev.backend!r} is not served here; choose one of {', '.join(self.names)}")
        if not ev.options and ev.backend not in STATEFUL:
            return self._backends[ev.backend] if ev.backend in self._backends else get_backend(ev.backend)
        try:
            return get_backend(ev.backend, **ev.options)
        except TypeError:
            raise ValueError(f"backend: {ev.backend!r} takes no options (got {', '.join(ev.options)})") from None
        except ValueError as e:
            raise ValueError(f"backend: {e}") from None

    def close(self) -> None:
        self.ready.clear()
        self._backends.clear()
