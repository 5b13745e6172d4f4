"""A channel to a qworker server, or to several frontends (client/targets.py): the token, TLS, a
deadline on every call, and retries of UNAVAILABLE; the errors a call ends in, as exceptions.

    connection = Connection("127.0.0.1:50051", token="...", deadline_s=60)
    info = connection.call("Info", pb.InfoRequest())
    spread = Connection(parse("10.0.0.5:50051,10.0.0.6:50051"))    # round_robin over both
    one = Connection("10.0.0.6:50051", pinned=True)                # that one, or a quick UNAVAILABLE
    admin_call("grpc://127.0.0.1:50051", "Scale", pb.ScaleRequest(replicas=4))
"""

from __future__ import annotations

import os
import random
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import grpc
from prometheus_client import REGISTRY, Counter

from qworker.client.targets import SPREAD_CONFIG, Target
from qworker.protocol.metadata import REQUEST_ID, RETRY_AFTER, bearer
from qworker.protocol.wire import qworker_pb2_grpc as pb_grpc


class RemoteError(RuntimeError):
    """A qworker call that failed; `code` is its grpc.StatusCode."""

    def __init__(self, message: str, code: grpc.StatusCode):
        super().__init__(message)
        self.code = code


class RemoteInvalidArgument(RemoteError, ValueError):
    """The server refused the request's contents (INVALID_ARGUMENT): a ValueError, as locally."""


RETRIES = Counter(
    "hyqut_qworker_client_retries",
    "qworker calls retried by this process's clients, by the status that made them retry",
    ["code"],
    registry=REGISTRY,
)


WIRE_BYTES = Counter(
    "hyqut_qworker_client_bytes",
    "Bytes of the qworker messages this process's clients sent and received (protobuf-encoded; retries included)",
    ["direction"],
    registry=REGISTRY,
)
RECOMPUTES = Counter(
    "hyqut_qworker_client_recomputes",
    "VJPs of kept Jacobians this process's clients sent again with their inputs (the handle was gone)",
    registry=REGISTRY,
)


# A server restarting or going away: UNAVAILABLE, or CANCELLED, which a blocking call of this
# client never causes itself (a deadline ends it DEADLINE_EXCEEDED) and so comes from the other
# side: a stream that reached a server as it shut down is reset (RST_STREAM, CANCEL), and calls
# still running when its grace ends are cancelled.
GOING_AWAY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)


