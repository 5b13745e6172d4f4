"""A request cut into shards, and their answers put back together: one place for the client
(which cuts a batch to fit the server's limits) and the server (which cuts a request into work
units that replicas run side by side). Both work on wire messages, in numpy on the request's own
bytes: no tensor is rebuilt in torch.

    units = plan(header)                             # the server's: [Unit(range(0, 128), range(0, 10)), ...]
    units = by_tokens(header.n_tokens, size)         # the client's: token blocks of at most `size`
    requests = pieces(req, header, units)          # an EvaluateRequest a unit
    whole = assemble(header, units, answers)         # the EvaluateResponse of the whole request

A unit is a block of tokens and, for a Jacobian computed by columns (shift, fd), a block of its
columns (the parameters' shifts). The cut depends on the request alone, never on how many
replicas there are, and sums over token blocks (a shared theta's VJP) run in unit order: the same
request gives the same bits whatever the pool's size, through a rescale or a restart
(docs/design.md, "The service").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from qworker.protocol.convert import DTYPES
from qworker.protocol.evaluation import Header, vjp_of
from qworker.protocol.wire import qworker_pb2 as pb

UNIT_WORK = 2**25  # amplitude-circuits a unit aims at (32,768 one-token circuits of 10 qubits, ~1 s of one CPU replica)
UNIT_COMPONENTS = 10  # columns of a shift or fd Jacobian per unit, when its columns are cut
MIN_UNIT_TOKENS = 16
MIN_TOKEN_BLOCKS = 8  # a Jacobian cut into fewer token blocks is cut by columns too


@dataclass(frozen=True)
class Unit:
    tokens: range
    components: range | None = None  # None: all (every request but a cut shift or fd Jacobian)

    @property
    def first(self) -> bool:
        """Whether this unit carries its token block's expectations (the first column block does)."""
        return self.components is None or self.components.start == 0


def plan(header: Header) -> list[Unit]:
    """The units of a request: one when it is small; else token blocks of a power-of-two size
    sized to UNIT_WORK. A Jacobian computed by columns over fewer than MIN_TOKEN_BLOCKS token
    blocks has its columns cut too (blocks of UNIT_COMPONENTS), so that replicas share it; with
    more, a unit takes all of its tokens' columns, and each token's inputs go to one replica."""
    n, spec = header.n_tokens, header.spec
    size = _tokens_per_unit(header.work_per_token)
    if n <= size:
        return [Unit(range(n))]
    tokens = by_tokens(n, size)
    by_columns = header.want != "expectations" and header.grad.rule.columns and header.components is None
    if not by_columns or len(tokens) >= MIN_TOKEN_BLOCKS:
        return tokens
    per_circuit = header.work_per_token // header.circuits_per_token
    per_token = header.grad.rule.evaluations(spec, header.grad, UNIT_COMPONENTS) * per_circuit
    columns = spec.n_params + spec.n_angles
    blocks = [range(k, min(k + UNIT_COMPONENTS, columns)) for k in range(0, columns, UNIT_COMPONENTS)]
    return [Unit(t.tokens, c) for t in by_tokens(n, _tokens_per_unit(per_token)) for c in blocks]


