"""A qworker cluster that really comes up on this machine: Ray's fake multi-node provider with
cluster/local.yaml, whose autoscaler starts a simulated node (a raylet here) for each replica that
does not fit. The service scales past what the head offers, nodes come, a trainer takes fd steps
through them, the pool shrinks and the idle nodes go; then load alone drives the same with
--autoscale. Tear-down leaves no process of the cluster behind."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from qworker import CircuitSpec, Gradient, get_backend

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))
SPEC = CircuitSpec(10, 2)


def processes(tag: str) -> list[psutil.Process]:
    """The cluster's processes: those whose command line names its temp dir, and their children
    (replica workers rename themselves `ray::ReplicaActor`)."""
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        if tag in " ".join(p.info["cmdline"] or []):
            found[p.pid] = p
            try:
                found.update((c.pid, c) for c in p.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
    return list(found.values())


def nodes(tag: str) -> int:
    """Ray nodes up: one raylet each (the head's and the simulated ones)."""
    count = 0
    for p in processes(tag):
        try:
            count += p.name() == "raylet"
        except psutil.NoSuchProcess:
            pass
    return count


def wait(what: str, ok, seconds: float):
    """Polls `ok` until it returns something true, and returns that."""
    deadline = time.monotonic() + seconds
    while not (value := ok()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
        time.sleep(0.5)
    return value


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The head of cluster/local.yaml on Ray's default port; yields the env that reaches it."""
    temp = tmp_path_factory.mktemp("ray")  # every process of this cluster names it: found and killed by it
    tag = str(temp)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # the fake provider's switch; the autoscaler looking every second (Ray's own tests do); Ray's
    # token authentication, on by default for `ray start`, for every process that connects
    env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1", RAY_AUTH_MODE="token")
    env.update(RAY_USAGE_STATS_ENABLED="0")
    start = [RAY, "start", "--head", "--num-cpus", "1", "--temp-dir", tag, "--disable-usage-stats"]
    start += ["--autoscaling-config", str(ROOT / "cluster" / "local.yaml")]
    out = subprocess.run(start, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    env["RAY_ADDRESS"] = "127.0.0.1:6379"
    try:
        yield env, tag
    finally:
        for p in processes(tag):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(processes(tag), timeout=30)
        assert not [p for p in processes(tag) if p.is_running()], "the cluster left processes behind"


class Service:
    """`python -m qworker serve` on the cluster, its replicas on `qworker` nodes only."""

    def __init__(self, env: dict, *flags: str):
        cmd = [sys.executable, "-m", "qworker", "serve", "--port", "0", "--metrics-port", "0", "--simulators", "local"]
        cmd += ["--ray-address", env["RAY_ADDRESS"], "--replica-resource", "qworker", "--replica-cpus", "1", *flags]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log: list[str] = []
        for line in self.proc.stdout:
            self.log.append(line)
            if line.startswith("qworker listening on"):
                self.address = line.split()[-1]
                break
        else:
            raise AssertionError("the service did not start:\n" + "".join(self.log[-30:]))
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()

    def info(self) -> dict:
        out = subprocess.run(
            [sys.executable, "-m", "qworker", "info", self.address], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def scale(self, n: int) -> None:
        cmd = [sys.executable, "-m", "qworker", "scale", self.address, "--replicas", str(n)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def test_scaling_past_the_head_adds_nodes_and_a_trainer_runs_through_them(cluster, tmp_path, cache_dir):
    env, tag = cluster
    assert nodes(tag) == 1  # the head alone: it offers no `qworker`
    service = Service(env, "--replicas", "1", "--max-replicas", "3")
    try:
        wait("the first replica (and its node)", lambda: service.info().get("replicas") == 1, 180)
        service.scale(3)
        # Info says why they are not there yet while the autoscaler brings their nodes (one snapshot:
        # by the next call the nodes may be up and nothing pending)
        info = wait("replicas reported pending", lambda: (i := service.info()).get("pendingReplicas", 0) >= 1 and i, 60)
        assert "qworker" in info.get("pendingReason", ""), info
        wait("three replicas on three simulated nodes", lambda: service.info().get("replicas") == 3, 240)
        assert nodes(tag) == 4
        out = tmp_path / "run"
        train = [sys.executable, "-m", "trainer.main", "--model", "tiny", "--quantum", "wq", "--grad", "fd"]
        train += ["--qbackend", f"{service.address}?simulator=local", "--steps", "2", "--context", "32"]
        train += ["--batch-size", "2", "--eval-batches", "1", "--eval-every", "2", "--out", str(out)]
        run = subprocess.run(train, env={**env, "HYQUT_CACHE": str(cache_dir)}, capture_output=True, text=True)
        assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
        assert json.loads((out / "summary.json").read_text())["steps"] == 2
        service.scale(1)
        wait("the idle nodes to go", lambda: nodes(tag) == 2, 120)
        assert service.info()["replicas"] == 1
    finally:
        service.stop()


def test_load_brings_replicas_and_nodes_and_idleness_takes_them_away(cluster):
    env, tag = cluster
    service = Service(env, "--replicas", "1", "--autoscale", "1:3", "--autoscale-cooldown", "3")
    try:
        wait("the first replica", lambda: service.info().get("replicas") == 1, 180)
        remote = get_backend(f"{service.address}?simulator=local&deadline=120")
        g = torch.Generator().manual_seed(0)
        theta, angles = torch.rand(SPEC.n_params, generator=g), torch.rand(512, SPEC.n_angles, generator=g)
        stop = threading.Event()

        def load():
            while not stop.is_set():
                remote.jacobians(SPEC, theta, angles, Gradient("fd"))

        threads = [threading.Thread(target=load) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait("load to bring a second replica and its node", lambda: service.info().get("replicas", 0) >= 2, 240)
            assert nodes(tag) >= 3
        finally:
            stop.set()
            for t in threads:
                t.join()
        wait("idleness to bring the pool back to one replica", lambda: service.info()["replicas"] == 1, 120)
        wait("the idle nodes to go", lambda: nodes(tag) == 2, 120)
        log = "".join(service.log)
        assert "autoscale up" in log and "autoscale down" in log, log[-3000:]
    finally:
        service.stop()
