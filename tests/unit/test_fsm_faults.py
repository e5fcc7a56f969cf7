"""The state machine's fault set: each reason raised and cleared on its own (a dead netlink monitor,
a VIP the kernel refused, a lost raw socket, beside link and track faults), and what a MASTER that
enters FAULT does with its VIPs: held quietly for the connections its successor bridges back, or
removed at once."""
from __future__ import annotations

import pytest

from vipd.vrrp.fsm import (
    AddVips,
    AdvertReceived,
    Drained,
    Fault,
    FaultCleared,
    FaultRaised,
    HoldVipsQuietly,
    MaintenanceChanged,
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
    VipsLost,
    VrrpRouter,
    fault_reason,
    holds_through,
)

VIP_ADD = fault_reason(Fault.VIP_ADD, "eth0")
NETLINK = fault_reason(Fault.NETLINK)
SOCKET = fault_reason(Fault.SOCKET, "eth0")


def master(now: float = 0.0, **overrides) -> VrrpRouter:
    params = dict(vrid=51, version=3, priority=150, advert_interval=1.0, primary_address="198.18.0.11")
    router = VrrpRouter(RouterParams(**{**params, **overrides}))
    router.handle(Startup(), now)
    router.handle(Timeout(), now + router.master_down_interval)
    assert router.state is State.MASTER
    return router


def test_reasons_are_kind_colon_detail_from_one_vocabulary() -> None:
    assert VIP_ADD == "vip_add:eth0" and NETLINK == "netlink" and SOCKET == "socket:eth0"
    assert fault_reason(Fault.LINK, "eth1") == "link:eth1"
    assert {f.value for f in Fault} == {"link", "track", "no_address", "netlink", "vip_add", "socket"}


def test_a_refused_vip_sends_a_master_to_fault_resigning_and_back_when_cleared() -> None:
    router = master()
    now = router.next_deadline() - 0.5     # between two adverts
    assert router.handle(FaultRaised(VIP_ADD), now) == [
        SendAdvert(0), RemoveVips(), StateChanged(State.MASTER, State.FAULT, "fault:vip_add:eth0")]
    assert router.faults == {VIP_ADD} and router.next_deadline() is None
    actions = router.handle(FaultCleared(VIP_ADD), now + 1.0)
    assert actions == [StateChanged(State.FAULT, State.BACKUP, "fault_cleared")]
    assert router.faults == set()
    # Nobody else advertises: it becomes master again and adds the VIPs (the retry).
    retried = router.handle(Timeout(), router.next_deadline())
    assert AddVips() in retried and retried[-1].new is State.MASTER


def test_fault_holds_until_every_reason_is_cleared() -> None:
    router = master()
    router.handle(FaultRaised(NETLINK), 1.0)
    assert router.handle(FaultRaised(SOCKET), 1.1) == []
    assert router.handle(FaultRaised(SOCKET), 1.2) == [], "the same reason twice changes nothing"
    assert router.handle(FaultCleared(NETLINK), 2.0) == []
    assert router.state is State.FAULT and router.faults == {SOCKET}
    assert router.handle(FaultCleared("link:eth9"), 2.5) == [], "clearing an unknown reason changes nothing"
    assert router.handle(FaultCleared(SOCKET), 3.0) == [StateChanged(State.FAULT, State.BACKUP, "fault_cleared")]


def test_a_fault_raised_in_backup_ignores_adverts_until_cleared() -> None:
    router = VrrpRouter(RouterParams(vrid=51, version=3, priority=100, advert_interval=1.0,
                                     primary_address="198.18.0.12"))
    router.handle(Startup(), 0.0)
    assert router.handle(FaultRaised(SOCKET), 0.5) == [StateChanged(State.BACKUP, State.FAULT, "fault:socket:eth0")]
    assert router.handle(AdvertReceived("198.18.0.11", 150, 1.0), 1.0) == []
    assert router.handle(Timeout(), 100.0) == [] and router.state is State.FAULT
    assert router.handle(FaultCleared(), 101.0) == [StateChanged(State.FAULT, State.BACKUP, "fault_cleared")]
    assert router.faults == set()


def test_an_owner_out_of_fault_is_master_at_once() -> None:
    router = VrrpRouter(RouterParams(vrid=51, version=3, priority=255, advert_interval=1.0,
                                     primary_address="198.18.0.11"))
    router.handle(Startup(), 0.0)
    router.handle(FaultRaised(VIP_ADD), 0.1)
    actions = router.handle(FaultCleared(VIP_ADD), 1.1)
    assert actions[0] == AddVips() and actions[-1] == StateChanged(State.FAULT, State.MASTER, "fault_cleared")


# --- a MASTER's VIPs as it enters FAULT ------------------------------------------------------

