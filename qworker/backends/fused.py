"""The `local` simulator's fused GPU kernels: the whole circuit in one launch per chunk of tokens,
each token's register on chip (docs/design.md, "The local simulator").

On CUDA the torch path (local.py) is a few whole-register steps per gate run, each a kernel
that reads and writes every register from GPU memory; at a training step's batch that is many
small launches and much memory traffic for ~1 MFLOP of arithmetic a token. Here a program
holds BLOCK tokens' registers (2^n float32 real and imaginary planes) in registers and shared
memory and runs every gate on them (qworker/backends/fused_kernels.py, Triton):

    z = expectations(spec, theta, angles)          # (N, n_q), differentiable: adjoint backward
    g_theta, g_angles = vjp(spec, theta, angles, g)
    rows = shifted(spec, theta, angles, step, components, base)   # as local.shifted

`local` calls them where `covers(spec, theta, angles)`: CUDA tensors, triton importable, at most
MAX_QUBITS qubits, a dtype in DTYPES; everything else stays on the torch path. With
TRITON_INTERPRET=1 set before their first call, they run on CPU tensors in Triton's interpreter
(the same kernel source, run by numpy: slow) in any float dtype, float64 included: that is how
tests/test_fused.py checks them without a GPU (called directly, never through `local`, which
then keeps CUDA tensors on the torch path too). The CUDA dispatch keeps to float32, the dtype
the launch sizes below are chosen for.
"""

from __future__ import annotations

import importlib.util
import math
import os
from functools import cache

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from qworker import deadline
from qworker.circuit import CircuitSpec

MAX_QUBITS = 12  # a program's register, 2^12 float32 amplitudes x 2 planes = 32 KB, still fits on chip
DTYPES = (torch.float32,)  # what `local` sends here on CUDA; float64 stays on the torch path
BLOCK_AMPLITUDES = 2**11  # amplitudes a program holds per plane: tokens per program = this >> n (untuned)
CHUNK_TOKENS = 2**16  # tokens per launch: the evaluation's deadline is checked between launches
ENABLED = True  # False keeps CUDA on the torch path too (bench/vqc.py's `local-torch`: the baseline)


@cache
def available() -> bool:
    """Whether triton can be imported here (not imported by this check: it takes a while)."""
    return importlib.util.find_spec("triton") is not None


def covered(spec: CircuitSpec, dtype: torch.dtype) -> bool:
    """Whether the kernels cover this circuit and dtype, wherever the tensors are."""
    return spec.n_qubits <= MAX_QUBITS and dtype in DTYPES


def covers(spec: CircuitSpec, theta: Tensor, angles: Tensor) -> bool:
    """Whether `local` runs this evaluation in the kernels: CUDA tensors of one device and dtype,
    a covered shape, triton importable and compiling (not its interpreter: on CUDA tensors it
    would be far slower than the torch path). Everything else takes the torch path, unchanged."""
    return (
        ENABLED
        and angles.is_cuda
        and theta.device == angles.device
        and theta.dtype == angles.dtype
        and covered(spec, angles.dtype)
        and available()
        and os.environ.get("TRITON_INTERPRET", "0").lower() in ("", "0", "false", "off", "no")
    )


def describe() -> str:
    """What the kernels cover, for `LocalBackend.capabilities()` (and the service's Info)."""
    if not available():
        return "none here: triton is not importable; every evaluation takes the torch path"
    return (
        f"CUDA tensors, n_qubits <= {MAX_QUBITS}, {', '.join(str(d).removeprefix('torch.') for d in DTYPES)}, "
        "ring or chain, shared or per-token theta: forward, adjoint, shift and fd rows; "
        "anything else (the CPU, more qubits, float64) takes the torch path"
    )


