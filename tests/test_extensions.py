"""The two extension points, used from outside the package as a newcomer would (docs/design.md,
"How to extend"): a gradient method (forward differences) and a backend (a noisy toy device), both
defined in one file that is not part of hyqut, registered, and run in this process, in a trainer
(found through their entry points) and through the qworker service."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import qworker
from qworker import CircuitSpec, Gradient, get_backend, gradients
from qworker.backends import registry
from qworker.client import RemoteError
from qworker.server.service import ServerConfig, create_server

ROOT = Path(__file__).resolve().parents[1]
SPEC = CircuitSpec(3, 2)

PLUGIN = '''
"""Not part of hyqut: a gradient method and a backend, each registered by name."""
import torch

from qworker.backends import Backend, LocalBackend
from qworker.gradients import Method


class ForwardDifferences(Method):
    """(f(x + delta) - f(x)) / delta per parameter component: error O(delta), 1 + |theta| + 2 n_q
    evaluations a token (central differences take 1 + 2 (|theta| + 2 n_q))."""

    name = "forward"
    columns = True  # computed column by column: a server may split the columns over replicas

    def evaluations(self, spec, grad, columns=None):
        return 1 + (spec.n_params + spec.n_angles if columns is None else columns)

    def jacobians(self, backend, spec, theta, angles, grad, base, components=None):
        n_tok, n_params = angles.shape[0], spec.n_params
        components = range(n_params + spec.n_angles) if components is None else components
        thetas, rows = [theta.expand(n_tok, n_params)], [angles]
        for k in components:
            t, a = thetas[0].clone(), angles.clone()
            if k < n_params:
                t[:, k] += grad.delta
            else:
                a[:, k - n_params] += grad.delta
            thetas.append(t)
            rows.append(a)
        out = backend.expectations(spec, torch.cat(thetas), torch.cat(rows))  # one call: one job on hardware
        out = out.reshape(1 + len(components), n_tok, spec.n_qubits)
        j = ((out[1:] - out[0]) / grad.delta).permute(1, 2, 0)  # (N, n_q, K)
        split = len(range(components.start, min(components.stop, n_params)))
        return j[..., :split], j[..., split:], out[0] if base else None


class NoisyDevice(Backend):
    """A toy device: exact <Z_i> times `gain`, plus Gaussian noise of standard deviation `noise`."""

    name = "noisy"
    seeded, thread_safe = True, False  # its noise comes from a generator that `seed` fixes

    def __init__(self, gain: float = 1.0, noise: float = 0.0, seed: int | None = None):
        if not 0.0 <= noise <= 1.0:
            raise ValueError(f"noise must be in [0, 1], got {noise!r}")
        self.gain, self.noise = gain, noise
        self.generator = torch.Generator().manual_seed(0 if seed is None else seed)

    def reseed(self, seed):
        self.generator.manual_seed(seed)

    def expectations(self, spec, theta, angles):
        z = LocalBackend().expectations(spec, theta, angles)
        return self.gain * z + self.noise * torch.randn(z.shape, generator=self.generator, dtype=z.dtype)
'''


@pytest.fixture(scope="module")
def plugin(tmp_path_factory):
    """The plug-in file with its entry points (what `pip install` of a distribution would write),
    and its classes registered in this process."""
    root = tmp_path_factory.mktemp("plugin")
    (root / "my_extensions.py").write_text(textwrap.dedent(PLUGIN))
    info = root / "my_extensions-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-extensions\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[hyqut.gradients]\nforward = my_extensions:ForwardDifferences\n\n"
        "[hyqut.backends]\nnoisy = my_extensions:NoisyDevice\n"
    )
    sys.path.insert(0, str(root))
    import my_extensions

    if "forward" not in qworker.method_names():
        qworker.register_method(my_extensions.ForwardDifferences())
    qworker.register_backend("noisy", my_extensions.NoisyDevice)
    yield root, my_extensions
    sys.path.remove(str(root))
    # a process has one registry: the tests after this module see the built-ins alone again
    gradients._REGISTRY.pop("forward", None)
    registry._REGISTERED.pop("noisy", None)


@pytest.fixture(scope="module")
def service(plugin):
    """A qworker service (in-process pool) serving local and the plug-in's backend."""
    server, port = create_server(ServerConfig(port=0, simulators=("local", "noisy")))
    server.start()
    server.wait_ready(30)
    yield port
    server.stop(1)


def batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    theta = torch.rand(SPEC.n_params, generator=g, dtype=torch.float64) * 6
    return theta, torch.rand(n, SPEC.n_angles, generator=g, dtype=torch.float64) * 6


def test_the_new_method_is_a_method_of_every_backend_that_can_run_it(plugin):
    assert "forward" in get_backend("local").methods and "forward" in get_backend("shots").methods
    assert "forward" in get_backend("noisy").methods and "adjoint" not in get_backend("noisy").methods
    theta, angles = batch()
    exact = qworker.jacobians(SPEC, theta, angles)  # adjoint
    forward = qworker.jacobians(SPEC, theta, angles, method="forward", delta=1e-6)
    for a, b in zip(exact, forward):
        torch.testing.assert_close(b, a, atol=5e-6, rtol=0)  # O(delta): |f''| <= 1
    coarse = qworker.jacobians(SPEC, theta, angles, method="forward", delta=1e-2)
    assert 1e-4 < (coarse[0] - exact[0]).abs().max() < 1e-2  # first order: a real truncation error
    assert Gradient("forward").evaluations(SPEC) == 1 + SPEC.n_params + SPEC.n_angles


def test_the_new_backend_with_an_option_and_a_seed(plugin, service):
    theta, angles = batch()
    exact = get_backend("local").expectations(SPEC, theta, angles)
    device = get_backend("noisy", gain=0.5, noise=0.01, seed=3)
    z = device.expectations(SPEC, theta, angles)
    assert 0 < (z - 0.5 * exact).abs().max() < 0.05  # the gain applied, the noise drawn
    torch.testing.assert_close(get_backend("noisy", gain=0.5, noise=0.01, seed=3).expectations(SPEC, theta, angles), z)

    remote = get_backend(f"grpc://127.0.0.1:{service}?simulator=noisy", gain=0.5, noise=0.01, seed=3)
    caps = remote.capabilities()
    assert caps.seeded and caps.options == ("gain", "noise", "seed") and "adjoint" not in caps.methods
    torch.testing.assert_close(remote.expectations(SPEC, theta, angles), z)  # its first request carries seed 3
    g_theta, _ = remote.vjp(SPEC, theta, angles, torch.ones_like(z), Gradient("forward", delta=1e-3))
    assert g_theta.shape == theta.shape and torch.isfinite(g_theta).all()
    bad = get_backend(f"grpc://127.0.0.1:{service}?simulator=noisy", noise=2.0)
    with pytest.raises(RemoteError, match="noise must be in"):
        bad.expectations(SPEC, theta, angles)
    unknown = get_backend(f"grpc://127.0.0.1:{service}?simulator=noisy", shots=10)
    with pytest.raises(RemoteError, match="takes no option shots"):
        unknown.expectations(SPEC, theta, angles)


SMALL = ["--model", "tiny", "--quantum", "wq", "--quantum-layers", "0", "--n-qubits", "3", "--context", "16"]
TWO_STEPS = ["--batch-size", "2", "--steps", "2", "--eval-batches", "1", "--grad", "forward", "--fd-delta", "1e-3"]


def train(plugin_root: Path, cache_dir, out: Path, *flags) -> list[float]:
    env = {**os.environ, "PYTHONPATH": str(plugin_root), "DS_ACCELERATOR": "cpu", "HYQUT_CACHE": str(cache_dir)}
    cmd = [sys.executable, "-m", "trainer.main", *SMALL, *TWO_STEPS, "--out", str(out), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert json.loads((out / "run.json").read_text())["train"]["grad"] == "forward"
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_trainer_trains_with_both_in_process_and_through_the_service(plugin, service, cache_dir, corpus, tmp_path):
    root, _ = plugin
    here = train(root, cache_dir, tmp_path / "local")
    there = train(root, cache_dir, tmp_path / "grpc", "--qbackend", f"grpc://127.0.0.1:{service}?simulator=local")
    assert len(here) == 2 and all(map(torch.isfinite, torch.tensor(here)))
    torch.testing.assert_close(torch.tensor(there), torch.tensor(here), atol=1e-5, rtol=1e-5)
    noisy = train(root, cache_dir, tmp_path / "noisy", "--qbackend", "noisy", "--qbackend-options", "noise=0.01")
    assert len(noisy) == 2 and noisy != here  # the device's noise reaches the losses
