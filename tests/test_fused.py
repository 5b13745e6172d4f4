"""The fused Triton kernels of the local simulator (qworker/backends/fused.py) without a GPU: every
kernel in Triton's interpreter on CPU tensors, against the torch path (`local`) in float32 and
against PennyLane in float64 (the kernels compute in either), gradients included; what `local`
sends them and what it keeps; and, on a CUDA machine, the compiled kernels in a process of their own.

TRITON_INTERPRET is set below, before the kernels are first defined (fused imports them on first
use). pytest imports every test module before it runs any, so it holds for the whole session:
`local` then keeps CUDA tensors on the torch path (`fused.covers`), and the CUDA check runs in a
subprocess without it."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import dataclasses  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton")  # the dev extra's; without it `local` is the torch path alone
from test_shifted import batch, reference, reference_jacobians  # noqa: E402

from qworker import CircuitSpec, Gradient  # noqa: E402
from qworker.backends import Capabilities, LocalBackend, fused, local  # noqa: E402
from qworker.gradients import Shifts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHAPES = [CircuitSpec(3, 2, "chain"), CircuitSpec(4, 1, "ring"), CircuitSpec(5, 0), CircuitSpec(1, 2)]
F32 = dict(atol=3e-6, rtol=0)  # float32 rounding of values in [-1, 1] (as tests/test_simulators.py)
F64 = dict(atol=1e-12, rtol=0)


def ids(spec: CircuitSpec) -> str:
    return f"{spec.n_qubits}q{spec.n_layers}l{spec.entangler}"


def torch_vjp(spec, theta, angles, g):
    """The torch path's adjoint VJP (local's hand-written backward, through autograd)."""
    t, a = theta.clone().requires_grad_(), angles.clone().requires_grad_()
    return torch.autograd.grad(local.expectations(spec, t, a), (t, a), g, allow_unused=True, materialize_grads=True)


@pytest.mark.parametrize("spec", SHAPES, ids=ids)
@pytest.mark.parametrize("per_token", [False, True])
def test_forward_and_adjoint_equal_pennylane_and_the_torch_path(spec, per_token):
    n = max(spec.n_qubits, 3)  # N == n_q where it can: a broadcast mistake would not pass silently
    theta, angles = batch(spec, n, per_token, seed=spec.n_qubits)
    g = torch.randn(n, spec.n_qubits, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # float64: the kernels' arithmetic against an independent simulator, to rounding
    torch.testing.assert_close(fused.expectations(spec, theta, angles), reference(spec, theta, angles), **F64)
    j_theta, j_angles = reference_jacobians(spec, theta, angles)
    want_theta = torch.einsum("ni,nip->np" if per_token else "ni,nip->p", g, j_theta)
    got_theta, got_angles = fused.vjp(spec, theta, angles, g)
    torch.testing.assert_close(got_theta, want_theta, atol=1e-11, rtol=0)
    torch.testing.assert_close(got_angles, torch.einsum("ni,nia->na", g, j_angles), atol=1e-11, rtol=0)
    # float32, the CUDA path's dtype: the torch path's answers to float32 rounding
    theta, angles, g = theta.float(), angles.float(), g.float()
    z = fused.expectations(spec, theta, angles)
    assert z.dtype == torch.float32 and z.shape == (n, spec.n_qubits)
    torch.testing.assert_close(z, local.expectations(spec, theta, angles), **F32)
    for got, want in zip(fused.vjp(spec, theta, angles, g), torch_vjp(spec, theta, angles, g)):
        assert got.shape == want.shape  # theta's: (|Θ|,) shared, (N, |Θ|) per token
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)  # summed over tokens and qubits


@pytest.mark.parametrize("per_token", [False, True])
def test_gradcheck_in_float64_through_the_autograd_function(per_token):
    spec = CircuitSpec(3, 2, "ring")
    theta, angles = batch(spec, 3, per_token, seed=4)
    f = lambda t, a: fused.expectations(spec, t, a)  # noqa: E731
    # fast mode: the Jacobian's product with random vectors, a few kernel launches, not one a column
    assert torch.autograd.gradcheck(f, (theta.requires_grad_(), angles.requires_grad_()), fast_mode=True)


@pytest.mark.parametrize("spec", SHAPES, ids=ids)
@pytest.mark.parametrize("per_token", [False, True])
def test_shifted_rows_equal_pennylane_and_the_torch_path(spec, per_token):
    n = max(spec.n_qubits, 3)
    theta, angles = batch(spec, n, per_token, seed=spec.n_qubits + 1)
    every = range(spec.n_params + spec.n_angles)
    cut = range(max(0, spec.n_params - 2), spec.n_params + 1)  # a work unit across theta and the angles
    for components, base in ((every, True), (cut, False)):
        shifts = Shifts(theta, angles, 0.3, components, base)
        got = fused.shifted(spec, theta, angles, 0.3, components, base)
        assert got.shape == (shifts.n_rows, spec.n_qubits)
        torch.testing.assert_close(got, reference(spec, *shifts.rows()), **F64)
        t32, a32 = theta.float(), angles.float()
        got32 = fused.shifted(spec, t32, a32, 0.3, components, base)
        torch.testing.assert_close(got32, local.shifted(spec, t32, a32, 0.3, components, base), **F32)


def test_the_default_circuit_in_float32():
    """The paper's 10 qubits, 2 layers, ring: forward, adjoint and shifted rows (both layers' theta
    and a few input angles: each component is a whole evolution in the interpreter)."""
    spec = CircuitSpec()
    theta, angles = (t.float() for t in batch(spec, 2, seed=10))
    g = torch.randn(2, 10, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(fused.expectations(spec, theta, angles), local.expectations(spec, theta, angles), **F32)
    for got, want in zip(fused.vjp(spec, theta, angles, g), torch_vjp(spec, theta, angles, g)):
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    some = range(spec.n_params - 22, spec.n_params + 3)
    got = fused.shifted(spec, theta, angles, torch.pi / 2, some, True)
    torch.testing.assert_close(got, local.shifted(spec, theta, angles, torch.pi / 2, some, True), **F32)


def test_chunks_and_programs_do_not_change_results(monkeypatch):
    """Tokens cut into several launches and a program's tokens partly absent: the same numbers."""
    spec = CircuitSpec(3, 2)
    for per_token in (False, True):
        theta, angles = batch(spec, 5, per_token, seed=3)
        g = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        whole = fused.expectations(spec, theta, angles), *fused.vjp(spec, theta, angles, g)
        rows = fused.shifted(spec, theta, angles, 0.2, range(10, 14), True)
        with monkeypatch.context() as m:
            m.setattr(fused, "CHUNK_TOKENS", 3)  # launches of 3 and 2 tokens
            m.setattr(fused, "BLOCK_AMPLITUDES", 2 * 2**3)  # programs of 2 tokens: one half empty
            cut = fused.expectations(spec, theta, angles), *fused.vjp(spec, theta, angles, g)
            torch.testing.assert_close(fused.shifted(spec, theta, angles, 0.2, range(10, 14), True), rows, **F64)
        for a, b in zip(cut, whole):
            torch.testing.assert_close(a, b, **F64)


