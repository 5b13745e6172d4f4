"""TrainConfig: everything a training run needs besides the model, typed and validated once.

    train = TrainConfig(steps=1000, batch_size=8, circuits=Circuits(grad="fd"))
    train.validate()                         # ValueError naming every problem (and its flag)
    train.deepspeed(bf16=False)              # the DeepSpeed config dict: built here and only here
    train.resume_key()                       # what a checkpoint must match to be resumed

`trainer.main` builds one from its flags (`from_flags`); every field is a flag `--field-name`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from trainer.data.corpus import DEFAULT_DATASET
from trainer.model.circuits import Circuits
from trainer.run import tracking

DS_CONFIG = Path(__file__).with_name("ds_config.json")


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    dataset: str = DEFAULT_DATASET  # chitchat, chatterbot:LANG, a .txt/.jsonl/.parquet file, a Hub name
    # --- optimisation (AdamW, warmup then cosine decay to lr/10; DeepSpeed ZeRO-1) ---
    steps: int = 300  # optimizer steps
    batch_size: int = 16  # sequences per micro-batch per rank
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-3  # peak learning rate
    warmup: int = 30  # linear warmup steps
    weight_decay: float = 0.1  # on matrices only
    clip: float = 1.0  # gradient-norm clipping
    seed: int = 0  # weights' init and the data order
    ds_config: Path = DS_CONFIG  # the DeepSpeed JSON that the fields above fill in
    # --- circuits: where they run (may change on resume) and how they are differentiated ---
    circuits: Circuits = field(default_factory=Circuits)
    # --- run directory and reporting ---
    out: Path = Path("runs/default")  # the run directory; the same command resumes it
    eval_every: int = 100  # steps between validation passes
    eval_batches: int = 8  # validation batches per pass
    save_every: int = 100  # steps between checkpoints
    metrics_port: int | None = None  # Prometheus metrics on rank 0
    report_to: tuple[str, ...] = ()  # experiment trackers on rank 0: tensorboard, wandb, csv (trainer/run/tracking.py)
    shot_budget: int | None = None  # most shots a hardware run may take, all ranks, resumed sessions included

    def problems(self) -> list[str]:
        """Every problem, each naming its flag; [] when valid."""
        p = []
        for name, low in (
            ("steps", 1),
            ("batch_size", 1),
            ("grad_accum", 1),
            ("eval_every", 1),
            ("eval_batches", 1),
            ("save_every", 1),
            ("warmup", 0),
        ):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= low):
                p.append(f"{flag(name)} must be an integer >= {low}, got {v!r}")
        for name in ("lr", "clip"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                p.append(f"{flag(name)} must be a finite number > 0, got {v!r}")
        wd = self.weight_decay
        if not (isinstance(wd, (int, float)) and math.isfinite(wd) and wd >= 0):
            p.append(f"--weight-decay must be a finite number >= 0, got {self.weight_decay!r}")
        if not self.ds_config.is_file():
            p.append(f"--ds-config {self.ds_config} is not a file")
        if self.shot_budget is not None and not (isinstance(self.shot_budget, int) and self.shot_budget >= 1):
            p.append(f"--shot-budget must be an integer >= 1, got {self.shot_budget!r}")
        if self.metrics_port is not None and not 0 <= self.metrics_port < 65536:
            p.append(f"--metrics-port must be in 0..65535, got {self.metrics_port}")
        return p + tracking.problems(self.report_to) + self.circuits.problems()

    def validates_at(self, step: int) -> bool:
        """Whether step `step` ends with a validation pass: every eval_every steps, and the last."""
        return step % self.eval_every == 0 or step == self.steps

    def validate(self) -> TrainConfig:
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid training settings ({len(problems)} problem(s)): " + "; ".join(problems))
        return self

    def deepspeed(self, bf16: bool) -> dict:
        """The DeepSpeed config: `ds_config`'s file with these settings filled in; bf16 only where
        asked (GPUs) and the file does not switch it off."""
        cfg = json.loads(self.ds_config.read_text())
        cfg["train_micro_batch_size_per_gpu"] = self.batch_size
        cfg["gradient_accumulation_steps"] = self.grad_accum
        cfg["gradient_clipping"] = self.clip
        cfg.setdefault("optimizer", {"type": "AdamW", "params": {}})["params"].update(
            lr=self.lr, weight_decay=self.weight_decay
        )
        sched = cfg.setdefault("scheduler", {"type": "WarmupCosineLR", "params": {}})["params"]
        sched.update(total_num_steps=self.steps, warmup_num_steps=self.warmup)
        cfg.setdefault("bf16", {})["enabled"] = bf16 and cfg["bf16"].get("enabled", True) is not False
        return cfg

    def resume_key(self) -> dict:
        """What shapes the losses, so what a checkpoint must match to be resumed: not where the
        circuits run, nor the run directory and reporting."""
        keys = ("dataset", "steps", "batch_size", "grad_accum", "lr", "warmup", "weight_decay", "clip", "seed")
        return {**{k: getattr(self, k) for k in keys}, "grad": self.circuits.grad, "fd_delta": self.circuits.fd_delta}

    def to_dict(self) -> dict:
        d = asdict(self)
        return {**d, "ds_config": str(self.ds_config), "out": str(self.out)}


FLAGS = tuple(f.name for f in fields(TrainConfig) if f.name != "circuits")
CIRCUIT_FLAGS = {
    "qbackend": "backend",
    "q_replicas": "replicas",
    "grad": "grad",
    "fd_delta": "fd_delta",
    "qbackend_options": "options",
}


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def from_flags(values: dict) -> TrainConfig:
    """A validated TrainConfig from parsed flags (`argparse` dests): the TrainConfig fields, and
    --qbackend, --q-replicas, --grad, --fd-delta and --qbackend-options for its circuits; None keeps
    a default."""
    circuits = Circuits(**{f: values[k] for k, f in CIRCUIT_FLAGS.items() if values.get(k) is not None})
    train = {k: values[k] for k in FLAGS if values.get(k) is not None}
    if "report_to" in train:
        train["report_to"] = tracking.parse_report_to(train["report_to"])
    return TrainConfig(**train, circuits=circuits).validate()
