"""Train a hybrid quantum-classical LLaMA-style model with DeepSpeed (docs/design.md, "The trainer").

    python -m trainer.main --model tiny --quantum wq --steps 300            # one process, CPU
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 trainer/main.py --model tiny  # two data-parallel ranks
    deepspeed trainer/main.py --model 150m --quantum wq                     # GPUs: ZeRO, bf16
    python -m trainer.main --model 150m --quantum wq --describe             # parameters and FLOPs
    python -m trainer.main --quantum wq --qbackend shots --grad fd --qbackend-options shots=1000 --describe

Every field of the model (trainer/model/config.py: --d-model, --n-qubits, --branch, ...) and of the
training (trainer/run/config.py: --steps, --qbackend, --grad, ...) is a flag. A run lives in
--out; the same command, run again, resumes from its last checkpoint and reproduces the losses of
an uninterrupted run (where the circuits run may change in between: --qbackend). The loop, in
order: micro-steps (forward, backward; DeepSpeed clips and steps at the accumulation boundary) ->
evaluate (every --eval-every) -> log -> checkpoint (every --save-every). On a hardware-like
backend every step logs the jobs, circuits and shots it spent; with --shot-budget a run whose plan
exceeds the budget is refused, and one that would exceed it on its next step stops there, saved.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by the deepspeed launcher: import as the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from trainer.run.threads import share_cores  # before torch loads OpenMP

share_cores(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))  # each rank its share of the cores

import argparse
import gc
import json
import math
import shutil
import signal
import socket
import time
from dataclasses import fields

import torch
import torch.distributed as dist

from trainer.data.batches import BatchSampler
from trainer.data.corpus import DatasetError, prepare_data
from trainer.data.tokenizer import Tokenizer
from trainer.model.accounting import count_parameters, describe, format_description
from trainer.model.config import ModelConfig, flag, from_preset
from trainer.model.convert import build_model
from trainer.model.quantum_linear import circuit_clock
from trainer.model.transformer import Transformer
from trainer.run import checkpoint as ckpt
from trainer.run.config import TrainConfig, from_flags
from trainer.run.hardware import HardwarePlan, UsageMeter, check_budget, format_plan, hardware_plan

KEEP_CHECKPOINTS = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="trainer.main", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="tiny", help="preset: tiny, 8m, 150m")
    model = p.add_argument_group("model (override the preset; every ModelConfig field)")
    for f in fields(ModelConfig):
        if f.name != "name":
            kind = str if f.name == "quantum_layers" else type(f.default)
            model.add_argument(
                flag(f.name), dest=f.name, type=kind, default=None, help=f"default: preset's ({f.default})"
            )
    d = TrainConfig()
    data = p.add_argument_group("data")
    data.add_argument("--dataset", help=f"chitchat, chatterbot:LANG, a .txt/.jsonl/.parquet (default {d.dataset})")
    q = p.add_argument_group("circuits: where they run and how they are differentiated")
    q.add_argument("--qbackend", help="local, qulacs, auto, shots, a plug-in (qiskit), ray, grpc://host:port")
    q.add_argument("--q-replicas", type=int, help=f"replicas of --qbackend ray's pool ({d.circuits.replicas})")
    q.add_argument("--grad", help=f"adjoint, shift, fd, spsa (default {d.circuits.grad})")
    q.add_argument("--fd-delta", type=float, help=f"step of fd, perturbation of spsa (default {d.circuits.fd_delta})")
    q.add_argument("--qbackend-options", help="the backend's options, key=value,... (shots=4096,mitigate=readout)")
    q.add_argument("--shot-budget", type=int, help="most shots the run may take (hardware-like backends)")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, help=f"optimizer steps (default {d.steps})")
    t.add_argument("--batch-size", type=int, help=f"sequences per micro-batch per rank (default {d.batch_size})")
    t.add_argument("--grad-accum", type=int, help=f"micro-batches per optimizer step (default {d.grad_accum})")
    t.add_argument("--lr", type=float, help=f"peak learning rate, AdamW (default {d.lr})")
    t.add_argument("--warmup", type=int, help=f"linear warmup steps, then cosine decay to lr/10 (default {d.warmup})")
    t.add_argument("--weight-decay", type=float, help=f"(default {d.weight_decay})")
    t.add_argument("--clip", type=float, help=f"gradient-norm clipping (default {d.clip})")
    t.add_argument("--seed", type=int, help=f"init and data order (default {d.seed})")
    t.add_argument("--ds-config", type=Path, help="DeepSpeed JSON config (the flags fill it in)")
    o = p.add_argument_group("run directory and reporting")
    o.add_argument("--out", type=Path, help=f"run directory; reused to resume (default {d.out})")
    o.add_argument("--eval-every", type=int, help=f"steps between validation passes (default {d.eval_every})")
    o.add_argument("--eval-batches", type=int, help=f"validation batches per pass (default {d.eval_batches})")
    o.add_argument("--save-every", type=int, help=f"steps between checkpoints (default {d.save_every})")
    o.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on rank 0")
    o.add_argument(
        "--describe", action="store_true", help="print parameter counts, FLOPs and the hardware plan, then exit"
    )
    o.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)  # the launcher's
    return p.parse_args(argv)


def model_config(args: argparse.Namespace) -> ModelConfig:
    overrides = {f.name: getattr(args, f.name) for f in fields(ModelConfig) if getattr(args, f.name, None) is not None}
    if "quantum_layers" in overrides:
        spec = overrides["quantum_layers"]
        try:
            overrides["quantum_layers"] = None if spec == "all" else tuple(int(i) for i in spec.split(",") if i)
        except ValueError:
            raise ValueError(f"--quantum-layers takes 'all' or comma-separated layer indices, got {spec!r}") from None
    return from_preset(args.model, **overrides)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = model_config(args)
        train_cfg = from_flags(vars(args))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        first_step, spent = shots_spent(train_cfg.out)
        plan = hardware_plan(cfg, train_cfg, world, first_step)
        if args.describe:
            print(format_description(describe(cfg, train_cfg.circuits)))
            if plan:
                print(format_plan(plan))
        check_budget(plan, train_cfg.shot_budget, spent)  # before anything starts
        if args.describe:
            return 0
        init_distributed()
        train(cfg, train_cfg)
        # the engine is destroyed and freed by now; tear down together: left to the interpreter's
        # finalization, Gloo can abort a rank (-6) that exits before the others
        dist.barrier()
        return 0
    except (ValueError, ckpt.CheckpointError, DatasetError, MemoryError, FileNotFoundError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def shots_spent(out: Path) -> tuple[int, int]:
    """(the step a resumed run restarts from, every shot its earlier sessions spent: the last logged
    shots_total, steps past the checkpoint included, since they were paid for); (0, 0) for a new run.
    Read before the log is truncated to the checkpoint."""
    latest = out / ckpt.CKPT_DIR / "latest"
    if not latest.exists():
        return 0, 0
    records = ckpt.read_log(out)
    return int(latest.read_text().strip().removeprefix("step")), records[-1].get("shots_total", 0) if records else 0


def init_distributed() -> None:
    """DeepSpeed's process group; without the launcher, a world of one on the CPU if no GPU."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if "RANK" not in os.environ:  # run without a launcher: a world of one
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1")
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import deepspeed

    deepspeed.init_distributed(verbose=False)


