"""The paper's gradient method at fixed weights: the whole model's gradient with `--grad fd` at
several steps δ against the exact adjoint one, on the same weights and the same batch.

    python bench/fd_check.py --check-batch 2 --results docs/results/fd-check   # 8m wq, 200 steps, at 0, 100, 200
    python bench/fd_check.py --model tiny --steps 20 --save-every 10 --checkpoints 0 10 20 --out runs/fd-tiny

It trains (or resumes, or reads) one adjoint run, `trainer.main --quantum wq`, saving every
`--save-every` steps; at each checkpoint (step 0: the initial weights, rebuilt from the seed as the
trainer builds them) it takes the batch the run would train on next and computes the gradient of
the loss with respect to every parameter, once by adjoint differentiation of the circuits and once
by central finite differences at each δ. Everything but the circuits is torch autograd in both, so
the two differ only through the circuits' gradients, and those errors reach every parameter below
a circuit through backpropagation. Per parameter group (the circuits' θ, the compress and expand
maps around them, the classical rest, and the whole model): the cosine similarity of the two
gradients and the relative error |g_fd - g_adjoint| / |g_adjoint|.

Central differences have a truncation error O(δ²) and, in float32 (the circuits' precision in
training), a rounding error O(ε/δ), ε ~ 6e-8: the error is smallest near δ ~ 1e-2, the trainer's
default. The circuits run in-process on the `local` simulator; the fd study's Ray pool ran the same
central differences (its replicas' `auto` simulator picks `local` for batches of 5 or more tokens).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from trainer.data.batches import BatchSampler
from trainer.data.corpus import prepare_data
from trainer.data.tokenizer import Tokenizer
from trainer.model.circuits import Circuits
from trainer.model.config import ModelConfig
from trainer.model.convert import build_model
from trainer.run import checkpoint as ckpt
from trainer.run.checkpoint import CKPT_DIR, read_run

GROUPS = ("circuit θ", "compress", "expand", "classical rest", "whole model")


def group_of(name: str) -> str:
    """The group of a parameter, by its name in the model (attention.wq.theta, ...)."""
    for part, group in ((".theta", "circuit θ"), (".compress.", "compress"), (".expand.", "expand")):
        if part in name:
            return group
    return "classical rest"


def train(args: argparse.Namespace) -> Path:
    """The adjoint run, trained (or resumed) unless it has finished."""
    out = args.out / "run"
    if (out / "summary.json").exists() and json.loads((out / "summary.json").read_text())["steps"] == args.steps:
        return out
    cmd = [sys.executable, "-m", "trainer.main", "--model", args.model, "--quantum", "wq", "--steps", str(args.steps)]
    cmd += ["--batch-size", str(args.batch_size), "--seed", str(args.seed), "--save-every", str(args.save_every)]
    cmd += ["--eval-every", str(args.save_every), "--out", str(out)]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def weights(run_dir: Path, cfg: ModelConfig, step: int, seed: int) -> dict:
    """The model's weights at `step`: its DeepSpeed checkpoint, or the trainer's initial weights at 0."""
    if step == 0:
        torch.manual_seed(seed)  # as trainer.main.train() does just before it builds the model
        return build_model(cfg).state_dict()
    path = run_dir / CKPT_DIR / f"step{step}" / "mp_rank_00_model_states.pt"
    if not path.exists():
        raise SystemExit(f"no checkpoint of step {step} in {run_dir / CKPT_DIR} (the trainer keeps the last two)")
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def gradients(cfg: ModelConfig, state: dict, circuits: Circuits, x, y) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss on (x, y) and its gradient by parameter name."""
    model = build_model(cfg, circuits)
    model.load_state_dict(state)
    _, loss = model(x, y)
    loss.backward()
    return loss.item(), {n: p.grad.detach().double().flatten() for n, p in model.named_parameters()}


@torch.no_grad()
def full_batch_loss(cfg: ModelConfig, state: dict, x, y) -> float:
    """The loss of the weights on the run's next whole batch: the run logged it as its next step's
    loss, so the two agree when these are the run's weights and batch."""
    model = build_model(cfg)
    model.load_state_dict(state)
    return model(x, y)[1].item()


