"""Benchmark of the quantum circuit simulators against PennyLane, measured in the same run.

What it measures, for the default circuit (`CircuitSpec()`: 10 qubits, 2 layers, ring; docs/design.md, "The circuit"):
token-circuits per second of each backend (`local`, `qulacs`, `shots` with 1024 shots) in two
modes, `forward` (expectations, no autograd graph) and `forward+grad` (expectations, then the VJP
of sum(expectations * g) for a random g, with respect to theta and the input angles) by every
gradient method the backend supports (docs/design.md, "Gradients"), each through `Backend.apply` and
autograd's backward, as the model's quantum layer (trainer/model/quantum_linear.py) runs them.
The peer is PennyLane's `qml.qnn.TorchLayer` on `default.qubit` (diff_method="backprop", the
batch as one broadcast input of shape (N, 20)), checked against `qworker.expectations` first.
`local-torch` is `local` with its fused CUDA kernels off (`fused.ENABLED = False`): on CUDA,
the torch path they replace, measured in the same run (`--device cuda --backends local
local-torch`: before and after); on the CPU, where the kernels never run, the same as `local`.

    python bench/vqc.py                   # the table; N = 4096 and 16384 (takes several minutes)
    python bench/vqc.py --json            # one JSON object per row on stdout, nothing else
    python bench/vqc.py --quick --json    # N = 512, 1 repeat, 3 s budget: a smoke run (~40 s)
    python bench/vqc.py --plot vqc.png    # also a bar chart of circuits/s per N
    python bench/vqc.py --contended       # each cell also beside a busy competing process

How: every cell runs in a fresh process, its memory capped at half of what is available. It warms
up on a few tokens, then times probes of growing size from `--probe-tokens` tokens; their time,
scaled to N, decides whether the cell fits `--budget-s` (if not, the row says `skipped`, with the
estimate). Repeats stop early when the next would overrun the budget or one took over 20 s.
`seconds` is the median over the repeats; `peak_mb` is the rise of the process's peak RSS over its
RSS just before the measured calls (Linux, glibc: malloc_trim returns freed memory first, and
/proc/self/clear_refs resets the peak); a cell that outgrows the memory cap is `skipped` too.
A gradient cell's work is what a training step asks of a quantum layer: `backend.start` (the
forward, and with shift, fd or spsa the whole Jacobian batch in the same call) then
`Pending.vjp`. `forward_passes` is that time over the same backend's forward on the same tokens,
timed right after it in the same process (processes differ by up to 2x on a shared VM): the cost
of a full Jacobian in forward-pass equivalents. Evaluating every shifted circuit costs
1 + 2·(|Θ| + 2·n_q) = 121 for `shift` and `fd` (and 1 + 2·samples = 17 for `spsa`): the
`forward_pass_bound` field; `local` evaluates a shifted batch by its structure, for less.

`--contended` measures every cell a second time beside a competing process that keeps all cores
busy with torch matrix products (what a replica meets beside a trainer's other ranks):
`contended_circuits_per_s` and `contended_vs_quiet` (a fair share on 2 cores is 0.5). Cells run
with OpenMP's passive waiting and all cores as threads, as trainers and replicas do
(trainer/run/threads.py); set OMP_WAIT_POLICY=ACTIVE to see the spinning default.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from multiprocessing import get_context
from multiprocessing.context import BaseContext
from resource import RLIMIT_DATA, getrlimit, setrlimit
from typing import TextIO

from trainer.run.threads import share_cores

share_cores()  # before torch loads OpenMP: every cell's process inherits it

import psutil
import torch
from torch import Tensor, nn

import qworker
from qworker import Backend, CircuitSpec, Gradient, get_backend
from qworker.backends import fused
from qworker.gradients import names as method_names

PEER = "pennylane"
BACKENDS = ("local", "qulacs", "shots")
CHOICES = (*BACKENDS, "local-torch")  # local-torch: `local` without its fused CUDA kernels (the baseline)
SHOTS = {"shots": 1024, "seed": 0}
BOUNDED = ("shift", "fd", "spsa")  # methods whose cost in forward passes docs/design.md fixes
WARMUP_TOKENS = 8
PROBE_S = 0.5  # a probe this long is taken to scale linearly to N
SLOW_CELL_S = 20.0  # a call this long is not repeated
MEMORY_FRACTION = 0.5  # a cell's cap, of the memory available when it starts: leave room to others
PARITY_TOKENS = 16
PARITY_TOL = 1e-4
QUICK = {"n": [512], "repeats": 1, "budget_s": 3.0, "peer_budget_s": 3.0, "probe_tokens": 64}
FIELDS = (
    "backend",
    "method",
    "mode",
    "n_tokens",
    "status",
    "circuits_per_s",
    "seconds",
    "repeats",
    "peak_mb",
    "ratio_vs_peer",
    "forward_passes",
    "forward_pass_bound",
    "contended_circuits_per_s",
    "contended_vs_quiet",
    "estimated_s",
    "note",
)
COMPETITOR = """
import torch
torch.set_num_threads({threads})
a = torch.randn(384, 384)
while True:
    a = torch.tanh(a @ a)
