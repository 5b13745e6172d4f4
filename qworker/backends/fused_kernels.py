"""Triton kernels of the HyQuT circuit: forward, adjoint backward and the rows of a shifted batch,
each program holding BLOCK tokens' registers on chip (docs/design.md, "The local simulator").

Imported only by `qworker.backends.fused` (and only where triton is importable); with
TRITON_INTERPRET=1 set before this module is imported, the same source runs on CPU tensors in
Triton's interpreter (the suite's way to test it without a GPU).

A register is two planes, re and im, of shape (BLOCK, 2^N_Q): token-major, qubit q on bit q of
the basis index. A one-qubit gate on q needs each amplitude's partner b ^ 2^q: `_partner` views a
plane as (BLOCK, 2^(N_Q-1-q), 2, 2^q) and swaps the halves of the axis of 2 by two reductions
over it, so every gate is a few register-wide multiply-adds and selects: no gather, no permute of
the register, no trip to global memory. The circuit is hard-wired to the one
`CircuitSpec` builds (qworker/circuit.py): H on every qubit, RY(angle 2q) RZ(angle 2q+1) on qubit
q, then per layer the CNOT chain (ring: closed by n-1 -> 0), RZ(theta) on every qubit, RY(theta)
on every qubit. Layers are a runtime loop (one compiled kernel per qubit count, entangler and
theta kind, whatever the depth); qubits are unrolled (a gate's qubit fixes its reshape).

Dtype: whatever the inputs are (float32 on the GPU path; float64 works too, which the tests use
to check gradients by gradcheck). No literal but 0.5 and small integers enters the arithmetic:
Triton makes Python floats float32 constants, which would round a float64 computation.
"""

from __future__ import annotations

import triton
import triton.language as tl

# -- registers and gates ---------------------------------------------------------------------------


@triton.jit
def _partner(x, Q: tl.constexpr, N_Q: tl.constexpr, BLOCK: tl.constexpr):
    """x[b ^ 2^Q] for every basis index b: the other amplitude of each pair of qubit Q, (BLOCK,
    2^N_Q). The plane is viewed as (BLOCK, higher bits, bit Q, lower bits); each half is summed
    out of its axis of 2 (adding a zero: exact) and broadcast into the other's place."""
    x4 = tl.reshape(x, (BLOCK, 1 << (N_Q - 1 - Q), 2, 1 << Q))
    one = (tl.arange(0, 2) == 1)[None, None, :, None]  # (1, 1, 2, 1): bit Q set
    x0 = tl.sum(tl.where(one, 0, x4), 2)[:, :, None, :]  # (BLOCK, 2^(N_Q-1-Q), 1, 2^Q)
    x1 = tl.sum(tl.where(one, x4, 0), 2)[:, :, None, :]
    return tl.reshape(tl.where(one, x0, x1), (BLOCK, 1 << N_Q))


@triton.jit
def _zsign(q, N_Q: tl.constexpr, dtype: tl.constexpr):
    """(1, 2^N_Q): the eigenvalue of Z_q on every basis state, +1 where bit q is 0, -1 where it is 1."""
    return (1 - 2 * ((tl.arange(0, 1 << N_Q) >> q) & 1)).to(dtype)[None, :]


@triton.jit
def _half_angle(ptrs, k, valid, flip):
    """cos and sin of half of angle k of every token (ptrs (BLOCK,): each token's row), (BLOCK, 1).
    Where k is `flip` the angle is taken + π: (c, s) -> (-s, c), exact (no rounded π enters)."""
    half = 0.5 * tl.load(ptrs + k, mask=valid, other=0)
    c, s = tl.cos(half), tl.sin(half)
    on = k == flip
    return tl.where(on, -s, c)[:, None], tl.where(on, c, s)[:, None]


@triton.jit
def _rz(re, im, c, s, Q: tl.constexpr, N_Q: tl.constexpr):
    """RZ on qubit Q: amplitude b times c - i z_Q(b) s (c, s (BLOCK, 1): cos, sin of half the angle)."""
    zs = s * _zsign(Q, N_Q, re.dtype)  # (BLOCK, 2^N_Q)
    return re * c + im * zs, im * c - re * zs


@triton.jit
def _ry(re, im, c, s, Q: tl.constexpr, N_Q: tl.constexpr, BLOCK: tl.constexpr):
    """RY on qubit Q, the real rotation [[c, -s], [s, c]] on each pair: y_b = c x_b - z_Q(b) s x_(b^2^Q)."""
    zs = s * _zsign(Q, N_Q, re.dtype)
    return re * c - zs * _partner(re, Q, N_Q, BLOCK), im * c - zs * _partner(im, Q, N_Q, BLOCK)


