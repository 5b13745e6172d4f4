"""The qworker service against the in-process simulator, measured in one run.

    python bench/service.py                  # N = 16384 tokens, adjoint and fd
    python bench/service.py --quick          # N = 4096, 3 rounds
    python bench/service.py --json           # one JSON object a line

The work per cell is what a training step asks of one quantum layer: the forward expectations
and the gradients (`Backend.start`, then `Pending.vjp`): for adjoint a forward and a VJP call,
for fd a forward call and the Jacobians (started with the forward). It runs in-process (the
`local` simulator, torch threads = all cores, in a process of its own, like a trainer's) and
through `python -m qworker serve` on 127.0.0.1 with a local Ray pool of 1 replica (all cores)
and 2 replicas (one core each), the same simulator in every replica.

Reported: token-circuits/s (tokens x (1 + gradient evaluations), adjoint counted as one); the
service/in-process ratio (target >= 0.8 at N = 16384); the per-request overhead, a one-token call
through the service minus in-process (target <= 5 ms); the bytes on the wire per token (request
+ response, as protobuf encodes them). The paths take turns, round after round, and medians are
reported (of the ratios per round): this machine's speed drifts by 2x within minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import statistics
import time

import ray
import torch

from qworker import CircuitSpec, Gradient, get_backend
from qworker.evaluation import Evaluation, Result
from qworker.service import ServerConfig, create_server
from qworker.wire_convert import to_request, to_response

SPEC = CircuitSpec(10, 2)


def step_work(backend, theta, angles, grad_out, grad: Gradient) -> None:
    pending = backend.start(SPEC, theta, angles, grad)
    pending.vjp(grad_out)


def seconds_of(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def wire_bytes_per_token(n: int, grad: Gradient) -> float:
    """Request + response bytes of one layer's step (forward call and gradient call), per token."""
    theta, angles = torch.zeros(SPEC.n_params), torch.zeros(n, SPEC.n_angles)
    z = torch.zeros(n, SPEC.n_qubits)
    forward = Evaluation(SPEC, "local", theta, angles)
    total = to_request(forward).ByteSize() + to_response(Result(expectations=z)).ByteSize()
    if grad.method == "adjoint":
        ev = Evaluation(SPEC, "local", theta, angles, "vjp", grad, grad_out=z)
        result = Result(vjp=(theta, angles))
    else:
        ev = Evaluation(SPEC, "local", theta, angles, "jacobians", grad)
        result = Result(
            jacobians=(torch.zeros(n, SPEC.n_qubits, SPEC.n_params), torch.zeros(n, SPEC.n_qubits, SPEC.n_angles))
        )
    total += to_request(ev).ByteSize() + to_response(result).ByteSize()
    return total / n


def batch(n: int):
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(SPEC.n_params, generator=g) * 6.28
    angles = torch.rand(n, SPEC.n_angles, generator=g) * 6.28
    return theta, angles, torch.randn(n, SPEC.n_qubits, generator=g)


def in_process_worker(conn, n: int, threads: int) -> None:
    """The in-process path in a process of its own (no Ray driver, no gRPC server beside it):
    receives a method (or "one" for a one-token call), answers the seconds it took."""
    torch.set_num_threads(threads)
    theta, angles, grad_out = batch(n)
    local = get_backend("local")
    while (what := conn.recv()) is not None:
        if what == "one":
            conn.send(seconds_of(local.expectations, SPEC, theta, angles[:1]))
        else:
            conn.send(seconds_of(step_work, local, theta, angles, grad_out, Gradient(what)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians are reported")
    p.add_argument("--quick", action="store_true", help="N = 4096, 3 rounds")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    n, rounds = (4096, 3) if args.quick else (args.tokens, args.rounds)
    cores = os.cpu_count() or 1
    ray.init(num_cpus=2 * cores, include_dashboard=False, log_to_driver=False)  # both pools fit; one works at a time
    theta, angles, grad_out = batch(n)
    conn, child = mp.get_context("spawn").Pipe()
    worker = mp.get_context("spawn").Process(target=in_process_worker, args=(child, n, cores), daemon=True)
    worker.start()

    def in_process(what: str) -> float:
        conn.send(what)
        return conn.recv()

    paths, servers = {"in-process": in_process}, []
    for replicas in (1, 2):  # one replica with every core, or one core each
        cfg = ServerConfig(port=0, replicas=replicas, replica_cpus=max(1, cores // replicas), simulators=("local",))
        server, port = create_server(cfg)
        server.start()
        server.wait_ready(180)
        servers.append(server)
        remote = get_backend(f"grpc://127.0.0.1:{port}?simulator=local&deadline=600")
        paths[f"service, {replicas} replica{'s' if replicas > 1 else ''}"] = functools.partial(
            through, remote, theta, angles, grad_out
        )
    try:
        rows = [measure(paths, method, n, rounds) for method in ("adjoint", "fd")]
        rows.append(overhead(paths, rounds))
    finally:
        conn.send(None)
        for server in servers:
            server.stop(1)
    for row in rows:
        print(json.dumps(row) if args.json else format_row(row), flush=True)
    if not args.json:
        print(f"# {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}")


def through(remote, theta, angles, grad_out, what: str) -> float:
    if what == "one":
        return seconds_of(remote.expectations, SPEC, theta, angles[:1])
    return seconds_of(step_work, remote, theta, angles, grad_out, Gradient(what))


def measure(paths: dict, method: str, n: int, rounds: int) -> dict:
    """Each path in turn, `rounds` times (after a warm-up each): medians of rates and of ratios."""
    circuits = n * (1 + Gradient(method).evaluations(SPEC))
    rates = {name: [] for name in paths}
    for i in range(rounds + 1):
        for name, run in paths.items():
            seconds = run(method)
            if i:
                rates[name].append(circuits / seconds)
    base = rates["in-process"]
    return dict(
        grad=method,
        tokens=n,
        rounds=rounds,
        token_circuits_per_s={name: statistics.median(r) for name, r in rates.items()},
        ratio={name: statistics.median(a / b for a, b in zip(r, base)) for name, r in rates.items()},
        bytes_per_token=wire_bytes_per_token(n, Gradient(method)),
    )


def overhead(paths: dict, rounds: int) -> dict:
    """One-token forward calls through each path, in blocks of 25 that take turns (a block's first
    call is dropped: the previous path's idle threads may still be spinning on the cores)."""
    times = {name: [] for name in paths}
    for _ in range(2 * rounds):
        for name, run in paths.items():
            times[name] += [run("one") for _ in range(26)][1:]
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return dict(one_token_ms=ms, overhead_ms={k: v - ms["in-process"] for k, v in ms.items() if k != "in-process"})


def format_row(row: dict) -> str:
    if "overhead_ms" in row:
        return "one-token call: " + ", ".join(
            f"{name} {ms:.2f} ms" + (f" (+{row['overhead_ms'][name]:.2f} ms)" if name in row["overhead_ms"] else "")
            for name, ms in row["one_token_ms"].items()
        )
    return "\n".join(
        f"{name:<22} {row['grad']:<8} N={row['tokens']:<6} {rate:>10,.0f} token-circuits/s "
        f"{row['ratio'][name]:5.2f}x  {0 if name == 'in-process' else row['bytes_per_token']:6.0f} B/token"
        for name, rate in row["token_circuits_per_s"].items()
    )


if __name__ == "__main__":
    main()
