"""`qiskit`: the HyQuT circuit on any Qiskit Estimator V2 primitive — a real device's (e.g.
qiskit-ibm-runtime's EstimatorV2), Aer's, or Qiskit's exact StatevectorEstimator (the default).

A plug-in of the `hyqut.backends` entry point group (pyproject.toml), so `get_backend("qiskit")`
finds it. Hardware-like: gradients by `shift`, `fd` or `spsa` only; `adjoint` is refused.

    backend = get_backend("qiskit")                                  # exact, StatevectorEstimator
    backend = get_backend("qiskit", simulator="aer", shots=4096, seed=1)
    backend = get_backend("qiskit", device="ibm_brisbane", shots=4096)  # IBM Quantum, qiskit-ibm-runtime
    backend = get_backend("qiskit", device="ibm_brisbane", mode="session")  # the device held between jobs
    backend = get_backend("qiskit", device="fake_brisbane", mode="batch")   # qiskit-ibm-runtime's local testing mode
    backend = QiskitBackend(estimator=EstimatorV2(mode=ibm_backend),  # qiskit-ibm-runtime
                            pass_manager=generate_preset_pass_manager(optimization_level=1, backend=ibm_backend),
                            shots=4096, max_batch=300)
    z = backend.expectations(spec, theta, angles)                    # (N, n_q), one job per call

One call is one Estimator job (counted in `usage`): the circuit with symbolic parameters (built
once per spec), the n_q observables Z_i, and every token's parameter values as one PUB (or one PUB per `max_batch`
tokens). Jobs go through `ProviderJobs.run_jobs` (qworker/backends/journal.py): with a journal
attached (a training run's jobs.jsonl) each is recorded, and a resumed run fetches a job it already
submitted by its id (`service.job(id)`: QiskitRuntimeService's for an IBM device) instead of paying
for it again.

Execution modes (`mode`, with `device`; qiskit-ibm-runtime's): `job` (each job queues on its own;
usage is the jobs' quantum time), `batch` (the jobs go in one Batch: scheduled together and
prepared in parallel, usage their quantum time; a training run's jobs depend on one another, layer
after layer and step after step, so each still waits for its turn), `session` (a Session: after
its first job the device is held for the run's next ones while they keep coming, within the
session's interactive time-to-live and `max_time`; usage is the session's wall time, the classical
steps in between included). `close()` closes the batch or session (queued jobs still run).

Qiskit's gates use our conventions (RY(a) = exp(-i a Y/2), RZ(a) = exp(-i a Z/2)) and its qubit
order (qubit 0 the rightmost Pauli label character) is handled by building Z_i from sparse
(Pauli, [qubit]) terms.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qworker.backends.base import MAX_SHOTS, Capabilities
from qworker.backends.journal import CANCELLED, DONE, FAILED, PENDING, JobRequest, ProviderJobs
from qworker.circuit import CircuitSpec

SIMULATORS = ("statevector", "aer")  # the estimators built here when none is given


def qiskit_circuit(spec: CircuitSpec, theta=None, angle=None):
    """The spec as a Qiskit QuantumCircuit, its rotations bound to `theta` (|Θ|) and `angle` (2 n_q)
    parameters; by default `Parameter`s named theta_k and angle_k (OpenQASM 3 inputs of those names,
    `python -m qworker qasm`). angle_2i drives RY on qubit i, angle_2i+1 its RZ."""
    from qiskit.circuit import Parameter, QuantumCircuit

    theta = [Parameter(f"theta_{k}") for k in range(spec.n_params)] if theta is None else theta
    angle = [Parameter(f"angle_{k}") for k in range(spec.n_angles)] if angle is None else angle
    circuit = QuantumCircuit(spec.n_qubits, name=f"hyqut_{spec.n_qubits}q_{spec.n_layers}l_{spec.entangler}")
    for op in spec.ops:
        if op.gate == "H":
            circuit.h(op.wires[0])
        elif op.gate == "CNOT":
            circuit.cx(*op.wires)
        else:
            source, k = op.param
            getattr(circuit, op.gate.lower())((angle if source == "angle" else theta)[k], op.wires[0])
    return circuit


def qasm3(spec: CircuitSpec, measure: bool = False) -> str:
    """The spec's circuit as OpenQASM 3 (Qiskit's exporter): θ and the input angles are `input float[64]`
    declarations theta_0.. and angle_0..; the readout is <Z_i> of every qubit (a comment says so), or,
    with `measure`, every qubit measured into a bit register (<Z_i> = 1 - 2 P(bit i = 1))."""
    from qiskit import qasm3 as exporter

    circuit = qiskit_circuit(spec)
    if measure:
        circuit.measure_all()

    header = (
        f"// HyQuT circuit: {spec.n_qubits} qubits, {spec.n_layers} layer(s), {spec.entangler} entangler "
        f"(qworker.CircuitSpec version {spec.version})\n"
        f"// inputs: theta_0..theta_{spec.n_params - 1} (trainable), angle_0..angle_{spec.n_angles - 1} "
        "(per token: angle_2i -> RY, angle_2i+1 -> RZ on qubit i)\n"
        "// readout: <Z_i> of every qubit i (qubit i is bit i of a basis index)\n"
    )
    return header + exporter.dumps(circuit)


class _Compiled:
    """The spec as a parametrised QuantumCircuit (after the pass manager, if any), its observables
    and, per circuit parameter in the estimator's order, its column in [theta | angles]."""

    def __init__(self, spec: CircuitSpec, pass_manager=None):
        from qiskit.circuit import ParameterVector
        from qiskit.quantum_info import SparsePauliOp

        theta = ParameterVector("theta", spec.n_params)
        angle = ParameterVector("angle", spec.n_angles)
        circuit = qiskit_circuit(spec, theta, angle)
        observables = [SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], spec.n_qubits) for q in range(spec.n_qubits)]
        if pass_manager is not None:  # a device's ISA: its gates, its qubits; observables follow the layout
            circuit = pass_manager.run(circuit)
            observables = [o.apply_layout(circuit.layout) for o in observables]
        column = {p: k for k, p in enumerate(theta)} | {p: spec.n_params + k for k, p in enumerate(angle)}
        self.circuit, self.observables = circuit, observables
        self.columns = np.array([column[p] for p in circuit.parameters], dtype=np.int64)


