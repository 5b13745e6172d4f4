"""The backend interface: where circuits run, behind one contract (docs/design.md, "Backends").

    z = backend.expectations(spec, theta, angles)                   # (N, n_q)
    g_theta, g_angles = backend.vjp(spec, theta, angles, g, Gradient("shift"))
    j_theta, j_angles = backend.jacobians(spec, theta, angles, Gradient("fd", delta=1e-3))
    pending = backend.start(spec, theta, angles, grad)              # forward now, gradients later
    backend.capabilities()                   # Capabilities(methods=..., hardware=..., max_shots=...)

A subclass gives `expectations` (and, for a simulator, `_adjoint_vjp` / `_adjoint_jacobians`);
`shift`, `fd` and `spsa` come from `qworker.gradients` on top of `expectations`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from qworker import gradients
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


HARDWARE_METHODS = ("shift", "fd", "spsa")  # what needs only forward evaluations (no state vector)
MAX_SHOTS = 2**20  # most shots per token the shot-based backends accept
