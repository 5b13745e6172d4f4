"""Backends by name: the built-ins and the plug-ins of the `hyqut.backends` entry point group.

    backend = get_backend("local")           # or "qulacs", "auto", "shots" (shots=, seed=, noise, queue_latency_s=)
    backend = get_backend("qiskit", simulator="aer", shots=4096)   # a plug-in, found by its entry point
    backend = get_backend("shots", readout_error=0.05, mitigate="readout")   # any shot-based one, mitigated

Any installed distribution can add a backend (a `Backend` subclass); in its pyproject.toml:

    [project.entry-points."hyqut.backends"]
    mydevice = "my_package.adapter:MyDeviceBackend"
"""

from __future__ import annotations

import warnings
from importlib import metadata

from qworker import gradients
from qworker.backends.auto import AutoBackend
from qworker.backends.base import Backend
from qworker.backends.local import LocalBackend
from qworker.backends.mitigation import MITIGATIONS, ReadoutMitigated
from qworker.backends.qulacs_sim import QulacsBackend
from qworker.backends.shots import ShotsBackend

BACKENDS: dict[str, type[Backend]] = {
    "local": LocalBackend,
    "qulacs": QulacsBackend,
    "shots": ShotsBackend,
    "auto": AutoBackend,
}
"""The built-in backends: always there, even when the package's entry points are not installed
(run from a source tree); plug-ins come from `ENTRY_POINT_GROUP` (see `available_backends`)."""

ENTRY_POINT_GROUP = "hyqut.backends"
GRADIENTS_GROUP = "hyqut.gradients"  # gradient methods: a Method class or instance per name


_REGISTERED: dict[str, type[Backend]] = {}  # by `register`, in this process


class PluginError(ImportError):
    """A registered backend plug-in could not be loaded: the message names it and its entry point."""


def get_backend(name: str | Backend, **options) -> Backend:
    """A backend by name (built in: `local`, `qulacs`, `shots`, `auto`; or a plug-in of the
    `hyqut.backends` entry point group, e.g. `qiskit`), built with its options; an instance passes.
    `mitigate="readout"` (with an optional `confusion`) wraps a shot-based backend in readout-error
    mitigation (qworker/backends/mitigation.py).
    (`qworker.get_backend` also takes `grpc://host:port` and `ray`: the client's backends.)"""
    if isinstance(name, Backend):
        return name
    mitigate, confusion = options.pop("mitigate", None), options.pop("confusion", None)
    if mitigate is not None and mitigate not in MITIGATIONS:
        raise ValueError(f"unknown mitigation {mitigate!r}; choose one of {', '.join(MITIGATIONS)}")
    if confusion is not None and mitigate is None:
        raise ValueError("confusion (readout confusion matrices) goes with mitigate='readout'")
    backend = backend_class(name)(**options)
    return ReadoutMitigated(backend, confusion) if mitigate else backend


def register(name: str, cls: type[Backend]) -> type[Backend]:
    """Make `cls` the backend `name` in this process (a service's in-process pool included; a Ray
    replica, another process, finds a backend through the entry point group instead). A built-in
    name is refused. Returns `cls`, so it works as a decorator's body."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ValueError(f"register({name!r}, ...) takes a subclass of qworker.backends.Backend, got {cls!r}")
    if name in BACKENDS or not name.isidentifier():
        raise ValueError(f"backend name {name!r} is built in or not an identifier; choose another")
    _REGISTERED[name] = cls
    return cls


def backend_class(name: str) -> type[Backend]:
    """The Backend class registered as `name`: a built-in first, then one `register`ed in this
    process, then a plug-in (imported now). ValueError listing every available name if none is;
    PluginError if the plug-in fails to load."""
    if name in BACKENDS:
        return BACKENDS[name]
    if name in _REGISTERED:
        return _REGISTERED[name]
    plugins = _plugins()
    if name not in plugins:
        names = [*BACKENDS, *_REGISTERED, *sorted(n for n in plugins if n not in BACKENDS)]
        raise ValueError(
            f"unknown backend {name!r}; choose one of {', '.join(names)} (or ray, or grpc://host:port for a qworker "
            f"server); plug-ins register in the {ENTRY_POINT_GROUP!r} entry point group"
        )
    return _load(plugins[name])


def backend_names() -> tuple[str, ...]:
    """Every backend name `get_backend` resolves, without importing any plug-in: the built-ins, those
    `register`ed in this process, then the entry points of the group (what `--help` lists)."""
    return tuple(dict.fromkeys([*BACKENDS, *_REGISTERED, *sorted(_plugins())]))


def available_backends() -> dict[str, type[Backend]]:
    """Every backend by name: the built-ins, then the plug-ins (each imported; PluginError names
    one that fails). A plug-in cannot replace a built-in name."""
    plugins = _plugins()
    found = {n: _load(plugins[n]) for n in sorted(plugins) if n not in BACKENDS and n not in _REGISTERED}
    return {**BACKENDS, **_REGISTERED, **found}


def _plugins() -> dict[str, metadata.EntryPoint]:
    """The group's entry points by name, read from installed metadata now (a few ms), so a plug-in
    installed after import is found; the first registration of a name wins."""
    found: dict[str, metadata.EntryPoint] = {}
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _load(ep: metadata.EntryPoint) -> type[Backend]:
    try:
        cls = ep.load()
    except Exception as e:
        raise PluginError(
            f"backend plug-in {ep.name!r} ({ep.value}, entry point group {ENTRY_POINT_GROUP!r}) failed to import: "
            f"{type(e).__name__}: {e}"
        ) from e
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise PluginError(
            f"backend plug-in {ep.name!r} ({ep.value}) is {cls!r}, not a subclass of qworker.backends.Backend"
        )
    return cls


def load_gradient_plugins() -> None:
    """Register the gradient methods of the `hyqut.gradients` entry point group (once a process;
    `import qworker` calls it). One that fails to load is skipped with a warning naming it."""
    for ep in metadata.entry_points(group=GRADIENTS_GROUP):
        if ep.name in gradients.names():
            continue
        try:
            loaded = ep.load()
            gradients.register(loaded() if isinstance(loaded, type) else loaded)
        except Exception as e:  # noqa: BLE001 - a broken plug-in must not break the rest
            warnings.warn(
                f"gradient plug-in {ep.name!r} ({ep.value}, entry point group {GRADIENTS_GROUP!r}) was not loaded: "
                f"{type(e).__name__}: {e}",
                stacklevel=2,
            )
