"""A HyQuT hybrid model in Hugging Face `transformers`' terms: the modeling code that
`python -m trainer.export` writes beside a hybrid run's weights, so that

    model = AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)
    tokenizer = AutoTokenizer.from_pretrained(DIR)
    model.generate(tokenizer("...", return_tensors="pt").input_ids, do_sample=False, max_new_tokens=32)

loads and samples it with nothing of HyQuT installed. This file is self-contained (torch and
transformers only) and is HyQuT's decoder, op for op (trainer/model/transformer.py: the same names,
RoPE on interleaved pairs, the same order of operations, so the same logits), with the projections
`config.replaced` names taken through the quantum branch (trainer/model/quantum_linear.py):
compress to 2 n_q angles = π·tanh(·), the circuit's <Z_i>, expand; or through the classical control
(trainer/model/bottleneck.py, `branch = "classical"`).

The circuit (qworker/circuit.py): H on every qubit; RY(angle[2i]) RZ(angle[2i+1]) on qubit i; then
`q_layers` of a CNOT ring (or chain), RZ(θ) and RY(θ) on every qubit; readout <Z_i>. Its <Z_i> are
computed exactly: by qworker's `local` simulator where `qworker` is importable (HyQuT installed: the
very numbers `trainer.generate` computes), else by the torch statevector simulator below (complex128,
differentiable, its results returned in float32: equal to `local`'s to ~1e-7).
`config.circuit_simulator` chooses: "auto" (that order), "qworker" or "builtin"; pass it to
`from_pretrained(..., circuit_simulator="builtin")` to override.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

SIMULATORS = ("auto", "qworker", "builtin")


class HyQuTConfig(PretrainedConfig):
    """HyQuT's ModelConfig (trainer/model/config.py) with the projections it replaces spelled out."""

    model_type = "hyqut"
    attribute_map = {
        "hidden_size": "d_model",
        "num_hidden_layers": "n_layers",
        "num_attention_heads": "n_heads",
        "intermediate_size": "ffn_hidden",
        "max_position_embeddings": "context",
    }

    def __init__(
        self,
        vocab_size: int = 6144,
        d_model: int = 256,
        n_layers: int = 6,
        n_heads: int = 8,
        ffn_hidden: int = 688,
        context: int = 256,
        norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        replaced: list[str] | None = None,  # e.g. ["layers.0.attention.wq", ...]
        n_qubits: int = 10,
        q_layers: int = 2,
        entangler: str = "ring",
        branch: str = "circuit",
        circuit_simulator: str = "auto",
        **kwargs,
    ):
        self.vocab_size, self.d_model, self.n_layers, self.n_heads = vocab_size, d_model, n_layers, n_heads
        self.ffn_hidden, self.context, self.norm_eps, self.rope_theta = ffn_hidden, context, norm_eps, rope_theta
        self.replaced = list(replaced or [])
        self.n_qubits, self.q_layers, self.entangler, self.branch = n_qubits, q_layers, entangler, branch
        self.circuit_simulator = circuit_simulator
        self.layer_types = ["full_attention"] * n_layers  # for transformers' DynamicCache
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        problems = []
        if entangler not in ("ring", "chain"):
            problems.append(f"entangler must be ring or chain, got {entangler!r}")
        if branch not in ("circuit", "classical"):
            problems.append(f"branch must be circuit or classical, got {branch!r}")
        if circuit_simulator not in SIMULATORS:
            problems.append(f"circuit_simulator must be one of {', '.join(SIMULATORS)}, got {circuit_simulator!r}")
        if problems:
            raise ValueError("invalid HyQuT config: " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


# --- the circuit, simulated exactly in torch -------------------------------------------------


def circuit_ops(n_qubits: int, n_layers: int, entangler: str) -> list[tuple[str, tuple[int, ...], tuple | None]]:
    """(gate, wires, (source, index) of its angle or None), as qworker.CircuitSpec.ops."""
    ops = [("H", (q,), None) for q in range(n_qubits)]
    for q in range(n_qubits):
        ops += [("RY", (q,), ("angle", 2 * q)), ("RZ", (q,), ("angle", 2 * q + 1))]
    pairs = [(q, q + 1) for q in range(n_qubits - 1)]
    if entangler == "ring" and n_qubits > 1:
        pairs.append((n_qubits - 1, 0))
    k = 0
    for _ in range(n_layers):
        ops += [("CNOT", pair, None) for pair in pairs]
        for gate in ("RZ", "RY"):
            ops += [(gate, (q,), ("theta", k + q)) for q in range(n_qubits)]
            k += n_qubits
    return ops


def simulate(n_qubits: int, n_layers: int, entangler: str, theta: Tensor, angles: Tensor) -> Tensor:
    """<Z_i> (N, n_q) of every token's circuit, in complex128, returned in the angles' dtype; theta
    (|Θ|,), angles (N, 2 n_q). Qubit i is bit i of a basis index; RY(a) = exp(-i a Y/2), RZ(a) =
    exp(-i a Z/2). Differentiable (torch autograd)."""
    n, dim = n_qubits, 2**n_qubits
    a, t = angles.to(torch.float64), theta.to(torch.float64)
    state = torch.full((a.shape[0], dim), 2 ** (-n / 2), dtype=torch.complex128, device=a.device)  # H|0> on all
    index = torch.arange(dim, device=a.device)
    for gate, wires, param in circuit_ops(n_qubits, n_layers, entangler):
        if gate == "H":
            continue  # the uniform state above
        if gate == "CNOT":
            control, target = wires
            state = state[:, index ^ (((index >> control) & 1) << target)]
            continue
        q = wires[0]
        angle = a[:, param[1]] if param[0] == "angle" else t[param[1]].expand(a.shape[0])
        half = (angle / 2)[:, None, None]  # (N, 1, 1)
        s = state.view(-1, dim >> (q + 1), 2, 1 << q)  # axis 2 is qubit q
        a0, a1 = s[:, :, 0], s[:, :, 1]
        if gate == "RY":
            c, si = torch.cos(half), torch.sin(half)
            s = torch.stack((c * a0 - si * a1, si * a0 + c * a1), 2)
        else:  # RZ
            phase = torch.polar(torch.ones_like(half), half)  # e^{i a/2}
            s = torch.stack((a0 / phase, a1 * phase), 2)
        state = s.reshape(-1, dim)
    signs = 1.0 - 2.0 * ((index[:, None] >> torch.arange(n, device=a.device)) & 1).to(torch.float64)  # (2^n, n)
    return ((state.real**2 + state.imag**2) @ signs).to(angles.dtype)


def _qworker_local():
    """qworker's `local` simulator and CircuitSpec, or None where qworker is not importable."""
    try:
        import qworker
    except ImportError:
        return None
    return qworker.get_backend("local"), qworker.CircuitSpec, qworker.Gradient("adjoint")


class QuantumProjection(nn.Module):
    """compress: Linear(d_in, 2 n_q) -> angles π·tanh -> <Z_i> of the circuit -> expand: Linear(n_q, d_out)."""

    def __init__(self, d_in: int, d_out: int, config: HyQuTConfig):
        super().__init__()
        self.n_qubits, self.q_layers, self.entangler = config.n_qubits, config.q_layers, config.entangler
        self.in_features, self.out_features = d_in, d_out
        self.compress = nn.Linear(d_in, 2 * config.n_qubits)
        self.theta = nn.Parameter(torch.empty(2 * config.n_qubits * config.q_layers).uniform_(-math.pi, math.pi))
        self.expand = nn.Linear(config.n_qubits, d_out)
        self.local = None if config.circuit_simulator == "builtin" else _qworker_local()
        if self.local is None and config.circuit_simulator == "qworker":
            raise ImportError("circuit_simulator='qworker' needs HyQuT's qworker importable (pip install hyqut)")

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        angles = math.pi * torch.tanh(self.compress(x.reshape(-1, self.in_features)))  # (B·T, 2 n_q)
        with torch.autocast(angles.device.type, enabled=False):  # circuits in float32 (or 64), never bf16
            angles = angles.float() if angles.dtype not in (torch.float32, torch.float64) else angles
            theta = self.theta.to(angles.dtype)
            if self.local is not None:
                backend, spec, grad = self.local
                z = backend.apply(spec(self.n_qubits, self.q_layers, self.entangler), theta, angles, grad)
            else:
                z = simulate(self.n_qubits, self.q_layers, self.entangler, theta, angles)
        return self.expand(z.to(x.dtype)).reshape(*lead, self.out_features)


class ClassicalBottleneck(nn.Module):
    """The control: compress -> π·tanh -> mix: Linear(2 n_q, n_q) -> tanh -> expand."""

    def __init__(self, d_in: int, d_out: int, config: HyQuTConfig):
        super().__init__()
        self.compress = nn.Linear(d_in, 2 * config.n_qubits)
        self.mix = nn.Linear(2 * config.n_qubits, config.n_qubits)
        self.expand = nn.Linear(config.n_qubits, d_out)

    def forward(self, x: Tensor) -> Tensor:
        angles = math.pi * torch.tanh(self.compress(x))  # (..., 2 n_q)
        return self.expand(torch.tanh(self.mix(angles)))


# --- the decoder (trainer/model/transformer.py) ------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_tables(head_dim: int, context: int, theta: float, device=None) -> tuple[Tensor, Tensor]:
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim)
    angles = torch.outer(torch.arange(context, device=device, dtype=torch.float32), inv_freq)  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    xf = x.float().unflatten(-1, (-1, 2))  # (B, T, nh, hs/2, 2): interleaved pairs
    x1, x2 = xf[..., 0], xf[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), -1)
    return out.flatten(-2).type_as(x)


