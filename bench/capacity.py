"""The plan to 64 GPU replicas, from measured constants: the throughput each cap of the qworker
service allows, and which binds, for today's path and the new one.

    python bench/service.py --json > service.json                      # the per-token constants at N = 16,384
    python bench/service.py --tokens 4096 --json > service-4096.json   # and at N = 4,096
    python bench/capacity.py --service-json service.json service-4096.json   # 1, 8, 64 H200 replicas, 8 a node
    python bench/capacity.py --service-json service.json --replicas 64 --gpus-per-node 4 --frontends-per-node 4
    python bench/capacity.py --service-json service.json --replica cpu --gpus-per-node 1   # CPU replicas
    python bench/capacity.py --service-json service.json --json                            # one object a line

Unit: a layer-token, one token through one quantum layer's step (forward and backward), which is
what bench/service.py and bench/vqc.py measure; a training token costs `--quantum-layers` of them.

The two paths (bench/service.py's names):
- today: one relaying service on the head, the Jacobians sent back through it ("service, 1
  replica, dense"): every byte crosses the head's NIC twice, once in and once out, and the head's
  frontend spends the dense path's CPU on every layer-token;
- new: a frontend on every node, serving that node's replicas, the Jacobians kept where they
  were computed ("service, 1 replica" and "service, 2 replicas": the larger figure of the two):
  each node's NIC carries its own replicas' traffic once each way, its frontend the kept path's CPU.
  Planning H200 replicas, the frontend's CPU is the one measured at an H200's pace ("service, 1
  replica, H200 pace", bench/paced.py), when the file has it: a frontend pays a call cold when its
  replica takes seconds (a CPU replica) and warm when it takes milliseconds (a GPU's).

The caps, in layer-tokens/s, for R replicas on n = R / G nodes (G per node; R < G: one node):
- replicas:      R x r; r is one replica's layer-tokens/s: an H200's from docs/performance.md
                 (H200 below), or a CPU replica's: bench/service.py's "service, 1 replica" rate (a
                 replica with the measuring machine's cores, measured as one: a Ray actor, OpenMP
                 waiting passively; bench/service.py's in-process worker does not wait passively,
                 and lost 6x to one replica on a busy machine);
- frontend CPU:  f x (1 - z) x 1e6 / u(T); f frontend processes, each one core (a Python
                 server's own work holds the GIL): today 1, the head's; new n x K, K a node
                 (`serve --frontends-per-node K`); z the core share a frontend spends with nothing
                 asked (its quiet rate, bench/service.py's); u(T) = a + b / T us of frontend CPU a
                 layer-token with T tokens a layer-call (net of the quiet rate): fitted through
                 bench/service.py's figures at two or more call sizes N (`--service-json` files of
                 different --tokens); from one N, b = 2q, q the CPU of a one-token request (it is
                 answered in the server, without a large request's Ray calls: it underestimates b);
- NIC, head:     (today only) B / b, B = the NIC's bytes/s each way (Gb/s / 8), b the bytes on the
                 wire a layer-token, both ways together: the head's inbound carries every byte once
                 (the trainers' requests, the replicas' answers), and so does its outbound;
- NIC, nodes:    n x B / b: each replica node carries its own replicas' bytes (either direction at
                 most b a layer-token);
- NIC, trainers: m x B / b, m = ceil(ranks / ranks a node): each trainer node carries its ranks' bytes;
- trainers:      ranks x s x L: s a rank's classical training tokens/s (the circuits elsewhere),
                 L quantum layers a step. Not a routing cap: the demand the trainers can make.
The binding cap is the least; the routing caps (frontend CPU and the NICs) hold when none is
below the replicas'. Not modelled: the trainers' client CPU, Ray's own traffic, frontends' Ray
calls growing with their replicas (measured with 1 and 2), an uneven spread over frontends.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict, dataclass, replace

from qworker import CircuitSpec, Gradient

SPEC = CircuitSpec(10, 2)  # bench/service.py's circuit
TODAY, NEW = "today", "new"
DENSE, KEPT = "service, 1 replica, dense", ("service, 1 replica", "service, 2 replicas")
PACED = "service, 1 replica, H200 pace"  # bench/service.py's kept path at an H200's pace (bench/paced.py)

# One H200 replica, layer-tokens/s: docs/performance.md, "On a GPU" (bench/device.sh vqc, 2026-11-26,
# the `local` simulator's torch path, float32, N = 1,048,576: bench/vqc.py's circuits/s, tokens of a
# layer's step per second). `fd` was not measured there.
H200_SOURCE = "docs/performance.md, On a GPU: H200, local simulator (torch path), N = 1,048,576, 2026-11-26"
H200 = {
    "adjoint": (2_078_490.0, f"{H200_SOURCE}, forward + adjoint"),
    "shift": (236_435.0, f"{H200_SOURCE}, forward + shift Jacobian"),
    "fd": (
        236_435.0,
        "not measured on a GPU: the shift figure (fd evaluates the same 121 circuits a token; on the CPU, "
        "docs/performance.md's bench/vqc.py table: fd 1,901 and shift 1,783 tokens/s at N = 4,096)",
    ),
}
# A trainer rank's classical training tokens/s: docs/performance.md, On a GPU, "train step, classical, 150m".
TRAINER_TOKENS_PER_S = (68_164.0, "docs/performance.md, On a GPU: train step, classical, 150m, H200")
ROUTING = ("frontend CPU", "NIC, head", "NIC, nodes", "NIC, trainers")


@dataclass(frozen=True)
class PathFigures:
    """One path's per-layer-token constants, as bench/service.py measured them."""

    source: str  # bench/service.py's path name(s)
    cpu_us: float  # frontend CPU per layer-token at the largest measured N, net of its quiet rate
    request_cpu_us: float  # frontend CPU of a one-token request (0: not measured)
    bytes: float  # bytes on the wire per layer-token, both ways together
    quiet: float  # the share of its core a frontend spends with nothing asked
    per_token_us: float = 0.0  # u(T) = per_token_us + per_call_us / T (see `fitted`)
    per_call_us: float = 0.0
    fit: str = ""  # how per_token_us and per_call_us were found


