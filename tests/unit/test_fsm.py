from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vipd.vrrp.fsm import (
    AddVips,
    AdvertReceived,
    Drained,
    FaultCleared,
    FaultRaised,
    HoldVipsQuietly,
    MaintenanceChanged,
    PrepareBridge,
    PriorityChanged,
    ReleaseVips,
    RemoveVips,
    RouterParams,
    SendAdvert,
    SendGratuitous,
    Shutdown,
    Startup,
    State,
    StateChanged,
    Stopped,
    Timeout,
    VrrpRouter,
)

OWN = "198.18.0.11"
PEER = "198.18.0.12"
LOW_PEER = "198.18.0.5"


def make_router(**overrides) -> VrrpRouter:
    params = dict(vrid=51, version=3, priority=100, advert_interval=1.0, primary_address=OWN)
    params.update(overrides)
    return VrrpRouter(RouterParams(**params))


def started_backup(now: float = 0.0, **overrides) -> VrrpRouter:
    router = make_router(**overrides)
    router.handle(Startup(), now)
    assert router.state is State.BACKUP
    return router


def started_master(now: float = 0.0, **overrides) -> VrrpRouter:
    router = started_backup(now, **overrides)
    router.handle(Timeout(), router.next_deadline())
    assert router.state is State.MASTER
    return router


def between_adverts(router: VrrpRouter) -> float:
    """A time before the master's next advert is due, so no timer fires along with the event."""
    return router.next_deadline() - router.params.advert_interval / 2


def advert(priority: int, src: str = PEER, interval: float = 1.0) -> AdvertReceived:
    return AdvertReceived(src=src, priority=priority, interval=interval)


# --- timers and formulas -------------------------------------------------------------------


def test_v3_skew_and_master_down_interval_scale_with_master_adver_interval():
    router = make_router(priority=100, advert_interval=2.0)
    assert router.skew_time == pytest.approx(156 * 2.0 / 256)
    assert router.master_down_interval == pytest.approx(3 * 2.0 + 156 * 2.0 / 256)


def test_v2_skew_ignores_the_advert_interval():
    router = make_router(version=2, priority=100, advert_interval=3.0)
    assert router.skew_time == pytest.approx(156 / 256)
    assert router.master_down_interval == pytest.approx(9.0 + 156 / 256)


def test_timers_use_the_effective_priority():
    router = started_backup(priority=200)
    router.handle(PriorityChanged(140), 0.0)
    assert router.effective_priority == 140
    assert router.skew_time == pytest.approx(116 / 256)


def test_params_are_validated():
    with pytest.raises(ValueError, match="vrid.*version.*priority.*primary_address"):
        RouterParams(vrid=0, version=4, priority=0, advert_interval=1.0, primary_address="nope")
    RouterParams(vrid=1, version=3, priority=255, advert_interval=0.01, primary_address="fe80::1%eth0")


def test_unknown_event_is_a_type_error():
    with pytest.raises(TypeError):
        make_router().handle(SendAdvert(100), 0.0)


# --- startup -------------------------------------------------------------------------------


def test_owner_becomes_master_at_once():
    router = make_router(priority=255)
    assert router.handle(Startup(), 5.0) == [
        AddVips(), SendGratuitous(), SendAdvert(255), StateChanged(State.INIT, State.MASTER, "startup"),
    ]
    assert router.master == OWN
    assert router.next_deadline() == pytest.approx(6.0)


def test_non_owner_starts_as_backup_with_the_master_down_timer():
    router = make_router(priority=100)
    assert router.handle(Startup(), 5.0) == [StateChanged(State.INIT, State.BACKUP, "startup")]
    assert router.master is None
    assert router.next_deadline() == pytest.approx(5.0 + router.master_down_interval)
    assert router.handle(Startup(), 6.0) == []


# --- backup --------------------------------------------------------------------------------


def test_backup_takes_over_when_the_master_down_timer_expires():
    router = started_backup()
    deadline = router.next_deadline()
    assert router.handle(Timeout(), deadline - 0.001) == []
    assert router.handle(Timeout(), deadline) == [
        AddVips(), SendGratuitous(), SendAdvert(100),
        StateChanged(State.BACKUP, State.MASTER, "master_down_timer"),
    ]
    assert router.master == OWN
    assert router.next_deadline() == pytest.approx(deadline + 1.0)


def test_backup_accepts_a_higher_master_and_learns_its_interval_in_v3():
    router = started_backup(priority=100, advert_interval=1.0)
    assert router.handle(advert(200, interval=0.5), 2.0) == []
    assert router.master == PEER
    assert router.master_adver_interval == 0.5
    assert router.master_down_interval == pytest.approx(1.5 + 156 * 0.5 / 256)
    assert router.next_deadline() == pytest.approx(2.0 + router.master_down_interval)


def test_v2_backup_keeps_its_own_interval():
    router = started_backup(version=2, advert_interval=1.0)
    router.handle(advert(200, interval=3.0), 2.0)
    assert router.master_adver_interval == 1.0
    assert router.next_deadline() == pytest.approx(2.0 + 3.0 + 156 / 256)


def test_backup_resign_advert_shortens_the_timer_to_skew_time():
    router = started_backup()
    router.handle(advert(200), 1.0)
    assert router.handle(advert(0), 2.0) == [PrepareBridge(PEER)]
    assert router.master is None
    assert router.next_deadline() == pytest.approx(2.0 + router.skew_time)
    actions = router.handle(Timeout(), router.next_deadline())
    assert actions[-1] == StateChanged(State.BACKUP, State.MASTER, "master_resigned")


def test_backup_ignores_a_resignation_from_a_router_that_is_not_its_master():
    router = started_backup()
    router.handle(advert(200, src=PEER), 1.0)
    assert router.handle(advert(0, src=LOW_PEER), 1.5) == []
    assert router.master == PEER
    assert router.next_deadline() == pytest.approx(1.0 + router.master_down_interval)


def test_repeated_resignations_never_postpone_the_takeover():
    router = started_backup()
    router.handle(advert(0), 1.0)
    router.handle(advert(0), 1.1)
    assert router.next_deadline() == pytest.approx(1.0 + router.skew_time)


def test_the_bridge_goes_only_to_the_master_followed_and_only_once():
    router = started_backup()
    assert router.handle(advert(0), 0.5) == [], "no master known: the resigning router is nobody's predecessor"
    router = started_backup()
    router.handle(advert(200), 1.0)
    assert router.handle(advert(0), 1.1) == [PrepareBridge(PEER)]
    assert router.handle(advert(0), 1.2) == [], "the repeats of a hand-over prepare nothing more"
    took_over = router.handle(Timeout(), router.next_deadline())
    assert took_over[-1] == StateChanged(State.BACKUP, State.MASTER, "master_resigned")
    assert not any(isinstance(a, PrepareBridge) for a in took_over)


def test_preempting_backup_ignores_a_lower_master_and_takes_over():
    router = started_backup(priority=150)
    router.handle(advert(200), 1.0)
    # Deciding to preempt, it bridges back to the master it will replace, once, ahead of time.
    assert router.handle(advert(100), 2.0) == [PrepareBridge(PEER)]
    assert router.handle(advert(100), 2.5) == []
    assert router.next_deadline() == pytest.approx(1.0 + router.master_down_interval)
    actions = router.handle(Timeout(), router.next_deadline())
    assert actions[0] == PrepareBridge(PEER)          # connections in flight there are bridged back
    assert actions[-1] == StateChanged(State.BACKUP, State.MASTER, "preempt")


