"""`shots`: finite-shot sampling with optional noise, the stand-in for quantum hardware."""

from __future__ import annotations

import math
import os
import time

import torch

from qworker.backends.base import MAX_SHOTS, Backend, Capabilities, promoted
from qworker.backends.local import probabilities


class ShotsBackend(Backend):
    """Finite-shot sampling, the stand-in for hardware: exact probabilities from the local
    simulator, then `shots` samples per token (seeded), with optional depolarising noise (with
    probability `depolarizing` a shot's outcome is uniformly random) and symmetric readout error
    (each measured bit flips with probability `readout_error`). In expectation
    <Z_i> -> (1 - depolarizing)(1 - 2 readout_error) <Z_i>. `queue_latency_s` imitates a cloud
    device's queue: every job (one `expectations` call, so every shifted batch of a gradient)
    waits that long before it runs. Every call is one job of its rows' circuits, counted in `usage`."""

    name = "shots"
    seeded, thread_safe = True, False  # one sampling generator for the backend's life

    def __init__(
        self,
        shots: int = 1024,
        seed: int | None = None,
        readout_error: float = 0.0,
        depolarizing: float = 0.0,
        queue_latency_s: float = 0.0,
    ):
        problems = []
        if not (isinstance(shots, int) and 1 <= shots <= MAX_SHOTS):
            problems.append(f"shots must be an integer >= 1 and <= {MAX_SHOTS}, got {shots!r}")
        for name, p in (("readout_error", readout_error), ("depolarizing", depolarizing)):
            if not 0.0 <= p <= 1.0:
                problems.append(f"{name} must be a probability in [0, 1], got {p!r}")
        if not (isinstance(queue_latency_s, (int, float)) and math.isfinite(queue_latency_s) and queue_latency_s >= 0):
            problems.append(f"queue_latency_s must be a finite number of seconds >= 0, got {queue_latency_s!r}")
        if problems:
            raise ValueError("invalid shots backend settings: " + "; ".join(problems))
        self.shots, self.readout_error, self.depolarizing = shots, readout_error, depolarizing
        self.queue_latency_s = float(queue_latency_s)
        self.generator = torch.Generator()
        self.generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(8), "little") >> 1)

    def capabilities(self) -> Capabilities:
        return self._capabilities(
            hardware=True, max_shots=MAX_SHOTS, queue_latency_s=self.queue_latency_s, shots=self.shots
        )

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def expectations(self, spec, theta, angles):
        self.account(angles.shape[0], self.shots)
        if self.queue_latency_s:
            time.sleep(self.queue_latency_s)  # the job waits in the device's queue
        with torch.no_grad():
            probs = probabilities(spec, *promoted(theta.detach(), angles.detach())).cpu().double()
        n = spec.n_qubits
        out = torch.empty(probs.shape[0], n, dtype=torch.float64)
        qubits = torch.arange(n)
        step = max(1, 2**22 // (self.shots * n))  # bound the (tokens, shots, n) bit tensor
        for s in range(0, probs.shape[0], step):
            p = probs[s : s + step]
            idx = torch.multinomial(p, self.shots, replacement=True, generator=self.generator)  # (C, shots)
            bits = (idx.unsqueeze(-1) >> qubits) & 1  # (C, shots, n)
            if self.depolarizing:
                hit = torch.rand(idx.shape, generator=self.generator) < self.depolarizing
                noise = torch.randint(0, 2, bits.shape, generator=self.generator)
                bits = torch.where(hit.unsqueeze(-1), noise, bits)
            if self.readout_error:
                bits ^= (torch.rand(bits.shape, generator=self.generator) < self.readout_error).long()
            out[s : s + step] = (1 - 2 * bits).double().mean(1)
        return out.to(angles)
