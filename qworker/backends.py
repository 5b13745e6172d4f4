"""Simulators behind one interface (DESIGN.md §4), chosen by name so model code never knows
where a circuit runs.

    backend = get_backend("local")           # or "qulacs", "shots" (shots=, seed=, noise)
    z = backend.expectations(spec, theta, angles)                   # (N, n_q)
    g_theta, g_angles = backend.vjp(spec, theta, angles, g, Gradient("shift"))
    j_theta, j_angles = backend.jacobians(spec, theta, angles, Gradient("fd", delta=1e-3))
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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


class Backend:
    """Where circuits run. Subclasses give `expectations`; `adjoint` is each simulator's own."""

    name = "?"
    methods: tuple[str, ...] = gradients.METHODS

    def capabilities(self) -> Capabilities:
        return Capabilities(self.methods)

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


class ShotsBackend(Backend):
    """Finite-shot sampling, the stand-in for hardware: exact probabilities from the local
    simulator, then `shots` samples per token (seeded), with optional depolarising noise (with
    probability `depolarizing` a shot's outcome is uniformly random) and symmetric readout error
    (each measured bit flips with probability `readout_error`). In expectation
    <Z_i> -> (1 - depolarizing)(1 - 2 readout_error) <Z_i>."""

    name = "shots"
    methods = ("shift", "fd", "spsa")

    def __init__(
        self, shots: int = 1024, seed: int | None = None, readout_error: float = 0.0, depolarizing: float = 0.0
    ):
        problems = []
        if not (isinstance(shots, int) and shots >= 1):
            problems.append(f"shots must be an integer >= 1, got {shots!r}")
        for name, p in (("readout_error", readout_error), ("depolarizing", depolarizing)):
            if not 0.0 <= p <= 1.0:
                problems.append(f"{name} must be a probability in [0, 1], got {p!r}")
        if problems:
            raise ValueError("invalid shots backend settings: " + "; ".join(problems))
        self.shots, self.readout_error, self.depolarizing = shots, readout_error, depolarizing
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)

    def expectations(self, spec, theta, angles):
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


BACKENDS = {"local": LocalBackend, "qulacs": QulacsBackend, "shots": ShotsBackend}


def get_backend(name: str | Backend, **options) -> Backend:
    """A backend by name (`local`, `qulacs`, `shots`, or `grpc://host:port` for a qworker server),
    with its options; an instance passes."""
    if isinstance(name, Backend):
        return name
    if isinstance(name, str) and name.startswith("grpc://"):
        from qworker.remote import RemoteBackend  # lazily: grpc is needed only for remote backends

        return RemoteBackend(name, **options)
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name](**options)
