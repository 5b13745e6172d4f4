"""Train a hybrid quantum-classical LLaMA-style model with DeepSpeed (DESIGN.md §6).

    python -m trainer.main --model tiny --quantum wq --steps 300            # one process, CPU
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 trainer/main.py --model tiny  # two data-parallel ranks
    deepspeed trainer/main.py --model 150m --quantum wq                     # GPUs: ZeRO, bf16
    python -m trainer.main --model 150m --quantum wq --describe             # parameters and FLOPs

Every model-config field is a flag (--d-model, --n-qubits, --qbackend, ...). A run lives in --out;
the same command, run again, resumes from its last checkpoint and reproduces the losses of an
uninterrupted run. The loop, in order: eval/checkpoint -> micro-steps (forward, backward; DeepSpeed
clips and steps at the accumulation boundary) -> log.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file by the deepspeed launcher: import as the package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import gc
import json
import math
import os
import shutil
import signal
import socket
import time
from dataclasses import fields

import torch
import torch.distributed as dist

from trainer import checkpoint as ckpt
from trainer.batches import BatchSampler
from trainer.config import ModelConfig, flag, from_preset
from trainer.data import DEFAULT_DATASET, DatasetError, prepare_data
from trainer.model import Transformer, count_parameters, describe, format_description
from trainer.quantum_linear import circuit_clock
from trainer.tokenizer import Tokenizer

DS_CONFIG = Path(__file__).with_name("ds_config.json")
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
    data = p.add_argument_group("data")
    data.add_argument("--dataset", default=DEFAULT_DATASET, help="chitchat, chatterbot:LANG, a .txt/.jsonl/.parquet")
    t = p.add_argument_group("training")
    t.add_argument("--steps", type=int, default=300, help="optimizer steps")
    t.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch per rank")
    t.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    t.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (AdamW)")
    t.add_argument("--warmup", type=int, default=30, help="linear warmup steps, then cosine decay to lr/10")
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--ds-config", type=Path, default=DS_CONFIG, help="DeepSpeed JSON config (flags fill it in)")
    o = p.add_argument_group("run directory and reporting")
    o.add_argument("--out", type=Path, default=Path("runs/default"), help="run directory; reused to resume")
    o.add_argument("--eval-every", type=int, default=100, help="steps between validation passes")
    o.add_argument("--eval-batches", type=int, default=8, help="validation batches per pass")
    o.add_argument("--save-every", type=int, default=100, help="steps between checkpoints")
    o.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus metrics on rank 0")
    o.add_argument("--describe", action="store_true", help="print parameter counts and FLOPs, then exit")
    o.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)  # the launcher's
    args = p.parse_args(argv)
    problems = [
        f"{name} must be >= {low}, got {getattr(args, name.lstrip('-').replace('-', '_'))}"
        for name, low in (
            ("--steps", 1),
            ("--batch-size", 1),
            ("--grad-accum", 1),
            ("--eval-every", 1),
            ("--eval-batches", 1),
            ("--save-every", 1),
            ("--warmup", 0),
        )
        if getattr(args, name.lstrip("-").replace("-", "_")) < low
    ]
    if not (args.lr > 0 and math.isfinite(args.lr)):
        problems.append(f"--lr must be a finite number > 0, got {args.lr}")
    if problems:
        p.error("; ".join(problems))
    return args


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
        if args.describe:
            print(format_description(describe(cfg)))
            return 0
        init_distributed()
        train(args, cfg)
        # free the destroyed engine and its collectives now, then tear down together: left to the
        # interpreter's finalization, Gloo can abort a rank (-6) that exits before the others
        gc.collect()
        dist.barrier()
        return 0
    except (ValueError, ckpt.CheckpointError, DatasetError, MemoryError, FileNotFoundError, ConnectionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


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
    if not torch.cuda.is_available():  # share the cores between the ranks of this node
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    import deepspeed

    deepspeed.init_distributed(verbose=False)


def train(args: argparse.Namespace, cfg: ModelConfig) -> None:
    import deepspeed

    rank, world = dist.get_rank(), dist.get_world_size()
    run = run_settings(args, cfg, world)
    resume = ckpt.check_resumable(args.out, run)  # before anything is written
    corpus = load_data(args, run, rank)
    if cfg.vocab_size < corpus.tokenizer.vocab_size:
        raise ValueError(f"--vocab-size {cfg.vocab_size} is smaller than the tokenizer's {corpus.tokenizer.vocab_size}")
    torch.manual_seed(args.seed)
    model = Transformer(cfg)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model), config=ds_config(args))
    sampler = BatchSampler(corpus.train, args.batch_size, cfg.context, args.seed, rank, world)
    step = 0
    if resume:
        path, state = engine.load_checkpoint(str(args.out / ckpt.CKPT_DIR))
        if path is None:
            raise ckpt.CheckpointError(f"no loadable checkpoint in {args.out / ckpt.CKPT_DIR}; use a new --out")
        step = state["step"]
        sampler.load_state_dict(state["sampler"])
        if rank == 0:
            print(f"resuming {args.out} from step {step}", flush=True)
    if rank == 0:
        ckpt.write_run(args.out, run, corpus.tokenizer.to_json())
        ckpt.truncate_log(args.out, step)
    loop(args, engine, sampler, corpus, step, rank, world)
    engine.destroy()


def run_settings(args: argparse.Namespace, cfg: ModelConfig, world: int) -> dict:
    """What a checkpoint must match to resume: the model and everything that shapes the losses."""
    keys = ("dataset", "steps", "batch_size", "grad_accum", "lr", "warmup", "weight_decay", "clip", "seed")
    return {"model": cfg.to_dict(), "train": {**{k: getattr(args, k) for k in keys}, "world_size": world}}


def load_data(args: argparse.Namespace, run: dict, rank: int):
    """Rank 0 prepares (and caches) tokenizer and token arrays first; the others then read them.
    A resumed run keeps the tokenizer saved with its checkpoint."""
    saved = args.out / ckpt.TOKENIZER_FILE
    tokenizer = Tokenizer.load(saved) if (args.out / ckpt.RUN_FILE).exists() and saved.exists() else None
    corpus = None
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            corpus = prepare_data(args.dataset, run["model"]["vocab_size"], tokenizer=tokenizer)
        dist.barrier()
    return corpus


def param_groups(model: torch.nn.Module) -> list[dict]:
    """Weight decay on matrices only: not on norms, biases or circuit angles."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    return [{"params": decay}, {"params": rest, "weight_decay": 0.0}]