"""


@dataclass(frozen=True)
class Cell:
    """One measurement: a backend (or the peer), a gradient method (None: forward only), N."""

    backend: str
    method: str | None
    n_tokens: int
    device: str = "cpu"

    @property
    def mode(self) -> str:
        return "forward" if self.method is None else "forward+grad"

    def describe(self) -> dict:
        return {"backend": self.backend, "method": self.method, "mode": self.mode, "n_tokens": self.n_tokens}


def make_backend(name: str) -> Backend:
    """The backend of a cell (`local-torch` is `local`; `_work` turns its kernels off)."""
    if name == "local-torch":
        return get_backend("local")
    return get_backend(name, **SHOTS) if name == "shots" else get_backend(name)


def cells(n_tokens: int, args: argparse.Namespace, peer: bool) -> list[Cell]:
    """The peer first (every ratio needs it; if installed), then each backend's forward and its
    gradients (those of `args.methods`)."""
    out = [Cell(PEER, None, n_tokens), Cell(PEER, "backprop", n_tokens)] if peer and args.device == "cpu" else []
    for name in args.backends:
        methods = [None, *make_backend(name).methods]
        out += [Cell(name, m, n_tokens, args.device) for m in methods if (m or "forward") in args.methods]
    return out


def inputs(spec: CircuitSpec, n_tokens: int, device: str = "cpu") -> tuple[Tensor, Tensor, Tensor]:
    """Fixed-seed float32 theta (|Θ|,) and angles (N, 2n_q), uniform in (-π, π); g (N, n_q)."""
    gen = torch.Generator().manual_seed(0)
    theta = (torch.rand(spec.n_params, generator=gen) * 2 - 1) * math.pi
    angles = (torch.rand(n_tokens, spec.n_angles, generator=gen) * 2 - 1) * math.pi
    g = torch.randn(n_tokens, spec.n_qubits, generator=gen)
    return theta.to(device), angles.to(device), g.to(device)


def peer_layer(spec: CircuitSpec, theta: Tensor) -> nn.Module:
    """PennyLane's TorchLayer for the default circuit, written from docs/design.md ("The circuit") rather than from
    `spec.ops`, so the parity check also checks our circuit builder. Weights are set to theta."""
    import pennylane as qml

    assert spec.entangler == "ring", "the peer is written for the ring entangler"
    n = spec.n_qubits

    @qml.qnode(qml.device("default.qubit", wires=n), interface="torch", diff_method="backprop")
    def circuit(inputs, weights):
        for q in range(n):
            qml.Hadamard(wires=q)
        for q in range(n):
            qml.RY(inputs[..., 2 * q], wires=q)
            qml.RZ(inputs[..., 2 * q + 1], wires=q)
        for layer in range(spec.n_layers):
            for q in range(n):
                qml.CNOT(wires=(q, (q + 1) % n))
            for offset, gate in ((0, qml.RZ), (n, qml.RY)):
                for q in range(n):
                    gate(weights[2 * n * layer + offset + q], wires=q)
        return [qml.expval(qml.PauliZ(q)) for q in range(n)]

    layer = qml.qnn.TorchLayer(circuit, {"weights": (spec.n_params,)})
    with torch.no_grad():
        layer.weights.copy_(theta)
    return layer


def check_peer(spec: CircuitSpec) -> float:
    """Max |peer - qworker.expectations| on a few tokens; exits if the peer computes another function."""
    theta, angles, _ = inputs(spec, PARITY_TOKENS)
    with torch.no_grad():
        diff = (peer_layer(spec, theta)(angles) - qworker.expectations(spec, theta, angles)).abs().max().item()
    if not diff < PARITY_TOL:
        sys.exit(
            f"bench/vqc.py: the PennyLane peer does not compute our circuit: max |difference| = {diff:.3g} "
            f"on {PARITY_TOKENS} tokens (tolerance {PARITY_TOL}); fix peer_layer before comparing speeds"
        )
    return diff


def make_call(cell: Cell, n_tokens: int) -> Callable[[], object]:
    """The measured work of `cell` on n_tokens tokens (finished: on CUDA, synchronised); inputs
    are built here, outside it."""
    work = _work(cell, n_tokens)
    if cell.device == "cpu":
        return work
    return lambda: (work(), torch.cuda.synchronize())


def _work(cell: Cell, n_tokens: int) -> Callable[[], object]:
    fused.ENABLED = cell.backend != "local-torch"  # each cell runs in a process of its own
    spec = CircuitSpec()
    theta, angles, g = inputs(spec, n_tokens, cell.device)
    if cell.backend == PEER:
        layer = peer_layer(spec, theta)
        if cell.method is None:
            return torch.no_grad()(lambda: layer(angles))
        return lambda: layer(angles.detach().requires_grad_()).backward(g)
    backend = make_backend(cell.backend)
    if cell.method is None:
        return torch.no_grad()(lambda: backend.expectations(spec, theta, angles))
    grad = Gradient(cell.method, seed=0)

    def step() -> None:  # the model's path: the circuit in autograd's graph (Backend.apply), then backward
        t, a = theta.detach().requires_grad_(), angles.detach().requires_grad_()
        backend.apply(spec, t, a, grad).backward(g)

    return step


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def timed(
    call: Callable[[], object], repeats: int, budget_s: float = math.inf, cuda: bool = False
) -> tuple[list[float], float]:
    """Seconds of up to `repeats` calls (fewer when the next would overrun budget_s or one took
    over SLOW_CELL_S), and the rise of peak memory over the memory before them, in MB: the
    process's RSS on the CPU, torch's allocations on CUDA."""
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**10
    else:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the OS: the baseline is what is live
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS
        before = _status_kb("VmRSS")
    times: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if times[-1] > SLOW_CELL_S or sum(times) + times[-1] > budget_s:
            break
    peak = torch.cuda.max_memory_allocated() / 2**10 if cuda else _status_kb("VmHWM")
    return times, (peak - before) / 1024


def estimate_s(cell: Cell, tokens: int) -> float:
    """Seconds `cell` should take, scaled from probes growing x4 from `tokens` while one is under
    PROBE_S and stays within N/4: tiny probes overstate the cost of the batched simulators."""
    tokens = min(tokens, cell.n_tokens)
    while True:
        (seconds,), _ = timed(make_call(cell, tokens), 1)
        if seconds >= PROBE_S or 16 * tokens > cell.n_tokens:
            return seconds * cell.n_tokens / tokens
        tokens *= 4


def cap_memory() -> float:
    """Cap this process's data at MEMORY_FRACTION of the available memory, so that a cell that
    would exhaust the machine fails to allocate instead; returns the cap's headroom in GiB."""
    headroom = MEMORY_FRACTION * psutil.virtual_memory().available
    limit = _status_kb("VmData") * 1024 + int(headroom)
    setrlimit(RLIMIT_DATA, (limit, getrlimit(RLIMIT_DATA)[1]))  # the soft limit: raisable again
    return headroom / 2**30


