"""One replica: the simulators of a process, turning request bytes into response bytes.

The server checks a request from its headers and hands its bytes over unchanged; the replica
decodes them (`qworker.protocol.convert.to_evaluation`), runs them on the backend they name and
encodes the answer, which the server returns as it is: one decode and one encode per request.
The in-process pool holds one Replica; a Ray pool runs one in each of its actor processes.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, replace

import torch

from qworker import deadline
from qworker.backends import Backend, Capabilities, Usage, backend_class, get_backend
from qworker.circuit import CircuitSpec
from qworker.protocol import shards
from qworker.protocol.convert import to_evaluation, to_response
from qworker.protocol.evaluation import Evaluation, Result, run
from qworker.protocol.limits import Limits
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.server.resident import Resident

SIMULATORS = ("auto", "qulacs", "local", "shots")


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


TRIM_BYTES = 64 * 2**20


def _check_finite(ev: Evaluation, result: Result) -> None:
    """Refuse, naming why, results that are not finite (an fd step too small for the dtype)."""
    tensors = [result.expectations, *(result.jacobians or ()), *(result.vjp or ())]
    if all(t is None or bool(torch.isfinite(t).all()) for t in tensors):
        return
    grad = ev.header.grad
    hint = f" (gradient.delta={grad.delta:g} too small for {ev.angles.dtype}?)" if grad else ""
    raise ValueError(f"the results are not finite{hint}; nothing is returned")


def malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:  # not glibc
        pass


class Replica:
    """One Backend per served name, built by `get_backend` and shared by this process's threads
    when it is `thread_safe` (local and qulacs keep no per-call state). A request with backend
    options (shots, seed, noise), or for a backend that is not thread-safe (a random generator, a
    cache), gets a fresh backend, so a seeded request always returns the same result (what makes
    retries safe) and no generator is shared by threads.
    `device` "cuda" runs the `local` simulator on the GPU. `resident` keeps the Jacobians of
    keep_jacobians requests until their VJP is asked for (server/resident.py)."""

    def __init__(self, names: tuple[str, ...] = SIMULATORS, device: str = "cpu", resident: Resident | None = None):
        # ValueError naming the available ones, or PluginError naming a broken plug-in; kept: a
        # plug-in's lookup reads every installed distribution's metadata (~3 ms a request)
        self._classes = {name: backend_class(name) for name in names}
        self.names, self.device = tuple(names), device
        self._backends: dict[str, Backend] = {}
        self.resident = resident or Resident(Limits.max_resident_bytes, Limits.resident_ttl_s)

    def capabilities(self) -> dict[str, Capabilities]:
        """Served name -> what it can do (known before the replica has started)."""
        return {name: get_backend(name).capabilities() for name in self.names}

    def start(self) -> None:
        """Build every backend and run a one-token circuit on each: fail here, not on a request."""
        spec = CircuitSpec(1, 1)
        theta, angles = torch.zeros(spec.n_params), torch.zeros(1, spec.n_angles)
        for name in self.names:
            backend = get_backend(name)
            backend.expectations(spec, theta, angles)
            self._backends[name] = backend

    def evaluate(
        self, request: bytes, timeout: float | None = None, cancel: threading.Event | None = None
    ) -> tuple[bytes, float, Usage]:
        """The encoded EvaluateResponse of an encoded EvaluateRequest, the compute seconds and what
        the backend spent on it (jobs, circuits, shots: zero on an exact simulator). Past `timeout`
        seconds, or once `cancel` is set, the simulators stop at their next check (DeadlineExceeded,
        Cancelled); bad requests raise the errors `to_evaluation` names. A keep_jacobians request's
        Jacobians stay here, its answer carries their key; a request with a handle gets the VJP of
        the Jacobians kept under it (HandleGone when they are not here)."""
        ev = to_evaluation(pb.EvaluateRequest.FromString(request))
        h = ev.header
        if h.handle:
            return self._vjp_of_kept(ev)
        backend = self.backend_for(ev)
        before = replace(backend.usage)  # a copy: a shared backend keeps counting
        # a VJP by Jacobians (not reverse-mode) is their contraction as units would contract them
        by_jacobians = h.want == "vjp" and not h.grad.rule.reverse
        asked = replace(ev, header=replace(h, want="jacobians"), grad_out=None) if by_jacobians else ev
        with deadline.within(timeout, cancel):
            result = run(backend, self._on_device(backend, asked))
        if by_jacobians:
            vjp = shards.vjp_by_units(h, *result.jacobians, ev.grad_out)
            result = replace(result, jacobians=None, vjp=vjp)
        _check_finite(ev, result)
        if h.keep_jacobians:
            key = self.resident.put(result.jacobians, h)
            result = replace(result, jacobians=None, handle=key)
        data = to_response(result).SerializeToString()
        if len(request) + len(data) > TRIM_BYTES:  # give a large request's memory back to the system now
            malloc_trim()
        return data, result.compute_seconds, backend.usage - before

    def _vjp_of_kept(self, ev: Evaluation) -> tuple[bytes, float, Usage]:
        start = time.perf_counter()
        j_theta, j_angles, kept = self.resident.take(ev.header.handle)
        g_theta, g_angles = shards.vjp_by_units(kept, j_theta, j_angles, ev.grad_out)
        seconds = time.perf_counter() - start
        return (
            to_response(Result(vjp=(g_theta, g_angles), compute_seconds=seconds)).SerializeToString(),
            seconds,
            Usage(),
        )

    def backend_for(self, ev: Evaluation) -> Backend:
        """The backend `ev` names, built with its options; ValueError if not served or bad options."""
        name, options = ev.header.backend, ev.header.options
        if name not in self.names:
            raise ValueError(f"backend.name: {name!r} is not served here; choose one of {', '.join(self.names)}")
        cls = self._classes[name]
        if not options and cls.thread_safe:
            return self._backends[name] if name in self._backends else get_backend(name)
        unknown = sorted(set(options) - set(cls.option_names()) - {"mitigate", "confusion"})  # the registry's wrapper
        if unknown:
            takes = ", ".join(cls.option_names()) or "none"
            raise ValueError(f"backend.options: {name!r} takes no option {', '.join(unknown)} (its options: {takes})")
        try:
            return get_backend(name, **options)
        except (TypeError, ValueError) as e:
            raise ValueError(f"backend.options: {e}") from None

    def _on_device(self, backend: Backend, ev: Evaluation) -> Evaluation:
        """`ev` on this replica's device when its backend computes on torch devices (`local`)."""
        if self.device == "cpu" or not backend.accelerated:
            return ev
        move = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        return replace(ev, theta=move(ev.theta), angles=move(ev.angles), grad_out=move(ev.grad_out))