def test_an_empty_batch():
    spec = CircuitSpec()
    theta, angles = torch.rand(40), torch.zeros(0, 20)
    assert fused.expectations(spec, theta, angles).shape == (0, 10)
    g_theta, g_angles = fused.vjp(spec, theta, angles, torch.zeros(0, 10))
    assert g_theta.shape == (40,) and g_angles.shape == (0, 20) and not g_theta.any()
    assert fused.shifted(spec, theta, angles, 0.1, range(60), True).shape == (0, 10)
    g_theta, _ = fused.vjp(spec, torch.rand(0, 40), angles, torch.zeros(0, 10))  # per token: none
    assert g_theta.shape == (0, 40)


@pytest.fixture
def kernels_on_cpu(monkeypatch):
    """`local` sending what the kernels cover to them on CPU tensors (the interpreter), counting
    the calls: the dispatch that CUDA tensors take."""
    calls = {"expectations": 0, "vjp": 0, "shifted": 0}

    def counted(name):
        real = getattr(fused, name)

        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(fused, "covers", lambda spec, theta, angles: fused.covered(spec, angles.dtype))
    for name in calls:
        monkeypatch.setattr(fused, name, counted(name))
    return calls


@pytest.mark.parametrize("method", ["adjoint", "shift", "fd"])
def test_local_sends_what_the_kernels_cover_and_gets_the_same_answers(kernels_on_cpu, method):
    spec, backend = CircuitSpec(3, 1), LocalBackend()
    for per_token in (False, True):
        theta, angles = (t.float() for t in batch(spec, 5, per_token, seed=6))
        g = torch.randn(5, 3, generator=torch.Generator().manual_seed(6))
        got = backend.forward_and_jacobians(spec, theta, angles, Gradient(method))
        got_vjp = backend.vjp(spec, theta, angles, g, Gradient(method))
        with pytest.MonkeyPatch.context() as m:  # the torch path
            m.setattr(fused, "covers", lambda *args: False)
            want = backend.forward_and_jacobians(spec, theta, angles, Gradient(method))
            want_vjp = backend.vjp(spec, theta, angles, g, Gradient(method))
        tol = F32 if method != "fd" else dict(atol=3e-6 / Gradient().delta, rtol=0)  # fd divides rounding by δ
        for a, b in zip((*got, *got_vjp), (*want, *want_vjp)):
            torch.testing.assert_close(a, b, **tol)
    used = {"adjoint": ("expectations", "vjp"), "shift": ("shifted",), "fd": ("shifted",)}[method]
    assert all(kernels_on_cpu[name] > 0 for name in used), kernels_on_cpu


