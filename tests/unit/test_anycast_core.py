"""The anycast decision: announced exactly while started, not stopping, out of maintenance and with
every track passing; each change yields the device action first, then the state change."""
import pytest

from vipd.anycast.core import (
    Announce,
    AnycastCore,
    AnycastState,
    MaintenanceChanged,
    Started,
    StateChanged,
    Stopping,
    TracksChanged,
    Withdraw,
)

ANNOUNCED, WITHDRAWN = AnycastState.ANNOUNCED, AnycastState.WITHDRAWN


def started(failing=()) -> AnycastCore:
    core = AnycastCore()
    core.handle(TracksChanged(frozenset(failing)), 1.0)
    core.handle(Started(), 2.0)
    return core


def test_nothing_is_announced_before_start_whatever_the_tracks_say():
    core = AnycastCore()
    assert core.handle(TracksChanged(frozenset()), 1.0) == []
    assert core.handle(MaintenanceChanged(False), 1.5) == []
    assert (core.state, core.reason) == (WITHDRAWN, "starting")
    assert core.handle(Started(), 2.0) == [Announce(), StateChanged(WITHDRAWN, ANNOUNCED, "serving")]
    assert (core.state, core.since, core.transitions) == (ANNOUNCED, 2.0, 1)


def test_a_failing_track_withdraws_and_recovery_announces_again():
    core = started()
    assert core.handle(TracksChanged(frozenset({"frontend:api", "interface:eth1"})), 3.0) == [
        Withdraw(), StateChanged(ANNOUNCED, WITHDRAWN, "failing: frontend:api, interface:eth1")]
    # Another failing set while withdrawn: no action, the reason follows.
    assert core.handle(TracksChanged(frozenset({"frontend:api"})), 4.0) == []
    assert (core.reason, core.since) == ("failing: frontend:api", 3.0)
    assert core.handle(TracksChanged(frozenset()), 5.0) == [Announce(), StateChanged(WITHDRAWN, ANNOUNCED, "serving")]
    assert core.transitions == 3


def test_starting_with_a_failing_track_stays_withdrawn():
    core = started(failing={"script:check"})
    assert (core.state, core.reason, core.transitions) == (WITHDRAWN, "failing: script:check", 0)


def test_maintenance_withdraws_until_off_and_wins_over_tracks():
    core = started()
    assert core.handle(MaintenanceChanged(True), 3.0) == [Withdraw(), StateChanged(ANNOUNCED, WITHDRAWN, "maintenance")]
    assert core.handle(TracksChanged(frozenset()), 4.0) == []
    assert core.handle(TracksChanged(frozenset({"frontend:api"})), 5.0) == []
    assert core.reason == "maintenance"
    # Off while a track fails: still withdrawn, now for the track.
    assert core.handle(MaintenanceChanged(False), 6.0) == []
    assert (core.state, core.reason) == (WITHDRAWN, "failing: frontend:api")
    assert core.handle(TracksChanged(frozenset()), 7.0) == [Announce(), StateChanged(WITHDRAWN, ANNOUNCED, "serving")]


def test_maintenance_from_before_the_start_is_kept():
    core = AnycastCore()
    core.handle(MaintenanceChanged(True), 0.5)
    assert core.handle(Started(), 1.0) == []
    assert (core.state, core.maintenance, core.reason) == (WITHDRAWN, True, "maintenance")


def test_stopping_is_final():
    core = started()
    assert core.handle(Stopping(), 3.0) == [Withdraw(), StateChanged(ANNOUNCED, WITHDRAWN, "stopping")]
    for event in (TracksChanged(frozenset()), MaintenanceChanged(False), Started(), Stopping()):
        assert core.handle(event, 4.0) == []
    assert (core.state, core.reason) == (WITHDRAWN, "stopping")


def test_not_an_event_is_a_bug():
    with pytest.raises(TypeError):
        AnycastCore().handle("announce", 1.0)
