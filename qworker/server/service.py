"""The qworker gRPC service: `hyqut.qworker.v1.QWorker` over a pool (docs/design.md, "The service").

    server, port = create_server(ServerConfig(port=0))     # built, bound, not started
    server.start()                                         # health turns SERVING once the pool is live
    ...
    server.stop(grace=5)

or `python -m qworker serve --port 50051` (`serve`). The server is a `grpc.aio` server on an event
loop of its own (a thread): evaluations wait on the pool without holding a thread, so health,
reflection, Info and Scale answer at once whatever the load. The servicer routes: it parses a
request, checks it from its headers and shapes (`check_request`), hands its bytes to the pool and
returns the bytes the replica encoded. Every error becomes a status code in
`qworker.protocol.errors.status_for`. A client that cancels, or whose deadline passes, stops its
evaluation on the replica.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import signal
import socket
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from importlib.metadata import PackageNotFoundError, version

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from qworker.circuit import VERSION as CIRCUIT_VERSION
from qworker.protocol.convert import check_request
from qworker.protocol.errors import status_for
from qworker.protocol.limits import REPLICA_WORK_RATE, Limits
from qworker.protocol.metadata import REQUEST_ID, RETRY_AFTER
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.server.admission import Admission, Refused
from qworker.server.auth import TokenAuthInterceptor
from qworker.server.autoscale import Autoscaler, Policy
from qworker.server.faults import Faults, kill
from qworker.server.in_process import InProcessPool
from qworker.server.metrics import ServiceMetrics
from qworker.server.pool import Pool
from qworker.server.replica import SIMULATORS, malloc_trim

log = logging.getLogger("qworker.service")

SERVICE = pb.DESCRIPTOR.services_by_name["QWorker"].full_name  # hyqut.qworker.v1.QWorker
PROTO_VERSION = 1
MAX_STATUS_MESSAGE = 1000  # characters: status messages travel in trailers
ANSWER_MARGIN_S = 0.2  # a request stops waiting for a replica this long before its deadline
PARSE_INLINE_BYTES = 1 << 20  # larger requests are parsed on a thread, off the event loop
TRIM_EVERY_S = 1.0
TRIMS_AFTER_BURST = 3  # quiet looks that trim after a burst (buffers are freed late); the first also collects
HEALTH_EVERY_S = 0.5  # a frontend's health follows its node's live replicas this often
WILDCARDS = ("0.0.0.0", "::", "")


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
    max_request_seconds: float = Limits.max_request_seconds  # of one replica's time: the work limit
    default_deadline_s: float = Limits.default_deadline_s  # for requests whose client set no deadline
    max_deadline_s: float = Limits.max_deadline_s  # a client's longer deadline is cut to this
    max_inflight: int | None = None  # requests evaluating at once; None: 2 per live replica (in-process: workers)
    max_queue: int | None = None  # admitted requests waiting for a slot; None: 4 x max_inflight
    max_replicas: int | None = None  # Scale's bound; None: autoscale's MAX, else what the Ray cluster can place now
    autoscale: Policy | None = None  # Ray pool: replicas follow the measured load (server/autoscale.py)
    simulators: tuple[str, ...] = SIMULATORS
    replicas: int | None = None  # Ray pool of this many replicas; None: evaluate in the server's process
    ray_address: str | None = None  # the Ray cluster (None: $RAY_ADDRESS, else start a local Ray)
    replica_cpus: float = 1.0  # CPUs each replica asks Ray for (its torch threads)
    replica_gpus: float = 0.0  # GPUs each replica asks Ray for
    replica_resource: str | None = None  # a custom Ray resource each replica needs one unit of
    workers: int = 4  # in-process pool: evaluations running at once
    inline_work: int = 2**15  # Ray pool: requests of at most this many amplitude-circuits (token-circuits
    # x 2^n_qubits; 32 one-token circuits of 10 qubits) run in the server: a hop to a replica costs more
    max_resident_mb: int = Limits.max_resident_bytes // 2**20  # kept Jacobians a replica holds (keep_jacobians)
    resident_ttl_s: float = Limits.resident_ttl_s  # unused kept Jacobians expire after this
    metrics_port: int | None = None  # Prometheus metrics over HTTP on this port (0: any free one)
    grace_s: float = 10.0  # on stop/SIGTERM, in-flight calls get this long to finish
    advertise: str | None = None  # HOST[:PORT] clients reach this server at (the bound port when none);
    # None: --host, or this machine's address when --host is a wildcard. Answers with a handle name it.
    node: str | None = None  # Ray node id: replicas on this node only, health SERVING while one is live
    # (a per-node frontend, server/frontends.py)

    @property
    def limits(self) -> Limits:
        """The request limits (the admission bounds, which follow the pool, are the servicer's)."""
        same = {f.name: getattr(self, f.name) for f in fields(Limits) if hasattr(self, f.name)}
        same = {k: v for k, v in same.items() if v is not None}
        work = int(self.max_request_seconds * REPLICA_WORK_RATE)
        return Limits(
            max_message_bytes=self.max_message_mb * 2**20,
            max_work_per_request=work,
            max_resident_bytes=self.max_resident_mb * 2**20,
            **same,
        )


class QWorkerServicer:
    """Evaluate, Info and Scale. Requests arrive as bytes and are parsed here, inside the error
    mapping, so a malformed request is INVALID_ARGUMENT (grpc's own deserializer would say
    INTERNAL); Evaluate answers with the replica's bytes."""

    def __init__(self, pool: Pool, cfg: ServerConfig, metrics: ServiceMetrics, faults: Faults):
        self.pool, self.cfg, self.limits, self.metrics, self.faults = pool, cfg, cfg.limits, metrics, faults
        self.frontend = ""  # host:port clients reach this server at (set once bound)
        self.frontends: list[str] = []  # every frontend of the cluster (set by server/frontends.py)
        self._frontend_field = b""  # EvaluateResponse.frontend, encoded: appended to a keep answer
        queue = lambda: cfg.max_queue if cfg.max_queue is not None else 4 * self._max_inflight()  # noqa: E731
        self.admission = Admission(self._max_inflight, queue)
        metrics.queue_depth.set_function(lambda: self.admission.depth)

    def _max_inflight(self) -> int:
        if self.cfg.max_inflight:
            return self.cfg.max_inflight
        return self.pool.default_inflight()

    async def Evaluate(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        labels = {"backend": "?", "gradient": "none", "circuits": 0}

        async def work() -> bytes:
            self.admission.check()  # a full server refuses before it parses anything
            req = await _parse(pb.EvaluateRequest, request)
            header = check_request(req, self.limits)
            served = header.backend in self.pool.names  # a label never takes a client's free text
            labels.update(
                backend=header.backend if served else "?", gradient=header.grad.method if header.grad else "none"
            )
            labels["circuits"] = header.token_circuits
            if header.handle and self.faults.due("exit-on-handle"):  # a test's fault (server/faults.py)
                log.warning("fault exit-on-handle: this frontend's process exits now")
                kill(os.getpid())
            async with self.admission.slot():
                data = await self.pool.evaluate(request, header, self._timeout(context), req)
            # a keep answer names where its handle lives: protobuf merges concatenated messages, so
            # the field is appended to the replica's bytes without decoding them
            return data + self._frontend_field if header.keep_jacobians else data

        return await self._answer("Evaluate", context, work, labels)

    def reached_at(self, address: str) -> None:
        """Clients reach this server at `address` (host:port): Info and keep answers say so."""
        self.frontend = address
        self._frontend_field = pb.EvaluateResponse(frontend=address).SerializeToString()

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        """Seconds the evaluation may take: the client's deadline (or the server's default, when the
        client set none), at most the server's maximum, less a margin to answer in."""
        left = context.time_remaining()
        left = self.cfg.default_deadline_s if left is None else left
        return max(0.0, min(left, self.cfg.max_deadline_s) - ANSWER_MARGIN_S)

    async def Info(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.InfoResponse:
        async def work() -> pb.InfoResponse:
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
                        seeded=c.seeded,
                        options=c.options,
                    )
                    for name, c in self.pool.backends().items()
                ],
                limits=pb.Limits(
                    **asdict(
                        replace(
                            self.limits,
                            max_inflight=self._max_inflight(),
                            max_queue=self.admission.queue(),
                            max_replicas=self.pool.max_replicas,
                        )
                    )
                ),
                replicas=self.pool.replicas,
                queue_depth=self.admission.depth,
                frontend=self.frontend,
                frontends=self.frontends or [self.frontend],
                **self.pool.pending(),
            )

        return await self._answer("Info", context, work)

    async def Scale(self, request: bytes, context: grpc.aio.ServicerContext) -> pb.ScaleResponse:
        async def work() -> pb.ScaleResponse:
            wanted = pb.ScaleRequest.FromString(request).replicas
            live, target = self.pool.scale(wanted)
            log.info("scaled to %d replicas (%d live)", target, live)
            return pb.ScaleResponse(replicas=live, target=target)

        return await self._answer("Scale", context, work)

    async def _answer(self, rpc: str, context: grpc.aio.ServicerContext, work, labels: dict | None = None):
        """Run `work`, map its error to a status, record metrics either way."""
        m, start, code = self.metrics, time.perf_counter(), grpc.StatusCode.OK
        m.in_flight.inc()
        try:
            return await work()
        except asyncio.CancelledError:  # the client cancelled or went away: nobody to answer
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code, message = status_for(exc)
            request_id = _request_id(context)
            if code == grpc.StatusCode.INTERNAL:
                log.exception("%s %s failed (%s)", rpc, request_id, labels or "")
            if isinstance(exc, Refused):
                context.set_trailing_metadata(((RETRY_AFTER, str(round(1000 * exc.retry_after_s))),))
            suffix = f" [request {request_id}]" if request_id else ""
            await context.abort(code, message[: MAX_STATUS_MESSAGE - len(suffix)] + suffix)
        finally:
            m.in_flight.dec()
            m.requests.labels(rpc, code.name).inc()
            m.latency.labels(rpc).observe(time.perf_counter() - start)
            if labels is not None:
                m.token_circuits.labels(labels["backend"], labels["gradient"], code.name).inc(labels["circuits"])


