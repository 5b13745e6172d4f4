"""The shifted evaluations of shift, fd and spsa: one backend call (one job on hardware) per
Jacobian, and right for every documented input — per-token theta, N = 0, n_layers = 0, mixed
float32/float64 — on every backend, against PennyLane's default.qubit (an independent simulator)."""

import functools
import math

import pytest
import torch

import qworker
from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import LocalBackend, ShotsBackend
from qworker.backends.local import shifted
from qworker.gradients import Shifts

qml = pytest.importorskip("pennylane")

EXACT = ("local", "qulacs", "auto", "qiskit")  # qiskit: its exact StatevectorEstimator
# every backend with every method it serves: adjoint needs the state vector, so hardware-like backends
# refuse it by name (tests/test_gradients.py)
SERVED = [
    (b, m)
    for b in EXACT + ("shots",)
    for m in ("adjoint", "shift", "fd", "spsa")
    if (b, m) not in {("shots", "adjoint"), ("qiskit", "adjoint")}
]
SHAPES = [CircuitSpec(3, 5, "chain"), CircuitSpec(10, 2), CircuitSpec(4, 0), CircuitSpec(1, 1)]


def reference(spec: CircuitSpec, theta: torch.Tensor, angles: torch.Tensor):
    """<Z_i> of every token, differentiable, from PennyLane's default.qubit (float64, broadcast)."""
    dev = qml.device("default.qubit", wires=spec.n_qubits)
    per_token = theta.dim() == 2

    @qml.qnode(dev, interface="torch", diff_method="backprop")
    def circuit(th, an):
        for op in spec.ops:
            if op.gate == "H":
                qml.Hadamard(op.wires[0])
            elif op.gate == "CNOT":
                qml.CNOT(op.wires)
            else:
                source, k = op.param
                value = an[..., k] if source == "angle" else (th[..., k] if per_token else th[k])
                (qml.RY if op.gate == "RY" else qml.RZ)(value, wires=op.wires[0])
        return [qml.expval(qml.PauliZ(q)) for q in range(spec.n_qubits)]

    return torch.stack(circuit(theta, angles), -1).reshape(angles.shape[0], spec.n_qubits)


def reference_jacobians(spec, theta, angles, method="exact", delta=1e-2):
    """(J_theta (N, n_q, |Θ|), J_angles (N, n_q, 2n_q)): exact by autograd through PennyLane, or
    `fd`'s central differences of PennyLane's values, one component at a time."""
    n, n_q = angles.shape[0], spec.n_qubits
    per_theta = theta.expand(n, -1).clone() if theta.dim() == 1 else theta.clone()
    if method == "fd":

        def column(x: torch.Tensor, k: int, which: int) -> torch.Tensor:
            hi, lo = x.clone(), x.clone()
            hi[:, k] += delta
            lo[:, k] -= delta
            args = ((hi, angles), (lo, angles)) if which == 0 else ((per_theta, hi), (per_theta, lo))
            return (reference(spec, *args[0]) - reference(spec, *args[1])) / (2 * delta)

        j_theta = [column(per_theta, k, 0) for k in range(spec.n_params)]
        j_angles = [column(angles, k, 1) for k in range(spec.n_angles)]
        j_theta = torch.stack(j_theta, -1) if j_theta else angles.new_zeros(n, n_q, 0)
        return j_theta, torch.stack(j_angles, -1)
    t, a = per_theta.requires_grad_(), angles.clone().requires_grad_()
    z = reference(spec, t, a)
    rows = [torch.autograd.grad(z[:, i].sum(), (t, a), retain_graph=True, allow_unused=True) for i in range(n_q)]
    fill = lambda g, like: torch.zeros_like(like) if g is None else g  # noqa: E731
    return torch.stack([fill(r[0], t) for r in rows], 1), torch.stack([fill(r[1], a) for r in rows], 1)


@functools.cache
def case(spec: CircuitSpec, per_token: bool, n: int):
    """(theta, angles, exact Jacobians, fd's with delta 1e-2) of one shape, computed once."""
    theta, angles = batch(spec, n, per_token, seed=spec.n_qubits)
    return theta, angles, reference_jacobians(spec, theta, angles), reference_jacobians(spec, theta, angles, "fd")


