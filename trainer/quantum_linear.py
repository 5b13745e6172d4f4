"""QuantumLinear: a drop-in for nn.Linear through a variational quantum circuit (docs/design.md).

    x (..., d_in) -> compress: Linear(d_in, 2 n_q) -> angles = π·tanh(features)
                  -> circuit: <Z_i>, i < n_q      -> expand: Linear(n_q, d_out) -> (..., d_out)

The angle map π·tanh keeps every angle in (-π, π), so distinct features never alias onto the
same rotation. All tokens of a call go to the backend as one batch.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
from torch import Tensor, nn

from qworker import Backend, CircuitSpec, Gradient, check_batch, get_backend
from qworker.backends.local import expectations as local_expectations


class QuantumLinear(nn.Module):
    """Same shapes as nn.Linear(in_features, out_features); leading dims are folded into one
    batch of tokens and restored.

    Init: `compress` and `expand` as nn.Linear (Kaiming-uniform); theta ~ U(-π, π).
    Gradients: `grad` names the method (adjoint, shift, fd, spsa; settings via `Gradient`). The
    `local` backend with `adjoint` differentiates by autograd; every other pair goes through the
    backend's vector-Jacobian product, the path a remote executor takes.

        >>> layer = QuantumLinear(64, 32, n_qubits=4, n_layers=1)
        >>> layer(torch.randn(2, 8, 64)).shape
        torch.Size([2, 8, 32])
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        n_qubits: int = 10,
        n_layers: int = 2,
        entangler: str = "ring",
        backend: str | Backend = "local",
        grad: str | Gradient = "adjoint",
        bias: bool = True,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.spec = CircuitSpec(n_qubits, n_layers, entangler)
        self.backend = get_backend(backend)
        self.grad = grad if isinstance(grad, Gradient) else Gradient(grad)
        self.backend.check_method(self.grad)
        self.compress = nn.Linear(in_features, self.spec.n_angles, bias=bias)
        self.theta = nn.Parameter(torch.empty(self.spec.n_params).uniform_(-math.pi, math.pi))
        self.expand = nn.Linear(n_qubits, out_features, bias=bias)
        # random numbers (SPSA directions, shot sampling) come from (seed, calls), checkpointed with the
        # weights: a resumed run continues the uninterrupted run's sequence
        self.register_buffer("rng", torch.stack([torch.randint(2**62, ()), torch.tensor(0)]))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        angles = math.pi * torch.tanh(self.compress(x.reshape(-1, self.in_features)))  # (B·T, 2 n_q)
        with torch.autocast(angles.device.type, enabled=False):  # circuits in float32 (or 64), never bf16
            z = self.circuit(angles.float() if angles.dtype not in (torch.float32, torch.float64) else angles)
        return self.expand(z.to(x.dtype)).reshape(*lead, self.out_features)

    def circuit(self, angles: Tensor) -> Tensor:
        """<Z_i> for a batch of angles (N, 2 n_q) -> (N, n_q), differentiable."""
        theta = self.theta.to(angles.dtype)
        check_batch(self.spec, theta, angles)
        seed = int(self.rng[0] + 1_000_003 * self.rng[1]) % 2**63  # this call's; then count it
        self.rng[1] += 1
        start = time.perf_counter()
        if self.backend.name == "local" and self.grad.method == "adjoint":
            z = local_expectations(self.spec, theta, angles)
        else:
            self.backend.reseed(seed)
            grad = dataclasses.replace(self.grad, seed=seed) if self.grad.method == "spsa" else self.grad
            wants_grad = torch.is_grad_enabled() and (theta.requires_grad or angles.requires_grad)
            z = _CircuitFunction.apply(theta, angles, self.backend, self.spec, grad, wants_grad)
        circuit_clock.seconds += time.perf_counter() - start
        if z.requires_grad and angles.requires_grad:  # time the circuit's backward too
            z.register_hook(circuit_clock.start)
            angles.register_hook(circuit_clock.stop)
        return z

    def extra_repr(self) -> str:
        s = self.spec
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, n_qubits={s.n_qubits}, "
            f"n_layers={s.n_layers}, entangler={s.entangler}, backend={self.backend.name}, grad={self.grad.method}"
        )


class CircuitClock:
    """Wall seconds spent evaluating circuits, forward and backward, by every QuantumLinear: the
    trainer reads and resets it each step to report the quantum share of step time. (On CUDA the
    figures count launch time only, unless the caller synchronises.)"""

    def __init__(self) -> None:
        self.seconds, self._began = 0.0, 0.0

    def start(self, _grad: Tensor) -> None:  # a tensor hook: the gradient reached the circuit
        self._began = time.perf_counter()

    def stop(self, _grad: Tensor) -> None:  # a tensor hook: the gradient left the circuit
        self.seconds += time.perf_counter() - self._began

    def take(self) -> float:
        """The seconds since the last take, and reset."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


circuit_clock = CircuitClock()


class _CircuitFunction(torch.autograd.Function):
    """Forward: `backend.start`, which returns the expectations and, for a remote backend, has
    already sent the gradient evaluations (they run while the classical model goes on).
    Backward: the VJP, awaited only now."""

    @staticmethod
    def forward(ctx, theta, angles, backend: Backend, spec: CircuitSpec, grad: Gradient, wants_grad: bool) -> Tensor:
        theta, angles = theta.detach(), angles.detach()
        if not wants_grad:
            return backend.expectations(spec, theta, angles)
        ctx.pending = backend.start(spec, theta, angles, grad)
        ctx.theta_like, ctx.angles_like = theta.new_empty(0), angles.new_empty(0)
        return ctx.pending.expectations

    @staticmethod
    def backward(ctx, g: Tensor):
        g_theta, g_angles = ctx.pending.vjp(g.contiguous())  # kept: a retained graph may ask again
        return g_theta.to(ctx.theta_like), g_angles.to(ctx.angles_like), None, None, None, None
