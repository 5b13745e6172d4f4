"""Hardware adapters as plug-ins: the entry point registry, capabilities, the shots emulator's
queue, and the Qiskit Estimator V2 adapter against the local simulator."""

import math
import sys
import time
import types
from importlib import metadata

import pytest
import torch

import qworker
from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import (
    BACKENDS,
    ENTRY_POINT_GROUP,
    MAX_SHOTS,
    Backend,
    LocalBackend,
    PluginError,
    ShotsBackend,
    available_backends,
    backend_class,
)
from qworker.backends.braket_adapter import BraketBackend
from qworker.backends.pennylane_adapter import PennyLaneBackend
from qworker.backends.qiskit_adapter import QiskitBackend

SIMULATOR_METHODS = ("adjoint", "shift", "fd", "spsa")  # docs/design.md, "Gradients"
HARDWARE_METHODS = ("shift", "fd", "spsa")  # no state vector: no adjoint


def batch(spec, n_tok, seed=0, per_token_theta=False):
    g = torch.Generator().manual_seed(seed)
    theta_shape = (n_tok, spec.n_params) if per_token_theta else (spec.n_params,)
    theta = torch.rand(theta_shape, generator=g, dtype=torch.float64) * 6 - 3
    angles = torch.rand(n_tok, spec.n_angles, generator=g, dtype=torch.float64) * 6 - 3
    return theta, angles


# --- the Qiskit adapter ---------------------------------------------------------------------


@pytest.mark.parametrize("spec", [CircuitSpec(3, 2, "ring"), CircuitSpec(4, 1, "chain")], ids=str)
@pytest.mark.parametrize("options", [{}, {"simulator": "aer"}, {"max_batch": 3}], ids=str)
def test_qiskit_exact_matches_local(spec, options):
    theta, angles = batch(spec, 7)
    z = get_backend("qiskit", **options).expectations(spec, theta, angles)
    assert z.shape == (7, spec.n_qubits) and z.dtype == torch.float64
    torch.testing.assert_close(z, get_backend("local").expectations(spec, theta, angles), atol=1e-12, rtol=0)


def test_qiskit_per_token_theta_and_dtype():
    spec = CircuitSpec(3, 1)
    theta, angles = batch(spec, 5, seed=1, per_token_theta=True)
    z = get_backend("qiskit").expectations(spec, theta.float(), angles.float())
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, get_backend("local").expectations(spec, theta, angles).float(), atol=1e-6, rtol=0)
    assert get_backend("qiskit").expectations(spec, theta[0], angles[:0]).shape == (0, 3)


@pytest.mark.parametrize("simulator", ["statevector", "aer"])
def test_qiskit_shots_within_standard_errors(simulator):
    spec, shots = CircuitSpec(3, 2), 4096
    theta, angles = batch(spec, 40, seed=2)
    exact = get_backend("local").expectations(spec, theta, angles)
    backend = get_backend("qiskit", simulator=simulator, shots=shots, seed=5)
    a, b = backend.expectations(spec, theta, angles), backend.expectations(spec, theta, angles)
    err = (a - exact).abs()
    assert err.max() < 5 / math.sqrt(shots)  # 5 standard errors at most, over 120 estimates
    assert err.mean() > 0.2 / math.sqrt(shots)  # the noise is really there
    assert not torch.equal(a, b)  # fresh noise per job, not the same draw repeated
    again = get_backend("qiskit", simulator=simulator, shots=shots, seed=5).expectations(spec, theta, angles)
    assert torch.equal(a, again)  # seeded: reproducible


def test_qiskit_shift_jacobians_match_local_adjoint():
    spec = CircuitSpec(3, 1)
    theta, angles = batch(spec, 4, seed=3)
    j_theta, j_angles = get_backend("qiskit").jacobians(spec, theta, angles, Gradient("shift"))
    ref_theta, ref_angles = get_backend("local").jacobians(spec, theta, angles, Gradient("adjoint"))
    torch.testing.assert_close(j_theta, ref_theta, atol=1e-10, rtol=0)
    torch.testing.assert_close(j_angles, ref_angles, atol=1e-10, rtol=0)
    g = torch.ones(4, spec.n_qubits, dtype=torch.float64)
    got = qworker.vjp(spec, theta, angles, g, "shift", get_backend("qiskit"))
    torch.testing.assert_close(got, qworker.vjp(spec, theta, angles, g), atol=1e-10, rtol=0)


