"""The circuit as plain data: the paper's default, the counts, the layout, bad specs."""

import pytest

from qworker import CircuitSpec
from qworker.circuit import entangler_pairs


def test_default_is_the_papers_circuit():
    spec = CircuitSpec()
    assert (spec.n_qubits, spec.n_layers, spec.entangler) == (10, 2, "ring")
    assert spec.n_gates == 80 and spec.n_params == 40 and spec.n_angles == 20
    counts = {g: sum(op.gate == g for op in spec.ops) for g in ("H", "RY", "RZ", "CNOT")}
    assert counts == {"H": 10, "RY": 10 + 20, "RZ": 10 + 20, "CNOT": 20}


@pytest.mark.parametrize(
    "n,layers,ent", [(1, 1, "ring"), (2, 3, "ring"), (5, 2, "chain"), (12, 4, "ring"), (3, 0, "chain")]
)
def test_counts_follow_the_ops(n, layers, ent):
    spec = CircuitSpec(n, layers, ent)
    ops = spec.ops
    assert spec.n_gates == sum(op.gate != "H" for op in ops)
    thetas = sorted(op.param[1] for op in ops if op.param and op.param[0] == "theta")
    angles = sorted(op.param[1] for op in ops if op.param and op.param[0] == "angle")
    assert thetas == list(range(spec.n_params)) == list(range(2 * n * layers))  # each used once
    assert angles == list(range(spec.n_angles))
    assert spec.n_gates == 2 * n + layers * (len(entangler_pairs(n, ent)) + 2 * n)


def test_layout_encoding_then_layers():
    ops = CircuitSpec(3, 1, "ring").ops
    assert [(o.gate, o.wires) for o in ops[:3]] == [("H", (0,)), ("H", (1,)), ("H", (2,))]
    assert [(o.gate, o.wires, o.param) for o in ops[3:5]] == [("RY", (0,), ("angle", 0)), ("RZ", (0,), ("angle", 1))]
    assert [o.wires for o in ops[9:12]] == [(0, 1), (1, 2), (2, 0)]  # CNOT ring, (control, target)
    assert [(o.gate, o.param) for o in ops[12:15]] == [("RZ", ("theta", k)) for k in range(3)]
    assert [(o.gate, o.param) for o in ops[15:18]] == [("RY", ("theta", k)) for k in range(3, 6)]


def test_entanglers():
    assert entangler_pairs(4, "chain") == [(0, 1), (1, 2), (2, 3)]
    assert entangler_pairs(4, "ring") == [(0, 1), (1, 2), (2, 3), (3, 0)]
    assert entangler_pairs(1, "ring") == []


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"entangler": "star"}, ["unknown entangler 'star'", "ring, chain"]),
        ({"n_qubits": 0}, ["n_qubits must be an integer in [1, 30]"]),
        ({"n_qubits": 31}, ["n_qubits", "31"]),
        ({"n_layers": -1}, ["n_layers"]),
        ({"version": 99}, ["version 99"]),
    ],
)
def test_bad_specs_are_named(kwargs, words):
    with pytest.raises(ValueError) as err:
        CircuitSpec(**kwargs)
    for w in words:
        assert w in str(err.value)


def test_every_problem_reported_at_once():
    with pytest.raises(ValueError, match="n_qubits.*n_layers.*entangler"):
        CircuitSpec(n_qubits=0, n_layers=-2, entangler="x")
