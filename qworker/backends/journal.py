"""Hardware jobs recorded, and never paid for twice (docs/design.md, "Hardware jobs").

An adapter whose calls become provider jobs (`qiskit`, `braket`) is a `ProviderJobs`: it says how to
submit a job, name it, fetch it again by its id from the provider, read its state and its result,
and describes each job it is about to run as a `JobRequest` (what it submits, its circuits and
shots, and the bytes that identify it). `ProviderJobs.run_jobs` does the rest, the same for every
adapter:

    journal = JobJournal(run_dir / "jobs.jsonl")       # the trainer's (trainer/run/jobs.py)
    adapter.attach(journal, layer="layers.0.attention.wq")
    journal.at(step=12, phase="train", index=0)          # where the run is: every job is recorded there
    results = adapter.run_jobs([request, ...])           # all submitted (or fetched) before any is awaited

With a journal, every job is a line of `jobs.jsonl` the moment the provider has named it (its key,
the run's step, phase and index, the layer, the provider's job id, circuits, shots, attempt,
status), and its outcome another. The key is a SHA-256 of the request (the adapter, device and
shots, the circuit and every parameter value) and of where the run is; a training step's requests
are a function of the checkpoint and the data position, so a resumed run that replays a step
makes the same keys. A key already in the journal is not submitted again: its job is fetched by
its id (`Usage.reused`) and its result awaited or read. A job the provider reports failed or
cancelled is submitted again (`Usage.resubmitted`, counted as a new job: it is paid for), at most
`max_resubmits` times. A provider that cannot fetch jobs by id (the SDKs' local simulators) gets
the job again: it costs nothing there.

The one window left: a process killed after the provider accepted a job and before its id reached
the journal (one write and fsync) loses that job, and the resumed run pays for it again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from qworker.backends.base import Backend

JOURNAL_FILE = "jobs.jsonl"
# a job's state, whatever the provider calls it
PENDING, DONE, FAILED, CANCELLED = "pending", "done", "failed", "cancelled"
LOST = (FAILED, CANCELLED)  # states a job does not come back from: submit it again


@dataclass
class JobRequest:
    """One provider job to be: `payload` is what the adapter submits (its PUBs, its program set),
    `content` the bytes that identify it beyond the adapter's device and shots (the circuit, every
    parameter value)."""

    payload: object
    circuits: int
    shots: int
    content: bytes


class JobJournal:
    """The run's jobs, one JSON line each (appended, flushed and fsynced before the job is awaited).
    Several processes (data-parallel ranks) may append to one file: each line is one write."""

    def __init__(self, path: Path, rank: int = 0):
        self.path, self.rank = Path(path), rank
        self.position: dict = {}  # where the run is (step, phase, index): set by `at`
        self.latest: dict[str, dict] = {}  # key -> its last record
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a kill: the one before it holds
                    continue
                self.latest[record["key"]] = record

    def at(self, **position) -> None:
        """Where the run is now (e.g. step=12, phase="train", index=0): recorded with, and part of the
        key of, every job from here."""
        self.position = position

    def key(self, adapter: ProviderJobs, request: JobRequest) -> str:
        header = json.dumps(
            {"adapter": adapter.identity(), "layer": adapter.job_layer, **self.position, "shots": request.shots},
            sort_keys=True,
        )
        return hashlib.sha256(header.encode() + b"\0" + request.content).hexdigest()

    def find(self, key: str) -> dict | None:
        return self.latest.get(key)

    def record(self, key: str, status: str, **fields) -> dict:
        record = {"key": key, "status": status, "time": round(time.time(), 3), "rank": self.rank, **fields}
        line = json.dumps(record) + "\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())  # one write: lines of concurrent ranks do not interleave
            os.fsync(fd)
        finally:
            os.close(fd)
        self.latest[key] = {**self.latest.get(key, {}), **record}
        return record


def read_journal(path: Path) -> list[dict]:
    """Every record of a journal file, in order ([] if there is none)."""
    if not Path(path).exists():
        return []
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class ProviderJobs(Backend):
    """A backend whose calls are jobs at a provider. A subclass gives `submit_job`, `job_id`,
    `retrieve_job`, `job_state`, `job_result` and `identity`, and calls `run_jobs`."""

    max_resubmits = 3  # a job the provider loses more often than this fails the call

    journal: JobJournal | None = None
    job_layer: str = ""

    def attach(self, journal: JobJournal | None, layer: str = "") -> None:
        """Record this backend's jobs in `journal` under `layer` (None: record nothing)."""
        self.journal, self.job_layer = journal, layer

    # --- what an adapter gives --------------------------------------------------------------
    def submit_job(self, payload):
        """Submit `payload`; the provider's job, not awaited."""
        raise NotImplementedError

    def job_id(self, job) -> str:
        raise NotImplementedError

    def retrieve_job(self, job_id: str):
        """The provider's job `job_id`, or None where jobs cannot be fetched by id (a local simulator)."""
        return None

    def job_state(self, job) -> str:
        """PENDING, DONE, FAILED or CANCELLED."""
        raise NotImplementedError

    def job_result(self, job, payload):
        """The job's result in the adapter's terms (waits for it); None or an exception if it failed."""
        raise NotImplementedError

    def identity(self) -> str:
        """What, besides a request, decides its result: the adapter and its device (part of the key)."""
        return self.name

    # --- the one path every adapter's jobs take ------------------------------------------------
    def run_jobs(self, requests: list[JobRequest]) -> list:
        """The results of `requests`, in order: each submitted (or, journaled already, fetched by
        its id), all before any is awaited; a job lost at the provider is submitted again."""
        started = [self._start(r) for r in requests]
        return [self._finish(r, *s) for r, s in zip(requests, started)]

    def _start(self, request: JobRequest):
        journal = self.journal
        if journal is None:
            return None, self._submit(request, None, 1), 1
        key = journal.key(self, request)
        seen = journal.find(key)
        if seen and seen.get("job_id") and seen["status"] not in LOST:
            job = self.retrieve_job(seen["job_id"])
            if job is not None:
                self.usage.reused += 1
                journal.record(key, "reused", **self._fields(request, seen["job_id"], seen.get("attempt", 1)))
                return key, job, seen.get("attempt", 1)
        attempt = seen.get("attempt", 0) + 1 if seen and seen["status"] in LOST else 1
        return key, self._submit(request, key, attempt), attempt

    def _submit(self, request: JobRequest, key: str | None, attempt: int):
        job = self.submit_job(request.payload)
        self.account(request.circuits, request.shots)
        if attempt > 1:
            self.usage.resubmitted += 1
        if key is not None:
            status = "submitted" if attempt == 1 else "resubmitted"
            self.journal.record(key, status, **self._fields(request, self.job_id(job), attempt))
        return job

    def _finish(self, request: JobRequest, key: str | None, job, attempt: int):
        while True:
            state, result = self.job_state(job), None
            if state not in LOST:
                try:
                    result = self.job_result(job, request.payload)
                except Exception:
                    state = self.job_state(job)
                    if state not in LOST:
                        raise
                if result is not None:
                    if key is not None:
                        self.journal.record(key, DONE, **self._fields(request, self.job_id(job), attempt))
                    return result
                state = state if state in LOST else FAILED
            job_id = self.job_id(job)
            if key is not None:
                self.journal.record(key, state, **self._fields(request, job_id, attempt))
            if attempt > self.max_resubmits:
                raise RuntimeError(
                    f"{self.name} job {job_id} was {state} at the provider, attempt {attempt} of "
                    f"{self.max_resubmits + 1}; giving up (its step can be resumed: the journal has the rest)"
                )
            attempt += 1
            job = self._submit(request, key, attempt)

    def _fields(self, request: JobRequest, job_id: str, attempt: int) -> dict:
        return {
            **self.journal.position,
            "layer": self.job_layer,
            "provider": self.name,
            "device": self.identity(),
            "job_id": job_id,
            "circuits": request.circuits,
            "shots": request.circuits * request.shots,
            "attempt": attempt,
        }


def job_adapter(backend: Backend) -> ProviderJobs | None:
    """The ProviderJobs inside `backend` (through wrappers such as readout mitigation), or None."""
    while not isinstance(backend, ProviderJobs) and hasattr(backend, "inner"):
        backend = backend.inner
    return backend if isinstance(backend, ProviderJobs) else None