QUIET_HOLD = 6.0
TRACK = fault_reason(Fault.TRACK, "script:check")
NO_ADDRESS = fault_reason(Fault.NO_ADDRESS)
LINK = fault_reason(Fault.LINK, "eth0")
HOLDING_FAULTS = [TRACK, NETLINK, SOCKET, NO_ADDRESS]
REMOVING_FAULTS = [VIP_ADD, LINK]
PEER = "198.18.0.12"


def between_adverts(router: VrrpRouter) -> float:
    return router.next_deadline() - 0.5


def faulted_holding(reason: str = TRACK, **overrides) -> tuple[VrrpRouter, float]:
    """A master gone to FAULT for `reason` that holds its VIPs quietly, and when it went."""
    router = master(quiet_hold=QUIET_HOLD, **overrides)
    now = between_adverts(router)
    assert router.handle(FaultRaised(reason), now)[1] == HoldVipsQuietly()
    return router, now


def test_every_fault_kind_is_decided() -> None:
    assert {Fault(r.partition(":")[0]) for r in HOLDING_FAULTS + REMOVING_FAULTS} == set(Fault)
    assert [holds_through(r) for r in HOLDING_FAULTS] == [True] * 4
    assert [holds_through(r) for r in REMOVING_FAULTS] == [False] * 2
    assert not holds_through("eth0"), "a reason of no known kind removes the VIPs, as the RFC does"


@pytest.mark.parametrize("reason", HOLDING_FAULTS)
def test_a_master_that_faults_holds_its_vips_quietly_for_quiet_hold(reason: str) -> None:
    router = master(quiet_hold=QUIET_HOLD)
    now = between_adverts(router)
    assert router.handle(FaultRaised(reason), now) == [
        SendAdvert(0), HoldVipsQuietly(), StateChanged(State.MASTER, State.FAULT, f"fault:{reason}")]
    assert router.master is None and not router.holds_vips_quietly, "a hold with a deadline, not a drain"
    assert router.quiet_release_deadline == pytest.approx(now + QUIET_HOLD)
    assert router.next_deadline() == pytest.approx(now + QUIET_HOLD), "no advert, no master-down timer"
    assert router.handle(Timeout(), now + QUIET_HOLD - 0.01) == []
    assert router.handle(Timeout(), now + QUIET_HOLD) == [ReleaseVips("quiet_hold_over")]
    assert router.state is State.FAULT and router.next_deadline() is None
    assert router.quiet_release_deadline is None


@pytest.mark.parametrize("reason", REMOVING_FAULTS)
def test_a_refused_vip_or_a_lost_link_removes_the_vips_at_once(reason: str) -> None:
    router = master(quiet_hold=QUIET_HOLD)
    now = between_adverts(router)
    assert router.handle(FaultRaised(reason), now) == [
        SendAdvert(0), RemoveVips(), StateChanged(State.MASTER, State.FAULT, f"fault:{reason}")]
    assert router.quiet_release_deadline is None and router.next_deadline() is None


@pytest.mark.parametrize("reason", HOLDING_FAULTS + REMOVING_FAULTS)
def test_without_quiet_hold_every_fault_removes_the_vips_at_once(reason: str) -> None:
    router = master()
    now = between_adverts(router)
    assert router.handle(FaultRaised(reason), now) == [
        SendAdvert(0), RemoveVips(), StateChanged(State.MASTER, State.FAULT, f"fault:{reason}")]
    assert router.next_deadline() is None


def test_more_faults_while_holding_change_nothing() -> None:
    router, at = faulted_holding(NETLINK)
    assert router.handle(FaultRaised(LINK), at + 1.0) == []
    assert router.handle(FaultCleared(NETLINK), at + 2.0) == [], "the link is still down"
    assert router.quiet_release_deadline == pytest.approx(at + QUIET_HOLD)
    assert router.handle(Timeout(), at + QUIET_HOLD) == [ReleaseVips("quiet_hold_over")]
    assert router.state is State.FAULT


def test_cleared_while_holding_it_rejoins_as_backup_and_the_hold_runs_on() -> None:
    router, at = faulted_holding(TRACK)
    assert router.handle(FaultCleared(TRACK), at + 1.0) == [StateChanged(State.FAULT, State.BACKUP, "fault_cleared")]
    assert router.quiet_release_deadline == pytest.approx(at + QUIET_HOLD)
    # It follows the master that took over meanwhile (higher priority now: its own is lowered).
    router.handle(PriorityChanged(90), at + 1.5)
    for t in (at + 2.0, at + 3.0, at + 4.0, at + 5.0):
        assert router.handle(AdvertReceived(PEER, 100, 1.0), t) == []
    assert router.handle(Timeout(), at + QUIET_HOLD) == [ReleaseVips("quiet_hold_over")]
    assert router.state is State.BACKUP and router.master == PEER
    assert router.next_deadline() == pytest.approx(at + 5.0 + router.master_down_interval)