@triton.jit
def _cnot(re, im, C: tl.constexpr, T: tl.constexpr, N_Q: tl.constexpr, BLOCK: tl.constexpr):
    """CNOT C -> T: the amplitudes of each pair of T swap where bit C is 1."""
    ctl = ((tl.arange(0, 1 << N_Q) >> C) & 1)[None, :] != 0
    return tl.where(ctl, _partner(re, T, N_Q, BLOCK), re), tl.where(ctl, _partner(im, T, N_Q, BLOCK), im)


@triton.jit
def _entangle(re, im, N_Q: tl.constexpr, RING: tl.constexpr, BLOCK: tl.constexpr):
    """The CNOT chain 0 -> 1 -> ... -> N_Q-1, closed by N_Q-1 -> 0 for a ring."""
    for q in tl.static_range(N_Q - 1):
        re, im = _cnot(re, im, q, q + 1, N_Q, BLOCK)
    if RING and N_Q > 1:
        re, im = _cnot(re, im, N_Q - 1, 0, N_Q, BLOCK)
    return re, im


@triton.jit
def _disentangle(re, im, N_Q: tl.constexpr, RING: tl.constexpr, BLOCK: tl.constexpr):
    """The inverse of `_entangle`: the same CNOTs (each its own inverse) in reverse order."""
    if RING and N_Q > 1:
        re, im = _cnot(re, im, N_Q - 1, 0, N_Q, BLOCK)
    for i in tl.static_range(N_Q - 1):
        re, im = _cnot(re, im, N_Q - 2 - i, N_Q - 1 - i, N_Q, BLOCK)
    return re, im


# -- the circuit -----------------------------------------------------------------------------------


@triton.jit
def _token_rows(base, tok, width, SHARED: tl.constexpr):
    """Each token's row of a (tokens, width) array, or for SHARED the one row they all share."""
    if SHARED:
        return base + tok * 0
    else:
        return base + tok * width


@triton.jit
def _encode(an, valid, flip, N_Q: tl.constexpr, BLOCK: tl.constexpr):
    """The encoded product state (re, im (BLOCK, 2^N_Q)) of every token (an (BLOCK,): each token's
    angles). Qubit q's vector is RZ(angle 2q+1) RY(angle 2q) H |0>: (m0 e^(-ib/2), m1 e^(ib/2))
    with (m0, m1) = (cos a/2 - sin a/2, cos a/2 + sin a/2)/sqrt(2); input angle `flip` is taken
    + π (-1: none). The register is the outer product of the Kronecker products of the low and of
    the high qubits (2^(N_Q/2) amplitudes each): one complex product per amplitude."""
    LO: tl.constexpr = (N_Q + 1) // 2
    lo_r, lo_i = _kron(an, valid, flip, 0, LO, BLOCK)
    hi_r, hi_i = _kron(an, valid, flip, LO, N_Q, BLOCK)
    lo_r, lo_i = lo_r[:, None, :], lo_i[:, None, :]  # (BLOCK, 1, 2^LO)
    hi_r, hi_i = hi_r[:, :, None], hi_i[:, :, None]  # (BLOCK, 2^(N_Q-LO), 1): the higher bits
    re = tl.reshape(hi_r * lo_r - hi_i * lo_i, (BLOCK, 1 << N_Q))
    im = tl.reshape(hi_r * lo_i + hi_i * lo_r, (BLOCK, 1 << N_Q))
    return re, im


@triton.jit
def _kron(an, valid, flip, FIRST: tl.constexpr, LAST: tl.constexpr, BLOCK: tl.constexpr):
    """The Kronecker product of the vectors of qubits FIRST..LAST-1: (re, im) (BLOCK,
    2^(LAST-FIRST)), qubit q on bit q - FIRST."""
    dtype = an.dtype.element_ty
    bits = tl.arange(0, 1 << (LAST - FIRST))
    re = tl.zeros((BLOCK, 1 << (LAST - FIRST)), dtype) + 1
    im = tl.zeros((BLOCK, 1 << (LAST - FIRST)), dtype)
    root_half = tl.sqrt(tl.zeros((BLOCK, 1), dtype) + 0.5)  # sqrt(1/2) in the inputs' precision
    for q in tl.static_range(FIRST, LAST):
        ca, sa = _half_angle(an, 2 * q, valid, flip)
        cb, sb = _half_angle(an, 2 * q + 1, valid, flip)
        m0, m1 = (ca - sa) * root_half, (ca + sa) * root_half
        one = ((bits >> (q - FIRST)) & 1)[None, :] != 0  # (1, 2^(LAST-FIRST)): bit q set
        vr = tl.where(one, m1 * cb, m0 * cb)  # (BLOCK, 2^(LAST-FIRST)): RZ, m0 e^(-ib/2) and m1 e^(ib/2)
        vi = tl.where(one, m1 * sb, -m0 * sb)
        re, im = re * vr - im * vi, re * vi + im * vr
    return re, im


