"""The distributed path on one machine: a real local Ray (one per session), the qworker service on
127.0.0.1 in front of a pool of replica processes, and trainers that use it. Results equal the
in-process simulator's; replicas die, scale and vanish while requests flow, and nothing is lost."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import ray
import torch
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from qworker import CircuitSpec, Gradient, get_backend
from qworker.client import RemoteBackend, RemoteError, admin_call
from qworker.protocol.convert import to_request, to_result
from qworker.protocol.evaluation import Evaluation
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.protocol.wire import qworker_pb2_grpc as pb_grpc
from qworker.server.autoscale import Policy
from qworker.server.service import ServerConfig, create_server

ROOT = Path(__file__).resolve().parents[1]
SPEC = CircuitSpec(10, 2)
FAST = ["--model", "tiny", "--quantum", "wq", "--context", "64", "--batch-size", "4", "--eval-batches", "1"]
FOUR_STEPS = ["--steps", "4", "--save-every", "4"]

pytestmark = pytest.mark.slow


def batch(n: int, seed: int = 0, dtype=torch.float32):
    """float64 where fd is compared: in float32 its rounding error (~1e-6 / δ per entry) depends on
    the batch size a simulator's GEMMs see, and so on how the batch was sharded."""
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(SPEC.n_params, generator=g, dtype=dtype) * 6.28
    angles = torch.rand(n, SPEC.n_angles, generator=g, dtype=dtype) * 6.28
    return theta, angles


@contextmanager
def serving(replicas: int, **cfg):
    """(server, port) of a started service with `replicas` replicas on the session's Ray."""
    server, port = create_server(ServerConfig(port=0, replicas=replicas, simulators=("local", "qulacs"), **cfg))
    try:
        server.start()
        server.wait_ready(120)
        yield server, port
    finally:
        server.stop(0)


def scrape(server) -> list:
    """The samples on the server's /metrics page."""
    return scrape_url(f"http://127.0.0.1:{server.metrics.port}/metrics")


def scrape_url(url: str) -> list:
    with urllib.request.urlopen(url, timeout=10) as page:
        return [s for f in text_string_to_metric_families(page.read().decode()) for s in f.samples]


def replica_metrics(server) -> dict[str, dict[str, float]]:
    """Ray replica name -> {metric: value} from the server's /metrics page (the server's own
    replica, which answers the smallest requests, left out)."""
    out: dict[str, dict[str, float]] = {}
    for sample in scrape(server):
        if sample.labels.get("replica", "server") != "server":
            out.setdefault(sample.labels["replica"], {"node": sample.labels["node"]})[sample.name] = sample.value
    return out


@pytest.fixture(scope="module")
def service(ray_address):
    """A service with two replicas, shared by the tests below that leave it as they found it."""
    with serving(2, metrics_port=0) as (server, port):
        yield server, f"grpc://127.0.0.1:{port}?simulator=local"


def test_sharded_results_equal_the_in_process_simulator_and_use_every_replica(service):
    server, address = service
    remote, local = get_backend(address), get_backend("local")
    theta, angles = batch(1000, dtype=torch.float64)
    before = replica_metrics(server)
    assert remote.info.replicas == 2
    torch.testing.assert_close(remote.expectations(SPEC, theta, angles), local.expectations(SPEC, theta, angles))
    grad_out = torch.randn(1000, SPEC.n_qubits, dtype=torch.float64)
    for method in ("adjoint", "fd"):
        got = remote.vjp(SPEC, theta, angles, grad_out, Gradient(method))
        want = local.vjp(SPEC, theta, angles, grad_out, Gradient(method))
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    after = replica_metrics(server)
    assert len(after) == 2 and all(r["node"] and r["hyqut_qworker_replica_up"] == 1 for r in after.values())
    for name, r in after.items():  # every replica got shards and spent time on them
        was = before.get(name, {})
        assert r["hyqut_qworker_replica_evaluations_total"] > was.get("hyqut_qworker_replica_evaluations_total", 0)
        assert r["hyqut_qworker_replica_busy_seconds_total"] > was.get("hyqut_qworker_replica_busy_seconds_total", 0)


