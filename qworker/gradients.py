"""Gradient methods (docs/design.md, "Gradients"): each one object, registered by name in one place.

A `Method` says what it costs (circuit evaluations per token), whether it needs the state vector
(`adjoint` does: simulators only) or only forward evaluations (any backend, hardware included),
whether its Jacobian is computed column by column (a server may then split the columns over
replicas), whether it draws random numbers, and how it computes Jacobians (or a VJP) on a backend.
A `Gradient` is the method's name with its settings (what the wire and run.json carry).

    rule = Gradient("fd", delta=1e-3).rule            # the FiniteDifferences object
    rule.evaluations(spec, grad)                      # 121 for the default circuit
    register(MyMethod())                              # a new method, for every backend that can run it

`shift`, `fd` and `spsa` build ONE batch of shifted evaluations and hand it to the backend in one
call (on hardware, one job). `shift` and `fd` send a `Shifts` batch, which a simulator may
evaluate by its structure (`local` does: a suffix of the circuit per component, not a whole
circuit per row); `spsa` sends plain rows. `adjoint` is each simulator's own.

Shapes, whatever the backend: J_theta (N, n_q, |Θ|), J_angles (N, n_q, 2n_q); a VJP's theta part
is (|Θ|,) for a shared theta and (N, |Θ|) for a per-token theta.

A plug-in in another distribution registers its methods through the `hyqut.gradients` entry point
group (a Method class or instance per name; `qworker.backends.registry` loads them when `qworker`
is imported), so every process of a service finds them too. This module does no I/O.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from qworker.circuit import CircuitSpec

MIN_DELTA = 1e-8  # below this an fd step is lost in float64 rounding: its Jacobians would be noise


class Method:
    """A gradient method. Subclasses set the flags and give `jacobians` (and, for a reverse-mode
    method, `vjp`); `name` is what `Gradient.method`, `--grad` and the wire carry.

    forward_only: needs only forward evaluations of the circuit (no state vector): any backend,
        hardware included, can run it; False means simulators that expose their state (`adjoint`).
    reverse: computes the VJP from the upstream gradient (reverse mode, in backward) instead of
        Jacobians ahead of it; its evaluations do not include the forward pass.
    columns: computes its Jacobian column by column over [theta | angles] and accepts
        `components` (a range of columns): a server may split those over replicas.
    stochastic: draws random numbers from `Gradient.seed` (a trainer seeds each call)."""

    name = "?"
    forward_only = True
    reverse = False
    columns = False
    stochastic = False

    def evaluations(self, spec: CircuitSpec, grad: Gradient, columns: int | None = None) -> int:
        """One-token circuit evaluations one token's Jacobians cost, over `columns` of their
        columns if the method computes by columns (all by default); the forward included unless
        `reverse` (an adjoint pass counts as one)."""
        raise NotImplementedError

    def training_evaluations(self, spec: CircuitSpec, grad: Gradient) -> float:
        """Forward-equivalent evaluations per token of a training step, forward and gradient."""
        return self.evaluations(spec, grad)

    def jacobians(
        self,
        backend,
        spec: CircuitSpec,
        theta: Tensor,
        angles: Tensor,
        grad: Gradient,
        base: bool,
        components: range | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(J_theta, J_angles, the expectations if `base` else None) of a non-empty batch, theta
        and angles already in one dtype; with `components` (only if `columns`), just those columns
        of [theta | angles], split the same way."""
        raise NotImplementedError

    def vjp(self, backend, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor, grad: Gradient):
        """(d<L>/dtheta, d<L>/dangles) for L = sum(grad_out * expectations): from the Jacobians
        unless the method is reverse-mode."""
        j_theta, j_angles, _ = self.jacobians(backend, spec, theta, angles, grad, base=False)
        return contract(j_theta, j_angles, grad_out, theta.dim() == 2)


class Adjoint(Method):
    """Exact, by the simulator's own reverse sweep (`Backend._adjoint_vjp`, `_adjoint_jacobians`):
    about three forward passes' work for the forward and the gradient together."""

    name, forward_only, reverse = "adjoint", False, True

    def evaluations(self, spec, grad, columns=None):
        return 1

    def training_evaluations(self, spec, grad):
        return 3  # the forward, then one backward sweep carrying the state and its cotangent (~2 forwards)

    def jacobians(self, backend, spec, theta, angles, grad, base, components=None):
        z = backend.expectations(spec, theta, angles) if base else None
        return (*backend._adjoint_jacobians(spec, theta, angles), z)

    def vjp(self, backend, spec, theta, angles, grad_out, grad):
        return backend._adjoint_vjp(spec, theta, angles, grad_out)