MODES = ("job", "batch", "session")  # qiskit-ibm-runtime's execution modes (with device=)
STATES = {"DONE": DONE, "ERROR": FAILED, "FAILED": FAILED, "CANCELLED": CANCELLED}  # job.status() -> ours


class QiskitBackend(ProviderJobs):
    """The HyQuT circuit through a Qiskit `BaseEstimatorV2`.

    estimator: any Estimator V2 (a device's); None builds `simulator`'s: "statevector"
    (qiskit.primitives.StatevectorEstimator, exact) or "aer" (qiskit_aer.primitives.EstimatorV2).
    shots: None for the estimator's default precision (exact on the simulators); otherwise the
    target precision 1/sqrt(shots) of every expectation value, which V2 estimators turn into shots
    on a device and into Gaussian noise of that standard deviation on the simulators.
    seed: the built-in estimators' noise (one generator for the backend's life, so repeated calls
    draw fresh noise but a seeded backend repeats itself); a given estimator or a device has nothing
    here to seed (a trainer seeds every seeded backend), so it is ignored there.
    max_batch: most tokens per PUB (a device's limit on parameter sets); all PUBs go in one job.
    pass_manager: transpiles the circuit to the device's ISA once per spec (e.g.
    qiskit.transpiler.generate_preset_pass_manager(optimization_level=1, backend=device)); needed
    by estimators that accept only ISA circuits, such as qiskit-ibm-runtime's.
    device: an IBM Quantum device by name: qiskit-ibm-runtime's EstimatorV2 on it (the account saved
    with QiskitRuntimeService.save_account) and the preset pass manager for it (level 1); a name
    `fake_*` (fake_manila, fake_brisbane, ...) is that device's fake backend in qiskit-ibm-runtime's
    local testing mode (its noise model on Aer; jobs cannot be fetched by id there).
    mode: with device, "job" (default), "batch" or "session" (the module docstring); opened at the
    first job, closed by `close()`.
    service: what fetches a job by id (`service.job(job_id)`), for a given estimator's provider;
    with device it is QiskitRuntimeService (none in local testing mode).
    """

    name = "qiskit"
    seeded, thread_safe = True, False  # one noise generator for the backend's life

    def __init__(
        self,
        estimator=None,
        simulator: str | None = None,
        shots: int | None = None,
        seed: int | None = None,
        max_batch: int | None = None,
        pass_manager=None,
        device: str | None = None,
        mode: str | None = None,
        service=None,
    ):
        problems = []
        if (estimator is not None or device is not None) and simulator is not None:
            problems.append("simulator chooses the estimator built here; leave it out when giving one")
        if estimator is not None and device is not None:
            problems.append("give an estimator or a device name, not both")
        if simulator is not None and simulator not in SIMULATORS:
            problems.append(f"unknown simulator {simulator!r}; choose one of {', '.join(SIMULATORS)}")
        if not (shots is None or (isinstance(shots, int) and 1 <= shots <= MAX_SHOTS)):
            problems.append(f"shots must be None (exact) or an integer >= 1 and <= {MAX_SHOTS}, got {shots!r}")
        if not (max_batch is None or (isinstance(max_batch, int) and max_batch >= 1)):
            problems.append(f"max_batch must be None (no limit) or an integer >= 1, got {max_batch!r}")
        if mode is not None and mode not in MODES:
            problems.append(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        elif mode not in (None, "job") and device is None:
            problems.append(f"mode={mode} is an execution mode of qiskit-ibm-runtime: it needs device=<an IBM device>")
        if problems:
            raise ValueError("invalid qiskit backend settings: " + "; ".join(problems))
        self.shots, self.max_batch, self.pass_manager = shots, max_batch, pass_manager
        self.precision = None if shots is None else 1.0 / math.sqrt(shots)
        self.device_name, self.mode, self.service = device, mode or "job", service
        self._rng = np.random.default_rng(seed)
        self._aer = estimator is None and simulator == "aer"
        self._target, self._context = None, None  # the device, and its open Batch or Session
        if device is not None:
            self._target, ibm_pass_manager, ibm_service = _ibm_device(device)
            self.pass_manager = pass_manager or ibm_pass_manager
            self.service = service or ibm_service
            estimator = None  # built at the first job (a batch or session opens then)
        elif estimator is None:
            estimator = self._default_estimator(simulator or "statevector")
        self._estimator = estimator
        self._compiled: dict[CircuitSpec, _Compiled] = {}

    def _default_estimator(self, simulator: str):
        try:
            if simulator == "aer":
                from qiskit_aer.primitives import EstimatorV2

                return EstimatorV2()  # reseeded per job from self._rng (see submit_job)
            from qiskit.primitives import StatevectorEstimator
        except ImportError as e:
            raise ImportError(f"the qiskit backend's {simulator!r} simulator needs: pip install 'hyqut[qiskit]'") from e
        return StatevectorEstimator(seed=self._rng)  # a Generator, not an int: fresh noise per job

    @property
    def estimator(self):
        """The Estimator V2 jobs go to; on a device, built at first use in its execution mode."""
        if self._estimator is None:
            from qiskit_ibm_runtime import Batch, EstimatorV2, Session

            if self.mode != "job":
                self._context = (Batch if self.mode == "batch" else Session)(backend=self._target)
            self._estimator = EstimatorV2(mode=self._context or self._target)
        return self._estimator

    @estimator.setter
    def estimator(self, value) -> None:
        self._estimator = value

    def close(self) -> None:
        """Close the batch or session: it takes no more jobs, those queued still run."""
        if self._context is not None:
            self._context.close()
            self._context, self._estimator = None, None

    def capabilities(self) -> Capabilities:
        return self._capabilities(
            hardware=True,
            max_shots=MAX_SHOTS,
            max_batch=self.max_batch or 0,
            shots=self.shots or 0,
            mode=self.mode if self.device_name else "",
        )

    def identity(self) -> str:
        where = self.device_name or f"{type(self._estimator).__module__}.{type(self._estimator).__name__}"
        return f"{self.name}:{where}"

    def compiled(self, spec: CircuitSpec) -> _Compiled:
        """The spec's circuit, built (and transpiled) on first use."""
        if spec not in self._compiled:
            self._compiled[spec] = _Compiled(spec, self.pass_manager)
        return self._compiled[spec]

    def reseed(self, seed: int) -> None:
        """Restart the built-in estimators' noise from `seed` (in place: the estimator holds `_rng`)."""
        self._rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state

    def expectations(self, spec, theta, angles):
        n_tok = angles.shape[0]
        if n_tok == 0:
            return angles.new_zeros((0, spec.n_qubits))
        prog = self.compiled(spec)
        an = angles.detach().cpu().double().numpy()
        th = theta.detach().cpu().double().numpy()
        th = np.broadcast_to(th, (n_tok, spec.n_params))  # shared (|Θ|,) or per token (N, |Θ|)
        values = np.ascontiguousarray(np.concatenate([th, an], 1)[:, prog.columns])  # (N, P) in circuit order
        step = self.max_batch or n_tok
        # values (C, 1, P) against observables (n_q,) broadcast to evs (C, n_q)
        pubs = [(prog.circuit, prog.observables, values[s : s + step, None, :]) for s in range(0, n_tok, step)]
        what = f"{spec.n_qubits},{spec.n_layers},{spec.entangler},{spec.version};{self.precision};{step};"
        (result,) = self.run_jobs([JobRequest(pubs, n_tok, self.shots or 0, what.encode() + values.tobytes())])
        evs = np.concatenate([np.asarray(r.data.evs, dtype=np.float64).reshape(-1, spec.n_qubits) for r in result])
        return torch.from_numpy(evs).to(angles)

    # --- jobs (qworker/backends/journal.py) ---------------------------------------------------
    def submit_job(self, pubs):
        if self._aer:  # Aer's estimator seeds its noise from run_options: a fresh seed per job
            self.estimator.options.run_options["seed_simulator"] = int(self._rng.integers(2**31))
        return self.estimator.run(pubs, precision=self.precision)  # one job, however many PUBs

    def job_id(self, job) -> str:
        return str(job.job_id())

    def retrieve_job(self, job_id: str):
        return self.service.job(job_id) if self.service is not None else None

    def job_state(self, job) -> str:
        status = job.status()
        return STATES.get(str(getattr(status, "name", status)).upper(), PENDING)

    def job_result(self, job, pubs):
        return job.result()


def _ibm_device(device: str):
    """(the IBM Quantum device named `device`, its ISA pass manager, the service that fetches its jobs by
    id); a `fake_*` name is the fake backend of qiskit-ibm-runtime's local testing mode (no service)."""
    try:
        from qiskit.transpiler import generate_preset_pass_manager
        from qiskit_ibm_runtime import QiskitRuntimeService
        from qiskit_ibm_runtime.fake_provider.local_service import QiskitRuntimeLocalService
    except ImportError as e:
        raise ImportError(
            f"the qiskit backend's device={device!r} needs qiskit-ibm-runtime: pip install 'hyqut[qiskit]' "
            "qiskit-ibm-runtime, then QiskitRuntimeService.save_account(...) once"
        ) from e
    if device.startswith("fake_"):
        target, service = QiskitRuntimeLocalService().backend(device), None
    else:
        service = QiskitRuntimeService()
        target = service.backend(device)
    return target, generate_preset_pass_manager(optimization_level=1, backend=target), service