def test_results_are_the_same_bits_with_1_2_and_3_replicas(ray_address):
    """The pool cuts a request into units by the request alone and sums in unit order: a rescale
    (or a restart) changes no bit of any answer."""
    theta, angles = batch(512, seed=9)
    grad_out = torch.randn(512, SPEC.n_qubits, generator=torch.Generator().manual_seed(9))
    requests = [
        to_request(Evaluation.of(SPEC, "local", theta, angles, "jacobians", Gradient("fd"), include_expectations=True)),
        to_request(
            Evaluation.of(
                SPEC, "local", theta, angles.repeat(20, 1), "vjp", Gradient("adjoint"), grad_out.repeat(20, 1)
            )
        ),
    ]
    answers = {}
    with (
        serving(1) as (server, port),
        grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 2**26)]) as channel,
    ):
        stub = pb_grpc.QWorkerStub(channel)
        for n in (1, 2, 3):
            server.call(server.pool.scale, n)
            deadline = time.monotonic() + 60
            while server.pool.replicas != n:
                assert time.monotonic() < deadline, f"never reached {n} replicas"
                time.sleep(0.1)
            answers[n] = [stub.Evaluate(r, timeout=120) for r in requests]
    for n in (2, 3):
        for a, b in zip(answers[1], answers[n]):
            for field in ("expectations", "jacobian_theta", "jacobian_angles", "vjp_theta", "vjp_angles"):
                assert getattr(a, field).data == getattr(b, field).data, (n, field)
    j = to_result(answers[1][0]).jacobians
    want = get_backend("local").jacobians(SPEC, theta, angles, Gradient("fd"))
    torch.testing.assert_close(j, want, atol=1e-4, rtol=1e-4)  # float32 fd: rounding over delta


def test_request_bytes_go_inside_ray_calls_not_through_the_object_store(service, ray_address):
    """Up to INLINE_BYTES a unit's bytes and its results ride in the Ray call itself (a put and a
    get fewer, ~1/3 of a frontend's CPU a layer-call); Ray's default would store each unit over 100 KiB."""
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    def stored_bytes() -> int:
        return get_memory_info_reply(get_state_from_address(ray_address)).store_stats.cumulative_created_bytes

    server, address = service
    theta, angles = batch(8192, seed=7)  # ~1 MB a request: 2 replicas, each unit over 100 KiB
    grad_out = torch.randn(8192, SPEC.n_qubits, generator=torch.Generator().manual_seed(7))
    remote, local = get_backend(address), get_backend("local")

    def served() -> list[float]:
        return [m["hyqut_qworker_replica_evaluations_total"] for m in replica_metrics(server).values()]

    before, calls = stored_bytes(), served()
    got = remote.start(SPEC, theta, angles, Gradient("adjoint")).vjp(grad_out)
    assert stored_bytes() - before < 100_000
    assert len(calls) == 2 and all(a > b for a, b in zip(served(), calls))  # both replicas got units
    want = local.start(SPEC, theta, angles, Gradient("adjoint")).vjp(grad_out)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_gradients_started_in_forward_equal_the_vjp_of_backward(service):
    remote = get_backend(service[1])
    theta, angles = batch(300, seed=1, dtype=torch.float64)
    grad_out = torch.randn(300, SPEC.n_qubits, dtype=torch.float64)
    pending = remote.start(SPEC, theta, angles, Gradient("shift"))
    torch.testing.assert_close(pending.expectations, get_backend("local").expectations(SPEC, theta, angles))
    want = get_backend("local").vjp(SPEC, theta, angles, grad_out, Gradient("adjoint"))
    torch.testing.assert_close(pending.vjp(grad_out), want, atol=1e-9, rtol=1e-9)


def recomputes() -> float:
    return REGISTRY.get_sample_value("hyqut_qworker_client_recomputes_total") or 0.0


