"""Export a classical run as a Hugging Face `transformers` model directory.

    python -m trainer.export --checkpoint runs/classical --out exported/
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> model = AutoModelForCausalLM.from_pretrained("exported/")     # a LlamaForCausalLM
    >>> tokenizer = AutoTokenizer.from_pretrained("exported/")

The directory holds `config.json` (LlamaConfig), `model.safetensors`, `generation_config.json`
(a reply ends at <|eot|>) and the tokenizer (`tokenizer.json` and its config). The logits are
ours (tests/test_hf.py). A hybrid run is refused, naming why: transformers' LLaMA has no quantum
projection to hold its circuits (sample it with `python -m trainer.generate`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trainer.model.hf import NotLlama, check_classical, hf_tokenizer, llama_config, to_llama_state
from trainer.run.checkpoint import CheckpointError, load_for_inference


def export(checkpoint: Path, out: Path) -> Path:
    """Write the transformers directory of the run at `checkpoint` to `out`; returns `out`."""
    cfg, state, tokenizer, _step = load_for_inference(checkpoint)
    check_classical(cfg)
    from transformers import GenerationConfig, LlamaForCausalLM

    config = llama_config(cfg, tokenizer)
    model = LlamaForCausalLM(config)
    model.load_state_dict(to_llama_state(cfg, state), strict=True)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.eod_id, eos_token_id=[tokenizer.eot_id, tokenizer.eod_id], pad_token_id=tokenizer.pad_id
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    hf_tokenizer(tokenizer).save_pretrained(out)
    return out


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
    print(f"exported {args.checkpoint} to {args.out} (transformers LlamaForCausalLM)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
