"""The backend interface: where circuits run, behind one contract (docs/design.md, "Backends").

    z = backend.expectations(spec, theta, angles)                   # (N, n_q)
    g_theta, g_angles = backend.vjp(spec, theta, angles, g, Gradient("shift"))
    j_theta, j_angles = backend.jacobians(spec, theta, angles, Gradient("fd", delta=1e-3))
    pending = backend.start(spec, theta, angles, grad)              # forward now, gradients later
    backend.capabilities()                   # Capabilities(methods=..., hardware=..., max_shots=...)
    backend.usage                            # Usage(jobs=..., circuits=..., shots=...) spent so far

    z = backend.apply(spec, theta, angles, grad)  # differentiable: torch autograd calls the VJP in backward

A subclass gives `expectations` (and, for a simulator that exposes its state, `statevector = True`
with `_adjoint_vjp` / `_adjoint_jacobians`); every other gradient method (`qworker.gradients`)
works on top of `expectations` and `evaluate_shifts`. Class attributes say what a backend is, so
nothing elsewhere lists backends by name: `statevector` (which methods it can run), `seeded`
(whether its results draw random numbers: `reseed` and a `seed` option make them reproducible),
`thread_safe` (whether one instance may serve several threads at once).
"""

from __future__ import annotations

import inspect
from dataclasses import astuple, dataclass

import torch
from torch import Tensor

from qworker import gradients
from qworker.circuit import CircuitSpec
from qworker.gradients import Gradient, Shifts, contract


@dataclass(frozen=True)
class Capabilities:
    """What a backend can do, reported by the qworker service's Info (BackendInfo)."""

    methods: tuple[str, ...]  # gradient methods it supports
    hardware: bool = False  # quantum hardware or its emulation: no state vector, no adjoint
    max_shots: int = 0  # largest shots per token it accepts; 0 for exact simulators
    max_batch: int = 0  # most tokens per batch; 0 for no limit of its own
    queue_latency_s: float = 0.0  # typical wait in the device's queue before a job runs
    shots: int = 0  # shots each circuit is sampled with; 0 for exact expectations
    seeded: bool = False  # results draw random numbers that the option `seed` fixes
    options: tuple[str, ...] = ()  # the options it is built with (its constructor's keywords)
    fused: str = ""  # what runs in fused GPU kernels, and what falls back ("" where nothing does)
    mode: str = ""  # a provider's execution mode (qiskit-ibm-runtime's job, batch, session); "" for none


@dataclass
class Usage:
    """What a backend has spent on a device: jobs submitted, circuits run (one parameter set of
    one job is one circuit) and shots taken (circuits times shots each; 0 when exact). A journaled
    adapter (qworker/backends/journal.py) also counts the jobs it fetched by id instead of
    submitting them again (`reused`: not paid twice) and those it submitted again because the
    provider lost them (`resubmitted`: among `jobs`, paid again)."""

    jobs: int = 0
    circuits: int = 0
    shots: int = 0
    reused: int = 0
    resubmitted: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(*(a + b for a, b in zip(astuple(self), astuple(other))))

    def __sub__(self, other: Usage) -> Usage:
        return Usage(*(a - b for a, b in zip(astuple(self), astuple(other))))

    def __mul__(self, n: int) -> Usage:
        return Usage(*(a * n for a in astuple(self)))


class Pending:
    """A forward evaluation whose gradients are on their way (what `Backend.start` returns)."""

    def __init__(self, expectations: Tensor, vjp):
        self.expectations, self._vjp = expectations, vjp

    def vjp(self, grad_out: Tensor) -> tuple[Tensor, Tensor]:
        """(d<L>/dtheta, d<L>/dangles) for L = sum(grad_out * expectations); may wait for them."""
        return self._vjp(grad_out)


class _class_or_instance:  # noqa: N801 - used as a decorator, like property
    """A read-only property that answers on the class too (from its class attributes)."""

    def __init__(self, fn):
        self.fn, self.__doc__ = fn, fn.__doc__

    def __get__(self, obj, cls):
        return self.fn(cls if obj is None else obj)


