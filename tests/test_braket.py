"""The `braket` adapter on the Braket SDK's LocalSimulator against the `local` simulator (within 5
standard errors), one program-set task per call (counted at the real simulator), and the refusal of
a device that runs no program sets."""

import math

import pytest
import torch

from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import Usage

pytest.importorskip("braket.program_sets")

from qworker.backends.braket_adapter import program_set_limit  # noqa: E402


class CountingDevice:
    """A real Braket device (the LocalSimulator) that counts the tasks run on it and their executables."""

    def __init__(self, device):
        self.inner, self.tasks = device, []

    def run(self, program_set, shots):
        self.tasks.append(program_set.total_executables)
        return self.inner.run(program_set, shots=shots)


def batch(spec, n_tok, seed=0, per_token_theta=False):
    g = torch.Generator().manual_seed(seed)
    theta_shape = (n_tok, spec.n_params) if per_token_theta else (spec.n_params,)
    theta = torch.rand(theta_shape, generator=g, dtype=torch.float64) * 6 - 3
    return theta, torch.rand(n_tok, spec.n_angles, generator=g, dtype=torch.float64) * 6 - 3


@pytest.mark.parametrize("per_token_theta", [False, True])
def test_local_simulator_within_standard_errors(per_token_theta):
    spec, shots = CircuitSpec(3, 2), 2000
    theta, angles = batch(spec, 8, per_token_theta=per_token_theta)
    exact = get_backend("local").expectations(spec, theta, angles)
    backend = get_backend("braket", shots=shots)
    backend.device = CountingDevice(backend.device)
    z = backend.expectations(spec, theta, angles)
    assert z.shape == (8, 3) and z.dtype == torch.float64
    se = ((1 - exact**2) / shots).sqrt().clamp_min(1e-3)
    assert ((z - exact).abs() / se).max() < 5  # 24 estimates, each within 5 standard errors
    assert (z - exact).abs().mean() > 0.2 / math.sqrt(shots)  # sampled, not exact
    assert backend.device.tasks == [8] and backend.usage == Usage(jobs=1, circuits=8, shots=8 * shots)


def test_gradient_is_one_task_and_splits_at_the_device_limit():
    spec = CircuitSpec(2, 1)
    theta, angles = batch(spec, 2, seed=1)
    backend = get_backend("braket", shots=4000)
    backend.device = CountingDevice(backend.device)
    j_theta, j_angles = backend.jacobians(spec, theta, angles, Gradient("shift"))
    rows = 2 * 2 * (spec.n_params + spec.n_angles)
    assert backend.device.tasks == [rows]  # every shifted row in one program set
    ref_theta, ref_angles = get_backend("local").jacobians(spec, theta, angles, Gradient("adjoint"))
    torch.testing.assert_close(j_theta, ref_theta, atol=0.1, rtol=0)  # 4000 shots: errors ~0.02
    torch.testing.assert_close(j_angles, ref_angles, atol=0.1, rtol=0)
    backend.max_executables = 10  # a device that caps a program set at 10 executables
    backend.device.tasks.clear()
    backend.expectations(spec, theta, angles.repeat(12, 1))
    assert backend.device.tasks == [10, 10, 4] and backend.jobs_for(24) == 3


def test_device_without_program_sets_is_refused_naming_the_fallback():
    from braket.devices import LocalSimulator

    with pytest.raises(ValueError, match="does not run program sets .* --qbackend pennylane"):
        program_set_limit(LocalSimulator("braket_ahs"), "braket_ahs", 100)
    # the LocalSimulator's stated limits: 100 executables and 200,000 shots a program set
    assert program_set_limit(LocalSimulator(), "local", 1000) == 100
    assert program_set_limit(LocalSimulator(), "local", 4000) == 50
    with pytest.raises(ValueError, match="at most 200,000 shots a program set"):
        program_set_limit(LocalSimulator(), "local", 200_001)


@pytest.mark.parametrize("shots", [None, 0, 2**21])
def test_shots_are_required(shots):
    with pytest.raises(ValueError, match="shots must be an integer >= 1"):
        get_backend("braket", shots=shots)
