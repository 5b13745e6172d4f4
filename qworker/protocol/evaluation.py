"""One batched evaluation as plain data, and how a Backend runs it: what a replica decodes a
request into and executes, and what a client builds its requests from.

    ev = Evaluation(spec, "qulacs", theta, angles, want="vjp", grad=Gradient("adjoint"), grad_out=g)
    result = run(get_backend("qulacs"), ev)        # result.vjp == (g_theta, g_angles)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import Tensor

from qworker.backends.base import Backend
from qworker.circuit import CircuitSpec
from qworker.gradients import Gradient

WANTS = ("expectations", "jacobians", "vjp")


@dataclass(frozen=True)
class Evaluation:
    """A validated batch: N tokens through `spec` on the backend named `backend` (built with
    `options`), returning `want` (expectations, jacobians or vjp) by `grad`."""

    spec: CircuitSpec
    backend: str
    theta: Tensor  # (|Θ|,) or (N, |Θ|), the dtype of angles
    angles: Tensor  # (N, 2 n_q)
    want: str = "expectations"
    grad: Gradient | None = None  # required unless want == "expectations"
    grad_out: Tensor | None = None  # (N, n_q), with want == "vjp"
    include_expectations: bool = False
    options: dict = field(default_factory=dict)  # the backend's constructor options (shots, seed, ...)
    components: range | None = None  # shift/fd Jacobians: these columns of [theta | angles] only

    def __post_init__(self) -> None:
        assert self.want in WANTS, f"want must be one of {WANTS}, got {self.want!r}"
        assert self.want == "expectations" or self.grad is not None, f"want={self.want} needs a gradient method"
        assert (self.want == "vjp") == (self.grad_out is not None), "grad_out goes with want='vjp' only"

    @property
    def n_tokens(self) -> int:
        return self.angles.shape[0]

    @property
    def circuits_per_token(self) -> int:
        return circuits_per_token(self.spec, self.want, self.grad, self.include_expectations, self.components)

    @property
    def token_circuits(self) -> int:
        """One-token circuit evaluations this request costs."""
        return self.n_tokens * self.circuits_per_token


def circuits_per_token(
    spec: CircuitSpec, want: str, grad: Gradient | None, include_expectations: bool, components: range | None = None
) -> int:
    """Circuit evaluations each token of a request costs (an adjoint pass counted as one; the
    forward rides in the batch of shift, fd and spsa)."""
    if want == "expectations":
        return 1
    if components is not None:  # a shift or fd work unit
        return 2 * len(components) + int(include_expectations)
    return grad.evaluations(spec) + int(include_expectations and grad.rule.reverse)


@dataclass(frozen=True)
class Result:
    """What an Evaluation returns; the fields it did not ask for are None."""

    expectations: Tensor | None = None  # (N, n_q)
    jacobians: tuple[Tensor, Tensor] | None = None  # (N, n_q, |Θ|), (N, n_q, 2 n_q)
    vjp: tuple[Tensor, Tensor] | None = None  # (|Θ|,), (N, 2 n_q)
    compute_seconds: float = 0.0


def run(backend: Backend, ev: Evaluation) -> Result:
    """Evaluate `ev` on `backend` (already the one it names); raises the backend's own errors."""
    if ev.grad is not None:
        backend.check_method(ev.grad)
    start = time.perf_counter()
    exp = jac = vjp = None
    if ev.want == "jacobians":  # shift, fd, spsa: the expectations ride in the same batch
        exp, *jac = backend.forward_and_jacobians(
            ev.spec, ev.theta, ev.angles, ev.grad, ev.include_expectations, ev.components
        )
        jac = tuple(jac)
    elif ev.want == "expectations" or ev.include_expectations:
        exp = backend.expectations(ev.spec, ev.theta, ev.angles)
    if ev.want == "vjp":
        vjp = tuple(backend.vjp(ev.spec, ev.theta, ev.angles, ev.grad_out, ev.grad))
    return Result(exp, jac, vjp, time.perf_counter() - start)
