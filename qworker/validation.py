"""Checks on a batch before any simulator sees it: every problem named, all raised at once.

`shape_problems` needs only the shapes (a server checks a request from its headers with it);
`check_batch` adds types, dtypes, devices and values (NaN, inf).
"""

from __future__ import annotations

import torch
from torch import Tensor

from qworker.circuit import CircuitSpec

FLOAT_DTYPES = (torch.float32, torch.float64)


class CircuitInputError(ValueError):
    """A batch that cannot be evaluated: wrong shape, dtype or non-finite values."""


def shape_problems(
    spec: CircuitSpec,
    theta: tuple[int, ...] | None,
    angles: tuple[int, ...] | None,
    grad_out: tuple[int, ...] | None = None,
) -> list[str]:
    """What is wrong with these shapes for `spec` (None: that input is checked elsewhere)."""
    n_tok = angles[0] if angles is not None and len(angles) == 2 else None
    problems = []
    for name, shape, ok, want in (
        (
            "theta",
            theta,
            theta in ((spec.n_params,), (n_tok, spec.n_params)),
            f"({spec.n_params},) or (N, {spec.n_params})",
        ),
        (
            "angles",
            angles,
            angles is not None and len(angles) == 2 and angles[1] == spec.n_angles,
            f"(N, {spec.n_angles})",
        ),
        ("grad_out", grad_out, grad_out == (n_tok, spec.n_qubits), f"(N, {spec.n_qubits})"),
    ):
        if shape is not None and not ok:
            problems.append(f"{name} must have shape {want} for {_describe(spec)}, got {tuple(shape)}")
    return problems


def check_batch(spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor | None = None) -> None:
    named = {"theta": theta, "angles": angles, "grad_out": grad_out}
    tensors = {k: t for k, t in named.items() if isinstance(t, Tensor)}
    shapes = {k: tuple(t.shape) for k, t in tensors.items()}
    wrong_shape = shape_problems(spec, shapes.get("theta"), shapes.get("angles"), shapes.get("grad_out"))
    problems = []
    for name, t in named.items():
        if t is None and name == "grad_out":
            continue
        if name not in tensors:
            problems.append(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            continue
        if t.dtype not in FLOAT_DTYPES:
            problems.append(f"{name} must be float32 or float64, got {t.dtype}")
        shape = [p for p in wrong_shape if p.startswith(name + " ")]
        problems += shape
        if not shape and t.dtype in FLOAT_DTYPES and t.numel():
            try:
                check_values(t, name)
            except CircuitInputError as e:
                problems.append(str(e))
    if isinstance(theta, Tensor) and isinstance(angles, Tensor) and theta.device != angles.device:
        problems.append(f"theta is on {theta.device} but angles on {angles.device}")
    if problems:
        raise CircuitInputError("; ".join(problems))


def check_values(t: Tensor, name: str) -> None:
    """CircuitInputError naming `name` if `t` has a non-finite value."""
    bad = ~torch.isfinite(t.detach())
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise CircuitInputError(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {first}")


def _describe(spec: CircuitSpec) -> str:
    return f"a {spec.n_qubits}-qubit, {spec.n_layers}-layer circuit"
