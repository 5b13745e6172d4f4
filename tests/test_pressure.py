"""The service under pressure: requests without deadlines, cancellation, bounded admission with a
retry hint the client follows, health and control that answer under load, bounded memory, request
ids, and no INTERNAL for any well-formed request (a structure-aware fuzz through a real server)."""

import math
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import psutil
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from qworker import CircuitSpec, Gradient, get_backend
from qworker.client import RemoteBackend, RemoteError
from qworker.client.connection import Connection
from qworker.protocol.convert import encode_tensor, to_request, to_result
from qworker.protocol.evaluation import Evaluation
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.protocol.wire import qworker_pb2_grpc as pb_grpc
from qworker.server.service import ServerConfig, create_server

ROOT = Path(__file__).resolve().parents[1]
SPEC = CircuitSpec(10, 2)


def slow(n=2048, seed=0) -> pb.EvaluateRequest:
    """An fd Jacobian of n tokens: about a second of one core's time per 1,000 tokens."""
    g = torch.Generator().manual_seed(seed)
    theta, angles = torch.rand(SPEC.n_params, generator=g) * 6, torch.rand(n, SPEC.n_angles, generator=g) * 6
    return to_request(Evaluation.of(SPEC, "local", theta, angles, "jacobians", Gradient("fd")))


def quick(n=64) -> pb.EvaluateRequest:
    theta, angles = torch.rand(SPEC.n_params), torch.rand(n, SPEC.n_angles)
    return to_request(Evaluation.of(SPEC, "local", theta, angles))


def retries(code: str) -> float:
    """The client's retries by status so far (RETRIES, read through the default registry's public API)."""
    return REGISTRY.get_sample_value("hyqut_qworker_client_retries_total", {"code": code}) or 0.0


def started(**cfg):
    server, port = create_server(ServerConfig(port=0, simulators=("local", "qulacs", "auto", "shots"), **cfg))
    server.start()
    server.wait_ready(60)
    return server, port


@pytest.fixture
def channel_to():
    channels = []

    def open_(port):
        ch = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 2**28)])
        channels.append(ch)
        return ch

    yield open_
    for ch in channels:
        ch.close()


def test_a_request_without_a_deadline_runs_under_the_servers_default(channel_to):
    server, port = started(default_deadline_s=1.0)
    try:
        stub = pb_grpc.QWorkerStub(channel_to(port))
        assert list(stub.Evaluate(quick()).expectations.shape) == [64, 10]  # no client deadline: fine
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.Evaluate(slow(8192))  # ~10 s of work, no client deadline: the server's 1 s default stops it
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - start < 4
    finally:
        server.stop(0)


def test_a_cancelled_request_stops_and_the_next_runs_at_once(channel_to):
    server, port = started(workers=1)
    try:
        stub = pb_grpc.QWorkerStub(channel_to(port))
        call = stub.Evaluate.future(slow(8192), timeout=120)  # ~10 s on the only worker
        time.sleep(0.7)
        assert call.cancel()
        start = time.monotonic()
        stub.Evaluate(quick(), timeout=30)
        assert time.monotonic() - start < 2.0, "the cancelled evaluation still held the worker"
    finally:
        server.stop(0)


def test_health_info_and_scale_answer_within_100ms_under_load(channel_to):
    server, port = started(workers=2, max_inflight=2, max_queue=64)
    try:
        ch = channel_to(port)
        stub, health = pb_grpc.QWorkerStub(ch), health_pb2_grpc.HealthStub(ch)
        calls = [stub.Evaluate.future(slow(1024, seed=i), timeout=300) for i in range(16)]  # 8x the workers
        time.sleep(1.0)
        finished_before = sum(c.done() for c in calls)  # a fast machine may finish a few already
        depth = stub.Info(pb.InfoRequest(), timeout=5).queue_depth
        assert 16 - sum(c.done() for c in calls) <= depth <= 16 - finished_before  # every other one admitted
        for _ in range(5):
            start = time.monotonic()
            assert health.Check(health_pb2.HealthCheckRequest(), timeout=0.1).status == 1
            info = stub.Info(pb.InfoRequest(), timeout=0.1)
            with pytest.raises(grpc.RpcError) as e:
                stub.Scale(pb.ScaleRequest(replicas=2), timeout=0.1)
            assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert time.monotonic() - start < 0.3 and info.queue_depth > 0
        for c in calls:
            c.cancel()
    finally:
        server.stop(0)


