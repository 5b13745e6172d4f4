"""Prometheus metrics of a training run, served by rank 0 with --metrics-port."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class TrainMetrics:
    def __init__(self, port: int, host: str = "127.0.0.1"):
        self.registry = CollectorRegistry()
        r = self.registry
        self.step = Gauge("hyqut_train_step", "Optimizer steps completed", registry=r)
        self.loss = Gauge("hyqut_train_loss", "Training loss of the last step (mean over ranks)", registry=r)
        self.val_loss = None  # registered at the first evaluation: absent, not 0, until measured
        self.tokens_per_s = Gauge("hyqut_tokens_per_second", "Training tokens per second (all ranks)", registry=r)
        self.quantum_share = Gauge("hyqut_quantum_share", "Share of step time spent in circuit evaluation", registry=r)
        self.tokens = Counter("hyqut_tokens", "Training tokens processed (all ranks)", registry=r)
        self.step_seconds = Histogram("hyqut_step_seconds", "Wall time of an optimizer step", registry=r)
        self.quantum_seconds = Histogram(
            "hyqut_quantum_wait_seconds", "Time per step waiting for quantum results (forward and backward)", registry=r
        )
        self.hardware = {
            kind: Counter(
                f"hyqut_hardware_{kind}", f"Hardware {kind} spent by the run's circuits", ["backend"], registry=r
            )
            for kind in ("jobs", "circuits", "shots")
        }
        self.server, self.thread = start_http_server(port, addr=host, registry=r)

    def record_step(self, step: int, loss: float, seconds: float, quantum_seconds: float, tokens: int) -> None:
        self.step.set(step)
        self.loss.set(loss)
        self.tokens.inc(tokens)
        self.tokens_per_s.set(tokens / seconds)
        self.quantum_share.set(quantum_seconds / seconds)
        self.step_seconds.observe(seconds)
        self.quantum_seconds.observe(quantum_seconds)

    def record_usage(self, backend: str, usage) -> None:
        """A step's jobs, circuits and shots (a qworker Usage) on `backend`."""
        for kind, counter in self.hardware.items():
            counter.labels(backend).inc(getattr(usage, kind))

    def record_eval(self, val_loss: float) -> None:
        if self.val_loss is None:
            self.val_loss = Gauge("hyqut_val_loss", "Validation loss of the last evaluation", registry=self.registry)
        self.val_loss.set(val_loss)

    def close(self) -> None:
        self.server.shutdown()
