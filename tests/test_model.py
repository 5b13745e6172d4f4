"""The model: LLaMA behaviour (causality, KV cache), quantum placement, presets, config checks,
describe(), and a short real training run."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from trainer.data.batches import BatchSampler
from trainer.model.accounting import count_parameters, describe, format_description
from trainer.model.bottleneck import ClassicalBottleneck
from trainer.model.circuits import Circuits
from trainer.model.config import PRESETS, PROJECTIONS, TARGETS, ModelConfig, from_preset
from trainer.model.convert import build_model, quantize
from trainer.model.quantum_linear import QuantumLinear
from trainer.model.transformer import Transformer


def tiny(**overrides) -> ModelConfig:
    return from_preset("tiny", **{"vocab_size": 300, **overrides})


def projections(model: Transformer):
    """(layer index, name, module) for every projection of every layer."""
    for i, layer in enumerate(model.layers):
        for name in PROJECTIONS:
            parent = layer.attention if name in ("wq", "wk", "wv", "wo") else layer.feed_forward
            yield i, name, getattr(parent, name)


@pytest.mark.parametrize("quantum", ["none", "attn"])
def test_causal_mask(quantum):
    torch.manual_seed(0)
    model = build_model(tiny(quantum=quantum, n_qubits=4)).eval()
    tokens = torch.randint(0, 300, (2, 16))
    changed = tokens.clone()
    changed[:, 8:] = torch.randint(0, 300, (2, 8))
    with torch.no_grad():
        a, _ = model(tokens)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(a[:, 8:], b[:, 8:]), "later tokens changed but their logits did not"


@pytest.mark.parametrize("quantum", ["none", "wq"])
def test_kv_cache_matches_full_forward(quantum):
    torch.manual_seed(0)
    model = build_model(tiny(quantum=quantum, n_qubits=4)).eval()
    tokens = torch.randint(0, 300, (2, 20))
    with torch.no_grad():
        full, _ = model(tokens)  # (2, 20, V)
        cache = model.new_cache(batch_size=2, max_len=32)
        parts = [model(tokens[:, :7], cache=cache)[0]]  # a prompt
        parts += [model(tokens[:, t : t + 1], cache=cache)[0] for t in range(7, 15)]  # one token at a time
        parts.append(model(tokens[:, 15:], cache=cache)[0])  # a chunk after a prefix: needs the offset mask
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("target", [t for t in TARGETS if t != "none"])
def test_quantum_target_placement_and_backward(target):
    torch.manual_seed(0)
    cfg = tiny(quantum=target, n_qubits=4, quantum_layers=(1,))
    model = build_model(cfg)
    for i, name, module in projections(model):
        want = i == 1 and name in TARGETS[target]
        assert isinstance(module, QuantumLinear) == want, f"layer {i} {name}: {type(module).__name__}"
        assert isinstance(module, nn.Linear) == (not want)
    tokens = torch.randint(0, 300, (2, 8))
    _, loss = model(tokens, tokens)
    loss.backward()
    for m in model.modules():
        if isinstance(m, QuantumLinear):
            assert m.theta.grad is not None and m.theta.grad.abs().sum() > 0, "no gradient reached the circuit"
            assert m.compress.weight.grad.abs().sum() > 0, "no gradient through the circuit to its input"
    assert all(p.grad is not None for p in model.parameters())


def test_the_model_is_built_plain_then_converted():
    """Transformer(cfg) is plain LLaMA whatever cfg.quantum says; quantize replaces what cfg selects,
    in place and under the same names, with modules that keep their own init; the same seed gives
    the same weights, and a hybrid model's classical weights are the classical model's."""
    cfg = tiny(quantum="wq", n_qubits=4, quantum_layers=(1,))
    torch.manual_seed(0)
    model = Transformer(cfg)
    assert all(type(m) is nn.Linear for _, _, m in projections(model))
    plain = set(model.state_dict())
    assert quantize(model, Circuits()) is model
    wq = model.layers[1].attention.wq
    assert isinstance(wq, QuantumLinear) and type(model.layers[0].attention.wq) is nn.Linear
    branch = {f"layers.1.attention.wq.{k}" for k in ("compress.weight", "compress.bias", "theta", "expand.weight")}
    branch |= {"layers.1.attention.wq.expand.bias", "layers.1.attention.wq.rng"}
    assert set(model.state_dict()) == plain - {"layers.1.attention.wq.weight"} | branch
    assert wq.compress.weight.abs().max() <= 1 / math.sqrt(64) and wq.compress.weight.std() > 0.05  # Kaiming-uniform
    assert wq.theta.abs().max() <= math.pi and wq.theta.std() > 0.5  # U(-π, π)
    torch.manual_seed(0)
    again = build_model(cfg).state_dict()
    torch.manual_seed(0)
    classical = build_model(tiny()).state_dict()
    for name, w in model.state_dict().items():
        assert torch.equal(again[name], w), name
        assert name in branch or torch.equal(classical[name], w), name
    own = {k: v.clone() for k, v in wq.state_dict().items()}
    model.init_weights()  # the plain model's init leaves a converted projection alone
    assert all(torch.equal(v, wq.state_dict()[k]) for k, v in own.items())


def test_quantum_layers_default_to_all():
    model = build_model(tiny(quantum="wgate", n_qubits=4))
    placed = {(i, name) for i, name, m in projections(model) if isinstance(m, QuantumLinear)}
    assert placed == {(0, "w_gate"), (1, "w_gate")}
    assert count_parameters(model)["quantum_projections"] == 2


def test_classical_bottleneck_control():
    torch.manual_seed(0)
    model = build_model(tiny(quantum="wq", n_qubits=4, branch="classical"))
    kinds = {(i, name): type(m) for i, name, m in projections(model)}
    assert kinds[(0, "wq")] is ClassicalBottleneck and kinds[(1, "wq")] is ClassicalBottleneck
    assert not any(isinstance(m, QuantumLinear) for m in model.modules())
    b = model.layers[0].attention.wq
    assert (b.compress.out_features, b.mix.out_features, b.expand.in_features) == (8, 4, 4)
    tokens = torch.randint(0, 300, (2, 8))
    _, loss = model(tokens, tokens)
    loss.backward()
    assert b.compress.weight.grad.abs().sum() > 0


def classical_parameters(name: str) -> int:
    """A preset's parameters counted by hand from its shapes: the embedding and the untied head
    (vocabulary x d_model each), the final norm, and per layer wq, wk, wv, wo (d x d each),
    w_gate, w_up, w_down (d x hidden each) and two norms."""
    s = {"vocab_size": 6144, **PRESETS[name]}
    d, hidden = s["d_model"], s["ffn_hidden"]
    return 2 * s["vocab_size"] * d + d + s["n_layers"] * (4 * d * d + 3 * d * hidden + 2 * d)


def test_preset_sizes():
    counts = {name: describe(from_preset(name))["params"]["total"] for name in PRESETS}
    assert counts == {name: classical_parameters(name) for name in PRESETS}
    assert counts["tiny"] < 1_000_000
    assert abs(counts["8m"] / 8e6 - 1) < 0.05, counts
    assert abs(counts["150m"] / 150e6 - 1) < 0.03, counts


def test_150m_builds_and_runs():
    torch.manual_seed(0)
    model = build_model(from_preset("150m")).eval()
    n = sum(p.numel() for p in model.parameters())
    assert abs(n / 150e6 - 1) < 0.03, f"150m has {n:,} parameters"
    with torch.no_grad():
        logits, _ = model(torch.randint(0, 6144, (1, 4)))
    assert logits.shape == (1, 4, 6144) and torch.isfinite(logits).all()


def test_invalid_config_names_every_problem():
    with pytest.raises(ValueError) as e:
        ModelConfig(
            d_model=64, n_heads=6, n_layers=2, vocab_size=0, quantum="everything", branch="cloud", quantum_layers=(5,)
        )
    msg = str(e.value)
    for flag in ("--vocab-size", "--n-heads", "--quantum", "--branch", "--quantum-layers"):
        assert flag in msg, f"{flag} missing from: {msg}"
    assert "5 problem(s)" in msg
    assert Circuits(backend="shots").problems() == [  # shots cannot do adjoint
        "gradient method 'adjoint' is not supported by qbackend 'shots'; choose one of shift, fd, spsa "
        "(change --grad or --qbackend)"
    ]
    assert "--q-replicas" in Circuits(backend="ray", replicas=0).problems()[0]
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*tiny, 8m, 150m"):
        from_preset("huge")
    with pytest.raises(ValueError, match="n_heads=3.*unknown config field.*d_modle"):
        from_preset("tiny", n_heads=3, d_modle=32)
    with pytest.raises(ValueError, match="would replace nothing"):
        from_preset("tiny", quantum="wq", quantum_layers=())
    assert from_preset("tiny", quantum_layers="0,1").quantum_layers == (0, 1)  # as a command line gives it


def test_config_dict_round_trip():
    cfg = from_preset("8m", quantum="attn", quantum_layers=(0, 5), branch="classical")
    d = json.loads(json.dumps(cfg.to_dict()))
    assert d["quantum_layers"] == [0, 5]
    assert ModelConfig.from_dict(d) == cfg
    with pytest.raises(ValueError, match="unknown config field.*color"):
        ModelConfig.from_dict({**d, "color": "red"})


# tiny with a 300-token vocabulary (d_model 64, 2 layers, ffn_hidden 176, context 128), counted by
# hand: the embedding and the head 300 x 64 each, the final norm, and per layer 4 x 64 x 64 of
# attention, 3 x 64 x 176 of the FFN and two norms
TINY_PARAMS = 2 * 300 * 64 + 64 + 2 * (4 * 64 * 64 + 3 * 64 * 176 + 2 * 64)
# forward FLOPs a token: 2 per weight of every matrix (head, attention, FFN), and per layer 2 x 2 x
# 128 x 64 for the scores q·k and the weighted sum over a full context
TINY_FLOPS = 2 * (64 * 300 + 2 * (4 * 64 * 64 + 3 * 64 * 176)) + 2 * (2 * 2 * 128 * 64)
# the circuits, gate by gate: 2^n amplitudes, each gate ~ one complex multiply-add on all of them (8
# FLOPs), the readout (3 + n) FLOPs an amplitude; n H, 2n encoding rotations, then q_layers x 3n
# gates (a CNOT ring, RZ, RY). 10 qubits: 10 + 20 + 60 = 90 gates; 4 qubits: 4 + 8 + 24 = 36.
CIRCUIT_10 = dict(amplitudes=1024, gates=90, complex_ops=1024 * 90, flops=8 * 1024 * 90 + 13 * 1024)
CIRCUIT_4 = dict(amplitudes=16, gates=36, complex_ops=16 * 36, flops=8 * 16 * 36 + 7 * 16)
DESCRIBED = {
    # W_q of both layers (64 -> 64, 10 qubits): compress 64 x 20 + 20, θ 2 layers x 2 x 10, expand 10 x 64 + 64
    "wq": dict(
        kw=dict(quantum="wq"),
        replaced=2 * 64 * 64,
        branch=2 * (64 * 20 + 20 + 40 + 10 * 64 + 64),
        projections=2,
        angles=2 * 40,
        circuit=CIRCUIT_10,
    ),
    # the FFN of both layers (4 qubits, θ 16 each): w_gate and w_up 64 -> 176, w_down 176 -> 64
    "ffn": dict(
        kw=dict(quantum="ffn", n_qubits=4),
        replaced=2 * 3 * 64 * 176,
        branch=2 * (2 * (64 * 8 + 8 + 16 + 4 * 176 + 176) + (176 * 8 + 8 + 16 + 4 * 64 + 64)),
        projections=6,
        angles=6 * 16,
        circuit=CIRCUIT_4,
    ),
    # attention's four projections through the control: mix 20 x 10 + 10 in the circuit's place
    "attn-classical": dict(
        kw=dict(quantum="attn", branch="classical"),
        replaced=2 * 4 * 64 * 64,
        branch=8 * (64 * 20 + 20 + 20 * 10 + 10 + 10 * 64 + 64),
        projections=8,
        angles=0,
        circuit=None,
    ),
}


def measured_flops_per_token(model: Transformer) -> int:
    """Forward FLOPs a token over a full context, counted by torch's FlopCounterMode (attention on
    its math path, whose matmuls it counts; CPU's fused kernel it does not)."""
    tokens = torch.zeros(1, model.cfg.context, dtype=torch.long)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(tokens)
    return counter.get_total_flops() // model.cfg.context