def test_qiskit_pass_manager_routes_and_keeps_the_result():
    from qiskit.transpiler import CouplingMap, generate_preset_pass_manager

    spec = CircuitSpec(3, 2, "ring")  # a ring on a line of 5 device qubits: routing permutes them
    line = CouplingMap.from_line(5)
    pm = generate_preset_pass_manager(1, basis_gates=["rz", "sx", "x", "cx"], coupling_map=line, seed_transpiler=3)
    backend = get_backend("qiskit", pass_manager=pm)
    theta, angles = batch(spec, 5, seed=4)
    z = backend.expectations(spec, theta, angles)
    circuit = backend.compiled(spec).circuit
    assert circuit.num_qubits == 5 and set(circuit.count_ops()) <= {"rz", "sx", "x", "cx"}
    torch.testing.assert_close(z, get_backend("local").expectations(spec, theta, angles), atol=1e-12, rtol=0)


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"shots": 0}, "shots must be None"),
        ({"shots": MAX_SHOTS + 1}, "shots must be None"),
        ({"max_batch": 0}, "max_batch must be None"),
        ({"simulator": "gpu"}, "unknown simulator 'gpu'"),
        ({"estimator": object(), "simulator": "aer"}, "leave it out when giving one"),
        ({"mode": "batch"}, "mode=batch is an execution mode of qiskit-ibm-runtime: it needs device="),
    ],
)
def test_qiskit_bad_settings(kwargs, words):
    with pytest.raises(ValueError, match=words):
        get_backend("qiskit", **kwargs)


def test_qiskit_ibm_device_names_what_it_needs():
    try:
        import qiskit_ibm_runtime  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="device='ibm_brisbane' needs qiskit-ibm-runtime"):
            get_backend("qiskit", device="ibm_brisbane")
    with pytest.raises(ValueError, match="give an estimator or a device name, not both"):
        get_backend("qiskit", estimator=object(), device="ibm_brisbane")


@pytest.mark.parametrize("name", ["qiskit", "shots"])
def test_adjoint_refused_on_hardware(name):
    spec = CircuitSpec(2, 1)
    theta, angles = batch(spec, 2)
    with pytest.raises(ValueError, match=rf"'adjoint' is not supported by backend '{name}' \(adjoint .* state vector"):
        get_backend(name).vjp(spec, theta, angles, torch.ones(2, 2, dtype=torch.float64), Gradient("adjoint"))


# --- the registry -----------------------------------------------------------------------------


def test_entry_points_register_builtins_and_adapters():
    eps = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    assert {"local", "qulacs", "shots", "qiskit", "braket", "pennylane"} <= set(eps)
    assert eps["qiskit"].load() is QiskitBackend and eps["shots"].load() is ShotsBackend
    assert isinstance(get_backend("qiskit"), QiskitBackend)
    adapters = {"braket": BraketBackend, "pennylane": PennyLaneBackend, "qiskit": QiskitBackend}
    assert available_backends() == {**BACKENDS, **adapters}


class FakeDeviceBackend(Backend):
    """A third party's adapter: exact values from `local`, a configurable scale."""

    name = "fakedev"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def expectations(self, spec, theta, angles):
        return self.scale * LocalBackend().expectations(spec, theta, angles)


@pytest.fixture
def plugins(monkeypatch):
    """Register entry points at test time: `plugins(name="module:attr", ...)`, on top of the
    installed ones; a fake `hyqut_fake_plugin` module holds FakeDeviceBackend."""
    module = types.ModuleType("hyqut_fake_plugin")
    module.FakeDeviceBackend, module.not_a_backend = FakeDeviceBackend, object()
    monkeypatch.setitem(sys.modules, "hyqut_fake_plugin", module)
    installed = metadata.entry_points

    def register(**entries):
        extra = tuple(metadata.EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in entries.items())

        def entry_points(**params):
            found = installed(**params)
            return (*extra, *found) if params.get("group") == ENTRY_POINT_GROUP else found

        monkeypatch.setattr(metadata, "entry_points", entry_points)

    return register


def test_third_party_plugin_is_found(plugins):
    plugins(fakedev="hyqut_fake_plugin:FakeDeviceBackend")
    backend = get_backend("fakedev", scale=0.5)
    assert isinstance(backend, FakeDeviceBackend) and backend.scale == 0.5
    assert available_backends()["fakedev"] is FakeDeviceBackend and backend_class("fakedev") is FakeDeviceBackend
    spec = CircuitSpec(2, 1)
    theta, angles = batch(spec, 3)
    z = qworker.expectations(spec, theta, angles, backend=backend)
    torch.testing.assert_close(z, 0.5 * qworker.expectations(spec, theta, angles))
    with pytest.raises(ValueError, match="'adjoint' is not supported by backend 'fakedev'"):
        qworker.jacobians(spec, theta, angles, "adjoint", backend)


