"""The model is built plain, then converted (torchtitan's model converters): the projections a
config selects (`--quantum`, `--quantum-layers`) become QuantumLinear on the run's circuits, or
the ClassicalBottleneck control (`--branch classical`). The rest of the model never knows.

    model = build_model(cfg, circuits)        # the one way to build a model to train, sample or export
    # which is:
    model = Transformer(cfg)                  # plain LLaMA, nn.Linear everywhere, initialised
    quantize(model, circuits)                 # replace what cfg selects, in place

A replaced projection keeps its name (`layers.0.attention.wq.theta`, ...), so state_dicts read the
same as before the conversion existed, and its own documented init (nn.Linear's Kaiming-uniform,
θ ~ U(-π, π)), drawn from torch's generator after the plain model's: the same seed gives the same
weights, and a hybrid model's classical weights are the classical model's of the same seed.
"""

from __future__ import annotations

from torch import nn

from trainer.model.bottleneck import ClassicalBottleneck
from trainer.model.circuits import Circuits
from trainer.model.config import PROJECTIONS, ModelConfig
from trainer.model.quantum_linear import QuantumLinear
from trainer.model.transformer import Transformer

BRANCHES = (QuantumLinear, ClassicalBottleneck)  # the modules a projection can be replaced by


def build_model(cfg: ModelConfig, circuits: Circuits | None = None) -> Transformer:
    """The model of `cfg`, initialised, its quantum projections on `circuits` (default: the local
    simulator, adjoint gradients). Seed torch first for reproducible weights."""
    return quantize(Transformer(cfg), circuits)


def quantize(model: Transformer, circuits: Circuits | None = None) -> Transformer:
    """Replace, in place, every projection that `model.cfg` selects by its branch; returns `model`."""
    cfg, circuits = model.cfg, circuits or Circuits()
    for i, name, parent in model.projections():
        if cfg.replaces(i, name):
            linear = getattr(parent, name)
            setattr(parent, name, branch(cfg, circuits, linear, seed=1000 * i + PROJECTIONS.index(name)))
    return model


def branch(cfg: ModelConfig, circuits: Circuits, linear: nn.Linear, seed: int) -> nn.Module:
    """What replaces `linear`: QuantumLinear on `circuits` (a seeded backend gets `seed`, fixed per
    projection), or the ClassicalBottleneck control; same shapes, on `linear`'s device."""
    d_in, d_out = linear.in_features, linear.out_features
    if cfg.branch == "classical":
        module = ClassicalBottleneck(d_in, d_out, cfg.n_qubits)
    else:
        backend = circuits.backend_for(seed=seed)
        module = QuantumLinear(d_in, d_out, cfg.n_qubits, cfg.q_layers, cfg.entangler, backend, circuits.gradient())
    return module.to(linear.weight.device)
