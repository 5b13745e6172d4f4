"""Model accounting for `--describe` (docs/design.md, "The model"): parameters, classical FLOPs
per token, and what simulating the circuits costs.

    d = describe(from_preset("8m", quantum="wq"), Circuits(grad="fd"))
    d["params"]["total"], d["param_reduction_pct"], d["flops_per_token"], d["circuit"]["flops"]
    print(format_description(d))
"""

from __future__ import annotations

import torch
from torch import nn

from qworker.circuit import CircuitSpec
from trainer.model.circuits import Circuits
from trainer.model.config import ModelConfig, replace
from trainer.model.convert import BRANCHES, build_model
from trainer.model.quantum_linear import QuantumLinear
from trainer.model.transformer import Transformer


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


def describe(cfg: ModelConfig, circuits: Circuits | None = None) -> dict:
    """Parameter counts and per-token costs of cfg and of the same model with quantum="none".

    Models are built on the meta device (no memory, no init; no backend is reached), so the counts
    are those of the real module tree. FLOPs are forward, per token (see forward_flops_per_token,
    circuit_cost)."""
    circuits = circuits or Circuits()
    with torch.device("meta"):
        model, base = build_model(cfg), build_model(replace(cfg, quantum="none"))
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
        spec, grad = cfg.circuit_spec(), circuits.gradient()
        cost = circuit_cost(spec)
        runs = grad.rule.training_evaluations(spec, grad)  # per token: adjoint ~3 (forward and a backward sweep)
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