def test_non_preempting_backup_accepts_a_lower_master():
    router = started_backup(priority=150, preempt=False)
    router.handle(advert(100), 2.0)
    assert router.master == PEER
    assert router.next_deadline() == pytest.approx(2.0 + router.master_down_interval)


@pytest.mark.parametrize("src", [LOW_PEER, PEER])
def test_backup_accepts_an_equal_priority_master_whatever_its_address(src):
    router = started_backup(priority=100)
    router.handle(advert(100, src=src), 2.0)
    assert router.master == src
    assert router.next_deadline() == pytest.approx(2.0 + router.master_down_interval)


def test_preempt_delay_accepts_a_lower_master_until_the_delay_has_passed():
    router = started_backup(now=10.0, priority=150, preempt_delay=5.0)
    for now in (10.0, 11.0, 12.0, 13.0, 14.0, 14.9):
        router.handle(advert(100), now)
    assert router.master == PEER
    assert router.next_deadline() == pytest.approx(14.9 + router.master_down_interval)
    router.handle(advert(100), 15.0)
    router.handle(advert(100), 16.0)
    assert router.next_deadline() == pytest.approx(14.9 + router.master_down_interval)
    assert router.handle(Timeout(), router.next_deadline())[-1].reason == "preempt"


def test_preempt_delay_restarts_after_an_outranking_master_was_heard():
    router = started_backup(now=10.0, priority=150, preempt_delay=5.0)
    router.handle(advert(100), 10.0)
    router.handle(advert(200), 12.0)
    for now in (13.0, 14.0, 15.0, 16.0, 17.0, 17.9):
        router.handle(advert(100), now)
    assert router.next_deadline() == pytest.approx(17.9 + router.master_down_interval)
    router.handle(advert(100), 18.0)
    assert router.next_deadline() == pytest.approx(17.9 + router.master_down_interval)


def test_a_late_timer_fires_before_the_event_that_arrives_after_it():
    router = started_backup()
    deadline = router.next_deadline()
    actions = router.handle(advert(200), deadline + 0.5)
    assert StateChanged(State.BACKUP, State.MASTER, "master_down_timer") in actions
    assert actions[-1] == StateChanged(State.MASTER, State.BACKUP, "higher_priority_advert")
    assert router.next_deadline() > deadline + 0.5


# --- master --------------------------------------------------------------------------------


def test_master_advertises_every_interval():
    router = started_master(advert_interval=0.5)
    start = router.next_deadline() - 0.5
    sent = []
    for _ in range(4):
        sent += router.handle(Timeout(), router.next_deadline())
    assert sent == [SendAdvert(100)] * 4
    assert router.next_deadline() == pytest.approx(start + 2.5)


def test_master_answers_a_resignation_at_once():
    router = started_master()
    now = between_adverts(router)
    assert router.handle(advert(0), now) == [SendAdvert(100)]
    assert router.next_deadline() == pytest.approx(now + 1.0)


def test_master_yields_to_a_higher_priority():
    router = started_master(priority=100, advert_interval=1.0)
    now = between_adverts(router)
    assert router.handle(advert(200, interval=2.0), now) == [
        SendAdvert(100), RemoveVips(), StateChanged(State.MASTER, State.BACKUP, "higher_priority_advert"),
    ]
    assert router.master == PEER
    assert router.master_adver_interval == 2.0
    assert router.next_deadline() == pytest.approx(now + 6.0 + 156 * 2.0 / 256)


def test_a_master_that_yields_holds_the_vips_quietly_for_quiet_hold():
    router = started_master(priority=100, advert_interval=1.0, quiet_hold=4.0)
    now = between_adverts(router)
    assert router.handle(advert(200), now) == [
        SendAdvert(100), HoldVipsQuietly(), StateChanged(State.MASTER, State.BACKUP, "higher_priority_advert"),
    ]
    assert router.quiet_release_deadline == pytest.approx(now + 4.0)
    router.handle(advert(200), now + 1.0)
    assert router.handle(Timeout(), now + 4.0) == [ReleaseVips("quiet_hold_over")]
    assert router.next_deadline() == pytest.approx(now + 1.0 + router.master_down_interval)


@pytest.mark.parametrize(
    "own, higher",
    [("198.18.0.9", "198.18.0.10"), ("fe80::9", "fe80::10"), ("fe80::ff%eth0", "fe80::1:0%eth0")],
)
def test_equal_priority_masters_compare_addresses_as_integers(own, higher):
    lower_master = started_master(primary_address=own)
    assert lower_master.handle(advert(100, src=higher), between_adverts(lower_master)) == [
        SendAdvert(100), RemoveVips(), StateChanged(State.MASTER, State.BACKUP, "equal_priority_higher_address"),
    ]
    higher_master = started_master(primary_address=higher)
    assert higher_master.handle(advert(100, src=own), between_adverts(higher_master)) == [
        SendAdvert(100), SendGratuitous(),
    ]
    assert higher_master.state is State.MASTER


def test_heal_where_the_loser_hears_first_still_makes_the_winner_reannounce():
    """Split brain, healed so that the lower master hears the higher one first: its parting
    advert is the only thing that tells the winner to send gratuitous ARP again."""
    winner = started_master(priority=200, primary_address="198.18.0.12")
    loser = started_master(priority=100, primary_address="198.18.0.11")
    now = max(between_adverts(winner), between_adverts(loser))
    parting = loser.handle(advert(200, src="198.18.0.12"), now)
    assert parting[0] == SendAdvert(100) and loser.state is State.BACKUP
    assert winner.handle(advert(100, src="198.18.0.11"), now + 0.001) == [SendAdvert(200), SendGratuitous()]


def test_late_wakeups_do_not_drift_the_advert_schedule():
    router = started_master(advert_interval=0.1)
    first = router.next_deadline()
    sent = 0
    for n in range(100):
        deadline = router.next_deadline()
        assert deadline == pytest.approx(first + n * 0.1)
        sent += len(router.handle(Timeout(), deadline + 0.004))
    assert sent == 100
    router.handle(Timeout(), router.next_deadline() + 1.0)
    assert router.next_deadline() > first + 100 * 0.1 + 1.0, "far behind: no burst of catch-up adverts"


def test_master_reasserts_itself_against_a_lower_master():
    router = started_master(priority=200)
    now = between_adverts(router)
    assert router.handle(advert(100), now) == [SendAdvert(200), SendGratuitous()]
    assert router.state is State.MASTER
    assert router.next_deadline() == pytest.approx(now + 1.0)


def test_priority_change_as_master_is_advertised_at_once():
    router = started_master(priority=200)
    now = between_adverts(router)
    assert router.handle(PriorityChanged(140), now) == [SendAdvert(140)]
    assert router.next_deadline() == pytest.approx(now + 1.0)
    assert router.handle(PriorityChanged(140), now + 0.5) == []


def test_priority_change_as_backup_only_recomputes_timers():
    router = started_backup(priority=200)
    assert router.handle(PriorityChanged(100), 1.0) == []
    assert router.master_down_interval == pytest.approx(3 + 156 / 256)


# --- fault ---------------------------------------------------------------------------------