class Shifted(Method):
    """Two shifted evaluations per parameter component, (f(+s) - f(-s)) x scale, all in one
    `Shifts` batch (one backend call, one job on hardware)."""

    columns = True

    def step_and_scale(self, grad: Gradient) -> tuple[float, float]:
        raise NotImplementedError

    def evaluations(self, spec, grad, columns=None):
        return 1 + 2 * (spec.n_params + spec.n_angles if columns is None else columns)

    def jacobians(self, backend, spec, theta, angles, grad, base, components=None):
        step, scale = self.step_and_scale(grad)
        n_tok, n_params, n_q = angles.shape[0], spec.n_params, spec.n_qubits
        components = range(n_params + spec.n_angles) if components is None else components
        out = backend.evaluate_shifts(spec, Shifts(theta, angles, step, components, base))
        out = out.reshape(int(base) + 2 * len(components), n_tok, n_q)
        pairs = out[int(base) :].reshape(len(components), 2, n_tok, n_q)  # (K, ±, N, n_q)
        j = ((pairs[:, 0] - pairs[:, 1]) * scale).permute(1, 2, 0)  # (N, n_q, K)
        split = len(range(components.start, min(components.stop, n_params)))  # how many are theta's
        return j[..., :split], j[..., split:], out[0] if base else None


class ParameterShift(Shifted):
    """Parameter shift, ±π/2: exact, since every angle drives exactly one Pauli rotation."""

    name = "shift"

    def step_and_scale(self, grad):
        return math.pi / 2, 0.5


class FiniteDifferences(Shifted):
    """Central finite differences of step `delta`: error O(delta²) (the paper's method)."""

    name = "fd"

    def step_and_scale(self, grad):
        return grad.delta, 0.5 / grad.delta


class SPSA(Method):
    """Simultaneous perturbation: every theta and every angle of every token moved at once along
    a random ±1 direction; unbiased up to O(delta²), averaged over `samples` directions. All
    2·samples shifted copies of the batch (and, with `base`, the batch itself) go to the backend
    in one `expectations` call."""

    name, stochastic = "spsa", True

    def evaluations(self, spec, grad, columns=None):
        return 1 + 2 * grad.samples

    def jacobians(self, backend, spec, theta, angles, grad, base, components=None):
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


_REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make `method` known by its name to every backend of this process (and so to a service's
    in-process pool); a name already taken is refused. Returns it."""
    if not (isinstance(method, Method) and isinstance(method.name, str) and method.name.isidentifier()):
        raise ValueError(f"register takes a Method instance with a name like 'fd', got {method!r}")
    if method.name in _REGISTRY and _REGISTRY[method.name] is not method:
        raise ValueError(f"gradient method {method.name!r} is already registered")
    _REGISTRY[method.name] = method
    return method


for _builtin in (Adjoint(), ParameterShift(), FiniteDifferences(), SPSA()):
    register(_builtin)
ADJOINT = _REGISTRY["adjoint"]


def names() -> tuple[str, ...]:
    """Every registered method's name: the built-ins first, then plug-ins and registered ones."""
    return tuple(_REGISTRY)


def lookup(name: str) -> Method:
    """The method registered as `name`; ValueError listing the registered names if none is."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown gradient method {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


@dataclass(frozen=True)
class Gradient:
    """How to differentiate a circuit: a registered method's name and its settings (the wire
    carries them).

    delta: the step of `fd` (central differences, error O(delta^2)) and the perturbation of
    `spsa`. samples: SPSA estimates averaged per call. seed: the random numbers of a stochastic
    method (SPSA's directions; None draws a fresh seed per call)."""

    method: str = "adjoint"
    delta: float = 1e-2
    samples: int = 8
    seed: int | None = None

    def __post_init__(self) -> None:
        problems = []
        try:
            lookup(self.method)
        except ValueError as e:
            problems.append(str(e))
        if not (isinstance(self.delta, (int, float)) and MIN_DELTA <= self.delta <= math.pi):
            problems.append(
                f"delta must be a finite number > 0, at least {MIN_DELTA:g} and at most π, got {self.delta!r}"
            )
        if not (isinstance(self.samples, int) and self.samples >= 1):
            problems.append(f"samples must be an integer >= 1, got {self.samples!r}")
        if problems:
            raise ValueError("invalid gradient settings: " + "; ".join(problems))

    @property
    def rule(self) -> Method:
        """The registered Method this gradient names."""
        return lookup(self.method)

    def evaluations(self, spec: CircuitSpec) -> int:
        """One-token circuit evaluations of one token's Jacobians (`Method.evaluations`)."""
        return self.rule.evaluations(spec, self)

    def seeded(self, seed: int) -> Gradient:
        """These settings with `seed` if the method draws random numbers; else unchanged."""
        return replace(self, seed=seed) if self.rule.stochastic else self


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


def _rademacher(shape, gen: torch.Generator) -> Tensor:
    return torch.randint(0, 2, shape, generator=gen).mul_(2).sub_(1).to(torch.float64)


def contract(j_theta: Tensor, j_angles: Tensor, grad_out: Tensor, per_token: bool = False) -> tuple[Tensor, Tensor]:
    """VJP from Jacobians: grad_out (N, n_q) -> theta's ((|Θ|,), or (N, |Θ|) per token), (N, 2n_q)."""
    g_theta = torch.einsum("ni,nip->np" if per_token else "ni,nip->p", grad_out, j_theta)
    return g_theta, torch.einsum("ni,nia->na", grad_out, j_angles)
