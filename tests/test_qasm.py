"""`python -m qworker qasm`: a spec's circuit as OpenQASM 3 through Qiskit's exporter, θ and the input
angles as named inputs. Read back by Qiskit's importer, the circuit it describes is ours: bound to the
same values, its exact <Z_i> are the `local` simulator's."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qworker import CircuitSpec, get_backend

ROOT = Path(__file__).parents[1]
qasm3 = pytest.importorskip("qiskit.qasm3")


def qasm(*flags) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "qworker", "qasm", *flags]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def z_expectations(circuit, spec: CircuitSpec) -> torch.Tensor:
    """<Z_i> of a bound Qiskit circuit, exact (qubit i is the rightmost Pauli label character)."""
    from qiskit.quantum_info import SparsePauliOp, Statevector

    state = Statevector(circuit)
    zs = [SparsePauliOp.from_sparse_list([("Z", [q], 1.0)], spec.n_qubits) for q in range(spec.n_qubits)]
    return torch.tensor([state.expectation_value(z).real for z in zs], dtype=torch.float64)


@pytest.mark.parametrize("n_qubits,n_layers,entangler", [(3, 2, "ring"), (4, 1, "chain"), (11, 1, "ring")])
def test_qasm_round_trips_to_our_circuit(n_qubits, n_layers, entangler):
    spec = CircuitSpec(n_qubits, n_layers, entangler)
    proc = qasm("--n-qubits", str(n_qubits), "--n-layers", str(n_layers), "--entangler", entangler)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "OPENQASM 3.0;" in text
    inputs = re.findall(r"^input float\[64\] (\w+);$", text, re.M)
    want = {f"theta_{k}" for k in range(spec.n_params)} | {f"angle_{k}" for k in range(spec.n_angles)}
    assert sorted(inputs) == sorted(want)  # every θ and input angle, by name, nothing else
    circuit = qasm3.loads(text)
    assert {p.name for p in circuit.parameters} == want and circuit.num_qubits == n_qubits
    ops = circuit.count_ops()
    assert (ops["h"], ops["cx"]) == (n_qubits, n_layers * (n_qubits - (entangler == "chain")))
    assert ops["ry"] + ops["rz"] == spec.n_gates - ops["cx"]
    g = torch.Generator().manual_seed(n_qubits)
    local = get_backend("local")
    for _ in range(3):  # bound to random values, the imported circuit's <Z_i> are ours
        theta = torch.rand(spec.n_params, generator=g, dtype=torch.float64) * 6 - 3
        angles = torch.rand(1, spec.n_angles, generator=g, dtype=torch.float64) * 6 - 3
        values = {f"theta_{k}": float(v) for k, v in enumerate(theta)}
        values |= {f"angle_{k}": float(v) for k, v in enumerate(angles[0])}
        bound = circuit.assign_parameters({p: values[p.name] for p in circuit.parameters})
        torch.testing.assert_close(
            z_expectations(bound, spec), local.expectations(spec, theta, angles)[0], atol=1e-10, rtol=0
        )


def test_qasm_measure_and_bad_spec():
    proc = qasm("--n-qubits", "2", "--n-layers", "1", "--measure")
    assert proc.returncode == 0 and proc.stdout.count("= measure q[") == 2, proc.stdout
    bad = qasm("--n-qubits", "0")
    assert bad.returncode == 2 and "n_qubits must be an integer in [1, 30], got 0" in bad.stderr
    assert "Traceback" not in bad.stderr