def _request_id(context: grpc.aio.ServicerContext) -> str:
    """The id the client chose for this call (metadata `x-request-id`), for logs and messages."""
    given = dict(context.invocation_metadata() or ()).get(REQUEST_ID, "")
    return str(given)[:64]


async def _parse(message_type, data: bytes):
    if len(data) <= PARSE_INLINE_BYTES:
        return message_type.FromString(data)
    return await asyncio.to_thread(message_type.FromString, data)


def _handlers(servicer: QWorkerServicer) -> grpc.GenericRpcHandler:
    """As the generated add_QWorkerServicer_to_server, but requests reach the servicer as bytes and
    Evaluate's answer leaves as the bytes the replica encoded."""
    methods = {
        "Evaluate": grpc.unary_unary_rpc_method_handler(servicer.Evaluate),
        "Info": grpc.unary_unary_rpc_method_handler(
            servicer.Info, response_serializer=pb.InfoResponse.SerializeToString
        ),
        "Scale": grpc.unary_unary_rpc_method_handler(
            servicer.Scale, response_serializer=pb.ScaleResponse.SerializeToString
        ),
    }
    return grpc.method_handlers_generic_handler(SERVICE, methods)


class _Loop:
    """An event loop running on a thread of its own; coroutines are run on it from any thread."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="qworker-server", daemon=True)
        self.thread.start()

    def run(self, coro, timeout: float | None = None):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class QWorkerServer:
    """A built qworker server: the grpc.aio server on its loop, its pool, health and metrics,
    started and stopped together from any thread."""

    def __init__(
        self,
        runner: _Loop,
        grpc_server: grpc.aio.Server,
        servicer: QWorkerServicer,
        health_servicer,
        metrics: ServiceMetrics,
        autoscaler: Autoscaler | None = None,
    ):
        self._loop, self.grpc_server, self.servicer, self.pool = runner, grpc_server, servicer, servicer.pool
        self.health, self.metrics, self.autoscaler = health_servicer, metrics, autoscaler
        self.faults = servicer.faults
        self._started, self._start_error = threading.Event(), None
        self._tasks: list[asyncio.Future] = []
        self._stopped = False

    @property
    def address(self) -> str:
        """host:port clients reach this server at (what keep answers and Info name)."""
        return self.servicer.frontend

    def start(self) -> None:
        """Answer calls now (health NOT_SERVING); SERVING once the pool has started."""
        self._loop.run(self.grpc_server.start())
        asyncio.run_coroutine_threadsafe(self._bring_up_pool(), self._loop.loop)

    def wait_ready(self, timeout: float) -> None:
        """Block until the pool is live; re-raise its start error, or TimeoutError."""
        if not self._started.wait(timeout):
            raise TimeoutError(f"the qworker pool did not start within {timeout:g} s")
        if self._start_error is not None:
            raise RuntimeError(f"the qworker pool failed to start: {self._start_error}") from self._start_error

    def call(self, fn, *args):
        """fn(*args) on the server's loop, from any thread (the pool lives there): e.g.
        `server.call(server.pool.scale, 3)`; a coroutine function's result is awaited."""

        async def on_loop():
            result = fn(*args)
            return await result if asyncio.iscoroutine(result) else result

        return self._loop.run(on_loop())

    async def _bring_up_pool(self) -> None:
        try:
            await self.pool.start()
        except Exception as e:
            log.exception("the qworker pool failed to start; health stays NOT_SERVING")
            self._start_error = e
            return
        finally:
            self._started.set()
        gc.collect()
        gc.freeze()  # what the started server holds (modules, Ray, gRPC, backends) is never garbage: a
        # collection looks at what calls allocated since, not at its ~200k objects (60-90 ms a look)
        await self._set_health(True)
        log.info("qworker pool ready: %s", ", ".join(self.pool.backends()))
        self._tasks.append(asyncio.ensure_future(self._trim_when_idle()))
        if self.servicer.cfg.node is not None:
            self._tasks.append(asyncio.ensure_future(self._health_follows_replicas()))
        if self.autoscaler is not None:
            self._tasks.append(asyncio.ensure_future(self.autoscaler.run()))

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def _health_follows_replicas(self) -> None:
        """A per-node frontend is SERVING while its node has a live replica: clients that spread
        their calls over the frontends (round_robin with health checks) pass over one whose
        replicas are all restarting instead of waiting on it. A handle's call still reaches it."""
        serving = True
        while True:
            await asyncio.sleep(HEALTH_EVERY_S)
            if (self.pool.replicas > 0) != serving:
                serving = not serving
                log.warning("%s: %s", "a replica is live again" if serving else "no live replica", self.address)
                await self._set_health(serving)

    async def _trim_when_idle(self) -> None:
        """Give memory back to the system after a burst: gRPC holds a request's bytes in many small
        buffers, which the allocator keeps once freed, and refused calls leave reference cycles
        that a quiet server, allocating nothing, would never collect. At the first quiet look after
        a burst: collect; at each of the first few: trim (buffers are freed late)."""
        seen, trims = None, 0
        while True:
            await asyncio.sleep(TRIM_EVERY_S)
            now = self.metrics.requests_seen()
            if self.metrics.serving_now() > 0 or now != seen:
                trims = TRIMS_AFTER_BURST
            elif trims:
                if trims == TRIMS_AFTER_BURST:
                    gc.collect()
                trims -= 1
                await asyncio.to_thread(malloc_trim)
            seen = now

    def stop(self, grace: float | None = None) -> None:
        """Health NOT_SERVING at once, then let in-flight calls finish within `grace` seconds (once:
        a stopped server stays stopped)."""
        if self._stopped:
            return
        self._stopped = True

        async def stop():
            await self.health.enter_graceful_shutdown()
            await self.grpc_server.stop(grace)
            for task in self._tasks:
                task.cancel()
            self.pool.close()

        try:
            self._loop.run(stop())
        finally:
            self.metrics.close()
            self._loop.close()


