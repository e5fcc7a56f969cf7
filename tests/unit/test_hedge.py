"""When a connect is overdue and the next attempt starts: the pure decision."""
from __future__ import annotations

import pytest

from lbproxy.hedge import HEDGE_FLOOR, HEDGE_UNKNOWN, ConnectTimes, next_attempt_at


def test_a_backend_never_connected_to_is_overdue_after_the_unknown_default():
    assert ConnectTimes().overdue_after(2.0) == HEDGE_UNKNOWN
    assert ConnectTimes().overdue_after(0.1) == 0.1          # never beyond connect_timeout


def test_lan_connect_times_give_the_floor():
    times = ConnectTimes()
    for sample in [0.0002, 0.0003, 0.0001, 0.0004] * 10:
        times.observe(sample)
    assert times.overdue_after(2.0) == HEDGE_FLOOR


def test_slow_but_steady_connects_push_the_deadline_to_mean_plus_four_deviations():
    times = ConnectTimes()
    for _ in range(200):
        times.observe(0.080)
    assert times.overdue_after(2.0) == pytest.approx(0.080, abs=0.002)
    for sample in [0.060, 0.100] * 100:
        times.observe(sample)
    # RFC 6298's estimator: mean ~80 ms, mean deviation ~20 ms -> ~160 ms.
    assert 0.14 < times.overdue_after(2.0) < 0.18


def test_one_slow_sample_raises_the_deadline_and_it_decays_again():
    times = ConnectTimes()
    for _ in range(50):
        times.observe(0.001)
    assert times.overdue_after(2.0) == HEDGE_FLOOR
    times.observe(0.5)
    raised = times.overdue_after(2.0)
    assert raised > 0.3
    for _ in range(40):
        times.observe(0.001)
    assert times.overdue_after(2.0) == HEDGE_FLOOR


def test_the_deadline_is_clamped_to_connect_timeout():
    times = ConnectTimes()
    times.observe(5.0)
    assert times.overdue_after(2.0) == 2.0


@pytest.mark.parametrize("attempts, expected", [(1, 10.05), (2, 10.05), (3, None)])
def test_the_next_attempt_starts_when_overdue_while_attempts_remain(attempts, expected):
    assert next_attempt_at(10.0, 0.05, attempts, max_attempts=3) == expected
