"""Readout-error mitigation (`mitigate="readout"`) on the `shots` backend with readout_error=0.05:
the raw estimates are biased by (1 - 2e), the mitigated ones are not (5 standard errors, against the
exact `local` values)."""

import pytest
import torch

from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import ReadoutMitigated, Usage
from qworker.backends.mitigation import basis_state_inputs

SHOTS, ERROR = 2**16, 0.05


def batch(spec, n_tok, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(spec.n_params, generator=g, dtype=torch.float64) * 6 - 3
    return theta, torch.rand(n_tok, spec.n_angles, generator=g, dtype=torch.float64) * 6 - 3


@pytest.mark.parametrize("spec", [CircuitSpec(4, 2, "ring"), CircuitSpec(3, 1, "chain"), CircuitSpec(2, 0)], ids=str)
def test_calibration_circuits_end_in_all_zeros_and_all_ones(spec):
    z = get_backend("local").expectations(spec, *basis_state_inputs(spec))
    torch.testing.assert_close(z, torch.tensor([[1.0], [-1.0]], dtype=torch.float64).expand(2, spec.n_qubits))


def test_mitigated_expectations_are_unbiased_where_raw_ones_are_not():
    spec = CircuitSpec(3, 1)
    theta, angles = batch(spec, 20)
    exact = get_backend("local").expectations(spec, theta, angles)
    raw = get_backend("shots", shots=SHOTS, readout_error=ERROR, seed=1).expectations(spec, theta, angles)
    mitigated_backend = get_backend("shots", shots=SHOTS, readout_error=ERROR, seed=2, mitigate="readout")
    mitigated = mitigated_backend.expectations(spec, theta, angles)
    # standard errors: binomial for the raw reading; for the mitigated one the reading's and the two
    # calibration readings' (each of SHOTS shots), propagated through z = (m - a) / b
    b = 1 - 2 * ERROR
    m = b * exact
    se_raw = ((1 - m**2) / SHOTS).sqrt()
    var_cal = 2 * (1 - b**2) / SHOTS / 4  # Var((m0 + m1)/2) = Var((m0 - m1)/2)
    se_mitigated = ((se_raw**2 + var_cal * (1 + exact**2)) / b**2).sqrt()
    assert ((raw - exact).abs() / se_raw).max() > 5  # the bias is plain at this many shots
    assert ((mitigated - exact).abs() / se_mitigated).max() < 5
    torch.testing.assert_close(raw, b * exact, atol=5 * se_raw.max().item(), rtol=0)  # biased as the model says
    assert mitigated_backend.usage == Usage(jobs=2, circuits=2 + 20, shots=(2 + 20) * SHOTS)  # calibration + call


def test_given_confusion_and_gradients_in_one_job():
    spec = CircuitSpec(3, 1)
    theta, angles = batch(spec, 2, seed=3)
    confusion = torch.tensor([[1 - ERROR, ERROR], [ERROR, 1 - ERROR]]).expand(3, 2, 2)
    backend = get_backend("shots", shots=SHOTS, readout_error=ERROR, seed=4, mitigate="readout", confusion=confusion)
    assert isinstance(backend, ReadoutMitigated) and backend.setup_usage(spec) == Usage()
    j_theta, j_angles = backend.jacobians(spec, theta, angles, Gradient("shift"))
    ref_theta, ref_angles = get_backend("local").jacobians(spec, theta, angles, Gradient("adjoint"))
    assert backend.usage.jobs == 1  # no calibration, the shifted rows in one job
    torch.testing.assert_close(j_theta, ref_theta, atol=0.05, rtol=0)  # 2^16 shots: errors ~0.01
    torch.testing.assert_close(j_angles, ref_angles, atol=0.05, rtol=0)


@pytest.mark.parametrize(
    "name,kwargs,words",
    [
        ("shots", {"mitigate": "zne"}, "unknown mitigation 'zne'; choose one of readout"),
        ("shots", {"confusion": [[[1, 0], [0, 1]]]}, "confusion .* goes with mitigate='readout'"),
        ("qiskit", {"mitigate": "readout"}, "backend 'qiskit' returns exact expectations"),
        ("shots", {"mitigate": "readout", "confusion": [[0.9, 0.1]]}, r"confusion must be per-qubit 2x2"),
        ("shots", {"mitigate": "readout", "confusion": [[[0.9, 0.2], [0.2, 0.9]]]}, "columns sum to 1"),
    ],
)
def test_bad_settings(name, kwargs, words):
    with pytest.raises(ValueError, match=words):
        get_backend(name, **kwargs)


def test_unreadable_qubits_are_refused():
    spec = CircuitSpec(2, 1)
    backend = get_backend("shots", shots=1000, readout_error=0.5, seed=0, mitigate="readout")
    with pytest.raises(ValueError, match="barely tell 0 from 1"):
        backend.expectations(spec, *batch(spec, 1))