def mmap_large_blocks() -> None:
    """Make glibc serve every block of 1 MiB or more by mmap, so a request's bytes go back to the
    system as soon as they are freed (glibc's own threshold rises after large frees, and the heap
    then keeps them). Only where nothing heavy is computed: a tensor op that allocates its
    megabytes afresh every time runs ~3x slower so (measured on the local simulator)."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except OSError:  # not glibc
        pass


def create_server(cfg: ServerConfig) -> tuple[QWorkerServer, int]:
    """Build the server and bind its port (not started); returns it and the bound port. The pool
    is built here, in the caller's thread (a local Ray dies with the thread that starts it)."""
    if bool(cfg.tls_cert) != bool(cfg.tls_key):
        raise ValueError("TLS needs both a certificate and its key (--tls-cert and --tls-key)")
    if cfg.autoscale is not None and cfg.replicas is None:
        raise ValueError("--autoscale sets the replicas of a Ray pool: serve with --replicas N, not --in-process")
    if cfg.autoscale is not None and cfg.max_replicas is not None and cfg.autoscale.high > cfg.max_replicas:
        raise ValueError(f"--autoscale MAX {cfg.autoscale.high} is above --max-replicas {cfg.max_replicas}")
    if cfg.node is not None and cfg.replicas is None:
        raise ValueError("a server pinned to a Ray node (a per-node frontend) needs a Ray pool: --replicas N")
    resident, faults = (cfg.max_resident_mb * 2**20, cfg.resident_ttl_s), Faults()
    if cfg.replicas is None:
        pool = InProcessPool(cfg.simulators, cfg.workers, resident)
    else:
        mmap_large_blocks()  # the replicas compute; this process only holds request and answer bytes
        from qworker.server.ray_pool import RayPool  # here: Ray is a heavy import the in-process pool does not need

        pool = RayPool(
            cfg.simulators,
            cfg.replicas,
            cfg.ray_address,
            cfg.replica_cpus,
            cfg.replica_gpus,
            cfg.replica_resource,
            cfg.inline_work,
            cfg.max_replicas if cfg.max_replicas is not None or cfg.autoscale is None else cfg.autoscale.high,
            resident,
            cfg.node,
            faults,
        )
    metrics = ServiceMetrics(cfg.metrics_port, cfg.host)
    metrics.watch(pool)
    runner = _Loop()
    try:
        grpc_server, health_servicer, port, servicer = runner.run(_build(cfg, pool, metrics, faults))
    except BaseException:
        metrics.close()
        runner.close()
        raise
    servicer.reached_at(advertised(cfg, port))
    autoscaler = None
    if cfg.autoscale is not None:
        autoscaler = Autoscaler(pool, cfg.autoscale, lambda: servicer.admission.waiting + pool.waiting, metrics)
    return QWorkerServer(runner, grpc_server, servicer, health_servicer, metrics, autoscaler), port