def test_a_full_server_refuses_at_once_with_a_retry_hint_that_the_client_follows(channel_to):
    server, port = started(workers=1, max_inflight=1, max_queue=1)
    try:
        stub = pb_grpc.QWorkerStub(channel_to(port))
        running = [stub.Evaluate.future(slow(2048, seed=i), timeout=120) for i in range(2)]  # one runs, one waits
        time.sleep(0.5)
        start = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            stub.Evaluate(quick(), timeout=30, metadata=(("x-request-id", "full-1"),))
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and time.monotonic() - start < 1.0
        assert "max_inflight=1, max_queue=1" in e.value.details() and e.value.details().endswith("[request full-1]")
        hint = dict(e.value.trailing_metadata())["retry-after-ms"]
        assert int(hint) >= 50
        before = retries("RESOURCE_EXHAUSTED")
        z = RemoteBackend(f"grpc://127.0.0.1:{port}?simulator=local", deadline_s=120).expectations(
            SPEC, torch.zeros(40), torch.zeros(4, 20)
        )
        assert z.shape == (4, 10) and retries("RESOURCE_EXHAUSTED") >= before + 1
        for c in running:
            assert list(c.result().jacobian_theta.shape) == [2048, 10, 40]
    finally:
        server.stop(0)


class GoingAway(pb_grpc.QWorkerServicer):
    """In front of a real server: the first `n` Evaluate calls end CANCELLED, as a call does whose
    stream reached a server shutting down; the rest are passed on."""

    def __init__(self, port: int, n: int):
        self.upstream, self.left = pb_grpc.QWorkerStub(grpc.insecure_channel(f"127.0.0.1:{port}")), n

    def Evaluate(self, request, context):
        if self.left > 0:
            self.left -= 1
            context.abort(grpc.StatusCode.CANCELLED, "Received RST_STREAM with error code 8")
        return self.upstream.Evaluate(request, timeout=60)

    def Info(self, request, context):
        return self.upstream.Info(request, timeout=60)


def test_a_call_the_server_side_cancelled_is_retried_and_a_pinned_one_is_not():
    server, port = started()
    front = grpc.server(ThreadPoolExecutor(2))
    pb_grpc.add_QWorkerServicer_to_server(servicer := GoingAway(port, 2), front)
    front_port = front.add_insecure_port("127.0.0.1:0")
    front.start()
    try:
        theta, angles = torch.rand(40, dtype=torch.float64), torch.rand(4, 20, dtype=torch.float64)
        before = retries("CANCELLED")
        z = RemoteBackend(f"grpc://127.0.0.1:{front_port}?simulator=local").expectations(SPEC, theta, angles)
        torch.testing.assert_close(z, get_backend("local").expectations(SPEC, theta, angles))
        assert retries("CANCELLED") == before + 2 and servicer.left == 0
        servicer.left = 1
        pinned = Connection(f"127.0.0.1:{front_port}", pinned=True)  # a handle's frontend: not waited for
        with pytest.raises(RemoteError) as e:
            pinned.call("Evaluate", to_request(Evaluation.of(SPEC, "local", theta, angles)))
        assert e.value.code == grpc.StatusCode.CANCELLED and retries("CANCELLED") == before + 2
    finally:
        front.stop(0)
        server.stop(0)


