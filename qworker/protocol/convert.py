"""The wire messages (proto/) and the Evaluations and Results they carry, both ways.

A server checks a request from its headers and shapes alone (`check_request`: no tensor data is
decoded) and hands the bytes to a replica, which decodes them (`to_evaluation`), runs them and
encodes the answer (`to_response`); the server returns those bytes as they are. A client builds
requests with `to_request` and reads answers with `to_result`.

Decoding trusts nothing: every problem raises `WireError` (a ValueError naming the field, hence
INVALID_ARGUMENT) or `OverLimitError` (RESOURCE_EXHAUSTED); bad bytes never reach a simulator.

    msg = encode_tensor(torch.zeros(4, 20))            # Tensor(shape=[4, 20], dtype=FLOAT32, data=...)
    decode_tensor(msg, "angles").shape                 # torch.Size([4, 20])
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from qworker.circuit import CircuitSpec
from qworker.gradients import Gradient, names
from qworker.protocol.errors import OverLimitError, WireError
from qworker.protocol.evaluation import Evaluation, Header, Result
from qworker.protocol.limits import Limits, max_tokens
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.validation import CircuitInputError, check_batch, check_values, shape_problems

DTYPES = {  # wire dtype -> (torch dtype, numpy little-endian dtype)
    pb.DTYPE_FLOAT32: (torch.float32, np.dtype("<f4")),
    pb.DTYPE_FLOAT64: (torch.float64, np.dtype("<f8")),
}
WIRE_DTYPE = {torch_dtype: wire for wire, (torch_dtype, _) in DTYPES.items()}
WANT = {pb.WANT_EXPECTATIONS: "expectations", pb.WANT_JACOBIANS: "jacobians", pb.WANT_VJP: "vjp"}
WANT_WIRE = {name: wire for wire, name in WANT.items()}
MAX_DIMS = 3  # no tensor of the contract has more
NAMED_OPTIONS = ("shots", "seed", "readout_error", "depolarizing")  # Backend's own fields, from before `options`
OPTION_KINDS = ((bool, "flag"), (int, "integer"), (float, "number"), (str, "text"))  # bool first: it is an int


def encode_tensor(t: Tensor) -> pb.Tensor:
    """A float32/float64 tensor (any device) -> its wire message: shape, dtype, little-endian bytes."""
    if t.dtype not in WIRE_DTYPE:
        raise ValueError(f"only float32 and float64 tensors go on the wire, got {t.dtype}")
    array = t.detach().cpu().contiguous().numpy().astype(DTYPES[WIRE_DTYPE[t.dtype]][1], copy=False)
    return pb.Tensor(shape=list(t.shape), dtype=WIRE_DTYPE[t.dtype], data=array.tobytes())


def tensor_header(msg: pb.Tensor, field: str) -> tuple[tuple[int, ...], int]:
    """(shape, itemsize) of a wire tensor, after checking its dtype, its shape and that its bytes
    are exactly prod(shape) elements."""
    if msg.dtype not in DTYPES:
        raise WireError(f"{field}.dtype", f"unknown dtype {msg.dtype}; send DTYPE_FLOAT32 or DTYPE_FLOAT64")
    shape = tuple(msg.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise WireError(f"{field}.shape", f"{list(shape)} is not a shape of at most {MAX_DIMS} sizes >= 0")
    itemsize = DTYPES[msg.dtype][1].itemsize
    if len(msg.data) != math.prod(shape) * itemsize:
        raise WireError(
            f"{field}.data",
            f"shape {list(shape)} of {DTYPES[msg.dtype][1].name} needs {math.prod(shape) * itemsize} bytes, "
            f"got {len(msg.data)}",
        )
    return shape, itemsize


def decode_tensor(msg: pb.Tensor, field: str) -> Tensor:
    """A wire tensor -> a CPU torch tensor (its own memory), after `tensor_header`'s checks."""
    shape, _ = tensor_header(msg, field)
    torch_dtype, np_dtype = DTYPES[msg.dtype]
    array = np.frombuffer(msg.data, dtype=np_dtype).reshape(shape).astype(np_dtype.newbyteorder("="))
    return torch.from_numpy(array)


def check_request(req: pb.EvaluateRequest, limits: Limits) -> Header:
    """Check a request from its headers and shapes alone, against `limits`; raises WireError,
    CircuitInputError (shapes) or OverLimitError. Values (NaN, inf) are the replica's to check."""
    c = req.circuit
    for name, value, most in (("n_qubits", c.n_qubits, limits.max_qubits), ("n_layers", c.n_layers, limits.max_layers)):
        if value > most:
            raise OverLimitError(f"circuit.{name}: {value} is over this server's max_{name[2:]}={most}")
    header = read_header(req)
    _check_limits(header, limits)
    return header


