"""Bad input gets one clear error naming what is wrong, never a crash or garbage."""

import pytest
import torch

import qworker
from qworker import CircuitInputError, CircuitSpec

SPEC = CircuitSpec()


def call(theta=None, angles=None, grad_out=None):
    theta = torch.zeros(40) if theta is None else theta
    angles = torch.zeros(8, 20) if angles is None else angles
    if grad_out is None:
        return qworker.expectations(SPEC, theta, angles)
    return qworker.vjp(SPEC, theta, angles, grad_out)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        (
            {"angles": torch.full((8, 20), float("nan"))},
            "angles has 160 non-finite value(s) (NaN or inf), first at index (0, 0)",
        ),
        (
            {"theta": torch.tensor([0.0] * 39 + [float("inf")])},
            "theta has 1 non-finite value(s) (NaN or inf), first at index (39,)",
        ),
        ({"angles": torch.zeros(8, 19)}, "angles must have shape (N, 20) for a 10-qubit, 2-layer circuit, got (8, 19)"),
        ({"angles": torch.zeros(20)}, "angles must have shape (N, 20)"),
        ({"theta": torch.zeros(41)}, "theta must have shape (40,) or (N, 40)"),
        ({"angles": torch.zeros(8, 20, dtype=torch.int64)}, "angles must be float32 or float64, got torch.int64"),
        ({"theta": torch.zeros(40, dtype=torch.float16)}, "theta must be float32 or float64, got torch.float16"),
        ({"grad_out": torch.zeros(8, 9)}, "grad_out must have shape (N, 10)"),
        ({"angles": [[0.0] * 20]}, "angles must be a torch.Tensor, got list"),
    ],
)
def test_bad_batches(kwargs, words):
    with pytest.raises(CircuitInputError) as err:
        call(**kwargs)
    assert words in str(err.value)


def test_all_problems_at_once():
    with pytest.raises(CircuitInputError, match="theta must have shape.*angles must be float32"):
        call(theta=torch.zeros(3), angles=torch.zeros(8, 20, dtype=torch.int32))


def test_too_many_qubits_for_memory_says_how_much():
    spec = CircuitSpec(n_qubits=30, n_layers=1)
    with pytest.raises(MemoryError, match=r"n_qubits=30 needs \d+\.\d GiB .*2\^30 amplitudes.* available"):
        qworker.expectations(spec, torch.zeros(spec.n_params), torch.zeros(1, spec.n_angles))
    with pytest.raises(MemoryError, match="n_qubits=30 needs"):
        qworker.expectations(spec, torch.zeros(spec.n_params), torch.zeros(1, spec.n_angles), backend="qulacs")


@pytest.mark.parametrize(
    "call_,words",
    [
        (
            lambda: qworker.jacobians(SPEC, torch.zeros(40), torch.zeros(2, 20), method="backprop"),
            "unknown gradient method 'backprop'",
        ),
        (
            lambda: qworker.expectations(SPEC, torch.zeros(40), torch.zeros(2, 20), backend="ibm"),
            "unknown backend 'ibm'; choose one of local, qulacs, shots",
        ),
        (lambda: CircuitSpec(entangler="all"), "unknown entangler 'all'"),
    ],
)
def test_unknown_names(call_, words):
    with pytest.raises(ValueError, match=words):
        call_()
