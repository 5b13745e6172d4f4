"""Gradient methods (docs/design.md, "Gradients") and the estimators that need only forward evaluations.

`shift`, `fd` and `spsa` work on any backend, hardware included: they call the backend's
`expectations` on shifted inputs. Each returns Jacobians with respect to theta and the input
angles; a VJP is their contraction with the upstream gradient. `adjoint` is the backend's own.

Costs, in forward evaluations of the whole batch (the forward itself not counted):
shift and fd, 2·(|Θ| + 2·n_q); spsa, 2·samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from qworker.circuit import CircuitSpec

METHODS = ("adjoint", "shift", "fd", "spsa")

Expectations = Callable[[CircuitSpec, Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Gradient:
    """How to differentiate a circuit: the method and its settings (the wire carries them).

    delta: the step of `fd` (central differences, error O(delta^2)) and the perturbation of
    `spsa`. samples: SPSA estimates averaged per call. seed: SPSA's random directions (None draws
    a fresh seed per call)."""

    method: str = "adjoint"
    delta: float = 1e-2
    samples: int = 8
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.method not in METHODS:
            problems.append(f"unknown gradient method {self.method!r}; choose one of {', '.join(METHODS)}")
        if not (isinstance(self.delta, (int, float)) and math.isfinite(self.delta) and self.delta > 0):
            problems.append(f"delta must be a finite number > 0, got {self.delta!r}")
        if not (isinstance(self.samples, int) and self.samples >= 1):
            problems.append(f"samples must be an integer >= 1, got {self.samples!r}")
        if problems:
            raise ValueError("invalid gradient settings: " + "; ".join(problems))

    def evaluations(self, spec: CircuitSpec) -> int:
        """Forward evaluations of the batch per call, the forward pass included."""
        if self.method in ("shift", "fd"):
            return 1 + 2 * (spec.n_params + spec.n_angles)
        if self.method == "spsa":
            return 1 + 2 * self.samples
        return 1


def shifted_jacobians(f: Expectations, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient):
    """`shift` (parameter shift, ±π/2, exact: every angle drives exactly one rotation gate) or
    `fd` (central differences with step delta). Returns J_theta (N, n_q, |Θ|), J_angles
    (N, n_q, 2n_q)."""
    s, scale = (math.pi / 2, 0.5) if grad.method == "shift" else (grad.delta, 0.5 / grad.delta)
    n_tok, n_ang = angles.shape
    j_theta = []
    for k in range(spec.n_params):  # theta is shared by the batch: one evaluation per shift
        e = torch.zeros_like(theta)
        e[k] = s
        j_theta.append((f(spec, theta + e, angles) - f(spec, theta - e, angles)) * scale)
    # angle shifts: all 2·2n_q shifted copies of the batch go to the backend as one batch
    eye = torch.eye(n_ang, dtype=angles.dtype, device=angles.device) * s
    shifted = torch.cat([angles + eye[:, None, :], angles - eye[:, None, :]])  # (2·2n_q, N, 2n_q)
    out = f(spec, theta, shifted.reshape(-1, n_ang)).reshape(2, n_ang, n_tok, -1)
    j_angles = ((out[0] - out[1]) * scale).permute(1, 2, 0)  # (N, n_q, 2n_q)
    j_theta = torch.stack(j_theta, -1) if j_theta else angles.new_zeros(n_tok, spec.n_qubits, 0)
    return j_theta, j_angles


def spsa_jacobians(f: Expectations, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient):
    """Simultaneous perturbation: every theta and every angle of every token moved at once along
    a random ±1 direction; unbiased up to O(delta^2), averaged over `samples` directions."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(grad.seed if grad.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    c = grad.delta
    j_theta = angles.new_zeros(angles.shape[0], spec.n_qubits, spec.n_params)
    j_angles = angles.new_zeros(angles.shape[0], spec.n_qubits, spec.n_angles)
    for _ in range(grad.samples):
        d_theta = _rademacher(theta.shape, gen).to(theta)
        d_angles = _rademacher(angles.shape, gen).to(angles)
        diff = f(spec, theta + c * d_theta, angles + c * d_angles) - f(spec, theta - c * d_theta, angles - c * d_angles)
        diff = diff / (2 * c)  # (N, n_q); 1/Δ = Δ for ±1 directions
        j_theta += diff[:, :, None] * d_theta
        j_angles += diff[:, :, None] * d_angles[:, None, :]
    return j_theta / grad.samples, j_angles / grad.samples


def _rademacher(shape, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen).mul_(2).sub_(1).to(torch.float64)


def contract(j_theta: Tensor, j_angles: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """VJP from Jacobians: grad_out (N, n_q) -> (|Θ|,), (N, 2n_q)."""
    return torch.einsum("ni,nip->p", grad_out, j_theta), torch.einsum("ni,nia->na", grad_out, j_angles)
