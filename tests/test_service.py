"""The qworker service end to end: real gRPC servers on 127.0.0.1 (port 0), started in-process,
and the RemoteBackend client; results equal the in-process backends', errors get the right codes."""

import copy
import math
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from qworker import CircuitSpec, Gradient, get_backend
from qworker.client import RemoteBackend, RemoteError, RemoteInvalidArgument
from qworker.deadline import DeadlineExceeded
from qworker.protocol.convert import encode_tensor, to_request, to_result
from qworker.protocol.errors import status_for
from qworker.protocol.evaluation import Evaluation
from qworker.protocol.limits import REPLICA_WORK_RATE
from qworker.protocol.metadata import bearer
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.protocol.wire import qworker_pb2_grpc as pb_grpc
from qworker.server.replica import Replica
from qworker.server.service import SERVICE, ServerConfig, create_server
from trainer.model.quantum_linear import QuantumLinear

ROOT = Path(__file__).resolve().parents[1]
SPEC = CircuitSpec(4, 2)
TOKEN = "s3cret-token"


def start(**cfg):
    """A started server and its port; waits (bounded) until health says SERVING."""
    server, port = create_server(ServerConfig(port=0, **cfg))
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        check = health_pb2_grpc.HealthStub(ch).Check
        deadline = time.monotonic() + 20
        while check(health_pb2.HealthCheckRequest(), timeout=5).status != health_pb2.HealthCheckResponse.SERVING:
            assert time.monotonic() < deadline, "the server never became SERVING"
            time.sleep(0.02)
    return server, port


@pytest.fixture(scope="module")
def server():
    # max_qubits 30: a 30-qubit request reaches the simulator, whose memory check refuses it
    server, port = start(max_qubits=30, metrics_port=0)
    yield server, port
    server.stop(1)


@pytest.fixture(scope="module")
def limited():
    server, port = start(max_qubits=6, max_message_mb=1, max_tokens_per_request=16, token=TOKEN, metrics_port=0)
    yield server, port
    server.stop(1)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server[1]}") as ch:
        yield ch


