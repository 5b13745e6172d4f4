"""Gradient methods (docs/design.md, "Gradients") and the estimators that need only forward evaluations.

`shift`, `fd` and `spsa` work on any backend, hardware included: each builds ONE batch of shifted
evaluations and hands it to the backend in one call (on hardware, one job). `shift` and `fd`
send a `Shifts` batch, which a simulator may evaluate by its structure (`local` does: a suffix of
the circuit per component, not a whole circuit per row); `spsa` sends plain rows. `adjoint` is
each simulator's own.

Shapes, whatever the backend: J_theta (N, n_q, |Θ|), J_angles (N, n_q, 2n_q); a VJP's theta part
is (|Θ|,) for a shared theta and (N, |Θ|) for a per-token theta.

Evaluations per token, the forward included: shift and fd, 1 + 2·(|Θ| + 2·n_q); spsa, 1 + 2·samples.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
from torch import Tensor

from qworker.circuit import CircuitSpec

METHODS = ("adjoint", "shift", "fd", "spsa")
MIN_DELTA = 1e-8  # below this an fd step is lost in float64 rounding: its Jacobians would be noise


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
        if not (isinstance(self.delta, (int, float)) and MIN_DELTA <= self.delta <= math.pi):
            problems.append(
                f"delta must be a finite number > 0, at least {MIN_DELTA:g} and at most π, got {self.delta!r}"
            )
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


@dataclass(frozen=True)
class Shifts:
    """The shifted evaluations of `shift` and `fd` as one batch of rows, in this order: the N
    tokens unshifted (if `base`), then for each parameter component k of `components` the N
    tokens with k shifted by +step, then by -step. Components run over theta (k < |Θ|), then the
    input angles (|Θ| + j for angle j). theta is (|Θ|,) shared or (N, |Θ|) per token."""

    theta: Tensor
    angles: Tensor
    step: float
    components: range
    base: bool = False

    @property
    def n_rows(self) -> int:
        return self.angles.shape[0] * (int(self.base) + 2 * len(self.components))

    def rows(self) -> tuple[Tensor, Tensor]:
        """Every row: theta (R, |Θ|) and angles (R, 2n_q), for a backend that evaluates rows as given."""
        n_tok, n_params = self.angles.shape[0], self.theta.shape[-1]
        theta = self.theta.expand(n_tok, n_params)
        thetas, angles = ([theta], [self.angles]) if self.base else ([], [])
        for k in self.components:
            for sign in (1.0, -1.0):
                t, a = theta.clone(), self.angles.clone()
                if k < n_params:
                    t[:, k] += sign * self.step
                else:
                    a[:, k - n_params] += sign * self.step
                thetas.append(t)
                angles.append(a)
        if not thetas:
            return theta[:0], self.angles[:0]
        return torch.cat(thetas), torch.cat(angles)


def shifted_jacobians(
    backend,
    spec: CircuitSpec,
    theta: Tensor,
    angles: Tensor,
    grad: Gradient,
    base: bool = False,
    components: range | None = None,
):
    """`shift` (parameter shift, ±π/2, exact: every angle drives exactly one rotation gate) or
    `fd` (central differences with step delta), from one `backend.evaluate_shifts` call. Returns
    (J_theta (N, n_q, |Θ|), J_angles (N, n_q, 2n_q), the expectations (N, n_q) if `base` else
    None); with `components`, only those columns of [theta | angles], split the same way."""
    s, scale = (math.pi / 2, 0.5) if grad.method == "shift" else (grad.delta, 0.5 / grad.delta)
    n_tok, n_params, n_q = angles.shape[0], spec.n_params, spec.n_qubits
    components = range(n_params + spec.n_angles) if components is None else components
    out = backend.evaluate_shifts(spec, Shifts(theta, angles, s, components, base))
    out = out.reshape(int(base) + 2 * len(components), n_tok, n_q)
    pairs = out[int(base) :].reshape(len(components), 2, n_tok, n_q)  # (K, ±, N, n_q)
    j = ((pairs[:, 0] - pairs[:, 1]) * scale).permute(1, 2, 0)  # (N, n_q, K)
    split = len(range(components.start, min(components.stop, n_params)))  # how many are theta's
    return j[..., :split], j[..., split:], out[0] if base else None


def spsa_jacobians(backend, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient, base: bool = False):
    """Simultaneous perturbation: every theta and every angle of every token moved at once along
    a random ±1 direction; unbiased up to O(delta^2), averaged over `samples` directions. All
    2·samples shifted copies of the batch (and, with `base`, the batch itself) go to the backend
    in one `expectations` call. Returns (J_theta, J_angles, expectations or None)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(grad.seed if grad.seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)
    c, n_tok, k = grad.delta, angles.shape[0], grad.samples
    per_token = theta.dim() == 2
    d_theta = _rademacher((k, *theta.shape), gen).to(theta)  # (k, |Θ|) or (k, N, |Θ|)
    d_angles = _rademacher((k, *angles.shape), gen).to(angles)  # (k, N, 2n_q)
    shifts_theta = torch.stack((d_theta, -d_theta), 1).reshape(2 * k, n_tok if per_token else 1, theta.shape[-1])
    rows_theta = theta.expand(n_tok, -1) + c * shifts_theta
    rows_angles = angles + c * torch.stack((d_angles, -d_angles), 1).reshape(2 * k, n_tok, -1)
    rows = 2 * k * n_tok
    rows_theta, rows_angles = rows_theta.reshape(rows, theta.shape[-1]), rows_angles.reshape(rows, angles.shape[1])
    if base:
        rows_theta = torch.cat((theta.expand(n_tok, -1), rows_theta))
        rows_angles = torch.cat((angles, rows_angles))
    out = backend.expectations(spec, rows_theta, rows_angles).reshape(int(base) + 2 * k, n_tok, spec.n_qubits)
    pairs = out[int(base) :].reshape(k, 2, n_tok, spec.n_qubits)
    diff = (pairs[:, 0] - pairs[:, 1]) / (2 * c)  # (k, N, n_q); 1/Δ = Δ for ±1 directions
    d_t = d_theta[:, :, None, :] if per_token else d_theta[:, None, None, :]  # (k, N or 1, 1, |Θ|)
    j_theta = (diff[..., None] * d_t).mean(0)
    j_angles = (diff[..., None] * d_angles[:, :, None, :]).mean(0)
    return j_theta, j_angles, out[0] if base else None


def _rademacher(shape, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen).mul_(2).sub_(1).to(torch.float64)


def contract(j_theta: Tensor, j_angles: Tensor, grad_out: Tensor, per_token: bool = False) -> tuple[Tensor, Tensor]:
    """VJP from Jacobians: grad_out (N, n_q) -> theta's ((|Θ|,), or (N, |Θ|) per token), (N, 2n_q)."""
    g_theta = torch.einsum("ni,nip->np" if per_token else "ni,nip->p", grad_out, j_theta)
    return g_theta, torch.einsum("ni,nia->na", grad_out, j_angles)
