"""Every gradient method against the others and against analytic and finite-difference truths."""

import math

import pytest
import torch

import qworker
from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import ShotsBackend


def rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * math.pi


def test_adjoint_matches_analytic_one_qubit():
    # <Z> = -sin a cos t1 - cos a cos(b+t0) sin t1 (see test_simulators)
    spec = CircuitSpec(1, 1)
    angles, theta = rand(16, 2), rand(2, seed=1)
    a, b, (t0, t1) = angles[:, 0], angles[:, 1], theta
    j_theta, j_angles = qworker.jacobians(spec, theta, angles)
    torch.testing.assert_close(j_theta[:, 0, 0], torch.cos(a) * torch.sin(b + t0) * torch.sin(t1))
    torch.testing.assert_close(
        j_theta[:, 0, 1], torch.sin(a) * torch.sin(t1) - torch.cos(a) * torch.cos(b + t0) * torch.cos(t1)
    )
    torch.testing.assert_close(
        j_angles[:, 0, 0], -torch.cos(a) * torch.cos(t1) + torch.sin(a) * torch.cos(b + t0) * torch.sin(t1)
    )
    torch.testing.assert_close(j_angles[:, 0, 1], torch.cos(a) * torch.sin(b + t0) * torch.sin(t1))


@pytest.mark.parametrize("backend", ["local", "qulacs"])
@pytest.mark.parametrize("n,layers,ent", [(10, 2, "ring"), (3, 2, "chain"), (2, 3, "ring")])
def test_adjoint_equals_shift(backend, n, layers, ent):
    spec = CircuitSpec(n, layers, ent)
    theta, angles = rand(spec.n_params, seed=n), rand(6, spec.n_angles, seed=layers)
    adj = qworker.jacobians(spec, theta, angles, "adjoint", backend)
    shift = qworker.jacobians(spec, theta, angles, "shift", backend)
    for a, s in zip(adj, shift):
        torch.testing.assert_close(a, s, atol=1e-12, rtol=0)


def test_local_and_qulacs_adjoint_agree_on_vjp():
    spec = CircuitSpec()
    theta, angles, g = rand(40), rand(12, 20, seed=1), rand(12, 10, seed=2)
    local = qworker.vjp(spec, theta, angles, g)
    ref = qworker.vjp(spec, theta, angles, g, backend="qulacs")
    for a, b in zip(local, ref):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=0)


def test_local_adjoint_float32_matches_float64():
    spec = CircuitSpec()
    theta, angles, g = rand(40), rand(4096, 20, seed=1), rand(4096, 10, seed=2)
    g64 = qworker.vjp(spec, theta, angles, g)
    g32 = qworker.vjp(spec, theta.float(), angles.float(), g.float())
    torch.testing.assert_close(g32[0].double(), g64[0], atol=2e-3, rtol=1e-4)  # sum over 4096 tokens
    torch.testing.assert_close(g32[1].double(), g64[1], atol=2e-5, rtol=0)


def test_fd_error_is_second_order_in_delta():
    spec = CircuitSpec(4, 2)
    theta, angles = rand(spec.n_params), rand(5, spec.n_angles, seed=3)
    exact = torch.cat([j.flatten() for j in qworker.jacobians(spec, theta, angles, "adjoint")])
    errs = []
    for delta in (4e-2, 2e-2, 1e-2):
        fd = torch.cat([j.flatten() for j in qworker.jacobians(spec, theta, angles, "fd", delta=delta)])
        errs.append((fd - exact).abs().max().item())
    assert errs[0] < 4e-2**2  # O(δ²) with a constant below 1 (|f'''| <= 1-ish, /6)
    for big, small in zip(errs, errs[1:]):
        assert 3.0 < big / small < 5.0, errs  # halving δ quarters the error


def test_spsa_is_unbiased_on_average():
    spec = CircuitSpec(2, 1)
    theta, angles, g = rand(spec.n_params), rand(3, spec.n_angles, seed=4), rand(3, 2, seed=5)
    exact = torch.cat([v.flatten() for v in qworker.vjp(spec, theta, angles, g)])

    def estimate(samples, seed):
        return torch.cat(
            [v.flatten() for v in qworker.vjp(spec, theta, angles, g, "spsa", delta=1e-3, samples=samples, seed=seed)]
        )

    mean = estimate(4000, seed=0)
    single = estimate(1, seed=1)
    assert (mean - exact).norm() < 0.08 * exact.norm()
    assert (single - exact).norm() > 2 * (mean - exact).norm()  # one direction alone is noisy
    torch.testing.assert_close(estimate(3, seed=7), estimate(3, seed=7))  # seeded


class CountingBackend(ShotsBackend):
    """Hardware-like: evaluates the rows it is given (no structure to exploit); counts them."""

    def __init__(self):
        super().__init__(shots=8, seed=0)
        self.tokens = 0

    def expectations(self, spec, theta, angles):
        self.tokens += angles.shape[0]
        return super().expectations(spec, theta, angles)


@pytest.mark.parametrize("method", ["shift", "fd", "spsa"])
def test_shifted_methods_cost_their_budget(method):
    spec, n_tok = CircuitSpec(), 64
    theta, angles, g = rand(40), rand(n_tok, 20), rand(n_tok, 10)
    backend = CountingBackend()
    grad = Gradient(method, samples=5)
    backend.expectations(spec, theta, angles)  # the forward pass
    backend.vjp(spec, theta, angles, g, grad)
    # the forward and, per token, both shifts of every theta and input angle (121), or of each of
    # spsa's 5 directions (docs/design.md, "Gradients")
    budget = 1 + 2 * 5 if method == "spsa" else 1 + 2 * (40 + 20)
    assert grad.evaluations(spec) == budget and backend.tokens == budget * n_tok


def test_adjoint_is_refused_where_there_is_no_state_vector():
    with pytest.raises(ValueError, match="'adjoint' is not supported by backend 'shots'.*shift, fd, spsa"):
        qworker.vjp(CircuitSpec(2, 1), rand(4), rand(1, 4), rand(1, 2), "adjoint", get_backend("shots", seed=0))


@pytest.mark.parametrize(
    "settings,words",
    [
        ({"method": "newton"}, "unknown gradient method 'newton'; choose one of adjoint, shift, fd, spsa"),
        ({"method": "fd", "delta": 0.0}, "delta must be a finite number > 0, at least 1e-08"),
        ({"method": "fd", "delta": float("nan")}, "delta must be a finite number > 0"),
        ({"method": "fd", "delta": 5e-324}, "at least 1e-08 and at most π, got 5e-324"),  # subnormal
        ({"method": "spsa", "samples": 0}, "samples must be an integer >= 1"),
    ],
)
def test_bad_gradient_settings(settings, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        Gradient(**settings)
