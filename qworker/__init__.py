"""HyQuT's quantum side: the circuit, its simulators and adapters, its gradients, the qworker
service and its client (docs/design.md). This module is the public API.

import torch, qworker
spec = qworker.CircuitSpec()                       # 10 qubits, 80 gates, |Θ| = 40
theta = torch.rand(spec.n_params) * 6.28
angles = torch.rand(4096, spec.n_angles) * 6.28    # one row per token
z = qworker.expectations(spec, theta, angles)                          # (4096, 10)
j_theta, j_angles = qworker.jacobians(spec, theta, angles, method="shift")
g_theta, g_angles = qworker.vjp(spec, theta, angles, torch.ones_like(z), method="fd", delta=1e-3)
"""

from __future__ import annotations

from torch import Tensor

from qworker import backends
from qworker.backends import Backend
from qworker.backends import register as register_backend
from qworker.circuit import CircuitSpec, Op
from qworker.gradients import Gradient, Method
from qworker.gradients import names as method_names
from qworker.gradients import register as register_method
from qworker.validation import CircuitInputError, check_batch


def get_backend(name: str | Backend, **options) -> Backend:
    """A backend by name, built with its options (an instance passes): a simulator or adapter of
    `qworker.backends` (`local`, `qulacs`, `auto`, `shots`, a `hyqut.backends` plug-in such as
    `qiskit`); `grpc://host:port[?simulator=..&deadline=..]`, a running qworker service; or `ray`,
    a service started in this process on a local Ray pool (`replicas=N`)."""
    # the client, the server and Ray are imported only when asked for: `import qworker` loads no grpc
    if isinstance(name, str) and name.startswith("grpc://"):
        from qworker.client import RemoteBackend

        return RemoteBackend(name, **options)
    if name == "ray":
        from qworker.client import RemoteBackend
        from qworker.server.embedded import local_service

        address = local_service(options.pop("replicas", 1))
        return RemoteBackend(address, simulator=options.pop("simulator", "local"), **options)
    return backends.get_backend(name, **options)


def expectations(spec: CircuitSpec, theta: Tensor, angles: Tensor, backend: str | Backend = "local") -> Tensor:
    """<Z_i> of every token, (N, n_q). theta: (|Θ|,); angles: (N, 2n_q), float32 or float64."""
    check_batch(spec, theta, angles)
    return get_backend(backend).expectations(spec, theta, angles)


def jacobians(
    spec: CircuitSpec,
    theta: Tensor,
    angles: Tensor,
    method: str = "adjoint",
    backend: str | Backend = "local",
    **settings,
) -> tuple[Tensor, Tensor]:
    """(d<Z_i>/dtheta (N, n_q, |Θ|), d<Z_i>/dangles (N, n_q, 2n_q)) by `method` (adjoint, shift,
    fd, spsa); settings are `Gradient`'s (delta, samples, seed)."""
    check_batch(spec, theta, angles)
    return get_backend(backend).jacobians(spec, theta, angles, Gradient(method, **settings))


def vjp(
    spec: CircuitSpec,
    theta: Tensor,
    angles: Tensor,
    grad_out: Tensor,
    method: str = "adjoint",
    backend: str | Backend = "local",
    **settings,
) -> tuple[Tensor, Tensor]:
    """Gradients of sum(grad_out * expectations): ((|Θ|,), (N, 2n_q)), by `method`."""
    check_batch(spec, theta, angles, grad_out)
    return get_backend(backend).vjp(spec, theta, angles, grad_out, Gradient(method, **settings))


backends.registry.load_gradient_plugins()

__all__ = [
    "Backend",
    "CircuitInputError",
    "CircuitSpec",
    "Gradient",
    "Method",
    "Op",
    "check_batch",
    "expectations",
    "get_backend",
    "jacobians",
    "method_names",
    "register_backend",
    "register_method",
    "vjp",
]
