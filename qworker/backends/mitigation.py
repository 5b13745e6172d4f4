"""Readout-error mitigation for any shot-based backend: `get_backend(name, mitigate="readout", ...)`.

A measured bit of qubit i reads 1 when it was 0 with probability e0_i, and 0 when it was 1 with
probability e1_i (the qubit's 2x2 confusion matrix). Then a true <Z_i> = z is measured as

    m = (m0 + m1)/2 + z (m0 - m1)/2,    m0 = 1 - 2 e0_i (the reading of |0>),  m1 = -1 + 2 e1_i (of |1>)

so z = (m - (m0 + m1)/2) / ((m0 - m1)/2): the inverse of the confusion matrix applied to the
qubit's marginal, exact for independent per-qubit readout errors. The matrices are given
(`confusion`), or calibrated from the backend itself before its first call on a circuit: one job
of two circuits of that same circuit family, one that ends in |0...0> and one in |1...1>, with
the backend's shots each (counted in its usage like any job).
"""

from __future__ import annotations

import math

import torch

from qworker.backends.base import Backend, Capabilities, Usage
from qworker.circuit import CircuitSpec
from qworker.gradients import Shifts

MITIGATIONS = ("readout",)


class ReadoutMitigated(Backend):
    """`inner` (a shot-based backend) with its <Z_i> corrected for readout error.

    confusion: None to calibrate, or per-qubit confusion matrices (n_q, 2, 2), column j the
    distribution of the bit read when j was prepared: [[1 - e0, e1], [e0, 1 - e1]].
    Everything else (methods, capabilities, usage, reseeding) is the inner backend's."""

    def __init__(self, inner: Backend, confusion=None):
        caps = inner.capabilities()
        if not caps.shots:
            raise ValueError(
                f"mitigate='readout' corrects sampled readout; backend {inner.name!r} returns exact expectations "
                "here (give it shots)"
            )
        self.inner, self.name = inner, inner.name
        self.confusion = None if confusion is None else _checked(torch.as_tensor(confusion, dtype=torch.float64))
        self._readings: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # n_q -> (m0, m1)

    statevector = property(lambda self: self.inner.statevector)
    seeded = property(lambda self: self.inner.seeded)
    thread_safe = property(lambda self: self.inner.thread_safe)

    def capabilities(self) -> Capabilities:
        return self.inner.capabilities()

    @property
    def usage(self) -> Usage:
        return self.inner.usage

    def reseed(self, seed: int) -> None:
        self.inner.reseed(seed)

    def close(self) -> None:
        self.inner.close()

    def setup_usage(self, spec: CircuitSpec) -> Usage:
        if self.confusion is not None or spec.n_qubits in self._readings:
            return Usage()
        return Usage(1, 2, 2 * self.inner.capabilities().shots)

    def jobs_for(self, circuits: int) -> int:
        return self.inner.jobs_for(circuits)

    def expectations(self, spec, theta, angles):
        return self.correct(spec, self.inner.expectations(spec, theta, angles))

    def evaluate_shifts(self, spec: CircuitSpec, shifts: Shifts):
        return self.correct(spec, self.inner.evaluate_shifts(spec, shifts))

    def readings(self, spec: CircuitSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """(m0, m1): each qubit's <Z> as read when it is |0> and when it is |1>, (n_q,) each."""
        n = spec.n_qubits
        if n not in self._readings:
            if self.confusion is not None:
                if self.confusion.shape[0] != n:
                    raise ValueError(f"confusion holds {self.confusion.shape[0]} qubits' matrices, the circuit has {n}")
                c = self.confusion  # P(read 0 | 0) - P(read 1 | 0), and the same for a prepared 1
                self._readings[n] = (c[:, 0, 0] - c[:, 1, 0], c[:, 0, 1] - c[:, 1, 1])
            else:
                self._readings[n] = self._calibrate(spec)
        return self._readings[n]

    def correct(self, spec: CircuitSpec, z: torch.Tensor) -> torch.Tensor:
        m0, m1 = (m.to(z) for m in self.readings(spec))
        return ((z - (m0 + m1) / 2) / ((m0 - m1) / 2)).clamp(-1.0, 1.0)

    def _calibrate(self, spec: CircuitSpec) -> tuple[torch.Tensor, torch.Tensor]:
        read = self.inner.expectations(spec, *basis_state_inputs(spec)).double()  # (2, n_q): |0...0>, |1...1>
        m0, m1 = read[0], read[1]
        if bool(((m0 - m1) <= 0.2).any()):
            raise ValueError(
                f"readout calibration found qubits that barely tell 0 from 1 (<Z|0> - <Z|1> = {(m0 - m1).tolist()}); "
                "the device's readout is too noisy to invert"
            )
        return m0, m1


def basis_state_inputs(spec: CircuitSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """(theta, angles (2, 2 n_q)) for which the circuit ends in |0...0> (row 0) and |1...1> (row 1):
    theta 0 (every ansatz rotation the identity, the CNOTs permuting basis states) and encoding
    angles that turn each qubit's |+> into |0> (RY(-π/2)) or |1> (RY(π/2)); for row 1, the bits that
    the CNOTs take to all ones (their inverse, the same gates in reverse order, applied to 1...1)."""
    bits = [1] * spec.n_qubits
    for op in reversed(spec.ops):
        if op.gate == "CNOT":
            control, target = op.wires
            bits[target] ^= bits[control]
    angles = torch.zeros(2, spec.n_angles, dtype=torch.float64)
    angles[0, 0::2] = -math.pi / 2
    angles[1, 0::2] = torch.tensor([math.pi / 2 if b else -math.pi / 2 for b in bits], dtype=torch.float64)
    return torch.zeros(spec.n_params, dtype=torch.float64), angles


def _checked(confusion: torch.Tensor) -> torch.Tensor:
    ok = confusion.dim() == 3 and confusion.shape[1:] == (2, 2) and bool(((confusion >= 0) & (confusion <= 1)).all())
    if not ok or not torch.allclose(confusion.sum(1), torch.ones((), dtype=torch.float64)):
        raise ValueError(
            "confusion must be per-qubit 2x2 matrices (n_q, 2, 2) of probabilities whose columns sum to 1, "
            f"got shape {tuple(confusion.shape)}"
        )
    return confusion
