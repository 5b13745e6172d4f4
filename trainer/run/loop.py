"""The training loop of one session of a run (docs/design.md, "The trainer"). A `Run` holds the
loop's state in one place: the DeepSpeed engine, the data and its sampler, the step, the hardware
plan and meter, the metrics, the stop flag. `Run.train` reads in this order, every rank alike:

    while steps are left and no rank was asked to stop (SIGTERM, Ctrl-C):
        stop if the next step would take the run past --shot-budget
        one optimizer step: grad_accum micro-steps (forward, backward; DeepSpeed clips and steps
            the optimizer at the accumulation boundary), the loss averaged over ranks
        validate (every --eval-every steps, and the last)
        measure the jobs, circuits and shots it spent (hardware-like backends; all ranks; provider
            jobs are recorded in jobs.jsonl as they are submitted, and a replayed step fetches its own)
        log: log.jsonl, metrics, the trackers (--report-to), the progress bar
        checkpoint (every --save-every steps, the last, and when asked to stop)
    save a budget-stopped run; the summary: loss.png, summary.json

    run = Run(train_config, engine, corpus, rank, world)
    run.resume()                               # a run directory with a checkpoint of this run
    run.meter_hardware(plan, shots_before)     # a hardware-like backend (trainer/run/hardware.py)
    run.train()
"""

from __future__ import annotations

import json
import math
import signal
import time

import torch
import torch.distributed as dist

from trainer.data.batches import BatchSampler
from trainer.data.corpus import Corpus
from trainer.model.accounting import count_parameters
from trainer.model.quantum_linear import circuit_clock
from trainer.run import checkpoint as ckpt
from trainer.run.config import TrainConfig
from trainer.run.hardware import HardwarePlan, UsageMeter, over_budget
from trainer.run.jobs import RunJobs
from trainer.run.metrics import TrainMetrics
from trainer.run.tracking import Tracking

KEEP_CHECKPOINTS = 2


