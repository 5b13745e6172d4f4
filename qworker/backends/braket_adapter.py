"""`braket`: the HyQuT circuit on Amazon Braket — the SDK's LocalSimulator (the default) or a device
by its ARN — one program set per call.

A plug-in of the `hyqut.backends` entry point group (pyproject.toml). Hardware-like: gradients by
`shift`, `fd` or `spsa` only; shots are required (a program set on a QPU has no exact expectation).

    backend = get_backend("braket", shots=1000)                                   # LocalSimulator
    backend = get_backend("braket", shots=1000, device="arn:aws:braket:us-east-1::device/qpu/ionq/Forte-1")
    z = backend.expectations(spec, theta, angles)           # (N, n_q), one program-set task per call

The circuit is built once per spec with a `FreeParameter` per theta component and input angle; a
call's rows are the input sets of one `CircuitBinding`, in one `ProgramSet` run as one task of
`shots` shots per executable (split into several tasks only where the device caps a program set's
executables, a limit it reports). Tasks go through `ProviderJobs.run_jobs`
(qworker/backends/journal.py): with a journal attached (a training run's jobs.jsonl) each is
recorded by its ARN, and a resumed run fetches a task it already created (`AwsQuantumTask(arn)`)
instead of paying for it again; the LocalSimulator's tasks live in its process and cannot be
fetched, so there a resumed run runs them again (they cost nothing).

The Z_i observables all commute and are diagonal in the computational basis, so every executable
measures every qubit once and <Z_i> = 1 - 2·P(bit i = 1) comes from the same shots: one executable
per row, not one per row and observable (n_q times the executables and shots for the same
precision). Braket's rotations follow our conventions (RY(a) = exp(-i a Y/2)) and qubit i is our
qubit i. The SDK's LocalSimulator runs program sets (amazon-braket-sdk 1.127, default simulator
1.41: its action map states `braket.ir.openqasm.program_set` with at most 100 executables and
200,000 total shots a program set), so a gradient of more rows is several tasks there; QPUs state
their own.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qworker.backends.base import MAX_SHOTS, Capabilities
from qworker.backends.journal import CANCELLED, DONE, FAILED, PENDING, JobRequest, ProviderJobs
from qworker.circuit import CircuitSpec

LOCAL = "local"  # device: the SDK's LocalSimulator (no AWS account needed)


STATES = {"COMPLETED": DONE, "FAILED": FAILED, "CANCELLING": CANCELLED, "CANCELLED": CANCELLED}  # task.state()


class BraketBackend(ProviderJobs):
    """The HyQuT circuit through Amazon Braket program sets.

    shots: shots per circuit (required).
    device: "local" for the SDK's LocalSimulator, or a device ARN (an `AwsDevice`: AWS credentials
    and region from the usual AWS configuration); a device without program sets is refused.
    """

    name = "braket"
    thread_safe = False  # keeps a cache of built circuits

    def __init__(self, shots: int | None = None, device: str = LOCAL):
        if not (isinstance(shots, int) and 1 <= shots <= MAX_SHOTS):
            raise ValueError(
                f"invalid braket backend settings: shots must be an integer >= 1 and <= {MAX_SHOTS} (program sets "
                f"sample; there is no exact mode), got {shots!r}"
            )
        try:
            from braket.devices import LocalSimulator
        except ImportError as e:
            raise ImportError("the braket backend needs: pip install 'hyqut[braket]'") from e
        self.shots, self.device_name = shots, device
        self.tasks = None  # fetches a task by ARN (AwsQuantumTask); LocalSimulator tasks cannot be
        if device == LOCAL:
            self.device = LocalSimulator()
        else:
            from braket.aws import AwsDevice, AwsQuantumTask

            self.device, self.tasks = AwsDevice(device), AwsQuantumTask
        self.max_executables = program_set_limit(self.device, device, shots)
        self._circuits: dict[CircuitSpec, tuple[object, list[str]]] = {}

    def capabilities(self) -> Capabilities:
        return self._capabilities(hardware=True, max_shots=MAX_SHOTS, max_batch=self.max_executables, shots=self.shots)

    def jobs_for(self, circuits: int) -> int:
        return math.ceil(circuits / self.max_executables) if self.max_executables else int(circuits > 0)

    def circuit(self, spec: CircuitSpec):
        """(the spec's Braket circuit with free parameters, their names in [theta | angles] order)."""
        if spec not in self._circuits:
            from braket.circuits import Circuit, FreeParameter

            names = [f"theta_{k}" for k in range(spec.n_params)] + [f"angle_{k}" for k in range(spec.n_angles)]
            circuit = Circuit()
            for op in spec.ops:
                if op.gate == "H":
                    circuit.h(op.wires[0])
                elif op.gate == "CNOT":
                    circuit.cnot(*op.wires)
                else:
                    source, k = op.param
                    parameter = FreeParameter(names[k if source == "theta" else spec.n_params + k])
                    (circuit.ry if op.gate == "RY" else circuit.rz)(op.wires[0], parameter)
            self._circuits[spec] = (circuit, names)
        return self._circuits[spec]

    def expectations(self, spec, theta, angles):
        from braket.program_sets import CircuitBinding, ProgramSet

        n_tok = angles.shape[0]
        if n_tok == 0:
            return angles.new_zeros((0, spec.n_qubits))
        circuit, names = self.circuit(spec)
        th = np.broadcast_to(theta.detach().cpu().double().numpy(), (n_tok, spec.n_params))
        values = np.concatenate([th, angles.detach().cpu().double().numpy()], 1)  # (N, |Θ| + 2 n_q)
        used = set(p.name for p in circuit.parameters)  # a column no gate reads is not an input
        step = self.max_executables or n_tok
        what = f"{spec.n_qubits},{spec.n_layers},{spec.entangler},{spec.version};".encode()
        requests = []  # one task, unless the device caps a program set
        for start in range(0, n_tok, step):
            rows = np.ascontiguousarray(values[start : start + step])
            inputs = {name: rows[:, k].tolist() for k, name in enumerate(names) if name in used}
            program = ProgramSet(CircuitBinding(circuit, input_sets=inputs), shots_per_executable=self.shots)
            requests.append(JobRequest(program, len(rows), self.shots, what + rows.tobytes()))
        entries = [entry for result in self.run_jobs(requests) for entry in result.entries[0].entries]
        return torch.from_numpy(np.stack([_z(entry, spec.n_qubits) for entry in entries])).to(angles)

    # --- tasks (qworker/backends/journal.py) --------------------------------------------------
    def identity(self) -> str:
        return f"{self.name}:{self.device_name}"

    def submit_job(self, program):
        return self.device.run(program, shots=program.total_shots)

    def job_id(self, task) -> str:
        return str(task.id)

    def retrieve_job(self, arn: str):
        """The task of ARN `arn` (AwsQuantumTask); None on the LocalSimulator, whose tasks live in memory."""
        return self.tasks(arn) if self.tasks is not None else None

    def job_state(self, task) -> str:
        return STATES.get(str(task.state()).upper(), PENDING)

    def job_result(self, task, program):
        return task.result()  # None for a failed task


def _z(entry, n_qubits: int) -> np.ndarray:
    """<Z_i> of every qubit from one executable's shots (rows: shots; columns: measured qubits)."""
    bits = np.asarray(entry.measurements)
    column = {q: c for c, q in enumerate(entry.measured_qubits)}
    return np.array([1.0 - 2.0 * bits[:, column[q]].mean() for q in range(n_qubits)])


def program_set_limit(device, name: str, shots: int) -> int:
    """The most executables of `shots` shots the device takes in one program set, from the limits
    its action map states (executables, total shots; 0: none stated). ValueError naming the
    fallback when it takes no program sets, or not even one executable of `shots` shots."""
    from braket.device_schema import DeviceActionType

    action = device.properties.action
    if DeviceActionType.OPENQASM_PROGRAM_SET not in action:
        kinds = ", ".join(getattr(k, "value", str(k)) for k in action)
        raise ValueError(
            f"braket device {name!r} does not run program sets (its actions: {kinds}); use a device that does, or "
            "reach this one a task per circuit through PennyLane: --qbackend pennylane with device=braket.aws.qubit "
            "(the pennylane-braket plug-in)"
        )
    limits = action[DeviceActionType.OPENQASM_PROGRAM_SET]
    most = getattr(limits, "maximumExecutables", None) or 0
    total = getattr(limits, "maximumTotalShots", None)
    if total:
        if shots > total:
            raise ValueError(f"braket device {name!r} takes at most {total:,} shots a program set; shots={shots:,}")
        most = min(most or total, total // shots)
    return int(most)
