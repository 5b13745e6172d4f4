"""`local`: batched statevector simulation in torch (CPU or CUDA), exact autograd gradients.

Why it is fast (docs/design.md, "The local simulator"): the circuit is compiled once into a few
whole-register steps that act on all tokens of a chunk at once, instead of 80 gates one by one:
- the encoding is a product state: each qubit's 2-vector (real arithmetic), the Kronecker
  products of the high and of the low half of the qubits (2^(n/2) amplitudes each, built for all
  tokens at once), then one register-sized outer product of the two;
- a run of CNOTs is a permutation of basis states: one gather;
- a run of RZ(theta) on distinct qubits is one diagonal phase;
- a run of RY(theta) on distinct qubits is a Kronecker product of real 2x2 matrices: split into
  a high and a low half of the qubits, it is two small real GEMMs (2^hi and 2^lo square) over the
  whole chunk;
- <Z_i> for every i is one GEMM of the probabilities with a +-1 sign table.
The state is kept basis-major as real and imaginary planes, shape (2^n, 2, C) for a chunk of C
tokens: a permutation then gathers whole contiguous rows and every rotation is a real GEMM.
Chunks of tokens stay in cache. Gradients: autograd for the small per-step matrices and the
product state's two factors; the register-sized steps, that outer product included, have a
hand-written backward (`_Register`).

On CUDA, where `fused.covers` the evaluation (triton importable, up to fused.MAX_QUBITS qubits,
float32), `expectations` and `shifted` run fused Triton kernels instead (`qworker/backends/fused.py`):
the whole circuit in one launch, each token's register on chip. Everything else is this module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import lru_cache

import torch
from torch import Tensor

from qworker import deadline
from qworker.backends import fused
from qworker.backends.base import Backend, promoted
from qworker.backends.memory import check_memory
from qworker.circuit import CircuitSpec, Op
from qworker.gradients import ADJOINT

CHUNK_AMPLITUDES = 2**18  # tokens x 2^n per chunk: measured best on a 2-core CPU (bench/vqc.py)
CUDA_CHUNK_AMPLITUDES = 2**26  # on a GPU: few, large kernels (a float32 register of 512 MB)


def _chunk(n_qubits: int, device: torch.device) -> int:
    """Tokens per chunk: a chunk's registers stay in cache on a CPU, fill the GPU's cores on CUDA."""
    amplitudes = CUDA_CHUNK_AMPLITUDES if device.type == "cuda" else CHUNK_AMPLITUDES
    return max(1, amplitudes >> n_qubits)


@dataclass
class _Step:
    kind: str  # "perm", "phase", "rot"
    wires: tuple[int, ...] = ()
    theta: tuple[int, ...] = ()
    table: Tensor | None = None  # perm: source index per basis state; phase: +-1 signs (2^n, k)
    inverse: Tensor | None = None  # perm: the inverse permutation


@dataclass
class _Program:
    spec: CircuitSpec
    prefix: list[tuple[str, Tensor | None, Tensor | None]]  # (gate, qubits (None: all), angle index)
    steps: list[_Step] = field(default_factory=list)
    zsign: Tensor | None = None  # (2^n, n): +1 where bit i is 0, -1 where it is 1
    slots: list[int] = field(default_factory=list)  # per step, its first entry in _step_params' list
    encoding: list[Op] = field(default_factory=list)  # the prefix's gates, in order
    flips: list[Tensor] = field(default_factory=list)  # per qubit q, b -> b ^ 2^q


def expectations(spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
    """<Z_i> for every token: angles (N, 2n_q), theta (|Θ|,) shared or (N, |Θ|) per token.
    Returns (N, n_q) in the dtype of `angles`; differentiable by autograd in both inputs."""
    if fused.covers(spec, theta, angles):
        return fused.expectations(spec, theta, angles)
    prog = _program(spec, angles)
    outs = [_Register.apply(*halves, prog, *params) for _, halves, params in _chunks(prog, theta, angles)]
    if not outs:
        return angles.new_zeros((0, spec.n_qubits))
    return torch.cat(outs) if len(outs) > 1 else outs[0]


@torch.no_grad()
def probabilities(spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
    """Basis-state probabilities of every token's final state, (N, 2^n); not differentiable."""
    prog = _program(spec, angles)
    out = angles.new_empty(angles.shape[0], 2**spec.n_qubits)
    for start, halves, params in _chunks(prog, theta, angles):
        x = _evolve(_outer(*halves), prog, params)
        out[start : start + x.shape[-1]] = _norms(x).T
    return out


