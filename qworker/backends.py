"""Simulators and hardware adapters behind one interface (DESIGN.md §4, §5), chosen by name so
model code never knows where a circuit runs.

    backend = get_backend("local")           # or "qulacs", "shots" (shots=, seed=, noise, queue_latency_s=)
    z = backend.expectations(spec, theta, angles)                   # (N, n_q)
    g_theta, g_angles = backend.vjp(spec, theta, angles, g, Gradient("shift"))
    j_theta, j_angles = backend.jacobians(spec, theta, angles, Gradient("fd", delta=1e-3))
    backend.capabilities()                   # Capabilities(methods=..., hardware=..., max_shots=...)

Plug-ins: any installed distribution can add a backend (a `Backend` subclass) through the
`hyqut.backends` entry point group; `get_backend(name, **options)` builds it with its options.
The Qiskit adapter (`qiskit`, qworker/qiskit_adapter.py) is registered this way. In the
plug-in's pyproject.toml:

    [project.entry-points."hyqut.backends"]
    mydevice = "my_package.adapter:MyDeviceBackend"
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from importlib import metadata

import torch
from torch import Tensor

from qworker import gradients, local
from qworker.circuit import CircuitSpec
from qworker.gradients import Gradient


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, reported by the qworker service's Info (BackendInfo)."""

    methods: tuple[str, ...]  # gradient methods it supports
    hardware: bool = False  # quantum hardware or its emulation: no state vector, no adjoint
    max_shots: int = 0  # largest shots per token it accepts; 0 for exact simulators
    max_batch: int = 0  # most tokens per batch; 0 for no limit of its own
    queue_latency_s: float = 0.0  # typical wait in the device's queue before a job runs


class Pending:
    """A forward evaluation whose gradients are on their way (what `Backend.start` returns)."""

    def __init__(self, expectations: Tensor, vjp):
        self.expectations, self._vjp = expectations, vjp

    def vjp(self, grad_out: Tensor) -> tuple[Tensor, Tensor]:
        """(d<L>/dtheta, d<L>/dangles) for L = sum(grad_out * expectations); may wait for them."""
        return self._vjp(grad_out)


