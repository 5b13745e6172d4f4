"""Our decoder in Hugging Face `transformers`' terms: the LlamaConfig of a ModelConfig, and the
weights of a classical model in LlamaForCausalLM's layout.

    llama = LlamaForCausalLM(llama_config(cfg))
    llama.load_state_dict(to_llama_state(cfg, model.state_dict()))     # the same logits

Names map one to one (torchtitan's on the left, transformers' on the right), with one change of
layout: our RoPE rotates interleaved pairs (x[2i], x[2i+1]) of each head, LLaMA-in-transformers
the halves (x[i], x[i + head_dim/2]). Permuting the output rows of `wq` and `wk` within each head
(even rows first, then odd) turns one into the other; q·k, and so attention, is unchanged.
"""

from __future__ import annotations

from torch import Tensor

from trainer.data.tokenizer import EOD, EOT, PAD, Tokenizer
from trainer.model.config import ModelConfig

NAMES = {  # ours -> transformers', per layer i where "{i}" appears
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "layers.{i}.attention_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "layers.{i}.attention.wq.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.attention.wk.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.attention.wv.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.attention.wo.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "layers.{i}.feed_forward.w_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.feed_forward.w_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.feed_forward.w_down.weight": "model.layers.{i}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
ROPE_ROWS = ("attention.wq.weight", "attention.wk.weight")


class NotLlama(ValueError):
    """A model that LlamaForCausalLM cannot hold (quantum projections, or their classical control)."""


def llama_config(cfg: ModelConfig, tokenizer: Tokenizer | None = None):
    """The transformers LlamaConfig with `cfg`'s architecture (and the tokenizer's special ids)."""
    from transformers import LlamaConfig

    ids = {}
    if tokenizer is not None:  # a dialogue ends a turn with <|eot|>; documents end with <|eod|>
        ids = dict(pad_token_id=tokenizer.pad_id, bos_token_id=tokenizer.eod_id, eos_token_id=tokenizer.eot_id)
    return LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        max_position_embeddings=cfg.context,
        rms_norm_eps=cfg.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=False,
        **ids,
    )


def check_classical(cfg: ModelConfig) -> None:
    """Raise NotLlama, saying why, unless every projection of `cfg` is a plain Linear."""
    if cfg.quantum != "none":
        what = "the classical control of a quantum branch" if cfg.branch == "classical" else "a quantum circuit"
        layers = ",".join(map(str, sorted(cfg.quantum_layer_set)))
        raise NotLlama(
            f"this model sends {cfg.quantum} of layer(s) {layers} through {what} (compress to 2 x {cfg.n_qubits}, "
            f"then expand): LlamaForCausalLM has only plain linear projections, so transformers cannot load it; "
            "sample it with `python -m trainer.generate`, or export a run trained with --quantum none"
        )


def to_llama_state(cfg: ModelConfig, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A classical model's state_dict in LlamaForCausalLM's names and RoPE layout."""
    check_classical(cfg)
    out = {}
    for ours, theirs in _pairs(cfg):
        w = state[ours]
        if ours.endswith(ROPE_ROWS):
            w = interleaved_to_halves(w, cfg.n_heads)
        out[theirs] = w
    return out


def interleaved_to_halves(w: Tensor, n_heads: int) -> Tensor:
    """Rows of a (n_heads * head_dim, d_in) projection reordered, in each head, from interleaved
    RoPE pairs (0, 1), (2, 3), ... to halves (0, head_dim/2), (1, head_dim/2 + 1), ..."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _pairs(cfg: ModelConfig):
    for ours, theirs in NAMES.items():
        if "{i}" in ours:
            yield from ((ours.format(i=i), theirs.format(i=i)) for i in range(cfg.n_layers))
        else:
            yield ours, theirs


def hf_tokenizer(tokenizer: Tokenizer):
    """Our BPE as a transformers PreTrainedTokenizerFast (AutoTokenizer loads what it saves)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_json(tokenizer.to_json()).tok,  # a copy: transformers may change it
        pad_token=PAD,
        bos_token=EOD,
        eos_token=EOT,
        additional_special_tokens=[],
    )
