"""Where a client's calls go: one server, or several frontends that gRPC spreads the calls over
(docs/design.md, "The client").

    parse("10.0.0.5:50051")                     # one server: the channel target "10.0.0.5:50051"
    parse("10.0.0.5:50051,10.0.0.6:50051")      # a list: "ipv4:10.0.0.5:50051,10.0.0.6:50051", round_robin
    parse("qworker.internal:50051")             # a name with several addresses: "dns:///qworker.internal:50051"

A list, or a name that resolves to several addresses of one family, is spread: its channel uses
gRPC's own round_robin policy with health checks (a frontend that is NOT_SERVING, e.g. while its
node's replicas restart, is passed over), and a call that must reach one frontend (the backward of
kept Jacobians) goes to the address that frontend gave, if it is one of the target's own. A name
with one address, or an IP address, is one server: exactly the channel of before.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from dataclasses import dataclass

from qworker.protocol.wire import qworker_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["QWorker"].full_name  # whose health the channel checks
SPREAD_CONFIG = json.dumps(
    {"loadBalancingConfig": [{"round_robin": {}}], "healthCheckConfig": {"serviceName": SERVICE}}
)


@dataclass(frozen=True)
class Target:
    """A parsed `host:port[,host:port...]`: `channel` is what grpc's channels take; `spread` whether
    it names several frontends; `name` the host name of a DNS target. With TLS, a spread target's
    certificates are checked against `tls_name`: a DNS target's name (also for the channels to its
    single frontends), or a list's first host (frontends sharing one certificate that names them all)."""

    given: str  # as written (it names the target in messages)
    channel: str
    spread: bool = False
    name: str | None = None
    _members: frozenset[str] = frozenset()  # the frontends' host:port, as resolved when parsed

    @property
    def tls_name(self) -> str | None:
        if not self.spread:
            return None
        return self.name or split_host_port(self.given.split(",")[0])[0]

    def owns(self, address: str, resolve=socket.getaddrinfo) -> bool:
        """Whether `address` (host:port, from a server's answer) is one of this target's frontends:
        only those get the client's token. A DNS target's name is resolved again for a new one."""
        if address in self._members:
            return True
        if self.name is None:
            return False
        port = int(self.given.rsplit(":", 1)[1])
        return address in _addresses(self.name, port, resolve)


def parse(netloc: str, resolve=socket.getaddrinfo) -> Target:
    """The target of `host:port` or `host:port,host:port,...`; ValueError for a malformed one."""
    parts = [split_host_port(p) for p in netloc.split(",")]
    if len(parts) == 1:
        host, port = parts[0]
        if _literal(host):
            return Target(netloc, netloc)
        found = _addresses(host, port, resolve)
        if len(found) <= 1:  # one server, or a name that does not resolve yet: the channel of before
            return Target(netloc, netloc)
        return Target(netloc, f"dns:///{host}:{port}", True, host, frozenset(found))
    resolved = [
        _join(host, port) if _literal(host) else next(iter(_addresses(host, port, resolve)), "") for host, port in parts
    ]
    if not all(resolved):
        unknown = [f"{h}:{p}" for (h, p), r in zip(parts, resolved) if not r]
        raise ValueError(f"bad qworker address list {netloc!r}: {', '.join(unknown)} does not resolve")
    families = {"ipv6" if r.startswith("[") else "ipv4" for r in resolved}
    if len(families) > 1:
        raise ValueError(f"bad qworker address list {netloc!r}: give addresses of one family (IPv4 or IPv6)")
    return Target(
        netloc, f"{families.pop()}:{','.join(resolved)}", True, None, frozenset(resolved) | set(netloc.split(","))
    )


def split_host_port(text: str) -> tuple[str, int]:
    """("host", port) of `host:port` or `[v6]:port`; ValueError otherwise."""
    host, colon, port = text.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536) or "," in host:
        raise ValueError(f"bad qworker address {text!r}: expected host:port")
    return host, int(port)


def _literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(host: str, port: int, resolve) -> list[str]:
    """The distinct addresses `host` resolves to, in the family of its first one ([] if none):
    `localhost`, which is 127.0.0.1 and ::1, stays one server."""
    try:
        infos = resolve(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return []
    if not infos:
        return []
    family = infos[0][0]
    return list(dict.fromkeys(_join(info[4][0], port) for info in infos if info[0] == family))