def measure(cell: Cell, repeats: int, budget_s: float, must_run: bool, probe_tokens: int) -> dict:
    """Run in a fresh process: warm up, probe, then measure `cell` or say why it is skipped."""
    row, cuda = cell.describe(), cell.device == "cuda"
    headroom_gib = torch.cuda.mem_get_info()[0] / 2**30 if cuda else cap_memory()  # (a data cap breaks CUDA)
    try:
        make_call(cell, WARMUP_TOKENS)()  # lazy imports, compiled circuit programs, thread pools
        seconds = row["estimated_s"] = round(estimate_s(cell, probe_tokens), 2)
        if seconds > budget_s and not must_run:
            return {**row, "status": "skipped", "note": f"estimated {seconds:.3g} s > {budget_s:.3g} s budget"}
        times, peak_mb = timed(make_call(cell, cell.n_tokens), repeats, budget_s, cuda)
        if cell.method is not None:  # the forward alone, in this same process: forward_passes
            forward_cell = Cell(cell.backend, None, cell.n_tokens, cell.device)
            forward, _ = timed(make_call(forward_cell, cell.n_tokens), len(times), cuda=cuda)
            row["forward_passes"] = round(statistics.median(times) / statistics.median(forward), 2)
    except (MemoryError, RuntimeError) as exc:
        if not (isinstance(exc, MemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc)):
            raise
        return {**row, "status": "skipped", "note": f"out of memory under a {headroom_gib:.1f} GiB cap"}
    row.update(status="ok", seconds=statistics.median(times), repeats=len(times), peak_mb=round(peak_mb))
    return row


