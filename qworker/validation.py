"""Checks on a batch before any simulator sees it: every problem named, all raised at once."""

from __future__ import annotations

import torch
from torch import Tensor

from qworker.circuit import CircuitSpec

FLOAT_DTYPES = (torch.float32, torch.float64)


class CircuitInputError(ValueError):
    """A batch that cannot be evaluated: wrong shape, dtype or non-finite values."""


def check_batch(spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor | None = None) -> None:
    problems = []
    n_tok = angles.shape[0] if isinstance(angles, Tensor) and angles.dim() == 2 else None
    for name, t, shape in (
        ("theta", theta, f"({spec.n_params},) or (N, {spec.n_params})"),
        ("angles", angles, f"(N, {spec.n_angles})"),
        ("grad_out", grad_out, f"(N, {spec.n_qubits})"),
    ):
        if t is None and name == "grad_out":
            continue
        if not isinstance(t, Tensor):
            problems.append(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            continue
        if t.dtype not in FLOAT_DTYPES:
            problems.append(f"{name} must be float32 or float64, got {t.dtype}")
        ok_shape = {
            "theta": t.shape == (spec.n_params,) or (t.dim() == 2 and t.shape == (n_tok, spec.n_params)),
            "angles": t.dim() == 2 and t.shape[1] == spec.n_angles,
            "grad_out": t.shape == (n_tok, spec.n_qubits),
        }[name]
        if not ok_shape:
            problems.append(f"{name} must have shape {shape} for {_describe(spec)}, got {tuple(t.shape)}")
        elif t.dtype in FLOAT_DTYPES and t.numel():
            bad = ~torch.isfinite(t.detach())
            if bad.any():
                first = tuple(int(i) for i in bad.nonzero()[0])
                problems.append(f"{name} has {int(bad.sum())} non-finite value(s) (NaN or inf), first at index {first}")
    if isinstance(theta, Tensor) and isinstance(angles, Tensor) and theta.device != angles.device:
        problems.append(f"theta is on {theta.device} but angles on {angles.device}")
    if problems:
        raise CircuitInputError("; ".join(problems))


def _describe(spec: CircuitSpec) -> str:
    return f"a {spec.n_qubits}-qubit, {spec.n_layers}-layer circuit"