def projection(config: HyQuTConfig, name: str, d_in: int, d_out: int) -> nn.Module:
    """nn.Linear, or the branch that `config.replaced` puts in its place."""
    if name not in config.replaced:
        return nn.Linear(d_in, d_out, bias=False)
    return (QuantumProjection if config.branch == "circuit" else ClassicalBottleneck)(d_in, d_out, config)


class Attention(nn.Module):
    def __init__(self, config: HyQuTConfig, i: int):
        super().__init__()
        self.layer_index, self.n_heads, self.head_dim = i, config.n_heads, config.head_dim
        d = config.d_model
        for name in ("wq", "wk", "wv", "wo"):
            setattr(self, name, projection(config, f"layers.{i}.attention.{name}", d, d))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache=None, start: int = 0) -> Tensor:
        B, T, D = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim)  # (B, T, nh, hs)
        k = self.wk(x).view(B, T, self.n_heads, self.head_dim)
        v = self.wv(x).view(B, T, self.n_heads, self.head_dim)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, nh, T, hs)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v = cache.update(k, v, self.layer_index)  # (B, nh, start+T, hs)
            mask = None
            if T > 1:  # query i sits at position start + i
                pos = torch.arange(start + T, device=x.device)
                mask = pos <= pos[start:, None]
            y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask)
        return self.wo(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    def __init__(self, config: HyQuTConfig, i: int):
        super().__init__()
        d, h = config.d_model, config.ffn_hidden
        self.w_gate = projection(config, f"layers.{i}.feed_forward.w_gate", d, h)
        self.w_up = projection(config, f"layers.{i}.feed_forward.w_up", d, h)
        self.w_down = projection(config, f"layers.{i}.feed_forward.w_down", h, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class TransformerBlock(nn.Module):
    def __init__(self, config: HyQuTConfig, i: int):
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = Attention(config, i)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.feed_forward = FeedForward(config, i)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache=None, start: int = 0) -> Tensor:
        h = x + self.attention(self.attention_norm(x), cos, sin, cache, start)
        return h + self.feed_forward(self.ffn_norm(h))


class HyQuTForCausalLM(PreTrainedModel, GenerationMixin):
    """HyQuT's decoder under its own parameter names (a HyQuT run's weights load as they are)."""

    config_class = HyQuTConfig
    base_model_prefix = "hyqut"
    _no_split_modules = ["TransformerBlock"]

    def __init__(self, config: HyQuTConfig):
        super().__init__(config)
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(TransformerBlock(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.output = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        """HyQuT's init (trainer/model/transformer.py), for weights a checkpoint does not hold."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)
        elif isinstance(module, QuantumProjection):
            nn.init.uniform_(module.theta, -math.pi, math.pi)

    def get_input_embeddings(self) -> nn.Module:
        return self.tok_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.tok_embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.output

    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: Tensor | None = None,
        cache=None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Logits (B, T, V) in float32; with `cache` (a transformers Cache, as `generate` passes) the
        tokens continue the cached sequence. `attention_mask` may only mark every token (no padding)."""
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ValueError("HyQuT's decoder takes no padding: pass sequences of one length, without a padded mask")
        B, T = input_ids.shape
        start = cache.get_seq_length() if cache is not None else 0
        if start + T > self.config.context:
            raise ValueError(f"{start + T} tokens exceed the model's context of {self.config.context}")
        cos, sin = rope_tables(self.config.head_dim, self.config.context, self.config.rope_theta, input_ids.device)
        cos, sin = cos[start : start + T], sin[start : start + T]
        h = self.tok_embeddings(input_ids)  # (B, T, D)
        for layer in self.layers:
            h = layer(h, cos, sin, cache, start)
        logits = self.output(self.norm(h)).float()  # (B, T, V)
        loss = None
        if labels is not None:  # transformers' convention: labels are the inputs, shifted here
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
        return CausalLMOutputWithPast(loss=loss, logits=logits, cache=cache)
