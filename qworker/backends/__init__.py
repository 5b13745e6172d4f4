"""Where circuits run: simulators and hardware adapters behind one interface.

| module | backend | what |
|---|---|---|
| `base.py` | | the interface: `Backend`, `Capabilities`, `Pending` |
| `registry.py` | | names -> backends: the built-ins and the `hyqut.backends` entry points |
| `local.py` | `local` | the batched torch statevector simulator (CPU, CUDA), adjoint by autograd |
| `fused.py` | | `local`'s fused CUDA kernels: what they cover, their autograd, their launches |
| `fused_kernels.py` | | those Triton kernels (imported on first use, where triton is) |
| `qulacs_sim.py` | `qulacs` | Qulacs, token by token: the reference |
| `auto.py` | `auto` | Qulacs for a few tokens, `local` above |
| `shots.py` | `shots` | finite shots with noise: the stand-in for hardware |
| `qiskit_adapter.py` | `qiskit` | any Qiskit Estimator V2 (a plug-in, loaded by its entry point) |
| `braket_adapter.py` | `braket` | Amazon Braket: a program set per call, LocalSimulator or a device ARN (a plug-in) |
| `pennylane_adapter.py` | `pennylane` | any PennyLane device by name, the batch broadcast (a plug-in) |
| `mitigation.py` | | readout-error mitigation for any shot-based backend (`mitigate="readout"`) |
| `journal.py` | | provider jobs (qiskit, braket): recorded in a run's jobs.jsonl, fetched by id on resume |
"""

from qworker.backends.auto import AutoBackend
from qworker.backends.base import MAX_SHOTS, Backend, Capabilities, Pending, Usage
from qworker.backends.local import LocalBackend
from qworker.backends.mitigation import ReadoutMitigated
from qworker.backends.qulacs_sim import QulacsBackend
from qworker.backends.registry import (
    BACKENDS,
    ENTRY_POINT_GROUP,
    PluginError,
    available_backends,
    backend_class,
    backend_names,
    get_backend,
    register,
)
from qworker.backends.shots import ShotsBackend

__all__ = [
    "AutoBackend",
    "BACKENDS",
    "ENTRY_POINT_GROUP",
    "MAX_SHOTS",
    "Backend",
    "Capabilities",
    "LocalBackend",
    "Pending",
    "PluginError",
    "QulacsBackend",
    "ReadoutMitigated",
    "ShotsBackend",
    "Usage",
    "available_backends",
    "backend_class",
    "backend_names",
    "get_backend",
    "register",
]
