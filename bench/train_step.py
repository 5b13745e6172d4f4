"""Training-step throughput of the hybrid model against the classical one, measured in one run.

    python bench/train_step.py                 # tiny and 8m; none, wq, wgate (adjoint), wq (fd)
    python bench/train_step.py --json          # one JSON object a line
    python bench/train_step.py --models tiny --steps 3
    python bench/train_step.py --device cuda --bf16 --models 8m 150m   # a GPU, bf16 autocast

A step is forward + backward + AdamW on one batch (plain torch, one process: the model's own
cost, without DeepSpeed's). Reported: tokens/s (median over steps after a warm-up step), the
ratio to the classical model of the same preset, and the share of step time spent in the
circuits (forward and backward, timed by trainer.model.quantum_linear.circuit_clock).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import date

import torch

from trainer.model.circuits import Circuits
from trainer.model.config import from_preset
from trainer.model.convert import build_model
from trainer.model.quantum_linear import circuit_clock

VARIANTS = [("none", "adjoint"), ("wq", "adjoint"), ("wgate", "adjoint"), ("wq", "fd")]


def measure(model_name: str, quantum: str, grad: str, batch: int, steps: int, device: str, bf16: bool) -> dict:
    cfg = from_preset(model_name, quantum=quantum)
    torch.manual_seed(0)
    model = build_model(cfg, Circuits(grad=grad)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(cfg.vocab_size, (batch, cfg.context), device=device)
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)
    times, shares = [], []
    for i in range(steps + 1):  # the first step warms up (allocations, compiled circuits)
        circuit_clock.take()
        start = time.perf_counter()
        with autocast:
            _, loss = model(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if i:
            times.append(seconds)
            shares.append(circuit_clock.take() / seconds)
    t = statistics.median(times)
    return {
        "model": model_name,
        "quantum": quantum,
        "grad": grad if quantum != "none" else "-",
        "tokens_per_step": batch * cfg.context,
        "tokens_per_s": batch * cfg.context / t,
        "step_s": t,
        "quantum_share": statistics.median(shares),
        "steps": steps,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny", "8m"])
    p.add_argument("--batch", type=int, default=8, help="sequences per step (each the preset's context long)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per cell (fd: 1)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (the circuits stay float32)")
    args = p.parse_args()
    if not args.json:
        print(
            f"# {date.today()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {args.batch}; {args.device}"
            + (f" {torch.cuda.get_device_name(0)}" if args.device == "cuda" else "")
            + (", bf16 autocast" if args.bf16 else "")
        )
        print(f"{'model':6} {'quantum':8} {'grad':8} {'tokens/s':>10} {'vs none':>8} {'quantum share':>14}")
    for name in args.models:
        base = None
        for quantum, grad in VARIANTS:
            steps = 1 if grad == "fd" and args.device == "cpu" else args.steps
            row = measure(name, quantum, grad, args.batch, steps, args.device, args.bf16)
            base = base or row["tokens_per_s"]
            row["ratio_vs_classical"] = row["tokens_per_s"] / base
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{name:6} {quantum:8} {row['grad']:8} {row['tokens_per_s']:10.0f} {row['ratio_vs_classical']:8.2f}"
                    f" {row['quantum_share']:14.0%}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
