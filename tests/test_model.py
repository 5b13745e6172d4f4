"""The model: LLaMA behaviour (causality, KV cache), quantum placement, presets, config checks,
describe(), and a short real training run."""

from __future__ import annotations

import json
import math
import time

import pytest
import torch
from torch import nn

from trainer.data.batches import BatchSampler
from trainer.model.accounting import count_parameters, describe, format_description, forward_flops_per_token
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


def test_preset_sizes():
    counts = {name: describe(from_preset(name))["params"]["total"] for name in PRESETS}
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


@pytest.mark.parametrize(
    "kw", [dict(quantum="wq"), dict(quantum="ffn", n_qubits=4), dict(quantum="attn", branch="classical")]
)
def test_describe_matches_the_built_model(kw):
    cfg = tiny(**kw)
    d = describe(cfg)
    model, base = build_model(cfg), build_model(tiny())
    assert d["params"] == count_parameters(model)
    assert d["params_none"]["total"] == sum(p.numel() for p in base.parameters())
    p = d["params"]
    assert p["classical"] + p["quantum_branch"] == p["total"]
    assert d["param_reduction_pct"] == pytest.approx(100 * (1 - p["total"] / d["params_none"]["total"]))
    # FLOPs: 2 per weight of every linear, plus 2*2*context*d_model of attention per layer
    linear = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    assert d["flops_per_token"] == forward_flops_per_token(model) == linear + 2 * 2 * 128 * 64 * 2
    if cfg.branch == "classical":
        assert "circuit" not in d and d["circuits_per_token"] == 0 and p["circuit_angles"] == 0
    else:
        n_proj = 2 * len(TARGETS[cfg.quantum])
        c = d["circuit"]
        assert d["circuits_per_token"] == n_proj and p["circuit_angles"] == n_proj * 2 * cfg.n_qubits * cfg.q_layers
        gates = cfg.n_qubits + cfg.circuit_spec().n_gates  # H layer + encoding + ansatz
        assert c["complex_ops"] == 2**cfg.n_qubits * gates
        assert c["sim_flops_per_token"] == n_proj * c["flops"]
    assert "parameters" in format_description(d)


def test_default_circuit_cost():
    c = describe(from_preset("8m", quantum="wq"))["circuit"]
    assert (c["amplitudes"], c["gates"], c["complex_ops"]) == (1024, 90, 92_160)  # 10 H + the paper's 80 gates
    fd = describe(from_preset("8m", quantum="wq"), Circuits(grad="fd"))["circuit"]
    assert fd["runs_per_training_step"] == 1 + 2 * (40 + 20)


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