class Backend:
    """Where circuits run. Subclasses give `expectations`; `adjoint` is each simulator's own."""

    name = "?"
    methods: tuple[str, ...] = gradients.METHODS

    def capabilities(self) -> Capabilities:
        return Capabilities(self.methods)

    def reseed(self, seed: int) -> None:
        """Restart this backend's random numbers (shot sampling, noise) from `seed`; no-op for an
        exact simulator. QuantumLinear reseeds before every call from state it checkpoints, so a
        resumed training run draws what the uninterrupted one drew."""

    def start(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient) -> Pending:
        """The forward evaluation, and the gradients to come: `Pending.expectations` now,
        `Pending.vjp(grad_out)` in backward. Here the VJP is computed when asked; a remote backend
        sends the gradient evaluations with the forward call, so they overlap the classical work."""
        self.check_method(grad)
        return Pending(self.expectations(spec, theta, angles), lambda g: self.vjp(spec, theta, angles, g, grad))

    def expectations(self, spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
        raise NotImplementedError

    def vjp(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor, grad: Gradient):
        """(d<L>/dtheta (|Θ|,), d<L>/dangles (N, 2n_q)) for L = sum(grad_out * expectations)."""
        self.check_method(grad)
        if grad.method == "adjoint":
            return self._adjoint_vjp(spec, theta, angles, grad_out)
        return gradients.contract(*self.jacobians(spec, theta, angles, grad), grad_out)

    def jacobians(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient):
        """(J_theta (N, n_q, |Θ|), J_angles (N, n_q, 2n_q)), by the named method."""
        self.check_method(grad)
        if grad.method == "adjoint":
            return self._adjoint_jacobians(spec, theta, angles)
        estimate = gradients.spsa_jacobians if grad.method == "spsa" else gradients.shifted_jacobians
        return estimate(self.expectations, spec, theta, angles, grad)

    def check_method(self, grad: Gradient) -> None:
        if grad.method not in self.methods:
            why = " (adjoint differentiation needs the state vector, which this backend does not expose)"
            raise ValueError(
                f"gradient method {grad.method!r} is not supported by backend {self.name!r}"
                f"{why if grad.method == 'adjoint' else ''}; choose one of {', '.join(self.methods)}"
            )

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        raise NotImplementedError

    def _adjoint_jacobians(self, spec, theta, angles):
        raise NotImplementedError


class LocalBackend(Backend):
    """Batched torch statevector simulation (`qworker.local`), adjoint by autograd."""

    name = "local"

    def expectations(self, spec, theta, angles):
        return local.expectations(spec, theta, angles)

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        with torch.enable_grad():
            t = theta.detach().requires_grad_()
            a = angles.detach().requires_grad_()
            return torch.autograd.grad(local.expectations(spec, t, a), (t, a), grad_out)

    def _adjoint_jacobians(self, spec, theta, angles):
        with torch.enable_grad():
            t = theta.detach().expand(angles.shape[0], -1).contiguous().requires_grad_()  # per token
            a = angles.detach().requires_grad_()
            out = local.expectations(spec, t, a)
            rows = [torch.autograd.grad(out[:, i].sum(), (t, a), retain_graph=True) for i in range(spec.n_qubits)]
        return torch.stack([r[0] for r in rows], 1), torch.stack([r[1] for r in rows], 1)


HARDWARE_METHODS = ("shift", "fd", "spsa")  # what needs only forward evaluations (no state vector)
MAX_SHOTS = 2**20  # most shots per token the shot-based backends accept


class ShotsBackend(Backend):
    """Finite-shot sampling, the stand-in for hardware: exact probabilities from the local
    simulator, then `shots` samples per token (seeded), with optional depolarising noise (with
    probability `depolarizing` a shot's outcome is uniformly random) and symmetric readout error
    (each measured bit flips with probability `readout_error`). In expectation
    <Z_i> -> (1 - depolarizing)(1 - 2 readout_error) <Z_i>. `queue_latency_s` imitates a cloud
    device's queue: every job (one `expectations` call, so every shifted batch of a gradient)
    waits that long before it runs."""

    name = "shots"
    methods = HARDWARE_METHODS

    def __init__(
        self,
        shots: int = 1024,
        seed: int | None = None,
        readout_error: float = 0.0,
        depolarizing: float = 0.0,
        queue_latency_s: float = 0.0,
    ):
        problems = []
        if not (isinstance(shots, int) and 1 <= shots <= MAX_SHOTS):
            problems.append(f"shots must be an integer >= 1 and <= {MAX_SHOTS}, got {shots!r}")
        for name, p in (("readout_error", readout_error), ("depolarizing", depolarizing)):
            if not 0.0 <= p <= 1.0:
                problems.append(f"{name} must be a probability in [0, 1], got {p!r}")
        if not (isinstance(queue_latency_s, (int, float)) and math.isfinite(queue_latency_s) and queue_latency_s >= 0):
            problems.append(f"queue_latency_s must be a finite number of seconds >= 0, got {queue_latency_s!r}")
        if problems:
            raise ValueError("invalid shots backend settings: " + "; ".join(problems))
        self.shots, self.readout_error, self.depolarizing = shots, readout_error, depolarizing
        self.queue_latency_s = float(queue_latency_s)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)

    def capabilities(self) -> Capabilities:
        return Capabilities(self.methods, hardware=True, max_shots=MAX_SHOTS, queue_latency_s=self.queue_latency_s)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def expectations(self, spec, theta, angles):
        if self.queue_latency_s:
            time.sleep(self.queue_latency_s)  # the job waits in the device's queue
        with torch.no_grad():
            probs = local.probabilities(spec, theta.detach(), angles.detach()).cpu().double()
        n = spec.n_qubits
        out = torch.empty(probs.shape[0], n, dtype=torch.float64)
        qubits = torch.arange(n)
        step = max(1, 2**22 // (self.shots * n))  # bound the (tokens, shots, n) bit tensor
        for s in range(0, probs.shape[0], step):
            p = probs[s : s + step]
            idx = torch.multinomial(p, self.shots, replacement=True, generator=self.generator)  # (C, shots)
            bits = (idx.unsqueeze(-1) >> qubits) & 1  # (C, shots, n)
            if self.depolarizing:
                hit = torch.rand(idx.shape, generator=self.generator) < self.depolarizing
                noise = torch.randint(0, 2, bits.shape, generator=self.generator)
                bits = torch.where(hit.unsqueeze(-1), noise, bits)
            if self.readout_error:
                bits ^= (torch.rand(bits.shape, generator=self.generator) < self.readout_error).long()
            out[s : s + step] = (1 - 2 * bits).double().mean(1)
        return out.to(angles)


class QulacsBackend(Backend):
    """Qulacs, one token at a time: the qworker's simulator and an independent reference."""

    name = "qulacs"

    def expectations(self, spec, theta, angles):
        from qworker.qulacs_sim import expectations

        return expectations(spec, theta, angles)

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        from qworker.qulacs_sim import adjoint_vjp

        return adjoint_vjp(spec, theta, angles, grad_out)

    def _adjoint_jacobians(self, spec, theta, angles):
        from qworker.qulacs_sim import adjoint_jacobians

        return adjoint_jacobians(spec, theta, angles)


class AutoBackend(Backend):
    """The faster exact simulator for each batch size: Qulacs (token by token) below
    `QULACS_BELOW` tokens, the batched torch simulator from there on. Measured on 2 CPU cores, 10
    qubits: forward, Qulacs 0.2 ms + 0.18 ms a token against local's ~1.2 ms for up to 64 tokens
    (equal near 6); adjoint, Qulacs ~1 ms a token against local's ~4-5 ms (equal near 4). Results
    agree to float rounding, not bit for bit: pin `local` where bits matter."""

    name = "auto"
    QULACS_BELOW = 5

    def __init__(self):
        self.local, self.qulacs = LocalBackend(), QulacsBackend()

    def _pick(self, angles: Tensor) -> Backend:
        return self.qulacs if angles.shape[0] < self.QULACS_BELOW and angles.device.type == "cpu" else self.local

    def expectations(self, spec, theta, angles):
        return self._pick(angles).expectations(spec, theta, angles)

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        return self._pick(angles)._adjoint_vjp(spec, theta, angles, grad_out)

    def _adjoint_jacobians(self, spec, theta, angles):
        return self._pick(angles)._adjoint_jacobians(spec, theta, angles)


BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "qulacs": QulacsBackend,
    "shots": ShotsBackend,
    "auto": AutoBackend,
}
"""The built-in backends: always there, even when the package's entry points are not installed
(run from a source tree); plug-ins come from `ENTRY_POINT_GROUP` (see `available_backends`)."""