@torch.no_grad()
def shifted(spec: CircuitSpec, theta: Tensor, angles: Tensor, step: float, components: range, base: bool) -> Tensor:
    """The rows of a shifted batch (`qworker.gradients.Shifts`), exactly: ((base + 2K)·N, n_q), the
    unshifted tokens first if `base`, then for each component k the tokens with k shifted by
    +step, then by -step. Components run over theta, then the input angles.

    No row is run from the start. Every component drives one Pauli rotation G(a) = exp(-i a P/2),
    and G(a + s) = (cos(s/2) - i sin(s/2) P) G(a): the shifted final state is cos(s/2) φ0 -
    i sin(s/2) φ1, with φ0 the unshifted final state and φ1 the rest of the circuit applied to P
    times the state just after that gate (kept from the unshifted run). So one evolution of the
    circuit's suffix per component gives both of its rows:
        <Z_i>(±s) = cos²(s/2) <φ0|Z_i|φ0> + sin²(s/2) <φ1|Z_i|φ1> ± sin(s) Im <φ0|Z_i|φ1>."""
    if fused.covers(spec, theta, angles):
        return fused.shifted(spec, theta, angles, step, components, base)
    prog = _program(spec, angles)
    n, n_params, n_tok = spec.n_qubits, spec.n_params, angles.shape[0]
    out = angles.new_empty(int(base) + 2 * len(components), n_tok, n)
    even_z0, even_z1, odd = math.cos(step / 2) ** 2, math.sin(step / 2) ** 2, math.sin(step)
    sites = _theta_sites(prog)
    chunk = _chunk(n, angles.device)
    shared = _step_params(prog, theta) if theta.dim() == 1 else None
    for start in range(0, n_tok, chunk):
        deadline.check()
        rows = slice(start, start + chunk)
        params = shared if shared is not None else _step_params(prog, theta[rows])
        qubits = _qubit_states(prog, angles[rows]).flip(0)  # (n, 2, C) complex, qubit n-1 first
        kept: list[Tensor] = []
        phi0 = _evolve(_outer(*_halves(qubits)), prog, params, kept)
        z0 = _readout(prog, phi0)
        if base:
            out[0, rows] = z0
        for i, k in enumerate(components):
            deadline.check()  # a component's evolution: at most 1/|components| of a chunk between checks
            if k < n_params:  # theta: the suffix after its step, from the kept state
                j, m, q, pauli = sites[k]
                phi1 = _evolve(_pauli(prog, kept[m], q, pauli), prog, params, first=j + 1)
            else:  # an input angle: its qubit's encoded vector changes, then the whole circuit
                q, mat = _encoding_pauli(prog, angles[rows], k - n_params)
                changed = qubits.clone()
                changed[n - 1 - q] = torch.einsum("cij,jc->ic", mat, qubits[n - 1 - q])
                phi1 = _evolve(_outer(*_halves(changed)), prog, params)
            even, im = even_z0 * z0 + even_z1 * _readout(prog, phi1), odd * _cross(prog, phi0, phi1)
            out[int(base) + 2 * i, rows] = even + im
            out[int(base) + 2 * i + 1, rows] = even - im
    return out.reshape(-1, n)


def _theta_sites(prog: _Program) -> dict[int, tuple[int, int, int, str]]:
    """theta index -> (its step, that step's index among the kept states, its qubit, its Pauli)."""
    sites, m = {}, 0
    for j, step in enumerate(prog.steps):
        if step.kind == "perm":
            continue
        for k, q in zip(step.theta, step.wires):
            sites[k] = (j, m, q, "Z" if step.kind == "phase" else "Y")
        m += 1
    return sites