def batch(n=9, dtype=torch.float64, spec=SPEC, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = (torch.rand(spec.n_params, generator=g, dtype=torch.float64) * 2 * math.pi).to(dtype)
    angles = (torch.rand(n, spec.n_angles, generator=g, dtype=torch.float64) * 2 * math.pi).to(dtype)
    grad_out = torch.randn(n, spec.n_qubits, generator=g, dtype=torch.float64).to(dtype)
    return theta, angles, grad_out


def request(n=3, spec=SPEC, backend="qulacs", want=pb.WANT_EXPECTATIONS, method="", **fields) -> pb.EvaluateRequest:
    theta, angles, grad_out = batch(n, torch.float32, spec)
    req = pb.EvaluateRequest(
        circuit=pb.Circuit(n_qubits=spec.n_qubits, n_layers=spec.n_layers, entangler=spec.entangler, version=1),
        backend=pb.Backend(name=backend),
        theta=encode_tensor(theta),
        angles=encode_tensor(angles),
        want=want,
    )
    if method:
        req.gradient.method = method
    if want == pb.WANT_VJP:
        req.grad_out.CopyFrom(encode_tensor(grad_out))
    for name, value in fields.items():
        getattr(req, name).CopyFrom(value)
    return req


def assert_healthy(port: int, metadata=None) -> None:
    """Health SERVING and a good request still answered."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        status = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
        assert status.status == health_pb2.HealthCheckResponse.SERVING
        resp = pb_grpc.QWorkerStub(ch).Evaluate(request(), timeout=10, metadata=metadata)
        assert list(resp.expectations.shape) == [3, SPEC.n_qubits]


# -- results equal the in-process backends' -------------------------------------------------------


@pytest.mark.parametrize("simulator", ["qulacs", "local"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.float64, 1e-12)])
def test_remote_equals_in_process(server, simulator, dtype, tol):
    remote = get_backend(f"grpc://127.0.0.1:{server[1]}?simulator={simulator}")
    local = get_backend(simulator)
    theta, angles, grad_out = batch(dtype=dtype)
    close = dict(rtol=0, atol=tol)
    z = remote.expectations(SPEC, theta, angles)
    assert z.dtype == dtype
    torch.testing.assert_close(z, local.expectations(SPEC, theta, angles), **close)
    adjoint = Gradient("adjoint")
    for r, l in zip(
        remote.vjp(SPEC, theta, angles, grad_out, adjoint), local.vjp(SPEC, theta, angles, grad_out, adjoint)
    ):
        torch.testing.assert_close(r, l, **close)
    shift = Gradient("shift")
    for r, l in zip(remote.jacobians(SPEC, theta, angles, shift), local.jacobians(SPEC, theta, angles, shift)):
        torch.testing.assert_close(r, l, **close)


def test_quantum_linear_gradients_equal_local(server):
    torch.manual_seed(0)
    remote = QuantumLinear(12, 5, n_qubits=4, n_layers=2, backend=get_backend(f"grpc://127.0.0.1:{server[1]}"))
    local = QuantumLinear(12, 5, n_qubits=4, n_layers=2, backend="local", grad="adjoint")
    local.load_state_dict(remote.state_dict())
    x = torch.randn(2, 7, 12)
    for layer in (remote, local):
        layer(x).square().sum().backward()
    for (name, p), q in zip(remote.named_parameters(), local.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_shots_and_spsa_on_the_server_are_reproducible(server):
    address = f"grpc://127.0.0.1:{server[1]}"
    theta, angles, _ = batch()
    spsa = Gradient("spsa", samples=2, seed=5)
    a, b = (get_backend(address, simulator="shots", shots=64, seed=11) for _ in range(2))
    first = [a.jacobians(SPEC, theta, angles, spsa) for _ in range(2)]
    again = [b.jacobians(SPEC, theta, angles, spsa) for _ in range(2)]
    assert all(torch.equal(x, y) for f, g in zip(first, again) for x, y in zip(f, g)), "same seeds, same results"
    assert not torch.equal(first[0][0], first[1][0]), "each request gets its own shots seed"
    with pytest.raises(ValueError, match="adjoint"):
        a.vjp(SPEC, theta, angles, torch.ones(9, 4, dtype=theta.dtype), Gradient("adjoint"))


def test_big_batches_are_split_to_fit_the_limits(limited):
    remote = RemoteBackend(f"grpc://127.0.0.1:{limited[1]}", token=TOKEN)
    assert remote.limits.max_tokens_per_request == 16 and remote.limits.max_message_bytes == 2**20
    theta, angles, grad_out = batch(n=50, dtype=torch.float32)
    local, grad = get_backend("qulacs"), Gradient("adjoint")
    torch.testing.assert_close(remote.expectations(SPEC, theta, angles), local.expectations(SPEC, theta, angles))
    for r, l in zip(remote.vjp(SPEC, theta, angles, grad_out, grad), local.vjp(SPEC, theta, angles, grad_out, grad)):
        torch.testing.assert_close(r, l)
    per_token_theta = theta.expand(50, -1).contiguous()
    for r, l in zip(remote.jacobians(SPEC, per_token_theta, angles, grad), local.jacobians(SPEC, theta, angles, grad)):
        torch.testing.assert_close(r, l)


def test_remote_backend_survives_deepcopy_and_reconnects(server):
    remote = get_backend(f"grpc://127.0.0.1:{server[1]}")
    twin = copy.deepcopy(remote)
    remote.close()
    theta, angles, _ = batch()
    torch.testing.assert_close(twin.expectations(SPEC, theta, angles), remote.expectations(SPEC, theta, angles))


# -- info, health, reflection, metrics ------------------------------------------------------------


def test_info(channel):
    info = pb_grpc.QWorkerStub(channel).Info(pb.InfoRequest(), timeout=5)
    assert (info.proto_version, info.circuit_version, info.replicas) == (1, 1, 1)
    assert info.server_version
    methods = {b.name: list(b.gradient_methods) for b in info.backends}
    exact = ["adjoint", "shift", "fd", "spsa"]
    assert methods == {"auto": exact, "qulacs": exact, "local": exact, "shots": ["shift", "fd", "spsa"]}
    assert [b.hardware for b in info.backends] == [False, False, False, True]
    assert info.limits.max_qubits == 30 and info.limits.max_message_bytes == 64 * 2**20
    assert info.limits.max_tokens_per_request == 65_536  # README, "Every limit": --max-tokens (65,536)
    # the work limit is what one replica does in max_request_seconds (docs/design.md, "The service")
    assert info.limits.max_work_per_request == info.limits.max_request_seconds * REPLICA_WORK_RATE
    assert info.limits.max_request_seconds == 600 and info.limits.default_deadline_s == 600
    assert info.limits.max_inflight == 4 and info.limits.max_queue == 16  # workers, and 4 x that
    assert info.limits.max_replicas == 0 and info.queue_depth == 0  # an in-process pool does not scale


def test_standard_health(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", SERVICE):
        assert stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status == 1  # SERVING
    with pytest.raises(grpc.RpcError) as e:
        stub.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_and_describes_the_service(channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    reply = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names
    described = DescriptorPool(ProtoReflectionDescriptorDatabase(channel)).FindServiceByName(SERVICE)
    assert [m.name for m in described.methods] == ["Evaluate", "Info", "Scale"]


def scrape(server) -> dict[tuple[str, frozenset], float]:
    """The server's /metrics page: {(sample name, its labels): value}, read by prometheus-client's parser."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics.port}/metrics", timeout=5) as r:
        families = text_string_to_metric_families(r.read().decode())
    return {(s.name, frozenset(s.labels.items())): s.value for f in families for s in f.samples}