ENTRY_POINT_GROUP = "hyqut.backends"


class PluginError(ImportError):
    """A registered backend plug-in could not be loaded: the message names it and its entry point."""


def get_backend(name: str | Backend, **options) -> Backend:
    """A backend by name (built in: `local`, `qulacs`, `shots`; a plug-in of the `hyqut.backends`
    entry point group, e.g. `qiskit`; `grpc://host:port` for a qworker server; `ray` for one started
    here on a local Ray pool, replicas=N), built with its options; an instance passes."""
    if isinstance(name, Backend):
        return name
    if isinstance(name, str) and name.startswith("grpc://"):
        from qworker.remote import RemoteBackend  # lazily: grpc is needed only for remote backends

        return RemoteBackend(name, **options)
    if name == "ray":  # the qworker service on a local Ray pool, started once per process
        from qworker.ray_pool import local_service
        from qworker.remote import RemoteBackend

        address = local_service(options.pop("replicas", 1))
        return RemoteBackend(address, simulator=options.pop("simulator", "local"), **options)
    return backend_class(name)(**options)


def backend_class(name: str) -> type[Backend]:
    """The Backend class registered as `name`: a built-in first, then a plug-in (imported now).
    ValueError listing every available name if none is; PluginError if the plug-in fails to load."""
    if name in BACKENDS:
        return BACKENDS[name]
    plugins = _plugins()
    if name not in plugins:
        names = [*BACKENDS, *sorted(n for n in plugins if n not in BACKENDS)]
        raise ValueError(
            f"unknown backend {name!r}; choose one of {', '.join(names)} (or ray, or grpc://host:port for a qworker "
            f"server); plug-ins register in the {ENTRY_POINT_GROUP!r} entry point group"
        )
    return _load(plugins[name])


def available_backends() -> dict[str, type[Backend]]:
    """Every backend by name: the built-ins, then the plug-ins (each imported; PluginError names
    one that fails). A plug-in cannot replace a built-in name."""
    plugins = _plugins()
    return {**BACKENDS, **{n: _load(plugins[n]) for n in sorted(plugins) if n not in BACKENDS}}


def _plugins() -> dict[str, metadata.EntryPoint]:
    """The group's entry points by name, read from installed metadata now (a few ms), so a plug-in
    installed after import is found; the first registration of a name wins."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _load(ep: metadata.EntryPoint) -> type[Backend]:
    try:
        cls = ep.load()
    except Exception as e:
        raise PluginError(
            f"backend plug-in {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP!r}) failed to import: "
            f"{type(e).__name__}: {e}"
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise PluginError(
            f"backend plug-in {ep.name!r} ({ep.value}) is {cls!r}, not a subclass of qworker.backends.Backend"
        )
    return cls
