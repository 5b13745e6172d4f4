"""Token auth for the qworker server: a gRPC server interceptor.

Every call but the standard health checks (which probes send without credentials) must carry
the metadata `authorization: Bearer <token>`; others are answered UNAUTHENTICATED.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable

import grpc

from qworker.protocol.metadata import AUTHORIZATION

OPEN_PREFIXES = ("/grpc.health.v1.Health/",)


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls without the right bearer token; `on_reject(method)` is told of each."""

    def __init__(self, token: str, on_reject: Callable[[str], None] = lambda method: None):
        assert token, "an empty token would let anyone in; pass None for no auth"
        self._expected = f"Bearer {token}".encode()
        self._on_reject = on_reject

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(OPEN_PREFIXES):
            return handler
        given = dict(handler_call_details.invocation_metadata or ()).get(AUTHORIZATION)
        if given is not None and hmac.compare_digest(str(given).encode(), self._expected):
            return handler
        self._on_reject(method)
        why = "missing token" if given is None else "wrong token"
        return _refusal(handler, f"{why}: send metadata 'authorization: Bearer <token>' with the server's token")


def _refusal(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind (unary/stream) as `handler` that answers UNAUTHENTICATED."""

    async def deny(_request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(deny, handler.request_deserializer, handler.response_serializer)