def test_fault_from_master_resigns_and_drops_the_vips():
    router = started_master()
    now = between_adverts(router)
    assert router.handle(FaultRaised("link down"), now) == [
        SendAdvert(0), RemoveVips(), StateChanged(State.MASTER, State.FAULT, "fault:link down"),
    ]
    assert router.next_deadline() is None
    assert router.master is None
    assert router.handle(FaultRaised("track chk"), now + 1.0) == []
    assert router.handle(advert(200), now + 2.0) == []
    assert router.handle(Startup(), now + 2.0) == []


def test_fault_cleared_returns_to_backup_with_the_master_down_timer():
    router = started_backup()
    assert router.handle(FaultRaised("eth1"), 1.0) == [StateChanged(State.BACKUP, State.FAULT, "fault:eth1")]
    assert router.handle(FaultCleared(), 2.0) == [StateChanged(State.FAULT, State.BACKUP, "fault_cleared")]
    assert router.next_deadline() == pytest.approx(2.0 + router.master_down_interval)
    assert router.handle(FaultCleared(), 3.0) == []


def test_owner_leaves_fault_straight_to_master():
    router = make_router(priority=255)
    router.handle(Startup(), 0.0)
    router.handle(FaultRaised("eth0"), 1.0)
    assert router.handle(FaultCleared(), 2.0)[-1] == StateChanged(State.FAULT, State.MASTER, "fault_cleared")


def test_fault_before_startup_holds_the_router_in_fault():
    router = make_router()
    assert router.handle(FaultRaised("eth0"), 0.0) == [StateChanged(State.INIT, State.FAULT, "fault:eth0")]
    assert router.handle(Startup(), 0.1) == []
    assert router.handle(FaultCleared(), 1.0)[-1].new is State.BACKUP


# --- shutdown ------------------------------------------------------------------------------


def assert_inert(router: VrrpRouter, now: float) -> None:
    assert router.stopped
    assert router.next_deadline() is None
    for event in (Startup(), Shutdown(), advert(200), advert(0), PriorityChanged(7), FaultRaised("x"),
                  FaultCleared(), Timeout()):
        assert router.handle(event, now) == []


def test_master_shutdown_without_handover_releases_at_once():
    router = started_master()
    now = between_adverts(router)
    assert router.handle(Shutdown(), now) == [
        SendAdvert(0), RemoveVips(), StateChanged(State.MASTER, State.INIT, "shutdown"), Stopped(),
    ]
    assert router.state is State.INIT
    assert router.master is None
    assert_inert(router, now + 1.0)


@pytest.mark.parametrize("prepare", ["backup", "fault", "init"])
def test_shutdown_without_vips_stops_at_once(prepare):
    router = make_router()
    expected = [Stopped()]
    if prepare != "init":
        router.handle(Startup(), 0.0)
        if prepare == "fault":
            router.handle(FaultRaised("eth0"), 0.5)
        expected = [StateChanged(router.state, State.INIT, "shutdown"), Stopped()]
    assert router.handle(Shutdown(), 1.0) == expected
    assert_inert(router, 2.0)


def test_handover_keeps_the_vips_until_the_new_master_is_heard():
    router = started_master(handover_timeout=10.0, advert_interval=1.0)
    start = router.next_deadline() - 1.0
    assert router.handle(Shutdown(), start + 0.5) == [SendAdvert(0)]
    assert router.state is State.MASTER and router.handing_over
    assert router.master == OWN
    assert router.handover_deadline == pytest.approx(start + 10.5)
    assert router.handle(Timeout(), router.next_deadline()) == [SendAdvert(0)]
    assert router.handle(PriorityChanged(50), start + 1.7) == []
    assert router.handle(advert(0, src=PEER), start + 1.8) == []
    assert router.handle(advert(150, src=PEER), start + 2.0) == []
    assert router.state is State.MASTER and router.new_master_heard
    assert router.next_deadline() == pytest.approx(start + 2.0 + router.params.handover_linger)
    assert router.handle(advert(150, src=PEER), start + 2.1) == []
    assert router.handle(Timeout(), router.next_deadline()) == [
        RemoveVips(), StateChanged(State.MASTER, State.INIT, "shutdown:handover_complete"), Stopped(),
    ]
    assert_inert(router, start + 3.0)


def test_handover_without_linger_releases_on_the_first_advert():
    router = started_master(handover_timeout=10.0, advert_interval=1.0, handover_linger=0.0)
    start = router.next_deadline() - 1.0
    router.handle(Shutdown(), start + 0.5)
    assert router.handle(advert(150, src=PEER), start + 0.8) == [
        RemoveVips(), StateChanged(State.MASTER, State.INIT, "shutdown:handover_complete"), Stopped(),
    ]


def test_handover_gives_up_after_the_timeout():
    router = started_master(handover_timeout=3.5, advert_interval=1.0)
    sent = router.handle(Shutdown(), between_adverts(router))
    while not router.stopped:
        sent += router.handle(Timeout(), router.next_deadline())
    assert sent == [SendAdvert(0)] * 4 + [
        RemoveVips(), StateChanged(State.MASTER, State.INIT, "shutdown:handover_timeout"), Stopped(),
    ]


@pytest.mark.parametrize("event, reason", [(Shutdown(), "shutdown"), (FaultRaised("eth0"), "shutdown:fault:eth0")])
def test_handover_ends_at_once_on_a_second_shutdown_or_a_fault(event, reason):
    router = started_master(handover_timeout=10.0)
    now = between_adverts(router)
    router.handle(Shutdown(), now)
    assert router.handle(event, now + 0.1) == [RemoveVips(), StateChanged(State.MASTER, State.INIT, reason), Stopped()]


def test_backup_handover_timeout_is_irrelevant():
    router = started_backup(handover_timeout=10.0)
    assert router.handle(Shutdown(), 1.0)[-1] == Stopped()


def test_drained_handover_holds_the_vips_quietly_until_drained():
    router = started_master(handover_timeout=10.0, advert_interval=1.0)
    start = router.next_deadline() - 1.0
    assert router.handle(Shutdown(drain=True), start + 0.5) == [SendAdvert(0)]
    router.handle(advert(150, src=PEER), start + 2.0)
    assert router.handle(Timeout(), router.next_deadline()) == [
        HoldVipsQuietly(), StateChanged(State.MASTER, State.INIT, "shutdown:handover_complete"),
    ]
    assert router.holds_vips_quietly and not router.stopped
    assert router.state is State.INIT and router.master is None and not router.handing_over
    assert router.next_deadline() is None
    for event in (Startup(), advert(200), advert(0), PriorityChanged(7), FaultRaised("x"), FaultCleared(),
                  Timeout()):
        assert router.handle(event, start + 5.0) == [], event
    assert router.update_params(router.params, start + 5.0) == []
    assert router.handle(Drained(), start + 30.0) == [ReleaseVips("drained"), Stopped()]
    assert not router.holds_vips_quietly
    assert_inert(router, start + 31.0)


def test_a_second_shutdown_releases_the_quiet_vips_at_once():
    router = started_master(handover_timeout=10.0, handover_linger=0.0)
    now = between_adverts(router)
    router.handle(Shutdown(drain=True), now)
    assert router.handle(advert(150, src=PEER), now + 0.1)[0] == HoldVipsQuietly()
    assert router.handle(Shutdown(), now + 0.2) == [ReleaseVips("shutdown"), Stopped()]
    assert_inert(router, now + 1.0)


