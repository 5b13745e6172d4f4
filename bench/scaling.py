"""Scale-out, measured: the qworker pool with R = 1, 2, 4, ... replicas of one core each (up to
the machine's cores), against R = 1 and against the in-process backend, in one run.

    python bench/scaling.py                       # fd and shift; R up to the cores
    python bench/scaling.py --replicas 1 2 4 8    # on a larger machine
    python bench/scaling.py --replica-gpus 1      # a GPU per replica (the local simulator on CUDA)
    python bench/scaling.py --json

Two figures per R and gradient method:
- circuit evaluations/s: a Jacobian request of --tokens tokens (256 by default: one training
  step's layer; 256 x 121 one-token circuits with fd) sent whole; the pool cuts it into work units
  (docs/design.md, "The service") and spreads them over its replicas;
- tokens/s of a training step: the `--model` model (forward, backward, AdamW) with W_q of every
  layer through the circuit, by the same method, its circuits on the service.
efficiency = speed-up over R = 1, divided by R; spread = the least busy replica's busy seconds over
the busiest one's during the Jacobian requests (1.00: the work is evenly spread). Each R is a
server of its own (`python -m qworker serve`, a private Ray), measured after a warm-up, medians
over --rounds. The in-process rows run the same work in this process (the `local` simulator, all cores as threads).

The pool's replicas are Ray actors: without Ray installed (the GPU machine lent to this project
has none) the script says so and exits with status 2 before measuring anything; there,
`bench/vqc.py --device cuda` measures the kernels a `--replica-gpus` replica runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch
from servers import Server

from qworker import CircuitSpec, Gradient, get_backend
from trainer.model.circuits import Circuits
from trainer.model.config import from_preset
from trainer.model.convert import build_model
from trainer.model.quantum_linear import circuit_clock

SPEC = CircuitSpec()
BUSY = "hyqut_qworker_replica_busy_seconds_total"


def jacobian_rate(backend, method: str, n: int, rounds: int) -> float:
    """One-token circuit evaluations per second of a Jacobian of n tokens (median of rounds)."""
    g = torch.Generator().manual_seed(0)
    theta, angles = torch.rand(SPEC.n_params, generator=g) * 6, torch.rand(n, SPEC.n_angles, generator=g) * 6
    grad = Gradient(method)
    backend.jacobians(SPEC, theta, angles, grad)  # warm-up
    seconds = []
    for _ in range(rounds):
        start = time.perf_counter()
        backend.jacobians(SPEC, theta, angles, grad)
        seconds.append(time.perf_counter() - start)
    return n * grad.evaluations(SPEC) / statistics.median(seconds)


def step_rate(model_name: str, circuits: Circuits, batch: int, rounds: int) -> float:
    """Training tokens per second of the model with W_q through the circuit (median of rounds)."""
    cfg = from_preset(model_name, quantum="wq")
    torch.manual_seed(0)
    model = build_model(cfg, circuits)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(cfg.vocab_size, (batch, cfg.context))
    seconds = []
    for i in range(rounds + 1):  # the first step warms up
        circuit_clock.take()
        start = time.perf_counter()
        _, loss = model(x, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            seconds.append(time.perf_counter() - start)
    return batch * cfg.context / statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    cores = os.cpu_count() or 1
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_r = [r for r in (1, 2, 4, 8, 16, 32, 64) if r <= cores]
    p.add_argument("--replicas", type=int, nargs="+", default=default_r, help=f"R values (default {default_r})")
    p.add_argument("--methods", nargs="+", default=["fd", "shift"])
    p.add_argument("--tokens", type=int, default=256, help="tokens of the Jacobian request")
    p.add_argument("--model", default="tiny", help="the preset whose training step is timed")
    p.add_argument("--batch", type=int, default=2, help="sequences per training step")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--replica-gpus", type=float, default=0.0)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    try:
        import ray  # noqa: F401 - the replicas' runtime; only whether it is here
    except ImportError:
        p.exit(2, "bench/scaling.py: Ray is not installed here, and the pool's replicas are Ray actors; "
                  "bench/vqc.py --device cuda measures the kernels a --replica-gpus replica runs\n")  # fmt: skip
    rows = []
    for method in args.methods:
        rows.append(
            {
                "method": method,
                "replicas": 0,
                "evaluations_per_s": jacobian_rate(get_backend("local"), method, args.tokens, args.rounds),
                "tokens_per_s": step_rate(args.model, Circuits("local", grad=method), args.batch, args.rounds),
            }
        )
    for r in args.replicas:
        flags = ["--simulators", "local", "--replicas", str(r), "--replica-cpus", "1", "--inline-work", "0"]
        if args.replica_gpus:
            flags += ["--replica-gpus", str(args.replica_gpus)]
        server = Server(*flags)
        try:
            remote = get_backend(f"{server.address}?simulator=local&deadline=600")
            for method in args.methods:
                before = server.by_replica(BUSY)
                evals = jacobian_rate(remote, method, args.tokens, args.rounds)
                busy = {k: v - before.get(k, 0.0) for k, v in server.by_replica(BUSY).items() if k != "server"}
                circuits = Circuits(f"{server.address}?simulator=local", grad=method)
                rows.append(
                    {
                        "method": method,
                        "replicas": r,
                        "evaluations_per_s": evals,
                        "replica_busy_s": sorted(busy.values()),  # of the Jacobian requests: is the work spread?
                        "tokens_per_s": step_rate(args.model, circuits, args.batch, args.rounds),
                    }
                )
            remote.close()
        finally:
            server.stop()
    for row in rows:
        one = next(r for r in rows if r["method"] == row["method"] and r["replicas"] == 1) if row["replicas"] else None
        for key in ("evaluations_per_s", "tokens_per_s"):
            if one:
                row[f"{key}_speedup"] = row[key] / one[key]
                row[f"{key}_efficiency"] = row[key] / one[key] / row["replicas"]
            base = next(r for r in rows if r["method"] == row["method"] and r["replicas"] == 0)
            row[f"{key}_vs_in_process"] = row[key] / base[key]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(
        f"# bench/scaling.py  {platform.processor() or platform.machine()}, {cores} cores; Jacobian of "
        f"{args.tokens} tokens; {args.model} training step, batch {args.batch}; medians of {args.rounds}"
    )
    print(f"{'method':<6} {'R':>3} {'evals/s':>10} {'x R=1':>6} {'eff':>5} {'vs in-proc':>10} {'spread':>6}   "
          f"{'tokens/s':>9} {'x R=1':>6} {'eff':>5} {'vs in-proc':>10}")  # fmt: skip
    for row in rows:
        r = "in" if not row["replicas"] else str(row["replicas"])
        cells = []
        for key in ("evaluations_per_s", "tokens_per_s"):
            if row["replicas"]:
                scale = f"{row[f'{key}_speedup']:>6.2f} {row[f'{key}_efficiency']:>5.2f}"
            else:
                scale = f"{'-':>6} {'-':>5}"
            cells.append(f"{row[key]:>10,.0f} {scale} {row[f'{key}_vs_in_process']:>10.2f}")
        busy = row.get("replica_busy_s")
        spread = f"{busy[0] / busy[-1]:>6.2f}" if busy and busy[-1] > 0 else f"{'-':>6}"
        print(f"{row['method']:<6} {r:>3} {cells[0]} {spread}   {cells[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
