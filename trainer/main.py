"""Train a hybrid quantum-classical LLaMA-style model with DeepSpeed (docs/design.md, "The trainer").

    python -m trainer.main --model tiny --quantum wq --steps 300            # one process, CPU
    DS_ACCELERATOR=cpu deepspeed --num_gpus 2 trainer/main.py --model tiny  # two data-parallel ranks
    deepspeed trainer/main.py --model 150m --quantum wq                     # GPUs: ZeRO, bf16
    python -m trainer.main --model 150m --quantum wq --describe             # parameters and FLOPs
    python -m trainer.main --quantum wq --qbackend shots --grad fd --qbackend-options shots=1000 --describe

Every field of the model (trainer/model/config.py: --d-model, --n-qubits, --branch, ...) and of the
training (trainer/run/config.py: --steps, --qbackend, --grad, ...) is a flag. A run lives in
--out; the same command, run again, resumes from its last checkpoint and reproduces the losses of
an uninterrupted run (where the circuits run may change in between: --qbackend). The loop
(trainer/run/loop.py), in order: micro-steps (forward, backward; DeepSpeed clips and steps at the
accumulation boundary) -> evaluate (every --eval-every) -> log -> checkpoint (every --save-every).
On a hardware-like backend every step logs the jobs, circuits and shots it spent; with
--shot-budget a run whose plan exceeds the budget is refused, and one that would exceed it on its
next step stops there, saved.
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
import socket
from dataclasses import fields

import torch
import torch.distributed as dist

from qworker.backends import backend_names
from qworker.gradients import names as method_names
from trainer.data.corpus import Corpus, DatasetError, dataset_kinds, prepare_data
from trainer.data.tokenizer import Tokenizer
from trainer.model.accounting import describe, format_description
from trainer.model.circuits import RAY
from trainer.model.config import CHOICES, PRESETS, ModelConfig, flag, from_preset
from trainer.model.convert import build_model
from trainer.run import checkpoint as ckpt
from trainer.run.config import TrainConfig, from_flags
from trainer.run.hardware import HardwarePlan, check_budget, format_plan, hardware_plan
from trainer.run.loop import Run
from trainer.run.tracking import TRACKERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="trainer.main", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # every list of choices below comes from its registry (presets, targets, backends and their
    # plug-ins, gradient methods, dataset loaders), so --help names what this install accepts
    p.add_argument("--model", default="tiny", help=f"preset: {', '.join(PRESETS)} (default tiny)")
    model = p.add_argument_group("model (override the preset; every ModelConfig field)")
    for f in fields(ModelConfig):
        if f.name != "name":
            kind = str if f.name == "quantum_layers" else type(f.default)
            choices = f"one of {', '.join(CHOICES[f.name])}; " if f.name in CHOICES else ""
            model.add_argument(
                flag(f.name), dest=f.name, type=kind, default=None, help=f"{choices}default: preset's ({f.default})"
            )
    d = TrainConfig()
    data = p.add_argument_group("data")
    data.add_argument("--dataset", help=f"{dataset_kinds()} (default {d.dataset})")
    q = p.add_argument_group("circuits: where they run and how they are differentiated")
    q.add_argument(
        "--qbackend",
        help=f"one of {', '.join(backend_names())}; {RAY} (a local Ray pool); grpc://host:port (a qworker service) "
        f"(default {d.circuits.backend})",
    )
    q.add_argument("--q-replicas", type=int, help=f"replicas of --qbackend ray's pool ({d.circuits.replicas})")
    q.add_argument("--grad", help=f"one of {', '.join(method_names())} (default {d.circuits.grad})")
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
        "--report-to",
        help=f"experiment trackers, any of {', '.join(TRACKERS)}, comma-separated (default none): "
        "loss, validation, lr, tokens/s, the circuits' share, hardware jobs and shots, into --out",
    )
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
        first_step, spent = ckpt.shots_spent(train_cfg.out)  # every rank, before rank 0 truncates the log
        plan = hardware_plan(cfg, train_cfg, world, first_step)
        if args.describe:
            print(format_description(describe(cfg, train_cfg.circuits)))
            if plan:
                print(format_plan(plan))
        check_budget(plan, train_cfg.shot_budget, spent)  # before anything starts
        if args.describe:
            return 0
        init_distributed()
        train(cfg, train_cfg, plan, spent)
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


def train(cfg: ModelConfig, t: TrainConfig, plan: HardwarePlan | None, shots_before: int) -> None:
    """This session of the run: resume it (or start it), then train to t.steps. On a hardware-like
    backend `plan` (trainer/run/hardware.py) holds what the steps left should cost and
    `shots_before` what earlier sessions spent."""
    import deepspeed

    rank, world = dist.get_rank(), dist.get_world_size()
    record = ckpt.run_record(cfg, t, world)
    resume = ckpt.check_resumable(t.out, record)  # before anything is written
    corpus = load_data(t, cfg, rank)
    if cfg.vocab_size < corpus.tokenizer.vocab_size:
        raise ValueError(f"--vocab-size {cfg.vocab_size} is smaller than the tokenizer's {corpus.tokenizer.vocab_size}")
    torch.manual_seed(t.seed)
    model = build_model(cfg, t.circuits)
    config = t.deepspeed(bf16=torch.cuda.is_available())
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model), config=config)
    run = None
    try:
        run = Run(t, engine, corpus, rank, world)
        if resume:
            run.resume()
        if rank == 0:
            ckpt.write_run(t.out, record, corpus.tokenizer.to_json())
            ckpt.truncate_log(t.out, run.step)
        run.meter_hardware(plan, shots_before)
        run.train()
    finally:
        # DeepSpeed's teardown, then free the engine (a reference cycle) and the Gloo work it holds
        # now: left to the interpreter's finalization, a rank can abort (-6)
        engine.destroy()
        del engine, model, run
        gc.collect()


def load_data(t: TrainConfig, cfg: ModelConfig, rank: int) -> Corpus:
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


if __name__ == "__main__":
    sys.exit(main())
