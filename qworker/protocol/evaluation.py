"""One batched evaluation as plain data, and how a Backend runs it: what a replica decodes a
request into and executes, and what a client builds its requests from.

    ev = Evaluation.of(spec, "qulacs", theta, angles, want="vjp", grad=Gradient("adjoint"), grad_out=g)
    ev.header.token_circuits                        # what the server knows without the tensors
    result = run(get_backend("qulacs"), ev)        # result.vjp == (g_theta, g_angles)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from qworker.backends.base import Backend
from qworker.circuit import CircuitSpec
from qworker.gradients import Gradient, contract

WANTS = ("expectations", "jacobians", "vjp")
SHOT_WORK = 6  # amplitude-circuits one sampled shot costs (the shots backend: 4.2e8 shots of 5 qubits in 70 s on
# one core, 2^25 amplitude-circuits/s): what keeps a request of many shots within the work limit


@dataclass(frozen=True)
class Header:
    """What a request asks, without its tensors: N tokens through `spec` on the backend named
    `backend` (built with `options`), returning `want` (expectations, jacobians or vjp) by `grad`.
    Enough for a server to check its limits, label its metrics and cut it into work units."""

    spec: CircuitSpec
    backend: str
    want: str = "expectations"
    grad: Gradient | None = None  # required unless want == "expectations"
    n_tokens: int = 0
    itemsize: int = 4  # of the angles (the results' dtype)
    per_token_theta: bool = False
    include_expectations: bool = False  # with jacobians or vjp: the expectations too
    options: dict = field(default_factory=dict)  # the backend's constructor options (shots, seed, ...)
    components: range | None = None  # a Jacobian by columns: these columns of [theta | angles] only
    keep_jacobians: bool = False  # jacobians: keep them where computed, answer a handle
    handle: str = ""  # vjp: of the Jacobians kept under this handle (no theta, no angles)

    def __post_init__(self) -> None:
        assert self.want in WANTS, f"want must be one of {WANTS}, got {self.want!r}"
        assert self.want == "expectations" or self.grad is not None, f"want={self.want} needs a gradient method"

    @property
    def circuits_per_token(self) -> int:
        """Circuit evaluations each token costs (an adjoint pass counted as one; the forward rides
        in the batch of a method that is not reverse-mode)."""
        if self.want == "expectations":
            return 1
        columns = None if self.components is None else len(self.components)  # a work unit: some columns
        extra = int(self.include_expectations and self.grad.rule.reverse)
        return self.grad.rule.evaluations(self.spec, self.grad, columns) + extra

    @property
    def token_circuits(self) -> int:
        """One-token circuit evaluations this request costs."""
        return self.n_tokens * self.circuits_per_token

    @property
    def work_per_token(self) -> int:
        """Amplitude-circuits a token costs: its circuits x (2^n_qubits, and SHOT_WORK a sampled
        shot), what a simulator's time scales with."""
        shots = int(self.options.get("shots") or 0)
        return self.circuits_per_token * ((1 << self.spec.n_qubits) + SHOT_WORK * shots)

    @property
    def work(self) -> int:
        """Amplitude-circuits of the whole request (`work_per_token` x tokens)."""
        return self.n_tokens * self.work_per_token


@dataclass(frozen=True)
class Evaluation:
    """A validated batch: its `header` and its tensors."""

    header: Header
    theta: Tensor | None  # (|Θ|,) or (N, |Θ|); None with a handle
    angles: Tensor | None  # (N, 2 n_q); None with a handle
    grad_out: Tensor | None = None  # (N, n_q), with want == "vjp"

    def __post_init__(self) -> None:
        assert (self.header.want == "vjp") == (self.grad_out is not None), "grad_out goes with want='vjp' only"

    @classmethod
    def of(
        cls,
        spec: CircuitSpec,
        backend: str,
        theta: Tensor,
        angles: Tensor,
        want: str = "expectations",
        grad: Gradient | None = None,
        grad_out: Tensor | None = None,
        include_expectations: bool = False,
        options: dict | None = None,
        components: range | None = None,
        keep_jacobians: bool = False,
    ) -> Evaluation:
        """An Evaluation from its parts; the header's sizes are read from the tensors."""
        header = Header(
            spec, backend, want, grad, angles.shape[0], angles.element_size(), theta.dim() == 2,
            include_expectations, dict(options or {}), components, keep_jacobians,
        )  # fmt: skip
        return cls(header, theta, angles, grad_out)


@dataclass(frozen=True)
class Result:
    """What an Evaluation returns; the fields it did not ask for are None."""

    expectations: Tensor | None = None  # (N, n_q)
    jacobians: tuple[Tensor, Tensor] | None = None  # (N, n_q, |Θ|), (N, n_q, 2 n_q)
    vjp: tuple[Tensor, Tensor] | None = None  # (|Θ|,), (N, 2 n_q)
    compute_seconds: float = 0.0
    handle: str = ""  # with keep_jacobians: what names the kept Jacobians


def run(backend: Backend, ev: Evaluation) -> Result:
    """Evaluate `ev` on `backend` (already the one it names); raises the backend's own errors."""
    h = ev.header
    if h.grad is not None:
        backend.check_method(h.grad)
    start = time.perf_counter()
    exp = jac = vjp = None
    if h.want == "jacobians":  # shift, fd, spsa: the expectations ride in the same batch
        exp, *jac = backend.forward_and_jacobians(
            h.spec, ev.theta, ev.angles, h.grad, h.include_expectations, h.components
        )
        jac = tuple(jac)
    elif h.want == "expectations" or h.include_expectations:
        exp = backend.expectations(h.spec, ev.theta, ev.angles)
    if h.want == "vjp":  # (a replica asks for a non-reverse method's Jacobians and contracts them itself)
        vjp = tuple(backend.vjp(h.spec, ev.theta, ev.angles, ev.grad_out, h.grad))
    return Result(exp, jac, vjp, time.perf_counter() - start)


def vjp_of(j_theta: Tensor, j_angles: Tensor, grad_out: Tensor, per_token: bool) -> tuple[Tensor, Tensor]:
    """The VJP of one unit's Jacobians (of some columns, with `components`), in their dtype: what
    a kept handle, a recomputation and a client contracting dense Jacobians all compute (through
    `shards.vjp_by_units`). On the CPU in
    numpy's einsum, whose sums run in one fixed order (torch's split across however many threads
    a process has), so the three give the same bits."""
    if j_theta.device.type != "cpu":
        return contract(j_theta, j_angles, grad_out, per_token)
    g, jt, ja = (t.detach().contiguous().numpy() for t in (grad_out, j_theta, j_angles))  # one layout: one order
    g_theta = np.einsum("ni,nip->np" if per_token else "ni,nip->p", g, jt, optimize=False)
    return torch.from_numpy(g_theta), torch.from_numpy(np.einsum("ni,nia->na", g, ja, optimize=False))
