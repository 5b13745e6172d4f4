"""The qworker gRPC service (DESIGN.md §4-§5): `hyqut.qworker.v1.QWorker` over a pool.

    server, port = create_server(ServerConfig(port=0))     # built, bound, not started
    server.start()                                         # health turns SERVING once the pool is live
    ...
    server.stop(grace=5)

or `python -m qworker serve --port 50051` (`serve`). The servicer is thin: parse, convert
(`wire_convert`), call the pool, convert back; every error becomes a status code in `status_for`.
Also served: standard health (`grpc.health.v1`) and server reflection.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from concurrent import futures
from dataclasses import asdict, dataclass, fields
from importlib.metadata import PackageNotFoundError, version

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from qworker import wire_convert
from qworker.auth import TokenAuthInterceptor
from qworker.circuit import VERSION as CIRCUIT_VERSION
from qworker.pool import SIMULATORS, InProcessPool, PoolNotReady, ReplicasDied
from qworker.service_metrics import ServiceMetrics
from qworker.wire import qworker_pb2 as pb
from qworker.wire_convert import Limits

log = logging.getLogger("qworker.service")

SERVICE = pb.DESCRIPTOR.services_by_name["QWorker"].full_name  # hyqut.qworker.v1.QWorker
PROTO_VERSION = 1
MAX_STATUS_MESSAGE = 1000  # characters: status messages travel in trailers
ANSWER_MARGIN_S = 0.2  # a request stops waiting for a replica this long before its deadline


@dataclass
class ServerConfig:
    """How to run a qworker server; `python -m qworker serve --help` sets every field."""

    host: str = "127.0.0.1"
    port: int = 50051  # 0 picks a free port
    token: str | None = None  # require `authorization: Bearer <token>` (health stays open)
    tls_cert: bytes | None = None  # PEM certificate chain; with tls_key, serve TLS only
    tls_key: bytes | None = None
    max_message_mb: int = 64  # requests and responses; larger requests are RESOURCE_EXHAUSTED
    max_qubits: int = Limits.max_qubits
    max_layers: int = Limits.max_layers
    max_tokens_per_request: int = Limits.max_tokens_per_request
    max_shots: int = Limits.max_shots
    max_circuits_per_request: int = Limits.max_circuits_per_request
    simulators: tuple[str, ...] = SIMULATORS
    replicas: int | None = None  # Ray pool of this many replicas; None: evaluate in the server's process
    ray_address: str | None = None  # the Ray cluster (None: $RAY_ADDRESS, else start a local Ray)
    replica_cpus: float = 1.0  # CPUs each replica asks Ray for (its torch threads)
    replica_gpus: float = 0.0  # GPUs each replica asks Ray for
    replica_resource: str | None = None  # a custom Ray resource each replica needs one unit of
    workers: int = 16  # threads answering RPCs (they mostly wait on replicas)
    metrics_port: int | None = None  # Prometheus metrics over HTTP on this port (0: any free one)
    grace_s: float = 10.0  # on stop/SIGTERM, in-flight calls get this long to finish

    @property
    def limits(self) -> Limits:
        same = {f.name: getattr(self, f.name) for f in fields(Limits) if hasattr(self, f.name)}
        return Limits(max_message_bytes=self.max_message_mb * 2**20, **same)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The one place where errors become status codes and messages."""
    if isinstance(exc, (wire_convert.OverLimitError, MemoryError)):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, PoolNotReady):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, str(exc)
    if isinstance(exc, ScaleUnsupported):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, ReplicasDied):
        return grpc.StatusCode.INTERNAL, str(exc)
    if isinstance(exc, DecodeError):
        return grpc.StatusCode.INVALID_ARGUMENT, f"request: not a valid {SERVICE} message ({exc})"
    if isinstance(exc, ValueError):  # CircuitInputError, WireError and the backends' own checks
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); the server log has the details"


class ScaleUnsupported(Exception):
    """Scale called on a server whose pool cannot scale (FAILED_PRECONDITION)."""


