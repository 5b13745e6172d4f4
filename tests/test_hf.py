"""The decoder against an independent LLaMA (Hugging Face transformers' LlamaForCausalLM with our
weights mapped in), and the export of a classical run that transformers loads as it is."""

import math
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


@pytest.mark.parametrize("branch", ["circuit", "classical"])
def test_a_hybrid_run_is_refused_naming_why(tmp_path, corpus, branch):
    run, _ = write_run(tmp_path, corpus, quantum="wq", n_qubits=4, branch=branch)
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.export", "--checkpoint", str(run), "--out", str(tmp_path / "hf")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "wq of layer(s) 0,1" in proc.stderr and "LlamaForCausalLM has only plain linear projections" in proc.stderr
    assert not (tmp_path / "hf").exists()
