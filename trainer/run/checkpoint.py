"""A run directory: what a checkpoint holds and how a run resumes (docs/design.md, "Run directories").

runs/NAME/
  run.json        {"model": the architecture, "train": what shapes the losses (a restart must match
                  both), "circuits": where the circuits ran (a restart may change it)}
  tokenizer.json  the tokenizer the run trained (tokenizers' own format)
  model.pt        plain torch weights of the latest checkpoint, for generation
  ckpt/           DeepSpeed checkpoints (optimizer, scheduler, data position, RNG), `latest`
  log.jsonl       one line per step and per evaluation
  jobs.jsonl      every hardware job submitted (qiskit, braket): trainer/run/jobs.py
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from torch import nn

from trainer.model.config import ModelConfig
from trainer.run.jobs import shots_submitted_after

RUN_FILE, TOKENIZER_FILE, WEIGHTS_FILE, CKPT_DIR, LOG_FILE = (
    "run.json",
    "tokenizer.json",
    "model.pt",
    "ckpt",
    "log.jsonl",
)


class CheckpointError(RuntimeError):
    """A run directory that cannot be used as asked: corrupt, incomplete or from another run."""


def run_record(cfg: ModelConfig, train, world_size: int) -> dict:
    """run.json's content for a run of model `cfg` with TrainConfig `train` on `world_size` ranks."""
    c = train.circuits
    return {
        "model": cfg.to_dict(),
        "train": {**train.resume_key(), "world_size": world_size},
        "circuits": {"backend": c.backend, "replicas": c.replicas, "options": c.options},
    }


def read_run(run_dir: Path) -> dict:
    """run.json of `run_dir`, in this version's layout (older layouts are converted, see `upgrade`)."""
    path = run_dir / RUN_FILE
    try:
        return upgrade(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); delete {run_dir} or use a new --out") from None


def upgrade(run: dict) -> dict:
    """A run.json of an earlier layout in this one's. Before the model/run split, "model" also held
    where circuits ran (qbackend, q_replicas) and the gradient (grad, fd_delta); qbackend
    "classical" was the classical control, now the model's branch."""
    model = dict(run.get("model", {}))
    if "qbackend" not in model:
        return run
    backend, replicas = model.pop("qbackend"), model.pop("q_replicas", 1)
    train = {**run.get("train", {}), "grad": model.pop("grad", "adjoint"), "fd_delta": model.pop("fd_delta", 1e-2)}
    if backend == "classical":
        model["branch"], backend = "classical", "local"
    return {**run, "model": model, "train": train, "circuits": {"backend": backend, "replicas": replicas}}


def check_resumable(run_dir: Path, run: dict) -> bool:
    """True if run_dir holds a checkpoint of this same run (resume), False if it is new or empty
    (start). Raises CheckpointError, naming the differences, if it holds another run's. Where the
    circuits run may differ (the weights do not depend on it)."""
    if not (run_dir / RUN_FILE).exists():
        if (run_dir / CKPT_DIR).exists():
            raise CheckpointError(f"{run_dir} has checkpoints but no {RUN_FILE}: it is incomplete; use a new --out")
        return False
    saved = read_run(run_dir)
    try:  # the saved model with this version's defaults for fields it predates
        saved_model = ModelConfig.from_dict(saved.get("model", {})).to_dict()
    except ValueError as e:
        raise CheckpointError(f"{run_dir / RUN_FILE} holds no valid model ({e}); use a new --out") from None
    shaping = {k: run[k] for k in ("model", "train")}
    saved_flat = _flatten({"model": saved_model, "train": saved.get("train", {})})
    now = _flatten(shaping)
    diffs = [f"{k}: saved {saved_flat.get(k)!r}, now {v!r}" for k, v in now.items() if saved_flat.get(k) != v]
    if diffs:
        raise CheckpointError(
            f"{run_dir} holds a different run ({'; '.join(diffs[:6])}); rerun with the same flags to resume, "
            "or choose a new --out"
        )
    return (run_dir / CKPT_DIR / "latest").exists()


def write_run(run_dir: Path, run: dict, tokenizer_json: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / RUN_FILE, json.dumps(run, indent=2, sort_keys=True).encode())
    _atomic_write(run_dir / TOKENIZER_FILE, tokenizer_json.encode())


def save_weights(run_dir: Path, model: nn.Module, step: int) -> None:
    tmp = run_dir / (WEIGHTS_FILE + ".tmp")
    torch.save({"step": step, "model": model.state_dict()}, tmp)
    os.replace(tmp, run_dir / WEIGHTS_FILE)


def load_for_inference(run_dir: Path):
    """(ModelConfig, state_dict, tokenizer, step) of a finished or running run."""
    from trainer.data.tokenizer import Tokenizer

    missing = [f for f in (RUN_FILE, TOKENIZER_FILE, WEIGHTS_FILE) if not (run_dir / f).exists()]
    if missing:
        raise CheckpointError(f"{run_dir} is not a HyQuT checkpoint: missing {', '.join(missing)}")
    try:
        run = read_run(run_dir)
        cfg = ModelConfig.from_dict(run["model"])
        blob = torch.load(run_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        tokenizer = Tokenizer.load(run_dir / TOKENIZER_FILE)
    except Exception as e:  # torch, tokenizers and json each raise their own kinds on a bad file
        raise CheckpointError(f"{run_dir} is corrupt or incomplete: {e}") from None
    return cfg, blob["model"], tokenizer, blob["step"]


def prune(run_dir: Path, keep: int) -> None:
    """Delete all but the last `keep` DeepSpeed checkpoints."""
    tags = sorted((p for p in (run_dir / CKPT_DIR).glob("step*") if p.is_dir()), key=lambda p: int(p.name[4:]))
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def shots_spent(run_dir: Path) -> tuple[int, int]:
    """(the step a resumed run restarts from, every shot its earlier sessions spent: the last logged
    shots_total, steps past the checkpoint included, since they were paid for); (0, 0) for a new run.
    Read before the log is truncated to the checkpoint."""
    latest = run_dir / CKPT_DIR / "latest"
    if not latest.exists():
        return 0, 0
    records = read_log(run_dir)
    logged = (records[-1]["step"], records[-1].get("shots_total", 0)) if records else (0, 0)
    # the jobs of a step the session was killed in: submitted (jobs.jsonl says), never logged
    unlogged = shots_submitted_after(run_dir, logged[0])
    return int(latest.read_text().strip().removeprefix("step")), logged[1] + unlogged


def read_log(run_dir: Path, up_to_step: int | None = None) -> list[dict]:
    """The log's records, optionally only those up to a step (a resumed run rewrites the rest)."""
    path = run_dir / LOG_FILE
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if up_to_step is None or r["step"] <= up_to_step]


def truncate_log(run_dir: Path, step: int) -> None:
    """Drop records after `step`: a resumed run replays those steps and logs them again."""
    kept = "".join(json.dumps(r) + "\n" for r in read_log(run_dir, step))
    _atomic_write(run_dir / LOG_FILE, kept.encode())


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
