"""What one request may ask of a server, and how many tokens fit in one request."""

from __future__ import annotations

from dataclasses import dataclass

from qworker.protocol.evaluation import Header

ENVELOPE_BYTES = 4096  # headroom for everything in a message but tensor data


REPLICA_WORK_RATE = 2**25  # amplitude-circuits a second on one CPU replica (the local simulator, ~32k
# one-token circuits of 10 qubits a second): what turns max_request_seconds into a work limit


@dataclass(frozen=True)
class Limits:
    """What one request may ask of a server, and how the server admits it (InfoResponse.limits)."""

    max_qubits: int = 20
    max_layers: int = 64
    max_message_bytes: int = 64 * 2**20
    max_tokens_per_request: int = 65536
    max_shots: int = 2**20
    max_work_per_request: int = 600 * REPLICA_WORK_RATE  # one-token circuits x 2^n_qubits
    max_request_seconds: float = 600.0
    default_deadline_s: float = 600.0
    max_deadline_s: float = 3600.0
    max_inflight: int = 0  # 0: not reported (a client's own Limits)
    max_queue: int = 0
    max_replicas: int = 0
    max_resident_bytes: int = 2**30  # kept Jacobians a replica holds (EvaluateRequest.keep_jacobians)
    resident_ttl_s: float = 600.0  # unused kept Jacobians expire after this (their trainer is gone)


def message_bytes_per_token(header: Header) -> int:
    """Bytes one token adds to the larger of a request and its response: what bounds a batch
    (with a per-token theta, its row; or its VJP's, as large)."""
    spec, want = header.spec, header.want
    request = spec.n_angles + (spec.n_qubits if want == "vjp" else 0)  # angles (+ grad_out)
    jacobians = 0 if header.keep_jacobians else spec.n_qubits * (spec.n_params + spec.n_angles)  # kept: a handle
    response = {"expectations": 0, "jacobians": jacobians, "vjp": spec.n_angles}
    response = response[want] + (spec.n_qubits if want == "expectations" or header.include_expectations else 0)
    return (max(request, response) + (spec.n_params if header.per_token_theta else 0)) * header.itemsize


def max_tokens(header: Header, limits: Limits) -> int:
    """The most tokens a request like `header` may carry within `limits` (>= 1)."""
    spec = header.spec
    fit = (limits.max_message_bytes - ENVELOPE_BYTES - spec.n_params * header.itemsize) // message_bytes_per_token(
        header
    )
    work = limits.max_work_per_request // header.work_per_token
    return max(1, min(limits.max_tokens_per_request, fit, work))
