"""One job per gradient on hardware: a training step's forward and every shifted evaluation of a
quantum layer reach the device as one job, counted by a wrapper around a real estimator; and every
hardware-like backend accounts its jobs, circuits and shots."""

import torch

from qworker import CircuitSpec, Gradient, get_backend
from qworker.backends import Usage
from qworker.backends.qiskit_adapter import QiskitBackend
from trainer.model.circuits import Circuits
from trainer.model.config import from_preset
from trainer.model.convert import build_model
from trainer.model.quantum_linear import QuantumLinear


class CountingEstimator:
    """A real Estimator V2 (Qiskit's exact StatevectorEstimator) that counts the jobs submitted to
    it and the parameter sets of each: what a device's job queue would see."""

    def __init__(self):
        from qiskit.primitives import StatevectorEstimator

        self.inner, self.jobs = StatevectorEstimator(), []

    def run(self, pubs, precision=None):
        self.jobs.append([len(values) for _, _, values in pubs])  # parameter sets per PUB
        return self.inner.run(pubs, precision=precision)


def one_step(circuits: Circuits, backend=None, tokens: int = 4):
    """A tiny model with one quantum layer (W_q of layer 0; 4 qubits, 2 layers: |Θ| = 16, 8 input
    angles), one forward and backward on `tokens` tokens; `backend` replaces the layer's."""
    torch.manual_seed(0)
    model = build_model(from_preset("tiny", quantum="wq", quantum_layers=(0,), n_qubits=4), circuits)
    (layer,) = [m for m in model.modules() if isinstance(m, QuantumLinear)]
    if backend is not None:
        layer.backend = backend
    x = torch.randint(0, 100, (1, tokens))
    _, loss = model(x, x)
    loss.backward()
    return model


def test_fd_training_step_through_qiskit_is_one_job():
    counting = CountingEstimator()
    backend = QiskitBackend(estimator=counting)
    model = one_step(Circuits("qiskit", grad="fd"), backend)
    per_token = 1 + 2 * (16 + 8)  # the forward and both shifts of every theta and input angle
    assert counting.jobs == [[4 * per_token]]  # one job, its one PUB holding every row
    assert backend.usage == Usage(jobs=1, circuits=4 * per_token, shots=0)
    # the one job's rows give the right gradient: the same weights, exact adjoint on `local`
    ref = one_step(Circuits("local", grad="adjoint"))
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=2e-5, rtol=1e-3, msg=name)


def test_qiskit_splits_at_max_batch_within_one_job():
    counting = CountingEstimator()
    backend = QiskitBackend(estimator=counting, max_batch=40)
    one_step(Circuits("qiskit", grad="shift"), backend, tokens=2)
    assert counting.jobs == [[40, 40, 18]]  # 2 tokens x 49 rows, in PUBs of the device's limit
    assert backend.capabilities().max_batch == 40


def test_shots_backend_accounts_jobs_circuits_and_shots():
    spec = CircuitSpec(3, 1)
    backend = get_backend("shots", shots=50, seed=0)
    assert backend.capabilities().shots == 50 and get_backend("local").usage == Usage()
    theta, angles = torch.zeros(spec.n_params), torch.zeros(5, spec.n_angles)
    backend.expectations(spec, theta, angles)
    backend.jacobians(spec, theta, angles, Gradient("fd"))
    backend.jacobians(spec, theta, angles, Gradient("spsa", samples=3))
    rows = 5 + 5 * 2 * (spec.n_params + spec.n_angles) + 5 * 2 * 3
    assert backend.usage == Usage(jobs=3, circuits=rows, shots=50 * rows)


def test_service_exports_hardware_usage_by_backend():
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    import qworker
    from qworker.server.service import ServerConfig, create_server

    server, port = create_server(ServerConfig(port=0, metrics_port=0))  # the in-process pool
    server.start()
    try:
        spec = CircuitSpec(3, 1)
        theta, angles = torch.zeros(spec.n_params), torch.rand(4, spec.n_angles, dtype=torch.float64)
        remote = qworker.get_backend(f"grpc://127.0.0.1:{port}?simulator=shots", shots=100, seed=1)
        remote.jacobians(spec, theta, angles, Gradient("fd"))  # one request: one job in the replica
        qworker.get_backend(f"grpc://127.0.0.1:{port}?simulator=local").expectations(spec, theta, angles)
        with urllib.request.urlopen(f"http://127.0.0.1:{server.metrics.port}/metrics", timeout=5) as r:
            text = r.read().decode()
    finally:
        server.stop(1)
    rows = 4 * 2 * (spec.n_params + spec.n_angles)
    hardware = {
        (s.name, s.labels["backend"]): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("hyqut_qworker_hardware_")
    }
    assert hardware == {  # an exact simulator spends none: no `local` series
        ("hyqut_qworker_hardware_jobs_total", "shots"): 1,
        ("hyqut_qworker_hardware_circuits_total", "shots"): rows,
        ("hyqut_qworker_hardware_shots_total", "shots"): 100 * rows,
    }, text