def train(cfg: ModelConfig, t: TrainConfig) -> None:
    import deepspeed

    rank, world = dist.get_rank(), dist.get_world_size()
    run = ckpt.run_record(cfg, t, world)
    resume = ckpt.check_resumable(t.out, run)  # before anything is written
    _, shots_before = shots_spent(t.out)  # every rank, before rank 0 truncates the log
    corpus = load_data(t, cfg, rank)
    if cfg.vocab_size < corpus.tokenizer.vocab_size:
        raise ValueError(f"--vocab-size {cfg.vocab_size} is smaller than the tokenizer's {corpus.tokenizer.vocab_size}")
    torch.manual_seed(t.seed)
    model = build_model(cfg, t.circuits)
    config = t.deepspeed(bf16=torch.cuda.is_available())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model), config=config)
    try:
        sampler = BatchSampler(corpus.train, t.batch_size, cfg.context, t.seed, rank, world)
        step = 0
        if resume:
            path, state = engine.load_checkpoint(str(t.out / ckpt.CKPT_DIR))
            if path is None:
                raise ckpt.CheckpointError(f"no loadable checkpoint in {t.out / ckpt.CKPT_DIR}; use a new --out")
            step = state["step"]
            sampler.load_state_dict(state["sampler"])
            if rank == 0:
                print(f"resuming {t.out} from step {step}", flush=True)
        if rank == 0:
            ckpt.write_run(t.out, run, corpus.tokenizer.to_json())
            ckpt.truncate_log(t.out, step)
        plan = hardware_plan(cfg, t, world, step)
        meter = UsageMeter(engine.module, engine.device, shots_before) if plan else None
        loop(t, engine, sampler, corpus, step, rank, world, meter, plan)
    finally:
        # DeepSpeed's teardown, then free the engine (a reference cycle) and the Gloo work it holds
        # now: left to the interpreter's finalization, a rank can abort (-6)
        engine.destroy()
        del engine, model
        gc.collect()