def worker_context() -> BaseContext:
    """Processes forked from a server that has imported this script, torch, PennyLane and Qulacs
    but computed nothing: every cell starts clean without paying seconds of imports again."""
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload([__name__, *(m for m in ("pennylane", "qulacs") if importable(m))])
    return ctx


def importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_cell(ctx: BaseContext, cell: Cell, args: argparse.Namespace) -> dict:
    """`measure` in a fresh process, so cells share no allocator state, caches or thread pools."""
    budget_s, must_run = cell_budget(cell, args)
    try:
        with ProcessPoolExecutor(1, mp_context=ctx) as pool:
            return pool.submit(measure, cell, args.repeats, budget_s, must_run, args.probe_tokens).result()
    except Exception as exc:  # a dead worker (out of memory) or a failing backend: report, go on
        return {**cell.describe(), "status": "error", "note": f"{type(exc).__name__}: {exc}"}


@contextmanager
def competing():
    """A process keeping every core busy with torch matrix products, for the block's duration."""
    code = COMPETITOR.format(threads=os.cpu_count() or 1)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1.0)  # its threads are up and busy
        yield
    finally:
        proc.kill()
        proc.wait()


def with_contended(ctx: BaseContext, cell: Cell, row: dict, args: argparse.Namespace) -> dict:
    """`row` (the quiet measurement) with the same cell measured beside a competing process."""
    if row["status"] != "ok":
        return row
    with competing():
        busy = run_cell(ctx, cell, args)
    if busy.get("status") == "ok":
        row["contended_circuits_per_s"] = round(busy["n_tokens"] / busy["seconds"], 1)
        row["contended_vs_quiet"] = round(row["seconds"] / busy["seconds"], 3)
    else:
        row["note"] = f"contended: {busy.get('status')}: {busy.get('note')}"
    return row


def cell_budget(cell: Cell, args: argparse.Namespace) -> tuple[float, bool]:
    """(budget, must_run): the peer is the reference, so it always runs at the smallest N."""
    if cell.backend != PEER:
        return args.budget_s, False
    if cell.n_tokens == min(args.n):
        return args.budget_s, True
    return args.peer_budget_s, False


def complete(row: dict, peer_rate: dict, spec: CircuitSpec) -> dict:
    """Add the derived figures; peer_rate (by mode) is filled in as the rows of one N arrive."""
    ok = row["status"] == "ok"
    rate = row["n_tokens"] / row["seconds"] if ok else None
    row["circuits_per_s"] = None if rate is None else round(rate, 1)
    if row["backend"] == PEER:
        peer_rate[row["mode"]] = rate
    peer = peer_rate.get(row["mode"])
    row["ratio_vs_peer"] = round(rate / peer, 3) if rate and peer else None
    row["forward_pass_bound"] = Gradient(row["method"]).evaluations(spec) if row["method"] in BOUNDED else None
    row["seconds"] = round(row["seconds"], 4) if ok else None
    return {field: row.get(field) for field in FIELDS}


TABLE = (
    ("backend", 9),
    ("method", 8),
    ("mode", 12),
    ("N", 6),
    ("circuits/s", 11),
    ("seconds", 9),
    ("reps", 4),
    ("peak MB", 8),
    ("vs peer", 9),
    ("fwd passes", 14),
    ("contended", 18),
)


def table_line(row: dict) -> str:
    cells = [row["backend"], row["method"] or "-", row["mode"], str(row["n_tokens"])]
    if row["status"] != "ok":
        return _join(cells) + f"  {row['status']}: {row['note']}"
    passes = "" if row["forward_passes"] is None else f"{row['forward_passes']:.1f}"
    if row["forward_pass_bound"] is not None:
        passes += f" (<= {row['forward_pass_bound']})"
    ratio = "" if row["ratio_vs_peer"] is None else f"{row['ratio_vs_peer']:.3g}x"
    busy = row["contended_circuits_per_s"]
    busy = "" if busy is None else f"{busy:,.0f} ({row['contended_vs_quiet']:.2f}x)"
    cells += [f"{row['circuits_per_s']:,.0f}", f"{row['seconds']:.4f}", str(row["repeats"]), f"{row['peak_mb']:.0f}"]
    return _join(cells + [ratio, passes, busy])


def _join(cells: list[str]) -> str:
    return "  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, (_, w)) in enumerate(zip(cells, TABLE))).rstrip()


