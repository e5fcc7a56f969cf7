"""HealthCounter (the rise/fall counter of backend checks and VRRP tracks), BackendState, and the
one frontend summary the health checker derives from them: no probe runs here, results are fed
in as passive failures, drains and reloads."""
from __future__ import annotations

import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lbproxy.config import BackendConfig, FrontendConfig, HealthConfig
from lbproxy.health import BackendState, HealthCounter
from lbproxy.healthcheck import BackendHealth, HealthChecker


def feed(counter: HealthCounter, results: str) -> list[tuple[bool, str]]:
    """Record 'u'/'d' results; (changed, describe()) after each."""
    return [(counter.record(r == "u"), counter.describe()) for r in results]


# ---------------------------------------------------------------- HealthCounter


def test_an_up_counter_needs_fall_failures_in_a_row_and_then_rise_successes():
    counter = HealthCounter(rise=2, fall=3)
    assert counter.up and counter.describe() == "3/3 UP"
    assert feed(counter, "ddd") == [(False, "2/3 UP"), (False, "1/3 UP"), (True, "0/2 DOWN")]
    assert not counter.up
    assert feed(counter, "uu") == [(False, "1/2 DOWN"), (True, "3/3 UP")]
    assert counter.up


def test_crossing_jumps_to_the_far_end():
    counter = HealthCounter(rise=3, fall=2)
    feed(counter, "dd")
    assert (counter.up, counter.health) == (False, 0)
    # Two successes then one failure: the failure undoes one step, not the whole climb.
    assert feed(counter, "uud") == [(False, "1/3 DOWN"), (False, "2/3 DOWN"), (False, "1/3 DOWN")]
    assert feed(counter, "uu") == [(False, "2/3 DOWN"), (True, "2/2 UP")]
    assert counter.health == counter.rise + counter.fall - 1
    # Just after coming up, a single failure does not take it down again.
    assert feed(counter, "d") == [(False, "1/2 UP")]


def test_a_success_between_failures_buys_one_more_failure():
    counter = HealthCounter(rise=2, fall=3)
    assert [changed for changed, _ in feed(counter, "ddudd")] == [False, False, False, False, True]


def test_results_beyond_the_ends_are_clamped():
    counter = HealthCounter(rise=2, fall=3)
    assert feed(counter, "uuu") == [(False, "3/3 UP")] * 3
    feed(counter, "ddd")
    assert feed(counter, "ddd") == [(False, "0/2 DOWN")] * 3
    assert counter.health == 0


def test_rise_and_fall_of_one_flip_on_every_change():
    counter = HealthCounter(rise=1, fall=1)
    assert feed(counter, "duud") == [(True, "0/1 DOWN"), (True, "1/1 UP"), (False, "1/1 UP"),
                                     (True, "0/1 DOWN")]


def test_a_counter_can_start_down():
    counter = HealthCounter(rise=2, fall=3, up=False)
    assert not counter.up and counter.describe() == "0/2 DOWN"
    assert feed(counter, "uu")[-1] == (True, "3/3 UP")


def test_force_sets_the_far_end_without_counting():
    counter = HealthCounter(rise=4, fall=2)
    counter.force(False)
    assert (counter.up, counter.describe()) == (False, "0/4 DOWN")
    counter.force(True)
    assert (counter.up, counter.describe()) == (True, "2/2 UP")
    counter.force(True)
    assert counter.health == 5


@pytest.mark.parametrize("rise, fall", [(0, 3), (2, 0), (-1, 1), (0, 0)])
def test_rise_and_fall_must_be_positive(rise, fall):
    with pytest.raises(ValueError, match="rise and fall must be >= 1"):
        HealthCounter(rise, fall)


