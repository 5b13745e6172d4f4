"""Hardware jobs never paid for twice (qworker/backends/journal.py, trainer/run/jobs.py): every job is
recorded in the run's jobs.jsonl; a resumed run fetches a job it already submitted by its id from the
provider instead of submitting it again, and submits again (counted) one the provider lost. Against
providers whose jobs outlive the process (tests/provider_stub.py: a Qiskit Estimator V2 and
runtime service, a Braket device and tasks by ARN), against qiskit-ibm-runtime's local testing mode
(fake backends: its jobs cannot be fetched by id, so a resumed run runs them again), and end to end:
a training run killed while its jobs are queued, then resumed."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from provider_stub import StubBraketBackend, StubQiskitBackend, install, mark, submissions

from qworker import CircuitSpec, get_backend
from qworker.backends import Usage
from qworker.backends.journal import JobJournal, read_journal

ROOT = Path(__file__).parents[1]
SPEC = CircuitSpec(3, 1)


def batch(n_tok: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(SPEC.n_params, generator=g, dtype=torch.float64) * 6 - 3
    return theta, torch.rand(n_tok, SPEC.n_angles, generator=g, dtype=torch.float64) * 6 - 3


def journaled(backend, path: Path, **position):
    journal = JobJournal(path)  # read afresh: what a new process finds
    journal.at(**position)
    backend.attach(journal, layer="layers.0.attention.wq")
    return backend


class Killed(BaseException):
    """The process dies while it waits for a job (after the provider named it)."""


def die_while_waiting(backend):
    def job_result(job, payload):
        raise Killed

    backend.job_result = job_result
    return backend


@pytest.mark.parametrize("make", [StubQiskitBackend, StubBraketBackend], ids=["qiskit", "braket"])
def test_a_resumed_call_fetches_its_job_by_id(tmp_path, make):
    store, path = tmp_path / "provider", tmp_path / "run" / "jobs.jsonl"
    theta, angles = batch(5)
    first = die_while_waiting(journaled(make(str(store), latency=0.3), path, step=4, phase="train", index=0))
    with pytest.raises(Killed):
        first.expectations(SPEC, theta, angles)
    assert len(submissions(store)) == 1 and first.usage.jobs == 1
    (submitted,) = read_journal(path)
    assert submitted["status"] == "submitted" and submitted["job_id"].endswith(submissions(store)[0]["id"])
    assert {k: submitted[k] for k in ("step", "phase", "index", "layer", "circuits", "attempt")} == {
        "step": 4, "phase": "train", "index": 0, "layer": "layers.0.attention.wq", "circuits": 5, "attempt": 1,
    }  # fmt: skip
    resumed = journaled(make(str(store), latency=0.3), path, step=4, phase="train", index=0)
    z = resumed.expectations(SPEC, theta, angles)
    assert len(submissions(store)) == 1  # fetched by id, not submitted again
    assert resumed.usage == Usage(jobs=0, circuits=0, shots=0, reused=1)
    assert [r["status"] for r in read_journal(path)] == ["submitted", "reused", "done"]
    again = make(str(store)).expectations(SPEC, theta, angles)  # no journal: a new job, the same answer
    assert torch.equal(z, again) and len(submissions(store)) == 2
    exact = get_backend("local").expectations(SPEC, theta, angles)
    torch.testing.assert_close(z, exact, atol=0.2 if make is StubBraketBackend else 1e-12, rtol=0)
    moved = journaled(make(str(store)), path, step=5, phase="train", index=0)  # another place in the run
    moved.expectations(SPEC, theta, angles)
    assert len(submissions(store)) == 3 and moved.usage.jobs == 1


@pytest.mark.parametrize("make,lost", [(StubQiskitBackend, "ERROR"), (StubQiskitBackend, "CANCELLED"),
                                       (StubBraketBackend, "FAILED")])  # fmt: skip
def test_a_job_the_provider_lost_is_submitted_again_counted(tmp_path, make, lost):
    store, path = tmp_path / "provider", tmp_path / "jobs.jsonl"
    theta, angles = batch(4, seed=1)
    first = die_while_waiting(journaled(make(str(store), latency=5), path, step=2, phase="eval", index=3))
    with pytest.raises(Killed):
        first.expectations(SPEC, theta, angles)
    mark(store, submissions(store)[0]["id"].split("/")[-1], lost)  # the device failed it meanwhile
    resumed = journaled(make(str(store)), path, step=2, phase="eval", index=3)
    resumed.expectations(SPEC, theta, angles)
    assert len(submissions(store)) == 2 and resumed.usage.jobs == 1 and resumed.usage.resubmitted == 1
    states = [(r["status"], r["attempt"]) for r in read_journal(path)]
    failed = "cancelled" if lost == "CANCELLED" else "failed"
    assert states == [("submitted", 1), ("reused", 1), (failed, 1), ("resubmitted", 2), ("done", 2)]
    # a job lost at every attempt fails the call, naming it, after max_resubmits
    stubborn = journaled(make(str(store)), tmp_path / "other.jsonl", step=1)
    stubborn.job_state = lambda job: "failed"
    with pytest.raises(RuntimeError, match=r"was failed at the provider, attempt 4 of 4"):
        stubborn.expectations(SPEC, theta, angles)


def test_local_testing_mode_runs_in_batch_and_session_and_cannot_fetch(tmp_path):
    """qiskit-ibm-runtime's fake backends: mode=batch and mode=session open a Batch and a Session at
    the first job (the local service ignores their scheduling) and close them; their jobs are
    recorded, but the local service fetches no job by id, so a resumed call runs its job again."""
    pytest.importorskip("qiskit_ibm_runtime")
    from qiskit_ibm_runtime import Batch, Session

    theta, angles = batch(3, seed=2)
    exact = get_backend("local").expectations(SPEC, theta, angles)
    for mode, kind in (("batch", Batch), ("session", Session)):
        path = tmp_path / f"{mode}.jsonl"
        backend = journaled(get_backend("qiskit", device="fake_manila", mode=mode, shots=4000), path, step=1)
        assert backend.capabilities().mode == mode and backend._context is None  # nothing opened yet
        z = backend.expectations(SPEC, theta, angles)
        assert isinstance(backend._context, kind) and backend.estimator.mode is backend._context
        assert (z - exact).abs().max() < 0.25  # the fake device's noise model, 4000 shots
        backend.close()
        assert backend._context is None
        resumed = journaled(get_backend("qiskit", device="fake_manila", mode=mode, shots=4000), path, step=1)
        resumed.expectations(SPEC, theta, angles)
        first, _, again, _ = read_journal(path)
        assert (first["status"], again["status"], resumed.usage.jobs, resumed.usage.reused) == (
            "submitted", "submitted", 1, 0)  # fmt: skip
        assert first["job_id"] != again["job_id"] and first["device"] == "qiskit:fake_manila"
    with pytest.raises(ValueError, match="mode=session is an execution mode of qiskit-ibm-runtime: it needs device="):
        get_backend("qiskit", mode="session")
    with pytest.raises(ValueError, match="unknown mode 'dedicated'"):
        get_backend("qiskit", device="fake_manila", mode="dedicated")


def test_the_plan_says_what_each_mode_does_to_queueing():
    from trainer.model.circuits import Circuits
    from trainer.model.config import from_preset
    from trainer.run.config import TrainConfig
    from trainer.run.hardware import format_plan, hardware_plan

    pytest.importorskip("qiskit_ibm_runtime")
    cfg = from_preset("tiny", quantum="wq", quantum_layers=(0,), n_qubits=4, context=16)
    for mode, words in (
        ("job", "each job queues on its own"),
        ("batch", "scheduled together"),
        ("session", "only the first job queues"),
    ):
        circuits = Circuits("qiskit", grad="fd", options=f"device=fake_manila,mode={mode},shots=100")
        plan = hardware_plan(cfg, TrainConfig(steps=3, batch_size=1, circuits=circuits))
        assert plan.mode == mode and words in format_plan(plan)


# --- end to end: a training run killed while its jobs are queued -----------------------------------

SMALL = ["--model", "tiny", "--quantum", "wq", "--quantum-layers", "0", "--n-qubits", "3", "--context", "8"]
RUN = ["--batch-size", "1", "--eval-batches", "1", "--steps", "5", "--eval-every", "5", "--save-every", "2"]


@pytest.mark.slow
def test_killed_run_resumes_without_paying_twice(tmp_path, cache_dir):
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HYQUT_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "tests"), str(install(tmp_path / "plugin"))])

    def command(out: Path, store: Path) -> list[str]:
        options = f"store={store},latency=0.5,shots=100"  # each job queued 0.5 s
        backend = ["--qbackend", "stubqiskit", "--qbackend-options", options, "--grad", "fd"]
        return [sys.executable, "-m", "trainer.main", *SMALL, *RUN, *backend, "--out", str(out)]

    whole, whole_store = tmp_path / "whole", tmp_path / "provider-whole"
    proc = subprocess.run(command(whole, whole_store), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    cut, store = tmp_path / "cut", tmp_path / "provider"
    errors = open(tmp_path / "killed.stderr", "w")  # noqa: SIM115 - closed below
    run = subprocess.Popen(command(cut, store), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=errors)
    deadline = time.time() + 300  # kill it hard once step 4's job is queued (its checkpoint: step 2)
    while time.time() < deadline and run.poll() is None:
        if any(r.get("step") == 4 and r["status"] == "submitted" for r in read_journal(cut / "jobs.jsonl")):
            run.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    run.wait()
    errors.close()
    stderr = (tmp_path / "killed.stderr").read_text()
    assert run.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {stderr[-2000:]}"
    paid_before = len(submissions(store))
    resumed = subprocess.run(command(cut, store), cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-3000:]
    assert re.search(r"resuming .* from step 2", resumed.stdout), resumed.stdout[-2000:]

    def losses(out):
        return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]

    assert losses(cut) == losses(whole)  # the same floats, the replayed steps' jobs fetched by id
    bill = submissions(store)
    assert len({job["digest"] for job in bill}) == len(bill)  # no request submitted twice
    assert len(bill) == len(submissions(whole_store))  # the uninterrupted run paid as much
    journal = read_journal(cut / "jobs.jsonl")
    reused = [r for r in journal if r["status"] == "reused"]
    assert {r["step"] for r in reused} == {3, 4}  # step 3 (done, unsaved) and step 4's queued job
    assert len(reused) == paid_before - 2  # every job of steps 3 and 4 the killed session had submitted
    log = [json.loads(line) for line in (cut / "log.jsonl").read_text().splitlines()]
    assert [(r["step"], r["jobs_reused"]) for r in log if r["jobs_reused"]] == [(3, 1), (4, 1)]
    summary = json.loads((cut / "summary.json").read_text())
    whole_summary = json.loads((whole / "summary.json").read_text())
    assert summary["hardware"]["shots_total"] == whole_summary["hardware"]["shots_total"]  # every shot counted once