def load_data(t: TrainConfig, cfg: ModelConfig, rank: int):
    """Rank 0 prepares (and caches) tokenizer and token arrays first; the others then read them.
    A resumed run keeps the tokenizer saved with its checkpoint."""
    saved = t.out / ckpt.TOKENIZER_FILE
    tokenizer = Tokenizer.load(saved) if (t.out / ckpt.RUN_FILE).exists() and saved.exists() else None
    corpus = None
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            corpus = prepare_data(t.dataset, cfg.vocab_size, tokenizer=tokenizer)
        dist.barrier()
    return corpus


def param_groups(model: torch.nn.Module) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or circuit angles."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


def loop(
    t: TrainConfig,
    engine,
    sampler,
    corpus,
    step: int,
    rank: int,
    world: int,
    meter: UsageMeter | None = None,
    plan: HardwarePlan | None = None,
) -> None:
    """Train from `step` to t.steps. On a hardware-like backend `meter` counts the jobs, circuits and
    shots each step spends and `plan` (trainer/run/hardware.py) holds what the steps left should cost."""
    from tqdm import tqdm

    stop = install_stop_handler()
    metrics = None
    if rank == 0 and t.metrics_port is not None:
        from trainer.run.metrics import TrainMetrics

        metrics = TrainMetrics(t.metrics_port)
    tokens_per_step = t.batch_size * t.grad_accum * engine.module.cfg.context * world
    bar = tqdm(total=t.steps, initial=step, disable=rank != 0, desc="train", unit="step")
    saved, last_shots, over = step, 0, None
    try:
        while step < t.steps and not stopping(stop, engine.device):
            if meter is not None and t.shot_budget is not None:
                over = over_budget(plan, t, step, meter.shots_total, last_shots)
                if over:
                    break
            start = time.perf_counter()
            circuit_clock.take()
            loss = train_step(engine, sampler, t.grad_accum)
            step += 1
            seconds, q_seconds = time.perf_counter() - start, circuit_clock.take()
            record = {
                "step": step,
                "loss": loss,
                "lr": engine.get_lr()[0],
                "seconds": seconds,
                "tokens_per_s": tokens_per_step / seconds,
                "quantum_share": q_seconds / seconds,
            }
            if step % t.eval_every == 0 or step == t.steps:
                record["val_loss"] = evaluate(engine, corpus.validation, t, rank, world)
                record["val_ppl"] = math.exp(min(record["val_loss"], 50.0))
                if metrics:
                    metrics.record_eval(record["val_loss"])
            postfix = {
                "loss": f"{loss:.3f}",
                "tok_s": f"{record['tokens_per_s']:.0f}",
                "q": f"{record['quantum_share']:.0%}",
            }
            if meter is not None:
                usage = meter.take()  # this step's, its validation pass included, all ranks
                last_shots = usage.shots
                record.update(
                    jobs=usage.jobs, circuits=usage.circuits, shots=usage.shots, shots_total=meter.shots_total
                )
                postfix.update(jobs=usage.jobs, shots=f"{meter.shots_total:.3g}")
                if metrics:
                    metrics.record_usage(t.circuits.backend, usage)
            log(t.out, record, rank)
            if metrics:
                metrics.record_step(step, loss, seconds, q_seconds, tokens_per_step)
            bar.update(1)
            bar.set_postfix(postfix)
            if step % t.save_every == 0 or step == t.steps or stopping(stop, engine.device):
                save(engine, t.out, step, sampler, rank)
                saved = step
        if over and saved != step:
            save(engine, t.out, step, sampler, rank)
    finally:
        bar.close()
        if metrics:
            metrics.close()
    identical = replicas_identical(engine.module, engine.device)
    if rank == 0:
        if over:
            print(f"stopping: {over}", flush=True)
        finish(t.out, engine.module, step, stopped=stop["now"] or bool(over), identical=identical, reason=over)