class Backend:
    """Where circuits run. Subclasses give `expectations`; `adjoint` is each simulator's own."""

    name = "?"
    statevector = False  # exposes its state vector: it can run `adjoint` (and any reverse-mode method)
    seeded = False  # its results draw random numbers (shots, noise): `reseed` and a `seed` option fix them
    thread_safe = True  # one instance may evaluate for several threads at once (no generator or cache it mutates)
    accelerated = False  # computes where its tensors are: a replica with a GPU hands it CUDA tensors

    @_class_or_instance
    def methods(self) -> tuple[str, ...]:
        """The registered gradient methods it can run: all of them on a simulator that exposes its
        state, those that need only forward evaluations elsewhere (also on the class)."""
        return tuple(n for n in gradients.names() if self.statevector or gradients.lookup(n).forward_only)

    def capabilities(self) -> Capabilities:
        """What it can do; a subclass adds its own fields through `_capabilities`."""
        return self._capabilities()

    def _capabilities(self, **fields) -> Capabilities:
        """Capabilities with what every backend reports from its class (methods, seeding, options)."""
        return Capabilities(self.methods, seeded=self.seeded, options=self.option_names(), **fields)

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The options it is built with: its constructor's keyword parameters, which check them."""
        params = inspect.signature(cls.__init__).parameters.values()
        return tuple(p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))

    @property
    def usage(self) -> Usage:
        """Jobs, circuits and shots this backend has submitted so far (a hardware-like backend
        counts them with `account`; a simulator's stay 0)."""
        return self.__dict__.setdefault("_usage", Usage())

    def account(self, circuits: int, shots: int = 0) -> None:
        """Count one submitted job of `circuits` circuits, each sampled `shots` times (0: exact)."""
        u = self.usage
        u.jobs, u.circuits, u.shots = u.jobs + 1, u.circuits + circuits, u.shots + circuits * shots

    def setup_usage(self, spec: CircuitSpec) -> Usage:
        """What the backend spends once before its first call on `spec` (a plan's figure; e.g.
        calibration jobs); nothing by default."""
        return Usage()

    def jobs_for(self, circuits: int) -> int:
        """Jobs a call of `circuits` circuits submits (a plan's figure): one, or none for none;
        an adapter whose device caps a job's size overrides it."""
        return int(circuits > 0)

    def close(self) -> None:
        """Release what the backend holds open at its provider (a Qiskit Runtime session or batch:
        it stops accepting jobs; those submitted run to completion); nothing by default."""

    def reseed(self, seed: int) -> None:
        """Restart this backend's random numbers (shot sampling, noise) from `seed`; no-op for an
        exact simulator. QuantumLinear reseeds before every call from state it checkpoints, so a
        resumed training run draws what the uninterrupted one drew."""

    def start(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient) -> Pending:
        """The forward evaluation, and the gradients to come: `Pending.expectations` now,
        `Pending.vjp(grad_out)` in backward. With shift, fd or spsa the forward rides in the
        gradient's batch (one call, one job on hardware); with adjoint the VJP is computed when
        asked. A remote backend sends the gradient evaluations with the forward call instead, so
        they overlap the classical work."""
        self.check_method(grad)
        if grad.rule.reverse:
            return Pending(self.expectations(spec, theta, angles), lambda g: self.vjp(spec, theta, angles, g, grad))
        z, j_theta, j_angles = self.forward_and_jacobians(spec, theta, angles, grad)
        return Pending(z, lambda g: contract(j_theta, j_angles, g.to(z), theta.dim() == 2))

    def apply(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient) -> Tensor:
        """<Z_i> (N, n_q) as part of torch's autograd graph: backward differentiates by `grad` (the
        forward by `start`, the VJP awaited in backward). What a quantum layer calls, whatever the
        backend and method; a simulator may differentiate by autograd itself (`local` with adjoint)."""
        if not (torch.is_grad_enabled() and (theta.requires_grad or angles.requires_grad)):
            return self.expectations(spec, theta.detach(), angles.detach())
        return _Circuit.apply(theta, angles, self, spec, grad)

    def expectations(self, spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
        """<Z_i> of every token, (N, n_q) in the angles' dtype; theta (|Θ|,) or (N, |Θ|) per token."""
        raise NotImplementedError

    def evaluate_shifts(self, spec: CircuitSpec, shifts: Shifts) -> Tensor:
        """The expectations of every row of a shifted batch, ((base + 2K)·N, n_q): one call (one job
        on hardware). Here the rows are built and evaluated as given; a simulator may use their
        structure instead."""
        return self.expectations(spec, *shifts.rows())

    def vjp(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor, grad: Gradient):
        """(d<L>/dtheta, d<L>/dangles (N, 2n_q)) for L = sum(grad_out * expectations), in the
        angles' dtype; the theta part is (|Θ|,) for a shared theta, (N, |Θ|) for a per-token one."""
        self.check_method(grad)
        out = angles.dtype
        theta, angles = promoted(theta, angles)
        grad_out = grad_out.to(angles.dtype)
        if angles.shape[0] == 0:
            return theta.new_zeros(theta.shape).to(out), angles.new_zeros(angles.shape).to(out)
        g_theta, g_angles = grad.rule.vjp(self, spec, theta, angles, grad_out, grad)
        return g_theta.to(out), g_angles.to(out)

    def jacobians(self, spec: CircuitSpec, theta: Tensor, angles: Tensor, grad: Gradient):
        """(J_theta (N, n_q, |Θ|), J_angles (N, n_q, 2n_q)) by the named method, in the angles' dtype."""
        return self.forward_and_jacobians(spec, theta, angles, grad, expectations=False)[1:]

    def forward_and_jacobians(
        self,
        spec: CircuitSpec,
        theta: Tensor,
        angles: Tensor,
        grad: Gradient,
        expectations: bool = True,
        components: range | None = None,
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        """(the expectations (N, n_q), or None without `expectations`; J_theta; J_angles), computed
        in the wider of the two dtypes, returned in the angles'. shift, fd and spsa evaluate the
        forward in the same batch as the shifts: one backend call. A method computed by columns
        (shift, fd) takes `components`, a range of them over [theta | angles] (a server's work unit)."""
        self.check_method(grad)
        if components is not None and not grad.rule.columns:
            raise ValueError(f"components: method {grad.method!r} does not compute its Jacobian by columns")
        out = angles.dtype
        theta, angles = promoted(theta, angles)
        n_tok, n_q = angles.shape[0], spec.n_qubits
        if n_tok == 0:
            empty = angles.new_zeros((0, n_q)).to(out)
            cols = range(spec.n_params + spec.n_angles) if components is None else components
            n_theta = len(range(cols.start, min(cols.stop, spec.n_params)))
            return (
                (empty if expectations else None),
                empty.new_zeros(0, n_q, n_theta),
                empty.new_zeros(0, n_q, len(cols) - n_theta),
            )
        j_theta, j_angles, z = grad.rule.jacobians(self, spec, theta, angles, grad, expectations, components)
        return (None if z is None else z.to(out)), j_theta.to(out), j_angles.to(out)

    def check_method(self, grad: Gradient) -> None:
        if grad.method not in self.methods:
            why = f" ({grad.method} needs the state vector, which this backend does not expose)"
            raise ValueError(
                f"gradient method {grad.method!r} is not supported by backend {self.name!r}"
                f"{'' if grad.rule.forward_only else why}; choose one of {', '.join(self.methods)}"
            )

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        raise NotImplementedError

    def _adjoint_jacobians(self, spec, theta, angles):
        raise NotImplementedError


def promoted(theta: Tensor, angles: Tensor) -> tuple[Tensor, Tensor]:
    """theta and angles in the wider of their two dtypes (float32 with float64 computes in float64)."""
    wide = torch.promote_types(theta.dtype, angles.dtype)
    return theta.to(wide), angles.to(wide)


class _Circuit(torch.autograd.Function):
    """Forward: `backend.start`, which returns the expectations and, for a remote backend, has
    already sent the gradient evaluations (they run while the classical model goes on).
    Backward: the VJP, awaited only now."""

    @staticmethod
    def forward(ctx, theta, angles, backend: Backend, spec: CircuitSpec, grad: Gradient) -> Tensor:
        ctx.pending = backend.start(spec, theta.detach(), angles.detach(), grad)
        ctx.theta_like, ctx.angles_like = theta.new_empty(0), angles.new_empty(0)
        return ctx.pending.expectations

    @staticmethod
    def backward(ctx, g: Tensor):
        g_theta, g_angles = ctx.pending.vjp(g.contiguous())  # kept: a retained graph may ask again
        return g_theta.to(ctx.theta_like), g_angles.to(ctx.angles_like), None, None, None


MAX_SHOTS = 2**20  # most shots per token the shot-based backends accept