def compare(fd: dict[str, torch.Tensor], adjoint: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per group: cosine similarity, relative error and the adjoint gradient's norm."""
    out = {}
    for group in GROUPS:
        names = [n for n in adjoint if group == "whole model" or group_of(n) == group]
        a = torch.cat([adjoint[n] for n in names])
        f = torch.cat([fd[n] for n in names])
        out[group] = {
            "params": a.numel(),
            "cosine": (f @ a / (f.norm() * a.norm())).item(),
            "rel_error": ((f - a).norm() / a.norm()).item(),
            "adjoint_norm": a.norm().item(),
        }
    return out


def check(args: argparse.Namespace) -> dict:
    run_dir = train(args)
    saved = read_run(run_dir)
    cfg = ModelConfig.from_dict(saved["model"])
    tokenizer = Tokenizer.load(run_dir / "tokenizer.json")
    corpus = prepare_data(saved["train"]["dataset"], cfg.vocab_size, tokenizer=tokenizer)
    logged = {r["step"]: r["loss"] for r in ckpt.read_log(run_dir)}
    rows, checks = [], []
    for step in args.checkpoints:
        sampler = BatchSampler(corpus.train, args.batch_size, cfg.context, args.seed)
        for _ in range(step):  # the batch the run takes next, at step + 1
            next(sampler)
        batch_x, batch_y = next(sampler)  # (B, T) each
        x, y = batch_x[: args.check_batch], batch_y[: args.check_batch]  # (b, T): the gradients' sequences
        state = weights(run_dir, cfg, step, args.seed)
        next_loss = full_batch_loss(cfg, state, batch_x, batch_y)
        checks.append({"step": step, "loss": next_loss, "logged": logged.get(step + 1)})
        start = time.perf_counter()
        loss, adjoint = gradients(cfg, state, Circuits(grad="adjoint"), x, y)
        print(f"step {step}: loss {loss:.5f}, adjoint gradient {time.perf_counter() - start:.1f} s", flush=True)
        for delta in args.deltas:
            start = time.perf_counter()
            _, fd = gradients(cfg, state, Circuits(grad="fd", fd_delta=delta), x, y)
            seconds = time.perf_counter() - start
            groups = compare(fd, adjoint)
            rows.append({"step": step, "delta": delta, "loss": loss, "seconds": seconds, "groups": groups})
            print(format_row(rows[-1]), f"({seconds:.1f} s)", flush=True)
    keys = ("model", "steps", "seed", "batch_size", "check_batch", "checkpoints", "deltas")
    config = {k: getattr(args, k) for k in keys}
    config.update(context=cfg.context, precision="float32", simulator="local")
    curve = [[step, round(loss, 5)] for step, loss in sorted(logged.items())]
    return {"config": config, "weights_check": checks, "rows": rows, "train": curve}


def dumps(result: dict) -> str:
    """The result as JSON: its settings and rows indented, the training curve on one line."""
    head = json.dumps({k: v for k, v in result.items() if k != "train"}, indent=1)
    return f'{head[:-2]},\n "train": {json.dumps(result["train"])}\n}}\n'


def format_row(r: dict) -> str:
    cells = [f"{r['groups'][g]['rel_error']:.1e} ({1 - r['groups'][g]['cosine']:.0e})" for g in GROUPS]
    shrink = 1 - math.sin(r["delta"]) / r["delta"]
    return f"| {r['step']} | {r['delta']:g} | {shrink:.1e} | " + " | ".join(cells) + " |"


def report(result: dict) -> str:
    c = result["config"]
    first = next(r for r in result["rows"])["groups"]
    sizes = ", ".join(f"{g} {first[g]['params']:,}" for g in GROUPS)
    lines = [
        f"{c['model']} wq (seed {c['seed']}, adjoint training, {c['steps']} steps of {c['batch_size']} x "
        f"{c['context']} tokens): at each checkpoint, on {c['check_batch']} sequences of the next step's batch, the fd "
        f"gradient of the whole model against the adjoint one ({c['precision']} circuits, `{c['simulator']}` "
        "simulator). Each cell: the relative error |g_fd - g_adjoint| / |g_adjoint| and, in parentheses, 1 - cosine "
        "similarity. 1 - sin(δ)/δ: the relative error of a central difference of a sinusoid (the expectation as a "
        "function of one rotation angle), exact arithmetic; a shrink along the gradient, at cosine 1.",
        "",
        f"Parameters per group: {sizes}.",
        "",
        "The weights and batches are the run's: the loss of each checkpoint on the whole next batch against the "
        "loss the run logged for that step: "
        + "; ".join(
            f"step {w['step']}: {w['loss']:.5f} "
            + (f"against {w['logged']:.5f}" if w["logged"] is not None else "(the run's last: no next step)")
            for w in result["weights_check"]
        )
        + ".",
        "",
        "| step | δ | 1 - sin(δ)/δ | " + " | ".join(GROUPS) + " |",
        "|---|---|---|" + "---|" * len(GROUPS),
        *(format_row(r) for r in result["rows"]),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="8m")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--checkpoints", nargs="+", type=int, default=[0, 100, 200])
    p.add_argument("--deltas", nargs="+", type=float, default=[1e-1, 1e-2, 1e-3, 1e-4])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--check-batch", type=int, default=8, help="sequences of the next batch the gradients are taken on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/fd-check"), help="the adjoint run (not committed)")
    p.add_argument("--results", type=Path, help="RESULTS.json and RESULTS.md (default: OUT/fd-check)")
    p.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from RESULTS.json, computing nothing")
    args = p.parse_args(argv)
    results = args.results or args.out / "fd-check"
    if args.report_only:
        result = json.loads(Path(f"{results}.json").read_text())
    else:
        result = check(args)
        results.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{results}.json").write_text(dumps(result))
    Path(f"{results}.md").write_text(report(result))
    print(report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