class Run:
    """One session of a training run on this rank. The collectives run on the engine's device
    (NCCL, the GPUs' backend, takes no CPU tensor)."""

    def __init__(self, t: TrainConfig, engine, corpus: Corpus, rank: int, world: int):
        self.t, self.engine, self.corpus, self.rank, self.world = t, engine, corpus, rank, world
        context = engine.module.cfg.context
        self.sampler = BatchSampler(corpus.train, t.batch_size, context, t.seed, rank, world)
        self.tokens_per_step = t.batch_size * t.grad_accum * context * world  # all ranks
        self.step = 0  # optimizer steps done
        self.saved = 0  # the step of the last checkpoint
        self.plan: HardwarePlan | None = None  # what the steps left should cost, on a hardware-like backend
        self.meter: UsageMeter | None = None  # what they did cost, all ranks
        self.last_shots = 0  # what the last step cost: the next may cost as much
        self.metrics: TrainMetrics | None = None  # Prometheus, rank 0 with --metrics-port
        self.tracking: Tracking | None = None  # TensorBoard, W&B, csv: rank 0 with --report-to
        self.bar = None  # the progress bar (rank 0 shows it)
        self.stop_asked = False  # SIGTERM or SIGINT on any rank: finish the step, save, stop
        self.stop_reason: str | None = None  # why the run stopped before t.steps (the shot budget)
        self.jobs = RunJobs.attach(engine.module, t.out, rank)  # provider jobs, recorded in t.out/jobs.jsonl

    def resume(self) -> None:
        """Continue from the last checkpoint in t.out: weights, optimizer, scheduler, data position."""
        path, state = self.engine.load_checkpoint(str(self.t.out / ckpt.CKPT_DIR))
        if path is None:
            raise ckpt.CheckpointError(f"no loadable checkpoint in {self.t.out / ckpt.CKPT_DIR}; use a new --out")
        self.step = self.saved = state["step"]
        self.sampler.load_state_dict(state["sampler"])
        if self.rank == 0:
            print(f"resuming {self.t.out} from step {self.step}", flush=True)

    def meter_hardware(self, plan: HardwarePlan | None, shots_before: int) -> None:
        """Count the jobs, circuits and shots of every step from here, after the `shots_before`
        that earlier sessions spent, against `plan` (None: not a hardware-like backend)."""
        if plan is not None:
            self.plan, self.meter = plan, UsageMeter(self.engine.module, self.engine.device, shots_before)

    def train(self) -> None:
        """Train from self.step to t.steps (the loop of the module docstring), then the summary."""
        from tqdm import tqdm

        self.install_stop_handler()
        t = self.t
        if self.rank == 0 and t.metrics_port is not None:
            self.metrics = TrainMetrics(t.metrics_port)
        self.bar = tqdm(total=t.steps, initial=self.step, disable=self.rank != 0, desc="train", unit="step")
        try:
            if self.rank == 0 and t.report_to:
                self.tracking = Tracking(t.report_to, t.out, ckpt.read_run(t.out), resumed_at=self.step)
            while self.step < t.steps and not self.stopping():
                if self.over_budget():
                    break
                record = self.train_step()
                if t.validates_at(self.step):
                    record.update(self.validate())
                record.update(self.hardware_usage())
                self.log(record)
                if self.step % t.save_every == 0 or self.step == t.steps or self.stopping():
                    self.save()
            if self.stop_reason and self.saved != self.step:
                self.save()
        finally:
            self.bar.close()
            if self.metrics:
                self.metrics.close()
            if self.tracking:
                self.tracking.close()
            if self.jobs:
                self.jobs.close()
        self.finish()

    def over_budget(self) -> bool:
        """Whether the next step would take the run past --shot-budget (`stop_reason` says why)."""
        if self.meter is None or self.t.shot_budget is None:
            return False
        self.stop_reason = over_budget(self.plan, self.t, self.step, self.meter.shots_total, self.last_shots)
        return self.stop_reason is not None

    def train_step(self) -> dict:
        """One optimizer step of grad_accum micro-batches; its log record (the loss averaged over ranks)."""
        engine, start = self.engine, time.perf_counter()
        circuit_clock.take()
        total = torch.zeros((), device=engine.device)
        for micro in range(self.t.grad_accum):
            if self.jobs:  # where the run is: the key and record of every hardware job from here
                self.jobs.at(step=self.step + 1, phase="train", index=micro)
            x, y = next(self.sampler)
            _, loss = engine(x.to(engine.device), y.to(engine.device))
            engine.backward(loss)
            engine.step()  # DeepSpeed clips and steps the optimizer at the accumulation boundary
            total += loss.detach().float()
        total /= self.t.grad_accum
        dist.all_reduce(total)
        loss = total.item() / self.world
        self.step += 1
        seconds, q_seconds = time.perf_counter() - start, circuit_clock.take()
        if self.metrics:
            self.metrics.record_step(self.step, loss, seconds, q_seconds, self.tokens_per_step)
        return {
            "step": self.step,
            "loss": loss,
            "lr": engine.get_lr()[0],
            "seconds": seconds,
            "tokens_per_s": self.tokens_per_step / seconds,
            "quantum_share": q_seconds / seconds,
        }

    @torch.no_grad()
    def validate(self) -> dict:
        """Mean loss over the first eval_batches x batch_size validation windows, split across ranks."""
        engine = self.engine
        engine.eval()
        windows = BatchSampler(self.corpus.validation, 1, engine.module.cfg.context, shuffle=False)
        n = min(self.t.eval_batches * self.t.batch_size, windows.n_windows)
        total = torch.zeros(2, device=engine.device)
        for i, (x, y) in zip(range(n), windows):
            if i % self.world == self.rank:
                if self.jobs:
                    self.jobs.at(step=self.step, phase="eval", index=i)
                _, loss = engine(x.to(engine.device), y.to(engine.device))
                total += torch.stack([loss.float(), loss.new_ones((), dtype=torch.float32)])
        dist.all_reduce(total)
        engine.train()
        val_loss = (total[0] / total[1]).item()
        if self.metrics:
            self.metrics.record_eval(val_loss)
        return {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50.0))}

    def hardware_usage(self) -> dict:
        """The jobs, circuits and shots this step spent, its validation pass included, all ranks (a
        collective); {} off hardware."""
        if self.meter is None:
            return {}
        usage = self.meter.take()
        self.last_shots = usage.shots
        if self.metrics:
            self.metrics.record_usage(self.t.circuits.backend, usage)
        record = {
            "jobs": usage.jobs,
            "circuits": usage.circuits,
            "shots": usage.shots,
            "shots_total": self.meter.shots_total,
        }
        if self.jobs:  # journaled provider jobs: fetched from an earlier session, or lost and submitted again
            record.update(jobs_reused=usage.reused, jobs_resubmitted=usage.resubmitted)
        return record

    def log(self, record: dict) -> None:
        """The step's record to log.jsonl (rank 0) and the progress bar."""
        if self.rank == 0:
            with open(self.t.out / ckpt.LOG_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            if self.tracking:
                self.tracking.log(record)
        postfix = {"loss": f"{record['loss']:.3f}", "tok_s": f"{record['tokens_per_s']:.0f}"}
        postfix["q"] = f"{record['quantum_share']:.0%}"
        if "jobs" in record:
            postfix.update(jobs=record["jobs"], shots=f"{record['shots_total']:.3g}")
        self.bar.update(1)
        self.bar.set_postfix(postfix)

    def save(self) -> None:
        """A DeepSpeed checkpoint (all ranks), then plain weights for generation (rank 0); keeps the
        last KEEP_CHECKPOINTS."""
        client_state = {"step": self.step, "sampler": self.sampler.state_dict()}
        self.engine.save_checkpoint(str(self.t.out / ckpt.CKPT_DIR), tag=f"step{self.step}", client_state=client_state)
        if self.rank == 0:
            ckpt.save_weights(self.t.out, self.engine.module, self.step)
            ckpt.prune(self.t.out, KEEP_CHECKPOINTS)
        dist.barrier()
        self.saved = self.step

    def install_stop_handler(self) -> None:
        """SIGTERM and SIGINT finish the current step, save a checkpoint and stop cleanly."""

        def handler(signum, _frame):
            self.stop_asked = True

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)

    def stopping(self) -> bool:
        """Whether any rank was asked to stop (a collective): all ranks then stop after the same step."""
        flag = torch.tensor([float(self.stop_asked)], device=self.engine.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        self.stop_asked = bool(flag.item())
        return self.stop_asked

    def finish(self) -> None:
        """Whether the ranks' weights agree (a collective); then, on rank 0, the loss plot and summary."""
        identical = replicas_identical(self.engine.module, self.engine.device)
        if self.rank != 0:
            return
        from trainer.run.report import plot_losses, summarize

        if self.stop_reason:
            print(f"stopping: {self.stop_reason}", flush=True)
        out, stopped = self.t.out, self.stop_asked or bool(self.stop_reason)
        records = ckpt.read_log(out)
        plot_losses(records, out / "loss.png")
        params = count_parameters(self.engine.module)
        summary = {**summarize(records, params, self.step, stopped), "replicas_identical": identical}
        if self.stop_reason:
            summary["stop_reason"] = self.stop_reason
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        verb, loss = "stopped" if stopped else "finished", summary["final_train_loss"]
        print(f"{verb} at step {self.step}: loss {loss:.3f}, val {summary['final_val_loss']}; {out}")


def replicas_identical(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether every rank holds bit-identical parameters (data parallelism must keep them so)."""
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)  # one number a tensor
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, local) for g in gathered)
