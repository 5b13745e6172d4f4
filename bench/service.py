"""The qworker service against the in-process simulator, measured in one run.

    python bench/service.py                  # N = 16384 tokens, adjoint, fd and shift
    python bench/service.py --quick          # N = 4096, 3 rounds
    python bench/service.py --json           # one JSON object a line

The work per cell is what a training step asks of one quantum layer: the forward expectations
and the gradients (`Backend.start`, then `Pending.vjp`): for adjoint a forward and a VJP call;
for fd and shift a forward call and the Jacobians started with it, either kept on the replicas
(the default: the backward sends the upstream gradient with their handle and gets the VJP) or
sent back whole ("dense", the path before resident Jacobians) to be contracted by the client.
It runs in-process (the `local` simulator, torch threads = all cores, in a process of its own,
like a trainer's) and through `python -m qworker serve` on 127.0.0.1, each server a process of its
own with its own local Ray pool: 1 replica (all cores), kept and dense, and 2 replicas (one core
each), kept; the same simulator in every replica. And once more with 1 replica at an H200's pace
(bench/paced.py: the simulator's exact results in the seconds the H200 of docs/performance.md
takes, the CPU idle meanwhile), PACED_CALLS calls back to back a round: a frontend routing GPU
replicas gets a call every few ms and pays each warm, one routing CPU replicas waits seconds and
pays each cold (docs/performance.md, "At an H200's pace"). Its frontend CPU is what bench/capacity.py
plans GPU pools with; its rate is the pace's, not a measurement of a replica.

Reported per path and method: token-circuits/s (tokens x (1 + gradient evaluations), adjoint
counted as one); the service/in-process ratio; the bytes on the wire per token and quantum layer
(every request and response of the step, both ways, as the client sent and received them); the
frontend's CPU per token (the server process alone, replicas excluded, its threads' run time)
and per request, net of the server's quiet rate (its CPU per second with nothing asked, measured in
the same run: Ray's and gRPC's threads, ~2.5 ms/s, which a 19 s CPU call would otherwise charge
to its tokens and a GPU replica's 20 ms call would not); and the per-request overhead, a
one-token call through the service minus in-process. The paths take
turns, round after round, and medians are reported (of the ratios per round): this machine's
speed drifts by 2x within minutes.
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from trainer.run.threads import share_cores

share_cores()  # before torch loads OpenMP: the in-process path waits passively, as trainers and replicas do

import paced
import torch
from capacity import PACED
from prometheus_client import REGISTRY
from servers import Server

from qworker import CircuitSpec, Gradient, get_backend
from qworker.server.service import TRIM_EVERY_S, TRIMS_AFTER_BURST

SPEC = CircuitSpec(10, 2)
BENCH = Path(__file__).resolve().parent
PACED_CALLS = 10  # its calls a round, back to back: an H200 replica keeps its frontend this busy


def step_work(backend, theta, angles, grad_out, grad: Gradient) -> None:
    pending = backend.start(SPEC, theta, angles, grad)
    pending.vjp(grad_out)


def seconds_of(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def wire_bytes() -> float:
    """Bytes this process's qworker clients have sent and received so far (their own counter)."""
    return sum(REGISTRY.get_sample_value("hyqut_qworker_client_bytes_total", {"direction": d}) or 0.0
               for d in ("sent", "received"))  # fmt: skip


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
    theta, angles, grad_out = batch(n)
    conn, child = mp.get_context("spawn").Pipe()
    worker = mp.get_context("spawn").Process(target=in_process_worker, args=(child, n, cores), daemon=True)
    worker.start()

    def in_process(what: str) -> float:
        conn.send(what)
        return conn.recv()

    paths, servers = {"in-process": (in_process, None)}, []
    try:
        for replicas in (1, 2):  # one replica with every core, or one core each
            cpus = max(1, cores // replicas)
            server = Server("--simulators", "local", "--replicas", str(replicas), "--replica-cpus", str(cpus))
            servers.append(server)
            name = f"service, {replicas} replica{'s' if replicas > 1 else ''}"
            for jacobians in ("dense", "kept") if replicas == 1 else ("kept",):
                remote = get_backend(f"{server.address}?simulator=local&deadline=600&jacobians={jacobians}")
                label = f"{name}, dense" if jacobians == "dense" else name
                paths[label] = (functools.partial(through, remote, theta, angles, grad_out), server)
        folder = paced.install(Path(tempfile.mkdtemp(prefix="hyqut-paced-")))
        pythonpath = os.pathsep.join(filter(None, (str(folder), str(BENCH), os.environ.get("PYTHONPATH"))))
        server = Server("--simulators", "paced", "--replicas", "1", env={"PYTHONPATH": pythonpath})
        servers.append(server)
        remote = get_backend(f"{server.address}?simulator=paced&deadline=600")
        paths[PACED] = (functools.partial(through, remote, theta, angles, grad_out), server)
        quiet = quiet_rates(paths)
        rows = [measure(paths, method, n, rounds, quiet) for method in ("adjoint", "fd", "shift")]
        rows.append(overhead(paths, rounds, quiet))
    finally:
        conn.send(None)
        for server in servers:
            server.stop()
    for row in rows:
        print(json.dumps(row) if args.json else format_row(row), flush=True)
    if not args.json:
        print(f"# {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}")


def through(remote, theta, angles, grad_out, what: str) -> float:
    if what == "one":
        return seconds_of(remote.expectations, SPEC, theta, angles[:1])
    return seconds_of(step_work, remote, theta, angles, grad_out, Gradient(what))


def timed_calls(run, server, what: str, calls: int = 1) -> tuple[list[float], tuple[float, float, float] | None]:
    """Seconds of `calls` calls, and the server's (CPU seconds, Evaluate requests) and the bytes
    on the wire over them."""
    before = (server.cpu_s(), server.evaluate_calls(), wire_bytes()) if server else None
    seconds = [run(what) for _ in range(calls)]
    if server is None:
        return seconds, None
    return seconds, (server.cpu_s() - before[0], server.evaluate_calls() - before[1], wire_bytes() - before[2])


QUIET_S = 5.0  # seconds each server's quiet rate is measured over


def quiet_rates(paths: dict) -> dict[str, float]:
    """Each server's CPU seconds per second with nothing asked of it, all measured together after
    a warm-up call each and the trims that follow a burst (qworker.server.service.TRIMS_AFTER_BURST
    quiet looks, TRIM_EVERY_S apart: collect and trim, a burst's cost, not a quiet server's)."""
    for run, server in paths.values():
        if server:
            run("one")
    time.sleep((TRIMS_AFTER_BURST + 2) * TRIM_EVERY_S)
    servers = {name: server for name, (_, server) in paths.items() if server}
    before = {name: server.cpu_s() for name, server in servers.items()}
    start = time.perf_counter()
    time.sleep(QUIET_S)
    elapsed = time.perf_counter() - start
    return {name: (server.cpu_s() - before[name]) / elapsed for name, server in servers.items()}


def cpu_ms_per_request(spent: list[tuple[float, float, float, float]], quiet: float) -> float:
    """CPU ms per request over all rounds together, net of the quiet rate over the calls' seconds."""
    return 1e3 * sum(c - quiet * s for c, _, _, s in spent) / max(1.0, sum(r for _, r, _, _ in spent))


def measure(paths: dict, method: str, n: int, rounds: int, quiet: dict[str, float]) -> dict:
    """Each path in turn, `rounds` times (after a warm-up each): medians of rates and of ratios.
    The H200-paced path makes PACED_CALLS calls back to back in its turn (its figures are per
    call); its rate is the pace's, so it has no ratio to the in-process one."""
    circuits = n * (1 + Gradient(method).evaluations(SPEC))
    rates = {name: [] for name in paths}
    cpu_ms = {name: [] for name, (_, server) in paths.items() if server}
    for i in range(rounds + 1):
        for name, (run, server) in paths.items():
            calls = PACED_CALLS if name == PACED else 1
            seconds, cpu = timed_calls(run, server, method, calls)
            if i:
                rates[name].append(circuits * calls / sum(seconds))
                if cpu is not None:
                    cpu_ms[name].append((cpu[0] / calls, cpu[1] / calls, cpu[2] / calls, sum(seconds) / calls))
    base = rates["in-process"]
    net = {name: [1e6 * (x[0] - quiet[name] * x[3]) / n for x in c] for name, c in cpu_ms.items()}
    return dict(
        grad=method,
        tokens=n,
        rounds=rounds,
        token_circuits_per_s={name: statistics.median(r) for name, r in rates.items()},
        ratio={name: statistics.median(a / b for a, b in zip(r, base)) for name, r in rates.items() if name != PACED},
        service_cpu_ms_per_request={name: cpu_ms_per_request(c, quiet[name]) for name, c in cpu_ms.items()},
        frontend_cpu_us_per_token={name: statistics.median(us) for name, us in net.items()},
        frontend_cpu_us_per_token_rounds=net,
        frontend_cpu_us_per_token_raw={k: statistics.median(1e6 * x[0] / n for x in c) for k, c in cpu_ms.items()},
        quiet_cpu_ms_per_s={name: 1e3 * quiet[name] for name in cpu_ms},
        bytes_per_token={name: statistics.median(x[2] for x in c) / n for name, c in cpu_ms.items()},
    )


def overhead(paths: dict, rounds: int, quiet: dict[str, float]) -> dict:
    """One-token forward calls through each path, in blocks of 25 that take turns (a block's first
    call is dropped: the previous path's idle threads may still be spinning on the cores)."""
    times = {name: [] for name in paths}
    cpu_ms = {name: [] for name, (_, server) in paths.items() if server}
    for _ in range(2 * rounds):
        for name, (run, server) in paths.items():
            run("one")
            seconds, cpu = timed_calls(run, server, "one", 25)
            times[name] += seconds
            if cpu is not None:
                cpu_ms[name].append((*cpu, sum(seconds)))
    ms = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    return dict(
        one_token_ms=ms,
        overhead_ms={k: v - ms["in-process"] for k, v in ms.items() if k != "in-process"},
        service_cpu_ms_per_request={name: cpu_ms_per_request(c, quiet[name]) for name, c in cpu_ms.items()},
    )


def format_row(row: dict) -> str:
    cpu = row["service_cpu_ms_per_request"]
    if "overhead_ms" in row:
        return "one-token call: " + ", ".join(
            f"{name} {ms:.2f} ms"
            + (f" (+{row['overhead_ms'][name]:.2f} ms, service CPU {cpu[name]:.2f} ms)" if name in cpu else "")
            for name, ms in row["one_token_ms"].items()
        )
    return "\n".join(
        f"{name:<29} {row['grad']:<8} N={row['tokens']:<6} {rate:>10,.0f} token-circuits/s "
        + (f"{row['ratio'][name]:5.2f}x" if name in row["ratio"] else "  pace")
        + (
            f"  {row['bytes_per_token'][name]:6.0f} B/token  frontend CPU {row['frontend_cpu_us_per_token'][name]:6.1f}"
            f" us/token ({row['frontend_cpu_us_per_token_raw'][name]:.1f} with its quiet"
            f" {row['quiet_cpu_ms_per_s'][name]:.1f} ms/s), {cpu[name]:6.2f} ms/request"
            if name in cpu
            else ""
        )
        for name, rate in row["token_circuits_per_s"].items()
    )


if __name__ == "__main__":
    main()
