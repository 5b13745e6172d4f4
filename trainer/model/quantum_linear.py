"""QuantumLinear: a drop-in for nn.Linear through a variational quantum circuit (docs/design.md).

    x (..., d_in) -> compress: Linear(d_in, 2 n_q) -> angles = π·tanh(features)
                  -> circuit: <Z_i>, i < n_q      -> expand: Linear(n_q, d_out) -> (..., d_out)

The angle map π·tanh keeps every angle in (-π, π), so distinct features never alias onto the
same rotation. All tokens of a call go to the backend as one batch.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

from qworker import Backend, CircuitSpec, Gradient, check_batch, get_backend


class QuantumLinear(nn.Module):
    """Same shapes as nn.Linear(in_features, out_features); leading dims are folded into one
    batch of tokens and restored.

    Init: `compress` and `expand` as nn.Linear (Kaiming-uniform); theta ~ U(-π, π).
    Gradients: `grad` names the method (adjoint, shift, fd, spsa, or any registered one; settings
    via `Gradient`); the backend makes the circuit part of autograd's graph (`Backend.apply`).

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
        self.backend.reseed(seed)
        z = self.backend.apply(self.spec, theta, angles, self.grad.seeded(seed))
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
