"""A client spread over several frontends (docs/design.md, "Frontends per node"), with real gRPC
servers on 127.0.0.1 in this process (no Ray): the target grammar, calls alternating over the
frontends, the backward of kept Jacobians going back to the frontend that holds them, and a
frontend gone between forward and backward costing one recompute at once, not a wait. The same on
Ray's fake multi-node cluster, with a trainer: tests/test_cluster.py."""

import socket
import time
import urllib.request

import grpc
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families

from qworker import CircuitSpec, Gradient, get_backend
from qworker.client import RemoteBackend, admin_call
from qworker.client.connection import RECOMPUTES
from qworker.client.targets import parse
from qworker.protocol.convert import to_request
from qworker.protocol.evaluation import Evaluation
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.protocol.wire import qworker_pb2_grpc as pb_grpc
from qworker.server.service import ServerConfig, advertised, create_server

SPEC = CircuitSpec(4, 2)


def resolver(table: dict[str, list[str]]):
    """A getaddrinfo that knows the names in `table` (name -> addresses)."""

    def resolve(host, port, type=0):
        if host not in table:
            raise socket.gaierror(f"unknown {host}")
        family = lambda a: socket.AF_INET6 if ":" in a else socket.AF_INET  # noqa: E731
        return [(family(a), socket.SOCK_STREAM, 6, "", (a, port)) for a in table[host]]

    return resolve


