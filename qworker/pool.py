"""Where the service sends Evaluations: a pool of simulator replicas (DESIGN.md §5).

The service needs only `start()`, `ready`, `replicas`, `backends()` and `evaluate(ev)`; the
in-process pool here holds one Backend per simulator name in the server's own process. A Ray
pool with many replicas slots in behind the same methods.
"""

from __future__ import annotations

import threading

import torch

from qworker.backends import BACKENDS, Backend, get_backend
from qworker.circuit import CircuitSpec
from qworker.evaluation import Evaluation, Result, run

SIMULATORS = ("qulacs", "local", "shots")
STATEFUL = ("shots",)  # hold a random generator: built per request, never shared between threads


class PoolNotReady(Exception):
    """The pool has no live replica yet (UNAVAILABLE: the client may retry)."""


class InProcessPool:
    """One Backend per simulator name, built by `get_backend` and shared by the server's threads
    (local and qulacs keep no per-call state). A request with backend options (shots, seed, noise)
    or for a backend with a random generator gets a fresh backend, so a seeded request always
    returns the same result (what makes retries safe) and no generator is shared by threads."""

    def __init__(self, names: tuple[str, ...] = SIMULATORS):
        unknown = [n for n in names if n not in BACKENDS]
        if unknown:
            raise ValueError(f"unknown simulator(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
        self.names = tuple(names)
        self._backends: dict[str, Backend] = {}
        self.ready = threading.Event()

    @property
    def replicas(self) -> int:
        """Live replicas: 1 once started."""
        return int(self.ready.is_set())

    def backends(self) -> dict[str, tuple[str, ...]]:
        """Simulator name -> its gradient methods (known before the pool is live)."""
        return {name: BACKENDS[name].methods for name in self.names}

    def start(self) -> None:
        """Build every backend and run a one-token circuit on each; then the pool is ready."""
        spec = CircuitSpec(1, 1)
        theta, angles = torch.zeros(spec.n_params), torch.zeros(1, spec.n_angles)
        for name in self.names:
            backend = get_backend(name)
            backend.expectations(spec, theta, angles)  # import and warm up: fail here, not on a request
            self._backends[name] = backend
        self.ready.set()

    def evaluate(self, ev: Evaluation) -> Result:
        if not self.ready.is_set():
            raise PoolNotReady("the qworker pool is starting; retry shortly")
        return run(self.backend_for(ev), ev)

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