@pytest.mark.parametrize("case", DESCRIBED)
def test_describe_counts_what_was_worked_out_by_hand(case, monkeypatch):
    """describe() (counted on the meta device) against parameters worked out from the shapes, the
    built model's parameters, and the FLOPs torch counts in the built model's forward."""
    want = DESCRIBED[case]
    cfg = tiny(**want["kw"])
    d = describe(cfg)
    total, branch = TINY_PARAMS - want["replaced"] + want["branch"], want["branch"]
    assert sum(p.numel() for p in build_model(cfg).parameters()) == total
    assert d["params_none"]["total"] == TINY_PARAMS
    assert d["params"] == {
        "total": total,
        "classical": total - branch,
        "quantum_branch": branch,
        "circuit_angles": want["angles"],
        "embedding": 300 * 64,
        "quantum_projections": want["projections"],
    }
    assert d["param_reduction_pct"] == pytest.approx(100 * (want["replaced"] - branch) / TINY_PARAMS)
    # FLOPs: the classical part, as torch counts it (the circuits stubbed out: they are counted apart)
    monkeypatch.setattr(QuantumLinear, "circuit", lambda self, angles: angles[:, : self.spec.n_qubits])
    assert d["flops_per_token_none"] == measured_flops_per_token(build_model(tiny())) == TINY_FLOPS
    assert d["flops_per_token"] == measured_flops_per_token(build_model(cfg))
    if want["circuit"] is None:
        assert "circuit" not in d and d["circuits_per_token"] == 0
    else:
        n, c = want["projections"], d["circuit"]
        assert d["circuits_per_token"] == n
        assert {k: c[k] for k in want["circuit"]} == want["circuit"]
        assert c["sim_flops_per_token"] == n * want["circuit"]["flops"]
        assert (
            c["runs_per_training_step"] == 3 and c["sim_flops_per_token_training"] == 3 * n * want["circuit"]["flops"]
        )
    text = format_description(d)
    assert f"parameters      {total:>14,}  (quantum=none: {TINY_PARAMS:,};" in text, text
    assert f"forward FLOPs/token, classical {d['flops_per_token']:,}  (quantum=none: {TINY_FLOPS:,})" in text