@pytest.mark.parametrize("event, reason", [
    (Timeout(), "shutdown:handover_timeout"), (Shutdown(), "shutdown"), (FaultRaised("eth0"), "shutdown:fault:eth0"),
])
def test_a_drained_shutdown_holds_quietly_however_the_handover_ends(event, reason):
    """Without a successor the VIPs are no one's; connections in flight here still finish."""
    router = started_master(handover_timeout=3.0)
    now = between_adverts(router)
    router.handle(Shutdown(drain=True), now)
    when = router.handover_deadline if isinstance(event, Timeout) else now + 0.1
    actions = router.handle(event, when)
    assert actions[-2:] == [HoldVipsQuietly(), StateChanged(State.MASTER, State.INIT, reason)]
    assert router.holds_vips_quietly


@pytest.mark.parametrize("handover_timeout", [0.0, 3.0])
def test_a_drain_without_handover_wait_holds_quietly_at_once(handover_timeout):
    router = started_master(handover_timeout=handover_timeout)
    now = between_adverts(router)
    expected = [SendAdvert(0)]
    if handover_timeout == 0.0:
        expected += [HoldVipsQuietly(), StateChanged(State.MASTER, State.INIT, "shutdown")]
    assert router.handle(Shutdown(drain=True), now) == expected


def test_an_unplanned_shutdown_never_holds_the_vips():
    router = started_master(handover_timeout=10.0)
    now = between_adverts(router)
    assert router.handle(Shutdown(handover=False, drain=True), now) == [
        SendAdvert(0), RemoveVips(), StateChanged(State.MASTER, State.INIT, "shutdown"), Stopped(),
    ]


@pytest.mark.parametrize("prepare", ["backup", "fault"])
def test_a_drain_with_no_vips_stops_at_once(prepare):
    router = started_backup()
    if prepare == "fault":
        router.handle(FaultRaised("eth0"), 0.5)
    before = router.state
    assert router.handle(Shutdown(drain=True), 1.0) == [StateChanged(before, State.INIT, "shutdown"), Stopped()]
    assert_inert(router, 2.0)
    assert router.handle(Drained(), 2.0) == []


# --- reload --------------------------------------------------------------------------------


def test_update_params_applies_without_a_state_change():
    router = started_master(advert_interval=2.0)
    now = router.next_deadline() - 1.5
    params = RouterParams(vrid=51, version=3, priority=120, advert_interval=0.5, primary_address=OWN,
                          preempt=False)
    assert router.update_params(params, now) == []
    assert router.state is State.MASTER
    assert router.effective_priority == 100
    assert router.master_adver_interval == 0.5
    assert router.next_deadline() == pytest.approx(now + 0.5)
    with pytest.raises(ValueError):
        router.update_params(RouterParams(vrid=52, version=3, priority=1, advert_interval=1,
                                          primary_address=OWN), now)


def test_update_params_turning_preempt_off_accepts_the_lower_master():
    router = started_backup(priority=150)
    router.handle(advert(100), 1.0)
    router.update_params(RouterParams(vrid=51, version=3, priority=150, advert_interval=1.0,
                                      primary_address=OWN, preempt=False), 1.5)
    router.handle(advert(100), 2.0)
    assert router.master == PEER
    assert router.next_deadline() == pytest.approx(2.0 + router.master_down_interval)


# --- a simulated segment -------------------------------------------------------------------


class Segment:
    """Routers wired packet to packet on a manual clock that jumps to the earliest deadline."""

    def __init__(self, *routers: VrrpRouter, delay: float = 0.001) -> None:
        self.routers = {r.params.primary_address: r for r in routers}
        self.delay = delay
        self.now = 0.0
        self.dead: set[str] = set()
        self.sides: dict[str, int] | None = None
        self.holding_vips: set[str] = set()
        self.quiet_vips: set[str] = set()
        self.bridges: list[tuple[float, str, str]] = []     # (when, who, to whom)
        self.transitions: list[tuple[float, str, StateChanged]] = []
        self.adverts: list[tuple[float, str, int]] = []
        self.after_step: Callable[[Segment], None] = lambda segment: None
        self._in_flight: list[tuple[float, int, str, AdvertReceived]] = []
        self._seq = itertools.count()

    def connected(self, a: str, b: str) -> bool:
        if a in self.dead or b in self.dead:
            return False
        return self.sides is None or self.sides[a] == self.sides[b]

    def feed(self, address: str, event) -> None:
        router = self.routers[address]
        actions = router.handle(event, self.now)
        deadline = router.next_deadline()
        assert deadline is None or deadline > self.now
        for action in actions:
            self._execute(address, action)

    def _execute(self, address: str, action) -> None:
        if isinstance(action, SendAdvert):
            self.adverts.append((self.now, address, action.priority))
            packet = AdvertReceived(address, action.priority, self.routers[address].params.advert_interval)
            for other in self.routers:
                if other != address and self.connected(address, other):
                    heapq.heappush(self._in_flight, (self.now + self.delay, next(self._seq), other, packet))
        elif isinstance(action, AddVips):
            assert address not in self.holding_vips
            self.holding_vips.add(address)
        elif isinstance(action, RemoveVips):
            assert address in self.holding_vips
            self.holding_vips.discard(address)
        elif isinstance(action, HoldVipsQuietly):
            assert address in self.holding_vips
            self.holding_vips.discard(address)
            self.quiet_vips.add(address)
        elif isinstance(action, ReleaseVips):
            assert address in self.quiet_vips
            self.quiet_vips.discard(address)
        elif isinstance(action, PrepareBridge):
            self.bridges.append((self.now, address, action.predecessor))
        elif isinstance(action, StateChanged):
            self.transitions.append((self.now, address, action))

    def start(self, *addresses: str) -> None:
        for address in addresses or list(self.routers):
            self.feed(address, Startup())

    def kill(self, address: str) -> None:
        self.dead.add(address)
        self.holding_vips.discard(address)

    def boot(self, router: VrrpRouter) -> None:
        address = router.params.primary_address
        self.routers[address] = router
        self.dead.discard(address)
        self.feed(address, Startup())

    def run_until(self, end: float) -> None:
        for _ in range(1_000_000):
            timers = [(r.next_deadline(), a) for a, r in self.routers.items()
                      if a not in self.dead and r.next_deadline() is not None]
            timer = min(timers, default=None)
            packet_time = self._in_flight[0][0] if self._in_flight else None
            if timer is not None and (packet_time is None or timer[0] <= packet_time):
                if timer[0] > end:
                    break
                self.now = timer[0]
                self.feed(timer[1], Timeout())
            elif packet_time is not None and packet_time <= end:
                _, _, destination, packet = heapq.heappop(self._in_flight)
                self.now = packet_time
                if destination not in self.dead:
                    self.feed(destination, packet)
            else:
                break
            self.after_step(self)
        else:
            raise AssertionError("simulation did not settle")
        self.now = end

    def run_for(self, duration: float) -> None:
        self.run_until(self.now + duration)

    def masters(self) -> list[str]:
        return [a for a, r in self.routers.items() if a not in self.dead and r.state is State.MASTER]

    def became_master(self, address: str, after: float = 0.0) -> list[float]:
        return [t for t, a, change in self.transitions if a == address and change.new is State.MASTER and t >= after]


A, B, C = "198.18.0.30", "198.18.0.20", "198.18.0.10"
VERSIONS = pytest.mark.parametrize("version, interval", [(3, 0.5), (2, 1.0)])


def sim_router(address: str, priority: int, version: int, interval: float, **extra) -> VrrpRouter:
    return VrrpRouter(RouterParams(vrid=51, version=version, priority=priority, advert_interval=interval,
                                   primary_address=address, **extra))