def test_memory_stays_bounded_under_200_concurrent_maximum_size_requests(tmp_path):
    """A server (its own process, its own Ray, one replica) allowing 4 MiB messages gets 200
    requests of 4 MiB at once: it admits 2 + 8, refuses the rest at once, and it and its replica
    give the memory back."""
    cmd = [sys.executable, "-m", "qworker", "serve", "--port", "0", "--max-message-mb", "4", "--replicas", "1"]
    cmd += ["--replica-cpus", "1", "--max-inflight", "2", "--max-queue", "8", "--simulators", "local"]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        address = next(x for x in proc.stdout if x.startswith("qworker listening")).split()[-1]
        server = psutil.Process(proc.pid)

        def rss() -> tuple[float, float]:
            """Private MB (USS: what the process alone holds; Ray's shared object store, which holds
            request arguments within its own fixed size, is not counted) of the server and of its
            replica (a Ray worker process under the server's Ray)."""
            replicas = [p for p in server.children(recursive=True) if "ReplicaActor" in " ".join(p.cmdline())]
            uss = lambda p: p.memory_full_info().uss / 2**20  # noqa: E731
            return uss(server), sum(uss(p) for p in replicas)

        theta, angles = torch.zeros(40), torch.rand(50_000, 20)  # 4.0 MB of angles
        request = to_request(Evaluation.of(SPEC, "local", theta, angles))
        with grpc.insecure_channel(address[len("grpc://") :]) as ch:
            stub = pb_grpc.QWorkerStub(ch)
            stub.Evaluate(request, timeout=180)  # warm: the replica has started and served one
            with ThreadPoolExecutor(10) as pool:  # and a few at once: its threads and their buffers
                list(pool.map(lambda _: _code(stub, request), range(10)))  # exist before the baseline
            baseline, peak, codes = rss(), (0.0, 0.0), []
            with ThreadPoolExecutor(200) as pool:
                futures = [pool.submit(_code, stub, request) for _ in range(200)]
                while not all(f.done() for f in futures):
                    peak = tuple(max(a, b) for a, b in zip(peak, rss()))
                    time.sleep(0.02)
                codes = [f.result() for f in futures]
            deadline, after = time.monotonic() + 15, rss()  # the server trims once it has gone quiet
            while after[0] - baseline[0] > 100 and time.monotonic() < deadline:
                time.sleep(0.5)
                after = rss()
        for i, who in enumerate(("server", "replica")):
            print(f"{who} USS: {baseline[i]:.0f} MB before, {peak[i]:.0f} MB at most, {after[i]:.0f} MB after")
        assert baseline[1] > 100, "the replica's process was not found"
        assert codes.count("OK") >= 10 and codes.count("RESOURCE_EXHAUSTED") >= 100, codes
        assert set(codes) <= {"OK", "RESOURCE_EXHAUSTED"}
        # gRPC has received all 200 messages (800 MB) before the handler can refuse one: at most
        # two copies of each (gRPC's buffer and the handler's bytes), parsed only for the 10 admitted
        assert peak[0] - baseline[0] < 2 * 200 * 4, (baseline, peak)
        assert peak[1] - baseline[1] < 300, (baseline, peak)  # the replica sees 4096-token units, one at a time
        assert after[0] - baseline[0] < 150 and after[1] - baseline[1] < 150, (baseline, after)
    finally:
        proc.terminate()
        proc.wait(30)


def _code(stub, request) -> str:
    try:
        stub.Evaluate(request, timeout=120)
        return "OK"
    except grpc.RpcError as e:
        return e.code().name


def test_request_ids_reach_the_clients_errors():
    server, port = started()
    try:
        remote = RemoteBackend(f"grpc://127.0.0.1:{port}?simulator=local")
        with pytest.raises(ValueError, match=r"non-finite .*\[request [0-9a-f]{16}\]"):
            remote.expectations(SPEC, torch.zeros(40), torch.full((3, 20), math.nan))
    finally:
        server.stop(0)


# -- no INTERNAL for a well-formed request ------------------------------------------------------

dtypes = st.sampled_from([torch.float32, torch.float64])


