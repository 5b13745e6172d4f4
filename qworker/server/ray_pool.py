"""The Ray pool: N replica actors, each a process holding a Replica, behind the same methods as
the in-process pool, so the service does not know which one it talks to.

    pool = RayPool(replicas=2)                      # connects to $RAY_ADDRESS or starts a local Ray
    await pool.start()                              # returns once every replica has warmed up
    data = await pool.evaluate(request, header, timeout=30)   # on the least-busy live replica
    pool.scale(4)                                   # while requests keep flowing
    pool.close()

What Ray gives and we use: actors (a replica is a process; Ray schedules it on a node with the
CPUs, GPUs and custom resource it asks for), restarts (`max_restarts=-1`: a replica that dies is
restarted by Ray), `ray.cancel` (a queued request never runs; a running one is cancelled in the
replica, which stops its simulators at their next check), and its RPCs for the request and
response bytes (inside the call up to INLINE_BYTES, not through the object store: `init_ray`).
What is ours: the least-busy live replica for each request, a retry on another replica when one
dies mid-request (an evaluation is a pure function of its request, so
the retry returns exactly what the lost call would have), and draining a replica before removal.

The pool lives on the server's event loop: no locks, and no thread waits on a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field, replace

import ray
from ray.exceptions import ActorUnavailableError, RayActorError, RayTaskError, TaskCancelledError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from qworker.backends import Capabilities, Usage
from qworker.protocol import shards
from qworker.protocol.errors import HandleGone, PoolNotReady, ReplicasDied, ScaleRefused
from qworker.protocol.evaluation import Header
from qworker.protocol.limits import Limits
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.server.faults import Faults, kill
from qworker.server.in_process import InProcessPool
from qworker.server.replica import SIMULATORS, Replica, ReplicaStats
from qworker.server.resident import Handles, Held, Resident

log = logging.getLogger("qworker.ray_pool")

WARMUP_TIMEOUT_S = 180.0  # the pool's start waits this long for its replicas
PENDING_S = 5.0  # a replica not started by then is reported pending (Info)
MAX_RETIRED = 1000  # removed replicas whose totals stay in the metrics
MAX_ATTEMPTS = 3  # replicas a request may see die before it fails
INLINE = "inline"  # where a unit kept by the server's own replica is
BATCHES_PER_REPLICA = 2  # calls a request's units go in, per live replica: few calls, and the load still spread
# Ray passes an argument or result up to this size inside the call's RPC; a larger one goes
# through the node's object store, a put and a get more. Ray's default, 100 KiB, stores a
# 4,096-token layer-call's every unit; inline costs the caller less up to ~1 MB and more above
# (bench/ray_inline.py), so the crossover. At an H200's pace it cut a frontend's CPU a
# 4,096-token layer-call by a third (docs/performance.md, "Ray's bytes inline").
INLINE_BYTES = 1 << 20
INLINE_ENV = {"RAY_max_direct_call_object_size": str(INLINE_BYTES)}  # what Ray reads it from


def init_ray(address: str | None, **options) -> None:
    """Join the Ray cluster at `address` (None: $RAY_ADDRESS, else start a local Ray) with this
    process's calls passing up to INLINE_BYTES inline, as the processes of a local Ray started
    here do (they inherit it); actors get it through their runtime_env, so a cluster started
    without it does the same. A value already in the environment is kept."""
    for name, value in INLINE_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, **options)


class ReplicaActor:
    """One replica process: a Replica, its torch threads set to its CPUs, on the GPU if Ray gave it
    one. Evaluations run one at a time on the `compute` concurrency group's thread; pings and
    cancellations are answered on the default group's meanwhile."""

    def __init__(self, names: tuple[str, ...], threads: int, resident: tuple[int, float]):
        import torch

        torch.set_num_threads(max(1, threads))
        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        self.replica = Replica(names, device, Resident(*resident))
        self.replica.start()
        self._running: tuple[int, threading.Event] | None = None

    @ray.method(concurrency_group="compute")
    def evaluate(self, requests: list[bytes], until: float | None, key: int) -> list[tuple[bytes, float, Usage]]:
        """The requests in turn (several: the units of one handle this replica holds, in one call);
        stopped once the wall clock passes `until` (the caller's deadline: nodes keep their clocks
        in sync) or when the caller cancels `key`."""
        cancel = threading.Event()
        self._running = (key, cancel)
        try:
            return [self.replica.evaluate(r, None if until is None else until - time.time(), cancel) for r in requests]
        finally:
            self._running = None

    def cancel(self, key: int) -> None:
        """Stop evaluation `key` at its next check, if it is the one running (a queued one is
        dropped by `ray.cancel`)."""
        running = self._running
        if running is not None and running[0] == key:
            running[1].set()

    def where(self) -> tuple[str, int]:
        """The IP of its node and its process id."""
        return ray.util.get_node_ip_address(), os.getpid()


