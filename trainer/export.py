"""Export a run as a Hugging Face `transformers` model directory.

    python -m trainer.export --checkpoint runs/quickstart --out exported/
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> model = AutoModelForCausalLM.from_pretrained("exported/", trust_remote_code=True)   # a hybrid run
    >>> model = AutoModelForCausalLM.from_pretrained("exported/")     # a classical run: a LlamaForCausalLM
    >>> tokenizer = AutoTokenizer.from_pretrained("exported/")

A classical run (`--quantum none`) becomes a plain `LlamaForCausalLM` (its logits are ours,
tests/test_hf.py). A hybrid run, its circuits or their classical control (`--branch classical`),
becomes a `HyQuTForCausalLM`: `config.json` names the modeling code in `auto_map`, and
`modeling_hyqut.py` (trainer/model/modeling_hyqut.py, self-contained: torch and transformers) is
written beside it; its circuits run exactly, on qworker's `local` simulator where HyQuT is
installed, else on the file's own torch statevector simulator, so greedy `generate()` gives
`python -m trainer.generate --temperature 0`'s tokens. Both hold `model.safetensors`,
`generation_config.json` (a reply ends at <|eot|>) and the tokenizer (`tokenizer.json` and its config).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.model.config import PROJECTIONS, TARGETS, ModelConfig
from trainer.model.hf import NotLlama, hf_tokenizer, llama_config, to_llama_state
from trainer.run.checkpoint import CheckpointError, load_for_inference


def export(checkpoint: Path, out: Path) -> Path:
    """Write the transformers directory of the run at `checkpoint` to `out`; returns `out`."""
    cfg, state, tokenizer, _step = load_for_inference(checkpoint)
    from transformers import GenerationConfig

    model = llama_model(cfg, state, tokenizer) if cfg.quantum == "none" else hybrid_model(cfg, state, tokenizer)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eod_id, eos_token_id=[tokenizer.eot_id, tokenizer.eod_id], pad_token_id=tokenizer.pad_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)  # a hybrid model also writes modeling_hyqut.py
    hf_tokenizer(tokenizer).save_pretrained(out)
    return out


def llama_model(cfg: ModelConfig, state: dict, tokenizer):
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(llama_config(cfg, tokenizer))
    model.load_state_dict(to_llama_state(cfg, state), strict=True)
    return model


def hybrid_model(cfg: ModelConfig, state: dict, tokenizer):
    """A HyQuTForCausalLM holding the run's weights under their own names (the quantum layers'
    random-number state, `rng`, stays behind: the exported circuits are exact)."""
    from trainer.model import modeling_hyqut as hf

    hf.HyQuTConfig.register_for_auto_class()
    hf.HyQuTForCausalLM.register_for_auto_class("AutoModelForCausalLM")
    config = hf_config(cfg, tokenizer)
    model = hf.HyQuTForCausalLM(config)
    weights = {k: v for k, v in state.items() if not k.endswith(".rng")}
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"weights do not match the run's config: {str(e).splitlines()[0]}") from None
    return model


def hf_config(cfg: ModelConfig, tokenizer=None):
    """The HyQuTConfig of a hybrid ModelConfig: its sizes, the projections it replaces by name."""
    from trainer.model.modeling_hyqut import HyQuTConfig

    ids = {}
    if tokenizer is not None:
        ids = dict(pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.eod_id, eos_token_id=tokenizer.eot_id)
    replaced = [  # the module paths of trainer/model/transformer.py
        f"layers.{i}.{'attention' if name in TARGETS['attn'] else 'feed_forward'}.{name}"
        for i in range(cfg.n_layers)
        for name in PROJECTIONS
        if cfg.replaces(i, name)
    ]
    return HyQuTConfig(
        vocab_size=cfg.vocab_size,
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        ffn_hidden=cfg.ffn_hidden,
        context=cfg.context,
        norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta,
        replaced=replaced,
        n_qubits=cfg.n_qubits,
        q_layers=cfg.q_layers,
        entangler=cfg.entangler,
        branch=cfg.branch,
        **ids,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="trainer.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="a run directory of trainer.main")
    p.add_argument("--out", type=Path, required=True, help="the directory to write")
    args = p.parse_args(argv)
    try:
        export(args.checkpoint, args.out)
    except (CheckpointError, NotLlama) as e:
        print(f"error: cannot export {args.checkpoint}: {e}", file=sys.stderr)
        return 2
    hybrid = (args.out / "modeling_hyqut.py").exists()
    kind = "HyQuTForCausalLM: load with trust_remote_code=True" if hybrid else "LlamaForCausalLM"
    print(f"exported {args.checkpoint} to {args.out} (transformers {kind})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
