"""A replica at an H200's pace, for measuring the frontend at the pace the 64-GPU plan asks of it.

No GPU runs here, and a CPU replica answers a 4,096-token `fd` layer-call in seconds where an
H200 takes ~17 ms: a frontend serving CPU replicas goes idle between calls and pays each call
cold, one serving a GPU pays it warm (docs/performance.md, "At an H200's pace"). `PacedBackend` is
the `local` simulator answering as fast as the H200 measured in docs/performance.md
(bench/capacity.py's `H200`): each distinct call is computed once, for real, and its exact
result replayed for the same inputs, after the seconds the H200 would take, with the CPU idle
meanwhile, as a replica waiting on its GPU is. Only bench/service.py's "H200 pace" path uses it,
for the frontend's CPU; the replica's own throughput there is the pace, not a measurement.

    folder = install(tmp)       # its entry point; a server with PYTHONPATH=folder serves `paced`
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from pathlib import Path

from capacity import H200, SPEC

from qworker import Gradient
from qworker.backends.local import LocalBackend

MEMO_CALLS = 256  # distinct calls whose results a replica keeps (a bench repeats a few)
ROWS_PER_S = H200["fd"][0] * (1 + Gradient("fd").evaluations(SPEC))  # circuits (rows) an H200 evaluates a second
ADJOINT_S_PER_TOKEN = 1 / H200["adjoint"][0] - 1 / ROWS_PER_S  # an adjoint VJP, less its forward row


def _key(*parts) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(p.detach().cpu().contiguous().numpy().tobytes() if hasattr(p, "numpy") else repr(p).encode())
    return h.digest()


def _rows_seconds(z) -> float:
    return z.shape[0] / ROWS_PER_S


class PacedBackend(LocalBackend):
    """`local`'s exact results, answered after the seconds an H200 takes (rows / ROWS_PER_S; an
    adjoint VJP, tokens x ADJOINT_S_PER_TOKEN); a call seen before is replayed, not recomputed."""

    name = "paced"

    def __init__(self):
        super().__init__()
        self._memo: OrderedDict[bytes, object] = OrderedDict()
        self._lock = threading.Lock()  # one instance serves a process's threads (thread_safe)

    def _paced(self, key: bytes, seconds_of, compute):
        start = time.perf_counter()
        with self._lock:
            out = self._memo.get(key)
            if out is not None:
                self._memo.move_to_end(key)
        if out is None:
            out = compute()
            with self._lock:
                self._memo[key] = out
                if len(self._memo) > MEMO_CALLS:
                    self._memo.popitem(last=False)
        time.sleep(max(0.0, seconds_of(out) - (time.perf_counter() - start)))
        return out

    def expectations(self, spec, theta, angles):
        compute = lambda: super(PacedBackend, self).expectations(spec, theta, angles)  # noqa: E731
        return self._paced(_key("z", spec, theta, angles), _rows_seconds, compute)

    def evaluate_shifts(self, spec, shifts):
        compute = lambda: super(PacedBackend, self).evaluate_shifts(spec, shifts)  # noqa: E731
        key = _key("shifts", spec, shifts.theta, shifts.angles, shifts.step, shifts.components, shifts.base)
        return self._paced(key, _rows_seconds, compute)

    def _adjoint_vjp(self, spec, theta, angles, grad_out):
        compute = lambda: super(PacedBackend, self)._adjoint_vjp(spec, theta, angles, grad_out)  # noqa: E731
        seconds = lambda _: angles.shape[0] * ADJOINT_S_PER_TOKEN  # noqa: E731
        return self._paced(_key("vjp", spec, theta, angles, grad_out), seconds, compute)


def install(folder: Path) -> Path:
    """An entry point for `paced` in `folder` (a dist-info), with this directory: put the returned
    path on a server's PYTHONPATH."""
    info = Path(folder) / "hyqut_bench_paced-1.0.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hyqut-bench-paced\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hyqut.backends]\npaced = paced:PacedBackend\n")
    return Path(folder)