def header(spec: CircuitSpec, parity: float | None, args: argparse.Namespace) -> list[str]:
    versions = "  ".join(
        f"{m} {importlib.import_module(m).__version__}" for m in ("pennylane", "qulacs") if importable(m)
    )
    device = torch.cuda.get_device_name(0) if args.device == "cuda" else f"cpus={os.cpu_count()}"
    peer = (
        f"# peer: PennyLane TorchLayer, default.qubit, backprop; max |peer - qworker| = {parity:.1e} on "
        f"{PARITY_TOKENS} tokens"
        if parity is not None
        else "# peer: none (PennyLane is not installed, or the device is not the CPU): no ratios"
    )
    return [
        f"# bench/vqc.py  {datetime.now().astimezone():%Y-%m-%d %H:%M %Z}  {device} "
        f"(load {os.getloadavg()[0]:.1f})  "
        f"torch {torch.__version__} (threads={torch.get_num_threads()}, OMP_WAIT_POLICY="
        f"{os.environ.get('OMP_WAIT_POLICY')})  {versions}",
        f"# circuit: {spec.n_qubits} qubits, {spec.n_layers} layers, {spec.entangler}, {spec.n_gates} gates, "
        f"|Θ|={spec.n_params}; float32; shots backend: {SHOTS['shots']} shots",
        peer,
        f"# budget {args.budget_s:g} s a cell (peer: always at N={min(args.n)}, {args.peer_budget_s:g} s above), "
        f"up to {args.repeats} repeats, median reported; a fresh process a cell, its memory capped at "
        f"{MEMORY_FRACTION:.0%} of the available",
    ]


def plot(rows: list[dict], path: str) -> None:
    """A PNG bar chart of circuits/s (log scale) by backend and method, one panel per N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    colors = {"forward": "tab:blue", "forward+grad": "tab:orange"}
    sizes = sorted({r["n_tokens"] for r in rows})
    fig, axes = plt.subplots(len(sizes), 1, figsize=(12, 3.5 * len(sizes)), squeeze=False)
    for ax, n in zip(axes[:, 0], sizes):
        done = [r for r in rows if r["n_tokens"] == n and r["status"] == "ok"]
        ax.bar(range(len(done)), [r["circuits_per_s"] for r in done], color=[colors[r["mode"]] for r in done])
        ax.set_xticks(range(len(done)), [f"{r['backend']}\n{r['method'] or 'fwd'}" for r in done], fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("token-circuits / s")
        ax.set_title(f"N = {n} tokens (skipped cells not shown)")
    axes[0, 0].legend(handles=[Patch(color=c, label=m) for m, c in colors.items()])
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[4096, 16384], help="tokens per call (default 4096 16384)")
    p.add_argument("--repeats", type=int, default=3, help="repeats of a fast cell; median reported (default 3)")
    p.add_argument("--budget-s", type=float, default=60.0, help="skip a cell estimated to take longer (default 60)")
    p.add_argument("--peer-budget-s", type=float, default=300.0, help="the same for the peer above the smallest N")
    p.add_argument("--probe-tokens", type=int, default=256, help="tokens of the probe that estimates a cell (256)")
    p.add_argument("--json", action="store_true", help="one JSON object per row on stdout, the header on stderr")
    p.add_argument("--quick", action="store_true", help="N=512, 1 repeat, 3 s budget, 64-token probe: a smoke run")
    p.add_argument("--plot", metavar="PATH", help="also write a PNG bar chart of circuits/s")
    p.add_argument("--contended", action="store_true", help="each cell also beside a busy competing process")
    p.add_argument(
        "--backends", nargs="+", default=list(BACKENDS), choices=CHOICES, help="(default: all but local-torch)"
    )
    p.add_argument("--methods", nargs="+", default=["forward", *method_names()], help="forward and gradient methods")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where `local` runs (others: cpu)")
    args = p.parse_args(argv)
    if args.quick:
        vars(args).update(QUICK)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec = CircuitSpec()
    info: TextIO = sys.stderr if args.json else sys.stdout
    peer = importable("pennylane") and args.device == "cpu"
    print("\n".join(header(spec, check_peer(spec) if peer else None, args)), file=info, flush=True)
    if not args.json:
        print(_join([name for name, _ in TABLE]), flush=True)
    ctx, rows, start = worker_context(), [], time.perf_counter()
    for n in args.n:
        peer_rate: dict = {}
        for cell in cells(n, args, peer):
            row = run_cell(ctx, cell, args)
            if args.contended and cell.backend != PEER:
                row = with_contended(ctx, cell, row, args)
            row = complete(row, peer_rate, spec)
            print(json.dumps(row) if args.json else table_line(row), flush=True)
            rows.append(row)
    print(f"# {time.perf_counter() - start:.0f} s in all; load now {os.getloadavg()[0]:.1f}", file=info)
    if args.plot:
        plot(rows, args.plot)
    return 1 if any(r["status"] == "error" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
