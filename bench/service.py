"""The qworker service against the in-process simulator, measured in one run.

    python bench/service.py                  # N = 16384 tokens, adjoint and fd
    python bench/service.py --quick          # N = 4096, fewer repeats
    python bench/service.py --json           # one JSON object a line

The work per cell is what a training step asks of one quantum layer: the forward expectations
and the gradients (`Backend.start`, then `Pending.vjp`): for adjoint a forward and a VJP call,
for fd a forward call and the Jacobians (started with the forward). It runs in-process (the
`local` simulator, torch threads = all cores) and through `python -m qworker serve` on 127.0.0.1
with a local Ray pool of 1 replica (all cores) and 2 replicas (one core each), the same
simulator in every replica. Reported: token-circuits/s (tokens x (1 + gradient evaluations),
adjoint counted as one), the service/in-process ratio (target >= 0.8 at N = 16384), the
per-request overhead (a one-token call through the service minus in-process, and the part of it
that is the Ray actor call; target <= 5 ms) and
the bytes on the wire per token (request + response, as protobuf encodes them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from qworker import CircuitSpec, Gradient, get_backend
from qworker.evaluation import Evaluation, Result
from qworker.service import ServerConfig, create_server
from qworker.wire_convert import to_request, to_response

SPEC = CircuitSpec(10, 2)


def step_work(backend, theta, angles, grad_out, grad: Gradient) -> None:
    pending = backend.start(SPEC, theta, angles, grad)
    pending.vjp(grad_out)


def timed(repeats: int, fn, *args) -> float:
    """Median seconds of `fn(*args)` after one warm-up call."""
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="N = 4096, 2 repeats")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    n, repeats = (4096, 2) if args.quick else (args.tokens, args.repeats)
    cores = os.cpu_count() or 1
    torch.set_num_threads(cores)
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(SPEC.n_params, generator=g) * 6.28
    angles = torch.rand(n, SPEC.n_angles, generator=g) * 6.28
    grad_out = torch.randn(n, SPEC.n_qubits, generator=g)
    one = angles[:1]
    local = get_backend("local")
    rows = []

    def report(row: dict) -> None:
        rows.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
        else:
            print(
                f"{row['path']:<22} {row['grad']:<8} N={row['tokens']:<6} {row['token_circuits_per_s']:>12,.0f} "
                f"token-circuits/s  {row.get('ratio', 1.0):5.2f}x  {row['bytes_per_token']:7.0f} B/token",
                flush=True,
            )

    in_process = {}
    for method in ("adjoint", "fd"):
        grad = Gradient(method)
        seconds = timed(repeats, step_work, local, theta, angles, grad_out, grad)
        in_process[method] = n * (1 + grad.evaluations(SPEC)) / seconds
        report(
            dict(
                path="in-process",
                grad=method,
                tokens=n,
                token_circuits_per_s=in_process[method],
                bytes_per_token=0.0,
                seconds=seconds,
            )
        )
    local_one = timed(50, local.expectations, SPEC, theta, one)

    for replicas in (1, 2):
        cpus = max(1, cores // replicas)
        server, port = create_server(ServerConfig(port=0, replicas=replicas, replica_cpus=cpus, simulators=("local",)))
        server.start()
        server.wait_ready(180)
        remote = get_backend(f"grpc://127.0.0.1:{port}?simulator=local&deadline=600")
        try:
            for method in ("adjoint", "fd"):
                grad = Gradient(method)
                seconds = timed(repeats, step_work, remote, theta, angles, grad_out, grad)
                rate = n * (1 + grad.evaluations(SPEC)) / seconds
                report(
                    dict(
                        path=f"service, {replicas} replica{'s' if replicas > 1 else ''}",
                        grad=method,
                        tokens=n,
                        token_circuits_per_s=rate,
                        ratio=rate / in_process[method],
                        bytes_per_token=wire_bytes_per_token(n, grad),
                        seconds=seconds,
                        replica_cpus=cpus,
                    )
                )
            remote_one = timed(50, remote.expectations, SPEC, theta, one)
            ray_one = timed(50, server.pool.evaluate, Evaluation(SPEC, "local", theta, one))
            overhead = dict(
                path=f"overhead, {replicas} replica{'s' if replicas > 1 else ''}",
                one_token_service_ms=1e3 * remote_one,
                one_token_in_process_ms=1e3 * local_one,
                overhead_ms=1e3 * (remote_one - local_one),
                of_which_ray_ms=1e3 * (ray_one - local_one),
            )
            rows.append(overhead)
            if args.json:
                print(json.dumps(overhead), flush=True)
            else:
                print(
                    f"{overhead['path']:<22} one-token call {overhead['one_token_service_ms']:.2f} ms through the "
                    f"service, {overhead['one_token_in_process_ms']:.2f} ms in-process: "
                    f"{overhead['overhead_ms']:.2f} ms per request (the Ray hop alone: "
                    f"{overhead['of_which_ray_ms']:.2f} ms)",
                    flush=True,
                )
        finally:
            remote.close()
            server.stop(1)
    if not args.json:
        print(f"# {platform.processor() or platform.machine()}, {cores} cores, torch {torch.__version__}")


if __name__ == "__main__":
    main()