@given(rise=st.integers(1, 6), fall=st.integers(1, 6), results=st.lists(st.booleans(), max_size=60))
def test_the_state_flips_exactly_after_rise_or_fall_results_in_a_row_from_a_flip(rise, fall, results):
    """Against a reference model: after a flip, the next one comes when the results against the
    state (failures while UP, successes while DOWN) outnumber the others by `fall` (`rise`),
    the count never going below zero."""
    counter = HealthCounter(rise, fall)
    up, progress = True, 0
    for ok in results:
        progress = max(progress + (1 if ok != up else -1), 0)
        flips = progress == (fall if up else rise)
        if flips:
            up, progress = not up, 0
        assert counter.record(ok) is flips
        assert counter.up is up
        assert 0 <= counter.health <= rise + fall - 1


# ---------------------------------------------------------------- BackendState


def test_backend_states_are_their_wire_spelling():
    assert [s.value for s in BackendState] == ["up", "down", "drain"]
    assert BackendState("drain") is BackendState.DRAIN
    assert json.dumps({"state": BackendState.DOWN}) == '{"state": "down"}'
    assert f"{BackendState.UP}" == "up"
    with pytest.raises(ValueError):
        BackendState("UP")


def test_a_backends_state_comes_from_its_counter_unless_drained():
    backend = BackendConfig("127.0.0.1:8080", "127.0.0.1", 8080)
    bh = BackendHealth(backend.address, HealthCounter(1, 1), backend)
    assert bh.state is BackendState.UP
    bh.counter.record(False)
    assert bh.state is BackendState.DOWN
    bh.drained = True
    assert bh.state is BackendState.DRAIN
    bh.counter.record(True)
    assert bh.state is BackendState.DRAIN, "drain wins over health"
    bh.drained = False
    assert bh.state is BackendState.UP


# ---------------------------------------------------------------- the frontend's summary


A, B = "127.0.0.1:8081", "127.0.0.1:8082"


def frontend(*addresses: str, fall: int = 2) -> FrontendConfig:
    backends = tuple(BackendConfig(a, "127.0.0.1", int(a.rsplit(":", 1)[1])) for a in addresses)
    return FrontendConfig(name="api", listen="127.0.0.1:6443", listen_host="127.0.0.1",
                          listen_port=6443, backends=backends, health=HealthConfig(rise=2, fall=fall))


def fail(checker: HealthChecker, address: str, times: int) -> None:
    for _ in range(times):
        checker.report_connect_failure(address, "connection refused")


def test_all_down_is_decided_before_listeners_hear_and_logged_once_per_flip(caplog):
    caplog.set_level(logging.INFO)
    seen = []
    checker = HealthChecker(frontend(A, B), lambda *event: seen.append((*event, checker.all_down)))
    assert checker.all_down is False
    fail(checker, A, 2)
    fail(checker, B, 1)
    assert seen == [("api", A, "down", False)]
    fail(checker, B, 3)                     # more failures of a down backend: no news
    assert seen == [("api", A, "down", False), ("api", B, "down", True)]
    checker.drain(A)
    checker.enable(A)
    assert seen[2:] == [("api", A, "drain", True), ("api", A, "down", True)]
    summaries = [r for r in caplog.records if "every backend is down" in r.getMessage()]
    assert len(summaries) == 1 and summaries[0].name == "lbproxy.health"
    assert summaries[0].levelno == logging.WARNING


def test_draining_the_last_up_backend_is_all_down():
    events = []
    checker = HealthChecker(frontend(A, B), lambda *event: events.append(event))
    fail(checker, A, 2)
    checker.drain(B)
    assert checker.all_down is True
    checker.enable(B)
    assert checker.all_down is False


def test_a_reload_that_removes_the_only_up_backend_flips_the_summary(caplog):
    caplog.set_level(logging.INFO)
    checker = HealthChecker(frontend(A, B), lambda *event: None)
    fail(checker, A, 2)
    assert checker.all_down is False
    checker.update(frontend(A))
    assert checker.all_down is True
    checker.update(frontend(A, B))          # B comes back new, and new backends start up
    assert checker.all_down is False
    messages = [r.getMessage() for r in caplog.records if r.name == "lbproxy.health"]
    assert messages.count("frontend api: every backend is down or drained; new connections "
                          "still try the down ones") == 1
    assert messages.count("frontend api: a backend is up again") == 1