def _pauli(prog: _Program, x: Tensor, q: int, pauli: str) -> Tensor:
    """Z_q or Y_q applied to planes x (2^n, 2, C)."""
    z = prog.zsign[:, q].view(-1, 1)  # +1 where bit q is 0
    if pauli == "Z":
        return x * z.unsqueeze(1)
    flipped = _permute(x, prog.flips[q])  # x[b ^ 2^q]
    # (Y x)[b] = i t(b) x[b ^ 2^q], t = -1 where bit q is 0, +1 where it is 1
    return torch.stack((z * flipped[:, 1], -z * flipped[:, 0]), 1)


def _encoding_pauli(prog: _Program, angles: Tensor, a: int) -> tuple[int, Tensor]:
    """(qubit q, M) for input angle `a`: M (C, 2, 2) complex takes q's encoded vector to the one
    with the Pauli of a's gate applied just after that gate, A P A^† for A the gates after it."""
    position = next(i for i, op in enumerate(prog.encoding) if op.param == ("angle", a))
    op = prog.encoding[position]
    q = op.wires[0]
    after = [g for g in prog.encoding[position + 1 :] if g.wires == (q,)]
    m = torch.tensor(_PAULI[op.gate], dtype=_complex(angles), device=angles.device).expand(angles.shape[0], 2, 2)
    for g in after:
        u = _gate(g.gate, None if g.param is None else angles[:, g.param[1]], angles)
        m = u @ m @ u.conj().transpose(-1, -2)
    return q, m


_PAULI = {"RY": [[0, -1j], [1j, 0]], "RZ": [[1, 0], [0, -1]]}


def _gate(gate: str, a: Tensor | None, like: Tensor) -> Tensor:
    """The (C, 2, 2) complex matrix of a single-qubit encoding gate (a: its angle per token)."""
    cdtype = _complex(like)
    if a is None:
        return torch.tensor([[1, 1], [1, -1]], dtype=cdtype, device=like.device) / math.sqrt(2)
    c, s = torch.cos(a / 2).to(cdtype), torch.sin(a / 2).to(cdtype)
    zero = torch.zeros_like(c)
    if gate == "RY":
        return torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return torch.stack([torch.stack([c - 1j * s, zero], -1), torch.stack([zero, c + 1j * s], -1)], -2)


def _complex(like: Tensor) -> torch.dtype:
    return torch.complex128 if like.dtype == torch.float64 else torch.complex64


def _readout(prog: _Program, x: Tensor) -> Tensor:
    """<Z_i> of planes x (2^n, 2, C): (C, n)."""
    return (prog.zsign.T @ _norms(x)).T


def _cross(prog: _Program, a: Tensor, b: Tensor) -> Tensor:
    """Im <a|Z_i|b> of planes a, b (2^n, 2, C): (C, n)."""
    return (prog.zsign.T @ torch.mul(a[:, 0], b[:, 1]).addcmul_(a[:, 1], b[:, 0], value=-1)).T


def _program(spec: CircuitSpec, angles: Tensor) -> _Program:
    """The compiled circuit, after checking that a chunk's registers and the basis tables (about
    2n registers' worth) fit in memory (the GPU's, on CUDA)."""
    chunk = min(_chunk(spec.n_qubits, angles.device), max(1, angles.shape[0]))
    free = torch.cuda.mem_get_info(angles.device)[0] if angles.is_cuda else None
    check_memory(spec, 6 * chunk + 2 * spec.n_qubits, 2 * angles.element_size(), free)
    return _compile(spec, angles.device, angles.dtype)


def _chunks(prog: _Program, theta: Tensor, angles: Tensor):
    """(first token, the encoded state's two factors (`_encoded_halves`), step params) for each
    chunk of tokens. The factors are built for all tokens at once: many small ops, better not
    repeated per chunk; `split` views them per chunk and gathers their gradients with one cat."""
    chunk = _chunk(prog.spec.n_qubits, angles.device)
    shared = _step_params(prog, theta) if theta.dim() == 1 else None  # once for all chunks
    halves = zip(*(h.split(chunk, -1) for h in _encoded_halves(prog, angles)))
    for start, (hi, lo) in zip(range(0, angles.shape[0], chunk), halves):
        deadline.check()
        params = shared if shared is not None else _step_params(prog, theta[start : start + chunk])
        yield start, (hi, lo), params


