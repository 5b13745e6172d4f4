"""The run's hardware jobs, recorded in RUN/jobs.jsonl (docs/design.md, "Hardware jobs"): the one
place the trainer gives qworker's job journal (qworker/backends/journal.py) its run directory and
tells it where the run is.

    jobs = RunJobs.attach(model, run_dir, rank)   # None unless a projection's backend submits provider jobs
    jobs.at(step=3, phase="train", index=0)       # before each micro-step ("eval", window i: each validation window)
    jobs.close()                                  # the session's end: closes the backends' batches and sessions

Every job the quantum projections submit is a line of jobs.jsonl (step, phase, index, layer,
provider job id, circuits, shots, attempt, status); a resumed run replays the steps after its
checkpoint with the same requests, finds their jobs there and fetches them by id from the provider
instead of submitting them again.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from qworker.backends.journal import JOURNAL_FILE, JobJournal, ProviderJobs, job_adapter, read_journal
from trainer.model.quantum_linear import QuantumLinear


class RunJobs:
    def __init__(self, journal: JobJournal, adapters: list[ProviderJobs]):
        self.journal, self.adapters = journal, adapters

    @classmethod
    def attach(cls, model: nn.Module, run_dir: Path, rank: int = 0) -> RunJobs | None:
        """Journal every quantum projection whose backend submits provider jobs (qiskit, braket)."""
        adapters = {}
        for name, module in model.named_modules():
            if isinstance(module, QuantumLinear) and (adapter := job_adapter(module.backend)) is not None:
                adapters.setdefault(id(adapter), (name, adapter))
        if not adapters:
            return None
        journal = JobJournal(Path(run_dir) / JOURNAL_FILE, rank)
        for name, adapter in adapters.values():
            adapter.attach(journal, layer=name)
        return cls(journal, [adapter for _, adapter in adapters.values()])

    def at(self, **position) -> None:
        self.journal.at(**position)

    def close(self) -> None:
        for adapter in self.adapters:
            adapter.close()
            adapter.attach(None)


def shots_submitted_after(run_dir: Path, step: int) -> int:
    """The shots of the jobs recorded in RUN/jobs.jsonl for steps after `step` (paid for, never logged:
    a session killed mid-step)."""
    return sum(
        r["shots"]
        for r in read_journal(Path(run_dir) / JOURNAL_FILE)
        if r["status"] in ("submitted", "resubmitted") and r.get("step", 0) > step
    )
