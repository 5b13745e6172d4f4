"""Faults a test can arm in a running frontend, to check what the service promises when a process
dies at the worst moment (tests/test_cluster.py; docs/design.md, "Failure semantics").

They are armed only through the frontend's Ray actor (`FrontendActor.inject_fault`, reachable with
Ray's cluster token, never through the gRPC contract), and each fires once:

- `kill-keeper`: the replicas that keep the next keep_jacobians request's Jacobians are SIGKILLed
  as soon as those are kept, ahead of any VJP of its handle, so its backward finds them gone;
- `exit-on-handle`: the frontend's process exits (SIGKILL) when the next request with a handle
  arrives, so that backward call loses its frontend mid-call.
"""

from __future__ import annotations

import os
import signal

FAULTS = ("kill-keeper", "exit-on-handle")


class Faults:
    """Armed faults by name, each firing once (`due`)."""

    def __init__(self):
        self._armed: set[str] = set()

    def arm(self, name: str) -> None:
        if name not in FAULTS:
            raise ValueError(f"unknown fault {name!r}; choose one of {', '.join(FAULTS)}")
        self._armed.add(name)

    def due(self, name: str) -> bool:
        """Whether `name` is armed; it is disarmed by this answer."""
        if name in self._armed:
            self._armed.discard(name)
            return True
        return False


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