def three_routers(version: int, interval: float, **extra) -> Segment:
    segment = Segment(sim_router(A, 200, version, interval, **extra), sim_router(B, 150, version, interval),
                      sim_router(C, 100, version, interval))
    segment.start()
    segment.run_for(10 * interval)
    return segment


@VERSIONS
def test_sim_highest_priority_wins_and_nobody_else_ever_was_master(version, interval):
    segment = three_routers(version, interval)
    assert segment.masters() == [A]
    assert [a for _, a, change in segment.transitions if change.new is State.MASTER] == [A]
    assert segment.holding_vips == {A}
    assert segment.routers[B].master == A and segment.routers[C].master == A
    assert segment.routers[A].master == A


@VERSIONS
def test_sim_killed_master_is_replaced_after_master_down_interval(version, interval):
    segment = three_routers(version, interval)
    killed_at = segment.now
    segment.kill(A)
    segment.run_for(10 * interval)
    assert segment.masters() == [B]
    mdi = segment.routers[B].master_down_interval
    [took_over] = segment.became_master(B)
    assert killed_at - interval + mdi <= took_over <= killed_at + mdi + segment.delay
    assert segment.routers[C].master == B


@VERSIONS
def test_sim_resignation_hands_over_after_skew_time(version, interval):
    segment = three_routers(version, interval)
    resigned_at = segment.now
    segment.feed(A, Shutdown())
    assert segment.holding_vips == set()
    segment.run_for(10 * interval)
    [took_over] = segment.became_master(B)
    assert took_over == pytest.approx(resigned_at + segment.delay + segment.routers[B].skew_time)
    assert segment.masters() == [B]
    assert segment.became_master(C) == []


@VERSIONS
@pytest.mark.parametrize("preempt", [True, False])
def test_sim_recovered_master_preempts_only_with_preempt(version, interval, preempt):
    segment = three_routers(version, interval)
    segment.kill(A)
    segment.run_for(10 * interval)
    rebooted_at = segment.now
    segment.boot(sim_router(A, 200, version, interval, preempt=preempt))
    segment.run_for(20 * interval)
    if preempt:
        assert segment.masters() == [A]
        [took_over] = segment.became_master(A, after=rebooted_at)
        assert took_over == pytest.approx(rebooted_at + segment.routers[A].master_down_interval)
        assert segment.routers[B].master == A
    else:
        assert segment.masters() == [B]
        assert segment.routers[A].master == B
    assert len(segment.holding_vips) == 1


@VERSIONS
def test_sim_preempt_delay_postpones_the_takeover(version, interval):
    segment = three_routers(version, interval)
    segment.kill(A)
    segment.run_for(10 * interval)
    rebooted_at = segment.now
    delay = 8 * interval
    segment.boot(sim_router(A, 200, version, interval, preempt_delay=delay))
    segment.run_for(delay)
    assert segment.masters() == [B]
    assert segment.routers[A].master == B
    segment.run_for(20 * interval)
    [took_over] = segment.became_master(A, after=rebooted_at)
    assert rebooted_at + delay <= took_over <= rebooted_at + interval + delay + segment.routers[A].master_down_interval
    assert segment.masters() == [A]


@VERSIONS
def test_sim_equal_priorities_started_together_elect_the_higher_address(version, interval):
    low, high = "198.18.0.9", "198.18.0.10"
    segment = Segment(sim_router(low, 100, version, interval), sim_router(high, 100, version, interval))
    segment.start()
    segment.run_for(10 * interval)
    assert segment.masters() == [high]
    assert segment.routers[low].master == high


@VERSIONS
def test_sim_equal_priority_newcomer_does_not_preempt(version, interval):
    low, high = "198.18.0.9", "198.18.0.10"
    segment = Segment(sim_router(low, 100, version, interval), sim_router(high, 100, version, interval))
    segment.start(low)
    segment.run_for(10 * interval)
    segment.start(high)
    segment.run_for(10 * interval)
    assert segment.masters() == [low]


@VERSIONS
@pytest.mark.parametrize("priorities", [(200, 150, 100), (100, 100, 100)])
def test_sim_split_brain_heals_to_one_master_within_one_master_down_interval(version, interval, priorities):
    segment = Segment(*(sim_router(address, priority, version, interval)
                        for address, priority in zip((A, B, C), priorities)))
    segment.start()
    segment.run_for(10 * interval)
    segment.sides = {A: 0, B: 1, C: 2}
    segment.run_for(10 * interval)
    assert sorted(segment.masters()) == sorted([A, B, C])
    healed_at = segment.now
    segment.sides = None
    slowest_mdi = max(r.master_down_interval for r in segment.routers.values())
    segment.run_for(slowest_mdi)
    assert segment.masters() == [A]
    assert segment.holding_vips == {A}
    stepped_down = [t for t, _, change in segment.transitions if t >= healed_at and change.new is State.BACKUP]
    assert len(stepped_down) == 2 and max(stepped_down) <= healed_at + interval + 2 * segment.delay


@VERSIONS
def test_sim_graceful_handover_never_leaves_the_vips_unowned(version, interval):
    segment = Segment(sim_router(A, 200, version, interval, handover_timeout=5 * interval),
                      sim_router(B, 150, version, interval), sim_router(C, 100, version, interval))
    segment.start()
    segment.run_for(10 * interval)
    segment.after_step = lambda s: s.holding_vips or pytest.fail(f"no VIP owner at {s.now}")
    shutdown_at = segment.now
    segment.feed(A, Shutdown())
    assert segment.routers[A].handing_over and segment.holding_vips == {A}
    segment.run_for(10 * interval)
    assert segment.routers[A].stopped
    [took_over] = segment.became_master(B)
    assert took_over == pytest.approx(shutdown_at + segment.delay + segment.routers[B].skew_time)
    [(released_at, _, change)] = [x for x in segment.transitions if x[1] == A and x[2].new is State.INIT]
    assert change.reason == "shutdown:handover_complete"
    assert released_at == pytest.approx(took_over + segment.delay + segment.routers[A].params.handover_linger)
    assert segment.masters() == [B] and segment.became_master(C) == []


@VERSIONS
def test_sim_drained_handover_hands_clients_over_and_keeps_the_old_vips_quiet(version, interval):
    segment = Segment(sim_router(A, 200, version, interval, handover_timeout=5 * interval),
                      sim_router(B, 150, version, interval), sim_router(C, 100, version, interval))
    segment.start()
    segment.run_for(10 * interval)
    segment.after_step = lambda s: s.holding_vips or pytest.fail(f"no VIP owner at {s.now}")
    segment.feed(A, Shutdown(drain=True))
    segment.run_for(10 * interval)
    assert segment.holding_vips == {B} and segment.quiet_vips == {A}
    assert segment.routers[A].holds_vips_quietly and not segment.routers[A].stopped
    assert segment.routers[A].next_deadline() is None
    segment.feed(A, Drained())
    assert segment.quiet_vips == set() and segment.routers[A].stopped
    assert segment.masters() == [B]


def test_sim_v3_backups_follow_the_masters_interval():
    segment = Segment(sim_router(A, 200, 3, 0.2), sim_router(B, 150, 3, 1.0))
    segment.start()
    segment.run_for(5.0)
    assert segment.routers[B].master_adver_interval == 0.2
    killed_at = segment.now
    segment.kill(A)
    segment.run_for(5.0)
    [took_over] = segment.became_master(B)
    assert took_over - killed_at < 3 * 0.2 + 0.2 * 106 / 256 + 0.01


