"""Every error a qworker call can end in, and the one table that maps them to gRPC status codes.

Raised on the server side (request checks, pools, replicas) and mapped to a status by
`status_for`; the client turns a status back into `qworker.client.RemoteError`.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError

from qworker.deadline import Cancelled, DeadlineExceeded


class WireError(ValueError):
    """A request field that cannot be decoded or evaluated; the message starts with the field."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"{field}: {problem}")
        self.field = field


class OverLimitError(Exception):
    """A request over one of the server's limits (RESOURCE_EXHAUSTED)."""


class PoolNotReady(Exception):
    """The pool has no live replica yet (UNAVAILABLE: the client may retry)."""


class ReplicasDied(Exception):
    """Several replicas died running one request: the request itself kills them (RESOURCE_EXHAUSTED)."""


class HandleGone(Exception):
    """Kept Jacobians that are no longer where their handle says (NOT_FOUND): send the inputs."""


class ScaleRefused(Exception):
    """A Scale call this server cannot carry out (FAILED_PRECONDITION): the message says why."""


StatusCode = grpc.StatusCode

# First match wins: subclasses before their bases (DeadlineExceeded is a TimeoutError, WireError a ValueError).
STATUS: tuple[tuple[type[BaseException], grpc.StatusCode], ...] = (
    (OverLimitError, StatusCode.RESOURCE_EXHAUSTED),
    (MemoryError, StatusCode.RESOURCE_EXHAUSTED),
    (ReplicasDied, StatusCode.RESOURCE_EXHAUSTED),
    (PoolNotReady, StatusCode.UNAVAILABLE),
    (DeadlineExceeded, StatusCode.DEADLINE_EXCEEDED),
    (TimeoutError, StatusCode.DEADLINE_EXCEEDED),
    (Cancelled, StatusCode.CANCELLED),
    (ScaleRefused, StatusCode.FAILED_PRECONDITION),
    (HandleGone, StatusCode.NOT_FOUND),
    (DecodeError, StatusCode.INVALID_ARGUMENT),
    (ValueError, StatusCode.INVALID_ARGUMENT),  # CircuitInputError, WireError and the backends' own checks
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and message a call that raised `exc` is answered with."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            message = str(exc)
            if isinstance(exc, DecodeError):
                message = f"request: not a valid message of the qworker contract ({exc})"
            return code, message
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details"
