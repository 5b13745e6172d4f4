"""`pennylane`: the HyQuT circuit on any installed PennyLane device, by name — a simulator
(`default.qubit`, `lightning.qubit`) or a provider plug-in's hardware device (`qiskit.remote`,
`braket.aws.qubit`, `ionq.qpu`, ...).

A plug-in of the `hyqut.backends` entry point group (pyproject.toml). Hardware-like: gradients by
`shift`, `fd` or `spsa` only (a hardware device has no state vector; the adapter does not ask a
simulator for one either, so a run behaves the same on both).

    backend = get_backend("pennylane")                                   # default.qubit, exact
    backend = get_backend("pennylane", device="lightning.qubit", shots=4096, seed=1)
    backend = get_backend("pennylane", device="braket.aws.qubit",       # any device and its options
                          device_options={"device_arn": "arn:aws:braket:::device/qpu/..."}, shots=1000)
    z = backend.expectations(spec, theta, angles)                        # (N, n_q), one execution per call

One call is one execution of one QNode whose gate parameters carry a leading batch dimension
(PennyLane's parameter broadcasting): a device that simulates a broadcast natively runs it at once;
others get it split into one circuit per row by PennyLane, all submitted as one batch. PennyLane's
rotations follow our conventions (RY(a) = exp(-i a Y/2)) and wire i is our qubit i.
"""

from __future__ import annotations

import numpy as np
import torch

from qworker.backends.base import MAX_SHOTS, Backend, Capabilities
from qworker.circuit import CircuitSpec


class PennyLaneBackend(Backend):
    """The HyQuT circuit through a PennyLane device.

    device: the device's name, as for `qml.device` (the plug-in that provides it must be installed).
    shots: None for exact expectations (simulators only), or shots per circuit.
    seed: the device's sampling seed (a simulator's), reset by `reseed`; None draws one.
    device_options: further keyword arguments of the device (a provider's ARN, backend name, ...).
    """

    name = "pennylane"
    seeded, thread_safe = True, False  # a sampling seed; devices rebuilt by reseed

    def __init__(
        self,
        device: str = "default.qubit",
        shots: int | None = None,
        seed: int | None = None,
        device_options: dict | None = None,
    ):
        problems = []
        if not (isinstance(device, str) and device):
            problems.append(f"device must be a PennyLane device name such as 'default.qubit', got {device!r}")
        if not (shots is None or (isinstance(shots, int) and 1 <= shots <= MAX_SHOTS)):
            problems.append(f"shots must be None (exact) or an integer >= 1 and <= {MAX_SHOTS}, got {shots!r}")
        if problems:
            raise ValueError("invalid pennylane backend settings: " + "; ".join(problems))
        try:
            import pennylane as qml
        except ImportError as e:
            raise ImportError("the pennylane backend needs: pip install 'hyqut[pennylane]'") from e
        self.qml, self.device_name, self.shots, self.seed = qml, device, shots, seed
        self.device_options = dict(device_options or {})
        self._qnodes: dict[CircuitSpec, object] = {}
        self._device(1)  # an unknown device or option fails here, naming it, not at the first call

    def _device(self, n_qubits: int):
        options = {**self.device_options, **({"seed": self.seed} if self.seed is not None else {})}
        try:
            return self.qml.device(self.device_name, wires=n_qubits, **options)
        except self.qml.exceptions.DeviceError as e:
            raise ValueError(f"pennylane device {self.device_name!r} cannot be built: {e}") from e

    def capabilities(self) -> Capabilities:
        return self._capabilities(hardware=True, max_shots=MAX_SHOTS, shots=self.shots or 0)

    def reseed(self, seed: int) -> None:
        """Rebuild the devices with `seed` (a simulator's sampling restarts from it)."""
        self.seed = seed
        self._qnodes.clear()

    def qnode(self, spec: CircuitSpec):
        """The spec's circuit as a QNode on a device of its width, built on first use."""
        if spec not in self._qnodes:
            qml = self.qml

            def circuit(theta, angles):  # theta (|Θ|,) or (N, |Θ|); angles (N, 2 n_q)
                for op in spec.ops:
                    if op.gate == "H":
                        qml.Hadamard(op.wires[0])
                    elif op.gate == "CNOT":
                        qml.CNOT(op.wires)
                    else:
                        source, k = op.param
                        value = angles[:, k] if source == "angle" else theta[..., k]
                        (qml.RY if op.gate == "RY" else qml.RZ)(value, wires=op.wires[0])
                return [qml.expval(qml.PauliZ(q)) for q in range(spec.n_qubits)]

            self._qnodes[spec] = qml.QNode(circuit, self._device(spec.n_qubits), diff_method=None, shots=self.shots)
        return self._qnodes[spec]

    def expectations(self, spec, theta, angles):
        n_tok = angles.shape[0]
        if n_tok == 0:
            return angles.new_zeros((0, spec.n_qubits))
        an = angles.detach().cpu().double().numpy()
        th = theta.detach().cpu().double().numpy()
        out = self.qnode(spec)(th, an)  # n_q arrays of (N,): one execution, the batch broadcast
        self.account(n_tok, self.shots or 0)
        evs = np.stack([np.broadcast_to(np.asarray(z, dtype=np.float64), (n_tok,)) for z in out], 1)
        return torch.from_numpy(np.ascontiguousarray(evs)).to(angles)