# --- properties ----------------------------------------------------------------------------

ADDRESSES = ["198.18.0.10", "198.18.0.20", "198.18.0.30"]


@st.composite
def scenarios(draw):
    version = draw(st.sampled_from([2, 3]))
    if version == 3:
        interval = draw(st.integers(1, 4095)) / 100
    else:
        interval = float(draw(st.integers(1, 10)))
    count = draw(st.integers(2, 3))
    priorities = draw(st.lists(st.integers(1, 254) | st.sampled_from([100, 200]), min_size=count, max_size=count))
    start_offsets = draw(st.lists(st.floats(0, 2), min_size=count, max_size=count))
    settled_for = draw(st.floats(0, 10))
    phases = draw(st.lists(
        st.tuples(st.floats(0, 8), st.none() | st.lists(st.integers(0, 2), min_size=count, max_size=count)),
        max_size=5,
    ))
    quiet_hold = draw(st.sampled_from([0.0, 2 * interval]))
    return version, interval, priorities, start_offsets, settled_for, phases, quiet_hold


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_one_highest_master_after_any_partition_heals(scenario):
    version, interval, priorities, start_offsets, settled_for, phases, quiet_hold = scenario
    addresses = ADDRESSES[:len(priorities)]
    segment = Segment(*(sim_router(a, p, version, interval, quiet_hold=quiet_hold)
                        for a, p in zip(addresses, priorities)),
                      delay=interval / 100)
    for address, offset in sorted(zip(addresses, start_offsets), key=lambda pair: pair[1]):
        segment.run_until(offset * interval)
        segment.start(address)
    segment.run_until((2 + settled_for) * interval)
    for duration, sides in phases:
        segment.sides = None if sides is None else dict(zip(addresses, sides))
        segment.run_for(duration * interval)
    segment.sides = None
    stable_from = segment.now + max(r.master_down_interval for r in segment.routers.values()) + interval
    top = max(priorities)

    def exactly_one_top_master(s: Segment) -> None:
        if s.now >= stable_from:
            masters = s.masters()
            assert len(masters) == 1, (s.now, masters)
            assert s.routers[masters[0]].effective_priority == top
            assert s.holding_vips == set(masters)

    segment.after_step = exactly_one_top_master
    segment.run_until(stable_from + 5 * interval)
    exactly_one_top_master(segment)
    [master] = segment.masters()
    assert all(r.master == master for r in segment.routers.values())


running_events = st.one_of(
    st.just(Startup()), st.just(FaultCleared()), st.just(Timeout()), st.just(Drained()),
    st.builds(FaultRaised, st.sampled_from(["eth0", "track", "link:eth0", "vip_add:eth0", "netlink"])),
    st.builds(PriorityChanged, st.integers(1, 254)),
    # The receive checks (packet.accept) drop our own adverts before they become events.
    st.builds(AdvertReceived, st.sampled_from([LOW_PEER, PEER]),
              st.one_of(st.just(0), st.integers(1, 255), st.just(100)), st.sampled_from([0.01, 1.0, 40.95])),
)
shutdowns = st.builds(Shutdown, st.booleans(), st.booleans())
steps_of = lambda events, size: st.lists(st.tuples(st.floats(0, 2), st.booleans(), events), max_size=size)
# Where the random steps begin: scenarios that random steps alone reach too rarely.
OPENINGS = {
    "init": [],
    "backup following a peer": [(0.0, False, Startup()), (0.1, False, AdvertReceived(PEER, 255, 1.0))],
    "backup whose master resigns": [(0.0, False, Startup()), (0.1, False, AdvertReceived(PEER, 255, 1.0)),
                                    (0.2, False, AdvertReceived(PEER, 0, 1.0))],
    "master": [(0.0, False, Startup()), (0.0, True, Timeout())],
}
STOPS = [None, Shutdown(), Shutdown(drain=True), Shutdown(drain=True), Shutdown(handover=False, drain=True)]

NO_VIPS, ACTIVE, QUIET = "none", "active", "quiet"


@settings(max_examples=300, deadline=None)
@given(
    priority=st.integers(1, 255),
    version=st.sampled_from([2, 3]),
    handover_timeout=st.sampled_from([0.0, 2.5]),
    preempt_delay=st.sampled_from([0.0, 3.0]),
    opening=st.sampled_from(sorted(OPENINGS)),
    running=steps_of(running_events, 20),
    stop=st.sampled_from(STOPS),
    stopping=steps_of(running_events | shutdowns | st.just(Drained()), 15),
)
def test_property_router_stays_self_consistent(priority, version, handover_timeout, preempt_delay, opening,
                                               running, stop, stopping):
    """At every step, the VIP ownership the actions so far add up to: active only in MASTER, held
    quietly only after a planned, draining stop, none once Stopped."""
    router = make_router(priority=priority, version=version, handover_timeout=handover_timeout,
                         preempt_delay=preempt_delay)
    now, vips, state, stopped, drain_requested = 0.0, NO_VIPS, State.INIT, False, False
    steps = OPENINGS[opening] + running + ([] if stop is None else [(0.0, False, stop)]) + stopping
    for gap, at_deadline, event in steps:
        now += gap
        if at_deadline and router.next_deadline() is not None:
            now = max(now, router.next_deadline())
        priority_before = router.effective_priority
        if isinstance(event, Shutdown) and not drain_requested and not stopped:
            drain_requested = event.drain and event.handover and router.state is not State.INIT
        for action in router.handle(event, now):
            assert not stopped, f"{action} after Stopped"
            if isinstance(action, AddVips):
                assert vips == NO_VIPS
                vips = ACTIVE
            elif isinstance(action, RemoveVips):
                assert vips == ACTIVE
                vips = NO_VIPS
            elif isinstance(action, HoldVipsQuietly):
                assert vips == ACTIVE and drain_requested
                vips = QUIET
            elif isinstance(action, ReleaseVips):
                assert vips == QUIET
                vips = NO_VIPS
            elif isinstance(action, PrepareBridge):
                assert state is State.BACKUP and action.predecessor in (LOW_PEER, PEER)
            elif isinstance(action, StateChanged):
                assert action.old is state and action.new is not state
                state = action.new
            elif isinstance(action, SendAdvert):
                assert action.priority in (0, priority_before, router.effective_priority)
            elif isinstance(action, Stopped):
                assert vips == NO_VIPS and state is State.INIT
                stopped = True
        assert router.state is state and router.stopped == stopped
        assert (vips == ACTIVE) == (state is State.MASTER)
        assert (vips == QUIET) == router.holds_vips_quietly
        if vips == QUIET:
            assert drain_requested and state is State.INIT and not stopped
        assert (router.master == OWN) == (state is State.MASTER)
        deadline = router.next_deadline()
        assert deadline is None or deadline > now
        assert (deadline is None) == (router.stopped or state in (State.INIT, State.FAULT))


# --- maintenance ---------------------------------------------------------------------------

MAINTENANCE = MaintenanceChanged(True)


def assert_never_master(router: VrrpRouter, now: float, until: float) -> None:
    """Adverts come and go, resignations too, time passes: nothing makes it MASTER."""
    for t in (now + 0.1, now + 0.2, now + 50.0, until):
        for event in (advert(0, src=PEER), Timeout(), advert(0, src=LOW_PEER), Startup(), FaultCleared()):
            actions = router.handle(event, t)
            assert not any(isinstance(a, (AddVips, PrepareBridge)) for a in actions), (event, actions)
        assert router.state is State.BACKUP and router.next_deadline() is None


