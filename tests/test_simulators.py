"""Simulators against independent references: analytic results, Qulacs, PennyLane."""

import dataclasses
import math

import numpy as np
import pytest
import torch

import qworker
from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import local
from qworker.backends.local import probabilities


def rand(*shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1).mul(math.pi).to(dtype)


@pytest.mark.parametrize("backend", ["local", "qulacs"])
def test_one_qubit_analytic(backend):
    # H, RY(a), RZ(b), RZ(t0), RY(t1): Bloch vector (1,0,0) -> <Z> = -sin a cos t1 - cos a cos(b+t0) sin t1
    spec = CircuitSpec(1, 1)
    angles, theta = rand(64, 2), rand(2, seed=1)
    a, b = angles[:, 0], angles[:, 1]
    t0, t1 = theta
    expected = -torch.sin(a) * torch.cos(t1) - torch.cos(a) * torch.cos(b + t0) * torch.sin(t1)
    z = qworker.expectations(spec, theta, angles, backend=backend)
    torch.testing.assert_close(z[:, 0], expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", ["local", "qulacs"])
def test_two_qubit_cnot_ring_analytic(backend):
    # theta = 0 leaves CNOT(0->1) then CNOT(1->0); in the Heisenberg picture Z0 -> Z1 and
    # Z1 -> Z0 Z1 on the encoded product state, whose <Z_j> = -sin a_j.
    spec = CircuitSpec(2, 1)
    angles = rand(64, 4)
    z = qworker.expectations(spec, torch.zeros(spec.n_params, dtype=torch.float64), angles, backend=backend)
    s0, s1 = torch.sin(angles[:, 0]), torch.sin(angles[:, 2])
    torch.testing.assert_close(z, torch.stack([-s1, s0 * s1], 1), atol=1e-12, rtol=0)


SHAPES = [
    (10, 2, "ring"),
    (1, 3, "ring"),
    (2, 2, "ring"),
    (3, 1, "chain"),
    (6, 3, "ring"),
    (7, 2, "chain"),
    (11, 1, "ring"),
]


@pytest.mark.parametrize("n,layers,ent", SHAPES)
def test_local_matches_qulacs(n, layers, ent):
    spec = CircuitSpec(n, layers, ent)
    theta, angles = rand(spec.n_params, seed=n), rand(40, spec.n_angles, seed=layers)
    ref = get_backend("qulacs").expectations(spec, theta, angles)
    torch.testing.assert_close(qworker.expectations(spec, theta, angles), ref, atol=1e-12, rtol=0)
    z32 = qworker.expectations(spec, theta.float(), angles.float())
    assert z32.dtype == torch.float32
    torch.testing.assert_close(z32.double(), ref, atol=3e-6, rtol=0)  # float32 precision


def test_per_token_theta_equals_shared():
    spec = CircuitSpec(5, 2)
    theta, angles = rand(spec.n_params), rand(30, spec.n_angles)
    per_token = theta.expand(30, -1).clone()
    torch.testing.assert_close(local.expectations(spec, per_token, angles), qworker.expectations(spec, theta, angles))


def test_chunking_does_not_change_results(monkeypatch):
    spec = CircuitSpec(6, 2)
    theta, angles = rand(spec.n_params), rand(100, spec.n_angles)
    whole = qworker.expectations(spec, theta, angles)
    monkeypatch.setattr(local, "CHUNK_AMPLITUDES", 7 * 2**6)  # 7 tokens a chunk
    torch.testing.assert_close(qworker.expectations(spec, theta, angles), whole, atol=1e-14, rtol=0)


def test_probabilities_are_a_distribution_consistent_with_expectations():
    spec = CircuitSpec(4, 2)
    theta, angles = rand(spec.n_params), rand(20, spec.n_angles)
    p = probabilities(spec, theta, angles)
    torch.testing.assert_close(p.sum(1), torch.ones(20, dtype=p.dtype))
    zsign = 1 - 2 * ((torch.arange(16)[:, None] >> torch.arange(4)) & 1)
    torch.testing.assert_close(p @ zsign.double(), qworker.expectations(spec, theta, angles))


def test_local_encoding_and_its_backward_in_float64():
    # The local simulator builds the encoded product state from per-qubit planes (real arithmetic)
    # and one register-sized outer product with a hand-written backward: check each against plain
    # complex autograd, the prefix both with all qubits implied and named, and the whole circuit
    # by gradcheck, theta shared and per token.
    spec = CircuitSpec(5, 1)
    theta, angles = rand(spec.n_params), rand(6, spec.n_angles, seed=1)
    prog = local._compile(spec, torch.device("cpu"), torch.float64)
    named = dataclasses.replace(
        prog, prefix=[(gate, torch.arange(5) if q is None else q, idx) for gate, q, idx in prog.prefix]
    )
    a, b = angles[:, 0::2].T, angles[:, 1::2].T  # (n, C): RY then RZ on each qubit, after H
    ref = torch.stack([torch.cos(a / 2 + math.pi / 4), torch.sin(a / 2 + math.pi / 4)], 1) * torch.exp(
        0.5j * torch.stack([-b, b], 1)
    )  # (n, 2, C)
    for p in (prog, named):
        torch.testing.assert_close(local._qubit_states(p, angles), ref, atol=1e-14, rtol=0)

    hi, lo = (h.detach().requires_grad_() for h in local._encoded_halves(prog, angles))
    hc, lc = (torch.complex(h[:, 0], h[:, 1]) for h in (hi, lo))
    psi = (hc.unsqueeze(1) * lc.unsqueeze(0)).flatten(0, 1)  # (2^n, C), the old formulation
    want = torch.stack([psi.real, psi.imag], 1)
    full = ref.flip(0)[0]
    for q in ref.flip(0)[1:]:
        full = (full.unsqueeze(1) * q.unsqueeze(0)).flatten(0, 1)
    torch.testing.assert_close(psi.detach(), full, atol=1e-14, rtol=0)
    torch.testing.assert_close(local._outer(hi.detach(), lo.detach()), want.detach(), atol=1e-14, rtol=0)
    lam = rand(*want.shape, seed=2)
    expected = torch.autograd.grad(want, (hi, lo), lam)
    for got, exp in zip(local._outer_backward(lam, hi.detach(), lo.detach()), expected):
        torch.testing.assert_close(got, exp, atol=1e-13, rtol=0)

    f = lambda t, x: local.expectations(spec, t, x)  # noqa: E731
    for t in (theta, rand(3, spec.n_params, seed=3)):  # shared and per token
        assert torch.autograd.gradcheck(f, (t.clone().requires_grad_(), angles[:3].clone().requires_grad_()))


def test_empty_batch():
    spec = CircuitSpec()
    z = qworker.expectations(spec, torch.zeros(40), torch.zeros(0, 20))
    assert z.shape == (0, 10)


def test_local_matches_pennylane():
    qml = pytest.importorskip("pennylane")
    spec = CircuitSpec(4, 2, "ring")
    theta, angles = rand(spec.n_params), rand(5, spec.n_angles)
    dev = qml.device("default.qubit", wires=spec.n_qubits)

    gates = {"H": qml.Hadamard, "RY": qml.RY, "RZ": qml.RZ, "CNOT": qml.CNOT}

    @qml.qnode(dev)
    def circuit(a, t):
        for op in spec.ops:
            args = () if op.param is None else ((a if op.param[0] == "angle" else t)[op.param[1]],)
            gates[op.gate](*args, wires=list(op.wires))
        return [qml.expval(qml.PauliZ(i)) for i in range(spec.n_qubits)]

    ref = np.array([circuit(a.numpy(), theta.numpy()) for a in angles])
    np.testing.assert_allclose(qworker.expectations(spec, theta, angles).numpy(), ref, atol=1e-12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_local_on_cuda_matches_cpu():
    spec = CircuitSpec()
    theta, angles = rand(spec.n_params, dtype=torch.float32), rand(2048, spec.n_angles, dtype=torch.float32)
    cpu = qworker.expectations(spec, theta, angles)
    gpu = qworker.expectations(spec, theta.cuda(), angles.cuda())
    torch.testing.assert_close(gpu.cpu(), cpu, atol=3e-6, rtol=0)
    t, a = theta.cuda().requires_grad_(), angles.cuda().requires_grad_()
    qworker.expectations(spec, t, a).sum().backward()
    g_theta, g_angles = qworker.vjp(spec, theta, angles, torch.ones(2048, 10))
    torch.testing.assert_close(t.grad.cpu(), g_theta, atol=2e-3, rtol=1e-4)
    torch.testing.assert_close(a.grad.cpu(), g_angles, atol=1e-5, rtol=1e-4)


def test_auto_uses_qulacs_for_a_few_tokens_and_the_batched_simulator_above():
    from qworker.backends.auto import AutoBackend

    spec, auto = CircuitSpec(4, 2), get_backend("auto")
    g = torch.Generator().manual_seed(7)
    theta = torch.rand(spec.n_params, generator=g, dtype=torch.float64) * 6.28
    for n, chosen in ((AutoBackend.QULACS_BELOW - 1, "qulacs"), (AutoBackend.QULACS_BELOW, "local")):
        angles = torch.rand(n, spec.n_angles, generator=g, dtype=torch.float64) * 6.28
        grad_out = torch.randn(n, spec.n_qubits, generator=g, dtype=torch.float64)
        z = auto.expectations(spec, theta, angles)
        assert torch.equal(z, get_backend(chosen).expectations(spec, theta, angles)), chosen  # bit for bit
        other = "local" if chosen == "qulacs" else "qulacs"
        torch.testing.assert_close(z, get_backend(other).expectations(spec, theta, angles))
        got = auto.vjp(spec, theta, angles, grad_out, Gradient("adjoint"))
        want = get_backend(chosen).vjp(spec, theta, angles, grad_out, Gradient("adjoint"))
        assert all(torch.equal(a, b) for a, b in zip(got, want))