def test_what_the_kernels_do_not_cover_takes_the_torch_path(kernels_on_cpu):
    """More qubits than fused.MAX_QUBITS, or float64: the torch path, bit for bit; and capabilities say so."""
    backend = LocalBackend()
    big = CircuitSpec(fused.MAX_QUBITS + 1, 1)
    theta, angles = (t.float() for t in batch(big, 2, seed=1))
    z = backend.expectations(big, theta, angles)
    spec = CircuitSpec(3, 1)
    theta64, angles64 = batch(spec, 4, seed=2)
    j = backend.jacobians(spec, theta64, angles64, Gradient("shift"))
    with pytest.MonkeyPatch.context() as m:
        m.setattr(fused, "covers", lambda *args: False)
        assert torch.equal(z, backend.expectations(big, theta, angles))
        assert all(torch.equal(a, b) for a, b in zip(j, backend.jacobians(spec, theta64, angles64, Gradient("shift"))))
    assert not any(kernels_on_cpu.values())
    assert not fused.covered(big, torch.float32) and not fused.covered(spec, torch.float64)
    caps = backend.capabilities()
    assert caps.fused == fused.describe() and f"n_qubits <= {fused.MAX_QUBITS}" in caps.fused
    assert dataclasses.replace(caps, fused="") == Capabilities(backend.methods)  # nothing else changed


def test_the_cpu_path_never_reaches_the_kernels(monkeypatch):
    spec = CircuitSpec()
    theta, angles = torch.rand(40), torch.rand(8, 20)
    assert not fused.covers(spec, theta, angles)  # CPU tensors: the torch path as it always was
    monkeypatch.setattr(fused, "available", lambda: False)  # a machine without triton
    assert "triton is not importable" in LocalBackend().capabilities().fused


COMPILE = """
import triton
from triton.backends.compiler import GPUTarget
from qworker.backends import fused_kernels as k

ints = ("n_tok", "n_layers", "row_size", "k0", "k1")
for shared, ring, base in ((True, True, True), (False, False, False)):
    for kernel in (k.forward_kernel, k.adjoint_kernel, k.shifted_kernel):
        consts = {"N_Q": 3, "RING": ring, "SHARED": shared, "BLOCK": 4, "BASE": base, "N_Q2": 4}
        consts = {a: v for a, v in consts.items() if a in kernel.arg_names}
        sig = {a: "constexpr" if a in consts else "i32" if a in ints else "*fp32" for a in kernel.arg_names}
        source = triton.compiler.ASTSource(fn=kernel, signature=sig, constexprs=consts)
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
print("ok")
"""


@pytest.mark.slow
def test_the_kernels_compile_for_a_gpu():
    """The interpreter runs Python that Triton's compiler may refuse: compile every kernel, both
    ways of each compile-time branch, to sm_90 machine code (Triton's own LLVM and ptxas; no GPU
    needed), in a process without TRITON_INTERPRET."""
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"  # Triton's default, said aloud (3.9 warns until it is)
    run = subprocess.run(
        [sys.executable, "-c", COMPILE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernels_on_cuda_equal_the_torch_path():
    """The kernels compiled (a process without TRITON_INTERPRET) through `local` on CUDA, against
    the torch path on the CPU: forward, adjoint VJP and a shift Jacobian."""
    script = """
import torch, qworker
from qworker import CircuitSpec
from qworker.backends import fused
spec = CircuitSpec()
g = torch.Generator().manual_seed(0)
for shape in ((40,), (1024, 40)):
    theta, angles = torch.rand(shape, generator=g) * 6.28, torch.rand(1024, 20, generator=g) * 6.28
    up = torch.randn(1024, 10, generator=g)
    assert fused.covers(spec, theta.cuda(), angles.cuda())
    cpu = [qworker.expectations(spec, theta, angles), *qworker.vjp(spec, theta, angles, up)]
    cpu += qworker.jacobians(spec, theta, angles[:64], method="shift")
    gpu = [qworker.expectations(spec, theta.cuda(), angles.cuda())]
    gpu += qworker.vjp(spec, theta.cuda(), angles.cuda(), up.cuda())
    gpu += qworker.jacobians(spec, theta.cuda(), angles[:64].cuda(), method="shift")
    for a, b, atol in zip(gpu, cpu, (1e-5, 2e-3, 1e-5, 1e-5, 1e-5)):  # theta's VJP: a sum over 1024 tokens
        torch.testing.assert_close(a.cpu(), b, atol=atol, rtol=1e-4)
print("ok")
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0 and "ok" in run.stdout, run.stdout[-2000:] + run.stderr[-3000:]
