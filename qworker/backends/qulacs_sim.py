"""`qulacs`: the circuit in Qulacs, one token at a time — the qworker's CPU simulator and an
independent reference for `local`.

Qulacs's parametric rotations are exp(+i p P/2), the opposite sign of our textbook convention,
so every parameter is stored negated (p = -angle) and its gradient negated back.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from qworker import deadline
from qworker.backends.base import Backend
from qworker.backends.memory import check_memory
from qworker.circuit import CircuitSpec


class _Circuit:
    """A ParametricQuantumCircuit for `spec` whose parametric gates are, in order, the spec's
    parametrised ops; `source[j]` says which input drives gate j."""

    def __init__(self, spec: CircuitSpec):
        import qulacs  # here: Qulacs is optional where only the torch simulator is used (a GPU node)

        check_memory(spec, 3, 16)
        n = spec.n_qubits
        self.spec = spec
        self.circuit = qulacs.ParametricQuantumCircuit(n)
        self.source: list[tuple[str, int]] = []
        for op in spec.ops:
            if op.gate == "H":
                self.circuit.add_H_gate(op.wires[0])
            elif op.gate == "CNOT":
                self.circuit.add_CNOT_gate(*op.wires)
            else:
                add = {"RY": self.circuit.add_parametric_RY_gate, "RZ": self.circuit.add_parametric_RZ_gate}[op.gate]
                add(op.wires[0], 0.0)
                self.source.append(op.param)
        self.is_angle = np.array([src == "angle" for src, _ in self.source])
        self.index = np.array([k for _, k in self.source], dtype=np.int64)
        self.state = qulacs.QuantumState(n)
        self.observable = qulacs.Observable
        basis = np.arange(2**n)
        self.zsign = 1.0 - 2.0 * ((basis[:, None] >> np.arange(n)) & 1)  # (2^n, n)

    def load(self, theta: np.ndarray, angles: np.ndarray) -> None:
        """Set every gate's parameter for one token (negated: Qulacs's sign convention)."""
        values = np.empty(len(self.index))
        values[self.is_angle] = angles[self.index[self.is_angle]]
        values[~self.is_angle] = theta[self.index[~self.is_angle]]
        for j, v in enumerate(values):
            self.circuit.set_parameter(j, -float(v))

    def run(self) -> np.ndarray:
        self.state.set_zero_state()
        self.circuit.update_quantum_state(self.state)
        return np.abs(self.state.get_vector()) ** 2 @ self.zsign

    def backprop(self, weights: np.ndarray) -> np.ndarray:
        """d<sum_i w_i Z_i>/d(angle) for every parametric gate, textbook sign."""
        obs = self.observable(self.spec.n_qubits)
        for i, w in enumerate(weights):
            if w != 0.0:
                obs.add_operator(float(w), f"Z {i}")
        return -np.asarray(self.circuit.backprop(obs))

    def split(self, per_gate: np.ndarray, n_params: int, n_angles: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-gate gradients -> (theta part, angle part)."""
        g_theta, g_angles = np.zeros(n_params), np.zeros(n_angles)
        np.add.at(g_theta, self.index[~self.is_angle], per_gate[~self.is_angle])
        np.add.at(g_angles, self.index[self.is_angle], per_gate[self.is_angle])
        return g_theta, g_angles


def _tokens(spec: CircuitSpec, theta: Tensor, angles: Tensor):
    circ = _Circuit(spec)
    th = theta.detach().cpu().double().numpy()
    an = angles.detach().cpu().double().numpy()
    for n in range(an.shape[0]):
        if n % 64 == 0:
            deadline.check()
        circ.load(th if th.ndim == 1 else th[n], an[n])
        yield n, circ


def expectations(spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
    out = np.zeros((angles.shape[0], spec.n_qubits))
    for n, circ in _tokens(spec, theta, angles):
        out[n] = circ.run()
    return torch.from_numpy(out).to(angles)


def adjoint_vjp(spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor):
    """theta's part summed over tokens for a shared theta (|Θ|,), per token (N, |Θ|) otherwise."""
    g = grad_out.detach().cpu().double().numpy()
    g_theta = np.zeros((angles.shape[0], spec.n_params))
    g_angles = np.zeros((angles.shape[0], spec.n_angles))
    for n, circ in _tokens(spec, theta, angles):
        g_theta[n], g_angles[n] = circ.split(circ.backprop(g[n]), spec.n_params, spec.n_angles)
    g_theta = g_theta if theta.dim() == 2 else g_theta.sum(0)
    return torch.from_numpy(g_theta).to(angles), torch.from_numpy(g_angles).to(angles)


def adjoint_jacobians(spec: CircuitSpec, theta: Tensor, angles: Tensor):
    j_theta = np.zeros((angles.shape[0], spec.n_qubits, spec.n_params))
    j_angles = np.zeros((angles.shape[0], spec.n_qubits, spec.n_angles))
    eye = np.eye(spec.n_qubits)
    for n, circ in _tokens(spec, theta, angles):
        for i in range(spec.n_qubits):
            j_theta[n, i], j_angles[n, i] = circ.split(circ.backprop(eye[i]), spec.n_params, spec.n_angles)
    return torch.from_numpy(j_theta).to(angles), torch.from_numpy(j_angles).to(angles)


class QulacsBackend(Backend):
    """Qulacs, one token at a time: the qworker's simulator and an independent reference."""

    name, statevector = "qulacs", True

    def expectations(self, spec, theta, angles):
        return expectations(spec, theta, angles)

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        return adjoint_vjp(spec, theta, angles, grad_out)

    def _adjoint_jacobians(self, spec, theta, angles):
        return adjoint_jacobians(spec, theta, angles)
