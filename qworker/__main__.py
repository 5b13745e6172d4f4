"""The qworker command line (the server: qworker/server/; `info` and `scale`: qworker/client/):

python -m qworker serve --port 50051 --replicas 2         # gRPC in front of a local Ray pool
python -m qworker serve --ray-address auto --replica-resource qworker --replicas 8   # on a cluster
python -m qworker serve --per-node --ray-address auto --replica-resource qworker --replicas 8   # a frontend a node
python -m qworker info grpc://127.0.0.1:50051              # what a server runs, its replicas
python -m qworker scale grpc://127.0.0.1:50051 --replicas 4   # while trainers keep calling
python -m qworker qasm --n-qubits 10 --n-layers 2 --entangler ring   # the circuit as OpenQASM 3
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from google.protobuf.json_format import MessageToJson

from qworker.circuit import ENTANGLERS, CircuitSpec
from qworker.client import RemoteError, admin_call
from qworker.protocol.wire import qworker_pb2 as pb
from qworker.server.autoscale import Policy
from qworker.server.replica import SIMULATORS
from qworker.server.service import ServerConfig, serve


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m qworker", description="The HyQuT quantum-evaluation service.")
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve hyqut.qworker.v1.QWorker over gRPC until SIGTERM")
    d = ServerConfig()
    s.add_argument("--host", default=d.host, help="interface to listen on (0.0.0.0 for all)")
    s.add_argument("--port", type=int, default=d.port, help="0 picks a free port (printed)")
    s.add_argument("--token-file", type=Path, help="require this file's token (default: $HYQUT_TOKEN, if set)")
    s.add_argument("--tls-cert", type=Path, help="PEM certificate chain: serve TLS (with --tls-key)")
    s.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    s.add_argument("--max-message-mb", type=int, default=d.max_message_mb, help="largest request or response")
    s.add_argument("--max-qubits", type=int, default=d.max_qubits, help="largest circuit served")
    s.add_argument("--max-layers", type=int, default=d.max_layers, help="deepest circuit served")
    s.add_argument("--max-tokens", type=int, default=d.max_tokens_per_request, help="most tokens in one request")
    s.add_argument("--max-shots", type=int, default=d.max_shots, help="most shots a request may ask for")
    s.add_argument(
        "--max-request-seconds",
        type=float,
        default=d.max_request_seconds,
        help="refuse a request estimated to hold a replica longer (the work limit)",
    )
    s.add_argument(
        "--default-deadline", type=float, default=d.default_deadline_s, help="seconds, when a client sets none"
    )
    s.add_argument("--max-deadline", type=float, default=d.max_deadline_s, help="longer client deadlines are cut to it")
    s.add_argument("--max-inflight", type=int, help="requests evaluating at once (default: 2 per live replica)")
    s.add_argument("--max-queue", type=int, help="admitted requests waiting (default: 4 x max-inflight)")
    s.add_argument("--max-replicas", type=int, help="Scale's bound (default: what the Ray cluster can place now)")
    s.add_argument(
        "--max-resident-mb", type=int, default=d.max_resident_mb, help="kept Jacobians a replica holds (MiB)"
    )
    s.add_argument(
        "--resident-ttl", type=float, default=d.resident_ttl_s, help="seconds before unused kept Jacobians expire"
    )
    s.add_argument("--simulators", default=",".join(d.simulators), help=f"comma-separated, from {SIMULATORS}")
    s.add_argument("--replicas", type=int, default=1, help="replicas of the Ray pool (each a process)")
    s.add_argument("--in-process", action="store_true", help="no Ray: evaluate in the server's own process")
    s.add_argument(
        "--autoscale",
        metavar="MIN:MAX",
        help="replicas follow the load: the busy fraction is kept near 70%% (qworker/server/autoscale.py)",
    )
    s.add_argument(
        "--autoscale-cooldown",
        type=float,
        default=Policy.cooldown_s,
        help="least seconds between two changes; the load is measured every min(5, cooldown/3) s",
    )
    s.add_argument("--ray-address", help="Ray cluster to run replicas on (default: $RAY_ADDRESS or a new local Ray)")
    s.add_argument("--replica-cpus", type=float, default=d.replica_cpus, help="CPUs (torch threads) per replica")
    s.add_argument("--replica-gpus", type=float, default=d.replica_gpus, help="GPUs per replica")
    s.add_argument("--replica-resource", help="custom Ray resource a replica needs one unit of (e.g. qworker)")
    s.add_argument(
        "--per-node",
        action="store_true",
        help="a frontend on every node that holds a replica, serving --replicas (or --autoscale) of that node; "
        "nodes sharing an address get --port, --port + 1, ... (server/frontends.py)",
    )
    s.add_argument(
        "--nodes",
        type=int,
        default=0,
        help="--per-node: ask Ray's autoscaler for room for this many nodes' pools (request_resources)",
    )
    s.add_argument(
        "--frontend-cpus", type=float, default=0.0, help="--per-node: CPUs each frontend reserves on its node"
    )
    s.add_argument(
        "--frontends-per-node",
        type=int,
        default=1,
        metavar="K",
        help="--per-node: K frontends (processes) a node, each serving --replicas of its own (one frontend core "
        "routes about one GPU replica's fd tokens: cluster/README.md, 'Scaling model')",
    )
    s.add_argument(
        "--advertise",
        metavar="HOST[:PORT]",
        help="the address clients reach this server at, named in answers that carry a handle "
        "(default: --host, or this machine's address when --host is 0.0.0.0)",
    )
    for name, what in (("info", "print what a server runs"), ("scale", "set a server's replicas")):
        c = sub.add_parser(name, help=what)
        c.add_argument("address", help="grpc://host:port (token from $HYQUT_TOKEN)")
        c.add_argument("--tls-root-cert", type=Path, help="PEM root certificate of a TLS server")
        if name == "scale":
            c.add_argument("--replicas", type=int, required=True, help="replicas wanted (>= 0)")
    qasm = sub.add_parser("qasm", help="print a circuit spec as OpenQASM 3 (θ and the input angles as inputs)")
    spec = CircuitSpec()
    qasm.add_argument("--n-qubits", type=int, default=spec.n_qubits, help="qubits (default %(default)s)")
    qasm.add_argument("--n-layers", type=int, default=spec.n_layers, help="ansatz layers (default %(default)s)")
    qasm.add_argument("--entangler", choices=ENTANGLERS, default=spec.entangler, help="(default %(default)s)")
    qasm.add_argument("--measure", action="store_true", help="end by measuring every qubit (for a sampler)")
    s.add_argument("--workers", type=int, default=d.workers, help="--in-process: evaluations running at once")
    s.add_argument(
        "--inline-work",
        type=int,
        default=d.inline_work,
        help="requests of at most this many amplitude-circuits run in the server, not on a replica (0: none)",
    )
    s.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port")
    s.add_argument("--grace", type=float, default=d.grace_s, help="seconds in-flight calls get on SIGTERM")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    token = args.token_file.read_text().strip() if args.token_file else os.environ.get("HYQUT_TOKEN") or None
    if args.token_file and not token:
        raise SystemExit(f"--token-file {args.token_file} is empty")
    autoscale = None
    if args.autoscale:
        cooldown = args.autoscale_cooldown
        try:
            autoscale = Policy.parse(args.autoscale, cooldown_s=cooldown, period_s=min(5.0, cooldown / 3) or 1.0)
        except ValueError as e:
            raise SystemExit(str(e)) from None
    return ServerConfig(
        host=args.host,
        port=args.port,
        token=token,
        tls_cert=args.tls_cert.read_bytes() if args.tls_cert else None,
        tls_key=args.tls_key.read_bytes() if args.tls_key else None,
        max_message_mb=args.max_message_mb,
        max_qubits=args.max_qubits,
        max_layers=args.max_layers,
        max_tokens_per_request=args.max_tokens,
        max_shots=args.max_shots,
        max_request_seconds=args.max_request_seconds,
        default_deadline_s=args.default_deadline,
        max_deadline_s=args.max_deadline,
        max_inflight=args.max_inflight,
        max_queue=args.max_queue,
        max_replicas=args.max_replicas,
        max_resident_mb=args.max_resident_mb,
        resident_ttl_s=args.resident_ttl,
        autoscale=autoscale,
        simulators=tuple(n for n in args.simulators.split(",") if n),
        replicas=None if args.in_process else args.replicas,
        ray_address=args.ray_address,
        replica_cpus=args.replica_cpus,
        replica_gpus=args.replica_gpus,
        replica_resource=args.replica_resource,
        workers=args.workers,
        inline_work=args.inline_work,
        metrics_port=args.metrics_port,
        grace_s=args.grace,
        advertise=args.advertise,
    )


def admin(args: argparse.Namespace) -> int:
    """`info` and `scale`: one call to a running server, its answer printed as JSON."""
    try:
        if args.command == "info":
            reply = admin_call(args.address, "Info", pb.InfoRequest(), args.tls_root_cert)
        else:
            if args.replicas < 0:
                raise SystemExit(f"--replicas must be >= 0, got {args.replicas}")
            reply = admin_call(args.address, "Scale", pb.ScaleRequest(replicas=args.replicas), args.tls_root_cert)
    except (RemoteError, ConnectionError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(MessageToJson(reply, always_print_fields_with_no_presence=True))
    return 0


def qasm(args: argparse.Namespace) -> int:
    """`qasm`: the spec's circuit as OpenQASM 3 on stdout (Qiskit's exporter: needs hyqut[qiskit])."""
    try:
        spec = CircuitSpec(args.n_qubits, args.n_layers, args.entangler)
        from qworker.backends.qiskit_adapter import qasm3

        text = qasm3(spec, measure=args.measure)
    except ImportError as e:
        print(f"error: {e} (qasm exports through Qiskit: pip install 'hyqut[qiskit]')", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.command == "qasm":
        return qasm(args)
    if args.command != "serve":
        return admin(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = config_from_args(args)
    if args.frontends_per_node < 1 or (args.frontends_per_node != 1 and not args.per_node):
        raise SystemExit(f"--frontends-per-node {args.frontends_per_node}: a count >= 1, and it goes with --per-node")
    if not args.per_node:
        serve(cfg)
        return 0
    if args.in_process:
        raise SystemExit("--per-node runs a Ray pool on every node: drop --in-process")
    from qworker.server.frontends import serve_per_node  # Ray: a heavy import the other commands do not need

    serve_per_node(cfg, args.nodes, args.frontend_cpus, args.frontends_per_node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
