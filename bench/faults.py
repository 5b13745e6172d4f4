"""Faults under load, measured: a steady mixed load (forward passes and fd Jacobians) through a
2-replica pool while a replica is killed, the pool is scaled 2 -> 1 -> 2, requests are cancelled
and the service is restarted; every answer is checked against the in-process simulator.

    python bench/faults.py                 # 180 s of load (the faults at fixed times within it)
    python bench/faults.py --seconds 60    # shorter, the same faults
    python bench/faults.py --json

Reported, in one table: requests sent, answered, failed (by status), retried by the client
(UNAVAILABLE and RESOURCE_EXHAUSTED with a retry hint, counted by its RETRIES metric), refused
without recovery, wrong answers, cancelled on purpose, latency p50/p99, and the memory (RSS) of the
server and its replicas once warm (5% into the load), at most, and at the end. Goal: 0 wrong, 0 failed except
refusals the client retried.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import socket
import statistics
import threading
import time
from collections import Counter

import grpc
import psutil
import torch
from prometheus_client import REGISTRY
from servers import Server

from qworker import CircuitSpec, Gradient, get_backend
from qworker.client import RemoteError, admin_call
from qworker.protocol.convert import to_request
from qworker.protocol.evaluation import Evaluation
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.protocol.wire import qworker_pb2_grpc as pb_grpc

SPEC = CircuitSpec(10, 2)


def retries(code: str) -> float:
    """Calls this process's clients retried on `code` (the client's RETRIES counter, read publicly)."""
    return REGISTRY.get_sample_value("hyqut_qworker_client_retries_total", {"code": code}) or 0.0


def inputs(k: int):
    g = torch.Generator().manual_seed(k)
    return torch.rand(SPEC.n_params, generator=g) * 6, torch.rand(256, SPEC.n_angles, generator=g) * 6


class Load:
    """Client threads sending forward passes and fd Jacobians, checking every answer."""

    def __init__(self, address: str, threads: int):
        self.remote = get_backend(f"{address}?simulator=local&deadline=90")
        local = get_backend("local")
        self.cases = []
        for k in range(4):
            theta, angles = inputs(k)
            self.cases.append(("forward", theta, angles, local.expectations(SPEC, theta, angles)))
            j = local.jacobians(SPEC, theta, angles[:64], Gradient("fd"))
            self.cases.append(("fd", theta, angles[:64], j))
        self.stats = Counter()
        self.lock = threading.Lock()
        self.latency: list[float] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, seed: int) -> None:
        i = seed
        while not self.stop.is_set():
            kind, theta, angles, want = self.cases[i % len(self.cases)]
            i += 1
            start = time.perf_counter()
            try:
                if kind == "forward":
                    got = self.remote.expectations(SPEC, theta, angles)
                    outcome = "answered" if torch.allclose(got, want, atol=1e-5, rtol=0) else "wrong"
                else:
                    got = self.remote.jacobians(SPEC, theta, angles, Gradient("fd"))
                    ok = all(torch.allclose(a, b, atol=1e-3, rtol=0) for a, b in zip(got, want))
                    outcome = "answered" if ok else "wrong"
            except RemoteError as e:
                outcome = f"failed {e.code.name}"
            with self.lock:
                self.stats["sent"] += 1
                self.stats[outcome] += 1
                if outcome == "answered":
                    self.latency.append(time.perf_counter() - start)


def cancel_some(address: str, n: int) -> int:
    """Start n slow requests and cancel each after a moment; how many were cancelled."""
    theta, angles = inputs(9)
    request = to_request(Evaluation.of(SPEC, "local", theta, angles.repeat(8, 1), "jacobians", Gradient("fd")))
    cancelled = 0
    with grpc.insecure_channel(address[len("grpc://") :]) as ch:
        stub = pb_grpc.QWorkerStub(ch)
        for _ in range(n):
            call = stub.Evaluate.future(request, timeout=60)
            time.sleep(0.3)
            cancelled += int(call.cancel())
    return cancelled


def replica_processes() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if "ReplicaActor" in " ".join(p.info["cmdline"] or [])]


def rss_mb(server: Server) -> float:
    procs = [server.process, *replica_processes()]
    return sum(p.memory_info().rss for p in procs if p.is_running()) / 2**20


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=180.0, help="length of the load; the faults at fixed fractions")
    p.add_argument("--threads", type=int, default=3, help="client threads")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    flags = ["--port", str(port), "--simulators", "local", "--replicas", "2", "--replica-cpus", "1"]
    server = Server(*flags)
    address = server.address
    load = Load(address, args.threads)
    retried = {c: retries(c) for c in ("UNAVAILABLE", "RESOURCE_EXHAUSTED")}
    memory: list[float] = []
    events: list[str] = []
    t0 = time.monotonic()

    def at(fraction: float) -> None:
        while time.monotonic() - t0 < fraction * args.seconds:
            memory.append(rss_mb(server))
            time.sleep(0.5)

    for t in load.threads:
        t.start()
    at(0.05)  # the replicas have loaded torch and served a few requests: the baseline
    baseline = rss_mb(server)
    at(0.15)
    victim = replica_processes()[0]
    os.kill(victim.pid, signal.SIGKILL)
    events.append(f"{time.monotonic() - t0:.0f} s: killed replica pid {victim.pid}")
    at(0.3)
    admin_call(address, "Scale", pb.ScaleRequest(replicas=1))
    events.append(f"{time.monotonic() - t0:.0f} s: scaled 2 -> 1")
    at(0.45)
    admin_call(address, "Scale", pb.ScaleRequest(replicas=2))
    events.append(f"{time.monotonic() - t0:.0f} s: scaled 1 -> 2")
    at(0.6)
    cancelled = cancel_some(address, 5)
    events.append(f"{time.monotonic() - t0:.0f} s: cancelled {cancelled} requests")
    at(0.7)
    server.proc.send_signal(signal.SIGTERM)  # a restart: the clients see UNAVAILABLE and retry
    server.proc.wait(60)
    server = Server(*flags)
    events.append(f"{time.monotonic() - t0:.0f} s: service restarted")
    at(1.0)
    load.stop.set()
    for t in load.threads:
        t.join(120)
    memory.append(rss_mb(server))
    server.stop()
    lat = sorted(load.latency)
    row = {
        **dict(load.stats),
        "retried": {c: retries(c) - v for c, v in retried.items()},
        "cancelled": cancelled,
        "latency_p50_s": statistics.median(lat) if lat else None,
        "latency_p99_s": lat[int(0.99 * (len(lat) - 1))] if lat else None,
        "memory_mb": {"start": baseline, "max": max(memory), "end": memory[-1]},
        "events": events,
        "seconds": args.seconds,
    }
    if args.json:
        print(json.dumps(row))
        return 0
    failed = {k: v for k, v in load.stats.items() if k.startswith("failed")}
    print(f"# bench/faults.py  {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.seconds:.0f} s of load from {args.threads} client threads; 2 replicas of 1 CPU")  # fmt: skip
    for e in events:
        print(f"#   {e}")
    print("| sent | answered | wrong | failed | retried (UNAVAILABLE / RESOURCE_EXHAUSTED) | cancelled | "
          "p50 | p99 | RSS MB start / max / end |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    m = row["memory_mb"]
    print(
        f"| {load.stats['sent']} | {load.stats['answered'] + load.stats['wrong']} | {load.stats['wrong']} | "
        f"{sum(failed.values())} {failed or ''} | {row['retried']['UNAVAILABLE']:.0f} / "
        f"{row['retried']['RESOURCE_EXHAUSTED']:.0f} | {cancelled} | {row['latency_p50_s']:.3f} s | "
        f"{row['latency_p99_s']:.3f} s | {m['start']:.0f} / {m['max']:.0f} / {m['end']:.0f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