def test_maintenance_on_a_master_hands_over_like_a_stop_and_stays_backup():
    router = started_master(handover_timeout=10.0, advert_interval=1.0, quiet_hold=6.0)
    start = router.next_deadline() - 1.0
    assert router.handle(MAINTENANCE, start + 0.5) == [SendAdvert(0)]
    assert router.state is State.MASTER and router.handing_over and router.maintenance
    assert router.handle(Timeout(), router.next_deadline()) == [SendAdvert(0)]
    assert router.handle(advert(150, src=PEER), start + 2.0) == []
    linger_end = start + 2.0 + router.params.handover_linger
    assert router.next_deadline() == pytest.approx(linger_end)
    assert router.handle(Timeout(), linger_end) == [
        HoldVipsQuietly(), StateChanged(State.MASTER, State.BACKUP, "maintenance:handover_complete"),
    ]
    assert not router.stopped and not router.holds_vips_quietly and not router.handing_over
    assert router.master == PEER
    assert router.next_deadline() == pytest.approx(linger_end + 6.0)
    assert router.handle(advert(150, src=PEER), linger_end + 1.0) == []
    assert router.handle(Timeout(), linger_end + 6.0) == [ReleaseVips("quiet_hold_over")]
    assert_never_master(router, linger_end + 6.0, linger_end + 1000.0)


@pytest.mark.parametrize("handover_timeout, reason", [(0.0, "maintenance"), (2.5, "maintenance:handover_timeout")])
def test_maintenance_without_a_successor_or_a_hold_drops_the_vips(handover_timeout, reason):
    router = make_router(handover_timeout=handover_timeout, priority=255)
    router.handle(Startup(), 0.0)
    now = between_adverts(router)
    actions = router.handle(MaintenanceChanged(True), now)
    while router.handing_over:
        actions += router.handle(Timeout(), router.next_deadline())
    assert actions[0] == SendAdvert(0)
    assert actions[-2:] == [RemoveVips(), StateChanged(State.MASTER, State.BACKUP, reason)]
    assert router.master is None
    assert_never_master(router, now + 3.0, now + 1000.0)


def test_a_preempting_backup_in_maintenance_never_takes_over():
    router = started_backup(priority=254, preempt=True)
    assert router.handle(MAINTENANCE, 0.1) == []
    assert router.state is State.BACKUP and router.next_deadline() is None
    router.handle(advert(100, src=PEER), 0.2)       # a lower master, followed: no preempting now
    assert router.master == PEER and router.next_deadline() is None
    assert_never_master(router, 0.3, 500.0)
    assert router.master is None                     # its master resigned


def test_an_owner_started_in_maintenance_starts_as_backup():
    router = make_router(priority=255)
    assert router.handle(MAINTENANCE, 0.0) == []
    assert router.handle(Startup(), 0.0) == [StateChanged(State.INIT, State.BACKUP, "startup")]
    assert_never_master(router, 0.0, 100.0)
    router.handle(FaultRaised("eth0"), 101.0)
    assert router.handle(FaultCleared(), 102.0) == [StateChanged(State.FAULT, State.BACKUP, "fault_cleared")]
    assert router.next_deadline() is None


def test_maintenance_off_rejoins_as_a_backup_and_preempts_by_the_rules():
    router = started_backup(priority=200, preempt=True)
    router.handle(MAINTENANCE, 0.0)
    router.handle(advert(100, src=PEER), 1.0)
    assert router.handle(MaintenanceChanged(False), 1.5) == []
    assert not router.maintenance
    assert router.next_deadline() == pytest.approx(1.5 + router.master_down_interval)
    router.handle(advert(100, src=PEER), 2.0)        # a lower master: preempted, not followed
    assert router.handle(Timeout(), router.next_deadline())[-1] == \
        StateChanged(State.BACKUP, State.MASTER, "preempt")


def test_maintenance_off_without_preempt_follows_the_lower_master():
    router = started_backup(priority=200, preempt=False)
    router.handle(MAINTENANCE, 0.0)
    router.handle(MaintenanceChanged(False), 1.0)
    router.handle(advert(100, src=PEER), 1.1)
    assert router.next_deadline() == pytest.approx(1.1 + router.master_down_interval)
    assert router.master == PEER


def test_maintenance_off_during_the_quiet_hold_releases_first():
    router = started_master(handover_timeout=5.0, handover_linger=0.0, quiet_hold=6.0)
    now = between_adverts(router)
    router.handle(MAINTENANCE, now)
    assert router.handle(advert(150, src=PEER), now + 0.1)[0] == HoldVipsQuietly()
    assert router.handle(MaintenanceChanged(False), now + 0.2) == [ReleaseVips("maintenance_off")]
    assert router.quiet_release_deadline is None
    assert router.next_deadline() == pytest.approx(now + 0.2 + router.master_down_interval)


def test_maintenance_off_during_the_handover_completes_it_then_rejoins():
    router = started_master(handover_timeout=5.0, handover_linger=0.0, preempt=True, quiet_hold=6.0)
    now = between_adverts(router)
    router.handle(MAINTENANCE, now)
    assert router.handle(MaintenanceChanged(False), now + 0.1) == []
    assert router.handing_over
    router.handle(advert(90, src=PEER), now + 0.2)
    assert router.state is State.BACKUP and not router.maintenance
    router.handle(advert(90, src=PEER), now + 1.0)
    rejoin = router.handle(Timeout(), router.next_deadline())
    # Preempting its lower successor: the VIPs held quietly go before they are taken back.
    assert rejoin[:3] == [PrepareBridge(PEER), ReleaseVips("master"), AddVips()]
    assert rejoin[-1] == StateChanged(State.BACKUP, State.MASTER, "preempt")


@pytest.mark.parametrize("drain", [True, False])
def test_a_stop_during_the_maintenance_hold(drain):
    router = started_master(handover_timeout=5.0, handover_linger=0.0, quiet_hold=6.0)
    now = between_adverts(router)
    router.handle(MAINTENANCE, now)
    router.handle(advert(150, src=PEER), now + 0.1)
    actions = router.handle(Shutdown(drain=drain), now + 0.2)
    if drain:
        assert actions == [StateChanged(State.BACKUP, State.INIT, "shutdown")]
        assert router.holds_vips_quietly and router.next_deadline() is None
        actions = router.handle(Drained(), now + 3.0)
        assert actions == [ReleaseVips("drained"), Stopped()]
    else:
        assert actions == [ReleaseVips("shutdown"), StateChanged(State.BACKUP, State.INIT, "shutdown"), Stopped()]
    assert_inert(router, now + 4.0)


@pytest.mark.parametrize("drain", [True, False])
def test_a_stop_during_the_maintenance_handover_takes_it_over(drain):
    router = started_master(handover_timeout=5.0, handover_linger=0.0)
    now = between_adverts(router)
    router.handle(MAINTENANCE, now)
    assert router.handle(Shutdown(drain=drain), now + 0.1) == []
    assert router.handing_over
    ended = router.handle(advert(150, src=PEER), now + 0.2)
    assert ended[0] == (HoldVipsQuietly() if drain else RemoveVips())
    assert ended[1] == StateChanged(State.MASTER, State.INIT, "shutdown:handover_complete")


