"""The finite-shot emulator converges to the exact values and applies its noise model exactly."""

import math

import pytest
import torch

import qworker
from qworker import CircuitSpec, get_backend


def setup(n_tok=200):
    spec = CircuitSpec(4, 2)
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(spec.n_params, generator=g, dtype=torch.float64) * 6 - 3
    angles = torch.rand(n_tok, spec.n_angles, generator=g, dtype=torch.float64) * 6 - 3
    return spec, theta, angles, qworker.expectations(spec, theta, angles)


def test_converges_to_exact_as_shots_grow():
    spec, theta, angles, exact = setup()
    errs = {}
    for shots in (64, 4096, 262144):
        z = get_backend("shots", shots=shots, seed=1).expectations(spec, theta, angles)
        errs[shots] = (z - exact).abs().max().item()
        assert errs[shots] < 5 / math.sqrt(shots)  # 5 standard errors at most, over 800 estimates
    assert errs[262144] < errs[4096] / 4 < errs[64] / 16


def test_noise_scales_expectations_as_documented():
    spec, theta, angles, exact = setup(100)
    p, q, shots = 0.2, 0.05, 200_000
    z = get_backend("shots", shots=shots, seed=2, depolarizing=p, readout_error=q).expectations(spec, theta, angles)
    torch.testing.assert_close(z, (1 - p) * (1 - 2 * q) * exact, atol=5 / math.sqrt(shots), rtol=0)


def test_seeded_and_reproducible():
    spec, theta, angles, _ = setup(20)
    a = get_backend("shots", shots=100, seed=3).expectations(spec, theta, angles)
    b = get_backend("shots", shots=100, seed=3).expectations(spec, theta, angles)
    c = get_backend("shots", shots=100, seed=4).expectations(spec, theta, angles)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.dtype == angles.dtype


def test_shift_gradient_from_shots_approaches_exact():
    spec, theta, angles, _ = setup(10)
    g = torch.ones(10, spec.n_qubits, dtype=torch.float64)
    exact = qworker.vjp(spec, theta, angles, g)
    noisy = qworker.vjp(spec, theta, angles, g, "shift", get_backend("shots", shots=100_000, seed=5))
    torch.testing.assert_close(noisy[1], exact[1], atol=0.05, rtol=0)
    torch.testing.assert_close(noisy[0], exact[0], atol=0.2, rtol=0)  # summed over 10 tokens x 4 outputs


@pytest.mark.parametrize(
    "kwargs,words",
    [({"shots": 0}, "shots must be an integer >= 1"), ({"readout_error": 1.5}, "readout_error must be a probability")],
)
def test_bad_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        get_backend("shots", **kwargs)