def over_budget(plan: HardwarePlan, t: TrainConfig, step: int, spent: int, last_shots: int) -> str | None:
    """Why the next step (step + 1) would take the run past --shot-budget, or None: it is planned
    to cost its share of the plan, or what the last step cost if that was more."""
    nxt = step + 1
    cost = plan.per_step.shots + (plan.setup.shots if not last_shots else 0)  # calibration: a session's first step
    cost += plan.per_eval.shots if nxt % t.eval_every == 0 or nxt == t.steps else 0
    cost = max(cost, last_shots)
    if spent + cost <= t.shot_budget:
        return None
    return f"shot budget: {spent:,} shots spent, step {nxt} would take ~{cost:,} more, --shot-budget {t.shot_budget:,}"


# The collectives below run on the engine's device: NCCL, the GPUs' backend, takes no CPU tensor.


def replicas_identical(model: torch.nn.Module, device: torch.device) -> bool:
    """Whether every rank holds bit-identical parameters (data parallelism must keep them so)."""
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).to(device)  # one number a tensor
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, local) for g in gathered)


def train_step(engine, sampler: BatchSampler, grad_accum: int) -> float:
    """One optimizer step: grad_accum micro-batches; returns the loss averaged over ranks."""
    total = torch.zeros((), device=engine.device)
    for _ in range(grad_accum):
        x, y = next(sampler)
        _, loss = engine(x.to(engine.device), y.to(engine.device))
        engine.backward(loss)
        engine.step()  # DeepSpeed clips and steps the optimizer at the accumulation boundary
        total += loss.detach().float()
    total /= grad_accum
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


@torch.no_grad()
def evaluate(engine, tokens, t: TrainConfig, rank: int, world: int) -> float:
    """Mean loss over the first eval_batches validation batches, split across ranks."""
    engine.eval()
    sampler = BatchSampler(tokens, 1, engine.module.cfg.context, shuffle=False)
    n = min(t.eval_batches * t.batch_size, sampler.n_windows)
    total = torch.zeros(2, device=engine.device)
    for i, (x, y) in zip(range(n), sampler):
        if i % world == rank:
            _, loss = engine(x.to(engine.device), y.to(engine.device))
            total += torch.stack([loss.float(), loss.new_ones((), dtype=torch.float32)])
    dist.all_reduce(total)
    engine.train()
    return (total[0] / total[1]).item()


def save(engine, out: Path, step: int, sampler: BatchSampler, rank: int) -> None:
    """A DeepSpeed checkpoint (all ranks), then plain weights for generation (rank 0); keeps the
    last KEEP_CHECKPOINTS."""
    engine.save_checkpoint(
        str(out / ckpt.CKPT_DIR), tag=f"step{step}", client_state={"step": step, "sampler": sampler.state_dict()}
    )
    if rank == 0:
        ckpt.save_weights(out, engine.module, step)
        tags = sorted((p for p in (out / ckpt.CKPT_DIR).glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
        for old in tags[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old, ignore_errors=True)
    dist.barrier()


def log(out: Path, record: dict, rank: int) -> None:
    if rank == 0:
        with open(out / ckpt.LOG_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")


def install_stop_handler() -> dict:
    """SIGTERM/SIGINT finish the current step, save a checkpoint and exit cleanly."""
    stop = {"now": False}

    def handler(signum, _frame):
        stop["now"] = True

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def stopping(stop: dict, device: torch.device) -> bool:
    """Whether any rank was asked to stop: all ranks then stop after the same step."""
    flag_ = torch.tensor([float(stop["now"])], device=device)
    dist.all_reduce(flag_, op=dist.ReduceOp.MAX)
    stop["now"] = bool(flag_.item())
    return stop["now"]


def finish(out: Path, model: Transformer, step: int, stopped: bool, identical: bool, reason: str | None = None) -> None:
    """The loss plot (PNG) and a JSON summary of the run."""
    from trainer.run.report import plot_losses, summarize

    records = ckpt.read_log(out)
    plot_losses(records, out / "loss.png")
    summary = {**summarize(records, count_parameters(model), step, stopped), "replicas_identical": identical}
    if reason:
        summary["stop_reason"] = reason
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    verb = "stopped" if stopped else "finished"
    print(f"{verb} at step {step}: loss {summary['final_train_loss']:.3f}, val {summary['final_val_loss']}; {out}")


if __name__ == "__main__":
    sys.exit(main())