def ds_config(args: argparse.Namespace) -> dict:
    cfg = json.loads(args.ds_config.read_text())
    cfg["train_micro_batch_size_per_gpu"] = args.batch_size
    cfg["gradient_accumulation_steps"] = args.grad_accum
    cfg["gradient_clipping"] = args.clip
    cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"].update(
        lr=args.lr, weight_decay=args.weight_decay
    )
    sched = cfg.setdefault("scheduler", {"type": "WarmupCosineLR", "params": {}})["params"]
    sched.update(total_num_steps=args.steps, warmup_num_steps=args.warmup)
    cfg.setdefault("bf16", {})["enabled"] = torch.cuda.is_available() and cfg["bf16"].get("enabled", True) is not False
    return cfg


def loop(args, engine, sampler, corpus, step: int, rank: int, world: int) -> None:
    from tqdm import tqdm

    stop = install_stop_handler()
    metrics = None
    if rank == 0 and args.metrics_port is not None:
        from trainer.metrics import TrainMetrics

        metrics = TrainMetrics(args.metrics_port)
    tokens_per_step = args.batch_size * args.grad_accum * engine.module.cfg.context * world
    bar = tqdm(total=args.steps, initial=step, disable=rank != 0, desc="train", unit="step")
    try:
        while step < args.steps and not stopping(stop):
            start = time.perf_counter()
            circuit_clock.take()
            loss = train_step(engine, sampler, args.grad_accum)
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
            if step % args.eval_every == 0 or step == args.steps:
                record["val_loss"] = evaluate(engine, corpus.validation, args, rank, world)
                record["val_ppl"] = math.exp(min(record["val_loss"], 50.0))
            log(args.out, record, rank)
            if metrics:
                metrics.record_step(step, loss, seconds, q_seconds, tokens_per_step)
            bar.update(1)
            bar.set_postfix(
                loss=f"{loss:.3f}", tok_s=f"{record['tokens_per_s']:.0f}", q=f"{record['quantum_share']:.0%}"
            )
            if step % args.save_every == 0 or step == args.steps or stopping(stop):
                save(engine, args.out, step, sampler, rank)
    finally:
        bar.close()
        if metrics:
            metrics.close()
    identical = replicas_identical(engine.module)
    if rank == 0:
        finish(args.out, engine.module, step, stopped=stop["now"], identical=identical)


def replicas_identical(model: torch.nn.Module) -> bool:
    """Whether every rank holds bit-identical parameters (data parallelism must keep them so)."""
    local = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()  # one number a tensor
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    return all(torch.equal(g, local) for g in gathered)


def train_step(engine, sampler: BatchSampler, grad_accum: int) -> float:
    """One optimizer step: grad_accum micro-batches; returns the loss averaged over ranks."""
    total = torch.zeros(())
    for _ in range(grad_accum):
        x, y = next(sampler)
        _, loss = engine(x.to(engine.device), y.to(engine.device))
        engine.backward(loss)
        engine.step()  # DeepSpeed clips and steps the optimizer at the accumulation boundary
        total += loss.detach().float().cpu()
    total /= grad_accum
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()


@torch.no_grad()
def evaluate(engine, tokens, args, rank: int, world: int) -> float:
    """Mean loss over the first eval_batches validation batches, split across ranks."""
    engine.eval()
    sampler = BatchSampler(tokens, 1, engine.module.cfg.context, shuffle=False)
    n = min(args.eval_batches * args.batch_size, sampler.n_windows)
    total = torch.zeros(2)
    for i, (x, y) in zip(range(n), sampler):
        if i % world == rank:
            _, loss = engine(x.to(engine.device), y.to(engine.device))
            total += torch.tensor([loss.float().item(), 1.0])
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


def stopping(stop: dict) -> bool:
    """Whether any rank was asked to stop: all ranks then stop after the same step."""
    flag_ = torch.tensor([float(stop["now"])])
    dist.all_reduce(flag_, op=dist.ReduceOp.MAX)
    stop["now"] = bool(flag_.item())
    return stop["now"]


def finish(out: Path, model: Transformer, step: int, stopped: bool, identical: bool) -> None:
    """The loss plot (PNG) and a JSON summary of the run."""
    from trainer.report import plot_losses, summarize

    records = ckpt.read_log(out)
    plot_losses(records, out / "loss.png")
    summary = {**summarize(records, count_parameters(model), step, stopped), "replicas_identical": identical}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    verb = "stopped" if stopped else "finished"
    print(f"{verb} at step {step}: loss {summary['final_train_loss']:.3f}, val {summary['final_val_loss']}; {out}")


if __name__ == "__main__":
    sys.exit(main())
