"""What one request may ask of a server, and how many tokens fit in one request."""

from __future__ import annotations

from dataclasses import dataclass

from qworker.circuit import CircuitSpec

ENVELOPE_BYTES = 4096  # headroom for everything in a message but tensor data


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a server (InfoResponse.limits)."""

    max_qubits: int = 20
    max_layers: int = 64
    max_message_bytes: int = 64 * 2**20
    max_tokens_per_request: int = 65536
    max_shots: int = 2**20
    max_circuits_per_request: int = 2**24  # N x evaluations per token: bounds a request's compute


def message_bytes_per_token(spec: CircuitSpec, want: str, include_expectations: bool, itemsize: int) -> int:
    """Bytes one token adds to the larger of a request and its response: what bounds a batch."""
    request = spec.n_angles + (spec.n_qubits if want == "vjp" else 0)  # angles (+ grad_out)
    response = {"expectations": 0, "jacobians": spec.n_qubits * (spec.n_params + spec.n_angles), "vjp": spec.n_angles}
    response = response[want] + (spec.n_qubits if want == "expectations" or include_expectations else 0)
    return (max(request, response) + spec.n_params) * itemsize  # + a per-token theta (or its VJP)


def max_tokens(
    spec: CircuitSpec, want: str, include_expectations: bool, itemsize: int, circuits_per_token: int, limits: Limits
) -> int:
    """The most tokens a request like this may carry within `limits` (>= 1)."""
    per_token = message_bytes_per_token(spec, want, include_expectations, itemsize)
    fit = (limits.max_message_bytes - ENVELOPE_BYTES - spec.n_params * itemsize) // per_token
    circuits = limits.max_circuits_per_request // circuits_per_token
    return max(1, min(limits.max_tokens_per_request, fit, circuits))
