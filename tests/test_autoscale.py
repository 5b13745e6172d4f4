"""The autoscaler's rule (qworker/server/autoscale.py), case by case; the rule at work on a real
pool is in tests/test_ray.py and on a fake multi-node cluster in tests/test_cluster.py."""

import pytest

from qworker.server.autoscale import Policy

P = Policy(1, 8)  # target 70% +- 20%


@pytest.mark.parametrize(
    "replicas, busy, waiting, want",
    [
        (2, 0.7, 0, 2),  # on target
        (2, 0.89, 0, 2),  # within the band: no change (hysteresis)
        (2, 0.51, 0, 2),
        (2, 0.95, 0, 3),  # above: proportional, ceil(2 x 0.95 / 0.7) = 3
        (2, 1.0, 0, 3),
        (4, 1.0, 0, 6),  # ceil(4 / 0.7)
        (2, 0.6, 3, 3),  # requests waiting: at least one more, whatever the busy fraction
        (6, 1.0, 0, 8),  # ceil(6 / 0.7) = 9, capped at MAX
        (8, 1.0, 5, 8),
        (4, 0.3, 0, 2),  # below: ceil(4 x 0.3 / 0.7) = 2
        (4, 0.45, 0, 3),  # below, but ceil(4 x 0.45 / 0.7) = 3 = R - 1
        (4, 0.0, 0, 1),  # idle: MIN
        (1, 0.0, 0, 1),
    ],
)
def test_the_rule_aims_the_busy_fraction_at_the_target(replicas, busy, waiting, want):
    assert P.decide(replicas, busy, waiting) == want


def test_a_pool_outside_the_bounds_is_brought_inside():
    assert Policy(2, 4).decide(0, 0.0, 0) == 2 and Policy(2, 4).decide(7, 0.7, 0) == 4
    assert Policy(0, 3).decide(1, 0.0, 0) == 0  # MIN 0: an idle pool may go to zero


@pytest.mark.parametrize(
    "text, error",
    [("4", "MIN:MAX"), ("a:b", "MIN:MAX"), ("1:2:3", "MIN:MAX"), ("4:2", "0 <= MIN <= MAX"), ("0:0", "MAX >= 1")],
)
def test_bad_bounds_are_refused_by_name(text, error):
    with pytest.raises(ValueError, match=error):
        Policy.parse(text)


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="band"):
        Policy(1, 2, target=0.9, band=0.2)
    with pytest.raises(ValueError, match="period_s"):
        Policy(1, 2, period_s=0)