def batch(spec, n, per_token=False, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand((n, spec.n_params) if per_token else (spec.n_params,), generator=g, dtype=torch.float64) * 6.28
    angles = torch.rand(n, spec.n_angles, generator=g, dtype=torch.float64) * 6.28
    return theta.to(dtype), angles.to(dtype)


# -- one call per Jacobian -------------------------------------------------------------------------


class CountingLocal(LocalBackend):
    """local, counting its calls (a shifted batch is one call, whatever it does inside)."""

    calls = 0

    def expectations(self, spec, theta, angles):
        self.calls += 1
        return super().expectations(spec, theta, angles)

    def evaluate_shifts(self, spec, shifts):
        self.calls += 1
        return shifted(spec, shifts.theta, shifts.angles, shifts.step, shifts.components, shifts.base)


class CountingShots(ShotsBackend):
    """shots, counting its jobs: every `expectations` call is one job (one wait in the queue)."""

    jobs = 0

    def expectations(self, spec, theta, angles):
        self.jobs += 1
        return super().expectations(spec, theta, angles)


@pytest.mark.parametrize("method", ["shift", "fd", "spsa"])
def test_a_jacobian_is_one_backend_call(method):
    spec = CircuitSpec(10, 2)
    theta, angles = batch(spec, 64, dtype=torch.float32)
    local, shots = CountingLocal(), CountingShots(shots=64, seed=0)
    for backend, count in ((local, "calls"), (shots, "jobs")):
        backend.jacobians(spec, theta, angles, Gradient(method))
        assert getattr(backend, count) == 1, (backend.name, method)
        pending = backend.start(spec, theta, angles, Gradient(method))  # the forward rides in the same call
        pending.vjp(torch.ones(64, spec.n_qubits))
        assert getattr(backend, count) == 2, (backend.name, method)


def test_the_rows_of_a_shifted_batch_are_the_shifted_circuits():
    """Shifts.rows (what hardware gets) and local's structured evaluation agree row by row with
    the circuits evaluated one shifted input at a time."""
    spec = CircuitSpec(3, 2, "chain")
    theta, angles = batch(spec, 5, seed=3)
    shifts = Shifts(theta, angles, 0.3, range(2, 9), base=True)  # components on theta and on the angles
    rows_theta, rows_angles = shifts.rows()
    assert rows_theta.shape == (shifts.n_rows, spec.n_params) and shifts.n_rows == 5 * (1 + 2 * 7)
    want = torch.cat([reference(spec, rows_theta[i : i + 1], rows_angles[i : i + 1]) for i in range(shifts.n_rows)])
    for k_block, k in enumerate(range(2, 9)):  # the +step block of component k moved k by +0.3
        rows = slice(5 * (1 + 2 * k_block), 5 * (2 + 2 * k_block))
        moved = rows_theta[rows, k] if k < spec.n_params else rows_angles[rows, k - spec.n_params]
        base = theta[k].expand(5) if k < spec.n_params else angles[:, k - spec.n_params]
        torch.testing.assert_close(moved, base + 0.3)
    torch.testing.assert_close(get_backend("local").evaluate_shifts(spec, shifts), want, atol=1e-12, rtol=0)
    torch.testing.assert_close(get_backend("qulacs").evaluate_shifts(spec, shifts), want, atol=1e-12, rtol=0)


# -- right for every documented input --------------------------------------------------------------


@pytest.mark.parametrize("spec", SHAPES, ids=lambda s: f"{s.n_qubits}q{s.n_layers}l{s.entangler}")
@pytest.mark.parametrize("backend", EXACT)
@pytest.mark.parametrize("per_token", [False, True])
def test_shift_and_fd_jacobians_equal_the_reference(spec, backend, per_token):
    n = spec.n_qubits if spec.n_qubits > 1 else 7  # N == n_q: a broadcast mistake would pass silently otherwise
    if backend == "qiskit" and spec.n_qubits > 4:
        n = 2  # its exact estimator rebuilds the state for every row and observable: slow
    theta, angles, exact, fd = case(spec, per_token, n)
    tol = dict(atol=1e-9, rtol=1e-7)
    for method, want in (("shift", exact), ("fd", fd)):
        got = qworker.jacobians(spec, theta, angles, method=method, backend=backend, delta=1e-2)
        assert got[0].shape == (n, spec.n_qubits, spec.n_params) and got[1].shape == (n, spec.n_qubits, spec.n_angles)
        torch.testing.assert_close(got, want, **tol, msg=f"{backend} {method}")


@pytest.mark.parametrize("backend", ["local", "qulacs", "auto"])
@pytest.mark.parametrize("per_token", [False, True])
def test_adjoint_jacobians_and_vjp_shapes_equal_the_reference(backend, per_token):
    spec = CircuitSpec(3, 5, "chain")
    for n in (1, 3, 6):  # auto picks qulacs below 5 tokens, local above: the same shapes
        theta, angles = batch(spec, n, per_token, seed=n)
        got = qworker.jacobians(spec, theta, angles, method="adjoint", backend=backend)
        torch.testing.assert_close(got, reference_jacobians(spec, theta, angles), atol=1e-10, rtol=1e-8)
        g = torch.randn(n, spec.n_qubits, dtype=torch.float64)
        g_theta, g_angles = qworker.vjp(spec, theta, angles, g, method="adjoint", backend=backend)
        assert g_theta.shape == theta.shape and g_angles.shape == angles.shape  # (|Θ|,) or (N, |Θ|)


@pytest.mark.parametrize("backend, method", SERVED)
def test_vjp_theta_has_theta_s_shape_whatever_the_backend(backend, method):
    spec = CircuitSpec(3, 1)
    for per_token in (False, True):
        theta, angles = batch(spec, 4, per_token, seed=7)
        g_theta, g_angles = qworker.vjp(spec, theta, angles, torch.ones(4, 3, dtype=torch.float64), method, backend)
        assert (g_theta.shape, g_angles.shape) == (theta.shape, angles.shape), (backend, method, per_token)


def test_spsa_per_token_theta_averages_to_the_exact_jacobian():
    spec = CircuitSpec(3, 1)
    theta, angles = batch(spec, 3, per_token=True, seed=11)  # N == n_q
    exact = reference_jacobians(spec, theta, angles)
    got = qworker.jacobians(spec, theta, angles, method="spsa", backend="local", samples=4000, delta=1e-3, seed=1)
    for g, w in zip(got, exact):
        assert g.shape == w.shape
        assert (g - w).abs().max() < 0.15, (g - w).abs().max()  # SPSA's noise: ~sqrt(components / samples)


@pytest.mark.parametrize("backend, method", SERVED)
def test_an_empty_batch_gives_empty_results(backend, method):
    spec = CircuitSpec(10, 2)
    theta, angles = batch(spec, 0, dtype=torch.float32)
    assert qworker.expectations(spec, theta, angles, backend).shape == (0, 10)
    j_theta, j_angles = qworker.jacobians(spec, theta, angles, method, backend)
    assert j_theta.shape == (0, 10, 40) and j_angles.shape == (0, 10, 20)
    g_theta, g_angles = qworker.vjp(spec, theta, angles, torch.zeros(0, 10), method, backend)
    assert g_theta.shape == (40,) and g_angles.shape == (0, 20)
    assert torch.count_nonzero(g_theta) == 0  # no token: no gradient


@pytest.mark.parametrize("backend, method", [(b, m) for b, m in SERVED if b != "shots" and m != "spsa"])
def test_a_circuit_without_layers_is_the_encoding_alone(backend, method):
    """n_layers = 0: the encoding alone, no theta; its expectations and angle Jacobians."""
    spec = CircuitSpec(5, 0)
    theta, angles = batch(spec, 6, seed=2)
    torch.testing.assert_close(qworker.expectations(spec, theta, angles, backend), reference(spec, theta, angles))
    j_theta, j_angles = qworker.jacobians(spec, theta, angles, method, backend)
    want = reference_jacobians(spec, theta, angles, "fd" if method == "fd" else "exact")
    assert j_theta.shape == (6, 5, 0)
    torch.testing.assert_close(j_angles, want[1], atol=1e-9, rtol=1e-7)


DTYPES = [(torch.float64, torch.float32), (torch.float32, torch.float64)]


@pytest.mark.parametrize("theta_dtype, angles_dtype", DTYPES)
@pytest.mark.parametrize("backend, method", SERVED)
def test_mixed_dtypes_compute_in_the_wider_and_answer_in_the_angles(theta_dtype, angles_dtype, backend, method):
    spec = CircuitSpec(4, 2)
    theta64, angles64 = batch(spec, 9, seed=5)
    theta, angles = theta64.to(theta_dtype), angles64.to(angles_dtype)
    z = qworker.expectations(spec, theta, angles, backend)
    assert z.dtype == angles_dtype
    j = qworker.jacobians(spec, theta, angles, method, backend, seed=0)
    v = qworker.vjp(spec, theta, angles, torch.ones(9, 4, dtype=angles_dtype), method, backend, seed=0)
    assert all(t.dtype == angles_dtype for t in (*j, *v))
    if backend != "shots" and method != "spsa":  # deterministic: equal to the float64 computation
        want = qworker.jacobians(
            spec, theta64.to(theta_dtype).double(), angles64.to(angles_dtype).double(), method, "local"
        )
        tol = 1e-5 if angles_dtype == torch.float32 else 1e-6  # float32 inputs, rounded results
        torch.testing.assert_close(j[0].double(), want[0], atol=tol, rtol=0)
        torch.testing.assert_close(j[1].double(), want[1], atol=tol, rtol=0)


def test_fd_from_the_batch_is_the_central_difference_to_float32_rounding():
    """In float32, `local` gives what the rows' circuits give, minus the cancellation error that
    evaluating them one by one adds (~1e-7 / delta)."""
    spec = CircuitSpec(10, 2)
    theta, angles = batch(spec, 32, seed=9)
    want = reference_jacobians(spec, theta, angles, "fd", 1e-3)
    got = qworker.jacobians(spec, theta.float(), angles.float(), "fd", "local", delta=1e-3)
    assert max((g.double() - w).abs().max().item() for g, w in zip(got, want)) < 2e-5
    assert math.isfinite(got[0].sum().item())