class QWorkerServicer:
    """Evaluate and Info. Requests arrive as bytes and are parsed here, inside the error mapping,
    so a malformed request is INVALID_ARGUMENT (grpc's own deserializer would say INTERNAL)."""

    def __init__(self, pool: InProcessPool, limits: Limits, metrics: ServiceMetrics):
        self.pool, self.limits, self.metrics = pool, limits, metrics

    def Evaluate(self, request: bytes, context: grpc.ServicerContext) -> pb.EvaluateResponse:
        labels = {"backend": "?", "gradient": "none", "circuits": 0}

        def work() -> pb.EvaluateResponse:
            ev = wire_convert.to_evaluation(pb.EvaluateRequest.FromString(request), self.limits)
            served = ev.backend in self.pool.names  # a label never takes a client's free text
            labels.update(backend=ev.backend if served else "?", gradient=ev.grad.method if ev.grad else "none")
            labels["circuits"] = ev.token_circuits
            left = context.time_remaining()  # answer before the client gives up, so it hears why
            timeout = None if left is None else max(0.0, left - ANSWER_MARGIN_S)
            return wire_convert.to_response(self.pool.evaluate(ev, timeout=timeout))

        return self._answer("Evaluate", context, work, labels)

    def Info(self, request: bytes, context: grpc.ServicerContext) -> pb.InfoResponse:
        def work() -> pb.InfoResponse:
            pb.InfoRequest.FromString(request)
            return pb.InfoResponse(
                server_version=_package_version(),
                proto_version=PROTO_VERSION,
                circuit_version=CIRCUIT_VERSION,
                backends=[
                    pb.BackendInfo(
                        name=name,
                        gradient_methods=c.methods,
                        hardware=c.hardware,
                        max_shots=c.max_shots,
                        max_batch=c.max_batch,
                        queue_latency_s=c.queue_latency_s,
                    )
                    for name, c in self.pool.backends().items()
                ],
                limits=pb.Limits(**asdict(self.limits)),
                replicas=self.pool.replicas,
                queue_depth=self.pool.queue_depth,
            )

        return self._answer("Info", context, work)

    def Scale(self, request: bytes, context: grpc.ServicerContext) -> pb.ScaleResponse:
        def work() -> pb.ScaleResponse:
            wanted = pb.ScaleRequest.FromString(request).replicas
            if not hasattr(self.pool, "scale"):
                raise ScaleUnsupported("this server evaluates in its own process; serve with --replicas N to scale")
            live, target = self.pool.scale(wanted)
            log.info("scaled to %d replicas (%d live)", target, live)
            return pb.ScaleResponse(replicas=live, target=target)

        return self._answer("Scale", context, work)

    def _answer(self, rpc: str, context: grpc.ServicerContext, work, labels: dict | None = None):
        """Run `work`, map its error to a status, record metrics either way."""
        m, start, code = self.metrics, time.perf_counter(), grpc.StatusCode.OK
        m.in_flight.inc()
        try:
            return work()
        except Exception as exc:
            code, message = status_for(exc)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s failed", rpc)
            context.abort(code, message[:MAX_STATUS_MESSAGE])
        finally:
            m.in_flight.dec()
            m.requests.labels(rpc, code.name).inc()
            m.latency.labels(rpc).observe(time.perf_counter() - start)
            if labels is not None:
                m.token_circuits.labels(labels["backend"], labels["gradient"], code.name).inc(labels["circuits"])