def value(page: dict, name: str, **labels) -> float:
    """One series of a scraped page (0 for one not there yet: a counter before its first count)."""
    return page.get((name, frozenset(labels.items())), 0.0)


def replica_figure(page: dict, name: str) -> float:
    (figure,) = [v for (n, labels), v in page.items() if n == name and ("replica", "in-process") in labels]
    return figure


def test_metrics_count_requests_circuits_and_errors(server, channel):
    stub = pb_grpc.QWorkerStub(channel)
    before = scrape(server[0])
    start = time.monotonic()
    stub.Evaluate(request(n=5, want=pb.WANT_JACOBIANS, method="shift"), timeout=10)
    seconds = time.monotonic() - start
    with pytest.raises(grpc.RpcError):
        stub.Evaluate(request(backend="nope"), timeout=10)
    # a refused call is counted as its handler ends, just after its status went out: until the
    # latency of both calls (its last figure) is in, the page may not hold it yet
    deadline, latency = time.monotonic() + 10, ("hyqut_qworker_request_seconds_count", frozenset({("rpc", "Evaluate")}))
    while (after := scrape(server[0])).get(latency, 0) < before.get(latency, 0) + 2 and time.monotonic() < deadline:
        time.sleep(0.01)

    def added(name: str, **labels) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert added("hyqut_qworker_requests_total", rpc="Evaluate", code="OK") == 1
    assert added("hyqut_qworker_requests_total", rpc="Evaluate", code="INVALID_ARGUMENT") == 1
    assert added("hyqut_qworker_request_seconds_count", rpc="Evaluate") == 2
    # shift: every token's forward and both shifts of each of its |Θ| + 2 n_q angles
    shift_circuits = 5 * (2 * (SPEC.n_params + SPEC.n_angles) + 1)
    circuits = added("hyqut_qworker_token_circuits_total", backend="qulacs", gradient="shift", code="OK")
    assert circuits == shift_circuits
    assert value(after, "hyqut_qworker_in_flight") == 0
    evaluations = "hyqut_qworker_replica_evaluations_total"  # the refused request never reached the replica
    assert replica_figure(after, evaluations) == replica_figure(before, evaluations) + 1
    busy = "hyqut_qworker_replica_busy_seconds_total"  # measured in the replica, within the call's time
    assert 0 < replica_figure(after, busy) - replica_figure(before, busy) <= seconds
    assert replica_figure(after, "hyqut_qworker_replica_up") == 1