def test_a_fault_during_the_maintenance_handover_is_a_fault():
    router = started_master(handover_timeout=5.0)
    now = between_adverts(router)
    router.handle(MAINTENANCE, now)
    assert router.handle(FaultRaised("eth0"), now + 0.1) == [
        SendAdvert(0), RemoveVips(), StateChanged(State.MASTER, State.FAULT, "fault:eth0"),
    ]
    assert not router.handing_over
    router.handle(FaultCleared(), now + 1.0)
    assert_never_master(router, now + 1.0, now + 100.0)
    # A later stop's hand-over is a stop's, not a leftover maintenance one.
    router.handle(MaintenanceChanged(False), now + 101.0)
    router.handle(Timeout(), router.next_deadline())
    assert router.state is State.MASTER
    later = between_adverts(router)
    router.handle(Shutdown(), later)
    router.handle(advert(150, src=PEER), later + 0.1)
    assert router.handle(Timeout(), router.next_deadline()) == [
        RemoveVips(), StateChanged(State.MASTER, State.INIT, "shutdown:handover_complete"), Stopped()]


@VERSIONS
def test_sim_maintenance_hands_over_cleanly_and_never_takes_the_vips_back(version, interval):
    segment = Segment(sim_router(A, 200, version, interval, handover_timeout=5 * interval, quiet_hold=3 * interval),
                      sim_router(B, 150, version, interval, quiet_hold=3 * interval))
    segment.start()
    segment.run_for(10 * interval)
    assert segment.masters() == [A]
    segment.after_step = lambda s: s.holding_vips or pytest.fail(f"no VIP owner at {s.now}")
    maintenance_at = segment.now
    segment.feed(A, MaintenanceChanged(True))
    segment.run_for(10 * interval)
    assert segment.masters() == [B] and segment.quiet_vips == set()
    assert segment.routers[A].state is State.BACKUP and segment.routers[A].master == B
    segment.after_step = lambda s: None
    segment.kill(B)                                   # the last router left stays BACKUP
    segment.run_for(20 * interval)
    assert segment.masters() == [] and segment.became_master(A, after=maintenance_at) == []
    segment.boot(sim_router(B, 150, version, interval, quiet_hold=3 * interval))
    segment.run_for(10 * interval)
    assert segment.masters() == [B]
    back_at = segment.now
    segment.after_step = lambda s: s.holding_vips or pytest.fail(f"no VIP owner at {s.now}")
    segment.feed(A, MaintenanceChanged(False))
    segment.run_for(2 * interval + segment.routers[A].master_down_interval)
    # Preempted, B keeps the VIPs quietly for what A bridges back to it, then lets them go.
    assert segment.masters() == [A] and segment.became_master(A, after=back_at)
    assert segment.quiet_vips == {B}
    segment.run_for(3 * interval)
    assert segment.quiet_vips == set() and segment.holding_vips == {A}


maintenance_events = st.builds(MaintenanceChanged, st.booleans())


@settings(max_examples=300, deadline=None)
@given(
    priority=st.integers(1, 255),
    handover_timeout=st.sampled_from([0.0, 2.5]),
    quiet_hold=st.sampled_from([0.0, 1.5]),
    preempt=st.booleans(),
    opening=st.sampled_from(sorted(OPENINGS)),
    steps=steps_of(running_events | maintenance_events, 30),
    stop=st.sampled_from(STOPS),
    stopping=steps_of(running_events | maintenance_events | shutdowns, 10),
)
def test_property_never_master_in_maintenance_after_the_handover(priority, handover_timeout, quiet_hold, preempt,
                                                                 opening, steps, stop, stopping):
    """Whatever happens around it: once a hand-over for maintenance is over, the router is not MASTER
    until maintenance is off; VIPs are active only in MASTER and quiet only while held for a
    hand-over; the timers never point to the past."""
    router = make_router(priority=priority, handover_timeout=handover_timeout, preempt=preempt, quiet_hold=quiet_hold)
    model = dict(vips=NO_VIPS, state=State.INIT, stopped=False, maintenance=False)

    def execute(actions):
        for action in actions:
            assert not model["stopped"], f"{action} after Stopped"
            vips = model["vips"]
            if isinstance(action, AddVips):
                assert vips == NO_VIPS and not model["maintenance"]
                model["vips"] = ACTIVE
            elif isinstance(action, RemoveVips):
                assert vips == ACTIVE
                model["vips"] = NO_VIPS
            elif isinstance(action, HoldVipsQuietly):
                assert vips == ACTIVE
                model["vips"] = QUIET
            elif isinstance(action, ReleaseVips):
                assert vips == QUIET
                model["vips"] = NO_VIPS
            elif isinstance(action, PrepareBridge):
                assert not model["maintenance"]
            elif isinstance(action, StateChanged):
                assert action.old is model["state"] and action.new is not model["state"]
                assert not (model["maintenance"] and action.new is State.MASTER)
                model["state"] = action.new
            elif isinstance(action, Stopped):
                assert vips == NO_VIPS
                model["stopped"] = True

    now = 0.0
    for gap, at_deadline, event in OPENINGS[opening] + steps + ([] if stop is None else [(0.0, False, stop)]) + stopping:
        now += gap
        if at_deadline and router.next_deadline() is not None:
            now = max(now, router.next_deadline())
        execute(router.handle(Timeout(), now))     # what was due comes first, as handle() does it
        if isinstance(event, MaintenanceChanged) and not router.stopped and not router.holds_vips_quietly:
            model["maintenance"] = event.on
        execute(router.handle(event, now))
        state, vips = model["state"], model["vips"]
        assert router.state is state and router.stopped == model["stopped"]
        if model["maintenance"] and state is State.MASTER:
            assert router.handing_over
        assert (vips == ACTIVE) == (state is State.MASTER)
        assert (vips == QUIET) == (router.holds_vips_quietly or router.quiet_release_deadline is not None)
        if model["maintenance"] and state is State.BACKUP:
            assert router.next_deadline() in (None, router.quiet_release_deadline)
        deadline = router.next_deadline()
        assert deadline is None or deadline > now


@VERSIONS
def test_sim_a_master_that_faults_resigns_and_holds_its_vips_for_the_bridge_back(version, interval):
    segment = Segment(sim_router(A, 200, version, interval, quiet_hold=3 * interval),
                      sim_router(B, 150, version, interval, quiet_hold=3 * interval))
    segment.start()
    segment.run_for(10 * interval)
    assert segment.masters() == [A]
    fault_at = segment.now
    segment.feed(A, FaultRaised("track:script:check"))
    assert segment.quiet_vips == {A} and segment.holding_vips == set()
    segment.run_for(2 * interval)
    # B heard A resign: it took over after its skew time, bridging back to A, whose VIPs stay quiet.
    assert segment.masters() == [B] and segment.holding_vips == {B} and segment.quiet_vips == {A}
    [(bridged_at, by, to)] = segment.bridges
    assert (by, to) == (B, A) and bridged_at - fault_at < 0.01
    assert segment.became_master(B)[0] - fault_at <= segment.routers[B].skew_time + 0.01
    segment.run_for(interval + 0.01)
    assert segment.quiet_vips == set() and segment.holding_vips == {B}
    # Cleared, A (preempt, higher priority) takes the VIPs back: B holds them quietly in turn.
    segment.feed(A, FaultCleared())
    segment.run_for(segment.routers[A].master_down_interval + interval)
    assert segment.masters() == [A] and segment.holding_vips == {A} and segment.quiet_vips == {B}
