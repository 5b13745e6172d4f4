"""The client of a qworker service (docs/design.md, "The client").

| module | what |
|---|---|
| `remote.py` | `RemoteBackend`: the `grpc://host:port` backend; shards, gradients started with the forward |
| `connection.py` | a channel with token, TLS, deadlines and retries of UNAVAILABLE; the call errors |
"""

from qworker.client.connection import Connection, RemoteError, RemoteInvalidArgument, admin_call
from qworker.client.remote import RemoteBackend

__all__ = ["Connection", "RemoteBackend", "RemoteError", "RemoteInvalidArgument", "admin_call"]