# -- bad input: the right code, a message naming the field, the server still healthy -------------


def without(req: pb.EvaluateRequest, field: str) -> pb.EvaluateRequest:
    req.ClearField(field)
    return req


def shots(name: str, **options) -> pb.EvaluateRequest:
    req = request()
    req.backend.CopyFrom(pb.Backend(name=name, **options))
    return req


NAN_ANGLES = encode_tensor(torch.full((3, SPEC.n_angles), math.nan))
INF_THETA = encode_tensor(torch.full((SPEC.n_params,), math.inf))
SHORT_BYTES = pb.Tensor(shape=[3, SPEC.n_angles], data=bytes(7))
BAD = {
    "nan angles": (request(angles=NAN_ANGLES), "INVALID_ARGUMENT", "angles has 24 non-finite"),
    "inf theta": (request(theta=INF_THETA), "INVALID_ARGUMENT", "theta has 16 non-finite"),
    "shape vs bytes": (request(angles=SHORT_BYTES), "INVALID_ARGUMENT", "angles.data: shape [3, 8]"),
    "wrong shape": (request(theta=encode_tensor(torch.zeros(5))), "INVALID_ARGUMENT", "theta must have shape (16,)"),
    "unknown backend": (request(backend="nope"), "INVALID_ARGUMENT", "backend.name: 'nope' is not served"),
    "unknown method": (request(want=pb.WANT_VJP, method="newton"), "INVALID_ARGUMENT", "unknown gradient method"),
    "method missing": (request(want=pb.WANT_JACOBIANS), "INVALID_ARGUMENT", "gradient.method: required"),
    "adjoint on shots": (
        request(backend="shots", want=pb.WANT_VJP, method="adjoint"),
        "INVALID_ARGUMENT",
        "gradient method 'adjoint' is not supported by backend 'shots'",
    ),
    "grad_out missing": (
        without(request(want=pb.WANT_VJP, method="shift"), "grad_out"),
        "INVALID_ARGUMENT",
        "grad_out: required with WANT_VJP",
    ),
    "spec version": (
        request(circuit=pb.Circuit(n_qubits=4, n_layers=2, entangler="ring", version=9)),
        "INVALID_ARGUMENT",
        "circuit: invalid circuit spec: circuit spec version 9",
    ),
    "no circuit": (pb.EvaluateRequest(), "INVALID_ARGUMENT", "circuit: required"),
    "options for qulacs": (
        shots("qulacs", shots=5),
        "INVALID_ARGUMENT",
        "backend.options: 'qulacs' takes no option shots",
    ),
    "bad noise": (shots("shots", readout_error=2.0), "INVALID_ARGUMENT", "readout_error must be a probability"),
    "out of memory": (
        request(n=1, spec=CircuitSpec(30, 0), backend="local"),
        "RESOURCE_EXHAUSTED",
        "n_qubits=30 needs",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_request_gets_the_right_code(server, channel, case):
    req, code, words = BAD[case]
    with pytest.raises(grpc.RpcError) as e:
        pb_grpc.QWorkerStub(channel).Evaluate(req, timeout=10)
    assert (e.value.code().name, words in e.value.details()) == (code, True), e.value.details()
    assert_healthy(server[1])


def test_remote_backend_raises_value_error_for_invalid_argument(server):
    remote = get_backend(f"grpc://127.0.0.1:{server[1]}")
    theta, angles, _ = batch()
    angles[2, 3] = math.nan
    with pytest.raises(RemoteInvalidArgument, match=r"INVALID_ARGUMENT: angles has 1 non-finite .* \(2, 3\)"):
        remote.expectations(SPEC, theta, angles)


@pytest.mark.parametrize(
    "data", [b"\xff\xff\xff", b"\x0a\x05abc", b"\x22\x03\x0a\xff\xff", os.urandom(64) + b"\x0a\xff"]
)
def test_garbage_bytes_are_invalid_argument(server, channel, data):
    evaluate = channel.unary_unary(f"/{SERVICE}/Evaluate", request_serializer=None, response_deserializer=None)
    with pytest.raises(grpc.RpcError) as e:
        evaluate(data, timeout=10)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT, e.value.details()
    assert_healthy(server[1])


def test_limits_are_resource_exhausted(limited):
    port, auth = limited[1], bearer(TOKEN)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = pb_grpc.QWorkerStub(ch)
        cases = [
            (request(spec=CircuitSpec(7, 1)), "circuit.n_qubits: 7 is over this server's max_qubits=6"),
            (request(n=17), "angles: 17 tokens exceed max_tokens_per_request=16"),
            (
                request(n=2, want=pb.WANT_JACOBIANS, method="spsa", gradient=pb.Gradient(method="spsa", samples=2**31)),
                "over this server's max_request_seconds=600",
            ),  # fmt: skip
            (request(angles=encode_tensor(torch.zeros(2**18, 8))), "Received message larger than max"),  # 8 MiB
            (shots("shots", shots=2**21), "backend.shots: 2097152 is over this server's max_shots=1048576"),
        ]
        for req, words in cases:
            with pytest.raises(grpc.RpcError) as e:
                stub.Evaluate(req, timeout=10, metadata=auth)
            assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and words in e.value.details(), (
                e.value.details()
            )
    assert_healthy(port, auth)


def test_status_mapping():
    assert status_for(MemoryError("too big"))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    code, message = status_for(KeyError("secret internals"))
    assert code == grpc.StatusCode.INTERNAL and "secret" not in message and "KeyError" in message


# -- auth, connection failures, deadlines, TLS ----------------------------------------------------


@pytest.mark.parametrize("metadata, words", [(None, "missing token"), (bearer("guess"), "wrong token")])
def test_token_required(limited, metadata, words):
    refused_before = value(scrape(limited[0]), "hyqut_qworker_requests_total", rpc="Evaluate", code="UNAUTHENTICATED")
    with grpc.insecure_channel(f"127.0.0.1:{limited[1]}") as ch:
        for call in (lambda: pb_grpc.QWorkerStub(ch).Info(pb.InfoRequest(), timeout=5, metadata=metadata),
                     lambda: pb_grpc.QWorkerStub(ch).Evaluate(request(), timeout=5, metadata=metadata)):  # fmt: skip
            with pytest.raises(grpc.RpcError) as e:
                call()
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED and words in e.value.details()
        reflect = reflection_pb2_grpc.ServerReflectionStub(ch).ServerReflectionInfo
        with pytest.raises(grpc.RpcError) as e:
            next(
                reflect(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5, metadata=metadata)
            )
        assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
    refused = value(scrape(limited[0]), "hyqut_qworker_requests_total", rpc="Evaluate", code="UNAUTHENTICATED")
    assert refused == refused_before + 1
    assert_healthy(limited[1], bearer(TOKEN))  # health itself needs no token


def test_token_from_environment(limited, monkeypatch):
    monkeypatch.setenv("HYQUT_TOKEN", TOKEN)
    assert get_backend(f"grpc://127.0.0.1:{limited[1]}").info.replicas == 1
    monkeypatch.delenv("HYQUT_TOKEN")
    with pytest.raises(RemoteError, match="UNAUTHENTICATED"):
        get_backend(f"grpc://127.0.0.1:{limited[1]}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_is_a_clear_error(server):
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{server[1]}"):
        create_server(ServerConfig(port=server[1]))


def test_nothing_listening_fails_clearly_and_in_time():
    port, start = free_port(), time.monotonic()
    with pytest.raises(ConnectionError, match=rf"no qworker answered at grpc://127.0.0.1:{port} within 1 s"):
        RemoteBackend(f"grpc://127.0.0.1:{port}", connect_timeout_s=1)
    assert time.monotonic() - start < 5


def test_deadline_exceeded_is_reported_and_the_server_recovers(server):
    remote = get_backend(f"grpc://127.0.0.1:{server[1]}", deadline_s=30)
    remote.connection.deadline_s = 0.002
    theta, angles, _ = batch(n=64, spec=CircuitSpec(10, 2))
    with pytest.raises(RemoteError, match="DEADLINE_EXCEEDED.*deadline 0.002 s") as e:
        remote.jacobians(CircuitSpec(10, 2), theta, angles, Gradient("shift"))
    assert e.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert_healthy(server[1])


@pytest.mark.parametrize(
    "simulator, want, n, grad",
    [("local", "jacobians", 2048, Gradient("fd")), ("qulacs", "expectations", 30000, None)],
)
def test_an_evaluation_past_its_deadline_stops_and_says_so(simulator, want, n, grad):
    """Seconds of work (10 qubits), a 0.3 s deadline: the simulator stops at its next check."""
    spec = CircuitSpec(10, 2)
    replica = Replica((simulator,))
    replica.start()
    ev = Evaluation.of(spec, simulator, torch.rand(spec.n_params), torch.rand(n, spec.n_angles), want, grad)
    start = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="did not finish within 0.3 s") as e:
        replica.evaluate(to_request(ev).SerializeToString(), timeout=0.3)
    assert time.monotonic() - start < 1.5
    assert status_for(e.value)[0] == grpc.StatusCode.DEADLINE_EXCEEDED
    few = Evaluation.of(spec, simulator, ev.theta, ev.angles[:4])
    data, *_ = replica.evaluate(to_request(few).SerializeToString(), timeout=5)
    torch.testing.assert_close(
        to_result(pb.EvaluateResponse.FromString(data)).expectations,
        get_backend("local").expectations(spec, ev.theta, ev.angles[:4]),
        atol=1e-6,
        rtol=0,
    )


def test_bad_addresses_are_refused():
    for address in ("grpc://127.0.0.1", "http://127.0.0.1:1", "grpc://127.0.0.1:1?shots=3"):
        with pytest.raises(ValueError, match="bad qworker address"):
            RemoteBackend(address)


def self_signed_cert(tmp_path: Path) -> tuple[bytes, bytes]:
    """A certificate for 127.0.0.1 and its key, made with the openssl CLI (no `cryptography` here)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", key, "-out", cert],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert.read_bytes(), key.read_bytes()


def test_tls(tmp_path):
    cert, key = self_signed_cert(tmp_path)
    server, port = create_server(ServerConfig(port=0, tls_cert=cert, tls_key=key))
    server.start()
    try:
        (tmp_path / "ca.pem").write_bytes(cert)
        remote = get_backend(f"grpc://127.0.0.1:{port}?tls_root_cert={tmp_path / 'ca.pem'}", connect_timeout_s=10)
        theta, angles, _ = batch()
        for _ in range(100):  # the pool may still be starting: UNAVAILABLE is retried
            try:
                z = remote.expectations(SPEC, theta, angles)
                break
            except RemoteError as e:
                assert e.code == grpc.StatusCode.UNAVAILABLE
                time.sleep(0.05)
        torch.testing.assert_close(z, get_backend("qulacs").expectations(SPEC, theta, angles))
        with pytest.raises(ConnectionError, match="without TLS"):
            RemoteBackend(f"grpc://127.0.0.1:{port}", connect_timeout_s=1)
    finally:
        server.stop(1)


def test_python_m_qworker_serve_and_sigterm(tmp_path):
    (tmp_path / "token").write_text(TOKEN + "\n")
    cmd = [
        sys.executable,
        "-m",
        "qworker",
        "serve",
        "--in-process",
        "--port",
        "0",
        "--token-file",
        str(tmp_path / "token"),
    ]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = next(x for x in proc.stdout if x.startswith("qworker listening on grpc://127.0.0.1:"))
        remote = get_backend(line.split()[-1], token=TOKEN)
        theta, angles, _ = batch()
        torch.testing.assert_close(
            remote.expectations(SPEC, theta, angles), get_backend("qulacs").expectations(SPEC, theta, angles)
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
