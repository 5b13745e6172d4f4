"""Prometheus metrics of a qworker server (DESIGN.md §7), in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class ServiceMetrics:
    """Requests and token-circuits by outcome, latency and in-flight calls; served over HTTP
    on `port` when one is given (0 picks a free port: see `.port`)."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1"):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "hyqut_qworker_requests", "RPCs answered, by method and status code", ["rpc", "code"], registry=r
        )
        self.token_circuits = Counter(
            "hyqut_qworker_token_circuits",
            "One-token circuit evaluations requested, by backend, gradient method and status code",
            ["backend", "gradient", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "hyqut_qworker_request_seconds",
            "Wall time of an RPC in the servicer, by method",
            ["rpc"],
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=r,
        )
        self.in_flight = Gauge("hyqut_qworker_in_flight", "RPCs being served now", registry=r)
        self.replicas = Gauge("hyqut_qworker_replicas", "Live replicas of the pool", registry=r)
        self.queue_depth = Gauge(
            "hyqut_qworker_queue_depth", "Evaluations waiting for a replica or running on one", registry=r
        )
        self.http_server = self.port = None
        if port is not None:
            self.http_server, _ = start_http_server(port, addr=host, registry=r)
            self.port = self.http_server.server_port

    def watch(self, pool) -> None:
        """Read the pool's live replicas and queue depth at every scrape."""
        self.replicas.set_function(lambda: pool.replicas)
        self.queue_depth.set_function(lambda: pool.queue_depth)

    def close(self) -> None:
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()
