"""The `pennylane` adapter against the `local` simulator: exact on default.qubit (and lightning.qubit),
statistically right with shots, one device execution per call (PennyLane's own tracker counts)."""

import math

import pytest
import torch

from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import Usage

qml = pytest.importorskip("pennylane")


def batch(spec, n_tok, seed=0, per_token_theta=False):
    g = torch.Generator().manual_seed(seed)
    theta_shape = (n_tok, spec.n_params) if per_token_theta else (spec.n_params,)
    theta = torch.rand(theta_shape, generator=g, dtype=torch.float64) * 6 - 3
    return theta, torch.rand(n_tok, spec.n_angles, generator=g, dtype=torch.float64) * 6 - 3


@pytest.mark.parametrize("device", ["default.qubit", "lightning.qubit"])
@pytest.mark.parametrize("spec", [CircuitSpec(3, 2, "ring"), CircuitSpec(4, 1, "chain")], ids=str)
def test_exact_matches_local(device, spec):
    theta, angles = batch(spec, 6)
    z = get_backend("pennylane", device=device).expectations(spec, theta, angles)
    assert z.shape == (6, spec.n_qubits) and z.dtype == torch.float64
    torch.testing.assert_close(z, get_backend("local").expectations(spec, theta, angles), atol=1e-6, rtol=0)


def test_per_token_theta_one_token_and_none():
    spec, backend = CircuitSpec(3, 1), get_backend("pennylane")
    theta, angles = batch(spec, 4, seed=1, per_token_theta=True)
    local = get_backend("local")
    z = backend.expectations(spec, theta.float(), angles.float())
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, local.expectations(spec, theta, angles).float(), atol=1e-6, rtol=0)
    one = backend.expectations(spec, theta[0], angles[:1])
    torch.testing.assert_close(one, local.expectations(spec, theta[0], angles[:1]), atol=1e-6, rtol=0)
    assert backend.expectations(spec, theta[0], angles[:0]).shape == (0, 3)


def test_fd_jacobians_are_one_execution_and_match_local():
    spec = CircuitSpec(3, 1)
    theta, angles = batch(spec, 3, seed=2)
    backend = get_backend("pennylane")
    with qml.Tracker(backend.qnode(spec).device) as tracker:
        z, j_theta, j_angles = backend.forward_and_jacobians(spec, theta, angles, Gradient("shift"))
    rows = 3 * (1 + 2 * (spec.n_params + spec.n_angles))
    assert tracker.totals["batches"] == 1 and tracker.totals["executions"] == rows  # one batch: every row
    assert backend.usage == Usage(jobs=1, circuits=rows, shots=0)
    ref = get_backend("local").forward_and_jacobians(spec, theta, angles, Gradient("adjoint"))
    for got, want in zip((z, j_theta, j_angles), ref):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)


def test_shots_within_standard_errors_and_seeded():
    spec, shots = CircuitSpec(3, 2), 4000
    theta, angles = batch(spec, 30, seed=3)
    exact = get_backend("local").expectations(spec, theta, angles)
    backend = get_backend("pennylane", shots=shots, seed=7)
    z = backend.expectations(spec, theta, angles)
    se = ((1 - exact**2) / shots).sqrt().clamp_min(1e-3)  # the binomial standard error of each estimate
    assert ((z - exact).abs() / se).max() < 5  # 90 estimates, each within 5 standard errors
    assert (z - exact).abs().mean() > 0.2 / math.sqrt(shots)  # sampled, not exact
    assert backend.usage == Usage(jobs=1, circuits=30, shots=30 * shots)
    backend.reseed(11)
    a = backend.expectations(spec, theta, angles)
    backend.reseed(11)
    assert torch.equal(a, backend.expectations(spec, theta, angles)) and not torch.equal(a, z)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"device": "no.such.device"}, "pennylane device 'no.such.device' cannot be built"),
        ({"shots": 0}, "shots must be None"),
        ({"device": ""}, "device must be a PennyLane device name"),
    ],
)
def test_bad_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        get_backend("pennylane", **kwargs)


def test_adjoint_refused():
    spec = CircuitSpec(2, 1)
    with pytest.raises(ValueError, match="'adjoint' is not supported by backend 'pennylane'"):
        get_backend("pennylane").jacobians(spec, *batch(spec, 2), Gradient("adjoint"))