@dataclass(eq=False)
class _Member:
    """A replica as the pool sees it."""

    actor: ray.actor.ActorHandle
    name: str
    state: str = "warming"  # warming -> live <-> failed; draining -> gone
    in_flight: int = 0
    served: int = 0  # requests sent to it
    node: str = ""  # IP of its Ray node, once warm
    pid: int = 0  # its process, once warm
    since: float = field(default_factory=time.monotonic)  # when it was asked for
    evaluations: int = 0  # results it returned
    busy_s: float = 0.0  # seconds it spent on them, measured in the replica
    deaths: int = 0


class RayPool:
    """`replicas` ReplicaActors on the Ray cluster at `address` (None: $RAY_ADDRESS, or a new
    local Ray). Each asks Ray for `cpus` CPUs (its torch threads), `gpus` GPUs and, when
    `resource` is set, one unit of that custom resource (so it lands only on simulator nodes).
    A request waits up to its timeout for a live replica, then fails UNAVAILABLE (PoolNotReady).
    With `node` (a Ray node id) every replica is placed on that node and nowhere else: the pool of
    a per-node frontend (server/frontends.py), bounded by what that node holds.

    Construct it in the main thread (it may start a local Ray, whose processes die with the thread
    that started them); use it from one event loop."""

    def __init__(
        self,
        names: tuple[str, ...] = SIMULATORS,
        replicas: int = 1,
        address: str | None = None,
        cpus: float = 1.0,
        gpus: float = 0.0,
        resource: str | None = None,
        inline_work: int = 0,
        max_replicas: int | None = None,
        resident: tuple[int, float] = (Limits.max_resident_bytes, Limits.resident_ttl_s),
        node: str | None = None,
        faults: Faults | None = None,
    ):
        if replicas < 0 or cpus < 0 or gpus < 0:
            raise ValueError(f"replicas, cpus and gpus must be >= 0 (got {replicas}, {cpus}, {gpus})")
        # the server's own replica: it validates the names here, and answers requests too small to
        # be worth a hop to a replica (`inline_work`)
        self.inline = InProcessPool(names, resident=resident)
        self.resident, self.handles = resident, Handles(resident[1])
        self._capabilities = self.inline.backends()
        self.inline_work = inline_work
        self.names, self.target = tuple(names), replicas
        if not ray.is_initialized():
            init_ray(address)
        self.node, self.faults = node, faults or Faults()
        self._threads = max(1, int(cpus))
        # OpenMP set before the replica imports torch: its CPUs as threads, and idle threads that
        # sleep instead of spinning against whatever shares the node (trainer/run/threads.py); its
        # results inline up to INLINE_BYTES
        env = {"OMP_NUM_THREADS": str(self._threads), "OMP_WAIT_POLICY": "PASSIVE", **INLINE_ENV}
        self._actor_class = ray.remote(concurrency_groups={"compute": 1})(ReplicaActor).options(
            num_cpus=cpus,
            num_gpus=gpus,
            resources={resource: 1} if resource else None,
            max_restarts=-1,
            runtime_env={"env_vars": env},
            scheduling_strategy=None if node is None else NodeAffinitySchedulingStrategy(node, soft=False),
        )
        self._asks = {"CPU": cpus, "GPU": gpus, **({resource: 1.0} if resource else {})}  # per replica
        self._max_replicas = max_replicas
        self._members: list[_Member] = []
        self._retired: list[ReplicaStats] = []  # removed replicas' totals: their series stay in /metrics
        self._ids, self._keys = itertools.count(), itertools.count()
        self.busy_s = 0.0  # seconds all replicas spent evaluating, measured in them (the autoscaler's input)
        self.usage: dict[str, Usage] = {}  # by backend: jobs, circuits and shots the replicas spent
        self.waiting = 0  # units waiting for a live replica
        self._changed: asyncio.Event | None = None  # set whenever a replica's state changes
        self.live = False
        self._closed = False

    # -- what the service uses --------------------------------------------------------------

    @property
    def replicas(self) -> int:
        """Live replicas (warmed up, not draining, not restarting)."""
        return sum(m.state == "live" for m in list(self._members))

    def default_inflight(self) -> int:
        """Two requests per live replica (one evaluating, one arriving), at least two."""
        return max(2, 2 * self.replicas)

    @property
    def starting(self) -> bool:
        """Whether a replica asked for is still starting (or waiting for Ray to place it)."""
        return any(m.state == "warming" for m in list(self._members))

    def backends(self) -> dict[str, Capabilities]:
        return self._capabilities

    @property
    def max_replicas(self) -> int:
        """Scale's bound: as given, or as many replicas as the Ray cluster's resources (with a
        node, that node's) hold now."""
        if self._max_replicas is not None:
            return self._max_replicas
        total = ray.cluster_resources() if self.node is None else self._node_resources()
        fits = [int(total.get(name, 0) // amount) for name, amount in self._asks.items() if amount > 0]
        return min(fits) if fits else 0

    def _node_resources(self) -> dict[str, float]:
        """What this pool's node offers in all (nothing once it has left the cluster)."""
        return next((n["Resources"] for n in ray.nodes() if n["NodeID"] == self.node and n["Alive"]), {})

    def pending(self) -> dict:
        """Replicas asked for that Ray has not placed (or started) yet, and why: for Info."""
        waiting = [m for m in list(self._members) if m.state == "warming" and time.monotonic() - m.since > PENDING_S]
        if not waiting:
            return {}
        needs = ", ".join(f"{a:g} {name}" for name, a in self._asks.items() if a > 0)
        if self.node is not None:
            total = self._node_resources()
            has = ", ".join(f"{total.get(name, 0):g} {name}" for name, a in self._asks.items() if a > 0)
            reason = f"waiting for Ray to place them on this node: each needs {needs}; the node has {has} in all"
            return {"pending_replicas": len(waiting), "pending_reason": reason + " (scale down)"}
        free = ray.available_resources()
        has = ", ".join(f"{free.get(name, 0):g} {name}" for name, a in self._asks.items() if a > 0)
        return {
            "pending_replicas": len(waiting),
            "pending_reason": f"waiting for Ray to place them: each needs {needs}; the cluster has {has} free "
            "(an autoscaling cluster adds nodes; otherwise scale down or add nodes)",
        }

    async def start(self, timeout: float = WARMUP_TIMEOUT_S) -> None:
        """Start the replicas; returns when all are live (raises if none is)."""
        self._changed = asyncio.Event()
        await self.inline.start()
        self.scale(self.target)
        until = time.monotonic() + timeout
        while self.target and self.replicas < self.target and time.monotonic() < until:
            await self._wait_change(until)
        if self.target and not self.replicas:
            raise RuntimeError(f"no qworker replica warmed up within {timeout:g} s (does the Ray cluster have room?)")
        self.live = True

    async def evaluate(
        self, request: bytes, header: Header, timeout: float | None, parsed: pb.EvaluateRequest | None = None
    ) -> bytes:
        """The encoded response of `request` (`parsed`, if the caller has parsed it). A request of
        at most `inline_work` amplitude-circuits on an exact simulator is answered here: its hop to
        a replica would cost more than it does. A larger one is cut into work units (`shards.plan`)
        that run on the least-busy live replicas side by side; a replica that dies mid-unit costs a
        retry of that unit on another. A keep_jacobians request leaves each unit's Jacobians on its
        replica and answers one handle for them (with include_expectations, as soon as the
        expectations are there: the Jacobians go on being computed, and a VJP of the handle waits
        for them); a request with a handle goes to those replicas. Raises PoolNotReady when no
        replica is live within `timeout` seconds, TimeoutError past it, HandleGone when a handle's
        Jacobians are gone."""
        parsed = parsed if parsed is not None else pb.EvaluateRequest.FromString(request)
        until = None if timeout is None else time.monotonic() + timeout
        if header.handle:
            held = await self._held(self.handles.take(header.handle), timeout)
            return (await self._gather(parsed, header, held, until, timeout))[0].SerializeToString()
        if header.keep_jacobians and header.include_expectations and self.live:
            return await self._forward_and_keep(parsed, header, until, timeout)
        served = self._capabilities.get(header.backend)  # None: the replica names the error
        small = header.work <= self.inline_work and not (served and served.hardware)
        if small and self.live:
            data = await self.inline.evaluate(request, header, timeout)
            if not header.keep_jacobians:
                return data
            handle = pb.EvaluateResponse.FromString(data).handle
            return self._with_handle(data, [Held(shards.Unit(range(header.n_tokens)), INLINE, handle)])
        plan = shards.plan(header)
        if len(plan) == 1 and not header.keep_jacobians:
            return (await self._run([request], until, timeout, header))[0][0]
        whole, held = await self._gather(parsed, header, [Held(u, None, "") for u in plan], until, timeout)
        if not header.keep_jacobians:
            return whole.SerializeToString()
        self._fault_after_keep(held)
        return self._with_handle(whole.SerializeToString(), held)

    async def _gather(
        self, parsed: pb.EvaluateRequest, header: Header, units: list[Held], until: float | None, timeout: float | None
    ) -> tuple[pb.EvaluateResponse, list[Held]]:
        """The units run side by side: each on the least-busy replica, or the units a replica
        holds (`replica`, with their `key`) in one call to it. Their answers assembled, and where
        each unit ran with the key its answer carries (a kept unit's)."""

        requests = shards.pieces(parsed, header, [h.unit for h in units])
        for request, h in zip(requests, units):
            request.handle = h.key

        # one call per replica holding units; free units in BATCHES_PER_REPLICA calls per live replica
        # (each to the least busy), so a request costs the server few calls whatever its units
        free = [i for i, h in enumerate(units) if h.replica is None]
        calls = max(1, min(len(free), BATCHES_PER_REPLICA * self.replicas))
        groups: dict[object, list[int]] = {("free", k): free[k::calls] for k in range(calls) if free[k::calls]}
        for i, h in enumerate(units):
            if h.replica is not None:
                groups.setdefault(id(h.replica), []).append(i)
        calls = [([requests[i].SerializeToString() for i in idx], units[idx[0]].replica) for idx in groups.values()]
        tasks = [asyncio.ensure_future(self._run(requests, until, timeout, header, where)) for requests, where in calls]
        try:
            answers = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:  # one unit failed, or the caller went away: stop the others
                task.cancel()
            raise
        data, where = [b""] * len(units), [None] * len(units)
        for idx, (answer, replica) in zip(groups.values(), answers):
            for i, d in zip(idx, answer):
                data[i], where[i] = d, replica
        plan = [h.unit for h in units]
        parts = [pb.EvaluateResponse.FromString(d) for d in data]
        return shards.assemble(header, plan, parts), [Held(u, r, p.handle) for u, r, p in zip(plan, where, parts)]

    async def _forward_and_keep(
        self, parsed: pb.EvaluateRequest, header: Header, until: float | None, timeout: float | None
    ) -> bytes:
        """The expectations now, and a handle to the Jacobians, which go on being computed (within
        the resident TTL) and kept where computed: the classical model's work overlaps them."""
        forward = pb.EvaluateRequest()
        forward.CopyFrom(parsed)
        forward.want, forward.keep_jacobians, forward.include_expectations = pb.WANT_EXPECTATIONS, False, False
        forward.ClearField("gradient")
        keep = pb.EvaluateRequest()
        keep.CopyFrom(parsed)
        keep.include_expectations = False
        keep_header = replace(header, include_expectations=False)
        background = time.monotonic() + self.resident[1]
        units = [Held(u, None, "") for u in shards.plan(keep_header)]
        expectations = asyncio.ensure_future(self._run([forward.SerializeToString()], until, timeout, header))
        held = asyncio.ensure_future(self._gather(keep, keep_header, units, background, self.resident[1]))  # after it
        held.add_done_callback(lambda t: t.cancelled() or t.exception() or self._fault_after_keep(t.result()[1]))
        # (a failure is retrieved here: its VJP reports it, or nobody)
        try:
            (answer,), _ = await expectations
        except BaseException:
            held.cancel()
            raise
        return self._with_handle(answer, held)

    def _fault_after_keep(self, held: list[Held]) -> None:
        """A test's fault (server/faults.py): the replicas that keep these Jacobians die now, before
        any VJP of them is asked (this runs as they are kept, ahead of a VJP waiting for them)."""
        if self.faults.due("kill-keeper"):
            for member in {h.replica for h in held if h.replica not in (None, INLINE)}:
                log.warning("fault kill-keeper: killing replica %s (pid %d)", member.name, member.pid)
                kill(member.pid)

    async def _held(self, held, timeout: float | None) -> list[Held]:
        """Where a handle's units are kept, once their Jacobians are (HandleGone if they failed)."""
        if not isinstance(held, asyncio.Future):
            return held
        try:
            return (await asyncio.wait_for(asyncio.shield(held), timeout))[1]
        except (asyncio.TimeoutError, asyncio.CancelledError):
            raise
        except Exception as e:  # noqa: BLE001 - recomputing from the inputs will report it, if it recurs
            raise HandleGone(f"handle: its Jacobians were not computed ({type(e).__name__}: {e}); send inputs") from e

    def _with_handle(self, response: bytes, held) -> bytes:
        """The encoded `response` with one handle that names where each unit's Jacobians are kept
        (or a task that will say it): appended to its bytes, not decoded (a field that comes again
        in a message's bytes takes the last value)."""
        return response + pb.EvaluateResponse(handle=self.handles.add(held)).SerializeToString()

    async def _run(
        self, requests: list[bytes], until: float | None, timeout: float | None, header: Header, pinned=None
    ) -> tuple[list[bytes], object]:
        """Requests (units) in one call to the least-busy live replica, retried on another if it
        dies; or on `pinned`, the replica holding their kept Jacobians (INLINE: the server's own),
        where a death means they are gone (HandleGone). Returns the answers and the replica."""
        if pinned is INLINE:
            return [await self.inline.evaluate(r, header, timeout) for r in requests], INLINE
        for attempt in itertools.count(1):
            if pinned is None:
                member = await self._acquire(until)
            elif pinned.state == "live":
                member = pinned
                member.in_flight += 1
                member.served += 1
            else:
                raise HandleGone(f"handle: replica {pinned.name}, which held its Jacobians, is gone; send the inputs")
            left = None if until is None else max(0.0, until - time.monotonic())
            key = next(self._keys)
            ref = member.actor.evaluate.remote(requests, None if left is None else time.time() + left, key)
            try:
                answers = await asyncio.wait_for(_awaitable(ref), left)
                for _, seconds, usage in answers:
                    member.evaluations += 1
                    member.busy_s += seconds  # measured in the replica
                    self.busy_s += seconds
                    if usage.jobs:
                        self.usage[header.backend] = self.usage.get(header.backend, Usage()) + usage
                return [data for data, _, _ in answers], member
            except RayTaskError as e:  # the evaluation itself raised: the same error as in-process
                raise e.cause if isinstance(e.cause, Exception) else e from None
            except (asyncio.TimeoutError, asyncio.CancelledError) as e:
                ray.cancel(ref)  # a queued call never runs
                member.actor.cancel.remote(key)  # a running one stops at its next check
                if isinstance(e, asyncio.CancelledError):
                    raise
                raise TimeoutError(f"the evaluation did not finish within {timeout:g} s (deadline)") from None
            except (RayActorError, TaskCancelledError) as e:  # died (or restarting) mid-request
                self._failed(member)
                if pinned is not None:
                    raise HandleGone(f"handle: replica {member.name} died holding its Jacobians; send inputs") from e
                if attempt == MAX_ATTEMPTS:  # the request itself kills replicas (out of memory?)
                    raise ReplicasDied(
                        f"{MAX_ATTEMPTS} replicas died running this request (out of memory?); send smaller batches"
                    ) from e
                log.warning("replica %s died mid-request (%s); retrying on another", member.name, type(e).__name__)
            finally:
                self._release(member)
        raise AssertionError("unreachable")

    def scale(self, replicas: int) -> tuple[int, int]:
        """Aim for `replicas` replicas: start new ones (they join once warm) or drain the least busy
        (removed once their in-flight requests finish). Returns (live now, target)."""
        if replicas < 0:
            raise ValueError(f"replicas must be >= 0, got {replicas}")
        if replicas > self.max_replicas:
            raise ScaleRefused(
                f"{replicas} replicas do not fit: at most {self.max_replicas} (each asks Ray for "
                f"{', '.join(f'{a:g} {n}' for n, a in self._asks.items() if a > 0)}; "
                + (
                    "--max-replicas"
                    if self._max_replicas is not None
                    else "the cluster's resources now, or --max-replicas"
                )
                + " sets the bound)"
            )
        self.target = replicas
        active = [m for m in self._members if m.state in ("warming", "live", "failed")]
        for _ in range(replicas - len(active)):
            member = _Member(self._actor_class.remote(self.names, self._threads, self.resident), f"r{next(self._ids)}")
            self._members.append(member)
            asyncio.get_running_loop().create_task(self._warm_up(member))
        order = {"warming": 0, "failed": 1, "live": 2}
        for member in sorted(active, key=lambda m: (order[m.state], m.in_flight))[: max(0, len(active) - replicas)]:
            member.state = "draining"
            self._reap(member)
        self._notify()
        return self.replicas, replicas

    def hardware_usage(self) -> dict[str, Usage]:
        """Jobs, circuits and shots spent so far by the replicas and the server's own, by backend."""
        total = dict(self.usage)
        for name, usage in self.inline.hardware_usage().items():
            total[name] = total.get(name, Usage()) + usage
        return total

    def replica_stats(self) -> list[ReplicaStats]:
        """Every replica's, those removed (their totals kept), then the server's own ("server")."""
        (own,) = self.inline.replica_stats()
        return [_stats(m) for m in list(self._members)] + list(self._retired) + [replace(own, name="server")]

    def close(self) -> None:
        self.live = False
        self._closed = True
        self.inline.close()
        for member in self._members:
            ray.kill(member.actor, no_restart=True)
        self._members.clear()
        self._notify()

    # -- routing and health -----------------------------------------------------------------

    async def _acquire(self, until: float | None) -> _Member:
        while True:
            live = [m for m in self._members if m.state == "live"]
            if live:
                member = min(live, key=lambda m: (m.in_flight, m.served))
                member.in_flight += 1
                member.served += 1
                return member
            if self._closed or (until is not None and time.monotonic() >= until):
                raise PoolNotReady(
                    f"no live qworker replica (target {self.target}); scale the pool up "
                    "(python -m qworker scale) or check the Ray cluster"
                )
            self.waiting += 1  # for a replica: what scales an autoscaled pool up from zero
            try:
                await self._wait_change(until)
            finally:
                self.waiting -= 1

    def _release(self, member: _Member) -> None:
        member.in_flight -= 1
        if member.state == "draining":
            self._reap(member)
        self._notify()

    def _reap(self, member: _Member) -> None:
        """Kill a draining replica once it is idle."""
        if member.in_flight == 0 and member in self._members:
            self._remove(member)

    def _remove(self, member: _Member) -> None:
        self._members.remove(member)
        self._retired = [*self._retired[-(MAX_RETIRED - 1) :], replace(_stats(member), live=False)]
        ray.kill(member.actor, no_restart=True)

    def _failed(self, member: _Member) -> None:
        """A replica died: route around it until Ray has restarted it and it answers again."""
        if member.state != "live" or self._closed:
            return
        member.state = "failed"
        member.deaths += 1
        asyncio.get_running_loop().create_task(self._warm_up(member))

    async def _warm_up(self, member: _Member) -> None:
        """Wait until the replica answers (its constructor has run), then route to it. One Ray
        cannot place yet waits, reported by `pending` (an autoscaler may be adding its node); one
        whose start fails is replaced."""
        while True:
            try:
                member.node, member.pid = await _awaitable(member.actor.where.remote())
                state = "live"
            except ActorUnavailableError:  # Ray is restarting it: ask again
                if member.state in ("warming", "failed"):
                    await asyncio.sleep(0.2)
                    continue
                state = "gone"
            except Exception as e:  # noqa: BLE001 - its constructor failed: replace it
                log.warning("replica %s did not start (%s); replacing it", member.name, e)
                state = "gone"
            break
        if member.state in ("warming", "failed") and member in self._members:  # not drained or closed
            member.state = state
            if state == "gone":
                self._remove(member)
                if not self._closed:
                    self.scale(self.target)  # a fresh replica in its place
        self._notify()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    async def _wait_change(self, until: float | None) -> None:
        """Until some replica changes state (or `until`)."""
        self._changed.clear()
        left = None if until is None else max(0.0, until - time.monotonic())
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._changed.wait(), left)


def _stats(m: _Member) -> ReplicaStats:
    return ReplicaStats(m.name, m.node, m.state == "live", m.in_flight, m.evaluations, m.busy_s, m.deaths)


async def _awaitable(ref: ray.ObjectRef):
    """An ObjectRef's value as a coroutine (what asyncio.wait_for and gather take)."""
    return await ref