@triton.jit
def _layer(re, im, th, valid, l, flip, N_Q: tl.constexpr, RING: tl.constexpr, BLOCK: tl.constexpr):
    """Layer l: the entangler, RZ(theta) on every qubit, RY(theta) on every qubit (th (BLOCK,):
    each token's theta row; theta index `flip` taken + π, -1 for none)."""
    re, im = _entangle(re, im, N_Q, RING, BLOCK)
    for q in tl.static_range(N_Q):
        c, s = _half_angle(th, 2 * N_Q * l + q, valid, flip)
        re, im = _rz(re, im, c, s, q, N_Q)
    for q in tl.static_range(N_Q):
        c, s = _half_angle(th, 2 * N_Q * l + N_Q + q, valid, flip)
        re, im = _ry(re, im, c, s, q, N_Q, BLOCK)
    return re, im


@triton.jit
def _z(re, im, Q: tl.constexpr, N_Q: tl.constexpr):
    """<Z_Q> of every token: (BLOCK,)."""
    return tl.sum((re * re + im * im) * _zsign(Q, N_Q, re.dtype), 1)


@triton.jit
def _im_z(lr, li, re, im, Q: tl.constexpr, N_Q: tl.constexpr):
    """Σ_b z_Q(b) Im(conj(λ_b) φ_b) of every token: (BLOCK,). Half of it is dL/da of RZ(a) on Q."""
    return tl.sum((lr * im - li * re) * _zsign(Q, N_Q, re.dtype), 1)


# -- kernels ---------------------------------------------------------------------------------------


