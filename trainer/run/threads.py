"""CPU threads for a process that shares its cores: set before torch loads OpenMP.

OpenMP's idle threads spin by default; with another busy process on the same cores (the other
ranks of a trainer, a replica beside it) they fight for the cores and a simulator's speed falls
tenfold (bench/vqc.py --contended). `OMP_WAIT_POLICY=PASSIVE` makes them sleep. This module
imports nothing heavy, so an entry point can call it before anything imports torch.
"""

from __future__ import annotations

import os


def share_cores(processes: int = 1) -> int:
    """Passive OpenMP waiting, and this process's share of the cores as its thread count (unless
    the environment already says): cores // processes, at least 1. Returns the thread count."""
    threads = max(1, (os.cpu_count() or 1) // max(1, processes))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    return int(os.environ["OMP_NUM_THREADS"])