def advertised(cfg: ServerConfig, port: int) -> str:
    """host:port clients reach a server bound to `port` at: --advertise (with the bound port when it
    names none), else --host, else (a wildcard host) this machine's address."""
    given = cfg.advertise or cfg.host
    host, colon, tail = given.rpartition(":")
    if colon and tail.isdigit() and (given.count(":") == 1 or host.endswith("]")):
        return given  # HOST:PORT
    host = machine_address() if given in WILDCARDS else given
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


def machine_address() -> str:
    """This machine's address on its default route (no packet is sent), or its name's."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return socket.gethostbyname(socket.gethostname())


async def _build(cfg: ServerConfig, pool, metrics: ServiceMetrics, faults: Faults):
    limit = cfg.limits.max_message_bytes
    interceptors = []
    if cfg.token:
        reject = lambda method: metrics.requests.labels(method.rsplit("/", 1)[-1], "UNAUTHENTICATED").inc()  # noqa: E731
        interceptors.append(TokenAuthInterceptor(cfg.token, reject))
    server = grpc.aio.server(
        interceptors=interceptors,
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            ("grpc.so_reuseport", 0),  # a second server on a taken port fails instead of sharing it
        ],
    )
    servicer = QWorkerServicer(pool, cfg, metrics, faults)
    server.add_generic_rpc_handlers((_handlers(servicer),))
    health_servicer = health.aio.HealthServicer()
    for name in ("", SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    address = f"{cfg.host}:{cfg.port}"
    try:
        if cfg.tls_cert:
            port = server.add_secure_port(address, grpc.ssl_server_credentials([(cfg.tls_key, cfg.tls_cert)]))
        else:
            port = server.add_insecure_port(address)
    except RuntimeError as e:  # grpc: "Failed to bind to address ..."
        raise OSError(f"cannot listen on {address} (in use? change --port or --host): {e}") from None
    return server, health_servicer, port, servicer


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