def _step_params(prog: _Program, theta: Tensor) -> list[Tensor | None]:
    """The small tensors each step needs, built from theta by autograd: a phase step's angle per
    basis state (2^n, 1) or (2^n, C); a rotation step's R_hi and R_lo, (k, k) or (C, k, k)."""
    n = prog.spec.n_qubits
    lo = n - n // 2
    params: list[Tensor | None] = []
    for step in prog.steps:
        if step.kind == "phase":
            ang = -0.5 * (theta[..., list(step.theta)] @ step.table.T)  # (2^n,) or (C, 2^n)
            params.append(ang.unsqueeze(-1) if ang.dim() == 1 else ang.T)
        elif step.kind == "rot":
            mats = _ry_real(theta, step, n)  # per qubit, identity off the step's wires
            params.append(_kron(mats[n - 1 : lo - 1 : -1]) if n > lo else None)
            params.append(_kron(mats[lo - 1 :: -1]))
    return params


class _Register(torch.autograd.Function):
    """The encoded state's Kronecker product, all entangling and trainable steps and the readout,
    on planes x of shape (2^n, 2, C).

    Backward is the adjoint method: it pulls the cotangent back through the steps in reverse and
    pairs it with the states the forward kept (each phase step's and each rotation's output; four
    registers per chunk for the default circuit, the final state included), so no state is
    recomputed; then through the product, to its two factors (`_outer_backward`)."""

    @staticmethod
    def forward(ctx, hi: Tensor, lo: Tensor, prog: _Program, *params: Tensor | None) -> Tensor:
        kept: list | None = [] if any(ctx.needs_input_grad) else None
        x = _evolve(_outer(hi, lo), prog, params, kept)
        ctx.prog, ctx.kept = prog, kept
        ctx.save_for_backward(x, hi, lo, *params)
        return (prog.zsign.T @ _norms(x)).T  # (C, n)

    @staticmethod
    def backward(ctx, g: Tensor):
        deadline.check()  # a chunk's backward is the largest piece of work between checks
        prog, kept = ctx.prog, reversed(ctx.kept)  # not consumed: backward may run again (retain_graph)
        y, hi, lo, *params = ctx.saved_tensors
        w = 2 * (prog.zsign @ g.T)  # (2^n, C): 2 d<sum_i g_i Z_i>/d|amplitude|^2
        lam = y * w.unsqueeze(1)  # (2^n, 2, C): the cotangent of the final state
        grads: list[Tensor | None] = [None] * len(params)
        k = len(params)
        for step in reversed(prog.steps):
            if step.kind == "perm":
                lam = _permute(lam, step.inverse)
            elif step.kind == "phase":
                k -= 1
                out = next(kept)
                gang = torch.mul(lam[:, 1], out[:, 0]).addcmul_(lam[:, 0], out[:, 1], value=-1)  # dL/d(phase)
                grads[k] = gang.sum(-1, keepdim=True) if params[k].shape[-1] == 1 else gang
                lam = _apply_phase(lam, -params[k])
            else:
                k -= 2
                grads[k], grads[k + 1], lam = _rot_backward(lam, next(kept), params[k], params[k + 1])
        g_hi, g_lo = _outer_backward(lam, hi, lo) if any(ctx.needs_input_grad[:2]) else (None, None)
        return (g_hi, g_lo, None, *grads)


def _evolve(x: Tensor, prog: _Program, params, kept: list | None = None, first: int = 0) -> Tensor:
    """Apply every step after the encoding (from step `first` on) to planes x (2^n, 2, C); append
    to `kept` what the backward needs: each phase step's and each rotation's output."""
    it = iter(params[prog.slots[first] :] if first < len(prog.steps) else ())
    for step in prog.steps[first:]:
        if step.kind == "perm":
            x = _permute(x, step.table)
        elif step.kind == "phase":
            x = _apply_phase(x, next(it))
            if kept is not None:
                kept.append(x)
        else:
            x = _apply_rot(x, next(it), next(it))
            if kept is not None:
                kept.append(x)
    return x


