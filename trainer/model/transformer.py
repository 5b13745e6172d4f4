"""The HyQuT model: a plain LLaMA-style decoder (docs/design.md, "The model"). torchtitan's names,
so checkpoints read like any LLaMA:

    tok_embeddings -> layers[i]: h = x + attention(attention_norm(x))      wq, wk, wv, wo
                                 out = h + feed_forward(ffn_norm(h))       w_gate, w_up, w_down
                   -> norm -> output (untied from tok_embeddings)

Every projection here is an nn.Linear; the quantum branch is not this file's business:
`trainer.model.convert` replaces the projections a config selects, after the plain model is built
(torchtitan's model converters).

    model = Transformer(from_preset("tiny"))                # plain, initialised
    model = build_model(from_preset("tiny", quantum="wq"))  # plain, then converted (trainer.model.convert)
    logits, loss = model(tokens, targets)                   # (B, T, V), scalar
    cache = model.new_cache(batch_size=1)                   # incremental decoding
    logits, _ = model(prompt, cache=cache)                  # then one token at a time
    logits, _ = model(next_token[:, None], cache=cache)

Init (nanoGPT / GPT-2): every Linear and the embedding ~ N(0, 0.02), the residual projections `wo`
and `w_down` ~ N(0, 0.02 / sqrt(2 n_layers)); RMSNorm weights 1. A converted projection keeps its
own documented init (nn.Linear's Kaiming-uniform, θ ~ U(-π, π)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.model.config import PROJECTIONS, TARGETS, ModelConfig

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (padding)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()  # the mean of squares in float32 whatever the compute dtype
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, context: int, theta: float, device=None) -> tuple[Tensor, Tensor]:
    """cos and sin of position p times frequency theta^(-2i/head_dim): two (context, head_dim/2)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(context, device=device, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x[2i], x[2i+1]) of every head by its position's angle (LLaMA's
    interleaved pairs). x: (B, T, nh, hs); cos, sin: (T, hs/2)."""
    xf = x.float().unflatten(-1, (-1, 2))  # (B, T, nh, hs/2, 2)
    x1, x2 = xf[..., 0], xf[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]  # (1, T, 1, hs/2)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1)  # (B, T, nh, hs/2, 2)
    return out.flatten(-2).type_as(x)


class KVCache:
    """Keys and values of every layer for incremental decoding. `pos` tokens are filled; the next
    forward with this cache writes its tokens at positions pos, pos+1, ... and advances pos.
    Set `pos` back to reuse a prefix (e.g. a shared prompt)."""

    def __init__(self, cfg: ModelConfig, batch_size: int, max_len: int, device=None, dtype=torch.float32):
        assert 0 < max_len <= cfg.context, f"max_len={max_len} must be in 1..context={cfg.context}"
        shape = (cfg.n_layers, batch_size, cfg.n_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, device=device, dtype=dtype)  # (L, B, nh, max_len, hs)
        self.v = torch.zeros(shape, device=device, dtype=dtype)
        self.pos = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def update(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (B, nh, T, hs) at positions start..start+T; return all keys and values so far,
        (B, nh, start+T, hs)."""
        end = start + k.shape[2]
        assert k.shape[0] == self.k.shape[1], f"cache batch {self.k.shape[1]} != input batch {k.shape[0]}"
        assert end <= self.max_len, f"KV cache full: {end} tokens > max_len {self.max_len}"
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.layer_index, self.n_heads, self.head_dim = layer_index, cfg.n_heads, cfg.head_dim
        d = cfg.d_model
        self.wq = nn.Linear(d, d, bias=False)
        self.wk = nn.Linear(d, d, bias=False)
        self.wv = nn.Linear(d, d, bias=False)
        self.wo = nn.Linear(d, d, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        B, T, D = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hs)
        k = self.wk(x).view(B, T, self.n_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        else:
            k, v = cache.update(self.layer_index, start, k.to(cache.k.dtype), v.to(cache.v.dtype))  # (B, nh, S, hs)
            # query i sits at position start + i and sees keys 0..start+i (sdpa's is_causal aligns
            # top-left, wrong once start > 0); one new token sees everything: no mask
            mask = None
            if T > 1:
                pos = torch.arange(start + T, device=x.device)
                mask = pos <= pos[start:, None]  # (T, start+T)
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)  # (B, nh, T, hs)
        return self.wo(y.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class FeedForward(nn.Module):
    """SwiGLU: w_down(silu(w_gate(x)) * w_up(x))."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.d_model, cfg.ffn_hidden
        self.w_gate = nn.Linear(d, h, bias=False)
        self.w_up = nn.Linear(d, h, bias=False)
        self.w_down = nn.Linear(h, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # (B, T, hidden) -> (B, T, D)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_index: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg, layer_index)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, start)  # (B, T, D)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    """The plain decoder of `cfg`'s sizes, initialised; `cfg.quantum` is for `trainer.model.convert`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived from cfg: not in state_dict
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """The documented init (the module docstring) of every projection that is still an
        nn.Linear, the head and the embedding; a converted projection keeps its own."""
        std = 0.02
        plain = [getattr(parent, name) for _, name, parent in self.projections()] + [self.output]
        for m in plain:
            if type(m) is nn.Linear:
                nn.init.normal_(m.weight, 0.0, std)
        nn.init.normal_(self.tok_embeddings.weight, 0.0, std)
        for layer in self.layers:  # residual projections: scaled so the stream's variance stays O(1)
            for m in (layer.attention.wo, layer.feed_forward.w_down):
                if type(m) is nn.Linear:
                    nn.init.normal_(m.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layers))

    def projections(self) -> Iterator[tuple[int, str, nn.Module]]:
        """(layer index, name, the module that holds it) of every projection, in module order."""
        for i, layer in enumerate(self.layers):
            for name in PROJECTIONS:
                yield i, name, layer.attention if name in TARGETS["attn"] else layer.feed_forward

    def new_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """An empty KV cache on the model's device, for up to max_len (default: context) tokens."""
        return KVCache(self.cfg, batch_size, max_len or self.cfg.context, self.output.weight.device)

    def forward(
        self, tokens: Tensor, targets: Tensor | None = None, cache: KVCache | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """tokens (B, T) -> logits (B, T, V) in float32, and the mean cross-entropy against
        targets (B, T) (IGNORE_INDEX skipped) or None. With a cache, tokens continue the sequence
        at position cache.pos."""
        B, T = tokens.shape
        start = cache.pos if cache is not None else 0
        assert start + T <= self.cfg.context, f"{start + T} tokens exceed the context of {self.cfg.context}"
        cos, sin = self._rope(start, T)  # (T, hs/2)
        h = self.tok_embeddings(tokens)  # (B, T, D)
        for layer in self.layers:
            h = layer(h, cos, sin, cache, start)
        logits = self.output(self.norm(h)).float()  # (B, T, V)
        if cache is not None:
            cache.pos = start + T
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX)
        return logits, loss

    def _rope(self, start: int, T: int) -> tuple[Tensor, Tensor]:
        if self.rope_cos.dtype != torch.float32:  # a whole-model .half()/.bfloat16() cast them: rebuild
            self.rope_cos, self.rope_sin = rope_tables(
                self.cfg.head_dim, self.cfg.context, self.cfg.rope_theta, self.rope_cos.device
            )
        return self.rope_cos[start : start + T], self.rope_sin[start : start + T]