def read_header(req: pb.EvaluateRequest) -> Header:
    """The request's Header, after checking its structure and shapes (WireError, CircuitInputError)."""
    spec = _spec(req)
    want = WANT.get(req.want)
    if want is None:
        raise WireError("want", f"unknown value {req.want}; send WANT_EXPECTATIONS, WANT_JACOBIANS or WANT_VJP")
    grad = _gradient(req) if want != "expectations" else None
    _check_resident(req, want, grad)
    inputs = (("angles", "(N, 2 n_qubits) input angles"), ("theta", "(|theta|,) trainable angles"))
    for name, what in inputs:
        if req.handle and req.HasField(name):
            raise WireError(name, "is left out with a handle (the kept Jacobians are of the inputs already sent)")
        if not req.handle and not req.HasField(name):
            raise WireError(name, f"required: the {what}")
    angles = theta = grad_out = None
    if not req.handle:
        angles, itemsize = tensor_header(req.angles, "angles")
        theta, _ = tensor_header(req.theta, "theta")
    if want == "vjp":
        if not req.HasField("grad_out"):
            raise WireError("grad_out", "required with WANT_VJP: the (N, n_qubits) upstream gradient")
        grad_out, out_itemsize = tensor_header(req.grad_out, "grad_out")
        if req.handle:  # the kept tokens are grad_out's rows; results come in its dtype
            angles, itemsize = (grad_out[0] if grad_out else 0, spec.n_angles), out_itemsize
    elif req.HasField("grad_out"):
        raise WireError("grad_out", "is only read with WANT_VJP; leave it unset")
    problems = shape_problems(spec, theta, angles, grad_out)
    if problems:
        raise CircuitInputError("; ".join(problems))
    options = _options(req.backend)
    components = _components(req, spec, want, grad)
    return Header(
        spec, req.backend.name, want, grad, angles[0], itemsize, theta is not None and len(theta) == 2,
        req.include_expectations, options, components, req.keep_jacobians, req.handle,
    )  # fmt: skip


def _check_resident(req: pb.EvaluateRequest, want: str, grad: Gradient | None) -> None:
    """keep_jacobians goes with WANT_JACOBIANS, a handle with WANT_VJP; both by a method that
    computes Jacobians ahead of the upstream gradient (not reverse-mode)."""
    for name, set_, wanted in (("keep_jacobians", req.keep_jacobians, "jacobians"), ("handle", req.handle, "vjp")):
        if set_ and (want != wanted or grad.rule.reverse):
            raise WireError(
                name, f"goes with WANT_{wanted.upper()} by a method that is not reverse-mode (shift, fd, spsa)"
            )


def to_evaluation(req: pb.EvaluateRequest) -> Evaluation:
    """Decode and check a whole request (its structure, shapes and values); the replica's side."""
    header = read_header(req)
    if header.handle:  # the kept Jacobians stand for theta and the angles
        grad_out = decode_tensor(req.grad_out, "grad_out")
        check_values(grad_out, "grad_out")
        return Evaluation(header, None, None, grad_out)
    angles = decode_tensor(req.angles, "angles")
    theta = decode_tensor(req.theta, "theta")  # its own dtype: the backend computes in the wider
    grad_out = decode_tensor(req.grad_out, "grad_out").to(angles.dtype) if header.want == "vjp" else None
    check_batch(header.spec, theta, angles, grad_out)  # values: NaN, inf
    return Evaluation(header, theta, angles, grad_out)


def _check_limits(header: Header, limits: Limits) -> None:
    if header.options.get("shots", 0) > limits.max_shots:
        raise OverLimitError(
            f"backend.shots: {header.options['shots']} is over this server's max_shots={limits.max_shots}"
        )
    if header.n_tokens > limits.max_tokens_per_request:
        raise OverLimitError(
            f"angles: {header.n_tokens} tokens exceed max_tokens_per_request={limits.max_tokens_per_request}; "
            "split the batch"
        )
    most = max_tokens(header, limits)
    if header.work > limits.max_work_per_request:
        seconds = limits.max_request_seconds * header.work / limits.max_work_per_request
        raise OverLimitError(
            f"angles: {header.n_tokens} tokens x {header.circuits_per_token} circuit(s) of {header.spec.n_qubits} "
            f"qubits is about {seconds:.3g} s of a replica's time, over this server's max_request_seconds="
            f"{limits.max_request_seconds:g}; send at most {most} tokens a request"
        )
    if header.n_tokens > most:
        raise OverLimitError(
            f"angles: {header.n_tokens} tokens x {header.circuits_per_token} circuit(s) each do not fit "
            f"max_message_bytes={limits.max_message_bytes}; send at most {most} tokens a request"
        )