def _handlers(servicer: QWorkerServicer) -> grpc.GenericRpcHandler:
    """As the generated add_QWorkerServicer_to_server, but requests reach the servicer as bytes."""
    methods = {
        "Evaluate": grpc.unary_unary_rpc_method_handler(
            servicer.Evaluate, response_serializer=pb.EvaluateResponse.SerializeToString
        ),
        "Info": grpc.unary_unary_rpc_method_handler(
            servicer.Info, response_serializer=pb.InfoResponse.SerializeToString
        ),
        "Scale": grpc.unary_unary_rpc_method_handler(
            servicer.Scale, response_serializer=pb.ScaleResponse.SerializeToString
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


class QWorkerServer:
    """A built qworker server: the grpc.Server, its pool, health and metrics, started and
    stopped together."""

    def __init__(self, grpc_server: grpc.Server, pool: InProcessPool, health_servicer, metrics: ServiceMetrics):
        self.grpc_server, self.pool, self.health, self.metrics = grpc_server, pool, health_servicer, metrics
        self._started, self._start_error = threading.Event(), None

    def start(self) -> None:
        """Answer calls now (health NOT_SERVING); SERVING once the pool has started."""
        self.grpc_server.start()
        threading.Thread(target=self._bring_up_pool, name="qworker-pool-start", daemon=True).start()

    def wait_ready(self, timeout: float) -> None:
        """Block until the pool is live; re-raise its start error, or TimeoutError."""
        if not self._started.wait(timeout):
            raise TimeoutError(f"the qworker pool did not start within {timeout:g} s")
        if self._start_error is not None:
            raise RuntimeError(f"the qworker pool failed to start: {self._start_error}") from self._start_error

    def _bring_up_pool(self) -> None:
        try:
            self.pool.start()
        except Exception as e:
            log.exception("the qworker pool failed to start; health stays NOT_SERVING")
            self._start_error = e
            return
        finally:
            self._started.set()
        for name in ("", SERVICE):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("qworker pool ready: %s", ", ".join(self.pool.backends()))

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING at once, then let in-flight calls finish within `grace` seconds."""
        self.health.enter_graceful_shutdown()
        self.grpc_server.stop(grace).wait()
        self.pool.close()
        self.metrics.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)


def create_server(cfg: ServerConfig) -> tuple[QWorkerServer, int]:
    """Build the server and bind its port (not started); returns it and the bound port."""
    limit = cfg.limits.max_message_bytes
    metrics = ServiceMetrics(cfg.metrics_port, cfg.host)
    interceptors = []
    if cfg.token:
        reject = lambda method: metrics.requests.labels(method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()  # noqa: E731
        interceptors.append(TokenAuthInterceptor(cfg.token, reject))
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=cfg.workers, thread_name_prefix="qworker-rpc"),
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
        ],
    )
    if cfg.replicas is None:
        pool = InProcessPool(cfg.simulators)
    else:
        from qworker.ray_pool import RayPool  # lazily: Ray is a heavy import the in-process pool does not need

        pool = RayPool(
            cfg.simulators, cfg.replicas, cfg.ray_address, cfg.replica_cpus, cfg.replica_gpus, cfg.replica_resource
        )
    metrics.watch(pool)
    server.add_generic_rpc_handlers((_handlers(QWorkerServicer(pool, cfg.limits, metrics)),))
    health_servicer = health.HealthServicer()
    for name in ("", SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        port = _bind(server, cfg)
    except Exception:
        metrics.close()
        raise
    return QWorkerServer(server, pool, health_servicer, metrics), port


def _bind(server: grpc.Server, cfg: ServerConfig) -> int:
    address = f"{cfg.host}:{cfg.port}"
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ValueError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    try:
        if cfg.tls_cert:
            return server.add_secure_port(address, grpc.ssl_server_credentials([(cfg.tls_key, cfg.tls_cert)]))
        return server.add_insecure_port(address)
    except RuntimeError as e:  # grpc: "Failed to bind to address ..."
        raise OSError(f"cannot listen on {address} (in use? change --port or --host): {e}") from None


def serve(cfg: ServerConfig) -> None:
    """Run a server until SIGTERM or Ctrl-C, then shut down gracefully."""
    server, port = create_server(cfg)
    if not cfg.token and cfg.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who can reach it may use it (--token-file)", cfg.host)
    server.start()
    tls = " (TLS)" if cfg.tls_cert else ""
    print(f"qworker listening on grpc://{cfg.host}:{port}{tls}", flush=True)
    if server.metrics.port is not None:
        print(f"metrics on http://{cfg.host}:{server.metrics.port}/metrics", flush=True)
    stopping = threading.Event()

    def on_signal(signum, _frame):
        log.info("signal %d: stopping (grace %.0f s)", signum, cfg.grace_s)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    while not stopping.wait(0.5):
        pass
    server.stop(cfg.grace_s)


def _package_version() -> str:
    try:
        return version("hyqut")
    except PackageNotFoundError:
        return "unknown"
