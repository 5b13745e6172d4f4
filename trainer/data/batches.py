"""BatchSampler: deterministic, resumable, rank-sharded (x, y) blocks from a token stream.

An epoch cuts the stream into windows of context + 1 tokens, starting at a per-epoch offset
(so epochs see different cut points) and visits them in a per-epoch permutation; both come from
numpy's PCG64 seeded with (seed, epoch). A global step takes the next batch_size · world_size
windows; rank r gets windows r·batch_size ... (r+1)·batch_size - 1 of them, so ranks never share
a window. An epoch ends when fewer than a global step's windows remain (the rest are skipped).

The position is (epoch, windows consumed in the epoch): `state_dict()` is three integers, and
resuming continues exactly, under any world size.

    sampler = BatchSampler(tokens, batch_size=8, context=256, seed=0, rank=r, world_size=w)
    x, y = next(sampler)            # (B, T) int64 each; y is x shifted by one token
    state = sampler.state_dict()    # {"seed", "epoch", "position", ...}: into the checkpoint
    sampler.load_state_dict(state)  # the same batches from there on

With shuffle=False (evaluation) the offset is 0 and the windows come in order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class BatchSampler:
    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        context: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
    ):
        problems = []
        for name, v in (("batch_size", batch_size), ("context", context), ("world_size", world_size)):
            if not (isinstance(v, int) and v >= 1):
                problems.append(f"{name} must be an integer >= 1, got {v!r}")
        if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
            problems.append(f"rank must be in 0..world_size-1, got rank={rank!r}, world_size={world_size!r}")
        if problems:
            raise ValueError("invalid batch sampler: " + "; ".join(problems))
        self.tokens = tokens
        self.batch_size, self.context, self.seed = batch_size, context, seed
        self.rank, self.world_size, self.shuffle = rank, world_size, shuffle
        max_offset = context - 1 if shuffle else 0
        self.n_windows = max(0, (len(tokens) - 1 - max_offset) // context)  # the same every epoch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{len(tokens):,} tokens make {self.n_windows} window(s) of context {context}, fewer than one step's "
                f"batch_size x world_size = {batch_size * world_size}; lower --batch-size or --context, "
                "or use more data"
            )
        self.epoch, self.position = 0, 0
        self._order_epoch: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.n_windows // (self.batch_size * self.world_size)

    def __iter__(self) -> BatchSampler:
        return self

    def __next__(self) -> tuple[Tensor, Tensor]:
        """The next (x, y) of this rank, each (batch_size, context) int64; never stops."""
        step = self.batch_size * self.world_size
        if self.position + step > self.steps_per_epoch * step:
            self.epoch, self.position = self.epoch + 1, 0
        offset, order = self._order()
        first = self.position + self.rank * self.batch_size
        starts = offset + order[first : first + self.batch_size] * self.context  # (B,)
        rows = np.asarray(self.tokens[starts[:, None] + np.arange(self.context + 1)], dtype=np.int64)  # (B, T+1)
        self.position += step
        block = torch.from_numpy(rows)
        return block[:, :-1], block[:, 1:]  # (B, T), (B, T)

    def _order(self) -> tuple[int, np.ndarray]:
        """This epoch's offset and window permutation, computed once per epoch."""
        if self._order_epoch != self.epoch:
            if self.shuffle:
                rng = np.random.default_rng((self.seed, self.epoch))
                self._offset, self._perm = int(rng.integers(self.context)), rng.permutation(self.n_windows)
            else:
                self._offset, self._perm = 0, np.arange(self.n_windows)
            self._order_epoch = self.epoch
        return self._offset, self._perm

    def state_dict(self) -> dict[str, int]:
        """The position, with what it depends on (checked on load)."""
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "n_tokens": len(self.tokens),
            "context": self.context,
            "shuffle": int(self.shuffle),
        }

    def load_state_dict(self, state: dict[str, int]) -> None:
        mismatch = [
            f"{k} {state.get(k)!r} != {v!r}"
            for k, v in (("n_tokens", len(self.tokens)), ("context", self.context), ("shuffle", int(self.shuffle)))
            if state.get(k) != v
        ]
        if mismatch:
            raise ValueError(
                "the saved data position belongs to another stream: " + "; ".join(mismatch) + " (resume with the "
                "checkpoint's dataset, tokenizer and --context)"
            )
        self.seed, self.epoch, self.position = int(state["seed"]), int(state["epoch"]), int(state["position"])
