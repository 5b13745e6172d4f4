"""Quantum providers in a folder: jobs that outlive the process that submitted them, behind the
interfaces the real ones give the adapters, for tests of what a resumed run does with them.

- `stubqiskit`: QiskitBackend with a stub Estimator V2 (`run(pubs, precision)` -> a job with
  `job_id()`, `status()`, `result()`) and a stub QiskitRuntimeService (`job(job_id)`), as
  qiskit-ibm-runtime gives them for a device;
- `stubbraket`: BraketBackend with a stub device (`run(program_set, shots)` -> a task with `id`,
  `state()`, `result()`) and the lookup of a task by ARN (what `AwsQuantumTask(arn)` is).

A job is a file in `store` (its pickled payload and its state), QUEUED until `latency` seconds after
its submission, then DONE; a test marks it ERROR/FAILED or CANCELLED by editing the file. Results
are computed when asked, from the payload alone: exact on Qiskit's StatevectorEstimator; on
Braket's LocalSimulator with its sampling seeded from the payload. The same request gives the same
result in any process, as a device's job read back by id does. `submissions(store)` lists every
job ever submitted, in order: what a provider would have billed.

Installed for a subprocess by `install(folder)`: a dist-info whose entry points register both in
the `hyqut.backends` group (put `folder` and this file's folder on PYTHONPATH).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import time
import uuid
from pathlib import Path
from unittest import mock

import numpy as np

from qworker.backends.braket_adapter import BraketBackend
from qworker.backends.qiskit_adapter import QiskitBackend


class Store:
    def __init__(self, folder: str | Path, latency: float = 0.0):
        self.folder, self.latency = Path(folder), float(latency)
        self.folder.mkdir(parents=True, exist_ok=True)

    def submit(self, payload, prefix: str, content: bytes) -> str:
        """A new job of `payload`; `content` is what it asks for (its digest seeds sampled results)."""
        job_id = f"{prefix}{uuid.uuid4().hex[:12]}"
        (self.folder / f"{job_id}.payload").write_bytes(pickle.dumps(payload))
        now = time.time()
        state = {
            "id": job_id,
            "submitted": now,
            "ready_at": now + self.latency,
            "status": None,
            "digest": hashlib.sha256(content).hexdigest(),
        }
        (self.folder / f"{job_id}.json").write_text(json.dumps(state))
        with open(self.folder / "submissions.log", "a") as f:  # the provider's bill
            f.write(json.dumps({"id": job_id, "digest": state["digest"], "time": now}) + "\n")
        return job_id

    def state(self, job_id: str) -> dict:
        path = self.folder / f"{job_id}.json"
        if not path.exists():
            raise KeyError(f"no job {job_id!r} at this provider")
        return json.loads(path.read_text())

    def payload(self, job_id: str):
        return pickle.loads((self.folder / f"{self.state(job_id)['id']}.payload").read_bytes())

    def status(self, job_id: str) -> str:
        s = self.state(job_id)
        return s["status"] or ("DONE" if time.time() >= s["ready_at"] else "QUEUED")

    def wait(self, job_id: str) -> str:
        while (status := self.status(job_id)) == "QUEUED":
            time.sleep(0.05)
        return status


def mark(store: str | Path, job_id: str, status: str) -> None:
    """Set a job's state at the provider (ERROR, FAILED, CANCELLED), as a device's failure would."""
    path = Path(store) / f"{job_id}.json"
    state = json.loads(path.read_text())
    path.write_text(json.dumps({**state, "status": status}))


def submissions(store: str | Path) -> list[dict]:
    path = Path(store) / "submissions.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- Qiskit: an Estimator V2 and a runtime service ------------------------------------------------


class StubJob:
    def __init__(self, store: Store, job_id: str):
        self.store, self._id = store, job_id

    def job_id(self) -> str:
        return self._id

    def status(self) -> str:
        return self.store.status(self._id)

    def result(self):
        from qiskit.primitives import StatevectorEstimator

        status = self.store.wait(self._id)
        if status != "DONE":
            raise RuntimeError(f"job {self._id} {status}")
        return StatevectorEstimator().run(self.store.payload(self._id)).result()  # exact


class StubEstimator:
    def __init__(self, store: Store):
        self.store = store

    def run(self, pubs, precision=None):
        content = pickle.dumps([(str(c), [str(o) for o in obs], np.asarray(v).tobytes()) for c, obs, v in pubs])
        return StubJob(self.store, self.store.submit(pubs, "stubjob-", content))


class StubService:
    def __init__(self, store: Store):
        self.store = store

    def job(self, job_id: str) -> StubJob:
        self.store.state(job_id)  # KeyError for a job this provider never had
        return StubJob(self.store, job_id)


class StubQiskitBackend(QiskitBackend):
    name = "stubqiskit"

    def __init__(self, store: str, latency: float = 0.0, shots: int | None = None, seed: int | None = None):
        s = Store(store, latency)  # seed: a trainer's, nothing to seed here (the device is exact)
        super().__init__(estimator=StubEstimator(s), service=StubService(s), shots=shots)


# --- Braket: a device and tasks by ARN -------------------------------------------------------------


class StubTask:
    def __init__(self, store: Store, arn: str):
        self.store, self.id = store, arn

    def state(self) -> str:
        status = self.store.status(self._name)
        return "COMPLETED" if status == "DONE" else status

    @property
    def _name(self) -> str:
        return self.id.split("/")[-1]

    def result(self):
        from braket.devices import LocalSimulator

        if self.store.wait(self._name) != "DONE":
            return None  # what AwsQuantumTask.result() gives for a failed task
        program = self.store.payload(self._name)
        seed = int(self.store.state(self._name)["digest"][:8], 16)
        real, draws = np.random.default_rng, iter(range(seed, seed + 10**9))
        with mock.patch("numpy.random.default_rng", lambda *a, **k: real(next(draws))):  # seeded sampling
            return LocalSimulator().run(program, shots=program.total_shots).result()


class StubDevice:
    def __init__(self, store: Store):
        self.store = store

    def run(self, program, shots):
        name = self.store.submit(program, "stubtask-", program.to_ir().json().encode())  # OpenQASM and inputs
        return StubTask(self.store, f"arn:aws:braket:stub:000000000000:quantum-task/{name}")


class StubBraketBackend(BraketBackend):
    name = "stubbraket"

    def __init__(self, store: str, latency: float = 0.0, shots: int = 1000):
        super().__init__(shots=shots)  # the LocalSimulator's limits: 100 executables a program set
        s = Store(store, latency)
        self.device, self.device_name = StubDevice(s), f"stub:{store}"
        self.tasks = lambda arn: StubTask(s, arn) if s.state(arn.split("/")[-1]) else None  # AwsQuantumTask(arn)


def install(folder: Path) -> Path:
    """Entry points for both stubs in `folder` (a dist-info): put it and tests/ on PYTHONPATH."""
    info = Path(folder) / "provider_stub-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: provider-stub\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[hyqut.backends]\nstubqiskit = provider_stub:StubQiskitBackend\nstubbraket = provider_stub:StubBraketBackend\n"
    )
    return Path(folder)
