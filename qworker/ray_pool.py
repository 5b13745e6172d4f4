"""The Ray pool (DESIGN.md §5): N replica actors, each a process holding the simulators, behind
the same methods as the in-process pool, so the service does not know which one it talks to.

    pool = RayPool(replicas=2, address=None)        # None: connect to $RAY_ADDRESS or start a local Ray
    pool.start()                                    # returns once every replica has warmed up
    result = pool.evaluate(ev, timeout=30)          # on the least-busy live replica
    pool.scale(4)                                   # while requests keep flowing
    pool.close()

What Ray gives and we use: actors (a replica is a process; Ray schedules it on a node with the
CPUs, GPUs and custom resource it asks for), restarts (`max_restarts=-1`: a replica that dies is
restarted by Ray), `ray.cancel` (a queued request past its deadline never runs), and the object
store for the tensors. What is ours: picking the least-busy live replica, retrying a request
whose replica died on another one (an evaluation is a pure function of its request, so the retry
returns exactly what the lost call would have), and draining a replica before removing it.
A running evaluation stops at its deadline (`qworker.deadline`), freeing the replica.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, replace

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError, TaskCancelledError

from qworker.backends import Capabilities
from qworker.evaluation import Evaluation, Result
from qworker.pool import SIMULATORS, InProcessPool, PoolNotReady, ReplicasDied, ReplicaStats

log = logging.getLogger("qworker.ray_pool")

WARMUP_TIMEOUT_S = 180.0  # a replica that has not warmed up by then is replaced
MAX_ATTEMPTS = 3  # replicas a request may see die before it fails


class Replica:
    """One replica process: an in-process pool of simulators, its torch threads set to its CPUs.
    On a GPU node the `local` simulator runs on the GPU (the request's tensors move there)."""

    def __init__(self, names: tuple[str, ...], threads: int):
        import torch

        torch.set_num_threads(max(1, threads))
        self.device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.pool = InProcessPool(names)
        self.pool.start()

    def evaluate(self, ev: Evaluation, until: float | None) -> Result:
        """Stopped once the wall clock passes `until` (the caller's deadline: nodes keep their
        clocks in sync)."""
        timeout = None if until is None else until - time.time()
        if self.device == "cpu" or ev.backend != "local":
            return self.pool.evaluate(ev, timeout)
        return _to_cpu(self.pool.evaluate(_to_device(ev, self.device), timeout))

    def pid(self) -> int:
        return os.getpid()

    def node(self) -> str:
        return ray.util.get_node_ip_address()


@dataclass(eq=False)
class _Member:
    """A replica as the pool sees it."""

    actor: ray.actor.ActorHandle
    name: str
    state: str = "warming"  # warming -> live <-> failed; draining -> gone
    in_flight: int = 0
    served: int = 0  # requests sent to it
    node: str = ""  # IP of its Ray node, once warm
    evaluations: int = 0  # results it returned
    busy_s: float = 0.0  # seconds it spent on them, measured in the replica
    deaths: int = 0


class RayPool:
    """`replicas` Replica actors on the Ray cluster at `address` (None: $RAY_ADDRESS, or a new
    local Ray). Each replica asks Ray for `cpus` CPUs (its torch threads), `gpus` GPUs and, when
    `resource` is set, one unit of that custom resource (so it lands only on simulator nodes).
    A request waits up to its timeout for a live replica, then fails UNAVAILABLE (PoolNotReady)."""

    def __init__(
        self,
        names: tuple[str, ...] = SIMULATORS,
        replicas: int = 1,
        address: str | None = None,
        cpus: float = 1.0,
        gpus: float = 0.0,
        resource: str | None = None,
    ):
        self._names_pool = InProcessPool(names)  # validates the names here, in the server's process
        if replicas < 0 or cpus < 0 or gpus < 0:
            raise ValueError(f"replicas, cpus and gpus must be >= 0 (got {replicas}, {cpus}, {gpus})")
        self.names, self.target = tuple(names), replicas
        if not ray.is_initialized():  # here, not in start(): the processes a local Ray starts die with the
            # thread that started them (PR_SET_PDEATHSIG), and the service calls start() in a thread
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        resources = {resource: 1} if resource else None
        self._actor_class = ray.remote(Replica).options(
            num_cpus=cpus, num_gpus=gpus, resources=resources, max_restarts=-1, max_task_retries=0
        )
        self._threads = max(1, int(cpus))
        self._members: list[_Member] = []
        self._lock = threading.Condition(threading.RLock())
        self._ids = itertools.count()
        self._waiting = 0
        self.ready = threading.Event()
        self._closed = False

    # -- what the service uses --------------------------------------------------------------

    @property
    def replicas(self) -> int:
        """Live replicas (warmed up, not draining, not restarting)."""
        with self._lock:
            return sum(m.state == "live" for m in self._members)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a replica or running on one."""
        with self._lock:
            return self._waiting + sum(m.in_flight for m in self._members)

    def backends(self) -> dict[str, Capabilities]:
        return self._names_pool.backends()

    def start(self, timeout: float = WARMUP_TIMEOUT_S) -> None:
        """Start the replicas; returns when all are live (raises if none is)."""
        self.scale(self.target)
        deadline = time.monotonic() + timeout
        with self._lock:
            while self.target and sum(m.state == "live" for m in self._members) < self.target:
                if not self._lock.wait(timeout=max(0.0, deadline - time.monotonic())):
                    break
        if self.target and not self.replicas:
            raise RuntimeError(f"no qworker replica warmed up within {timeout:g} s (does the Ray cluster have room?)")
        self.ready.set()

    def evaluate(self, ev: Evaluation, timeout: float | None = None) -> Result:
        """`ev` on the least-busy live replica; a replica that dies mid-request costs a retry on
        another. Raises PoolNotReady when no replica is live within `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for attempt in itertools.count(1):
            member = self._acquire(deadline)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ref = member.actor.evaluate.remote(ev, None if left is None else time.time() + left)
            try:
                result = ray.get(ref, timeout=left)
                with self._lock:
                    member.evaluations += 1
                    member.busy_s += result.compute_seconds  # measured in the replica
                return result
            except RayTaskError as e:  # the evaluation itself raised: the same error as in-process
                raise e.cause if isinstance(e.cause, Exception) else e from None
            except GetTimeoutError:
                ray.cancel(ref)  # a queued call never runs; a running one stops at its deadline
                raise TimeoutError(f"the evaluation did not finish within {timeout:g} s (deadline)") from None
            except (RayActorError, TaskCancelledError) as e:
                self._failed(member)
                if attempt == MAX_ATTEMPTS:  # the request itself kills replicas (out of memory?)
                    raise ReplicasDied(
                        f"{MAX_ATTEMPTS} replicas died running this request (out of memory?); send smaller batches"
                    ) from e
                log.warning("replica %s died mid-request (%s); retrying on another", member.name, type(e).__name__)
            finally:
                self._release(member)

    def scale(self, replicas: int) -> tuple[int, int]:
        """Aim for `replicas` replicas: start new ones (they join once warm) or drain the least busy
        (removed once their in-flight requests finish). Returns (live now, target)."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        with self._lock:
            self.target = replicas
            active = [m for m in self._members if m.state in ("warming", "live", "failed")]
            for _ in range(replicas - len(active)):
                member = _Member(self._actor_class.remote(self.names, self._threads), f"r{next(self._ids)}")
                self._members.append(member)
                threading.Thread(target=self._warm_up, args=(member,), daemon=True).start()
            order = {"warming": 0, "failed": 1, "live": 2}
            for member in sorted(active, key=lambda m: (order[m.state], m.in_flight))[: max(0, len(active) - replicas)]:
                member.state = "draining"
                self._reap(member)
            self._lock.notify_all()
            return sum(m.state == "live" for m in self._members), replicas

    def replica_stats(self) -> list[ReplicaStats]:
        with self._lock:
            return [
                ReplicaStats(m.name, m.node, m.state == "live", m.in_flight, m.evaluations, m.busy_s, m.deaths)
                for m in self._members
            ]

    def pids(self) -> list[int]:
        """Process ids of the live replicas (for tests and operators)."""
        with self._lock:
            actors = [m.actor for m in self._members if m.state == "live"]
        return ray.get([a.pid.remote() for a in actors])

    def close(self) -> None:
        self.ready.clear()
        with self._lock:
            self._closed = True
            for member in self._members:
                ray.kill(member.actor, no_restart=True)
            self._members.clear()
            self._lock.notify_all()

    # -- routing and health -----------------------------------------------------------------

    def _acquire(self, deadline: float | None) -> _Member:
        with self._lock:
            self._waiting += 1
            try:
                while True:
                    live = [m for m in self._members if m.state == "live"]
                    if live:
                        member = min(live, key=lambda m: (m.in_flight, m.served))
                        member.in_flight += 1
                        member.served += 1
                        return member
                    left = None if deadline is None else deadline - time.monotonic()
                    if self._closed or (left is not None and left <= 0):
                        raise PoolNotReady(
                            f"no live qworker replica (target {self.target}); scale the pool up "
                            "(python -m qworker scale) or check the Ray cluster"
                        )
                    self._lock.wait(timeout=left)
            finally:
                self._waiting -= 1

    def _release(self, member: _Member) -> None:
        with self._lock:
            member.in_flight -= 1
            if member.state == "draining":
                self._reap(member)
            self._lock.notify_all()

    def _reap(self, member: _Member) -> None:
        """Kill a draining replica once it is idle (called with the lock held)."""
        if member.in_flight == 0 and member in self._members:
            self._members.remove(member)
            ray.kill(member.actor, no_restart=True)

    def _failed(self, member: _Member) -> None:
        """A replica died: route around it until Ray has restarted it and it answers again."""
        with self._lock:
            if member.state != "live" or self._closed:
                return
            member.state = "failed"
            member.deaths += 1
        threading.Thread(target=self._warm_up, args=(member,), daemon=True).start()

    def _warm_up(self, member: _Member) -> None:
        """Wait until the replica answers (its constructor has run), then route to it."""
        deadline = time.monotonic() + WARMUP_TIMEOUT_S
        while True:
            try:
                member.node = ray.get(member.actor.node.remote(), timeout=max(0.0, deadline - time.monotonic()))
                state = "live"
            except ActorUnavailableError:  # Ray is restarting it: ask again
                if time.monotonic() < deadline and member.state in ("warming", "failed"):
                    time.sleep(0.2)
                    continue
                state = "gone"
            except Exception as e:  # noqa: BLE001 - any other failure: replace it
                log.warning("replica %s did not warm up (%s); replacing it", member.name, e)
                state = "gone"
            break
        with self._lock:
            if member.state in ("warming", "failed") and member in self._members:  # not drained or closed
                member.state = state
                if state == "gone":
                    self._members.remove(member)
                    ray.kill(member.actor, no_restart=True)
                    if not self._closed:
                        self.scale(self.target)  # a fresh replica in its place (the lock is reentrant)
            self._lock.notify_all()


def _to_device(ev: Evaluation, device: str) -> Evaluation:
    move = lambda t: None if t is None else t.to(device)  # noqa: E731
    return replace(ev, theta=move(ev.theta), angles=move(ev.angles), grad_out=move(ev.grad_out))


def _to_cpu(result: Result) -> Result:
    cpu = lambda ts: None if ts is None else tuple(t.cpu() for t in ts)  # noqa: E731
    exp = None if result.expectations is None else result.expectations.cpu()
    return replace(result, expectations=exp, jacobians=cpu(result.jacobians), vjp=cpu(result.vjp))


_services: dict[int, str] = {}


def local_service(replicas: int = 1) -> str:
    """The address of a qworker service on 127.0.0.1 in front of a Ray pool of `replicas`,
    started on first use in this process (on $RAY_ADDRESS's Ray, or a new local one) and stopped
    at exit: the `--qbackend ray` path, the whole distributed system on one machine."""
    if replicas not in _services:
        from qworker.service import ServerConfig, create_server

        server, port = create_server(ServerConfig(port=0, replicas=replicas))
        server.start()
        try:
            server.wait_ready(WARMUP_TIMEOUT_S)
        except Exception:
            server.stop(0)
            raise
        atexit.register(server.stop, 1)
        _services[replicas] = f"grpc://127.0.0.1:{port}"
    return _services[replicas]
