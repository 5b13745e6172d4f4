"""Replicas that follow the load (`python -m qworker serve --autoscale MIN:MAX`).

Every `period_s` the autoscaler reads how busy the pool's replicas were since the last look (the
seconds each spent evaluating, measured in the replica, over the wall time of the live replicas)
and whether requests wait (for an admission slot, or for a live replica). It aims the busy fraction at `target`:

    busy > target + band, or requests waiting  ->  ceil(R * busy / target) replicas, at least R + 1
    busy < target - band                        ->  ceil(R * busy / target) replicas, at most R - 1

within [MIN, MAX], never while replicas it asked for are still starting (on an autoscaling Ray
cluster their nodes may be coming), and at most once per `cooldown_s`. Between the two
thresholds nothing changes: the band is the hysteresis that keeps it from flapping.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass

log = logging.getLogger("qworker.autoscale")


@dataclass(frozen=True)
class Policy:
    low: int  # MIN replicas
    high: int  # MAX replicas
    target: float = 0.7  # busy fraction aimed at
    band: float = 0.2  # no change while the busy fraction is within target +- band
    period_s: float = 5.0  # how often the load is measured
    cooldown_s: float = 30.0  # least time between two changes

    @classmethod
    def parse(cls, text: str, **settings) -> Policy:
        """`MIN:MAX` (e.g. `1:8`)."""
        try:
            low, high = (int(x) for x in text.split(":"))
        except ValueError:
            raise ValueError(f"--autoscale takes MIN:MAX replicas (e.g. 1:8), got {text!r}") from None
        return cls(low, high, **settings)

    def __post_init__(self):
        if not 0 <= self.low <= self.high or self.high < 1:
            raise ValueError(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1, got {self.low}:{self.high}")
        if not 0 < self.target - self.band < self.target + self.band <= 1:
            raise ValueError(f"target {self.target} +- band {self.band} must lie within (0, 1]")
        if self.period_s <= 0 or self.cooldown_s < 0:
            raise ValueError(f"period_s must be > 0 and cooldown_s >= 0 (got {self.period_s}, {self.cooldown_s})")

    def decide(self, replicas: int, busy: float, waiting: int) -> int:
        """The replica count for `replicas` live ones that were `busy` (fraction) with `waiting`
        requests queued."""
        want = replicas
        if busy > self.target + self.band or waiting > 0:
            want = max(replicas + 1, math.ceil(replicas * busy / self.target))
        elif busy < self.target - self.band:
            want = min(replicas - 1, math.ceil(replicas * busy / self.target))
        return min(self.high, max(self.low, want))


class Autoscaler:
    """Runs `policy` on `pool` (a RayPool) from the server's event loop; `waiting()` gives the
    requests queued for a slot or a replica. Its state is exported through `metrics` (ServiceMetrics)."""

    def __init__(self, pool, policy: Policy, waiting, metrics):
        self.pool, self.policy, self.waiting, self.metrics = pool, policy, waiting, metrics
        self.busy = 0.0  # the last measured busy fraction
        self._last_change = -math.inf
        metrics.busy_fraction.set_function(lambda: self.busy)
        metrics.replicas_target.set_function(lambda: self.pool.target)

    async def run(self) -> None:
        seen, then = self.pool.busy_s, time.monotonic()
        if self.pool.target < self.policy.low or self.pool.target > self.policy.high:
            self._apply(min(self.policy.high, max(self.policy.low, self.pool.target)), "bounds")
        while True:
            await asyncio.sleep(self.policy.period_s)
            busy_s, now = self.pool.busy_s, time.monotonic()
            live = self.pool.replicas
            self.busy = min(1.0, (busy_s - seen) / ((now - then) * live)) if live else 0.0
            seen, then = busy_s, now
            if self.pool.starting or now - self._last_change < self.policy.cooldown_s:
                continue
            want = self.policy.decide(live, self.busy, self.waiting())
            if want != self.pool.target:
                self._apply(want, f"busy {self.busy:.0%}, {self.waiting()} waiting")

    def _apply(self, replicas: int, why: str) -> None:
        direction = "up" if replicas > self.pool.target else "down"
        log.info("autoscale %s: %d -> %d replicas (%s)", direction, self.pool.target, replicas, why)
        self.pool.scale(replicas)
        self.metrics.autoscale_changes.labels(direction).inc()
        self._last_change = time.monotonic()
