"""Prometheus metrics of a qworker server, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


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
            "hyqut_qworker_queue_depth", "Requests admitted: evaluating, or waiting for a slot", registry=r
        )
        self.busy_fraction = Gauge(
            "hyqut_qworker_busy_fraction",
            "Share of the live replicas' time spent evaluating, over the autoscaler's last period",
            registry=r,
        )
        self.replicas_target = Gauge("hyqut_qworker_replicas_target", "Replicas the pool aims for", registry=r)
        self.autoscale_changes = Counter(
            "hyqut_qworker_autoscale_changes", "Replica count changes made by --autoscale", ["direction"], registry=r
        )
        self.http_server = self.port = None
        if port is not None:
            self.http_server, _ = start_http_server(port, addr=host, registry=r)
            self.port = self.http_server.server_port

    def requests_seen(self) -> float:
        """RPCs answered so far, all methods and codes together."""
        return sum(s.value for m in self.requests.collect() for s in m.samples if s.name.endswith("_total"))

    def serving_now(self) -> float:
        """RPCs being served now."""
        return self.in_flight.collect()[0].samples[0].value

    def watch(self, pool) -> None:
        """Read the pool's live replicas, queue depth, per-replica figures and hardware usage at every scrape."""
        self.replicas.set_function(lambda: pool.replicas)
        self.registry.register(_ReplicaCollector(pool))
        self.registry.register(_UsageCollector(pool))

    def close(self) -> None:
        if self.http_server is not None:
            self.http_server.shutdown()
            self.http_server.server_close()


class _ReplicaCollector:
    """One series per replica (labels: replica, node), read from the pool at scrape time; a
    replica that was removed keeps its totals, with up 0."""

    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        labels = ["replica", "node"]
        up = GaugeMetricFamily("hyqut_qworker_replica_up", "1 while the replica takes requests", labels=labels)
        in_flight = GaugeMetricFamily("hyqut_qworker_replica_in_flight", "Requests on the replica now", labels=labels)
        done = CounterMetricFamily("hyqut_qworker_replica_evaluations", "Results the replica returned", labels=labels)
        busy = CounterMetricFamily(
            "hyqut_qworker_replica_busy_seconds", "Seconds the replica spent on them (measured there)", labels=labels
        )
        deaths = CounterMetricFamily("hyqut_qworker_replica_deaths", "Deaths seen mid-request", labels=labels)
        for r in self.pool.replica_stats():
            key = [r.name, r.node]
            up.add_metric(key, float(r.live))
            in_flight.add_metric(key, r.in_flight)
            done.add_metric(key, r.evaluations)
            busy.add_metric(key, r.busy_s)
            deaths.add_metric(key, r.deaths)
        yield from (up, in_flight, done, busy, deaths)


class _UsageCollector:
    """Jobs, circuits and shots spent on hardware-like backends (shots, qiskit, braket, pennylane),
    by backend, read from the pool at scrape time (measured by the backends in the replicas)."""

    def __init__(self, pool):
        self.pool = pool

    def collect(self):
        families = {
            kind: CounterMetricFamily(
                f"hyqut_qworker_hardware_{kind}", f"Hardware {kind} spent, by backend", labels=["backend"]
            )
            for kind in ("jobs", "circuits", "shots")
        }
        for backend, usage in sorted(self.pool.hardware_usage().items()):
            for kind, family in families.items():
                family.add_metric([backend], getattr(usage, kind))
        yield from families.values()