def test_kept_jacobians_give_the_dense_bits_and_survive_their_replica(service):
    """fd through two replicas: the Jacobians kept on them give the VJP that the dense Jacobians
    contracted here give, bit for bit; with the replicas that keep them killed between forward and
    backward the VJP is recomputed from the inputs (counted) and is the same again."""
    server, address = service
    theta, angles = batch(2048, seed=6, dtype=torch.float64)  # 8 token blocks: units on both replicas
    grad_out = torch.randn(2048, SPEC.n_qubits, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    dense = get_backend(f"{address}&jacobians=dense").start(SPEC, theta, angles, Gradient("fd"))
    want = dense.vjp(grad_out)
    kept = get_backend(address)
    before = recomputes()
    got = kept.start(SPEC, theta, angles, Gradient("fd")).vjp(grad_out)
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and recomputes() == before
    server.faults.arm("kill-keeper")  # the replicas that keep the next Jacobians die as soon as they are kept
    again = kept.start(SPEC, theta, angles, Gradient("fd")).vjp(grad_out)
    assert all(torch.equal(a, b) for a, b in zip(again, want)) and recomputes() == before + 1
    deadline = time.monotonic() + 60
    while server.pool.replicas < 2:  # Ray restarts them; the module's service is as it was
        assert time.monotonic() < deadline, "the killed replicas never came back"
        time.sleep(0.2)


def replica_pids(members) -> list[int]:
    """Process ids of these pool members' actors (Ray's own `__ray_call__` runs a function in each)."""
    return ray.get([m.actor.__ray_call__.remote(lambda _self: os.getpid()) for m in members], timeout=30)


def test_a_replica_killed_mid_request_costs_a_retry_not_a_result(service):
    server, address = service
    theta, angles = batch(2048, seed=2, dtype=torch.float64)
    request = to_request(Evaluation.of(SPEC, "local", theta, angles, "jacobians", Gradient("fd")))
    members = [m for m in server.pool._members if m.state == "live"]
    pids = replica_pids(members)
    victim = {}

    def kill_the_busy_one():
        i = next(i for i, m in enumerate(members) if m.in_flight)
        victim.update(name=members[i].name, pid=pids[i])
        os.kill(pids[i], signal.SIGKILL)

    def deaths() -> dict[str, float]:
        return {name: r["hyqut_qworker_replica_deaths_total"] for name, r in replica_metrics(server).items()}

    before = deaths()  # the module's earlier tests have killed replicas too
    killer = threading.Timer(0.3, kill_the_busy_one)
    killer.start()
    target, big = address[len("grpc://") :].split("?")[0], [("grpc.max_receive_message_length", 2**26)]
    with grpc.insecure_channel(target, options=big) as channel:  # one request, its units on both replicas
        result = to_result(pb_grpc.QWorkerStub(channel).Evaluate(request, timeout=120))
    killer.join()
    after = deaths()
    assert {m.name: after[m.name] - before.get(m.name, 0.0) for m in members} == {
        m.name: float(m.name == victim["name"]) for m in members
    }
    want = get_backend("local").jacobians(SPEC, theta, angles, Gradient("fd"))
    torch.testing.assert_close(result.jacobians, want, atol=1e-10, rtol=1e-10)
    deadline = time.monotonic() + 60
    while server.pool.replicas < 2:  # Ray restarts the dead replica; the pool routes to it again
        assert time.monotonic() < deadline, "the killed replica never came back"
        time.sleep(0.2)
    assert victim["pid"] not in replica_pids([m for m in server.pool._members if m.state == "live"])


def test_replicas_the_cluster_cannot_place_are_reported_pending_with_the_reason(ray_address):
    """Scale past what the session's Ray holds (no autoscaler): Info names the replicas waiting and
    what each needs; scaling back down clears it."""
    with serving(1, max_replicas=64, replica_cpus=4) as (_, port), grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.QWorkerStub(ch)
        assert stub.Info(pb.InfoRequest(), timeout=10).pending_replicas == 0
        stub.Scale(pb.ScaleRequest(replicas=4), timeout=30)  # 16 CPUs asked of 8 (less what others hold)
        deadline = time.monotonic() + 60
        while not (info := stub.Info(pb.InfoRequest(), timeout=10)).pending_replicas:
            assert time.monotonic() < deadline, "no replica reported pending"
            time.sleep(0.5)
        assert info.pending_replicas >= 2 and "each needs 4 CPU" in info.pending_reason, info
        stub.Scale(pb.ScaleRequest(replicas=1), timeout=30)
        deadline = time.monotonic() + 60
        while stub.Info(pb.InfoRequest(), timeout=10).pending_replicas:
            assert time.monotonic() < deadline, "the pending replicas were not dropped"
            time.sleep(0.5)


def test_replicas_follow_the_load_up_and_down(ray_address):
    """--autoscale 1:2: two clients keeping one replica busy bring a second; idleness takes it away."""
    policy = Policy(1, 2, period_s=0.5, cooldown_s=2.0)
    with serving(1, autoscale=policy, metrics_port=0) as (server, port):
        remote = get_backend(f"grpc://127.0.0.1:{port}?simulator=local&deadline=120")
        theta, angles = batch(512, seed=4, dtype=torch.float64)
        want = get_backend("local").jacobians(SPEC, theta, angles, Gradient("fd"))
        stop, errors = threading.Event(), []

        def client():
            while not stop.is_set():
                got = remote.jacobians(SPEC, theta, angles, Gradient("fd"))
                errors.extend(g for g, w in zip(got, want) if not torch.allclose(g, w, atol=1e-10, rtol=1e-10))

        threads = [threading.Thread(target=client) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            deadline = time.monotonic() + 120
            while server.pool.replicas < 2:
                assert time.monotonic() < deadline, "the load never brought a second replica"
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join()
        deadline = time.monotonic() + 60
        while server.pool.target > 1:
            assert time.monotonic() < deadline, "idleness never took the second replica away"
            time.sleep(0.2)
        assert not errors

        def samples():
            return {(s.name, s.labels.get("direction")): s.value for s in scrape(server)}

        deadline = time.monotonic() + 30
        while (seen := samples())[("hyqut_qworker_busy_fraction", None)] >= 0.5 or seen[
            ("hyqut_qworker_replicas_target", None)
        ] > 1:  # idleness, measured; a scale-down seen under load may have been followed by an up
            assert time.monotonic() < deadline, f"the busy fraction stayed at {seen}"
            time.sleep(0.2)
        assert seen[("hyqut_qworker_autoscale_changes_total", "up")] >= 1
        assert seen[("hyqut_qworker_autoscale_changes_total", "down")] >= 1
        assert seen[("hyqut_qworker_replicas_target", None)] == 1


def test_scaling_while_requests_flow_fails_none(service):
    server, address = service
    remote = get_backend(address)
    theta, angles = batch(512, seed=3)
    want = get_backend("local").expectations(SPEC, theta, angles)
    errors, results, stop = [], [], threading.Event()

    def client():
        while not stop.is_set():
            try:
                results.append((remote.expectations(SPEC, theta, angles) - want).abs().max().item())
            except Exception as e:  # noqa: BLE001 - every failure is a test failure
                errors.append(e)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    cli = [sys.executable, "-m", "qworker", "scale", address.split("?")[0], "--replicas"]
    try:
        for n in (3, 1, 2):
            out = subprocess.run([*cli, str(n)], capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            assert json.loads(out.stdout)["target"] == n
            deadline = time.monotonic() + 60
            while server.pool.replicas != n:
                assert time.monotonic() < deadline, f"never reached {n} live replicas"
                time.sleep(0.1)
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert len(results) > 10 and max(results) < 1e-5
    info = subprocess.run(
        [sys.executable, "-m", "qworker", "info", address.split("?")[0]], capture_output=True, text=True
    )
    assert json.loads(info.stdout)["replicas"] == 2
    metrics = {s.name: s.value for s in scrape(server) if not s.labels}
    assert metrics["hyqut_qworker_replicas"] == 2 and metrics["hyqut_qworker_queue_depth"] == 0


def test_no_replica_is_a_clear_error_after_the_deadline(ray_address):
    with serving(0) as (_, port):
        remote = RemoteBackend(f"grpc://127.0.0.1:{port}?simulator=local", deadline_s=3)
        theta, angles = batch(64)  # more than the server answers itself
        start = time.monotonic()
        # the server's answer, or the client's own deadline when it fires first on a busy machine:
        # either names what went wrong
        with pytest.raises(RemoteError, match=r"no live qworker replica|\(deadline 3 s: raise it") as e:
            remote.expectations(SPEC, theta, angles)
        assert e.value.code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert time.monotonic() - start < 15


def test_a_queued_request_past_its_deadline_is_refused_in_time_and_the_pool_goes_on(ray_address):
    with serving(1) as (_, port):
        address = f"grpc://127.0.0.1:{port}?simulator=local"
        theta, angles = batch(4096, seed=4)  # fd: seconds of work for the only replica
        slow = RemoteBackend(address, deadline_s=300)
        busy = {}
        worker = threading.Thread(  # keeps the only replica busy for seconds
            target=lambda: busy.update(j=slow.jacobians(SPEC, theta, angles, Gradient("fd")))
        )
        worker.start()
        time.sleep(0.5)
        start = time.monotonic()
        with pytest.raises(RemoteError, match="DEADLINE_EXCEEDED: the evaluation did not finish") as e:  # the server's
            RemoteBackend(address, deadline_s=1.0).expectations(SPEC, theta, angles[:64])
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 3
        worker.join()
        want = get_backend("local").jacobians(SPEC, theta, angles, Gradient("fd"))
        torch.testing.assert_close(busy["j"], want, atol=1e-3, rtol=1e-3)  # fd in float32: rounding / δ


def test_a_running_request_past_its_deadline_frees_its_replica(ray_address):
    with serving(1) as (_, port):
        address = f"grpc://127.0.0.1:{port}?simulator=local"
        theta, angles = batch(4096, seed=5)  # fd: ~10 s of work for the only replica
        with pytest.raises(RemoteError, match="DEADLINE_EXCEEDED") as e:
            RemoteBackend(address, deadline_s=1.5).jacobians(SPEC, theta, angles, Gradient("fd"))
        assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        start = time.monotonic()  # the replica stopped that work: the next request runs at once
        got = RemoteBackend(address, deadline_s=60).expectations(SPEC, theta, angles[:64])
        assert time.monotonic() - start < 3
        torch.testing.assert_close(got, get_backend("local").expectations(SPEC, theta, angles[:64]))


def test_scale_is_bounded_and_what_ray_cannot_place_is_reported_pending(ray_address):
    import ray

    cpus = int(ray.cluster_resources()["CPU"])
    with serving(1) as (server, port):  # the bound: what the cluster's CPUs place, one each
        address = f"grpc://127.0.0.1:{port}"
        assert admin_call(address, "Info", pb.InfoRequest()).limits.max_replicas == cpus
        with pytest.raises(RemoteError, match=rf"FAILED_PRECONDITION: {cpus + 1} replicas do not fit: at most {cpus}"):
            admin_call(address, "Scale", pb.ScaleRequest(replicas=cpus + 1))
    with serving(1, max_replicas=cpus + 4) as (server, port):  # as if an autoscaler could add nodes
        address = f"grpc://127.0.0.1:{port}"
        admin_call(address, "Scale", pb.ScaleRequest(replicas=cpus + 2))
        deadline = time.monotonic() + 60
        while (info := admin_call(address, "Info", pb.InfoRequest())).pending_replicas < 2:
            assert time.monotonic() < deadline, info
            time.sleep(0.5)
        assert "each needs 1 CPU" in info.pending_reason and info.replicas + info.pending_replicas <= cpus + 2
        admin_call(address, "Scale", pb.ScaleRequest(replicas=1))
        deadline = time.monotonic() + 60
        while (info := admin_call(address, "Info", pb.InfoRequest())).pending_replicas or info.replicas != 1:
            assert time.monotonic() < deadline, info
            time.sleep(0.5)


def test_a_removed_replica_keeps_its_totals_in_the_metrics(ray_address):
    with serving(2, metrics_port=0) as (server, port):
        theta, angles = batch(1024, seed=12)
        get_backend(f"grpc://127.0.0.1:{port}?simulator=local").jacobians(SPEC, theta, angles, Gradient("fd"))
        before = replica_metrics(server)
        assert len(before) == 2 and all(r["hyqut_qworker_replica_evaluations_total"] > 0 for r in before.values())
        server.call(server.pool.scale, 1)
        deadline = time.monotonic() + 30
        while server.pool.replicas != 1 or len(server.pool._members) != 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        after = replica_metrics(server)
        assert after.keys() == before.keys()  # the removed one is still there
        gone = [name for name, r in after.items() if r["hyqut_qworker_replica_up"] == 0]
        assert len(gone) == 1
        assert (
            after[gone[0]]["hyqut_qworker_replica_evaluations_total"]
            == before[gone[0]]["hyqut_qworker_replica_evaluations_total"]
        )


def test_the_in_process_server_refuses_to_scale():
    server, port = create_server(ServerConfig(port=0))
    server.start()
    try:
        with pytest.raises(RemoteError, match="FAILED_PRECONDITION.*--replicas"):
            admin_call(f"grpc://127.0.0.1:{port}", "Scale", pb.ScaleRequest(replicas=2))
    finally:
        server.stop(0)


def test_python_m_qworker_serve_joins_the_ray_cluster_and_stops_on_sigterm(ray_address):
    cmd = [sys.executable, "-m", "qworker", "serve", "--port", "0", "--replicas", "1", "--simulators", "local"]
    env = {**os.environ, "RAY_ADDRESS": ray_address}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("qworker listening on"):
                break
        address = seen[-1].split()[-1]
        remote = RemoteBackend(f"{address}?simulator=local")  # waits (bounded) while the replica warms up
        theta, angles = batch(3)
        torch.testing.assert_close(
            remote.expectations(SPEC, theta, angles), get_backend("local").expectations(SPEC, theta, angles)
        )
        assert admin_call(address, "Info", pb.InfoRequest()).replicas == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        assert any("listening" in line for line in seen), "".join(seen)[-3000:]


# -- trainers on the service -------------------------------------------------------------------


@pytest.fixture(scope="module")
def env(cache_dir, ray_address):
    return {
        **os.environ,
        "DS_ACCELERATOR": "cpu",
        "HYQUT_CACHE": str(cache_dir),
        "PYTHONUNBUFFERED": "1",
        "RAY_ADDRESS": ray_address,
    }


def train(env, out, *flags) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "trainer.main", *FAST, "--out", str(out), *flags]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen) -> None:
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out[-4000:]


def wait_for_first_step(proc: subprocess.Popen, out: Path) -> Path:
    """Block until the run has logged its first step (mid-run from then on); its log file."""
    log, deadline = out / "log.jsonl", time.monotonic() + 300
    while not (log.exists() and log.read_text().count("\n") >= 1):
        assert proc.poll() is None and time.monotonic() < deadline, "the run never reached step 1"
        time.sleep(0.05)
    return log


def losses(out: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def weights(out: Path) -> dict:
    return torch.load(out / "model.pt", weights_only=True)["model"]


def assert_same_run(a: Path, b: Path) -> None:
    assert len(losses(a)) == len(losses(b)) > 0
    torch.testing.assert_close(losses(a), losses(b), atol=1e-4, rtol=1e-4)
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-4, rtol=1e-3, msg=k)


@pytest.fixture(scope="module")
def local_runs(env, tmp_path_factory):
    """The references: in-process runs with fd (the async-Jacobian path) and adjoint."""
    root = tmp_path_factory.mktemp("local")
    procs = {g: train(env, root / g, *FOUR_STEPS, "--grad", g) for g in ("fd", "adjoint")}
    for p in procs.values():
        finish(p)
    return {g: root / g for g in procs}


def test_qbackend_ray_trains_like_local(env, local_runs, tmp_path):
    out = tmp_path / "ray"
    finish(train(env, out, *FOUR_STEPS, "--grad", "fd", "--qbackend", "ray", "--q-replicas", "2"))
    assert_same_run(local_runs["fd"], out)


def test_replica_death_and_scaling_during_training_change_nothing(env, local_runs, tmp_path):
    with serving(2) as (server, port):
        out = tmp_path / "grpc"
        proc = train(env, out, *FOUR_STEPS, "--grad", "fd", "--qbackend", f"grpc://127.0.0.1:{port}?simulator=local")
        wait_for_first_step(proc, out)
        os.kill(replica_pids([m for m in server.pool._members if m.state == "live"])[0], signal.SIGKILL)
        assert proc.poll() is None, "the run ended before the fault"
        server.call(server.pool.scale, 3)
        time.sleep(1.0)
        server.call(server.pool.scale, 1)
        finish(proc)
        assert_same_run(local_runs["fd"], out)


def test_service_restarted_mid_run_the_trainer_waits_and_goes_on(env, local_runs, tmp_path):
    port = _free_port()
    cmd = [sys.executable, "-m", "qworker", "serve", "--in-process", "--port", str(port), "--simulators", "local"]
    service = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "listening" in service.stdout.readline()
        out = tmp_path / "restart"
        proc = train(
            env, out, *FOUR_STEPS, "--grad", "adjoint", "--qbackend", f"grpc://127.0.0.1:{port}?simulator=local"
        )
        log = wait_for_first_step(proc, out)
        service.kill()
        service.wait()
        assert proc.poll() is None, "the run ended before the fault"
        time.sleep(2.0)  # the trainer is now calling a dead address
        service = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert "listening" in service.stdout.readline()
        finish(proc)
        assert_same_run(local_runs["adjoint"], out)
        assert max(json.loads(line)["seconds"] for line in log.read_text().splitlines()) > 2.0  # it waited
    finally:
        service.kill()


def test_a_grpc_qbackend_with_nothing_there_is_a_one_line_error(env, tmp_path):
    proc = train(env, tmp_path / "none", "--steps", "1", "--qbackend", f"grpc://127.0.0.1:{_free_port()}")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "no qworker answered" in out, out[-2000:]
    assert not (tmp_path / "none" / "model.pt").exists()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("flags", [["--frontends-per-node", "2"], ["--per-node", "--frontends-per-node", "0"]])
def test_frontends_per_node_is_refused_by_name_where_it_means_nothing(flags):
    out = subprocess.run([sys.executable, "-m", "qworker", "serve", *flags], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "--frontends-per-node" in out.stderr and "--per-node" in out.stderr, out.stderr


def test_several_frontends_a_node_each_serve_replicas_of_their_own(ray_address):
    """serve --per-node --frontends-per-node 2 on this one-node Ray: two frontends (processes) on
    the node, each with a pool of its own replica; a client over both spreads its calls and gets
    the in-process answers; stopping leaves no frontend behind."""
    from qworker.server.frontends import NAMESPACE, Frontends

    lines: list[str] = []
    cfg = ServerConfig(port=0, metrics_port=0, replicas=1, simulators=("local",))
    frontends, stop = Frontends(cfg, per_node=2, out=lambda line, **_: lines.append(line)), threading.Event()
    runner = threading.Thread(target=frontends.run, args=(stop,))
    runner.start()
    try:
        deadline = time.monotonic() + 180
        while len(frontends.addresses) < 2:
            assert time.monotonic() < deadline and runner.is_alive(), "no two frontends:\n" + "\n".join(lines)
            time.sleep(0.5)
        addresses = frontends.addresses
        metrics = [m.group(1) for line in lines if (m := re.search(r"grpc://\S+, metrics (\S+),", line))]
        assert len(set(addresses)) == 2 and len(metrics) == 2, lines
        pids = [int(m.group(1)) for line in lines if (m := re.search(r"pid (\d+)$", line))]
        assert len(set(pids)) == 2  # two processes
        for address in addresses:
            info = admin_call(f"grpc://{address}", "Info", pb.InfoRequest())
            assert info.replicas == 1
        remote, local = get_backend(f"grpc://{','.join(addresses)}?simulator=local"), get_backend("local")
        theta, angles = batch(256, seed=8, dtype=torch.float64)
        grad_out = torch.randn(256, SPEC.n_qubits, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
        want = local.vjp(SPEC, theta, angles, grad_out, Gradient("fd"))
        for _ in range(4):
            got = remote.start(SPEC, theta, angles, Gradient("fd")).vjp(grad_out)
            for a, b in zip(got, want):
                torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        calls = [sum(s.value for s in scrape_url(url) if s.name == "hyqut_qworker_requests_total"
                     and s.labels.get("rpc") == "Evaluate") for url in metrics]  # fmt: skip
        assert min(calls) >= 2, calls  # both frontends served the client's calls
    finally:
        stop.set()
        runner.join(120)
    assert not runner.is_alive()
    left = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == NAMESPACE]
    assert left == [], left