# Runtime integers are not specialized (Triton would compile again for a count of 1 or one
# divisible by 16): one compiled kernel per circuit shape, whatever the batch.
@triton.jit(do_not_specialize=["n_tok", "n_layers"])
def forward_kernel(
    theta, angles, out, n_tok, n_layers,
    N_Q: tl.constexpr, RING: tl.constexpr, SHARED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """out (n_tok, N_Q) <- <Z_q> of every token; theta (|Θ|,) if SHARED else (n_tok, |Θ|), angles
    (n_tok, 2N_Q); one program per BLOCK tokens."""
    tok = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = tok < n_tok
    th = _token_rows(theta, tok, 2 * N_Q * n_layers, SHARED)
    an = angles + tok * (2 * N_Q)
    re, im = _encode(an, valid, -1, N_Q, BLOCK)
    for l in range(n_layers):
        re, im = _layer(re, im, th, valid, l, -1, N_Q, RING, BLOCK)
    for q in tl.static_range(N_Q):
        tl.store(out + tok * N_Q + q, _z(re, im, q, N_Q), mask=valid)


@triton.jit
def _put(row, k, grad, valid, SHARED: tl.constexpr):
    """Store theta k's gradient (BLOCK,): per token at rows `row` (BLOCK,), or for a shared theta
    the program's sum at its own row (a scalar pointer; the caller adds the programs' rows up:
    the same sum in the same order on every run, unlike atomics)."""
    if SHARED:
        tl.store(row + k, tl.sum(grad, 0))
    else:
        tl.store(row + k, grad, mask=valid)


@triton.jit
def _ry_back(
    re, im, lr, li, th, gt, k, valid, Q: tl.constexpr, N_Q: tl.constexpr, SHARED: tl.constexpr, BLOCK: tl.constexpr
):
    """RY(theta k) on Q, backwards: its gradient, then the gate undone on φ and λ. dL/da =
    Re <λ| -iY/2 |φ> with -iY real: 1/2 Σ_pairs (λ_1·φ_0 - λ_0·φ_1) = -1/2 Σ_b z_Q(b) λ_b·φ_(b^2^Q)."""
    c, s = _half_angle(th, k, valid, -1)
    zs = s * _zsign(Q, N_Q, re.dtype)
    pr, pi = _partner(re, Q, N_Q, BLOCK), _partner(im, Q, N_Q, BLOCK)
    z = _zsign(Q, N_Q, re.dtype)
    _put(gt, k, -0.5 * tl.sum(z * (lr * pr + li * pi), 1), valid, SHARED)
    re, im = re * c + zs * pr, im * c + zs * pi  # RY(-a)
    lr, li = lr * c + zs * _partner(lr, Q, N_Q, BLOCK), li * c + zs * _partner(li, Q, N_Q, BLOCK)
    return re, im, lr, li


@triton.jit
def _rz_back(re, im, lr, li, th, gt, k, valid, Q: tl.constexpr, N_Q: tl.constexpr, SHARED: tl.constexpr):
    """RZ(theta k) on Q, backwards: its gradient (`_im_z`), then the gate undone on φ and λ."""
    c, s = _half_angle(th, k, valid, -1)
    _put(gt, k, 0.5 * _im_z(lr, li, re, im, Q, N_Q), valid, SHARED)
    re, im = _rz(re, im, c, -s, Q, N_Q)
    lr, li = _rz(lr, li, c, -s, Q, N_Q)
    return re, im, lr, li


@triton.jit(do_not_specialize=["n_tok", "n_layers"])
def adjoint_kernel(
    theta, angles, grad_out, grad_theta, grad_angles, n_tok, n_layers,
    N_Q: tl.constexpr, RING: tl.constexpr, SHARED: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """The VJP of L = Σ grad_out·<Z> by the adjoint method: the forward again (nothing was kept),
    then one sweep back through the gates that undoes each on the state φ and on the cotangent
    λ = dL/dφ (planes: dL/dRe φ + i dL/dIm φ) and reads each angle's gradient off the pair there.
    grad_theta: (n_tok, |Θ|) per token, or (programs, |Θ|) partial sums for a shared theta;
    grad_angles (n_tok, 2N_Q)."""
    program = tl.program_id(0)
    tok = program * BLOCK + tl.arange(0, BLOCK)
    valid = tok < n_tok
    n_params = 2 * N_Q * n_layers
    th = _token_rows(theta, tok, n_params, SHARED)
    if SHARED:
        gt = grad_theta + program * n_params
    else:
        gt = grad_theta + tok * n_params
    an = angles + tok * (2 * N_Q)
    re, im = _encode(an, valid, -1, N_Q, BLOCK)
    for l in range(n_layers):
        re, im = _layer(re, im, th, valid, l, -1, N_Q, RING, BLOCK)
    # λ = 2 O φ for O = Σ_q g_q Z_q (diagonal); absent tokens get g = 0, so λ = 0: no gradient
    w = tl.zeros((BLOCK, 1 << N_Q), re.dtype)
    for q in tl.static_range(N_Q):
        g = tl.load(grad_out + tok * N_Q + q, mask=valid, other=0)
        w += g[:, None] * _zsign(q, N_Q, re.dtype)
    lr, li = 2 * w * re, 2 * w * im
    for i in range(n_layers):
        l = n_layers - 1 - i
        for j in tl.static_range(N_Q):  # RY on qubits N_Q-1 .. 0, then RZ, then the entangler
            k = 2 * N_Q * l + 2 * N_Q - 1 - j
            re, im, lr, li = _ry_back(re, im, lr, li, th, gt, k, valid, N_Q - 1 - j, N_Q, SHARED, BLOCK)
        for j in tl.static_range(N_Q):
            k = 2 * N_Q * l + N_Q - 1 - j
            re, im, lr, li = _rz_back(re, im, lr, li, th, gt, k, valid, N_Q - 1 - j, N_Q, SHARED)
        re, im = _disentangle(re, im, N_Q, RING, BLOCK)
        lr, li = _disentangle(lr, li, N_Q, RING, BLOCK)
    _encoding_grads(lr, li, an, grad_angles + tok * (2 * N_Q), valid, N_Q, BLOCK)


@triton.jit
def _encoding_grads(lr, li, an, ga, valid, N_Q: tl.constexpr, BLOCK: tl.constexpr):
    """The input angles' gradients from the cotangent λ of the encoded state ψ (built afresh, not
    carried back through the layers). RZ(b) on qubit q: as a theta's RZ. RY(a): dψ/da takes qubit
    q's magnitudes (m0, m1) to (-m1, m0)/2, phases kept, so with Δ = b (the phase between its two
    halves) dL/da = 1/2 Re(e^(iΔ) S10 - e^(-iΔ) S01), S_jk = Σ conj(λ_j) ψ_k over the pairs of q:
    no division by a magnitude that may be 0. With P = ψ_(b^2^q), S10 - S01 sums -z_q conj(λ) P."""
    re, im = _encode(an, valid, -1, N_Q, BLOCK)
    for q in tl.static_range(N_Q):
        z = _zsign(q, N_Q, re.dtype)
        pr, pi = _partner(re, q, N_Q, BLOCK), _partner(im, q, N_Q, BLOCK)
        s_re = -tl.sum(z * (lr * pr + li * pi), 1)  # Re(S10 - S01)
        s_im = tl.sum(lr * pi - li * pr, 1)  # Im(S10 + S01)
        b = tl.load(an + 2 * q + 1, mask=valid, other=0)
        tl.store(ga + 2 * q, 0.5 * (tl.cos(b) * s_re - tl.sin(b) * s_im), mask=valid)
        tl.store(ga + 2 * q + 1, 0.5 * _im_z(lr, li, re, im, q, N_Q), mask=valid)


@triton.jit(do_not_specialize=["row_size", "n_tok", "n_layers", "k0", "k1"])
def shifted_kernel(
    theta, angles, coef, out, row_size, n_tok, n_layers, k0, k1,
    BASE: tl.constexpr, N_Q: tl.constexpr, N_Q2: tl.constexpr, RING: tl.constexpr, SHARED: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """The rows of a shifted batch (qworker.gradients.Shifts) for components k0..k1-1, by the
    structure of local.shifted: both rows of component k from the unshifted final state φ0 and
    φ1, the circuit after k's gate G(a) = exp(-i a P/2) applied to P times the state just after
    G. Since P G(a) = i G(a + π), φ1 = i φ1' with φ1' the circuit run with a + π from any state
    before G: here from the start of G's layer, kept on a main line that walks the layers once
    (a theta of layer l costs the layers from l on; an input angle, the encoding and every layer).
    With coef = (cos²(s/2), sin²(s/2), sin s) in the inputs' dtype:
        <Z_q>(±s) = cos²(s/2) <φ0|Z_q|φ0> + sin²(s/2) <φ1'|Z_q|φ1'> ± sin(s) Re <φ0|Z_q|φ1'>.
    out: rows of `row_size` values (this launch's tokens x N_Q from the row's start), the
    unshifted first if BASE, then +s and -s of each component.

    One loop of jobs, an evolution each, so one copy of the layer code serves them all: job 0
    is φ0, job j > 0 component k0 + j - 1."""
    tok = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    valid = tok < n_tok
    n_params = 2 * N_Q * n_layers
    th = _token_rows(theta, tok, n_params, SHARED)
    an = angles + tok * (2 * N_Q)
    cos2, sin2, sin1 = tl.load(coef), tl.load(coef + 1), tl.load(coef + 2)
    col = tl.arange(0, N_Q2)[None, :]  # (1, N_Q2): qubits, padded to a power of 2
    dest = out + tok[:, None] * N_Q + col  # (BLOCK, N_Q2) in the next row; pointers add in 64 bits
    stored = valid[:, None] & (col < N_Q)
    mr, mi = _encode(an, valid, -1, N_Q, BLOCK)  # the main line: the state before layer `m_layer`
    m_layer = tl.program_id(0) * 0
    f0r, f0i = mr, mi  # φ0, once job 0 has run
    z0 = tl.zeros((BLOCK, N_Q2), mr.dtype)  # its <Z_q>
    for j in range(k1 - k0 + 1):
        k = k0 + j - 1
        angle = (j > 0) & (k >= n_params)
        flip = tl.where((j == 0) | angle, -1, k)  # the theta taken + π, if any
        first = tl.where((j == 0) | angle, 0, k // (2 * N_Q))  # the layer the evolution starts at
        for l in range(m_layer, first):
            mr, mi = _layer(mr, mi, th, valid, l, -1, N_Q, RING, BLOCK)
        m_layer = tl.maximum(m_layer, first)
        if angle:  # its qubit's vector changes: from the encoding
            xr, xi = _encode(an, valid, k - n_params, N_Q, BLOCK)
        else:
            xr, xi = mr, mi
        for l in range(first, n_layers):
            xr, xi = _layer(xr, xi, th, valid, l, flip, N_Q, RING, BLOCK)
        z1 = tl.zeros((BLOCK, N_Q2), mr.dtype)
        cross = tl.zeros((BLOCK, N_Q2), mr.dtype)
        for q in tl.static_range(N_Q):
            z1 = tl.where(col == q, _z(xr, xi, q, N_Q)[:, None], z1)
            x = tl.sum((f0r * xr + f0i * xi) * _zsign(q, N_Q, mr.dtype), 1)
            cross = tl.where(col == q, x[:, None], cross)
        if j == 0:
            f0r, f0i, z0 = xr, xi, z1
            if BASE:
                tl.store(dest, z0, mask=stored)
                dest += row_size
        else:
            even, odd = cos2 * z0 + sin2 * z1, sin1 * cross
            tl.store(dest, even + odd, mask=stored)
            tl.store(dest + row_size, even - odd, mask=stored)
            dest += 2 * row_size
