"""The HyQuT circuit as plain data (docs/design.md, "The circuit").

A circuit is a list of `Op`s that maps one-to-one to the wire format: every simulator, worker and
hardware adapter builds from this list, so they all mean the same circuit.

Conventions (textbook): RY(a) = exp(-i a Y/2), RZ(a) = exp(-i a Z/2); qubit i is bit i of a
basis-state index (little endian, as in Qulacs); outputs are <Z_i> ordered by qubit.

    >>> spec = CircuitSpec()                 # the paper's circuit
    >>> spec.n_qubits, spec.n_gates, spec.n_params, spec.n_angles
    (10, 80, 40, 20)
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

ENTANGLERS = ("ring", "chain")
VERSION = 1  # bump when the meaning of a spec changes; the wire carries it

ParamRef = tuple[Literal["angle", "theta"], int]


@dataclass(frozen=True)
class Op:
    """One gate. `wires` is (target,) or (control, target); `param` names where the rotation
    angle comes from: ("angle", k) is input feature k of each token, ("theta", k) is trainable
    angle k shared by all tokens, None for a fixed gate."""

    gate: str
    wires: tuple[int, ...]
    param: ParamRef | None = None


@dataclass(frozen=True)
class CircuitSpec:
    """The HyQuT variational circuit: H on every qubit; encoding RY(angle[2i]) RZ(angle[2i+1])
    on qubit i; `n_layers` of (CNOT entangler, RZ(theta) on every qubit, RY(theta) on every
    qubit); readout <Z_i> for every qubit."""

    n_qubits: int = 10
    n_layers: int = 2
    entangler: str = "ring"
    version: int = VERSION

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.n_qubits, int) or not 1 <= self.n_qubits <= MAX_QUBITS:
            problems.append(f"n_qubits must be an integer in [1, {MAX_QUBITS}], got {self.n_qubits!r}")
        if not isinstance(self.n_layers, int) or self.n_layers < 0:
            problems.append(f"n_layers must be a non-negative integer, got {self.n_layers!r}")
        if self.entangler not in ENTANGLERS:
            problems.append(f"unknown entangler {self.entangler!r}; choose one of {', '.join(ENTANGLERS)}")
        if self.version != VERSION:
            problems.append(f"circuit spec version {self.version!r} is not supported (this build speaks {VERSION})")
        if problems:
            raise ValueError("invalid circuit spec: " + "; ".join(problems))

    @cached_property
    def ops(self) -> tuple[Op, ...]:
        n = self.n_qubits
        ops = [Op("H", (q,)) for q in range(n)]
        for q in range(n):
            ops += [Op("RY", (q,), ("angle", 2 * q)), Op("RZ", (q,), ("angle", 2 * q + 1))]
        k = 0
        for _ in range(self.n_layers):
            ops += [Op("CNOT", pair) for pair in entangler_pairs(n, self.entangler)]
            for gate in ("RZ", "RY"):
                ops += [Op(gate, (q,), ("theta", k + q)) for q in range(n)]
                k += n
        return tuple(ops)

    @property
    def n_gates(self) -> int:
        """Gates of the circuit proper; the preparation H layer is fixed and not counted."""
        return sum(op.gate != "H" for op in self.ops)

    @property
    def n_params(self) -> int:
        """|Θ|, the trainable angles."""
        return 2 * self.n_qubits * self.n_layers

    @property
    def n_angles(self) -> int:
        """Input angles per token (two per qubit)."""
        return 2 * self.n_qubits

    def statevector_bytes(self, itemsize: int = 8) -> int:
        """Bytes of one token's state vector (complex64 by default)."""
        return (2**self.n_qubits) * itemsize


MAX_QUBITS = 30  # 2^30 amplitudes = 8 GiB a state: past this no simulator here is useful


def entangler_pairs(n_qubits: int, entangler: str) -> list[tuple[int, int]]:
    """(control, target) pairs of one entangling layer: a chain 0→1→…→n-1, a ring closes it."""
    pairs = [(q, q + 1) for q in range(n_qubits - 1)]
    if entangler == "ring" and n_qubits > 1:
        pairs.append((n_qubits - 1, 0))
    return pairs
