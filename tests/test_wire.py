"""The wire contract: generated stubs up to date, tensors and requests through the wire and back,
and a decoder that only ever raises the errors the service maps to status codes."""

import importlib.util
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import torch
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qworker import CircuitSpec, Gradient
from qworker.protocol.convert import check_request, decode_tensor, encode_tensor, to_evaluation, to_request
from qworker.protocol.errors import OverLimitError, WireError, status_for
from qworker.protocol.evaluation import SHOT_WORK, Evaluation
from qworker.protocol.limits import Limits, max_tokens
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.server.replica import Replica

ROOT = Path(__file__).resolve().parents[1]


def load_generator():
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stubs_are_current():
    run = subprocess.run([sys.executable, "proto/generate.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, f"stale stubs: run `python proto/generate.py`\n{run.stderr[-2000:]}"


def test_check_notices_a_changed_stub():
    gen = load_generator()
    files = gen.generate()
    assert gen.stale(files) == []
    files["qworker_pb2.py"] += "# edited by hand\n"
    assert gen.stale(files), "a hand edit must make the check fail"
    assert "from qworker.protocol.wire import qworker_pb2" in files["qworker_pb2_grpc.py"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(), (0,), (5,), (0, 20), (3, 20), (2, 3, 4)])
def test_tensor_round_trip_is_bit_exact(dtype, shape):
    t = torch.randn(shape, dtype=dtype)
    if t.numel() > 2:
        t.view(-1)[:3] = torch.tensor([math.nan, math.inf, -0.0], dtype=dtype)  # bits survive too
    msg = pb.Tensor.FromString(encode_tensor(t).SerializeToString())
    back = decode_tensor(msg, "x")
    assert back.dtype == dtype and back.shape == t.shape
    assert back.numpy().tobytes() == t.numpy().tobytes()
    back.add_(1)  # decoded tensors own writable memory


def test_encode_takes_non_contiguous_tensors():
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).T
    torch.testing.assert_close(decode_tensor(encode_tensor(t), "x"), t, rtol=0, atol=0)


@pytest.mark.parametrize(
    "msg, field, words",
    [
        (pb.Tensor(shape=[2], dtype=7, data=bytes(8)), "x.dtype", "unknown dtype 7"),
        (pb.Tensor(shape=[-1, 2], data=b""), "x.shape", ">= 0"),
        (pb.Tensor(shape=[1, 1, 1, 1], data=bytes(4)), "x.shape", "at most 3"),
        (pb.Tensor(shape=[2, 3], data=bytes(23)), "x.data", "needs 24 bytes, got 23"),
        (pb.Tensor(shape=[2, 3], dtype=pb.DTYPE_FLOAT64, data=bytes(24)), "x.data", "needs 48 bytes"),
        (pb.Tensor(shape=[2**40, 2**40], data=b""), "x.data", "bytes, got 0"),  # no allocation
    ],
)
def test_decode_errors_name_the_field(msg, field, words):
    with pytest.raises(WireError) as e:
        decode_tensor(msg, "x")
    assert e.value.field == field and str(e.value).startswith(field) and words in str(e.value)


def test_a_request_over_the_token_limit_is_refused_from_its_header():
    req = to_request(evaluation(want="expectations", n=100))
    with pytest.raises(OverLimitError, match="100 tokens exceed max_tokens_per_request=99"):
        check_request(req, Limits(max_tokens_per_request=99))
    req.angles.data = b""  # a shape that claims more than it carries: refused before any decoding
    with pytest.raises(WireError, match="angles.data: shape \\[100, 6\\] of float32 needs 2400 bytes, got 0"):
        check_request(req, Limits())


SPEC = CircuitSpec(3, 2, "chain")


def evaluation(dtype=torch.float32, want="vjp", n=6, spec=SPEC) -> Evaluation:
    g = torch.Generator().manual_seed(0)
    theta = torch.rand(spec.n_params, generator=g, dtype=dtype)
    angles = torch.rand(n, spec.n_angles, generator=g, dtype=dtype)
    grad = Gradient("spsa", delta=0.05, samples=3, seed=7) if want != "expectations" else None
    grad_out = torch.rand(n, spec.n_qubits, generator=g, dtype=dtype) if want == "vjp" else None
    return Evaluation.of(spec, "shots", theta, angles, want, grad, grad_out, True, {"shots": 100, "seed": 3})