def _spec(req: pb.EvaluateRequest) -> CircuitSpec:
    if not req.HasField("circuit"):
        raise WireError("circuit", "required: n_qubits, n_layers, entangler and version")
    c = req.circuit
    try:
        spec = CircuitSpec(c.n_qubits, c.n_layers, c.entangler, c.version)
    except ValueError as e:
        raise WireError("circuit", str(e)) from None
    if not req.HasField("backend") or not req.backend.name:
        raise WireError("backend.name", "required: a backend from Info (e.g. qulacs)")
    return spec


def _options(backend: pb.Backend) -> dict:
    """The backend's options by name, from `options` and the older named fields."""
    options = {k: getattr(backend, k) for k in NAMED_OPTIONS if backend.HasField(k)}
    for name, value in backend.options.items():
        if name in options:
            raise WireError(f"backend.options[{name!r}]", "given twice (also as backend.{name}); send it once")
        kind = value.WhichOneof("value")
        if kind is None:
            raise WireError(f"backend.options[{name!r}]", "has no value")
        options[name] = getattr(value, kind)
    return options


def encode_options(options: dict) -> dict[str, pb.OptionValue]:
    """Backend options (bool, int, float or str values; None: left out) as the wire's `Backend.options` map."""
    out = {}
    for name, value in options.items():
        if value is None:
            continue
        kind = next((k for t, k in OPTION_KINDS if isinstance(value, t)), None)
        if kind is None:
            raise ValueError(f"backend option {name}={value!r}: only bool, int, float and str values go on the wire")
        out[name] = pb.OptionValue(**{kind: value})
    return out


def _components(req: pb.EvaluateRequest, spec: CircuitSpec, want: str, grad: Gradient | None) -> range | None:
    if not (req.HasField("first_component") or req.HasField("n_components")):
        return None
    total = spec.n_params + spec.n_angles
    first, n = req.first_component, req.n_components if req.HasField("n_components") else total
    if want == "expectations" or not grad.rule.columns:
        raise WireError(
            "first_component",
            "a range of Jacobian columns goes with WANT_JACOBIANS or WANT_VJP by a method computed by columns",
        )
    if not (n >= 1 and first + n <= total):
        raise WireError("n_components", f"columns {first}..{first + n - 1} are not within the {total} parameters")
    return range(first, first + n)


def _gradient(req: pb.EvaluateRequest) -> Gradient:
    g = req.gradient
    if not g.method:
        raise WireError("gradient.method", f"required with {pb.Want.Name(req.want)}: one of {', '.join(names())}")
    settings = {k: getattr(g, k) for k in ("delta", "samples", "seed") if g.HasField(k)}
    try:
        return Gradient(g.method, **settings)
    except ValueError as e:
        raise WireError("gradient", str(e)) from None


def to_request(ev: Evaluation) -> pb.EvaluateRequest:
    """The wire request for an Evaluation (the client's side of `to_evaluation`)."""
    h, s = ev.header, ev.header.spec
    req = pb.EvaluateRequest(
        circuit=pb.Circuit(n_qubits=s.n_qubits, n_layers=s.n_layers, entangler=s.entangler, version=s.version),
        backend=pb.Backend(name=h.backend, options=encode_options(h.options)),
        want=WANT_WIRE[h.want],
        include_expectations=h.include_expectations,
        keep_jacobians=h.keep_jacobians,
        handle=h.handle,
    )
    if not h.handle:
        req.theta.CopyFrom(encode_tensor(ev.theta))
        req.angles.CopyFrom(encode_tensor(ev.angles))
    if h.grad is not None:
        g = h.grad
        req.gradient.CopyFrom(pb.Gradient(method=g.method, delta=g.delta, samples=g.samples, seed=g.seed))
    if ev.grad_out is not None:
        req.grad_out.CopyFrom(encode_tensor(ev.grad_out if h.handle else ev.grad_out.to(ev.angles.dtype)))
    if h.components is not None:
        req.first_component, req.n_components = h.components.start, len(h.components)
    return req


def to_response(result: Result) -> pb.EvaluateResponse:
    """The wire response for a Result."""
    resp = pb.EvaluateResponse(compute_seconds=result.compute_seconds, handle=result.handle)
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
    return Result(get("expectations"), jac, vjp, resp.compute_seconds, resp.handle)