def test_the_target_grammar():
    one = parse("10.0.0.5:50051")
    assert (one.channel, one.spread) == ("10.0.0.5:50051", False)
    listed = parse("10.0.0.5:50051,10.0.0.6:50052")
    assert (listed.channel, listed.spread, listed.tls_name) == ("ipv4:10.0.0.5:50051,10.0.0.6:50052", True, "10.0.0.5")
    assert listed.owns("10.0.0.6:50052") and not listed.owns("10.0.0.7:50052") and not listed.owns("10.0.0.6:1")
    assert parse("[::1]:1,[::2]:2").channel == "ipv6:[::1]:1,[::2]:2"

    names = resolver({"qw": ["10.0.0.5", "10.0.0.6"], "n1": ["10.0.0.7"], "localhost": ["127.0.0.1", "::1"]})
    dns = parse("qw:50051", names)
    assert (dns.channel, dns.spread, dns.name, dns.tls_name) == ("dns:///qw:50051", True, "qw", "qw")
    assert dns.owns("10.0.0.6:50051") and not dns.owns("10.0.0.9:50051", names)
    assert dns.owns("10.0.0.9:50051", resolver({"qw": ["10.0.0.9"]}))  # a node that joined: resolved again
    assert not parse("n1:50051", names).spread  # one address: the channel of before
    assert not parse("localhost:50051", names).spread  # 127.0.0.1 and ::1 are one server
    assert parse("n1:1,10.0.0.8:2", names).channel == "ipv4:10.0.0.7:1,10.0.0.8:2"  # names in a list resolved

    for bad, why in [
        ("10.0.0.5", "expected host:port"),
        ("10.0.0.5:1,", "expected host:port"),
        ("10.0.0.5:0", "expected host:port"),
        ("nowhere:1,10.0.0.5:1", "does not resolve"),
        ("10.0.0.5:1,[::1]:1", "one family"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse(bad, names)
    with pytest.raises(ValueError, match="bad qworker address.*expected host:port"):
        RemoteBackend("grpc://127.0.0.1:1,127.0.0.1")
    with pytest.raises(ValueError, match="names several frontends"):
        admin_call("grpc://127.0.0.1:1,127.0.0.1:2", "Info", pb.InfoRequest())


def test_a_server_knows_the_address_it_is_reached_at():
    assert advertised(ServerConfig(host="127.0.0.1"), 7) == "127.0.0.1:7"
    assert advertised(ServerConfig(host="::1"), 7) == "[::1]:7"
    assert advertised(ServerConfig(host="0.0.0.0", advertise="10.0.0.5"), 7) == "10.0.0.5:7"
    assert advertised(ServerConfig(host="0.0.0.0", advertise="lb.example:443"), 7) == "lb.example:443"
    assert advertised(ServerConfig(host="0.0.0.0", advertise="[fd00::1]:9"), 7) == "[fd00::1]:9"
    wildcard = advertised(ServerConfig(host="0.0.0.0"), 7)
    assert wildcard.endswith(":7") and not wildcard.startswith("0.0.0.0")  # this machine's address


@pytest.fixture
def frontends():
    """Two in-process servers on 127.0.0.1: what a client spread over two frontends sees."""
    servers = [create_server(ServerConfig(port=0, simulators=("local",), metrics_port=0)) for _ in range(2)]
    for server, _ in servers:
        server.start()
    for server, _ in servers:
        server.wait_ready(30)
    yield [s for s, _ in servers]
    for server, _ in servers:
        server.stop(0)


def evaluate_calls(server) -> dict[str, float]:
    """Evaluate calls the server answered, by status code (its /metrics page)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics.port}/metrics", timeout=10) as page:
        families = text_string_to_metric_families(page.read().decode())
        return {
            s.labels["code"]: s.value
            for f in families
            for s in f.samples
            if s.name == "hyqut_qworker_requests_total" and s.labels["rpc"] == "Evaluate"
        }


def batch(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(SPEC.n_params, generator=g, dtype=torch.float64) * 6.28
    angles = torch.rand(n, SPEC.n_angles, generator=g, dtype=torch.float64) * 6.28
    return theta, angles, torch.randn(n, SPEC.n_qubits, generator=g, dtype=torch.float64)


def test_calls_alternate_over_the_frontends_and_a_handle_goes_back_to_its_own(frontends):
    a, b = frontends
    remote = get_backend(f"grpc://{a.address},{b.address}?simulator=local")
    assert remote.connection.target.spread and sorted(remote.info.frontends) in ([a.address], [b.address])
    theta, angles, grad_out = batch()
    remote.start(SPEC, theta, angles, Gradient("fd")).vjp(grad_out)  # both channels connected to both
    before, recomputes = [evaluate_calls(s).get("OK", 0) for s in frontends], RECOMPUTES._value.get()
    for _ in range(6):  # as a trainer's layer: Jacobians kept in forward, their VJP in backward
        pending = remote.start(SPEC, theta, angles, Gradient("fd"))
        got = pending.vjp(grad_out)
    want = get_backend("local").vjp(SPEC, theta, angles, grad_out, Gradient("fd"))
    torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)
    calls = [evaluate_calls(s) for s in frontends]
    assert [set(c) for c in calls] == [{"OK"}, {"OK"}], calls  # no NOT_FOUND: every handle reached its holder
    assert RECOMPUTES._value.get() == recomputes
    # 12 calls (6 x the forward that keeps, the VJP): half each, the forwards alternating and each
    # VJP going where its forward went
    assert [c["OK"] - b for c, b in zip(calls, before)] == [6, 6], (calls, before)
    assert [len(s.pool.replica.resident) for s in frontends] == [0, 0]  # every kept Jacobian was used


def test_a_frontend_gone_between_forward_and_backward_costs_a_recompute_at_once(frontends):
    theta, angles, grad_out = batch(seed=1)
    remote = get_backend(f"grpc://{frontends[0].address},{frontends[1].address}?simulator=local&deadline=60")
    undisturbed = remote.start(SPEC, theta, angles, Gradient("fd")).vjp(grad_out)
    pendings = [remote.start(SPEC, theta, angles, Gradient("fd")) for _ in range(4)]
    deadline = time.monotonic() + 30
    while sum(held := [len(s.pool.replica.resident) for s in frontends]) < 4:  # their Jacobians come after
        assert time.monotonic() < deadline, held
        time.sleep(0.01)
    gone = frontends[0] if held[0] else frontends[1]
    gone.stop(0)  # its kept Jacobians go with it
    recomputes, start = RECOMPUTES._value.get(), time.monotonic()
    for pending in pendings:
        assert all(map(torch.equal, pending.vjp(grad_out), undisturbed))  # the same bits
    assert RECOMPUTES._value.get() - recomputes == max(held)
    assert time.monotonic() - start < 5, "the client waited for the gone frontend instead of recomputing"


def test_one_address_is_the_channel_of_before(frontends):
    server = frontends[0]
    remote = get_backend(f"grpc://{server.address}?simulator=local")
    assert not remote.connection.target.spread
    assert (remote.info.frontend, list(remote.info.frontends)) == (server.address, [server.address])
    theta, angles, grad_out = batch(seed=2)
    pending = remote.start(SPEC, theta, angles, Gradient("fd"))
    assert remote._holder(server.address) is remote.connection
    torch.testing.assert_close(
        pending.vjp(grad_out), get_backend("local").vjp(SPEC, theta, angles, grad_out, Gradient("fd"))
    )


def test_a_keep_answer_names_its_frontend(frontends):
    server = frontends[0]
    theta, angles, _ = batch(seed=3)
    request = to_request(Evaluation.of(SPEC, "local", theta, angles, "jacobians", Gradient("fd")))
    request.keep_jacobians = True
    with grpc.insecure_channel(server.address) as channel:
        answer = pb_grpc.QWorkerStub(channel).Evaluate(request, timeout=30)
    assert answer.handle and answer.frontend == server.address
    assert not answer.jacobian_theta.data  # the Jacobians stayed