def _norms(x: Tensor) -> Tensor:
    """|amplitude|^2 of planes x (2^n, 2, C): (2^n, C)."""
    return torch.mul(x[:, 0], x[:, 0]).addcmul_(x[:, 1], x[:, 1])


def _apply_phase(x: Tensor, ang: Tensor) -> Tensor:
    """Multiply amplitude b by exp(i ang[b]) on x of shape (2^n, ..., re|im, C); ang is (2^n, 1)
    shared or (2^n, C) per token."""
    ang = ang.view(ang.shape[0], *[1] * (x.dim() - 3), ang.shape[1])
    c, s = torch.cos(ang), torch.sin(ang)
    re, im = x[..., 0, :], x[..., 1, :]
    out = torch.empty_like(x)
    torch.mul(re, c, out=out[..., 0, :]).addcmul_(im, s, value=-1)
    torch.mul(re, s, out=out[..., 1, :]).addcmul_(im, c)
    return out


def _permute(x: Tensor, src: Tensor) -> Tensor:
    """Rows x[src]: a gather of whole basis-state rows (2-D, where index_select is a memcpy)."""
    return x.reshape(x.shape[0], -1).index_select(0, src).view(x.shape)


def _apply_rot(x: Tensor, r_hi: Tensor | None, r_lo: Tensor | None, transpose: bool = False) -> Tensor:
    """(R_hi (x) R_lo) x, or its transpose, on x of shape (2^n, ..., C); each R shared (k, k) or
    per token (C, k, k); None is the identity. R_hi mixes blocks of rows, R_lo rows in a block."""
    size, shape = x.shape[0], x.shape
    hi = r_hi.shape[-1] if r_hi is not None else size // r_lo.shape[-1]
    if transpose:
        r_lo = None if r_lo is None else r_lo.transpose(-1, -2)
        r_hi = None if r_hi is None else r_hi.transpose(-1, -2)
    v = x.reshape(hi, size // hi, *shape[1:])
    if r_hi is not None:
        if r_hi.dim() == 2:
            v = (r_hi @ v.reshape(hi, -1)).view_as(v)
        else:
            v = torch.einsum("cij,jl...c->il...c", r_hi, v)
    if r_lo is not None:
        if r_lo.dim() == 2:
            v = torch.bmm(r_lo.expand(hi, -1, -1), v.reshape(hi, size // hi, -1))
        else:
            v = torch.einsum("cij,hj...c->hi...c", r_lo, v)
    return v.reshape(shape)


def _rot_backward(lam: Tensor, y: Tensor, r_hi: Tensor | None, r_lo: Tensor):
    """The rotation y = (R_hi (x) R_lo) x backwards: from the cotangent of y, the cotangents of R_hi,
    R_lo and x. RY matrices are orthogonal, so the state between the two factors is y itself, one
    factor undone: (R_hi (x) I) x = (I (x) R_lo^T) y, whence dL/dR_lo = M_lo R_lo with M_lo the sum
    of lam (x) y over the lo index pairs; the same for R_hi. Nothing but y need be kept."""
    size, c = lam.shape[0], lam.shape[-1]
    lo = r_lo.shape[-1]
    hi = size // lo
    per_token = r_lo.dim() == 3
    v, u = lam.reshape(hi, lo, 2 * c), y.reshape(hi, lo, 2 * c)
    g_lo = _outer_sum(v, u, per_token, c) @ r_lo
    # the same sum with the block index leading: (lo, hi, 2C) views, no copies
    g_hi = None if r_hi is None else _outer_sum(v.transpose(0, 1), u.transpose(0, 1), per_token, c) @ r_hi
    return g_hi, g_lo, _apply_rot(lam, r_hi, r_lo, transpose=True)


def _outer_sum(lam: Tensor, x: Tensor, per_token: bool, c: int) -> Tensor:
    """sum over the batch b and columns m of lam[b, i, m] x[b, j, m]: (i, j), or per token (C, i, j)
    when the columns end in the token axis."""
    if per_token:
        b, i, m = lam.shape
        return torch.einsum("bimc,bjmc->cij", lam.view(b, i, m // c, c), x.view(b, x.shape[1], m // c, c))
    return torch.bmm(lam, x.transpose(1, 2)).sum(0)


def _encoded_halves(prog: _Program, angles: Tensor) -> tuple[Tensor, Tensor]:
    """The encoded product state as two factors, hi (x) lo: the Kronecker products of the high and
    of the low qubits' 2-vectors, (2^hi, 2, C) and (2^(n - hi), 2, C) planes, hi = n//2 as in
    the rotation steps. Built by autograd: they are small; their product, register-sized, is
    `_Register`'s first step, with a hand-written backward."""
    return _halves(_qubit_states(prog, angles).flip(0))


def _halves(phi: Tensor) -> tuple[Tensor, Tensor]:
    """The product state of qubit vectors phi (n, 2, C) complex, qubit n-1 first, as its two
    factors' planes: the high n//2 qubits, the low ones."""
    hi = phi.shape[0] // 2
    return _kron_planes(phi[:hi]), _kron_planes(phi[hi:])


def _qubit_states(prog: _Program, angles: Tensor) -> Tensor:
    """Each qubit's 2-vector after the encoding prefix: (n, 2, C) complex. Computed in real
    arithmetic on planes (n, 2, re|im, C), with no advanced indexing where a step covers every
    qubit: on CPU, complex cos, sin and einsum are slow, and so is the backward of an index."""
    n = prog.spec.n_qubits
    s = angles.new_zeros(n, 2, 2, angles.shape[0])
    s[:, 0, 0] = 1  # |0>
    for gate, qubits, idx in prog.prefix:
        cur = s if qubits is None else s.index_select(0, qubits)
        s0, s1 = cur[:, 0], cur[:, 1]  # (q, re|im, C): the amplitudes of |0> and |1>
        if gate == "H":
            upd = torch.stack((s0 + s1, s0 - s1), 1) * 0.5**0.5
        else:
            half = angles.index_select(1, idx).T.unsqueeze(1) / 2  # (q, 1, C)
            c, sn = torch.cos(half), torch.sin(half)
            if gate == "RY":
                upd = torch.stack((c * s0 - sn * s1, sn * s0 + c * s1), 1)
            else:  # RZ: |0> times exp(-i a/2), |1> times exp(i a/2)
                upd = torch.stack((_times_phase(s0, c, -sn), _times_phase(s1, c, sn)), 1)
        s = upd if qubits is None else s.index_copy(0, qubits, upd)
    return torch.complex(s[:, :, 0], s[:, :, 1])


def _times_phase(v: Tensor, c: Tensor, s: Tensor) -> Tensor:
    """Planes v (q, re|im, C) times c + i·s, for c and s of shape (q, 1, C)."""
    re, im = v[:, :1], v[:, 1:]
    return torch.cat((c * re - s * im, c * im + s * re), 1)


def _kron_planes(vecs: Tensor) -> Tensor:
    """Kronecker product of k complex 2-vectors per token (k, 2, C), the first most significant,
    as planes (2^k, 2, C); k = 0 gives the scalar 1."""
    if not len(vecs):
        planes = torch.zeros(1, 2, vecs.shape[-1], dtype=vecs.real.dtype, device=vecs.device)
        planes[:, 0] = 1
        return planes
    psi = vecs[0]
    for v in vecs[1:]:
        psi = (psi.unsqueeze(1) * v.unsqueeze(0)).flatten(0, 1)
    return torch.view_as_real(psi).transpose(1, 2).contiguous()


def _outer(a: Tensor, b: Tensor) -> Tensor:
    """The Kronecker product a (x) b of one complex vector per token and factor, as planes: a
    (A, 2, C), b (B, 2, C) -> (A·B, 2, C), a's index the more significant."""
    c = a.shape[-1]
    x = a.new_empty(a.shape[0], b.shape[0], 2, c)
    ar, ai = a[:, None, 0], a[:, None, 1]  # (A, 1, C)
    br, bi = b[:, 0], b[:, 1]  # (B, C)
    torch.mul(ar, br, out=x[:, :, 0]).addcmul_(ai, bi, value=-1)
    torch.mul(ar, bi, out=x[:, :, 1]).addcmul_(ai, br)
    return x.view(-1, 2, c)


def _outer_backward(lam: Tensor, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """From the cotangent planes of x = a (x) b, those of a and b. For real L, dL/da[h] is
    sum_l lam[h, l] conj(b[l]) as complex numbers; the same for b with a. (Plane by plane, with
    sums over one leading axis: torch's multi-axis sums here are ten times slower.)"""
    lam = lam.view(a.shape[0], b.shape[0], 2, a.shape[-1])
    lr, li = lam[:, :, 0], lam[:, :, 1]  # (A, B, C)
    ar, ai, br, bi = a[:, None, 0], a[:, None, 1], b[:, 0], b[:, 1]
    g_a = torch.stack(
        [
            torch.mul(lr, br).addcmul_(li, bi).sum(1),  # (A, C): re(lam conj(b)) summed over b's index
            torch.mul(li, br).addcmul_(lr, bi, value=-1).sum(1),
        ],
        1,
    )
    g_b = torch.stack(
        [torch.mul(lr, ar).addcmul_(li, ai).sum(0), torch.mul(li, ar).addcmul_(lr, ai, value=-1).sum(0)], 1
    )
    return g_a, g_b  # (A, 2, C), (B, 2, C)


def _ry_real(theta: Tensor, step: _Step, n: int) -> list[Tensor]:
    eye = torch.eye(2, dtype=theta.dtype, device=theta.device)
    mats = [eye] * n
    for wire, k in zip(step.wires, step.theta):
        half = theta[..., k] / 2
        c, s = torch.cos(half), torch.sin(half)
        mats[wire] = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    if theta.dim() == 2:
        mats = [m.expand(theta.shape[0], 2, 2) for m in mats]
    return mats


def _kron(mats: list[Tensor]) -> Tensor:
    """Kronecker product of (…, a, a) matrices, first factor most significant."""
    out = mats[0]
    for m in mats[1:]:
        a, b = out.shape[-1], m.shape[-1]
        out = (out[..., :, None, :, None] * m[..., None, :, None, :]).reshape(*out.shape[:-2], a * b, a * b)
    return out


@lru_cache(maxsize=64)
def _compile(spec: CircuitSpec, device: torch.device, dtype: torch.dtype) -> _Program:
    n = spec.n_qubits
    ops = list(spec.ops)
    # the encoding prefix: single-qubit gates before any entangling or trainable gate
    split = next((i for i, op in enumerate(ops) if op.gate == "CNOT" or _is_theta(op)), len(ops))
    if any(op.param and op.param[0] == "angle" for op in ops[split:]):
        raise ValueError("the local simulator needs all input encoding before the first entangling or trainable gate")
    prog = _Program(spec, _compile_prefix(ops[:split], n, device), encoding=ops[:split])
    basis = torch.arange(2**n, device=device)
    bits = (basis.unsqueeze(-1) >> torch.arange(n, device=device)) & 1  # (2^n, n)
    signs = (1 - 2 * bits).to(dtype)
    for op in ops[split:]:
        last = prog.steps[-1] if prog.steps else None
        kind = {"CNOT": "perm", "RZ": "phase", "RY": "rot"}.get(op.gate)
        if kind is None:
            raise ValueError(f"the local simulator cannot place gate {op.gate!r} after the encoding")
        if kind == "perm":
            if last is None or last.kind != "perm":
                last = _Step("perm", table=basis.clone())
                prog.steps.append(last)
            ctrl, tgt = op.wires
            # new[y] = old[y ^ (bit ctrl of y) << tgt]; composed as src = src[cnot(y)]
            cnot = basis ^ (((basis >> ctrl) & 1) << tgt)
            last.table = last.table[cnot]
            continue
        if last is None or last.kind != kind or op.wires[0] in last.wires or op.param[0] != "theta":
            last = _Step(kind)
            prog.steps.append(last)
        last.wires += op.wires
        last.theta += (op.param[1],)
    for step in prog.steps:
        if step.kind == "phase":
            step.table = signs[:, list(step.wires)]
        elif step.kind == "perm":
            step.inverse = torch.argsort(step.table)
    prog.zsign = signs
    prog.flips = [basis ^ (1 << q) for q in range(n)]  # basis index with bit q flipped
    slot = 0
    for step in prog.steps:
        prog.slots.append(slot)
        slot += {"perm": 0, "phase": 1, "rot": 2}[step.kind]
    return prog


def _compile_prefix(ops: list[Op], n: int, device) -> list[tuple[str, Tensor | None, Tensor | None]]:
    """Group the prefix into steps that apply one gate kind to several qubits at once: (gate,
    qubits or None for all of them in order, angle index or None for H)."""
    per_qubit: list[list[Op]] = [[] for _ in range(n)]
    for op in ops:
        per_qubit[op.wires[0]].append(op)
    steps = []
    for depth in range(max(map(len, per_qubit), default=0)):
        layer = [q[depth] for q in per_qubit if len(q) > depth]
        for gate in dict.fromkeys(op.gate for op in layer):
            same = [op for op in layer if op.gate == gate]
            wires = [op.wires[0] for op in same]
            qubits = None if wires == list(range(n)) else torch.tensor(wires, device=device)  # None: all
            idx = None if gate == "H" else torch.tensor([op.param[1] for op in same], device=device)
            steps.append((gate, qubits, idx))
    return steps


def _is_theta(op: Op) -> bool:
    return op.param is not None and op.param[0] == "theta"


class LocalBackend(Backend):
    """Batched torch statevector simulation (this module): adjoint by autograd; a shifted batch by
    its structure (`shifted`); rows that share theta (spsa's) with shared rotation matrices."""

    name, statevector, accelerated = "local", True, True

    def capabilities(self):
        return replace(super().capabilities(), fused=fused.describe())

    def expectations(self, spec, theta, angles):
        out = angles.dtype
        theta, angles = promoted(theta, angles)
        grad = theta.requires_grad or angles.requires_grad
        if theta.dim() == 2 and not grad and not fused.covers(spec, theta, angles):  # (the kernels: per row alike)
            return _by_blocks(spec, theta, angles).to(out)
        return expectations(spec, theta, angles).to(out)

    def apply(self, spec, theta, angles, grad):
        if grad.rule is ADJOINT:  # torch autograd through the simulator's hand-written adjoint
            self.check_method(grad)
            return expectations(spec, theta, angles)
        return super().apply(spec, theta, angles, grad)

    def evaluate_shifts(self, spec, shifts):
        return shifted(spec, shifts.theta, shifts.angles, shifts.step, shifts.components, shifts.base)

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        with torch.enable_grad():
            t = theta.detach().requires_grad_()
            a = angles.detach().requires_grad_()
            z = expectations(spec, t, a)
            return torch.autograd.grad(z, (t, a), grad_out, allow_unused=True, materialize_grads=True)

    def _adjoint_jacobians(self, spec, theta, angles):
        with torch.enable_grad():
            t = theta.detach().expand(angles.shape[0], -1).contiguous().requires_grad_()  # per token
            a = angles.detach().requires_grad_()
            out = expectations(spec, t, a)
            rows = [
                torch.autograd.grad(
                    out[:, i].sum(), (t, a), retain_graph=True, allow_unused=True, materialize_grads=True
                )
                for i in range(spec.n_qubits)
            ]
        return torch.stack([r[0] for r in rows], 1), torch.stack([r[1] for r in rows], 1)


@torch.no_grad()
def _by_blocks(spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
    """Rows with per-row theta, run block by block where consecutive rows share theta (as a
    batch of spsa's shifts does): a block's rotations are shared matrices (GEMMs), not per row."""
    if theta.numel() == 0:  # no rows, or no theta (a circuit without layers)
        return expectations(spec, theta, angles)
    blocks, counts = torch.unique_consecutive(theta, dim=0, return_counts=True)
    if len(blocks) * 16 > len(theta):  # mostly distinct rows: per row it is
        return expectations(spec, theta, angles)
    parts = [expectations(spec, t, a) for t, a in zip(blocks, angles.split(counts.tolist()))]
    return torch.cat(parts) if parts else angles.new_zeros(0, spec.n_qubits)