class Connection:
    """A channel to a qworker server (or to the frontends of a spread `Target`, by round_robin over
    those that are SERVING): the token, TLS, a deadline and an id for every call, and retries of
    UNAVAILABLE or CANCELLED (GOING_AWAY) and of a full server's RESOURCE_EXHAUSTED (counted in
    RETRIES). `pinned`: this one server or nothing (a handle's call, which only it can answer): a
    call does not wait for it to come back, and GOING_AWAY is not retried. `tls_name`: the name its TLS
    certificate is checked against (a frontend reached by the address it gave, under a DNS name).
    Picklable: a copy reconnects on first use."""

    def __init__(
        self,
        target: str | Target,
        token: str | None = None,
        root_cert: str | Path | bytes | None = None,
        deadline_s: float = 60.0,
        connect_timeout_s: float = 10.0,
        pinned: bool = False,
        tls_name: str | None = None,
    ):
        self.target = target if isinstance(target, Target) else Target(target, target)
        self.name = f"grpc://{self.target.given}"
        self.deadline_s, self.connect_timeout_s = deadline_s, connect_timeout_s
        self.pinned, self.tls_name = pinned, tls_name
        token = token or os.environ.get("HYQUT_TOKEN")
        self._metadata = bearer(token) if token else None
        self._root_cert = root_cert if isinstance(root_cert, bytes | None) else Path(root_cert).read_bytes()
        self._channel = self._stub = None

    def call(self, rpc: str, request):
        """`rpc` with the token and an id, within the deadline; UNAVAILABLE or CANCELLED (the server
        restarting or going away, or no replica live yet) is retried with jittered backoff, and
        RESOURCE_EXHAUSTED with a retry-after hint (the server full) after that hint, until the
        deadline has passed."""
        method = getattr(self._connect(), rpc)
        request_id = uuid.uuid4().hex[:16]
        metadata = ((REQUEST_ID, request_id), *(self._metadata or ()))
        delay, deadline = 0.1, time.monotonic() + self.deadline_s
        while True:
            left = deadline - time.monotonic()
            try:
                WIRE_BYTES.labels("sent").inc(request.ByteSize())
                response = method(request, timeout=max(left, 0.001), metadata=metadata, wait_for_ready=not self.pinned)
                WIRE_BYTES.labels("received").inc(response.ByteSize())
                return response
            except grpc.RpcError as e:
                wait = self._retry_after(e, delay)
                if wait is not None and deadline - time.monotonic() > wait:
                    RETRIES.labels(e.code().name).inc()
                    time.sleep(wait)
                    delay = min(2 * delay, 2.0)
                    continue
                raise self._error(rpc, e, request_id) from None

    def _retry_after(self, e: grpc.RpcError, delay: float) -> float | None:
        """Seconds to wait before retrying `e`, or None if it is not to be retried."""
        if e.code() in GOING_AWAY and not self.pinned:
            return delay * random.uniform(0.5, 1.5)
        hint = (
            dict(e.trailing_metadata() or ()).get(RETRY_AFTER)
            if e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            else None
        )
        return None if hint is None else float(hint) / 1000 * random.uniform(1.0, 1.5)

    def _error(self, rpc: str, e: grpc.RpcError, request_id: str) -> RemoteError:
        code, details = e.code(), e.details()
        if request_id not in (details or ""):
            details = f"{details} [request {request_id}]"
        message = f"{self.name} {rpc} failed: {code.name}: {details}"
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            message += f" (deadline {self.deadline_s:g} s: raise it with ?deadline= or send smaller batches)"
        cls = RemoteInvalidArgument if code == grpc.StatusCode.INVALID_ARGUMENT else RemoteError
        return cls(message, code)

    def _connect(self) -> pb_grpc.QWorkerStub:
        """The stub, connecting first if needed; a clear error when nothing answers in time."""
        if self._stub is not None:
            return self._stub
        options = [("grpc.max_receive_message_length", 2**31 - 1), ("grpc.max_send_message_length", 2**31 - 1)]
        if self.target.spread:  # gRPC's round_robin over the frontends that are up and SERVING
            options.append(("grpc.service_config", SPREAD_CONFIG))
        target = self.target.channel
        if self._root_cert is not None:
            if self.tls_name or self.target.tls_name:  # not the channel target's own authority
                options.append(("grpc.ssl_target_name_override", self.tls_name or self.target.tls_name))
            channel = grpc.secure_channel(target, grpc.ssl_channel_credentials(self._root_cert), options)
        else:
            channel = grpc.insecure_channel(target, options)
        if self.pinned:  # a call finds out itself, at once, whether the server is there
            self._channel, self._stub = channel, pb_grpc.QWorkerStub(channel)
            return self._stub
        try:
            grpc.channel_ready_future(channel).result(timeout=self.connect_timeout_s)
        except grpc.FutureTimeoutError:
            channel.close()
            tls = "with TLS" if self._root_cert is not None else "without TLS"
            port = self.target.given.rsplit(":", 1)[-1]
            if self.target.spread:
                raise ConnectionError(
                    f"no qworker frontend answered SERVING at {self.name} within {self.connect_timeout_s:g} s "
                    f"(connecting {tls}); are they up, and their replicas live (python -m qworker info)?"
                ) from None
            raise ConnectionError(
                f"no qworker answered at {self.name} within {self.connect_timeout_s:g} s (connecting {tls}); "
                f"is `python -m qworker serve --port {port}` running there?"
            ) from None
        self._channel, self._stub = channel, pb_grpc.QWorkerStub(channel)
        return self._stub

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, _channel=None, _stub=None)


def admin_call(address: str, rpc: str, request, tls_root_cert: Path | None = None):
    """One Info or Scale call to the server at grpc://host:port (token from $HYQUT_TOKEN)."""
    parts = urlsplit(address)
    if parts.scheme == "grpc" and "," in parts.netloc:
        raise ValueError(f"{address!r} names several frontends: name one (grpc://host:port); each scales its node")
    if parts.scheme != "grpc" or not parts.hostname or not parts.port:
        raise ValueError(f"bad qworker address {address!r}: expected grpc://host:port")
    connection = Connection(parts.netloc, root_cert=tls_root_cert)
    try:
        return connection.call(rpc, request)
    finally:
        connection.close()