@st.composite
def valid_requests(draw) -> pb.EvaluateRequest:
    """Requests the contract accepts, from every corner: any backend served, every method, per-token
    theta, N = 0, n_layers = 0, mixed dtypes, column ranges, extreme but finite settings."""
    n_q, n_l, n = draw(st.integers(1, 5)), draw(st.integers(0, 3)), draw(st.integers(0, 7))
    spec = CircuitSpec(n_q, n_l, draw(st.sampled_from(["ring", "chain"])))
    backend = draw(st.sampled_from(["local", "qulacs", "auto", "shots"]))
    methods = ["shift", "fd", "spsa"] + ([] if backend == "shots" else ["adjoint"])
    want = draw(st.sampled_from(["expectations", "jacobians", "vjp"]))
    grad = None
    if want != "expectations":
        method = draw(st.sampled_from(methods))
        delta = draw(st.sampled_from([1e-8, 1e-5, 0.5, math.pi]))
        grad = Gradient(method, delta=delta, samples=draw(st.integers(1, 40)), seed=draw(st.integers(0, 2**63)))
    per_token = draw(st.booleans())
    theta_dtype, angles_dtype = draw(dtypes), draw(dtypes)
    big = draw(st.sampled_from([1.0, 1e3, 1e6]))  # angles far outside (-π, π): still finite
    theta = (torch.rand((n, spec.n_params) if per_token else (spec.n_params,)) * big).to(theta_dtype)
    angles = (torch.rand(n, spec.n_angles) * big).to(angles_dtype)
    grad_out = torch.randn(n, n_q).to(angles_dtype) if want == "vjp" else None
    options = {"shots": draw(st.sampled_from([1, 100, 2**20])), "seed": 7} if backend == "shots" else {}
    ev = Evaluation.of(spec, backend, theta, angles, want, grad, grad_out, draw(st.booleans()), options)
    req = to_request(ev)
    columns = spec.n_params + spec.n_angles
    if want == "jacobians" and grad.method in ("shift", "fd") and draw(st.booleans()):
        first = draw(st.integers(0, columns - 1))
        req.first_component, req.n_components = first, draw(st.integers(1, columns - first))
    return req


@pytest.fixture(scope="module")
def fuzz_stub():
    server, port = started(max_qubits=5, max_request_seconds=10)  # what would take longer is refused: the work limit
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        yield pb_grpc.QWorkerStub(ch)
    server.stop(0)


@settings(
    max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(valid_requests())
def test_no_well_formed_request_is_answered_internal(fuzz_stub, req):
    try:
        resp = fuzz_stub.Evaluate(req, timeout=60)
    except grpc.RpcError as e:
        assert e.code() not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (e.code(), e.details(), req)
        assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), e.details()
        return
    result = to_result(resp)
    n = req.angles.shape[0]
    for t in [result.expectations, *(result.jacobians or ()), *(result.vjp or ())]:
        assert t is None or (torch.isfinite(t).all() and (t.shape[0] == n or t.dim() == 1))


def test_extreme_inputs_are_answered_and_a_step_too_small_is_refused_by_name(channel_to):
    server, port = started()
    try:
        stub = pb_grpc.QWorkerStub(channel_to(port))
        req = slow(4)
        req.angles.CopyFrom(encode_tensor(torch.full((4, 20), 3e38)))  # the largest float32 angles: finite
        assert torch.isfinite(to_result(stub.Evaluate(req, timeout=30)).jacobians[1]).all()
        req.gradient.delta = 1e-9  # below the smallest step: refused at the door, naming the field
        with pytest.raises(grpc.RpcError) as e:
            stub.Evaluate(req, timeout=30)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "delta" in e.value.details()
    finally:
        server.stop(0)


def test_a_replica_refuses_results_that_are_not_finite(monkeypatch):
    """The last guard: whatever a backend computes, NaN or inf never goes back as an answer."""
    from qworker.backends.local import LocalBackend
    from qworker.server.replica import Replica

    monkeypatch.setattr(LocalBackend, "expectations", lambda self, spec, t, a: torch.full((a.shape[0], 10), math.nan))
    with pytest.raises(ValueError, match="the results are not finite"):
        Replica(("local",)).evaluate(quick(3).SerializeToString())


def test_the_local_backend_client_stays_usable_from_threads():
    """Several threads through one RemoteBackend while the server refuses some: all end right."""
    server, port = started(workers=1, max_inflight=1, max_queue=0)
    try:
        remote = get_backend(f"grpc://127.0.0.1:{port}?simulator=local", deadline_s=120)
        theta, angles = torch.rand(40), torch.rand(300, 20)
        want = get_backend("local").expectations(SPEC, theta, angles)
        errors = []

        def client():
            try:
                torch.testing.assert_close(remote.expectations(SPEC, theta, angles), want)
            except Exception as e:  # noqa: BLE001 - collected
                errors.append(e)

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
    finally:
        server.stop(0)
