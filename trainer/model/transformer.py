"""The HyQuT model: a plain LLaMA-style decoder whose projections can take the quantum branch
(docs/design.md, "The model"). torchtitan's names, so checkpoints read like any LLaMA:

    tok_embeddings -> layers[i]: h = x + attention(attention_norm(x))      wq, wk, wv, wo
                                 out = h + feed_forward(ffn_norm(h))       w_gate, w_up, w_down
                   -> norm -> output (untied from tok_embeddings)

Which projection is nn.Linear, QuantumLinear or the classical-bottleneck control is decided in one
place, `make_projection`; the rest of this file never knows.

    model = Transformer(from_preset("tiny", quantum="wq"))    # circuits: Circuits() (local, adjoint)
    logits, loss = model(tokens, targets)                  # (B, T, V), scalar
    cache = model.new_cache(batch_size=1)                  # incremental decoding
    logits, _ = model(prompt, cache=cache)                 # then one token at a time
    logits, _ = model(next_token[:, None], cache=cache)

Init (nanoGPT / GPT-2): every classical Linear and the embedding ~ N(0, 0.02), the residual
projections `wo` and `w_down` ~ N(0, 0.02 / sqrt(2 n_layers)); RMSNorm weights 1. A quantum or
bottleneck projection keeps its own documented init (nn.Linear's Kaiming-uniform, θ ~ U(-π, π)).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qworker.circuit import CircuitSpec
from trainer.model.bottleneck import ClassicalBottleneck
from trainer.model.circuits import Circuits
from trainer.model.config import PROJECTIONS, ModelConfig, replace
from trainer.model.quantum_linear import QuantumLinear

IGNORE_INDEX = -100  # targets with this value add nothing to the loss (padding)
BRANCHES = (QuantumLinear, ClassicalBottleneck)  # the modules a projection can be replaced by


def make_projection(
    cfg: ModelConfig, circuits: Circuits, in_features: int, out_features: int, layer_index: int, name: str
) -> nn.Module:
    """The module for projection `name` of layer `layer_index`: nn.Linear (no bias), or, where
    cfg selects it, QuantumLinear on `circuits` or the ClassicalBottleneck control."""
    if not cfg.replaces(layer_index, name):
        return nn.Linear(in_features, out_features, bias=False)
    if cfg.branch == "classical":
        return ClassicalBottleneck(in_features, out_features, cfg.n_qubits)
    backend = circuits.backend_for(seed=1000 * layer_index + PROJECTIONS.index(name))
    return QuantumLinear(
        in_features, out_features, cfg.n_qubits, cfg.q_layers, cfg.entangler, backend, circuits.gradient()
    )


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
    def __init__(self, cfg: ModelConfig, circuits: Circuits, layer_index: int):
        super().__init__()
        self.layer_index, self.n_heads, self.head_dim = layer_index, cfg.n_heads, cfg.head_dim
        d = cfg.d_model
        self.wq = make_projection(cfg, circuits, d, d, layer_index, "wq")
        self.wk = make_projection(cfg, circuits, d, d, layer_index, "wk")
        self.wv = make_projection(cfg, circuits, d, d, layer_index, "wv")
        self.wo = make_projection(cfg, circuits, d, d, layer_index, "wo")

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

    def __init__(self, cfg: ModelConfig, circuits: Circuits, layer_index: int):
        super().__init__()
        d, h = cfg.d_model, cfg.ffn_hidden
        self.w_gate = make_projection(cfg, circuits, d, h, layer_index, "w_gate")
        self.w_up = make_projection(cfg, circuits, d, h, layer_index, "w_up")
        self.w_down = make_projection(cfg, circuits, h, d, layer_index, "w_down")

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))  # (B, T, hidden) -> (B, T, D)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, circuits: Circuits, layer_index: int):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attention = Attention(cfg, circuits, layer_index)
        self.ffn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg, circuits, layer_index)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None = None, start: int = 0) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, start)  # (B, T, D)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig, circuits: Circuits | None = None):
        super().__init__()
        self.cfg = cfg
        circuits = circuits or Circuits()
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(TransformerBlock(cfg, circuits, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        cos, sin = rope_tables(cfg.head_dim, cfg.context, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived from cfg: not in state_dict
        self.register_buffer("rope_sin", sin, persistent=False)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        branch = {id(p) for m in self.modules() if isinstance(m, BRANCHES) for p in m.parameters()}
        std = 0.02
        for m in self.modules():
            if isinstance(m, nn.Linear) and id(m.weight) not in branch:
                nn.init.normal_(m.weight, 0.0, std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.tok_embeddings.weight, 0.0, std)
        for layer in self.layers:  # residual projections: scaled so the stream's variance stays O(1)
            for m in (layer.attention.wo, layer.feed_forward.w_down):
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, std / math.sqrt(2 * self.cfg.n_layers))

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


# --- counting: parameters, FLOPs and the cost of simulating the circuits (for --describe) ---


def count_parameters(model: nn.Module) -> dict[str, int]:
    """total; classical (outside the replaced projections); quantum_branch (all parameters of the
    replaced projections: compress, θ, expand, or the control's compress, mix, expand);
    circuit_angles (θ alone); embedding (tok_embeddings); quantum_projections (how many)."""
    branches = [m for m in model.modules() if isinstance(m, BRANCHES)]
    total = sum(p.numel() for p in model.parameters())
    branch = sum(p.numel() for m in branches for p in m.parameters())
    embedding = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    return {
        "total": total,
        "classical": total - branch,
        "quantum_branch": branch,
        "circuit_angles": sum(m.theta.numel() for m in branches if isinstance(m, QuantumLinear)),
        "embedding": embedding,
        "quantum_projections": len(branches),
    }


def forward_flops_per_token(model: Transformer) -> int:
    """Classical forward FLOPs per token: 2 per weight of every nn.Linear (those inside the
    quantum branches included; embedding lookups are free), plus attention's scores and weighted
    sum, 2·2·context·d_model per layer (at full context: an upper bound, the causal average is
    half). Training costs about 3x (backward = 2 forwards). Circuits are not included."""
    cfg = model.cfg
    linear = sum(2 * m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    return linear + cfg.n_layers * 2 * 2 * cfg.context * cfg.d_model


def circuit_cost(spec: CircuitSpec) -> dict[str, int]:
    """Gate-by-gate statevector cost of one circuit on one token (a textbook estimate; the `local`
    simulator fuses gates into fewer whole-register steps, so it does less than this):
    every gate (the n H of the preparation and the circuit's gates) touches all 2^n amplitudes,
    about one complex multiply-add each (8 real FLOPs); the readout squares every amplitude and
    sums it, signed, into n expectations (about (3 + n)·2^n real FLOPs)."""
    amplitudes = 2**spec.n_qubits
    gates = spec.n_qubits + spec.n_gates
    complex_ops = amplitudes * gates
    return {
        "amplitudes": amplitudes,
        "gates": gates,
        "complex_ops": complex_ops,
        "flops": 8 * complex_ops + (3 + spec.n_qubits) * amplitudes,
    }


def circuit_runs_for_training(cfg: ModelConfig, circuits: Circuits) -> int:
    """Circuit evaluations per token per training step (forward included): adjoint ~3 (forward,
    then a backward sweep that carries the state and its cotangent, ~2 forwards' work);
    shift and fd 1 + 2·(|Θ| + 2 n_q); spsa 1 + 2·samples."""
    grad = circuits.gradient()
    return 3 if grad.method == "adjoint" else grad.evaluations(cfg.circuit_spec())


def describe(cfg: ModelConfig, circuits: Circuits | None = None) -> dict:
    """Parameter counts and per-token costs of cfg and of the same model with quantum="none".

    Models are built on the meta device (no memory, no init; no backend is reached), so the counts
    are those of the real module tree. FLOPs are forward, per token (see forward_flops_per_token,
    circuit_cost)."""
    circuits = circuits or Circuits()
    with torch.device("meta"):
        model, base = Transformer(cfg), Transformer(replace(cfg, quantum="none"))
    params, params_none = count_parameters(model), count_parameters(base)
    n_circuits = params["quantum_projections"] if cfg.has_circuits else 0
    out = {
        "name": cfg.name,
        "quantum": cfg.quantum,
        "branch": cfg.branch,
        "params": params,
        "params_none": params_none,
        "param_reduction_pct": 100.0 * (1 - params["total"] / params_none["total"]),
        "flops_per_token": forward_flops_per_token(model),
        "flops_per_token_none": forward_flops_per_token(base),
        "circuits_per_token": n_circuits,
    }
    if n_circuits:
        cost = circuit_cost(cfg.circuit_spec())
        runs = circuit_runs_for_training(cfg, circuits)
        out["circuit"] = {
            **cost,
            "n_qubits": cfg.n_qubits,
            "grad": circuits.grad,
            "runs_per_training_step": runs,
            "sim_flops_per_token": n_circuits * cost["flops"],
            "sim_flops_per_token_training": n_circuits * cost["flops"] * runs,
        }
    return out


def format_description(d: dict) -> str:
    """describe()'s dict as a short table for --describe."""
    p, b = d["params"], d["params_none"]
    lines = [
        f"model {d['name']}: quantum={d['quantum']} branch={d['branch']}",
        f"  parameters      {p['total']:>14,}  (quantum=none: {b['total']:,}; {d['param_reduction_pct']:.2f}% fewer)",
        f"    classical     {p['classical']:>14,}  (embedding {p['embedding']:,})",
        f"    quantum branch{p['quantum_branch']:>14,}  in {p['quantum_projections']} projection(s); "
        f"circuit angles {p['circuit_angles']:,}",
        f"  forward FLOPs/token, classical {d['flops_per_token']:,}  (quantum=none: {d['flops_per_token_none']:,})",
    ]
    if "circuit" in d:
        c = d["circuit"]
        lines += [
            f"  circuits/token  {d['circuits_per_token']}: {c['n_qubits']} qubits, {c['gates']} gates on "
            f"{c['amplitudes']:,} amplitudes = {c['complex_ops']:,} complex ops ~ {c['flops']:,} FLOPs each",
            f"  simulation FLOPs/token: forward {c['sim_flops_per_token']:,}; training ({c['grad']}, "
            f"{c['runs_per_training_step']} runs) {c['sim_flops_per_token_training']:,}",
        ]
    return "\n".join(lines)
