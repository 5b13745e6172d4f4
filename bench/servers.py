"""A qworker server in a process of its own, for the benchmarks: its address, and its own CPU
seconds and Evaluate calls, read from outside (bench/service.py, bench/scaling.py, bench/faults.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import psutil
from prometheus_client.parser import text_string_to_metric_families


class Server:
    """`python -m qworker serve FLAGS` with a private local Ray (unless the flags say otherwise),
    its environment this process's with `env` on top."""

    def __init__(self, *flags: str, env: dict[str, str] | None = None):
        cmd = [sys.executable, "-m", "qworker", "serve", "--port", "0", "--metrics-port", "0", *flags]
        env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **(env or {})}  # a Ray of its own
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        self.address = self.metrics = None
        for line in self.proc.stdout:
            if line.startswith("qworker listening on"):
                self.address = line.split()[-1]
            elif line.startswith("metrics on"):
                self.metrics = line.split()[-1]
                break
        assert self.address and self.metrics, f"the server did not start (exit {self.proc.poll()})"
        self.process = psutil.Process(self.proc.pid)
        if "--replicas" in flags:  # measure R replicas, not the first one while the others warm up
            want, deadline = int(flags[flags.index("--replicas") + 1]), time.monotonic() + 300
            while self.metric("hyqut_qworker_replicas") < want:
                assert time.monotonic() < deadline, f"{want} replicas did not come up in 300 s"
                time.sleep(0.2)

    def cpu_s(self) -> float:
        """The server's CPU seconds: its threads' run time in nanoseconds (/proc/PID/task/*/schedstat),
        not the process's clock ticks (10 ms apart: a 16,384-token call's frontend work is ~5 of them).
        A thread that has ended no longer counts; the server's threads are pools that live as long as it."""
        total = 0
        for task in os.scandir(f"/proc/{self.proc.pid}/task"):
            try:
                with open(f"{task.path}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):  # the thread ended as we looked
                pass
        return total / 1e9

    def samples(self, name: str) -> list:
        """The samples of `name` on the server's /metrics page."""
        with urllib.request.urlopen(self.metrics, timeout=10) as page:
            text = page.read().decode()
        return [s for f in text_string_to_metric_families(text) for s in f.samples if s.name == name]

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` with these labels."""
        return sum(s.value for s in self.samples(name) if all(s.labels.get(k) == v for k, v in labels.items()))

    def by_replica(self, name: str) -> dict[str, float]:
        """A per-replica series (hyqut_qworker_replica_*), by replica name."""
        return {s.labels["replica"]: s.value for s in self.samples(name)}

    def evaluate_calls(self) -> float:
        return self.metric("hyqut_qworker_requests_total", rpc="Evaluate")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