@pytest.mark.parametrize("want", ["expectations", "jacobians", "vjp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_request_round_trip(want, dtype):
    ev = evaluation(dtype, want)
    req = pb.EvaluateRequest.FromString(to_request(ev).SerializeToString())
    # 6 tokens: one circuit each for expectations; spsa's forward and both sides of its 3 directions
    circuits = {"expectations": 6 * 1, "jacobians": 6 * (1 + 2 * 3), "vjp": 6 * (1 + 2 * 3)}[want]
    assert check_request(req, Limits()).token_circuits == ev.header.token_circuits == circuits
    back = to_evaluation(req)
    assert back.header == ev.header and back.header.want == want
    for name in ("theta", "angles", "grad_out"):
        a, b = getattr(ev, name), getattr(back, name)
        assert (a is None and b is None) or (b.dtype == dtype and torch.equal(a, b)), name


def test_max_tokens_fits_the_limits():
    ev = evaluation(want="jacobians", n=1000)
    limits = Limits(max_message_bytes=2**20, max_tokens_per_request=500, max_work_per_request=10**6)
    h = ev.header
    fit = lambda limits: max_tokens(h, limits)  # noqa: E731
    # a token of this request is 1 + 2 x 3 spsa circuits of 3 qubits sampled 100 times: 7 x (2^3 + 100 x
    # SHOT_WORK) amplitude-circuits, and ~0.3 kB
    per_token = 7 * (2**3 + 100 * SHOT_WORK)
    n = fit(limits)
    assert n == 10**6 // per_token < 500  # the most that fit, not merely some: here the work limit binds...
    assert n * h.spec.n_qubits * (h.spec.n_params + h.spec.n_angles) * 4 < 2**20
    assert fit(replace(limits, max_work_per_request=10**8)) == 500  # ...and here the token limit
    assert fit(Limits(max_work_per_request=123 * per_token + 55)) == 123
    assert fit(Limits(max_work_per_request=1)) == 1  # never 0: one token always goes


# -- fuzzing: bad bytes and bad values only ever raise the mapped errors ------------------------

MAPPED = (DecodeError, ValueError, OverLimitError)  # INVALID_ARGUMENT, INVALID_ARGUMENT, RESOURCE_EXHAUSTED
SMALL = Limits(
    max_qubits=6, max_layers=4, max_message_bytes=2**16, max_tokens_per_request=64, max_work_per_request=10**6
)


REPLICA = Replica()


def decode_and_validate(data: bytes) -> None:
    """The path up to the simulator: the server parses and checks the header, the replica decodes,
    checks the values and picks the backend."""
    try:
        req = pb.EvaluateRequest.FromString(data)
        check_request(req, SMALL)
        REPLICA.backend_for(to_evaluation(req))
    except MAPPED as e:
        code, message = status_for(e)
        assert code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED), (code, message)


FUZZ = settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    decode_and_validate(data)


@FUZZ
@given(st.binary(max_size=200), st.integers(0, 2**32 - 1))
def test_fuzz_mutated_valid_request(noise, where):
    good = to_request(evaluation(n=2)).SerializeToString()
    at = where % (len(good) + 1)
    decode_and_validate(good[:at] + noise + good[at + len(noise) // 2 :])


uint32 = st.integers(0, 2**32 - 1)
floats = st.floats(allow_nan=True, allow_infinity=True)
methods = st.sampled_from(["adjoint", "shift", "fd", "spsa", "", "newton"])


def mostly(draw, good, bad: st.SearchStrategy):
    """`good` nine times in ten, else a draw from `bad`: deep paths get reached, edges get hit."""
    return draw(bad) if draw(st.integers(0, 9)) == 9 else good


@st.composite
def tensors(draw, shape: tuple[int, ...]):
    """Mostly well-formed (the right shape; any bits, so NaN and inf too), sometimes anything."""
    shape = mostly(draw, list(shape), st.lists(st.integers(-2, 30), max_size=4))
    dtype = mostly(draw, draw(st.sampled_from([0, 1])), st.integers(2, 2**31 - 1))
    n = math.prod(shape) if all(d >= 0 for d in shape) and math.prod(shape) <= 60 else 0
    size = n * (8 if dtype == 1 else 4)
    good = draw(st.binary(min_size=size, max_size=size))
    if size and draw(st.booleans()):  # plain finite values: past the NaN check, into the limits
        good = encode_tensor(torch.rand(n, dtype=torch.float64 if dtype == 1 else torch.float32)).data
    return pb.Tensor(shape=shape, dtype=dtype, data=mostly(draw, good, st.binary(max_size=64)))


@st.composite
def requests(draw):
    n_q, n_l, n = draw(st.integers(1, 6)), draw(st.integers(0, 4)), draw(st.integers(0, 5))
    circuit = pb.Circuit(
        n_qubits=mostly(draw, n_q, uint32),
        n_layers=mostly(draw, n_l, uint32),
        entangler=mostly(draw, draw(st.sampled_from(["ring", "chain"])), st.text(max_size=5)),
        version=mostly(draw, 1, uint32),
    )
    backend = pb.Backend(
        name=mostly(draw, draw(st.sampled_from(["qulacs", "local", "shots"])), st.text(max_size=12)),
        shots=draw(st.one_of(st.none(), uint32)),
        seed=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
        readout_error=draw(st.one_of(st.none(), floats)),
        depolarizing=draw(st.one_of(st.none(), floats)),
    )
    gradient = pb.Gradient(
        method=draw(methods),
        delta=draw(st.one_of(st.none(), floats)),
        samples=draw(st.one_of(st.none(), uint32)),
        seed=draw(st.one_of(st.none(), st.integers(0, 2**64 - 1))),
    )
    return pb.EvaluateRequest(
        circuit=circuit,
        backend=backend,
        theta=draw(tensors((2 * n_q * n_l,))),
        angles=draw(tensors((n, 2 * n_q))),
        want=mostly(draw, draw(st.sampled_from([0, 1, 2])), st.integers(3, 2**31 - 1)),
        grad_out=draw(st.one_of(st.none(), tensors((n, n_q)))),
        gradient=gradient,
        include_expectations=draw(st.booleans()),
    )


@FUZZ
@given(requests())
def test_fuzz_random_field_values(req):
    decode_and_validate(req.SerializeToString())
