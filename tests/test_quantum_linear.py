"""QuantumLinear behaves like nn.Linear and differentiates exactly through every backend."""

import copy
import math

import pytest
import torch
from torch.func import functional_call

from qworker import Gradient
from trainer.model.quantum_linear import QuantumLinear


def layer(**kw):
    torch.manual_seed(0)
    return QuantumLinear(12, 7, **{"n_qubits": 3, "n_layers": 2, **kw})


def test_drop_in_shapes_and_leading_dims():
    q = layer()
    x = torch.randn(2, 5, 12)
    y = q(x)
    assert y.shape == (2, 5, 7) and y.dtype == torch.float32
    torch.testing.assert_close(q(x.reshape(10, 12)).reshape(2, 5, 7), y)
    assert q(torch.randn(12)).shape == (7,)


def test_default_circuit_and_init():
    torch.manual_seed(0)
    q = QuantumLinear(64, 64)
    assert (q.spec.n_qubits, q.spec.n_gates, q.spec.n_params) == (10, 80, 40)
    assert q.compress.out_features == 20 and q.expand.in_features == 10
    # U(-π, π): within ±π, standard deviation π/√3 (a sample of 40: its own standard error ~0.13)
    assert q.theta.abs().max() <= math.pi and abs(q.theta.std().item() - math.pi / math.sqrt(3)) < 0.5


def test_state_dict_round_trip():
    a, b = layer(), QuantumLinear(12, 7, n_qubits=3, n_layers=2)
    assert set(a.state_dict()) == {"compress.weight", "compress.bias", "theta", "expand.weight", "expand.bias", "rng"}
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 12)
    torch.testing.assert_close(a(x), b(x))


@pytest.mark.parametrize(
    "backend,grad", [("local", "adjoint"), ("qulacs", "adjoint"), ("local", "shift"), ("qulacs", "shift")]
)
def test_gradcheck_float64(backend, grad):
    q = layer(backend=backend, grad=grad).double()
    x = torch.randn(3, 12, dtype=torch.float64, requires_grad=True)
    params = {k: v.detach().requires_grad_() for k, v in q.named_parameters()}
    names = list(params)

    def f(x, *ps):
        return functional_call(q, dict(zip(names, ps)), (x,))

    assert torch.autograd.gradcheck(f, (x, *params.values()), atol=1e-6)


@pytest.mark.parametrize(
    "backend,grad", [("qulacs", "adjoint"), ("local", "shift"), ("local", Gradient("fd", delta=1e-4))]
)
def test_every_backend_gives_the_autograd_gradients(backend, grad):
    ref, other = layer().double(), layer(backend=backend, grad=grad).double()
    x = torch.randn(6, 12, dtype=torch.float64)
    for q in (ref, other):
        q(x).square().sum().backward()
    for (name, p), (_, o) in zip(ref.named_parameters(), other.named_parameters()):
        torch.testing.assert_close(o.grad, p.grad, atol=1e-6, rtol=1e-6, msg=name)


def test_low_precision_input_runs_the_circuit_in_float32():
    q = layer().to(torch.bfloat16)
    x = torch.randn(4, 12, dtype=torch.bfloat16)
    y = q(x)
    assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()
    # the same bf16 weights and input, computed in float32 throughout: equal to a few bf16 roundings
    # (2^-8 relative each) of values below 1
    want = copy.deepcopy(q).float()(x.float())
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=0)


@pytest.mark.parametrize("grad", ["adjoint", "shift"])
def test_bf16_autocast_runs_the_circuit_in_float32(grad):
    """Under autocast the classical layers run in bf16; the circuit must not (its GEMMs would), and
    its backward must get a float32 upstream gradient."""
    torch.manual_seed(0)
    q, x = layer(grad=grad), torch.randn(4, 12)
    q(x).sum().backward()
    want = q.theta.grad.clone()
    q.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = q(x)
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and q.theta.grad.dtype == torch.float32
    torch.testing.assert_close(q.theta.grad, want, atol=0.05 * want.abs().max().item(), rtol=0)  # bf16 around it


def test_shots_backend_refuses_adjoint_at_construction():
    with pytest.raises(ValueError, match="'adjoint' is not supported by backend 'shots'"):
        QuantumLinear(4, 4, n_qubits=2, backend="shots")


def test_trains_a_tiny_regression():
    torch.manual_seed(1)
    q = QuantumLinear(4, 1, n_qubits=2, n_layers=2)
    x = torch.randn(256, 4)
    y = torch.sin(x[:, :1]) * 0.5
    opt = torch.optim.Adam(q.parameters(), lr=0.05)
    first = None
    for _ in range(150):
        loss = (q(x) - y).square().mean()
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


@pytest.mark.parametrize("backend, grad", [("local", "spsa"), ("shots", "shift")])
def test_random_draws_resume_from_the_checkpointed_state(backend, grad):
    """SPSA directions and shot samples come from (seed, calls) in the layer's state_dict: a layer
    restored from a checkpoint draws what the uninterrupted layer draws; two seeds differ."""

    def step(q, x):
        q.zero_grad()
        q(x).square().sum().backward()
        return torch.cat([q.theta.grad, q.compress.weight.grad.flatten()])

    torch.manual_seed(3)
    x = torch.randn(16, 4)
    q = QuantumLinear(4, 3, n_qubits=2, n_layers=1, backend=backend, grad=grad)
    step(q, x)
    saved = copy.deepcopy(q.state_dict())
    uninterrupted = step(q, x)
    resumed = QuantumLinear(4, 3, n_qubits=2, n_layers=1, backend=backend, grad=grad)
    resumed.load_state_dict(saved)
    torch.testing.assert_close(step(resumed, x), uninterrupted, atol=0, rtol=0)
    assert not torch.equal(step(resumed, x), uninterrupted), "the next call must draw new numbers"
