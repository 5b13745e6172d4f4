"""Kept Jacobians (qworker/server/resident.py): bounded in bytes, least recently kept evicted first,
expiring unused, answered once; what is gone is HandleGone (NOT_FOUND on the wire)."""

import pytest
import torch

from qworker.protocol.errors import HandleGone, OverLimitError, status_for
from qworker.server.resident import Handles, Held, Resident


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def jacobians(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """n tokens of a 2-qubit, 1-layer circuit: (n, 2, 4) and (n, 2, 4) float32, 64 bytes a token."""
    return torch.full((n, 2, 4), float(n)), torch.zeros(n, 2, 4)


def test_the_least_recently_kept_go_first_when_the_bytes_run_out():
    store = Resident(max_bytes=64 * 10, ttl_s=60)
    a, b = store.put(jacobians(4), "header a"), store.put(jacobians(4), "header b")  # 512 of 640 bytes
    assert store.bytes == 512 and len(store) == 2
    c = store.put(jacobians(2), "c")  # 128 more: over by nothing, all stay
    d = store.put(jacobians(3), "d")  # 192 more: a goes (b is younger)
    assert store.evicted == 1 and store.bytes == 64 * (4 + 2 + 3)
    with pytest.raises(HandleGone):
        store.take(a)
    j_theta, _, header = store.take(b)
    assert header == "header b" and torch.equal(j_theta, jacobians(4)[0])  # with the request that computed them
    with pytest.raises(HandleGone):  # answered once
        store.take(b)
    assert {store.take(c)[0][0, 0, 0].item(), store.take(d)[0][0, 0, 0].item()} == {2.0, 3.0}
    assert store.bytes == 0 and len(store) == 0


def test_unused_jacobians_expire():
    clock = Clock()
    store = Resident(max_bytes=2**20, ttl_s=10, clock=clock)
    old = store.put(jacobians(1), "old")
    clock.now = 6
    young = store.put(jacobians(1), "young")
    clock.now = 10.5  # old expired, young not yet
    with pytest.raises(HandleGone):
        store.take(old)
    assert store.expired == 1 and store.take(young)[0].shape == (1, 2, 4)


def test_jacobians_larger_than_the_store_are_refused_by_name():
    with pytest.raises(OverLimitError, match="max_resident_bytes=100"):
        Resident(max_bytes=100, ttl_s=1).put(jacobians(2), "x")


def test_handles_name_units_once_and_expire():
    clock = Clock()
    handles = Handles(ttl_s=5, clock=clock)
    held = [Held("unit0", "replica0", "k0"), Held("unit1", "replica1", "k1")]
    h = handles.add(held)
    assert handles.take(h) == held
    with pytest.raises(HandleGone):
        handles.take(h)
    late = handles.add(held)
    clock.now = 5.0
    with pytest.raises(HandleGone):
        handles.take(late)
    assert status_for(HandleGone("x"))[0].name == "NOT_FOUND"
