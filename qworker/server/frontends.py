"""A frontend on every node (`python -m qworker serve --per-node`; docs/design.md, "Frontends per node").

On a Ray cluster, every node that can hold a replica runs a frontend: a Ray actor pinned to that
node that serves the whole gRPC contract (`create_server`: TLS, token, deadlines, admission with
retry-after, health, Info, Scale, metrics) in front of a RayPool whose replicas are pinned to the
same node (or several frontends a node, `--frontends-per-node K`, each with `--replicas` of its
own: a frontend is one Python process, and one core routes about one H200's `fd` tokens;
cluster/README.md, "Scaling model"). No process is on every request's path: trainers spread their
calls over the frontends (`grpc://h1:p1,h2:p2`, or a DNS name with their addresses), and a
request's bytes go trainer -> frontend -> replica within one node.

The command on the head (`Frontends`) places a frontend on each such node, follows nodes as they
join and leave, prints every frontend's address and tells each frontend the others' (Info's
`frontends`). It is on no request's path: frontends are detached actors named by their node, so
they keep serving if the command dies, and the next one adopts them. Ray restarts a frontend that
dies (`max_restarts=-1`: same node, same port); its replicas, actors it owns, die with it and are
started again, so the handles it held are answered NOT_FOUND and clients recompute them.

    frontends = Frontends(cfg, nodes=2)     # cfg: the ServerConfig each frontend runs
    frontends = Frontends(cfg, per_node=4)  # four frontends (four pools) on every node
    frontends.run(stop)                     # until the threading.Event `stop` is set; then stops them
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace

import ray
from ray.autoscaler.sdk import request_resources
from ray.exceptions import GetTimeoutError, RayActorError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from qworker.server.ray_pool import INLINE_ENV, WARMUP_TIMEOUT_S, init_ray
from qworker.server.service import WILDCARDS, ServerConfig, create_server

log = logging.getLogger("qworker.frontends")

NAMESPACE = "hyqut-qworker"  # the Ray namespace of the frontends (detached, named by node)
WATCH_EVERY_S = 2.0  # how often the nodes are looked at
RETRY_AFTER_S = 10.0  # a frontend that failed to start is tried again on its node after this
ADOPT_TIMEOUT_S = 30.0


class FrontendActor:
    """One node's frontend: a qworker server whose replicas are on this node only. Its methods run
    on threads of their own (`ready` blocks while the pool warms up)."""

    def __init__(self, cfg: ServerConfig):
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.cfg, self._stopped = cfg, threading.Event()
        self.server, _ = create_server(replace(cfg, node=ray.get_runtime_context().get_node_id()))
        self.server.start()

    def config(self) -> ServerConfig:
        return self.cfg

    def ready(self, timeout: float) -> dict:
        """Once the pool is live: where this frontend is reached."""
        self.server.wait_ready(timeout)
        return {"address": self.server.address, "metrics_port": self.server.metrics.port, "pid": os.getpid()}

    def serving(self) -> None:
        """Returns when the frontend is stopped, fails when its process dies: the head's watch."""
        self._stopped.wait()

    def set_frontends(self, addresses: list[str]) -> None:
        """Every frontend of the cluster, for Info."""
        self.server.servicer.frontends = list(addresses)

    def inject_fault(self, name: str) -> None:
        """Arm a test's fault (server/faults.py); reachable with Ray's token only."""
        self.server.faults.arm(name)

    def stop(self, grace: float) -> None:
        self.server.stop(grace)
        self._stopped.set()


@dataclass(eq=False)
class _Frontend:
    """A node's frontend as the command on the head sees it."""

    node: str  # Ray node id
    key: str  # the node id, and for a node's k-th frontend (k > 0) "-k" after it: its actor's name
    ip: str  # the node's address
    offset: int  # its place among the frontends on the same address (the fake cluster's nodes share one)
    actor: ray.actor.ActorHandle
    ready: ray.ObjectRef | None = None  # the pending `ready` call
    watch: ray.ObjectRef | None = None  # the pending `serving` call, once ready: it fails when the frontend dies
    address: str = ""  # host:port, while ready


