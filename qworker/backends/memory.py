"""Whether a simulator's state vectors fit in this machine's memory: refused by name before
anything is allocated, never an out-of-memory kill (the one place the simulators read the machine)."""

from __future__ import annotations

import os

from qworker.circuit import CircuitSpec


def check_memory(spec: CircuitSpec, n_states: int, itemsize: int = 8, avail: int | None = None) -> None:
    """Raise MemoryError naming the need when `n_states` state vectors cannot fit in memory
    (`avail` bytes; by default the machine's available memory)."""
    need = n_states * spec.statevector_bytes(itemsize)
    avail = available_memory_bytes() if avail is None else avail
    if need > avail:
        raise MemoryError(
            f"n_qubits={spec.n_qubits} needs {need / 2**30:.1f} GiB for {n_states} state vector(s) "
            f"(2^{spec.n_qubits} amplitudes x {itemsize} bytes each) but only "
            f"{avail / 2**30:.1f} GiB is available; use fewer qubits"
        )


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
