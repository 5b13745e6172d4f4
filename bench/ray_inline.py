"""What a Ray call costs its caller, by the size of its bytes, inline or through the object store:
the measurement behind qworker/server/ray_pool.py's INLINE_BYTES.

    python bench/ray_inline.py                      # sizes 0.1-4 MB, 200 calls each, 3 rounds
    python bench/ray_inline.py --sizes 0.5 1 --calls 100

A driver calls an actor with one bytes argument of S and gets S/2 back (a work unit's request
and its answer), on a local Ray of its own, once with Ray's default (objects over 100 KiB go
through the node's object store: a put, a get) and once with every object inline in the call's
RPC. Printed: the caller's CPU a call (its process's CPU time: the Python thread and Ray's own
threads), the median over rounds, and inline / store. A frontend makes these calls; its CPU is
the cap bench/capacity.py plans with.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ALL_INLINE = 64 << 20


def measure(sizes: list[int], calls: int) -> tuple[dict[int, float], int]:
    """In this process (its Ray set by the environment): caller CPU ms a call, by size, and the
    bytes the object store took meanwhile (none when every call is inline)."""
    import logging

    import ray
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    def stored() -> int:
        state = get_state_from_address(ray.get_runtime_context().gcs_address)
        return get_memory_info_reply(state).store_stats.cumulative_created_bytes

    ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING, num_cpus=1)

    @ray.remote
    class Echo:
        def half(self, data: bytes) -> bytes:
            return data[: len(data) // 2]

    echo, out = Echo.remote(), {}
    before = stored()
    for size in sizes:
        data = b"x" * size
        ray.get([echo.half.remote(data) for _ in range(10)])  # warm
        start = time.process_time()  # every thread of this process, in ns (not the 10 ms ticks of os.times)
        for _ in range(calls):
            ray.get(echo.half.remote(data))
        out[size] = (time.process_time() - start) / calls * 1e3
    bytes_stored = stored() - before
    ray.shutdown()
    return out, bytes_stored


def run(inline: bool, sizes: list[int], calls: int) -> tuple[dict[int, float], int]:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_max_direct_call_object_size")}
    if inline:
        env["RAY_max_direct_call_object_size"] = str(ALL_INLINE)
    cmd = [sys.executable, __file__, "--child", "--calls", str(calls), "--sizes", *(str(s / 1e6) for s in sizes)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    cpu, stored = json.loads(done.stdout.splitlines()[-1])
    return {int(k): v for k, v in cpu.items()}, stored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", type=float, default=[0.1, 0.25, 0.5, 0.75, 1, 2, 4], help="MB an argument")
    p.add_argument("--calls", type=int, default=200, help="calls a size, a round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = [int(s * 1e6) for s in args.sizes]
    if args.child:
        print(json.dumps(measure(sizes, args.calls)))
        return 0
    rounds, stored = {False: [], True: []}, {False: [], True: []}
    for _ in range(args.rounds):  # interleaved: a drift of the machine hits both alike
        for inline in (False, True):
            cpu, nbytes = run(inline, sizes, args.calls)
            rounds[inline].append(cpu)
            stored[inline].append(nbytes)
    print(f"# Ray {__import__('ray').__version__}: the caller's CPU a call (ms), median of {args.rounds} rounds")
    print(f"# the object store took {max(stored[False]):,} B a round by default, {max(stored[True]):,} B inline")
    print(f"{'MB':>6} {'store':>8} {'inline':>8} {'inline/store':>13}")
    for size in sizes:
        store, inline = (statistics.median(r[size] for r in rounds[k]) for k in (False, True))
        print(f"{size / 1e6:6.2f} {store:8.3f} {inline:8.3f} {inline / store:13.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
