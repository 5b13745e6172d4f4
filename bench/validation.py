"""A finished run's final weights (model.pt) on the whole validation split, window by window.

    python bench/validation.py runs/study-8m/wq-s0 runs/study-8m/none-s0   # a table
    python bench/validation.py runs/study-8m/wq-s0 --json                  # one JSON object a run

The trainer validates on the first `--eval-batches` x `--batch-size` windows of the validation
split (64 of 255 at `8m`: a quarter of it, and always the same quarter). This evaluates every
window of `context` tokens of the split, in order (the trainer's windows first, so the mean of the
first 64 is the loss the trainer logged), one loss (mean cross-entropy, nats/token) a window, and
reports their mean with its standard error over windows, sd/sqrt(windows): the validation set's
own sampling error, which intervals over seeds leave out. Windows are consecutive pieces of the
token stream and a dialogue can span two, so the windows are not quite independent and the
standard error is a little optimistic. `bench/study.py` calls `evaluate_run` on every new run and
keeps the result in the run directory (validation.json), so a study collects it again for free.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from trainer.data.batches import BatchSampler
from trainer.data.corpus import prepare_data
from trainer.model.circuits import Circuits
from trainer.model.convert import build_model
from trainer.model.transformer import IGNORE_INDEX, Transformer
from trainer.run.checkpoint import load_for_inference, read_run

CACHE_FILE = "validation.json"


@torch.no_grad()
def window_losses(model: Transformer, tokens, context: int, windows: int | None = None, batch: int = 8) -> list[float]:
    """The mean cross-entropy of each of the first `windows` (default: all) validation windows of
    `context` + 1 tokens, in the order the trainer's evaluate() takes them."""
    model.eval()
    device = next(model.parameters()).device
    sampler = BatchSampler(tokens, 1, context, shuffle=False)  # the trainer's windows, in order
    n = sampler.n_windows if windows is None else min(windows, sampler.n_windows)
    starts = torch.arange(n) * context
    out: list[float] = []
    for first in range(0, n, batch):
        idx = starts[first : first + batch, None] + torch.arange(context + 1)  # (B, T+1)
        block = torch.as_tensor(tokens[idx.numpy()], dtype=torch.int64).to(device)
        x, y = block[:, :-1], block[:, 1:]  # (B, T) each
        logits, _ = model(x)  # (B, T, V)
        ce = F.cross_entropy(logits.transpose(1, 2), y, ignore_index=IGNORE_INDEX, reduction="none")  # (B, T)
        counted = (y != IGNORE_INDEX).sum(dim=1).clamp(min=1)
        out += (ce.sum(dim=1) / counted).tolist()
    return out


def mean_se(values: list[float]) -> tuple[float, float]:
    """The mean and its standard error (sd / sqrt(n); 0 for one value)."""
    n = len(values)
    return statistics.mean(values), (statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0)


def evaluate_run(run_dir: Path, windows: int | None = None, use_cache: bool = True) -> dict:
    """The run's final weights on the validation split: {"step", "dataset", "context", "windows",
    "tokens", "split_windows", "loss", "se", "losses" (one a window)}. A result kept in the run
    directory for the same weights (step) and windows is read instead of computed."""
    cache = run_dir / CACHE_FILE
    cfg, state, tokenizer, step = load_for_inference(run_dir)
    if use_cache and cache.exists():
        kept = json.loads(cache.read_text())
        if kept.get("step") == step and kept.get("requested_windows") == windows:
            return kept
    dataset = read_run(run_dir)["train"]["dataset"]
    corpus = prepare_data(dataset, cfg.vocab_size, tokenizer=tokenizer)
    model = build_model(cfg, Circuits())  # the local simulator, exact: how it ran does not change the weights
    model.load_state_dict(state)
    model.to("cuda" if torch.cuda.is_available() else "cpu")  # float32 on either
    losses = window_losses(model, corpus.validation, cfg.context, windows)
    loss, se = mean_se(losses)
    split_windows = BatchSampler(corpus.validation, 1, cfg.context, shuffle=False).n_windows
    result = {
        "step": step,
        "dataset": dataset,
        "context": cfg.context,
        "requested_windows": windows,
        "windows": len(losses),
        "tokens": len(losses) * cfg.context,
        "split_windows": split_windows,
        "loss": loss,
        "se": se,
        "losses": [round(v, 5) for v in losses],
    }
    if use_cache:
        cache.write_text(json.dumps(result) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories of trainer.main (with model.pt)")
    p.add_argument("--windows", type=int, help="only the first N windows (default: the whole split)")
    p.add_argument("--json", action="store_true", help="one JSON object a run (without the per-window losses)")
    args = p.parse_args(argv)
    if not args.json:
        print("| run | step | windows of the split | tokens | val loss ± SE over windows |")
        print("|---|---|---|---|---|")
    for run_dir in args.runs:
        r = evaluate_run(run_dir, args.windows)
        if args.json:
            print(json.dumps({"run": str(run_dir), **{k: v for k, v in r.items() if k != "losses"}}))
        else:
            print(
                f"| {run_dir} | {r['step']} | {r['windows']} of {r['split_windows']} | {r['tokens']:,} | "
                f"{r['loss']:.4f} ± {r['se']:.4f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
