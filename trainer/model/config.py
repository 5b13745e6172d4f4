"""ModelConfig: the one description of a HyQuT model's architecture (docs/design.md, "The model"),
and its named presets. Where the circuits run and how they are differentiated is not part of the
model: that is a run setting (`trainer.model.circuits.Circuits`).

    cfg = from_preset("8m", quantum="wq")          # any field can be overridden
    cfg.to_dict()                                 # plain JSON-able dict, carried by checkpoints
    ModelConfig.from_dict(d) == cfg               # round trip

Every field maps to a command-line flag `--field-name` (underscores become dashes); validation
names that flag in its message, gathers every problem and raises one ValueError.

Sizes. Default vocab 6144 (a multiple of 128), untied input and output embeddings (LLaMA's
convention: `output` is a plain linear head). With these the classical parameter counts are
tiny 0.887M, 8m 7.89M, 150m 150.2M: `tiny` and `8m` are the DESIGN table's shapes exactly;
`150m` keeps d_model/layers/heads/context and takes ffn_hidden 2368 (the table's 2816 would
give 166.8M). With vocab 8192 the 8m preset would be 8.94M and tiny 1.15M.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields

from qworker.circuit import ENTANGLERS, CircuitSpec
from trainer.data.tokenizer import DEFAULT_VOCAB_SIZE

# --quantum: which projections of the selected layers become quantum
TARGETS: dict[str, tuple[str, ...]] = {
    "none": (),
    "wq": ("wq",),
    "wgate": ("w_gate",),
    "attn": ("wq", "wk", "wv", "wo"),
    "ffn": ("w_gate", "w_up", "w_down"),
}
PROJECTIONS = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")
# --branch: what sits between a replaced projection's compress and expand: the circuit, or the
# classical control (a Linear(2 n_q, n_q) + tanh, trainer/model/bottleneck.py) that tells what the
# circuit adds beyond squeezing the projection through 2 n_q numbers
BRANCHES = ("circuit", "classical")
# the fields whose values come from a fixed set: their flags' --help lists it (trainer/main.py)
CHOICES: dict[str, tuple[str, ...]] = {"quantum": tuple(TARGETS), "entangler": ENTANGLERS, "branch": BRANCHES}


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"  # the preset it came from, for logs and --describe

    # --- transformer (LLaMA-style decoder) ---
    vocab_size: int = DEFAULT_VOCAB_SIZE  # 6144; must be >= the tokenizer's vocabulary
    d_model: int = 256  # residual stream width
    n_layers: int = 6  # transformer blocks
    n_heads: int = 8  # attention heads; head_dim = d_model / n_heads, even for RoPE
    ffn_hidden: int = 688  # SwiGLU hidden width
    context: int = 256  # maximum sequence length (RoPE tables and KV cache are this long)
    norm_eps: float = 1e-5  # RMSNorm epsilon
    rope_theta: float = 10000.0  # RoPE base

    # --- quantum projections ---
    quantum: str = "none"  # none | wq | wgate | attn | ffn: which projections become quantum
    quantum_layers: tuple[int, ...] | None = None  # layer indices to replace in; None = all
    n_qubits: int = 10  # qubits per circuit; the branch is d_in -> 2 n_q angles -> n_q -> d_out
    q_layers: int = 2  # ansatz layers of the circuit (each: entangler, RZ, RY)
    entangler: str = "ring"  # ring | chain
    branch: str = "circuit"  # circuit | classical (the control: no circuit, same shapes around it)

    def __post_init__(self) -> None:
        object.__setattr__(self, "quantum_layers", _layer_tuple(self.quantum_layers))
        problems = self.problems()
        if problems:
            raise ValueError(f"invalid model config ({len(problems)} problem(s)): " + "; ".join(problems))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def quantum_layer_set(self) -> frozenset[int]:
        layers = range(self.n_layers) if self.quantum_layers is None else self.quantum_layers
        return frozenset(layers) if self.quantum != "none" else frozenset()

    def replaces(self, layer_index: int, projection: str) -> bool:
        """Whether projection `projection` of layer `layer_index` takes the quantum branch."""
        assert projection in PROJECTIONS, f"unknown projection {projection!r}; one of {PROJECTIONS}"
        return layer_index in self.quantum_layer_set and projection in TARGETS[self.quantum]

    def problems(self) -> list[str]:
        """Every problem with this config, each naming the flag to change; [] when valid."""
        p = []
        for f in ("vocab_size", "d_model", "n_layers", "n_heads", "ffn_hidden", "context", "n_qubits"):
            v = getattr(self, f)
            if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                p.append(f"{f} must be a positive integer, got {v!r} (change {flag(f)})")
        if not (isinstance(self.q_layers, int) and self.q_layers >= 0):
            p.append(f"q_layers must be a non-negative integer, got {self.q_layers!r} (change {flag('q_layers')})")
        for f in ("norm_eps", "rope_theta"):
            v = getattr(self, f)
            if not (isinstance(v, (int, float)) and v > 0):
                p.append(f"{f} must be a number > 0, got {v!r} (change {flag(f)})")
        if _positive(self.d_model) and _positive(self.n_heads):
            if self.d_model % self.n_heads:
                p.append(
                    f"n_heads={self.n_heads} does not divide d_model={self.d_model} "
                    f"(change {flag('n_heads')} or {flag('d_model')})"
                )
            elif self.head_dim % 2:
                p.append(
                    f"head_dim = d_model / n_heads = {self.head_dim} must be even for RoPE "
                    f"(change {flag('n_heads')} or {flag('d_model')})"
                )
        if self.quantum not in TARGETS:
            p.append(f"unknown quantum target {self.quantum!r}; choose one of {', '.join(TARGETS)} ({flag('quantum')})")
        if self.quantum_layers is not None and not isinstance(self.quantum_layers, tuple):
            p.append(
                f"quantum_layers must be layer indices (e.g. 0,2), got {self.quantum_layers!r} "
                f"(change {flag('quantum_layers')})"
            )
        elif self.quantum_layers is not None:
            bad = [i for i in self.quantum_layers if not (isinstance(i, int) and 0 <= i < _int_or(self.n_layers, 0))]
            if bad:
                p.append(
                    f"quantum_layers {list(bad)} out of range: layer indices run 0..{_int_or(self.n_layers, 0) - 1} "
                    f"(change {flag('quantum_layers')})"
                )
            elif not self.quantum_layers and self.quantum != "none":
                p.append(
                    f"quantum_layers is empty: --quantum {self.quantum} would replace nothing "
                    f"(change {flag('quantum_layers')}, or leave it out for all layers)"
                )
            elif len(set(self.quantum_layers)) != len(self.quantum_layers):
                p.append(
                    f"quantum_layers {list(self.quantum_layers)} repeats a layer (change {flag('quantum_layers')})"
                )
        if self.entangler not in ENTANGLERS:
            p.append(
                f"unknown entangler {self.entangler!r}; choose one of {', '.join(ENTANGLERS)} ({flag('entangler')})"
            )
        if self.branch not in BRANCHES:
            p.append(f"unknown branch {self.branch!r}; choose one of {', '.join(BRANCHES)} ({flag('branch')})")
        if _positive(self.n_qubits) and isinstance(self.q_layers, int) and self.entangler in ENTANGLERS:
            try:
                CircuitSpec(self.n_qubits, self.q_layers, self.entangler)
            except ValueError as e:
                p.append(f"{e} (change {flag('n_qubits')})")
        return p

    def circuit_spec(self) -> CircuitSpec:
        return CircuitSpec(self.n_qubits, self.q_layers, self.entangler)

    @property
    def has_circuits(self) -> bool:
        """Whether the model runs quantum circuits (some projection replaced, by the circuit branch)."""
        return bool(self.quantum_layer_set) and self.branch == "circuit"

    def to_dict(self) -> dict:
        """A plain dict (lists, not tuples), JSON-serialisable."""
        d = {f: getattr(self, f) for f in field_names()}
        if d["quantum_layers"] is not None:
            d["quantum_layers"] = list(d["quantum_layers"])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """The inverse of to_dict; unknown keys are reported with the rest of the problems."""
        return _build({k: v for k, v in d.items() if k in field_names()}, sorted(set(d) - set(field_names())))


def field_names() -> tuple[str, ...]:
    return tuple(f.name for f in fields(ModelConfig))


def flag(field_name: str) -> str:
    """The command-line flag of a config field."""
    return "--" + field_name.replace("_", "-")


PRESETS: dict[str, dict] = {
    # CPU-sized debug model for tests, CI and the README's quick run: 0.887M parameters
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, ffn_hidden=176, context=128),
    # the paper's small scale, trains on one CPU: 7.89M parameters
    "8m": dict(d_model=256, n_layers=6, n_heads=8, ffn_hidden=688, context=256),
    # the paper's large scale, GPUs and DeepSpeed: 150.2M parameters
    "150m": dict(d_model=1024, n_layers=12, n_heads=16, ffn_hidden=2368, context=512),
}


def from_preset(name: str, **overrides) -> ModelConfig:
    """The preset `name` (tiny, 8m, 150m) with any fields overridden, validated."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r} (--model); choose one of {', '.join(PRESETS)}")
    known = {k: v for k, v in overrides.items() if k in field_names()}
    return _build({"name": name, **PRESETS[name], **known}, sorted(set(overrides) - set(field_names())))


def replace(cfg: ModelConfig, **changes) -> ModelConfig:
    """A copy of cfg with fields changed, validated again."""
    return dataclasses.replace(cfg, **changes)


def _build(values: dict, unknown: list[str]) -> ModelConfig:
    """ModelConfig(**values), with unknown field names reported in the same single error."""
    why = f"unknown config field(s) {', '.join(unknown)}; known: {', '.join(field_names())}" if unknown else ""
    try:
        cfg = ModelConfig(**values)
    except ValueError as e:
        raise ValueError(f"{e}; {why}" if why else str(e)) from None
    if why:
        raise ValueError(f"invalid model config: {why}")
    return cfg


def _layer_tuple(v):
    """quantum_layers as a tuple: from a JSON list, one int, or a string "0,2"; else as given."""
    if isinstance(v, int) and not isinstance(v, bool):
        return (v,)
    if isinstance(v, str):
        try:
            return tuple(int(i) for i in v.split(",") if i.strip())
        except ValueError:
            return v
    return tuple(v) if isinstance(v, (list, tuple, range)) else v


def _positive(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _int_or(v, default: int) -> int:
    return v if isinstance(v, int) else default
