"""Conversion between torch tensors / Evaluations and the wire messages (proto/), both ways.

Decoding trusts nothing: every problem raises `WireError` (a ValueError naming the field, hence
INVALID_ARGUMENT) or `OverLimitError` (RESOURCE_EXHAUSTED); bad bytes never reach a simulator.

    msg = encode_tensor(torch.zeros(4, 20))            # Tensor(shape=[4, 20], dtype=FLOAT32, data=...)
    decode_tensor(msg, "angles").shape                 # torch.Size([4, 20])
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from qworker.circuit import CircuitSpec
from qworker.evaluation import Evaluation, Result
from qworker.gradients import Gradient
from qworker.validation import check_batch
from qworker.wire import qworker_pb2 as pb

DTYPES = {  # wire dtype -> (torch dtype, numpy little-endian dtype)
    pb.DTYPE_FLOAT32: (torch.float32, np.dtype("<f4")),
    pb.DTYPE_FLOAT64: (torch.float64, np.dtype("<f8")),
}
WIRE_DTYPE = {torch_dtype: wire for wire, (torch_dtype, _) in DTYPES.items()}
WANT = {pb.WANT_EXPECTATIONS: "expectations", pb.WANT_JACOBIANS: "jacobians", pb.WANT_VJP: "vjp"}
WANT_WIRE = {name: wire for wire, name in WANT.items()}
MAX_DIMS = 3  # no tensor of the contract has more
BACKEND_OPTIONS = ("shots", "seed", "readout_error", "depolarizing")
ENVELOPE_BYTES = 4096  # headroom for everything in a message but tensor data


class WireError(ValueError):
    """A request field that cannot be decoded or evaluated; the message starts with the field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class OverLimitError(Exception):
    """A request over one of the server's limits (RESOURCE_EXHAUSTED)."""


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a server (InfoResponse.limits)."""

    max_qubits: int = 20
    max_layers: int = 64
    max_message_bytes: int = 64 * 2**20
    max_tokens_per_request: int = 65536
    max_shots: int = 2**20
    max_circuits_per_request: int = 2**24  # N x evaluations per token: bounds a request's compute


def encode_tensor(t: Tensor) -> pb.Tensor:
    """A float32/float64 tensor (any device) -> its wire message: shape, dtype, little-endian bytes."""
    if t.dtype not in WIRE_DTYPE:
        raise ValueError(f"only float32 and float64 tensors go on the wire, got {t.dtype}")
    array = t.detach().cpu().contiguous().numpy().astype(DTYPES[WIRE_DTYPE[t.dtype]][1], copy=False)
    return pb.Tensor(shape=list(t.shape), dtype=WIRE_DTYPE[t.dtype], data=array.tobytes())


def decode_tensor(msg: pb.Tensor, field: str, max_elements: int | None = None) -> Tensor:
    """A wire tensor -> a CPU torch tensor, after checking dtype, shape, byte length and size."""
    if msg.dtype not in DTYPES:
        raise WireError(f"{field}.dtype", f"unknown dtype {msg.dtype}; send DTYPE_FLOAT32 or DTYPE_FLOAT64")
    shape = tuple(msg.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise WireError(f"{field}.shape", f"{list(shape)} is not a shape of at most {MAX_DIMS} sizes >= 0")
    numel = math.prod(shape)
    if max_elements is not None and numel > max_elements:
        raise OverLimitError(f"{field}: {numel} elements exceed the limit of {max_elements} for this request")
    torch_dtype, np_dtype = DTYPES[msg.dtype]
    if len(msg.data) != numel * np_dtype.itemsize:
        raise WireError(
            f"{field}.data",
            f"shape {list(shape)} of {np_dtype.name} needs {numel * np_dtype.itemsize} bytes, got {len(msg.data)}",
        )
    array = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))
    return torch.from_numpy(array).to(torch_dtype)


def message_bytes_per_token(spec: CircuitSpec, want: str, include_expectations: bool, itemsize: int) -> int:
    """Bytes one token adds to the larger of a request and its response: what bounds a batch."""
    request = spec.n_angles + (spec.n_qubits if want == "vjp" else 0)  # angles (+ grad_out)
    response = {"expectations": 0, "jacobians": spec.n_qubits * (spec.n_params + spec.n_angles), "vjp": spec.n_angles}
    response = response[want] + (spec.n_qubits if want == "expectations" or include_expectations else 0)
    return (max(request, response) + spec.n_params) * itemsize  # + a per-token theta (or its VJP)


def max_tokens(ev: Evaluation, limits: Limits) -> int:
    """The most tokens a request like `ev` may carry within `limits` (>= 1)."""
    spec, itemsize = ev.spec, ev.angles.element_size()
    per_token = message_bytes_per_token(spec, ev.want, ev.include_expectations, itemsize)
    fit = (limits.max_message_bytes - ENVELOPE_BYTES - spec.n_params * itemsize) // per_token
    circuits = limits.max_circuits_per_request // ev.circuits_per_token
    return max(1, min(limits.max_tokens_per_request, fit, circuits))


def to_evaluation(req: pb.EvaluateRequest, limits: Limits) -> Evaluation:
    """Decode and check a whole request; raises WireError, ValueError or OverLimitError."""
    spec = _spec(req, limits)
    want = WANT.get(req.want)
    if want is None:
        raise WireError("want", f"unknown value {req.want}; send WANT_EXPECTATIONS, WANT_JACOBIANS or WANT_VJP")
    for field, what in (("angles", "(N, 2 n_qubits) input angles"), ("theta", "(|theta|,) trainable angles")):
        if not req.HasField(field):
            raise WireError(field, f"required: the {what}")
    cap = limits.max_tokens_per_request * max(spec.n_angles, spec.n_params, spec.n_qubits)
    angles = decode_tensor(req.angles, "angles", cap)
    if angles.dim() == 2 and angles.shape[0] > limits.max_tokens_per_request:
        raise OverLimitError(
            f"angles: {angles.shape[0]} tokens exceed max_tokens_per_request={limits.max_tokens_per_request}; "
            "split the batch"
        )
    theta = decode_tensor(req.theta, "theta", cap).to(angles.dtype)
    grad_out = None
    if want == "vjp":
        if not req.HasField("grad_out"):
            raise WireError("grad_out", "required with WANT_VJP: the (N, n_qubits) upstream gradient")
        grad_out = decode_tensor(req.grad_out, "grad_out", cap).to(angles.dtype)
    elif req.HasField("grad_out"):
        raise WireError("grad_out", "is only read with WANT_VJP; leave it unset")
    check_batch(spec, theta, angles, grad_out)  # CircuitInputError names theta / angles / grad_out
    options = {k: getattr(req.backend, k) for k in BACKEND_OPTIONS if req.backend.HasField(k)}
    grad = _gradient(req) if want != "expectations" else None
    ev = Evaluation(spec, req.backend.name, theta, angles, want, grad, grad_out, req.include_expectations, options)
    _check_limits(ev, limits)
    return ev


def _check_limits(ev: Evaluation, limits: Limits) -> None:
    if ev.options.get("shots", 0) > limits.max_shots:
        raise OverLimitError(f"backend.shots: {ev.options['shots']} is over this server's max_shots={limits.max_shots}")
    most = max_tokens(ev, limits)
    if ev.n_tokens > most or ev.token_circuits > limits.max_circuits_per_request:
        raise OverLimitError(
            f"angles: {ev.n_tokens} tokens x {ev.circuits_per_token} circuit(s) each is over this server's limits "
            f"(max_message_bytes={limits.max_message_bytes}, max_circuits_per_request="
            f"{limits.max_circuits_per_request}); send at most {most} tokens a request"
        )


def _spec(req: pb.EvaluateRequest, limits: Limits) -> CircuitSpec:
    if not req.HasField("circuit"):
        raise WireError("circuit", "required: n_qubits, n_layers, entangler and version")
    c = req.circuit
    try:
        spec = CircuitSpec(c.n_qubits, c.n_layers, c.entangler, c.version)
    except ValueError as e:
        raise WireError("circuit", str(e)) from None
    for field, value, most in (
        ("n_qubits", c.n_qubits, limits.max_qubits),
        ("n_layers", c.n_layers, limits.max_layers),
    ):
        if value > most:
            raise OverLimitError(f"circuit.{field}: {value} is over this server's max_{field[2:]}={most}")
    if not req.HasField("backend") or not req.backend.name:
        raise WireError("backend.name", "required: a backend from Info (e.g. qulacs)")
    return spec


def _gradient(req: pb.EvaluateRequest) -> Gradient:
    g = req.gradient
    if not g.method:
        raise WireError("gradient.method", f"required with {pb.Want.Name(req.want)}: adjoint, shift, fd or spsa")
    settings = {k: getattr(g, k) for k in ("delta", "samples", "seed") if g.HasField(k)}
    try:
        return Gradient(g.method, **settings)
    except ValueError as e:
        raise WireError("gradient", str(e)) from None


def to_request(ev: Evaluation) -> pb.EvaluateRequest:
    """The wire request for an Evaluation (the client's side of `to_evaluation`)."""
    s = ev.spec
    req = pb.EvaluateRequest(
        circuit=pb.Circuit(n_qubits=s.n_qubits, n_layers=s.n_layers, entangler=s.entangler, version=s.version),
        backend=pb.Backend(name=ev.backend, **ev.options),
        theta=encode_tensor(ev.theta.to(ev.angles.dtype)),
        angles=encode_tensor(ev.angles),
        want=WANT_WIRE[ev.want],
        include_expectations=ev.include_expectations,
    )
    if ev.grad is not None:
        g = ev.grad
        req.gradient.CopyFrom(pb.Gradient(method=g.method, delta=g.delta, samples=g.samples, seed=g.seed))
    if ev.grad_out is not None:
        req.grad_out.CopyFrom(encode_tensor(ev.grad_out.to(ev.angles.dtype)))
    return req


def to_response(result: Result) -> pb.EvaluateResponse:
    """The wire response for a Result."""
    resp = pb.EvaluateResponse(compute_seconds=result.compute_seconds)
    if result.expectations is not None:
        resp.expectations.CopyFrom(encode_tensor(result.expectations))
    if result.jacobians is not None:
        resp.jacobian_theta.CopyFrom(encode_tensor(result.jacobians[0]))
        resp.jacobian_angles.CopyFrom(encode_tensor(result.jacobians[1]))
    if result.vjp is not None:
        resp.vjp_theta.CopyFrom(encode_tensor(result.vjp[0]))
        resp.vjp_angles.CopyFrom(encode_tensor(result.vjp[1]))
    return resp


def to_result(resp: pb.EvaluateResponse) -> Result:
    """A Result from a wire response (the client's side of `to_response`)."""

    def get(name: str) -> Tensor | None:
        return decode_tensor(getattr(resp, name), name) if resp.HasField(name) else None

    jac = (get("jacobian_theta"), get("jacobian_angles")) if resp.HasField("jacobian_theta") else None
    vjp = (get("vjp_theta"), get("vjp_angles")) if resp.HasField("vjp_theta") else None
    return Result(get("expectations"), jac, vjp, resp.compute_seconds)
