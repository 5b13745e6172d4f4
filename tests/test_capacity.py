"""bench/capacity.py: each cap is what its formula gives for a small input worked out by hand, the
binding cap is the least, the goal is judged on the routing caps, and the script runs end to end
on rows that bench/service.py's own code made (from constructed timings, CPU and bytes)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DENSE, KEPT1, KEPT2 = "service, 1 replica, dense", "service, 1 replica", "service, 2 replicas"
PACED = "service, 1 replica, H200 pace"


def load(name: str):
    """bench/<name>.py as a module (bench/ importable, as when it runs as a script)."""
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "bench"))


@pytest.fixture(scope="module")
def capacity():
    yield load("capacity")
    del sys.modules["capacity"]


class FakeServer:
    """What bench/service.py reads of a server: its CPU seconds and Evaluate calls so far."""

    def __init__(self):
        self.cpu, self.calls = 0.0, 0

    def cpu_s(self) -> float:
        return self.cpu

    def evaluate_calls(self) -> int:
        return self.calls


# Per path: (seconds of a layer-call of N = 1,000 tokens for fd, for adjoint; frontend CPU us a token for
# fd, for adjoint, net of the quiet rate; bytes a token for fd, for adjoint; the CPU of a one-token
# request in ms, net; the quiet rate, CPU seconds a second that the server spends beside its work).
# fd is 122 token-circuits a token (its 121 evaluations and 1), adjoint 2: bench/service.py's count.
PATHS = {
    "in-process": ((0.5, 0.5), None, None, None, None),
    DENSE: ((2.0, 0.5), (50.0, 3.0), (2500, 300), 1.0, 0.0),
    KEPT1: ((1.0, 0.25), (4.0, 2.0), (400, 300), 1.0, 0.01),
    KEPT2: ((1.0, 0.25), (5.0, 1.0), (350, 300), 2.0, 0.1),
}
QUIET = {name: p[4] for name, p in PATHS.items() if p[4] is not None}


@pytest.fixture(scope="module")
def service_json(tmp_path_factory) -> Path:
    """bench/service.py's rows, made by its own code (measure, overhead) from paths whose seconds,
    CPU and bytes are the constants of PATHS."""
    service = load("service")
    wire = [0.0]
    service.wire_bytes = lambda: wire[0]  # the client's counter of bytes sent and received
    n = 1000

    def path(name: str):
        seconds, cpu_us, bytes_, one_ms, quiet = PATHS[name]
        server = FakeServer() if cpu_us else None

        def run(what: str) -> float:
            if what == "one":  # a one-token forward call of 1 ms
                if server:
                    server.cpu, server.calls = server.cpu + one_ms / 1e3 + quiet * 0.001, server.calls + 1
                return 0.001
            i = ("fd", "adjoint").index(what)
            if server:  # a layer-call's step: two requests, and the quiet rate over its seconds
                server.cpu, server.calls = server.cpu + cpu_us[i] * n / 1e6 + quiet * seconds[i], server.calls + 2
                wire[0] += bytes_[i] * n
            return seconds[i]

        return run, server

    paths = {name: path(name) for name in PATHS}
    rows = [service.measure(paths, method, n, rounds=1, quiet=QUIET) for method in ("fd", "adjoint")]
    rows.append(service.overhead(paths, rounds=1, quiet=QUIET))
    out = tmp_path_factory.mktemp("capacity") / "service.json"
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))  # what `bench/service.py --json` prints
    del sys.modules["service"]
    return out


def shape(capacity, **changes):
    fields = dict(
        replicas=16,  # 2 nodes of 8
        per_node=8,
        nic_gbps=8.0,  # 1e9 bytes/s each way
        frontends_per_node=1,
        trainer_ranks=4,  # 2 trainer nodes of 2
        ranks_per_node=2,
        trainer_tokens_per_s=10_000.0,
        quantum_layers=10,
        tokens_per_call=500,
    )
    return capacity.Shape(**{**fields, **changes})


def test_reads_bench_service_figures(capacity, service_json):
    measured = capacity.read_service_json(str(service_json))
    fd, adjoint = measured["fd"], measured["adjoint"]
    assert fd.tokens == 1000
    # a replica: "service, 1 replica", 1,000 tokens in 1 s; in-process 1,000 in 0.5 s
    assert (fd.cpu_replica, fd.in_process) == pytest.approx((1000.0, 2000.0))
    assert (adjoint.cpu_replica, adjoint.in_process) == pytest.approx((4000.0, 2000.0))
    # the CPU figures are net of the quiet rate (the raw ones, with it, are in the rows too)
    assert (fd.today.cpu_us, fd.today.request_cpu_us, fd.today.bytes, fd.today.quiet) == pytest.approx(
        (50.0, 1000.0, 2500, 0.0)
    )
    # new: of the two kept paths the larger CPU (fd: 2 replicas', with its one-token request and quiet
    # rate) and the larger bytes
    assert (fd.new.cpu_us, fd.new.request_cpu_us, fd.new.bytes, fd.new.quiet) == pytest.approx((5.0, 2000.0, 400, 0.1))
    assert (adjoint.new.cpu_us, adjoint.new.request_cpu_us, adjoint.new.quiet) == pytest.approx((2.0, 1000.0, 0.01))
    rows = [json.loads(line) for line in service_json.read_text().splitlines()]
    # raw: KEPT2's fd 5 us a token and 0.1 s a second over its 1 s call, for 1,000 tokens: 5 + 100 us
    assert rows[0]["frontend_cpu_us_per_token_raw"][KEPT2] == pytest.approx(105.0)
    assert rows[0]["quiet_cpu_ms_per_s"] == pytest.approx({k: 1e3 * v for k, v in QUIET.items()})


def test_caps_are_their_formulas(capacity, service_json):
    fd = capacity.read_service_json(str(service_json))["fd"]
    s = shape(capacity)
    # u(T) = u_N + 2 q (1/T - 1/N), T = 500, N = 1000: dense 50 + 2 x 1000 x 0.001 = 52 us; kept 5 + 4 = 9 us
    today = capacity.caps(fd, "today", s, replica_rate=10_000.0)
    assert today == pytest.approx(
        {
            "replicas": 16 * 10_000.0,  # 160,000
            "frontend CPU": 1e6 / 52,  # one frontend, the head's, 1 core: 19,231
            "NIC, head": 1e9 / 2500,  # 400,000: each direction carries every byte once
            "NIC, nodes": 2 * 1e9 / 2500,  # 800,000
            "NIC, trainers": 2 * 1e9 / 2500,
            "trainers": 4 * 10_000.0 * 10,  # 400,000 layer-tokens/s
        }
    )
    new = capacity.caps(fd, "new", s, replica_rate=10_000.0)
    assert new["NIC, head"] is None  # the head is not on the new path
    assert new["frontend CPU"] == pytest.approx(2 * 0.9e6 / 9)  # a frontend a node, 90% of its core free: 200,000
    assert new["NIC, nodes"] == pytest.approx(2 * 1e9 / 400) == new["NIC, trainers"]  # 5,000,000
    rows = capacity.evaluate(fd, s, replica_rate=10_000.0)
    assert [r["path"] for r in rows] == ["today", "new"]
    assert rows[0]["binds"] == "frontend CPU" and rows[0]["layer_tokens_per_s"] == pytest.approx(1e6 / 52)
    assert rows[0]["training_tokens_per_s"] == pytest.approx(1e6 / 52 / 10) and not rows[0]["routing_holds"]
    assert rows[1]["binds"] == "replicas" and rows[1]["routing_holds"]
    # to route 160,000: today 160,000 x 52 us = 8.32 frontends and 160,000 x 2,500 B x 8 = 3.2 Gb/s at the head,
    # or with 1 frontend and 8 Gb/s at most 1e6 / 160,000 = 6.25 us and 1e9 / 160,000 = 6,250 B a layer-token,
    # which no call size gives (u(T) >= 50 - 2 x 1,000 / 1,000 = 48 us); new, a node's 80,000: 80,000 x 9 /
    # 0.9e6 = 0.8 frontends and 0.256 Gb/s, or 0.9e6 / 80,000 = 11.25 us and 12,500 B a layer-token: calls of
    # T >= 2 x 2,000 / (11.25 - 5 + 2 x 2,000 / 1,000) = 390.2 tokens
    assert rows[0]["needs"] == pytest.approx(
        {"frontends": 8.32, "frontends_for_asked": 8.32, "nic_gbps": 3.2, "max_cpu_us_per_token": 6.25,
         "max_bytes_per_token": 6250, "min_tokens_per_call": None}
    )  # fmt: skip
    assert rows[1]["needs"] == pytest.approx(
        {"frontends": 0.8, "frontends_for_asked": 0.8, "nic_gbps": 0.256, "max_cpu_us_per_token": 11.25,
         "max_bytes_per_token": 12500, "min_tokens_per_call": 391}
    )  # fmt: skip
    assert capacity.cpu_us_per_token(fd.new, 391) <= 11.25 < capacity.cpu_us_per_token(fd.new, 390)


def test_cpu_a_token_is_fitted_through_two_call_sizes(capacity, service_json, tmp_path):
    """With bench/service.py's rows at N = 1,000 and 2,000, u(T) = a + b / T goes through both
    (one N: b is twice the one-token request's CPU, a what is left of u_N)."""
    one = capacity.read_service_json(str(service_json))["fd"].new
    assert (one.per_token_us, one.per_call_us) == pytest.approx((5.0 - 4.0, 2 * 2000.0))  # KEPT2: u 5, q 2 ms
    rows = [json.loads(line) for line in service_json.read_text().splitlines()]
    for row in rows[:2]:  # fd's and adjoint's rows, as if measured at N = 2,000
        row["tokens"] = 2000
        row["frontend_cpu_us_per_token"] = {**row["frontend_cpu_us_per_token"], KEPT1: 3.0, KEPT2: 4.0}
    (other := tmp_path / "service-2000.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    fd = capacity.read_service_json([str(service_json), str(other)])["fd"]
    # through (1/1000, 5) and (1/2000, 4): b = 1 / (1/1000 - 1/2000) = 2,000 us, a = 4 - 2,000 / 2,000 = 3 us
    assert (fd.new.per_token_us, fd.new.per_call_us) == pytest.approx((3.0, 2000.0))
    assert fd.tokens == 2000 and fd.new.cpu_us == 4.0 and "1,000, 2,000" in fd.new.fit
    assert capacity.cpu_us_per_token(fd.new, 500) == pytest.approx(7.0)
    assert capacity.cpu_us_per_token(fd.today, 500) == pytest.approx(50.0)  # dense: the same u at both N
    for row in rows[:2]:  # the larger call dearer a token than the smaller (noise): no negative per-call part
        row["frontend_cpu_us_per_token"] = {**row["frontend_cpu_us_per_token"], KEPT1: 3.0, KEPT2: 7.0}
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fd = capacity.read_service_json([str(service_json), str(other)])["fd"]
    assert (fd.new.per_token_us, fd.new.per_call_us) == pytest.approx((6.0, 0.0)) and "taken as 0" in fd.new.fit


def test_binding_cap_is_the_least(capacity, service_json):
    adjoint = capacity.read_service_json(str(service_json))["adjoint"]
    for changes in ({}, {"replicas": 1}, {"nic_gbps": 0.01}, {"trainer_ranks": 1}, {"tokens_per_call": 1000}):
        for row in capacity.evaluate(adjoint, shape(capacity, **changes), replica_rate=50_000.0):
            allowed = {k: v for k, v in row["caps"].items() if v is not None}
            assert row["caps"][row["binds"]] == min(allowed.values()), (changes, row)
            routing = [allowed[k] for k in capacity.ROUTING if k in allowed]
            assert row["routing_holds"] == (min(routing) >= allowed["replicas"])
            assert row["routes_asked"] == (min(routing) >= min(allowed["replicas"], allowed["trainers"]))
    # T = N: no per-request share moved; one node of one replica
    (_, new) = capacity.evaluate(adjoint, shape(capacity, replicas=1, tokens_per_call=1000), replica_rate=1.0)
    assert new["nodes"] == 1 and new["caps"]["frontend CPU"] == pytest.approx(0.99e6 / 2.0)
    # K frontends a node: K times the cap
    (_, four) = capacity.evaluate(
        adjoint, shape(capacity, replicas=1, tokens_per_call=1000, frontends_per_node=4), replica_rate=1.0
    )
    assert four["caps"]["frontend CPU"] == pytest.approx(4 * 0.99e6 / 2.0)


def test_runs_end_to_end(capacity, service_json, capsys):
    argv = ["--service-json", str(service_json), "--h200-fd", "10000", "--nic-gbps", "8", "--quantum-layers", "10"]
    assert capacity.main([*argv, "--tokens-per-call", "500", "--trainer-ranks-per-node", "2", "--json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    rows = [o for o in out if "caps" in o]
    assert [(r["method"], r["replicas"], r["path"]) for r in rows] == [
        (m, r, p) for m in ("fd", "adjoint") for r in (1, 8, 64) for p in ("today", "new")
    ]
    verdicts = [o for o in out if "goal_holds" in o]
    assert [(v["method"], v["replicas"]) for v in verdicts] == [("fd", 64), ("adjoint", 64)]
    # fd, 64 replicas of 10,000 on 8 nodes, 8 frontends each (the default): 64 x 0.9e6 / 9 = 6.4M >= 640,000,
    # NICs far above: holds; adjoint (H200's 2,078,490 each): 64 x 0.99e6 / (2 + 2 x 1,000 x 0.001) = 15.84M
    # < 133M: does not
    fd64, adjoint64 = rows[5], rows[11]
    assert fd64["caps"]["frontend CPU"] == pytest.approx(64 * 0.9e6 / 9) and fd64["binds"] == "replicas"
    assert adjoint64["caps"]["frontend CPU"] == pytest.approx(64 * 0.99e6 / 4)
    assert adjoint64["binds"] == "frontend CPU"
    assert [v["goal_holds"] for v in verdicts] == [True, False]
    # the 64 trainer ranks ask 64 x 68,164 x 10 = 43.6M adjoint layer-tokens/s, under the replicas' 133M: the
    # frontends' 15.84M route 0.36x of it; what fd's replicas compute (640,000) the trainers can use whole
    assert [v["routes_asked"] for v in verdicts] == [True, False]
    assert "the routing caps allow 0.36x what the trainers can use, which they do NOT route" in verdicts[1]["text"]
    assert out[0]["inputs"]["replica_layer_tokens_per_s"]["fd"][0] == 10_000.0
    assert capacity.main(argv) == 0  # the table
    text = capsys.readouterr().out
    assert "frontend CPU" in text and "The goal HOLDS" in text and "The goal does NOT hold" in text
    with pytest.raises(SystemExit):  # refused by name
        capacity.main([*argv, "--frontends-per-node", "0"])
    assert "--frontends-per-node 0" in capsys.readouterr().err


def test_h200_plans_take_the_frontend_measured_at_an_h200s_pace(capacity, tmp_path, capsys):
    """bench/service.py's H200-paced path makes PACED_CALLS calls a round, its figures per call and
    no ratio to in-process; a plan for H200 replicas takes the new path's frontend from it, a plan
    for CPU replicas from the kept paths at a CPU replica's pace."""
    service = load("service")
    wire, n = [0.0], 1000
    service.wire_bytes = lambda: wire[0]

    def path(cpu_us: float, seconds: float):
        server = FakeServer()

        def run(what: str) -> float:
            if what == "one":
                server.cpu, server.calls = server.cpu + 1e-3, server.calls + 1
                return 0.001
            server.cpu, server.calls = server.cpu + cpu_us * n / 1e6, server.calls + 2
            wire[0] += 240 * n
            return seconds

        return run, server

    paths = {"in-process": (lambda what: 0.5, None), DENSE: path(50.0, 2.0), KEPT1: path(4.0, 1.0),
             KEPT2: path(5.0, 1.0), PACED: path(3.0, 0.02)}  # fmt: skip
    quiet = dict.fromkeys(list(paths)[1:], 0.0)
    rows = [service.measure(paths, m, n, rounds=1, quiet=quiet) for m in ("fd", "adjoint")]
    rows.append(service.overhead(paths, rounds=1, quiet=quiet))
    del sys.modules["service"]
    fd = rows[0]
    assert PACED not in fd["ratio"] and set(fd["ratio"]) == set(paths) - {PACED}
    assert fd["token_circuits_per_s"][PACED] == pytest.approx(n * 122 / 0.02)  # per call, its pace
    assert fd["frontend_cpu_us_per_token"][PACED] == pytest.approx(3.0) and fd["bytes_per_token"][PACED] == 240
    assert fd["service_cpu_ms_per_request"][PACED] == pytest.approx(3.0 * n / 1e3 / 2)  # two requests a call
    # its calls: (1 + rounds) x PACED_CALLS a method, two requests each, then the one-token blocks of 26
    assert paths[PACED][1].calls == 2 * 2 * service.PACED_CALLS * 2 + 2 * 26
    (f := tmp_path / "service.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = capacity.read_service_json(str(f))["fd"]
    assert (m.new.cpu_us, m.paced.cpu_us, m.paced.source) == (5.0, pytest.approx(3.0), PACED)
    assert m.at_pace_of("h200").new == m.paced and m.at_pace_of("cpu").new == m.new
    assert capacity.main(["--service-json", str(f), "--methods", "fd"]) == 0
    assert f"u(T) kept ({PACED})" in capsys.readouterr().out
    assert capacity.main(["--service-json", str(f), "--methods", "fd", "--replica", "cpu"]) == 0
    assert f"u(T) kept ({KEPT1} / {KEPT2})" in capsys.readouterr().out


def test_h200_figures_are_docs_performance(capacity):
    """The H200 rates it defaults to are the ones docs/performance.md reports (fd's is shift's, said so)."""
    table = (ROOT / "docs" / "performance.md").read_text()
    for method in ("adjoint", "shift"):
        rate, source = capacity.H200[method]
        assert f"| 1,048,576 | {rate:,.0f} token-circuits/s" in table, method
    assert capacity.H200["fd"][0] == capacity.H200["shift"][0] and "shift" in capacity.H200["fd"][1]
    assert f"| {capacity.TRAINER_TOKENS_PER_S[0]:,.0f} tokens/s |" in table
