"""The decoder against an independent LLaMA (Hugging Face transformers' LlamaForCausalLM with our
weights mapped in), and the export of a classical run that transformers loads as it is."""

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from trainer.model.config import from_preset
from trainer.model.convert import build_model
from trainer.model.hf import interleaved_to_halves, llama_config, to_llama_state
from trainer.model.transformer import Transformer
from trainer.run import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[1]


def random_model(cfg) -> Transformer:
    """Our model with weights large enough that the logits are O(1) (the init's 0.02 gives ~0.01),
    norms not all ones: a mapping mistake anywhere shows far above float32 rounding."""
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0.0, 0.5 / math.sqrt(p.shape[-1]))
    return model


def llama_of(cfg, model: Transformer) -> LlamaForCausalLM:
    llama = LlamaForCausalLM(llama_config(cfg)).eval()
    llama.load_state_dict(to_llama_state(cfg, model.state_dict()), strict=True)
    return llama


@pytest.mark.parametrize("preset", ["tiny", "8m"])
def test_logits_equal_transformers_llama(preset):
    cfg = from_preset(preset)
    ours = random_model(cfg)
    llama = llama_of(cfg, ours)
    tokens = torch.randint(cfg.vocab_size, (2, cfg.context), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want, _ = ours(tokens)  # (2, T, V)
        got = llama(tokens).logits
    assert want.abs().max() > 1.0, "logits too small to compare meaningfully"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_rope_layout_matters():
    """Without the interleaved -> halves permutation of wq and wk, the logits differ: the parity
    test above checks the RoPE layout, not only names."""
    cfg = from_preset("tiny")
    ours = random_model(cfg)
    state = to_llama_state(cfg, ours.state_dict())
    for i in range(cfg.n_layers):
        for p in ("q_proj", "k_proj"):
            key = f"model.layers.{i}.self_attn.{p}.weight"
            state[key] = ours.state_dict()[f"layers.{i}.attention.w{p[0]}.weight"]  # unpermuted
    llama = LlamaForCausalLM(llama_config(cfg)).eval()
    llama.load_state_dict(state)
    tokens = torch.randint(cfg.vocab_size, (1, 64), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (llama(tokens).logits - ours(tokens)[0]).abs().max() > 1e-2


def test_interleaved_to_halves_is_the_rope_pair_layout():
    w = torch.arange(2 * 8).float()[:, None]  # 2 heads of head_dim 8, one column: row indices
    got = interleaved_to_halves(w, n_heads=2)[:, 0].long().tolist()
    assert got == [0, 2, 4, 6, 1, 3, 5, 7, 8, 10, 12, 14, 9, 11, 13, 15]


def write_run(tmp_path: Path, corpus, **model) -> tuple[Path, Transformer]:
    """A run directory as trainer.main leaves it (run.json, tokenizer.json, model.pt)."""
    cfg = from_preset("tiny", vocab_size=corpus.tokenizer.vocab_size, **model)
    net = random_model(cfg)
    run = tmp_path / "run"
    ckpt.write_run(run, {"model": cfg.to_dict(), "train": {}, "circuits": {}}, corpus.tokenizer.to_json())
    ckpt.save_weights(run, net, step=7)
    return run, net


def test_export_loads_in_transformers_with_our_logits_and_tokens(tmp_path, corpus):
    run, ours = write_run(tmp_path, corpus)
    out = tmp_path / "hf"
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--checkpoint", str(run), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    for text in ("hi, how are you?<|eot|>fine, thanks<|eot|>", "你好，今天怎么样？"):
        ids = tokenizer(text)["input_ids"]
        assert ids == corpus.tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
    tokens = torch.tensor([corpus.tokenizer.encode("hello there, how was your day?")])
    with torch.no_grad():
        torch.testing.assert_close(model(tokens).logits, ours(tokens)[0], rtol=0, atol=1e-5)
    assert model.generation_config.eos_token_id == [corpus.tokenizer.eot_id, corpus.tokenizer.eod_id]


# --- hybrid runs: HyQuTForCausalLM through trust_remote_code ----------------------------------

PROMPT = "hi, how are you?"
HYBRIDS = {  # tiny runs of a few steps: 4-qubit circuits in W_q or W_gate, and the classical control
    "wq": ["--quantum", "wq"],
    "wgate": ["--quantum", "wgate"],
    "classical": ["--quantum", "wq", "--branch", "classical"],
}
# HyQuT's qworker and trainer made unimportable: the exported directory must stand alone
STANDALONE = """
import json, sys
sys.modules["qworker"] = sys.modules["trainer"] = None
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True).eval()
tok = AutoTokenizer.from_pretrained(sys.argv[1], trust_remote_code=True)
ids = torch.tensor([json.loads(sys.argv[2])])
out = model.generate(ids, do_sample=False, max_new_tokens=int(sys.argv[3]))
print(json.dumps({"tokens": out[0, ids.shape[1]:].tolist(), "simulated_by": [
    "qworker" if m.local else "builtin" for m in model.modules() if type(m).__name__ == "QuantumProjection"]}))
"""


def run_module(module: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def hybrid_runs(tmp_path_factory, cache_dir):
    """{name: (run directory, its export)}: each trained for 3 steps by trainer.main, then exported."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HYQUT_CACHE": str(cache_dir)}
    runs = {}
    for name, flags in HYBRIDS.items():
        run, out = tmp_path_factory.mktemp(name) / "run", tmp_path_factory.mktemp(name) / "hf"
        common = ["--model", "tiny", "--n-qubits", "4", "--context", "32", "--batch-size", "2", "--eval-batches", "1"]
        run_module("trainer.main", *common, *flags, "--steps", "3", "--save-every", "3", "--out", str(run), env=env)
        runs[name] = run, out
    return runs


def test_export_command(hybrid_runs, capsys):
    from trainer.export import main

    for run, out in hybrid_runs.values():
        assert main(["--checkpoint", str(run), "--out", str(out)]) == 0
        assert "HyQuTForCausalLM: load with trust_remote_code=True" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", list(HYBRIDS))
def test_hybrid_export_loads_in_transformers_and_generates_our_tokens(hybrid_runs, name, capsys):
    from trainer.generate import load, sample
    from trainer.generate import main as generate

    run, out = hybrid_runs[name]  # exported by test_export_command
    assert {"config.json", "modeling_hyqut.py", "model.safetensors", "tokenizer.json", "generation_config.json"} <= {
        p.name for p in out.iterdir()
    }
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "modeling_hyqut.HyQuTConfig",
        "AutoModelForCausalLM": "modeling_hyqut.HyQuTForCausalLM",
    }
    target = "attention.wq" if name != "wgate" else "feed_forward.w_gate"
    assert config["replaced"] == [f"layers.0.{target}", f"layers.1.{target}"]
    assert config["branch"] == ("classical" if name == "classical" else "circuit")
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    # the plain call loads transformers' own fast tokenizer; it first reads config.json, whose auto_map
    # makes transformers ask whether to run the directory's code (no answer here: it reads the
    # config without it); trust_remote_code=True skips the question
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(tokenizer).__name__ == type(AutoTokenizer.from_pretrained(out, trust_remote_code=True)).__name__
    capsys.readouterr()
    ours, tok = load(run)  # trainer.generate's model and tokenizer, circuits on `local`
    assert type(model).__name__ == "HyQuTForCausalLM" and tokenizer(PROMPT)["input_ids"] == tok.encode(PROMPT)
    ids = [tok.eod_id, *tok.encode(PROMPT), tok.eot_id]  # trainer.generate's prompt: one user turn
    with torch.no_grad():
        torch.testing.assert_close(model(torch.tensor([ids])).logits, ours(torch.tensor([ids]))[0], rtol=0, atol=0)
    greedy = argparse.Namespace(max_tokens=12, temperature=0.0, top_k=0, top_p=1.0)
    want = sample(ours, ids, greedy, torch.Generator(), stop={tok.eot_id, tok.eod_id})
    got = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=12)[0, len(ids) :].tolist()
    assert got[: len(want)] == want and (len(want) == 12 or got[len(want)] in (tok.eot_id, tok.eod_id)), (got, want)
    generate(["--checkpoint", str(run), "--prompt", PROMPT, "--temperature", "0", "--max-tokens", "12"])
    assert capsys.readouterr().out.strip() == tokenizer.decode(want).strip()  # what trainer.generate prints
    if name != "wgate":
        return
    # the directory on its own (no qworker, no trainer): the file's torch simulator, the same tokens
    alone = subprocess.run(
        [sys.executable, "-c", STANDALONE, str(out), json.dumps(ids), "12"],
        cwd=out.parent, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert alone.returncode == 0, alone.stderr[-3000:]
    result = json.loads(alone.stdout.strip().splitlines()[-1])
    assert result["simulated_by"] == ["builtin", "builtin"]
    assert result["tokens"][: len(want)] == want


def test_builtin_simulator_is_the_circuit():
    """The exported file's torch statevector simulator against qworker's `local`, every entangler."""
    from qworker import CircuitSpec, Gradient, get_backend
    from trainer.model.modeling_hyqut import simulate

    for n_qubits, n_layers, entangler in [(4, 2, "ring"), (5, 1, "chain"), (10, 2, "ring"), (1, 1, "ring")]:
        spec = CircuitSpec(n_qubits, n_layers, entangler)
        g = torch.Generator().manual_seed(n_qubits)
        theta = (torch.rand(spec.n_params, generator=g, dtype=torch.float64) * 6 - 3).requires_grad_()
        angles = (torch.rand(9, spec.n_angles, generator=g, dtype=torch.float64) * 6 - 3).requires_grad_()
        z = simulate(n_qubits, n_layers, entangler, theta, angles)
        torch.testing.assert_close(z, get_backend("local").expectations(spec, theta, angles), atol=1e-12, rtol=0)
        z.sum().backward()  # differentiable: fine-tuning in transformers gets exact gradients
        ref = get_backend("local").vjp(spec, theta.detach(), angles.detach(), torch.ones_like(z), Gradient("adjoint"))
        torch.testing.assert_close(theta.grad, ref[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(angles.grad, ref[1], atol=1e-10, rtol=0)