def _tokens_per_unit(work_per_token: int) -> int:
    """Tokens of a unit: a power of two whose work is about UNIT_WORK, at least MIN_UNIT_TOKENS."""
    return max(MIN_UNIT_TOKENS, 2 ** int(math.log2(max(1, UNIT_WORK // work_per_token))))


def by_tokens(n_tokens: int, size: int) -> list[Unit]:
    """Blocks of `size` consecutive tokens (the last may be shorter); one empty unit for no tokens."""
    return [Unit(range(s, min(s + size, n_tokens))) for s in range(0, n_tokens, size)] or [Unit(range(0))]


def pieces(req: pb.EvaluateRequest, header: Header, units: list[Unit]) -> list[pb.EvaluateRequest]:
    """The request of each unit: its rows of angles (and of a per-token theta, of grad_out), its
    columns, the expectations only with its token block's first columns. The request's other
    fields are copied; its tensors' bytes are read once and sliced, each unit copying its rows."""
    rows = [f for f in ("angles", "grad_out", *(("theta",) if header.per_token_theta else ())) if req.HasField(f)]
    template = pb.EvaluateRequest()
    template.CopyFrom(req)
    for field in rows:
        template.ClearField(field)
    tensors = [(field, getattr(req, field), memoryview(getattr(req, field).data)) for field in rows]
    out = []
    for unit in units:
        piece = pb.EvaluateRequest()
        piece.CopyFrom(template)
        for field, src, data in tensors:
            _rows(getattr(piece, field), src, data, unit.tokens)
        if unit.components is not None:
            piece.first_component, piece.n_components = unit.components.start, len(unit.components)
            piece.include_expectations = req.include_expectations and unit.first
        out.append(piece)
    return out


def assemble(header: Header, units: list[Unit], parts: list[pb.EvaluateResponse]) -> pb.EvaluateResponse:
    """The response of the whole request from its units' answers (in unit order)."""
    if len(parts) == 1 and units[0].components is None:
        return parts[0]
    spec, n = header.spec, header.n_tokens
    dtype = DTYPES[pb.DTYPE_FLOAT64 if header.itemsize == 8 else pb.DTYPE_FLOAT32][1]
    out = pb.EvaluateResponse(compute_seconds=sum(p.compute_seconds for p in parts))
    if parts[0].HasField("expectations"):
        z = np.empty((n, spec.n_qubits), dtype)
        for u, p in zip(units, parts):
            if u.first:
                z[u.tokens.start : u.tokens.stop] = _array(p.expectations)
        _put(out.expectations, z)
    if parts[0].HasField("jacobian_theta"):
        j_theta = np.empty((n, spec.n_qubits, spec.n_params), dtype)
        j_angles = np.empty((n, spec.n_qubits, spec.n_angles), dtype)
        for u, p in zip(units, parts):
            rows = slice(u.tokens.start, u.tokens.stop)
            theta_cols, angle_cols = columns(spec, u.components)
            if len(theta_cols):
                j_theta[rows, :, theta_cols.start : theta_cols.stop] = _array(p.jacobian_theta)
            if len(angle_cols):
                j_angles[rows, :, angle_cols.start : angle_cols.stop] = _array(p.jacobian_angles)
        _put(out.jacobian_theta, j_theta)
        _put(out.jacobian_angles, j_angles)
    if parts[0].HasField("vjp_theta"):
        _put_vjp(out, header, units, parts, dtype)
    return out


def _rows(dst: pb.Tensor, src: pb.Tensor, data: memoryview, tokens: range) -> None:
    """dst = rows `tokens` of src (whose bytes are `data`), by slicing them (row-major: a row is
    contiguous)."""
    row = len(data) // src.shape[0] if src.shape[0] else 0
    dst.dtype = src.dtype
    dst.shape[:] = [len(tokens), *src.shape[1:]]
    dst.data = bytes(data[tokens.start * row : tokens.stop * row])


def _array(msg: pb.Tensor) -> np.ndarray:
    return np.frombuffer(msg.data, dtype=DTYPES[msg.dtype][1]).reshape(tuple(msg.shape))


def _put(dst: pb.Tensor, array: np.ndarray) -> None:
    dst.shape[:] = array.shape
    dst.dtype = pb.DTYPE_FLOAT64 if array.dtype.itemsize == 8 else pb.DTYPE_FLOAT32
    dst.data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _put_vjp(out: pb.EvaluateResponse, header: Header, units: list[Unit], parts, dtype) -> None:
    """The VJP of the whole request from its units' answers (`summed`)."""
    pieces = [(u, _array(p.vjp_theta), _array(p.vjp_angles)) for u, p in zip(units, parts)]
    g_theta, g_angles = summed(header, pieces, dtype)
    _put(out.vjp_theta, g_theta)
    _put(out.vjp_angles, g_angles)


def summed(header: Header, pieces, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A request's VJP from its units' (unit, θ part, angles part), in unit order: a shared θ's
    part summed over token blocks from zero in that order (the same bits for any number of
    replicas, and wherever it is done), the rest placed by tokens and columns."""
    spec, n = header.spec, header.n_tokens
    per_token = pieces[0][1].ndim == 2
    g_theta = np.zeros((n, spec.n_params) if per_token else (spec.n_params,), dtype)
    g_angles = np.empty((n, spec.n_angles), dtype)
    for u, t, a in pieces:
        rows = slice(u.tokens.start, u.tokens.stop)
        theta_cols, angle_cols = columns(spec, u.components)
        if per_token:
            g_theta[rows, theta_cols.start : theta_cols.stop] = t
        elif len(theta_cols):
            g_theta[theta_cols.start : theta_cols.stop] += t
        if len(angle_cols):
            g_angles[rows, angle_cols.start : angle_cols.stop] = a
    return g_theta, g_angles


def vjp_by_units(header: Header, j_theta: Tensor, j_angles: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """The VJP of a request's Jacobians, computed as its units would compute and assemble it
    (`plan`, `vjp_of`, `summed`): the same bits whether the units ran on replicas (and kept their
    Jacobians) or one process holds the whole, a server's in-process pool or a client that was
    sent the Jacobians."""
    vjp_header = replace(header, want="vjp", keep_jacobians=False, include_expectations=False, handle="")
    units = plan(vjp_header)
    if len(units) == 1:
        return vjp_of(j_theta, j_angles, grad_out.to(j_theta), header.per_token_theta)
    pieces = []
    for u in units:
        rows = slice(u.tokens.start, u.tokens.stop)
        theta_cols, angle_cols = columns(header.spec, u.components)
        jt = j_theta[rows, :, theta_cols.start : theta_cols.stop]
        ja = j_angles[rows, :, angle_cols.start : angle_cols.stop]
        t, a = vjp_of(jt, ja, grad_out[rows].to(jt), header.per_token_theta)
        pieces.append((u, t.cpu().numpy(), a.cpu().numpy()))
    g_theta, g_angles = summed(vjp_header, pieces, pieces[0][2].dtype)
    return torch.from_numpy(g_theta).to(j_theta.device), torch.from_numpy(g_angles).to(j_theta.device)


def columns(spec, components: range | None) -> tuple[range, range]:
    """A unit's columns of [theta | angles] (all of them if None) as theta's and the angles'."""
    cols = components or range(spec.n_params + spec.n_angles)
    theta_cols = range(cols.start, min(cols.stop, spec.n_params))
    angle_cols = range(max(cols.start, spec.n_params) - spec.n_params, max(cols.stop, spec.n_params) - spec.n_params)
    return theta_cols, angle_cols
