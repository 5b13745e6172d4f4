"""The wire contract from a second language: tests/js/client.js (Node.js, @grpc/grpc-js, the .proto
loaded at run time, tensors packed by hand) against a real qworker server on 127.0.0.1. Its
answers must equal the Python `local` backend's and, for basis-state inputs, the analytic ones;
a token server must refuse it UNAUTHENTICATED (16) without the right token.

The JS dependencies are pinned in tests/js/package.json and package-lock.json; when
tests/js/node_modules is missing or holds other versions, `npm ci` installs them (once)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
import torch
from test_service import start  # a started in-process server, once health says SERVING

from qworker import CircuitSpec, get_backend
from qworker.circuit import VERSION as CIRCUIT_VERSION
from qworker.server.service import ServerConfig

ROOT = Path(__file__).resolve().parents[1]
JS = ROOT / "tests" / "js"
NPM_TIMEOUT_S = 300
CLIENT_TIMEOUT_S = 60
TOKEN = "js-s3cret"
SPEC = CircuitSpec(2, 1, "ring")  # what client.js asks for
# client.js's first four rows put the qubits in basis states (b0, b1) = (0,0), (1,0), (0,1), (1,1);
# the ring's CNOTs 0->1, 1->0 map them to (b1, b0 ^ b1), read out as <Z_i> = 1 - 2 b_i
ANALYTIC = [[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]  # 16


def installed_js_versions() -> dict[str, str | None]:
    """The version in tests/js/node_modules of every dependency pinned in tests/js/package.json."""
    pinned = json.loads((JS / "package.json").read_text())["dependencies"]
    found = {}
    for name in pinned:
        manifest = JS / "node_modules" / name / "package.json"
        found[name] = json.loads(manifest.read_text())["version"] if manifest.exists() else None
    return found


@pytest.fixture(scope="module")
def node() -> str:
    """The node executable, with the pinned JS dependencies installed (by `npm ci` if need be)."""
    exe = shutil.which("node")
    if exe is None:
        pytest.fail("`node` is not on PATH: this test needs Node.js >= 18 (and npm) to run tests/js/client.js")
    pinned = json.loads((JS / "package.json").read_text())["dependencies"]
    if installed_js_versions() != pinned:
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(
                "tests/js/node_modules is missing and `npm` is not on PATH to install it (npm ci --prefix tests/js)"
            )
        cmd = [npm, "ci", "--prefix", str(JS), "--no-audit", "--no-fund"]
        try:
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"`npm ci --prefix tests/js` took over {NPM_TIMEOUT_S} s (is the npm registry reachable?)")
        if done.returncode != 0:
            pytest.fail(
                f"`npm ci --prefix tests/js` failed (exit {done.returncode}); it installs the JS client's pinned "
                f"dependencies from the npm registry (or its cache):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
            )
        assert installed_js_versions() == pinned, f"npm ci installed {installed_js_versions()}, expected {pinned}"
    return exe


@pytest.fixture(scope="module")
def open_server():
    server, port = start()
    yield port
    server.stop(1)


@pytest.fixture(scope="module")
def token_server():
    server, port = start(token=TOKEN)
    yield port
    server.stop(1)


def run_client(node: str, port: int, token: str | None = None) -> tuple[int, dict]:
    """Run client.js against 127.0.0.1:port (the token through $HYQUT_TOKEN); its exit code and report."""
    env = {k: v for k, v in os.environ.items() if k != "HYQUT_TOKEN"}
    if token is not None:
        env["HYQUT_TOKEN"] = token
    done = subprocess.run(
        [node, str(JS / "client.js"), f"127.0.0.1:{port}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=CLIENT_TIMEOUT_S,
    )
    assert done.returncode in (0, 3), f"client.js crashed (exit {done.returncode}):\n{done.stderr}"
    try:
        return done.returncode, json.loads(done.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"client.js printed no JSON report:\nstdout: {done.stdout!r}\nstderr: {done.stderr}")


def test_js_client_matches_the_python_simulator(node, open_server):
    code, report = run_client(node, open_server)
    assert code == 0 and report["ok"], report
    assert report["health"] == {"": "SERVING", "hyqut.qworker.v1.QWorker": "SERVING"}

    info = report["info"]
    assert info["proto_version"] == 1
    assert info["circuit_version"] == CIRCUIT_VERSION
    assert {"qulacs", "local", "shots"} <= {b["name"] for b in info["backends"]}
    assert info["limits"]["max_message_bytes"] == ServerConfig().limits.max_message_bytes  # a uint64, decoded in JS

    ev = report["evaluate"]
    assert ev["circuit"] == {"n_qubits": 2, "n_layers": 1, "entangler": "ring", "version": CIRCUIT_VERSION}
    z = ev["expectations"]
    assert z["dtype"] == "DTYPE_FLOAT32"
    assert z["shape"] == [len(ev["angles"]), SPEC.n_qubits]

    js = torch.tensor(z["values"], dtype=torch.float32)  # (N, 2)
    angles = torch.tensor(ev["angles"], dtype=torch.float32)  # (N, 4): the float32 values client.js packed
    theta = torch.zeros(SPEC.n_params, dtype=torch.float32)  # (4,)
    expected = get_backend("local").expectations(SPEC, theta, angles)
    torch.testing.assert_close(js, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(js[: len(ANALYTIC)], torch.tensor(ANALYTIC), rtol=0, atol=1e-5)
    assert (js[len(ANALYTIC) :].abs() < 0.99).all(), "the generic rows should not be basis states"


@pytest.mark.parametrize("token", [None, "not-the-token"], ids=["missing", "wrong"])
def test_js_client_without_the_token_is_unauthenticated(node, token_server, token):
    code, report = run_client(node, token_server, token)
    assert code == 3 and not report["ok"]
    assert report["health"][""] == "SERVING", "health stays open to probes without a token"
    for answer in (report["info"], report["evaluate"]):
        assert answer["error"]["code"] == UNAUTHENTICATED, answer
        assert answer["error"]["name"] == "UNAUTHENTICATED"
    assert ("missing token" if token is None else "wrong token") in report["info"]["error"]["details"]


def test_js_client_with_the_token(node, token_server):
    code, report = run_client(node, token_server, TOKEN)
    assert code == 0 and report["ok"], report
    assert report["token_sent"]
    torch.testing.assert_close(
        torch.tensor(report["evaluate"]["expectations"]["values"][: len(ANALYTIC)]),
        torch.tensor(ANALYTIC),
        rtol=0,
        atol=1e-5,
    )
