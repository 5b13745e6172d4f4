"""What a training run costs on quantum hardware: planned before it starts, measured while it runs
(docs/design.md, "The trainer").

    plan = hardware_plan(cfg, train)          # None unless --qbackend is hardware-like
    print(format_plan(plan))                  # --describe
    check_budget(plan, train.shot_budget)     # --shot-budget: ValueError if the plan exceeds it
    over_budget(plan, train, step, spent, last_shots)  # in the loop: why the next step may not run
    meter = UsageMeter(model, device)         # in the loop: meter.take() -> this step's Usage, all ranks

Every quantum projection sends one batch per micro-step: with shift, fd or spsa its forward and
every shifted evaluation of its B·T tokens in one call (one job, unless the device caps a job's
size: `Backend.jobs_for`). A validation pass runs each of its windows forward (no gradient) through
every projection. Shots are circuits times the backend's shots per circuit; the queue wait is the
backend's reported latency per job, the jobs of a rank following one another.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import torch
import torch.distributed as dist
from torch import nn

from qworker.backends import Backend, Usage, get_backend
from trainer.model.config import PROJECTIONS, ModelConfig
from trainer.model.quantum_linear import QuantumLinear
from trainer.run.config import TrainConfig


@dataclass(frozen=True)
class HardwarePlan:
    backend: str
    grad: str
    shots_per_circuit: int  # 0: exact expectations (a simulator behind a hardware interface)
    projections: int  # quantum projections of the model: each its own batch per micro-step
    world: int  # data-parallel ranks; every figure counts all of them
    per_step: Usage  # one optimizer step (grad_accum micro-steps)
    per_eval: Usage  # one validation pass (at most: fewer windows on a small validation split)
    setup: Usage  # once per session, all projections and ranks (e.g. readout calibration)
    evals: int  # validation passes in the planned steps
    steps: int  # the optimizer steps planned
    queue_s_per_job: float
    mode: str = ""  # the provider's execution mode (qiskit-ibm-runtime's job, batch, session), if any

    @property
    def run(self) -> Usage:
        return self.per_step * self.steps + self.per_eval * self.evals + self.setup

    def queue_s(self, usage: Usage) -> float:
        """Seconds one rank waits in the device's queue for `usage`'s jobs, run one after another; in a
        session only the first job queues (the device is then held for the run's next ones)."""
        if self.mode == "session":
            return self.queue_s_per_job if usage.jobs else 0.0
        return usage.jobs / self.world * self.queue_s_per_job


# what each execution mode does to queueing and to what is billed (--describe prints it)
MODES = {
    "job": "job mode: each job queues on its own; usage billed: the jobs' quantum time",
    "batch": "batch mode: the jobs go in one batch, scheduled together and prepared in parallel; usage billed: "
    "the jobs' quantum time; a step's jobs depend on one another (layer after layer), so each still queues "
    "after the one before it, as in job mode",
    "session": "session mode: the device is held for this run between its jobs (within the session's "
    "interactive time-to-live and max_time), so only the first job queues; usage billed: the session's "
    "wall time, the classical work between jobs included",
}


def hardware_plan(cfg: ModelConfig, t: TrainConfig, world: int = 1, first_step: int = 0) -> HardwarePlan | None:
    """The jobs, circuits and shots of steps first_step+1 .. t.steps on `world` ranks; None when
    the model has no circuits or they do not run on a hardware-like backend in this process."""
    circuits = t.circuits
    if not cfg.has_circuits or circuits.remote:
        return None
    backend = get_backend(circuits.backend_for(seed=0))
    caps = backend.capabilities()
    if not caps.hardware:
        return None
    spec = cfg.circuit_spec()
    projections = sum(cfg.replaces(i, name) for i in range(cfg.n_layers) for name in PROJECTIONS)
    per_call = _call(backend, t.batch_size * cfg.context * circuits.gradient().evaluations(spec), caps.shots)
    per_window = _call(backend, cfg.context, caps.shots)  # a validation window: forward only
    steps = range(first_step + 1, t.steps + 1)
    evals = sum(1 for s in steps if t.validates_at(s))
    setup = backend.setup_usage(spec)  # every session builds its backends afresh
    return HardwarePlan(
        backend=circuits.backend,
        grad=circuits.grad,
        shots_per_circuit=caps.shots,
        projections=projections,
        world=world,
        per_step=per_call * (projections * t.grad_accum * world),
        per_eval=per_window * (projections * t.eval_batches * t.batch_size),
        setup=setup * (projections * world),
        evals=evals,
        steps=len(steps),
        queue_s_per_job=caps.queue_latency_s,
        mode=caps.mode,
    )


def check_budget(plan: HardwarePlan | None, budget: int | None, spent: int = 0) -> None:
    """ValueError, naming the figures and the flags, when `spent` shots plus the plan exceed `budget`."""
    if budget is None:
        return
    if plan is None:
        raise ValueError("--shot-budget is for a hardware-like --qbackend in this process (shots, qiskit, ...)")
    need = spent + plan.run.shots
    if need > budget:
        raise ValueError(
            f"--shot-budget {budget:,} is too small for this run: it plans {plan.run.shots:,} shots "
            f"({plan.per_step.shots:,} a step for {plan.steps} steps, {plan.evals} validation passes of at most "
            f"{plan.per_eval.shots:,}){f', after {spent:,} already spent' if spent else ''}; raise --shot-budget, "
            "or lower --steps, --batch-size, --context or the shots (--qbackend-options shots=N)"
        )


def over_budget(plan: HardwarePlan, t: TrainConfig, step: int, spent: int, last_shots: int) -> str | None:
    """Why the next step (step + 1) would take the run past --shot-budget, or None: it is planned
    to cost its share of the plan, or what the last step cost if that was more."""
    nxt = step + 1
    cost = plan.per_step.shots + (plan.setup.shots if not last_shots else 0)  # calibration: a session's first step
    cost += plan.per_eval.shots if t.validates_at(nxt) else 0
    cost = max(cost, last_shots)
    if spent + cost <= t.shot_budget:
        return None
    return f"shot budget: {spent:,} shots spent, step {nxt} would take ~{cost:,} more, --shot-budget {t.shot_budget:,}"


def format_plan(plan: HardwarePlan) -> str:
    """The plan as --describe prints it."""
    shots = f"{plan.shots_per_circuit:,} shots/circuit" if plan.shots_per_circuit else "exact expectations"
    lines = [
        f"  hardware plan: {plan.backend}, {plan.grad}, {shots}, {plan.projections} quantum projection(s), "
        f"{plan.world} rank(s)"
    ]
    if plan.mode:
        lines.append(f"    {MODES.get(plan.mode, plan.mode)}")
    rows = [("per step", plan.per_step), ("per validation pass", plan.per_eval)]
    if plan.setup.jobs:
        rows.append(("once a session (calibration)", plan.setup))
    rows.append((f"whole run ({plan.steps} steps, {plan.evals} passes)", plan.run))
    for name, u in rows:
        lines.append(
            f"    {name:<34} jobs {u.jobs:>8,}  circuits {u.circuits:>14,}  shots {u.shots:>18,}  "
            f"queue wait ~{plan.queue_s(u):,.0f} s"
        )
    return "\n".join(lines)


def _call(backend: Backend, circuits: int, shots: int) -> Usage:
    return Usage(backend.jobs_for(circuits), circuits, circuits * shots)


class UsageMeter:
    """The jobs, circuits and shots the model's quantum projections have spent, all ranks together.
    `shots_total` starts from `shots_before` (a resumed run's earlier sessions) and grows with
    every `take`."""

    def __init__(self, model: nn.Module, device: torch.device, shots_before: int = 0):
        backends = {id(m.backend): m.backend for m in model.modules() if isinstance(m, QuantumLinear)}
        self.backends, self.device = list(backends.values()), device
        self._seen, self.shots_total = self._local(), shots_before

    def _local(self) -> Usage:
        return sum((b.usage for b in self.backends), Usage())

    def take(self) -> Usage:
        """What every rank spent since the last take (a collective: every rank calls it)."""
        now = self._local()
        new, self._seen = now - self._seen, now
        counts = torch.tensor(astuple(new), dtype=torch.float64, device=self.device)
        dist.all_reduce(counts)  # float64 holds integers exactly up to 2^53
        usage = Usage(*(int(c) for c in counts.tolist()))
        self.shots_total += usage.shots
        return usage