@dataclass(frozen=True)
class Measured:
    """bench/service.py's figures for one gradient method."""

    method: str
    tokens: int  # N, the tokens of a measured layer-call
    cpu_replica: float  # layer-tokens/s of one replica with the measuring machine's cores ("service, 1 replica")
    in_process: float  # layer-tokens/s in-process, for reference
    today: PathFigures
    new: PathFigures  # at a CPU replica's pace
    paced: PathFigures | None = None  # the new path at an H200's pace (None: not in the file)

    def at_pace_of(self, replica: str) -> Measured:
        """The new path's figures at the pace of the replicas planned for: an H200's when measured."""
        return replace(self, new=self.paced) if replica == "h200" and self.paced else self


@dataclass(frozen=True)
class Shape:
    replicas: int
    per_node: int  # replicas (GPUs) a node
    nic_gbps: float  # each node's NIC, the head's too, each way
    frontends_per_node: int  # K, frontend processes a node, one core each (new path; today: the head's one)
    trainer_ranks: int
    ranks_per_node: int
    trainer_tokens_per_s: float  # s
    quantum_layers: int  # L
    tokens_per_call: int  # T

    @property
    def nodes(self) -> int:
        return max(1, self.replicas // self.per_node)

    @property
    def trainer_nodes(self) -> int:
        return math.ceil(self.trainer_ranks / self.ranks_per_node)


def path_figures(row: dict, one_token_ms: dict, *names: str) -> PathFigures:
    """A method's row of bench/service.py --json -> the figures of the named path (of several: the larger)."""
    missing = [n for n in names if n not in row["bytes_per_token"]]
    assert not missing, f"no {missing} figures for {row['grad']}: is this bench/service.py --json's output?"
    cpu = max(names, key=lambda n: row["frontend_cpu_us_per_token"][n])
    return PathFigures(
        source=" / ".join(names),
        cpu_us=row["frontend_cpu_us_per_token"][cpu],
        request_cpu_us=1e3 * one_token_ms.get(cpu, 0.0),
        bytes=max(row["bytes_per_token"][n] for n in names),
        quiet=row["quiet_cpu_ms_per_s"][cpu] / 1e3,
    )


def fitted(by_n: dict[int, PathFigures]) -> PathFigures:
    """One path's figures at one or more call sizes N -> u(T) = a + b / T, the frontend CPU a
    layer-token with T tokens a layer-call: through the measured (1/N, u_N) by least squares when
    two or more N were measured; from one N, b = 2q (two requests a layer-call, each costing what
    a one-token request does). The other figures are the largest N's."""
    n = max(by_n)
    ref = by_n[n]
    if len(by_n) == 1:
        b, fit = 2 * ref.request_cpu_us, f"N = {n:,}, the per-call part a one-token request's CPU twice"
        return replace(ref, per_token_us=ref.cpu_us - b / n, per_call_us=b, fit=fit)
    xs, us = [1 / k for k in by_n], [p.cpu_us for p in by_n.values()]
    mx, mu = sum(xs) / len(xs), sum(us) / len(us)
    b = sum((x - mx) * (u - mu) for x, u in zip(xs, us)) / sum((x - mx) ** 2 for x in xs)
    fit = "fitted through N = " + ", ".join(f"{k:,}" for k in sorted(by_n))
    if b < 0:  # a call cannot cost less than nothing: the larger call's figure was the noisier
        b, fit = 0.0, fit + "; its per-call part came out below 0 (noise), taken as 0: a = the mean"
    return replace(ref, per_token_us=mu - b * mx, per_call_us=b, fit=fit)


def read_service_json(paths: str | list[str]) -> dict[str, Measured]:
    """bench/service.py --json's rows (one file or several, at different N) -> its figures by method."""
    rows: dict[str, dict[int, tuple[dict, dict]]] = {}
    for path in [paths] if isinstance(paths, str) else paths:
        with open(path) as f:
            lines = [json.loads(line) for line in f if line.startswith("{")]
        over = next((r for r in lines if "overhead_ms" in r), {})
        one_token_ms = over.get("service_cpu_ms_per_request", {})  # the one-token calls' server CPU a request
        for row in (r for r in lines if "grad" in r):
            rows.setdefault(row["grad"], {})[row["tokens"]] = (row, one_token_ms)
    out = {}
    for method, by_n in rows.items():
        row, _ = by_n[max(by_n)]
        per_token = 1 + Gradient(method).evaluations(SPEC)  # bench/service.py's token-circuits a token
        out[method] = Measured(
            method=method,
            tokens=row["tokens"],
            cpu_replica=row["token_circuits_per_s"][KEPT[0]] / per_token,
            in_process=row["token_circuits_per_s"]["in-process"] / per_token,
            today=fitted({n: path_figures(r, q, DENSE) for n, (r, q) in by_n.items()}),
            new=fitted({n: path_figures(r, q, *KEPT) for n, (r, q) in by_n.items()}),
            paced=fitted({n: path_figures(r, q, PACED) for n, (r, q) in by_n.items()})
            if all(PACED in r["bytes_per_token"] for r, _ in by_n.values())
            else None,
        )
    return out


def cpu_us_per_token(p: PathFigures, tokens_per_call: int) -> float:
    """u(T) = a + b / T: frontend CPU a layer-token with T tokens a layer-call (`fitted`)."""
    return max(0.0, p.per_token_us + p.per_call_us / tokens_per_call)


def caps(m: Measured, path: str, shape: Shape, replica_rate: float) -> dict[str, float | None]:
    """What each cap allows, in layer-tokens/s (None: not on this path)."""
    p = m.today if path == TODAY else m.new
    nic = shape.nic_gbps * 1e9 / 8  # bytes/s each way
    frontends = 1 if path == TODAY else shape.nodes * shape.frontends_per_node
    return {
        "replicas": shape.replicas * replica_rate,
        "frontend CPU": frontends * (1 - p.quiet) * 1e6 / cpu_us_per_token(p, shape.tokens_per_call),
        "NIC, head": nic / p.bytes if path == TODAY else None,
        "NIC, nodes": shape.nodes * nic / p.bytes,
        "NIC, trainers": shape.trainer_nodes * nic / p.bytes,
        "trainers": shape.trainer_ranks * shape.trainer_tokens_per_s * shape.quantum_layers,
    }


def binding(allowed: dict[str, float | None]) -> str:
    return min((k for k, v in allowed.items() if v is not None), key=lambda k: allowed[k])


def needs(m: Measured, path: str, shape: Shape, compute: float, asked: float) -> dict[str, float | None]:
    """What routing the replicas' whole compute (and what the trainers can use of it, `asked`)
    takes at a frontend's node (the head, today): its frontend processes and NIC Gb/s; with the
    given ones, the most frontend CPU and bytes a layer-token, and the fewest tokens a layer-call
    (None: no call is large enough)."""
    p = m.today if path == TODAY else m.new
    nodes = 1 if path == TODAY else shape.nodes
    node = compute / nodes  # layer-tokens/s a node
    k = 1 if path == TODAY else shape.frontends_per_node
    max_cpu = k * (1 - p.quiet) * 1e6 / node
    room = max_cpu - p.per_token_us  # a + b / T <= max_cpu  <=>  T >= b / (max_cpu - a)
    frontend_s = cpu_us_per_token(p, shape.tokens_per_call) / ((1 - p.quiet) * 1e6)  # a layer-token
    return {
        "frontends": node * frontend_s,
        "frontends_for_asked": asked / nodes * frontend_s,
        "nic_gbps": node * p.bytes * 8 / 1e9,
        "max_cpu_us_per_token": max_cpu,
        "max_bytes_per_token": shape.nic_gbps * 1e9 / 8 / node,
        "min_tokens_per_call": math.ceil(p.per_call_us / room) if room > 0 else None,
    }


def evaluate(m: Measured, shape: Shape, replica_rate: float) -> list[dict]:
    rows = []
    for path in (TODAY, NEW):
        allowed = caps(m, path, shape, replica_rate)
        binds = binding(allowed)
        routing = min(allowed[k] for k in ROUTING if allowed[k] is not None)
        asked = min(allowed["replicas"], allowed["trainers"])  # what the trainers can use of the compute
        rows.append(
            dict(
                method=m.method,
                replicas=shape.replicas,
                nodes=shape.nodes,
                path=path,
                caps=allowed,
                binds=binds,
                layer_tokens_per_s=allowed[binds],
                training_tokens_per_s=allowed[binds] / shape.quantum_layers,
                routing_holds=routing >= allowed["replicas"],  # no routing cap below the replicas' compute
                asked=asked,  # less than the compute when the replicas outpace the trainers
                routes_asked=routing >= asked,
                needs=needs(m, path, shape, allowed["replicas"], asked),
            )
        )
    return rows


def si(x: float | None) -> str:
    if x is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{suffix}"
    return f"{x:.3g}"


def format_table(rows: list[dict]) -> list[str]:
    names = list(rows[0]["caps"])
    head = f"{'method':<8}{'replicas':>8}{'nodes':>6}  {'path':<6}" + "".join(f"{n:>14}" for n in names)
    lines = [head + f"  {'binds':<14}{'routes all':>11}{'training tok/s':>15}"]
    for r in rows:
        cells = "".join(f"{si(r['caps'][n]):>14}" for n in names)
        routing = "yes" if r["routing_holds"] else "NO"
        lines.append(
            f"{r['method']:<8}{r['replicas']:>8}{r['nodes']:>6}  {r['path']:<6}{cells}  {r['binds']:<14}"
            f"{routing:>11}{si(r['training_tokens_per_s']):>15}"
        )
    return lines


def verdict(rows: list[dict], shape: Shape) -> str:
    """The goal, said plainly: the new path routes what the largest pool computes, no cap below it."""
    r = rows[-1]
    assert r["path"] == NEW and r["replicas"] == shape.replicas
    compute = r["caps"]["replicas"]
    low = min((k for k in ROUTING if r["caps"][k] is not None), key=lambda k: r["caps"][k])
    need = r["needs"]
    text = (
        f"{r['method']}, {r['replicas']} replicas, new path: the replicas compute {si(compute)} layer-tokens/s; "
        f"the lowest routing cap, {low}, allows {si(r['caps'][low])} ({r['caps'][low] / compute:.2f}x). "
    )
    text += "The goal HOLDS with these figures." if r["routing_holds"] else "The goal does NOT hold with these figures."
    least = need["min_tokens_per_call"]
    return text + (
        f" Routing all of it takes {need['frontends']:.3g} frontends and {need['nic_gbps']:.3g} Gb/s a node;"
        f" with the given {shape.frontends_per_node} frontends and {shape.nic_gbps:g} Gb/s, at most"
        f" {need['max_cpu_us_per_token']:.3g} us of frontend CPU and {need['max_bytes_per_token']:,.0f} B"
        " a layer-token, "
        + (f"so layer-calls of at least {least:,} tokens." if least else "which no size of layer-call reaches.")
        + f" The trainers ({shape.trainer_ranks} ranks) ask for {si(r['caps']['trainers'])} layer-tokens/s"
        + (
            f", {r['caps']['trainers'] / compute:.2f}x what the replicas compute: the routing caps allow"
            f" {r['caps'][low] / asked:.2f}x what the trainers can use, which "
            + ("they route" if r["routes_asked"] else "they do NOT route")
            + f" (it takes {need['frontends_for_asked']:.3g} frontends a node)."
            if (asked := r["asked"]) < compute
            else "."
        )
    )


def header(args, measured: dict[str, Measured], rates: dict[str, tuple[float, str]]) -> list[str]:
    """The inputs, named: what bench/service.py measured, the replicas' rates, the cluster's shape."""
    lines = ["# bench/capacity.py: the layer-tokens/s each cap allows (one token through one quantum layer, fwd + bwd)"]
    for m in (measured[k] for k in args.methods):
        lines.append(
            f"# {' '.join(args.service_json)}, {m.method} at N = {m.tokens:,}: frontend CPU {m.today.cpu_us:.1f} "
            f"us/token dense, {m.new.cpu_us:.1f} kept (quiet: {1e3 * m.new.quiet:.1f} ms/s); {m.today.bytes:,.0f} "
            f"B/token dense, {m.new.bytes:,.0f} kept; "
            f"a replica {m.cpu_replica:,.0f} tokens/s (in-process {m.in_process:,.0f})"
        )
        lines += [
            f"#   u(T) {name} ({p.source}): {p.per_token_us:.2f} + {p.per_call_us:,.0f} / T us a layer-token ({p.fit})"
            for name, p in (("dense", m.today), ("kept", m.new))
        ]
    lines += [f"# a replica, {m}: {rate:,.0f} layer-tokens/s ({source})" for m, (rate, source) in rates.items()]
    ranks = args.trainer_ranks or "as many as replicas"
    lines.append(
        f"# {args.per_node} replicas a node; NIC {args.nic_gbps:g} Gb/s a node, the head's too; "
        f"{args.frontends_per_node} frontends a node (the head's one, today); trainer ranks: {ranks}, "
        f"{args.trainer_ranks_per_node} a node, {args.trainer_tokens_per_s:,.0f} classical tokens/s each; "
        f"{args.quantum_layers} quantum layers a step; {args.tokens_per_call:,} tokens a layer-call"
    )
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--service-json",
        required=True,
        nargs="+",
        help="bench/service.py --json's output (files: at two or more --tokens, u(T) is fitted through them)",
    )
    p.add_argument("--methods", nargs="+", default=["fd", "adjoint"], choices=["fd", "adjoint", "shift"])
    p.add_argument("--replica", choices=["h200", "cpu"], default="h200", help="what a replica computes on")
    for method, (rate, source) in H200.items():
        p.add_argument(f"--h200-{method}", type=float, default=rate, help=f"layer-tokens/s ({source})")
    p.add_argument("--replicas", type=int, nargs="+", default=[1, 8, 64], help="pool sizes, one table row each")
    p.add_argument("--gpus-per-node", "--replicas-per-node", dest="per_node", type=int, default=8)
    p.add_argument("--nodes", type=int, help="one shape of this many full nodes (instead of --replicas)")
    p.add_argument("--nic-gbps", type=float, default=25.0, help="each node's NIC (the head's too), Gb/s each way")
    p.add_argument(
        "--frontends-per-node",
        type=int,
        default=8,
        help="K of `serve --per-node --frontends-per-node K`, one core each (default: one a GPU, 8 a node)",
    )
    p.add_argument("--trainer-ranks", type=int, help="trainer ranks (default: as many as replicas)")
    p.add_argument("--trainer-ranks-per-node", type=int, default=8)
    p.add_argument(
        "--trainer-tokens-per-s",
        type=float,
        default=TRAINER_TOKENS_PER_S[0],
        help=f"a rank's classical training tokens/s ({TRAINER_TOKENS_PER_S[1]})",
    )
    p.add_argument("--quantum-layers", type=int, default=12, help="quantum layers a step (150m, wq: 12)")
    p.add_argument("--tokens-per-call", type=int, default=4096, help="tokens of a layer-call (batch 8 x 512)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.frontends_per_node < 1:
        p.error(f"--frontends-per-node {args.frontends_per_node}: at least one frontend a node")
    args.sizes = [args.nodes * args.per_node] if args.nodes else sorted(set(args.replicas))
    for r in args.sizes:
        if r < 1 or (r > args.per_node and r % args.per_node):
            p.error(f"--replicas {r}: full nodes of --gpus-per-node {args.per_node}, or fewer than one node")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    measured = {k: m.at_pace_of(args.replica) for k, m in read_service_json(args.service_json).items()}
    missing = [m for m in args.methods if m not in measured]
    assert not missing, f"--methods {' '.join(missing)}: not in {args.service_json}"
    if args.replica == "h200":
        rates = {m: (getattr(args, f"h200_{m}"), H200[m][1]) for m in args.methods}
    else:
        rates = {
            m: (measured[m].cpu_replica, f"{' '.join(args.service_json)}: service, 1 replica") for m in args.methods
        }

    rows, verdicts = [], []
    for method in args.methods:
        for r in args.sizes:
            shape = Shape(
                replicas=r,
                per_node=args.per_node,
                nic_gbps=args.nic_gbps,
                frontends_per_node=args.frontends_per_node,
                trainer_ranks=args.trainer_ranks or r,
                ranks_per_node=args.trainer_ranks_per_node,
                trainer_tokens_per_s=args.trainer_tokens_per_s,
                quantum_layers=args.quantum_layers,
                tokens_per_call=args.tokens_per_call,
            )
            rows += evaluate(measured[method], shape, rates[method][0])
        text = verdict(rows, shape)
        verdicts.append(
            dict(
                method=method,
                replicas=shape.replicas,
                goal_holds=rows[-1]["routing_holds"],
                routes_asked=rows[-1]["routes_asked"],
                text=text,
            )
        )

    if args.json:
        inputs = {k: v for k, v in vars(args).items() if k != "json"}
        inputs.update(measured={k: asdict(measured[k]) for k in args.methods}, replica_layer_tokens_per_s=rates)
        for obj in (dict(inputs=inputs), *rows, *verdicts):
            print(json.dumps(obj))
        return 0
    for line in header(args, measured, rates) + format_table(rows):
        print(line)
    for v in verdicts:
        print(v["text"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
