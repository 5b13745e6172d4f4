"""Where a model's circuits run and how they are differentiated: chosen for each run (and each
sampling), never part of the weights; `trainer.model.convert` builds the quantum projections on it.

    circuits = Circuits(backend="grpc://10.0.0.5:50051", grad="fd")   # --qbackend, --grad
    circuits = Circuits("qiskit", grad="fd", options="simulator=aer,shots=4096")  # --qbackend-options
    model = build_model(cfg, circuits)                                # the same weights anywhere

A checkpoint's weights do not depend on where its circuits ran, so a run can be resumed, or a
checkpoint sampled, with another backend (`trainer.generate --qbackend`). The gradient method
shapes the training (fd's error, spsa's noise), so it is a training setting that a resumed run
must keep; the backend is not.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import qworker
from qworker import Backend, Gradient
from qworker.backends import backend_class
from qworker.gradients import names as method_names

RAY = "ray"  # --qbackend ray: a qworker service started in this process on a local Ray pool


@dataclass(frozen=True)
class Circuits:
    """`backend`: a qworker backend in this process (local, qulacs, auto, shots, a plug-in such as
    qiskit), `ray` (a service on a local Ray pool of `replicas` replicas) or `grpc://host:port` (a
    running service; its token from $HYQUT_TOKEN). `grad`: adjoint, shift, fd or spsa, with step
    `fd_delta` (fd's, and spsa's perturbation). `options`: the in-process backend's constructor
    options as `key=value,key=value` (shots=4096, device=lightning.qubit, mitigate=readout, ...);
    numbers and true/false are converted, the rest stay strings."""

    backend: str = "local"
    replicas: int = 1
    grad: str = "adjoint"
    fd_delta: float = 1e-2
    options: str = ""

    def problems(self) -> list[str]:
        """Every problem, each naming the flag to change; [] when valid. A remote service's methods
        are checked when the model is built (they need a connection)."""
        p = []
        if not (isinstance(self.replicas, int) and self.replicas >= 1):
            p.append(f"--q-replicas must be an integer >= 1, got {self.replicas!r}")
        if not (isinstance(self.fd_delta, (int, float)) and math.isfinite(self.fd_delta) and self.fd_delta > 0):
            p.append(f"--fd-delta must be a finite number > 0, got {self.fd_delta!r}")
        methods = None
        if not self.remote:
            try:
                methods = backend_class(self.backend).methods
                if self.options:
                    qworker.get_backend(self.backend, **self.backend_options())
            except TypeError as e:
                p.append(f"--qbackend-options: {self.options!r} are not options of backend {self.backend!r} ({e})")
            except (ValueError, ImportError) as e:
                p.append(f"--qbackend{'-options' if methods is not None else ''}: {e}")
        elif self.options:
            p.append("--qbackend-options are for a backend in this process; a service's backends are set where it runs")
        if self.grad not in method_names():
            p.append(f"--grad: unknown gradient method {self.grad!r}; choose one of {', '.join(method_names())}")
        elif methods is not None and self.grad not in methods:
            p.append(
                f"gradient method {self.grad!r} is not supported by qbackend {self.backend!r}; choose one of "
                f"{', '.join(methods)} (change --grad or --qbackend)"
            )
        return p

    @property
    def remote(self) -> bool:
        """Whether circuits run in a qworker service (ray, grpc://) rather than in this process."""
        return self.backend == RAY or self.backend.startswith("grpc://")

    def backend_options(self) -> dict:
        """`options` as a dict; ValueError naming a malformed item."""
        out = {}
        for item in filter(None, (i.strip() for i in self.options.split(","))):
            key, eq, value = item.partition("=")
            if not (eq and key.strip() and value.strip()):
                raise ValueError(f"--qbackend-options takes key=value,key=value; {item!r} is not key=value")
            out[key.strip()] = _option_value(value.strip())
        return out

    def gradient(self) -> Gradient:
        return Gradient(self.grad, delta=self.fd_delta)

    def backend_for(self, seed: int) -> Backend:
        """The backend of one quantum projection: a remote client is shared by every projection (one
        channel, one thread pool); a backend that draws random numbers (`seeded`) gets its own fixed
        `seed`, so runs reproduce."""
        if self.remote:
            return _client(self.backend, self.replicas)
        options = self.backend_options()
        if backend_class(self.backend).seeded:
            options.setdefault("seed", seed)
        return qworker.get_backend(self.backend, **options)


def _option_value(text: str) -> int | float | bool | str:
    """A --qbackend-options value: an int, a float, true/false, or the text itself."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


@functools.cache
def _client(backend: str, replicas: int) -> Backend:
    """The client of the service `backend` names (ray: one started in this process)."""
    return qworker.get_backend(backend, replicas=replicas) if backend == RAY else qworker.get_backend(backend)
