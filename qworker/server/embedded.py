"""A qworker service inside this process, on a local Ray pool: what `--qbackend ray` starts.

    address = local_service(replicas=2)     # "grpc://127.0.0.1:PORT", started once per process

The whole distributed path on one machine: the service on 127.0.0.1 and its replica processes on
$RAY_ADDRESS's Ray, or on a local Ray started here; stopped at exit.
"""

from __future__ import annotations

import atexit

from qworker.server.ray_pool import WARMUP_TIMEOUT_S
from qworker.server.service import ServerConfig, create_server

_services: dict[int, str] = {}


def local_service(replicas: int = 1) -> str:
    """The address of this process's service with `replicas` replicas, started on first use."""
    if replicas not in _services:
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