def test_a_replica_looks_a_plugin_up_once_not_per_request(plugins, monkeypatch):
    """Reading the entry points scans every installed distribution's metadata (~3 ms): a replica
    does it when it starts, not for each request it serves."""
    from qworker.protocol.convert import to_request
    from qworker.protocol.evaluation import Evaluation
    from qworker.server.replica import Replica

    plugins(fakedev="hyqut_fake_plugin:FakeDeviceBackend")
    replica = Replica(("local", "fakedev"))
    replica.start()
    scans, scan = [], metadata.entry_points
    monkeypatch.setattr(metadata, "entry_points", lambda **p: scans.append(p) or scan(**p))
    spec = CircuitSpec(2, 1)
    theta, angles = batch(spec, 3)
    for _ in range(3):
        data, _, _ = replica.evaluate(to_request(Evaluation.of(spec, "fakedev", theta, angles)).SerializeToString())
        assert len(data) > 0
    assert scans == []


def test_builtin_names_win_over_plugins(plugins):
    plugins(local="hyqut_fake_plugin:FakeDeviceBackend")
    assert type(get_backend("local")) is LocalBackend
    assert available_backends()["local"] is LocalBackend


def test_unknown_name_lists_available(plugins):
    plugins(fakedev="hyqut_fake_plugin:FakeDeviceBackend")
    listed = "choose one of local, qulacs, shots, auto, braket, fakedev, pennylane, qiskit"
    with pytest.raises(ValueError, match=rf"unknown backend 'nope'; {listed} \(or ray, or grpc://host:port"):
        get_backend("nope")


@pytest.mark.parametrize(
    "value,words",
    [
        ("hyqut_no_such_module:Backend", "failed to import: ModuleNotFoundError"),
        ("hyqut_fake_plugin:Missing", "failed to import: AttributeError"),
        ("hyqut_fake_plugin:not_a_backend", "not a subclass of qworker.backends.Backend"),
    ],
)
def test_broken_plugin_is_named(plugins, value, words):
    plugins(broken=value)
    with pytest.raises(PluginError, match=rf"backend plug-in 'broken' \({value}.*{words}"):
        get_backend("broken")
    with pytest.raises(PluginError, match="plug-in 'broken'"):
        available_backends()
    assert isinstance(get_backend("qiskit"), QiskitBackend)  # the others still load


# --- capabilities and the shots emulator's queue ------------------------------------------------


def test_capabilities_of_builtins():
    for name in ("local", "qulacs"):
        caps = get_backend(name).capabilities()
        assert caps.methods == SIMULATOR_METHODS and not caps.hardware and caps.max_shots == 0 and caps.max_batch == 0
    shots = get_backend("shots", queue_latency_s=0.25).capabilities()
    assert shots.methods == HARDWARE_METHODS and "adjoint" not in shots.methods
    assert shots.hardware and shots.max_shots == MAX_SHOTS and shots.queue_latency_s == 0.25
    qiskit = get_backend("qiskit", max_batch=100).capabilities()
    assert qiskit.methods == HARDWARE_METHODS and qiskit.hardware and qiskit.max_batch == 100
    assert qiskit.max_shots == MAX_SHOTS and get_backend("qiskit").capabilities().max_batch == 0


def test_shots_queue_latency_delays_every_job():
    spec, latency = CircuitSpec(1, 1), 0.3
    theta, angles = batch(spec, 3)
    backend = get_backend("shots", shots=64, seed=0, queue_latency_s=latency)
    start = time.perf_counter()
    backend.expectations(spec, theta, angles)
    assert time.perf_counter() - start >= latency
    start = time.perf_counter()
    backend.jacobians(spec, theta, angles, Gradient("shift"))  # every shift in one job: one wait, not 2·(2 + 2)
    assert latency <= time.perf_counter() - start < 2 * latency


@pytest.mark.parametrize("latency", [-0.1, float("nan"), float("inf"), "1"])
def test_shots_queue_latency_refuses_bad_values(latency):
    with pytest.raises(ValueError, match="queue_latency_s must be a finite number of seconds >= 0"):
        get_backend("shots", queue_latency_s=latency)


def test_shots_refuses_more_than_max_shots():
    with pytest.raises(ValueError, match=f"shots must be an integer >= 1 and <= {MAX_SHOTS}"):
        get_backend("shots", shots=MAX_SHOTS + 1)