class Frontends:
    """Keeps a frontend on every node that can hold a replica of `cfg`'s shape (its CPUs, GPUs and
    one unit of `replica_resource`). Each runs `cfg` with its replicas pinned to its node; nodes
    that share an address (Ray's fake multi-node cluster) get ports `port`, `port + 1`, ... (and
    metrics ports likewise). `nodes` > 0 asks Ray's autoscaler for room for that many nodes' pools
    (request_resources): with `--replicas` a node type's slots, that many nodes. `frontend_cpus`:
    CPUs each frontend reserves on its node (0: it shares the replicas'). `per_node`: frontends a
    node, each with a pool of its own (`cfg.replicas` each)."""

    def __init__(self, cfg: ServerConfig, nodes: int = 0, frontend_cpus: float = 0.0, out=print, per_node: int = 1):
        if cfg.replicas is None:
            raise ValueError("--per-node runs a Ray pool on every node: not with --in-process")
        if cfg.advertise:
            raise ValueError("--advertise names one server; per-node frontends advertise their node's address")
        if per_node < 1:
            raise ValueError(f"--frontends-per-node must be >= 1, got {per_node}")
        self.cfg, self.nodes, self.out, self.per_node = cfg, nodes, out, per_node
        asks = {
            "CPU": cfg.replica_cpus,
            "GPU": cfg.replica_gpus,
            **({cfg.replica_resource: 1.0} if cfg.replica_resource else {}),
        }
        self._asks = {name: amount for name, amount in asks.items() if amount > 0}  # one replica's
        self._actor_class = ray.remote(FrontendActor)
        self._actor_options = dict(
            namespace=NAMESPACE,
            lifetime="detached",
            max_restarts=-1,
            max_concurrency=8,
            num_cpus=frontend_cpus,
            runtime_env={"env_vars": INLINE_ENV},
        )
        self._frontends: dict[str, _Frontend] = {}
        self._failed: dict[str, float] = {}  # node -> when its frontend may be tried again
        self._announced: list[str] = []

    def connect(self) -> None:
        """Join the Ray cluster (`cfg.ray_address`; None: $RAY_ADDRESS, else a new local Ray)."""
        if not ray.is_initialized():
            init_ray(self.cfg.ray_address, namespace=NAMESPACE)

    def run(self, stop) -> None:
        """Place and follow the frontends until `stop` (a threading.Event) is set; then stop them."""
        self.connect()
        if self.nodes:
            bundle = {name: amount * max(1, self.cfg.replicas) * self.per_node for name, amount in self._asks.items()}
            request_resources(bundles=[bundle] * self.nodes)
        try:
            while not stop.is_set():
                self.follow()
                stop.wait(WATCH_EVERY_S)
        finally:
            self.close()

    @property
    def addresses(self) -> list[str]:
        """The frontends that are up."""
        return sorted(f.address for f in self._frontends.values() if f.address)

    def follow(self) -> None:
        """One look: a frontend for every new node, none for a node that left; report the ready."""
        nodes = {n["NodeID"]: n for n in ray.nodes() if n["Alive"] and self._holds_a_replica(n["Resources"])}
        for key in sorted(k for k, f in self._frontends.items() if f.node not in nodes):
            f = self._frontends.pop(key)
            ray.kill(f.actor)
            self.out(f"qworker frontend on node {f.node[-12:]} ({f.ip}) gone: the node left", flush=True)
        for node in sorted(nodes):
            for key in (node, *(f"{node}-{k}" for k in range(1, self.per_node))):
                if key not in self._frontends and self._failed.get(key, 0.0) <= time.monotonic():
                    self._place(node, key, nodes[node]["NodeManagerAddress"])
        self._collect_ready()
        if self.addresses != self._announced:
            self._announced = self.addresses
            for f in self._frontends.values():
                if f.address:
                    f.actor.set_frontends.remote(self._announced)
            if self._announced:
                self.out(f"qworker frontends: grpc://{','.join(self._announced)}", flush=True)

    def _holds_a_replica(self, resources: dict) -> bool:
        return all(resources.get(name, 0.0) >= amount for name, amount in self._asks.items())

    def _config_for(self, ip: str, offset: int) -> ServerConfig:
        cfg = self.cfg
        return replace(
            cfg,
            port=cfg.port + offset if cfg.port else 0,
            metrics_port=cfg.metrics_port + offset if cfg.metrics_port else cfg.metrics_port,
            advertise=ip if cfg.host in WILDCARDS else cfg.host,
            ray_address=None,
        )

    def _place(self, node: str, key: str, ip: str) -> None:
        """Start (or adopt) the frontend `key` of `node`."""
        taken = {f.offset for f in self._frontends.values() if f.ip == ip}
        offset = next(k for k in range(len(taken) + 1) if k not in taken)
        cfg, name = self._config_for(ip, offset), f"frontend-{key}"
        actor = self._adopt(name, cfg)
        if actor is None:
            actor = self._actor_class.options(
                name=name, scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False), **self._actor_options
            ).remote(cfg)
        f = _Frontend(node, key, ip, offset, actor)
        f.ready = actor.ready.remote(WARMUP_TIMEOUT_S)
        self._frontends[key] = f

    def _adopt(self, name: str, cfg: ServerConfig):
        """A frontend left by an earlier command, if it runs `cfg`; one that does not is stopped."""
        try:
            actor = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            return None
        try:
            if ray.get(actor.config.remote(), timeout=ADOPT_TIMEOUT_S) == cfg:
                log.info("adopting %s", name)
                return actor
        except (RayActorError, GetTimeoutError):
            pass
        ray.kill(actor, no_restart=True)
        deadline = time.monotonic() + ADOPT_TIMEOUT_S
        while time.monotonic() < deadline:  # its name is free once it is dead
            try:
                ray.get_actor(name, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.2)
        return None

    def _collect_ready(self) -> None:
        """Frontends that became ready, failed to start, or died since the last look."""
        watched = {f.watch: f for f in self._frontends.values() if f.watch is not None}
        if watched:
            done, _ = ray.wait(list(watched), num_returns=len(watched), timeout=0)
            for ref in done:  # it died (or was stopped): Ray restarts it on its node, same port
                f = watched[ref]
                f.watch, f.address = None, ""
                self.out(f"qworker frontend on node {f.node[-12:]} ({f.ip}) died; Ray restarts it", flush=True)
                f.ready = f.actor.ready.remote(WARMUP_TIMEOUT_S)
        waiting = {f.ready: f for f in self._frontends.values() if f.ready is not None}
        if not waiting:
            return
        done, _ = ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in done:
            f = waiting[ref]
            f.ready = None
            try:
                where = ray.get(ref)
            except Exception as e:  # noqa: BLE001 - its start failed (a port taken, no room): retry later
                self.out(f"qworker frontend on node {f.node[-12:]} ({f.ip}) failed to start: {e}", flush=True)
                ray.kill(f.actor, no_restart=True)
                del self._frontends[f.key]
                self._failed[f.key] = time.monotonic() + RETRY_AFTER_S
                continue
            f.address, f.watch = where["address"], f.actor.serving.remote()
            host = f.address.rsplit(":", 1)[0]
            metrics = f", metrics http://{host}:{where['metrics_port']}/metrics" if where["metrics_port"] else ""
            self.out(
                f"qworker frontend on node {f.node[-12:]} ({f.ip}): grpc://{f.address}{metrics}, pid {where['pid']}",
                flush=True,
            )

    def close(self) -> None:
        """Stop every frontend (in-flight calls get `grace_s`), then release the nodes asked for."""
        stops = [f.actor.stop.remote(self.cfg.grace_s) for f in self._frontends.values()]
        try:
            ray.get(stops, timeout=self.cfg.grace_s + 10)
        except Exception as e:  # noqa: BLE001 - a dead or stuck frontend is killed below all the same
            log.warning("not every frontend stopped cleanly: %s", e)
        for f in self._frontends.values():
            ray.kill(f.actor, no_restart=True)
        self._frontends.clear()
        if self.nodes:
            request_resources(bundles=[])


def serve_per_node(cfg: ServerConfig, nodes: int = 0, frontend_cpus: float = 0.0, per_node: int = 1) -> None:
    """`python -m qworker serve --per-node`: the frontends until SIGTERM or Ctrl-C, then stop them."""
    frontends, stop = Frontends(cfg, nodes, frontend_cpus, per_node=per_node), threading.Event()
    frontends.connect()  # before the handlers: ray.init sets its own

    def on_signal(signum, _frame):
        log.info("signal %d: stopping the frontends (grace %.0f s)", signum, cfg.grace_s)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    frontends.run(stop)
