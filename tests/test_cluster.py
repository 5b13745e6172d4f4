"""A qworker cluster that really comes up on this machine: Ray's fake multi-node provider with
cluster/local.yaml, whose autoscaler starts a simulated node (a raylet here) for each replica that
does not fit. The service scales past what the head offers, nodes come, a trainer takes fd steps
through them, the pool shrinks and the idle nodes go; then load alone drives the same with
--autoscale. Tear-down leaves no process of the cluster behind."""

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

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


def info(address: str) -> dict:
    """`python -m qworker info` of a server, as a dict."""
    out = subprocess.run([sys.executable, "-m", "qworker", "info", address], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


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
        return info(self.address)

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
        # while the autoscaler brings their nodes Info says why they are not there yet, if they take
        # longer than PENDING_S (the fake provider's nodes often come sooner; tests/test_ray.py checks
        # the report on a cluster that cannot grow)
        reported = lambda i: i if i.get("pendingReplicas") or i.get("replicas") == 3 else None  # noqa: E731
        info = wait("pending or placed", lambda: reported(service.info()), 60)
        assert info["replicas"] == 3 or "qworker" in info.get("pendingReason", ""), info
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


# -- a frontend on every node ---------------------------------------------------------------------

TRAIN = ["--model", "tiny", "--quantum", "wq", "--grad", "fd", "--steps", "3", "--context", "32", "--batch-size", "2"]
TRAIN += ["--eval-batches", "1", "--eval-every", "3", "--seed", "0"]
FRONTEND_LINE = re.compile(r"qworker frontend on node (\S+) \(\S+\): grpc://(\S+), metrics (\S+), pid (\d+)")

# Run inside the cluster as a Ray driver (the test process may hold a Ray of its own): arms a test
# fault (qworker/server/faults.py) in the frontend at argv[1], through its actor; Ray's token only.
ARM = """
import sys, ray
from ray.util import list_named_actors
from qworker.server.frontends import NAMESPACE
ray.init(log_to_driver=False, logging_level="ERROR")
for found in list_named_actors(all_namespaces=True):
    if found["namespace"] == NAMESPACE:
        actor = ray.get_actor(found["name"], namespace=NAMESPACE)
        if ray.get(actor.ready.remote(120), timeout=180)["address"] == sys.argv[1]:
            ray.get(actor.inject_fault.remote(sys.argv[2]), timeout=60)
            break
else:
    sys.exit(f"no frontend at {sys.argv[1]}")
"""


def free_ports(n: int) -> int:
    """A port p with p .. p + n - 1 free on 127.0.0.1 (nodes on one address get consecutive ports)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + n):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError("no free ports")


class PerNode:
    """`python -m qworker serve --per-node` on the head: a frontend on each `qworker` node."""

    def __init__(self, env: dict, *flags: str):
        cmd = [sys.executable, "-m", "qworker", "serve", "--per-node", "--simulators", "local", "--replica-cpus", "1"]
        cmd += ["--ray-address", env["RAY_ADDRESS"], "--replica-resource", "qworker", *flags]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log: list[str] = []
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()

    def frontends(self) -> dict[str, dict]:
        """address -> its node, metrics page and pid, as last reported."""
        assert self.proc.poll() is None, "the head's command ended:\n" + "".join(self.log[-30:])
        found = {}
        for line in list(self.log):
            if m := FRONTEND_LINE.search(line):
                found[m.group(2)] = {"node": m.group(1), "metrics": m.group(3), "pid": int(m.group(4))}
        return found

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def metric(metrics: str, name: str, **labels) -> float:
    """The sum of a metric's samples with these labels, on a frontend's /metrics page."""
    with urllib.request.urlopen(metrics, timeout=10) as page:
        families = text_string_to_metric_families(page.read().decode())
        return sum(
            s.value for f in families for s in f.samples if s.name == name and labels.items() <= s.labels.items()
        )


def train(env: dict, out: Path, address: str) -> list[dict]:
    """A few fd steps of the tiny model through the frontends; its log.jsonl."""
    cmd = [sys.executable, "-m", "trainer.main", *TRAIN, "--qbackend", address, "--out", str(out)]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def arm(env: dict, frontend: str, fault: str) -> None:
    out = subprocess.run([sys.executable, "-c", ARM, frontend, fault], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]


def test_a_frontend_per_node_spreads_a_trainer_whose_losses_no_death_changes(cluster, tmp_path, cache_dir):
    """Two simulated nodes, each with a frontend and a replica; a trainer spread over both. Then
    the same run twice more: once one node's frontend dies at a backward call that needs it (its
    kept Jacobians die with it), once each node's replica dies holding a step's Jacobians between
    that step's forward and backward. Every run's losses are the undisturbed run's, exactly: every
    circuit result is the same bits whichever frontend or replica computes it, recomputed or not
    (the request alone decides how it is cut and summed; replicas run the same code with one thread
    each), and the trainer is deterministic given those results."""
    env, tag = cluster
    env = {**env, "HYQUT_CACHE": str(cache_dir)}
    wait("the head alone (an earlier test's nodes gone)", lambda: nodes(tag) == 1, 120)
    port, metrics_port = free_ports(2), free_ports(2)
    head = PerNode(env, "--nodes", "2", "--replicas", "1", "--port", str(port), "--metrics-port", str(metrics_port))
    try:
        fronts = wait("a frontend on each of two nodes", lambda: len(f := head.frontends()) == 2 and f, 300)
        assert sorted(fronts) == [f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"]  # one address: ports differ
        assert len({f["node"] for f in fronts.values()}) == 2 and nodes(tag) == 3  # the head and two nodes
        for address in fronts:  # each serves the contract itself, for its own node's replica
            said = info(f"grpc://{address}")
            assert (said["frontend"], sorted(said["frontends"]), said["replicas"]) == (address, sorted(fronts), 1)
            assert said["limits"]["maxReplicas"] == 1  # what its node holds
        address = f"grpc://{','.join(sorted(fronts))}?simulator=local"

        evaluate = lambda f: metric(f["metrics"], "hyqut_qworker_requests_total", rpc="Evaluate")  # noqa: E731
        before = {a: evaluate(f) for a, f in fronts.items()}
        undisturbed = train(env, tmp_path / "undisturbed", address)
        calls = [evaluate(f) - before[a] for a, f in fronts.items()]
        assert min(calls) >= 0.8 * max(calls) and min(calls) > 0, f"Evaluate calls per frontend: {calls}"
        losses = [(r["loss"], r.get("val_loss")) for r in undisturbed]

        # a frontend dies mid-step: at the first backward call that reaches it
        victim = sorted(fronts)[0]
        arm(env, victim, "exit-on-handle")
        frontend_died = train(env, tmp_path / "frontend-died", address)
        wait("the head to see it die", lambda: any("died; Ray restarts it" in line for line in head.log), 30)
        assert [(r["loss"], r.get("val_loss")) for r in frontend_died] == losses

        # the replica holding a step's Jacobians dies between its forward and its backward, on each node
        restarted = lambda: head.frontends()[victim]["pid"] != fronts[victim]["pid"]  # noqa: E731
        wait("the frontend back, restarted by Ray", restarted, 180)
        fronts = head.frontends()
        gone = lambda f: metric(f["metrics"], "hyqut_qworker_requests_total", rpc="Evaluate", code="NOT_FOUND")  # noqa: E731
        not_found = {a: gone(f) for a, f in fronts.items()}
        for a in fronts:
            arm(env, a, "kill-keeper")
        replica_died = train(env, tmp_path / "replica-died", address)
        for a, f in fronts.items():  # on each, a handle whose replica died: NOT_FOUND, and the VJP recomputed
            assert gone(f) > not_found[a], a
        assert [(r["loss"], r.get("val_loss")) for r in replica_died] == losses
    finally:
        head.stop()
    wait("the nodes asked for to go", lambda: nodes(tag) == 1, 120)