def test_default_circuit_cost():
    """The paper's circuit (10 qubits, 80 gates, |Θ| = 40, 20 input angles): circuit evaluations a
    token for a training step by each method, and the readout's gate-by-gate cost."""
    c = describe(from_preset("8m", quantum="wq"))["circuit"]
    assert (c["amplitudes"], c["gates"], c["complex_ops"]) == (1024, 90, 92_160)  # 10 H + the paper's 80 gates
    assert c["flops"] == 750_592 and c["runs_per_training_step"] == 3  # adjoint: a forward and a backward sweep
    cfg = from_preset("8m", quantum="wq")
    runs = {g: describe(cfg, Circuits(grad=g))["circuit"]["runs_per_training_step"] for g in ("fd", "shift", "spsa")}
    assert runs == {"fd": 121, "shift": 121, "spsa": 17}  # 1 + 2 (40 + 20); 1 + 2 x 8 samples


@pytest.fixture
def one_thread():
    """One intra-op thread: about as fast here as two, and immune to the many-fold slowdown
    OpenMP's spinning threads suffer when another process shares the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_tiny_wq_learns_the_corpus(corpus, one_thread):
    """150 AdamW steps of tiny --quantum wq (10 qubits, local backend) on chitchat (~20 s)."""
    torch.manual_seed(0)
    cfg = from_preset("tiny", quantum="wq", vocab_size=corpus.tokenizer.vocab_size)
    model = build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    batches = BatchSampler(corpus.train, batch_size=8, context=64, seed=0)
    start = time.perf_counter()
    losses = []
    for _ in range(150):
        x, y = next(batches)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert first == pytest.approx(math.log(cfg.vocab_size), abs=0.5), "an untrained model should be near uniform"
    assert last < first - 2.0, f"loss went {first:.2f} -> {last:.2f} in {time.perf_counter() - start:.0f} s"