def test_master_again_before_the_hold_ends_releases_then_takes_the_vips_back() -> None:
    router, at = faulted_holding(SOCKET, priority=150)
    router.handle(FaultCleared(SOCKET), at + 0.5)
    # Nobody advertises: its master-down timer runs out well before the hold would.
    takeover = router.next_deadline()
    assert takeover < at + QUIET_HOLD
    assert router.handle(Timeout(), takeover) == [
        ReleaseVips("master"), AddVips(), SendGratuitous(), SendAdvert(150),
        StateChanged(State.BACKUP, State.MASTER, "master_down_timer")]
    assert router.quiet_release_deadline is None
    assert router.next_deadline() == pytest.approx(takeover + 1.0), "the advert timer, not the hold"


def test_an_owner_cleared_while_holding_is_master_at_once_releasing_first() -> None:
    router, at = faulted_holding(NETLINK, priority=255)
    assert router.handle(FaultCleared(NETLINK), at + 1.0) == [
        ReleaseVips("master"), AddVips(), SendGratuitous(), SendAdvert(255),
        StateChanged(State.FAULT, State.MASTER, "fault_cleared")]


def test_a_stop_while_holding_in_fault_releases_the_vips() -> None:
    router, at = faulted_holding(TRACK)
    assert router.handle(Shutdown(), at + 1.0) == [
        ReleaseVips("shutdown"), StateChanged(State.FAULT, State.INIT, "shutdown"), Stopped()]
    assert router.stopped and router.next_deadline() is None


def test_a_draining_stop_while_holding_in_fault_keeps_them_until_drained() -> None:
    router, at = faulted_holding(TRACK)
    assert router.handle(Shutdown(drain=True), at + 1.0) == [StateChanged(State.FAULT, State.INIT, "shutdown")]
    assert router.holds_vips_quietly and router.next_deadline() is None
    assert router.handle(Timeout(), at + QUIET_HOLD + 1.0) == [], "the drain decides now, not the hold"
    assert router.handle(Drained(), at + 10.0) == [ReleaseVips("drained"), Stopped()]


def test_a_stop_after_the_hold_ended_releases_nothing_more() -> None:
    router, at = faulted_holding(TRACK)
    router.handle(Timeout(), at + QUIET_HOLD)
    assert router.handle(Shutdown(drain=True), at + QUIET_HOLD + 1.0) == [
        StateChanged(State.FAULT, State.INIT, "shutdown"), Stopped()]


def test_vips_lost_while_holding_changes_nothing() -> None:
    """A quietly held VIP is renewed by the shell's hold, not by adverts: a loss there is no
    master's loss."""
    router, at = faulted_holding(NETLINK)
    assert router.handle(VipsLost(), at + 1.0) == []
    router.handle(FaultCleared(NETLINK), at + 2.0)
    assert router.handle(VipsLost(), at + 2.5) == []
    assert router.state is State.BACKUP and router.quiet_release_deadline == pytest.approx(at + QUIET_HOLD)


def test_maintenance_while_holding_in_fault_keeps_the_hold_and_never_takes_over() -> None:
    router, at = faulted_holding(TRACK)
    assert router.handle(MaintenanceChanged(True), at + 1.0) == []
    assert router.handle(FaultCleared(TRACK), at + 2.0) == [StateChanged(State.FAULT, State.BACKUP, "fault_cleared")]
    assert router.next_deadline() == pytest.approx(at + QUIET_HOLD), "no master-down timer in maintenance"
    assert router.handle(Timeout(), at + QUIET_HOLD) == [ReleaseVips("quiet_hold_over")]
    assert router.handle(Timeout(), at + 100.0) == [] and router.state is State.BACKUP


def test_maintenance_off_while_holding_releases_first_as_after_any_quiet_hold() -> None:
    router, at = faulted_holding(TRACK)
    router.handle(MaintenanceChanged(True), at + 1.0)
    assert router.handle(MaintenanceChanged(False), at + 2.0) == [ReleaseVips("maintenance_off")]
    assert router.state is State.FAULT and router.next_deadline() is None


def test_a_fault_during_a_preempted_hold_lets_the_hold_run_on() -> None:
    router = master(quiet_hold=QUIET_HOLD)
    now = between_adverts(router)
    yielded = router.handle(AdvertReceived(PEER, 200, 1.0), now)
    assert yielded[:2] == [SendAdvert(150), HoldVipsQuietly()]
    assert router.handle(FaultRaised(LINK), now + 1.0) == [StateChanged(State.BACKUP, State.FAULT, f"fault:{LINK}")]
    assert router.handle(Timeout(), now + QUIET_HOLD) == [ReleaseVips("quiet_hold_over")]