def expectations(spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
    """<Z_i> of every token, (N, n_q) in the angles' dtype; theta (|Θ|,) or (N, |Θ|), of the angles'
    dtype and device. Differentiable in both: the backward is `vjp`, the adjoint method."""
    return _Circuit.apply(theta, angles, spec)


class _Circuit(torch.autograd.Function):
    """The circuit as one autograd node: the forward kernel, then in backward the adjoint kernel
    (which runs the forward again rather than keeping 2^n amplitudes a token)."""

    @staticmethod
    def forward(ctx, theta: Tensor, angles: Tensor, spec: CircuitSpec) -> Tensor:
        ctx.spec = spec
        ctx.save_for_backward(theta, angles)
        return _forward(spec, theta.detach(), angles.detach())

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        theta, angles = ctx.saved_tensors
        g_theta, g_angles = vjp(ctx.spec, theta, angles, grad_out)
        return (g_theta if ctx.needs_input_grad[0] else None), (g_angles if ctx.needs_input_grad[1] else None), None


def _forward(spec: CircuitSpec, theta: Tensor, angles: Tensor) -> Tensor:
    out = angles.new_empty(angles.shape[0], spec.n_qubits)  # (N, n_q)
    for start, stop, kernel_theta in _chunks(theta, angles):
        n = stop - start
        _kernels().forward_kernel[_grid(spec, n)](
            kernel_theta,
            angles[start:stop].contiguous(),
            out[start:stop],
            n,
            spec.n_layers,
            **_meta(spec, theta, planes=2),
        )
    return out


@torch.no_grad()
def vjp(spec: CircuitSpec, theta: Tensor, angles: Tensor, grad_out: Tensor) -> tuple[Tensor, Tensor]:
    """(dL/dtheta, dL/dangles) for L = Σ grad_out·<Z>, by the adjoint method; dL/dtheta has theta's
    shape ((|Θ|,) summed over the tokens, or (N, |Θ|) per token)."""
    shared, n_params = theta.dim() == 1, spec.n_params
    g_theta = theta.new_zeros(theta.shape)  # (|Θ|,) or (N, |Θ|)
    g_angles = angles.new_empty(angles.shape)  # (N, 2n_q)
    grad_out = grad_out.to(angles.dtype).contiguous()
    for start, stop, kernel_theta in _chunks(theta, angles):
        n = stop - start
        grid = _grid(spec, n)
        rows = grid[0] if shared else n  # a shared theta: one row of partial sums per program
        part = g_theta.new_empty(max(1, rows * n_params)) if shared or n_params == 0 else g_theta[start:stop]
        _kernels().adjoint_kernel[grid](
            kernel_theta,
            angles[start:stop].contiguous(),
            grad_out[start:stop],
            part,
            g_angles[start:stop],
            n,
            spec.n_layers,
            **_meta(spec, theta, planes=4),
        )
        if shared and n_params:
            g_theta += part.view(rows, n_params).sum(0)
    return g_theta, g_angles


@torch.no_grad()
def shifted(spec: CircuitSpec, theta: Tensor, angles: Tensor, step: float, components: range, base: bool) -> Tensor:
    """The rows of a shifted batch exactly as `local.shifted` returns them, ((base + 2K)·N, n_q):
    the unshifted tokens first if `base`, then for each component k the tokens with k shifted by
    +step, then by -step (theta's components, then the input angles')."""
    n_tok, n_q = angles.shape[0], spec.n_qubits
    n_rows = int(base) + 2 * len(components)
    out = angles.new_empty(n_rows, n_tok, n_q)
    if n_tok == 0 or n_rows == 0:
        return out.reshape(-1, n_q)
    half = step / 2
    coef = torch.tensor([math.cos(half) ** 2, math.sin(half) ** 2, math.sin(step)], dtype=angles.dtype)
    coef = coef.to(angles.device)
    for start, stop, kernel_theta in _chunks(theta, angles):
        n = stop - start
        _kernels().shifted_kernel[_grid(spec, n)](
            kernel_theta,
            angles[start:stop].contiguous(),
            coef,
            out[:, start:],  # this chunk's tokens in every row; rows stay n_tok · n_q apart
            n_tok * n_q,
            n,
            spec.n_layers,
            components.start,
            components.stop,
            BASE=base,
            N_Q2=_next_power_of_2(n_q),
            **_meta(spec, theta, planes=6),
        )
    return out.reshape(-1, n_q)


def _chunks(theta: Tensor, angles: Tensor):
    """(start, stop, theta as the kernel reads it) per launch: CHUNK_TOKENS tokens, the deadline
    checked before each. An empty theta (no layers) is given one element: the kernels never read
    it, but a launch wants a real pointer."""
    shared = theta.dim() == 1
    for start in range(0, angles.shape[0], CHUNK_TOKENS):
        deadline.check()
        stop = min(start + CHUNK_TOKENS, angles.shape[0])
        t = theta if shared else theta[start:stop]
        yield start, stop, (t.contiguous() if t.numel() else theta.new_zeros(1))


def _grid(spec: CircuitSpec, n_tok: int) -> tuple[int]:
    return (-(-n_tok // _block(spec)),)


def _block(spec: CircuitSpec) -> int:
    """Tokens per program: BLOCK_AMPLITUDES a plane, at least one token."""
    return max(1, BLOCK_AMPLITUDES >> spec.n_qubits)


def _meta(spec: CircuitSpec, theta: Tensor, planes: int) -> dict:
    """The compile-time constants of a launch (one compiled kernel each) and its warps, in
    proportion to the register planes the kernel keeps live (2 in the forward, 4 in the adjoint:
    state and cotangent, 6 in the shifted rows: φ0, the main line, the fork): 4, 8 and 16 at
    2^11 amplitudes, chosen by compiling for sm_90 and reading registers and spills (no GPU has
    timed them yet)."""
    amplitudes = _block(spec) << spec.n_qubits
    warps = min(16, max(4, amplitudes * planes // 1024))
    return {
        "N_Q": spec.n_qubits,
        "RING": spec.entangler == "ring",
        "SHARED": theta.dim() == 1,
        "BLOCK": _block(spec),
        "num_warps": _next_power_of_2(warps),
    }


def _next_power_of_2(n: int) -> int:
    return 1 << (n - 1).bit_length()


@cache
def _kernels():
    """The Triton kernels, imported on first use: triton takes a while to import, and whether its
    kernels are compiled or interpreted is fixed when they are defined (TRITON_INTERPRET)."""
    from qworker.backends import fused_kernels

    return fused_kernels
