"""ClassicalBottleneck: the control for QuantumLinear (`--branch classical`).

The same path as the quantum projection with a classical map where the circuit was, so a run can
tell what the circuit itself adds beyond squeezing the projection through 2·n_q numbers:

    x (..., d_in) -> compress: Linear(d_in, 2 n_q) -> angles = π·tanh(features)
                  -> mix: Linear(2 n_q, n_q) -> tanh   (in place of <Z_i> of the circuit, also in [-1, 1])
                  -> expand: Linear(n_q, d_out) -> (..., d_out)

The mix has 2·n_q·n_q + n_q parameters (210 at n_q = 10) where the circuit has 2·n_q·q_layers
(40): the control is, if anything, the more expressive of the two per parameter.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class ClassicalBottleneck(nn.Module):
    """Same shapes as nn.Linear(in_features, out_features); init as nn.Linear (Kaiming-uniform).

    >>> layer = ClassicalBottleneck(64, 32, n_qubits=4)
    >>> layer(torch.randn(2, 8, 64)).shape
    torch.Size([2, 8, 32])
    """

    def __init__(self, in_features: int, out_features: int, n_qubits: int = 10, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features, self.n_qubits = in_features, out_features, n_qubits
        self.compress = nn.Linear(in_features, 2 * n_qubits, bias=bias)
        self.mix = nn.Linear(2 * n_qubits, n_qubits, bias=bias)
        self.expand = nn.Linear(n_qubits, out_features, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        angles = math.pi * torch.tanh(self.compress(x))  # (..., 2 n_q)
        z = torch.tanh(self.mix(angles))  # (..., n_q), in [-1, 1] like <Z_i>
        return self.expand(z)  # (..., d_out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, n_qubits={self.n_qubits}"
