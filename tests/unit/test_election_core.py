"""The election's pure core: campaign, fence, hand-over, resign, stop."""
from __future__ import annotations

from vipd.election import core
from vipd.election.core import (
    Accept,
    AddVips,
    Announce,
    Campaign,
    Done,
    ElectionCore,
    Eligibility,
    Entry,
    Grant,
    LeaseFailed,
    LeaseGranted,
    LeaseRenewed,
    Maintenance,
    Offer,
    Register,
    RemoveVips,
    Renew,
    Resign,
    Revoke,
    Seen,
    Snapshot,
    State,
    StateChanged,
    Stop,
    Tick,
    Transfer,
    Unregister,
    VipsAdded,
)
from vipd.vrrp import fsm

TTL = 3.0


def kinds(actions: list) -> list[type]:
    return [type(a) for a in actions if not isinstance(a, StateChanged)]


def started(node: str = "a", priority: int = 100, lease: int = 11, now: float = 0.0) -> ElectionCore:
    c = ElectionCore(node, priority, TTL)
    assert kinds(c.handle(Tick(), now)) == [Grant]
    actions = c.handle(LeaseGranted(lease, TTL, now), now)
    assert Register(lease, priority) in actions
    return c


def leader(node: str = "a", priority: int = 100, lease: int = 11, others: tuple[Entry, ...] = ()) -> ElectionCore:
    c = started(node, priority, lease)
    me = Entry(node, priority, lease)
    actions = c.handle(Seen(Snapshot(None, (me, *others))), 0.1)
    assert Campaign(lease, priority) in actions
    actions = c.handle(Done(Campaign(lease, priority), True), 0.2)
    assert AddVips(2, announce=True) in actions
    assert c.state == State.LEADER
    return c


def test_a_lone_candidate_registers_campaigns_and_leads_with_a_lifetime_inside_the_fence() -> None:
    c = leader()
    assert c.holder == "a" and c.vips
    assert c.deadline == TTL - core.MARGIN
    # each renewal moves the fence and refreshes the kernel lifetime, which ends before it
    actions = c.handle(Tick(), 1.0)
    assert Renew(11) in actions
    actions = c.handle(LeaseRenewed(11, TTL, 1.0), 1.01)
    assert c.deadline == 1.0 + TTL - core.MARGIN
    assert actions[0] == AddVips(2, announce=False)
    assert 1.01 + 2 < c.deadline


def test_renewals_that_stop_succeeding_remove_the_vips_at_send_time_plus_ttl_minus_margin() -> None:
    c = leader()
    c.handle(Tick(), 1.0)
    c.handle(LeaseFailed(11, "timeout"), 1.5)
    assert c.next_deadline() == 1.5 + core.RETRY
    assert RemoveVips() not in c.handle(Tick(), 2.49)
    actions = c.handle(Tick(), 2.5)
    assert actions.index(RemoveVips()) < actions.index(Revoke(11))
    assert Grant() in actions
    assert c.state == State.FAULT and not c.vips and c.lease is None
    assert "lease not renewed in time (timeout)" in c.reason
    assert c.keepalive_failures == 1


def test_a_lease_etcd_says_is_gone_fences_at_once() -> None:
    c = leader()
    actions = c.handle(LeaseFailed(11, "lease expired or revoked", gone=True), 0.5)
    assert actions[0] == RemoveVips()
    assert c.state == State.FAULT


def test_a_lower_candidate_waits_for_a_registered_higher_one_then_campaigns_after_a_ttl() -> None:
    c = started("b", 50, lease=22)
    high = Entry("a", 100, 11)
    assert not [a for a in c.handle(Seen(Snapshot(None, (high, Entry("b", 50, 22)))), 0.1)
                if isinstance(a, Campaign)]
    assert c.state == State.FOLLOWER
    c.handle(LeaseRenewed(22, TTL, 2.0), 2.0)
    assert Campaign(22, 50) not in c.handle(Tick(), 0.1 + TTL - 0.01)
    assert Campaign(22, 50) in c.handle(Tick(), 0.1 + TTL)


def test_a_follower_never_adds_vips_for_someone_elses_key() -> None:
    c = started("b", 50, lease=22)
    actions = c.handle(Seen(Snapshot(Entry("a", 100, 11), (Entry("a", 100, 11),))), 0.1)
    assert not [a for a in actions if isinstance(a, (AddVips, Campaign))]
    assert (c.state, c.holder, c.reason) == (State.FOLLOWER, "a", "held by a")


def test_preemption_hands_over_successor_first_then_the_old_holder_lets_go() -> None:
    high = Entry("b", 200, 22)
    h = leader("a", 100, 11)
    s = started("b", 200, 22)
    holder = Entry("a", 100, 11)
    # the holder sees the higher candidate and offers the key
    actions = h.handle(Seen(Snapshot(holder, (holder, high))), 1.0)
    assert Offer("b", 11) in actions
    # the successor adds the VIPs and GARPs, and accepts once the kernel has them
    actions = s.handle(Seen(Snapshot(holder, (holder, high), handover=("a", "b"))), 1.1)
    assert [type(a) for a in actions if isinstance(a, (AddVips, Accept, Offer, Campaign))] == [AddVips]
    assert AddVips(1, announce=True) in actions and s.vips and s.state == State.FOLLOWER
    assert s.handle(VipsAdded("eth0"), 1.15) == [Accept("a", 22)]
    # the holder transfers the key to the successor's lease; only then its VIPs go
    actions = h.handle(Seen(Snapshot(holder, (holder, high), ("a", "b"), accepted=("b", "a"))), 1.2)
    assert actions == [Transfer(11, high)] and h.vips
    actions = h.handle(Done(Transfer(11, high), True), 1.25)
    assert RemoveVips() not in actions and h.state == State.FOLLOWER and h.holder == "b"
    # the successor sees the key under its own lease: LEADER, announces again, no second add
    actions = s.handle(Seen(Snapshot(high, (holder, high))), 1.3)
    assert s.state == State.LEADER and Announce() in actions
    assert not [a for a in actions if isinstance(a, AddVips)]
    # the old holder lets go once the successor's announcement is out
    assert h.next_deadline() == 1.25 + core.RELEASE_GRACE
    assert RemoveVips() not in h.handle(Tick(), 1.25 + core.RELEASE_GRACE - 0.01)
    assert RemoveVips() in h.handle(Tick(), 1.25 + core.RELEASE_GRACE)
    assert not h.vips


def test_a_successor_whose_transfer_never_comes_drops_its_early_vips_and_does_not_retry_that_offer() -> None:
    s = started("b", 200, 22)
    holder = Entry("a", 100, 11)
    offered = Snapshot(holder, (holder, Entry("b", 200, 22)), handover=("a", "b"))
    assert AddVips in kinds(s.handle(Seen(offered), 1.0))
    actions = s.handle(Tick(), 1.0 + core.HANDOVER_TIMEOUT)
    assert RemoveVips() in actions and not s.vips
    assert not [a for a in s.handle(Seen(offered), 3.5) if isinstance(a, AddVips)]


def test_a_holder_whose_offer_is_not_accepted_keeps_the_vips_and_withdraws() -> None:
    h = leader("a", 100, 11)
    holder, high = Entry("a", 100, 11), Entry("b", 200, 22)
    h.handle(Seen(Snapshot(holder, (holder, high))), 1.0)
    h.handle(LeaseRenewed(11, TTL, 1.0), 1.0)
    actions = h.handle(Tick(), 1.0 + core.HANDOVER_TIMEOUT)
    assert core.Withdraw(11) in actions and h.vips and h.state == State.LEADER


def test_a_failing_weight_0_track_resigns_when_nobody_else_can_take_it() -> None:
    h = leader()
    actions = h.handle(Eligibility(frozenset({"track:frontend:api"}), 100), 1.0)
    assert Unregister() in actions
    assert actions.index(RemoveVips()) < actions.index(Resign(11))
    assert h.state == State.FOLLOWER and "track:frontend:api" in h.reason
    assert not [a for a in h.handle(Seen(Snapshot()), 1.1) if isinstance(a, Campaign)]


def test_maintenance_on_a_holder_hands_over_even_to_a_lower_candidate() -> None:
    h = leader("a", 100, 11)
    holder, low = Entry("a", 100, 11), Entry("b", 50, 22)
    h.handle(Seen(Snapshot(holder, (holder, low))), 0.5)
    actions = h.handle(Maintenance(True), 1.0)
    assert Offer("b", 11) in actions and Unregister() in actions and h.vips


def test_our_own_key_from_an_earlier_lease_is_revoked() -> None:
    c = started("a", 100, lease=12)
    actions = c.handle(Seen(Snapshot(Entry("a", 100, 11), ())), 0.1)
    assert Revoke(11) in actions and not c.vips
    assert Revoke(11) not in c.handle(Seen(Snapshot(Entry("a", 100, 11), ())), 0.2)


def test_stop_without_another_candidate_removes_the_vips_then_revokes() -> None:
    h = leader()
    actions = h.handle(Stop(), 1.0)
    assert actions.index(RemoveVips()) < actions.index(Revoke(11))
    assert not h.stopped
    h.handle(Done(Revoke(11), True), 1.01)
    assert h.stopped and h.next_deadline() is None


def test_stop_with_a_candidate_hands_over_first_and_lets_go_after_the_timeout() -> None:
    h = leader("a", 100, 11)
    holder, low = Entry("a", 100, 11), Entry("b", 50, 22)
    h.handle(Seen(Snapshot(holder, (holder, low))), 0.5)
    actions = h.handle(Stop(), 1.0)
    assert Offer("b", 11) in actions and RemoveVips() not in actions
    actions = h.handle(Tick(), 1.0 + core.HANDOVER_TIMEOUT)
    assert actions.index(RemoveVips()) < actions.index(Revoke(11))


def test_without_a_lease_the_node_is_in_fault_saying_why() -> None:
    c = ElectionCore("a", 100, TTL)
    c.handle(Tick(), 0.0)
    c.handle(LeaseFailed(None, "http://198.18.0.11:2379/v3/lease/grant: etcdserver: no leader"), 0.1)
    assert c.state == State.FAULT and "no leader" in c.reason
    assert kinds(c.handle(Tick(), 0.1 + core.RETRY)) == [Grant]


REFUSED = VipsAdded("eth0", (("2001:db8::100/64", "Permission denied"),))


def test_a_refused_vip_resigns_the_key_and_is_a_fault_until_the_backoff_ends() -> None:
    h = leader("a", 200, 11)
    holder, other = Entry("a", 200, 11), Entry("b", 100, 22)
    h.handle(Seen(Snapshot(holder, (holder, other))), 0.3)
    actions = h.handle(REFUSED, 0.4)
    # what was added goes, the key goes (so b may hold), and the candidacy goes (so b need not wait)
    assert RemoveVips() in actions and Resign(11) in actions and Unregister() in actions
    assert actions.index(RemoveVips()) < actions.index(Resign(11))
    assert not [a for a in actions if isinstance(a, (Offer, AddVips))]
    assert StateChanged(State.LEADER, State.FAULT, h.reason, None) in actions
    assert h.state == State.FAULT and not h.vips
    assert h.reason == "vip_add:eth0 (cannot add 2001:db8::100/64: Permission denied)"
    assert h.reason.startswith(fsm.fault_reason(fsm.Fault.VIP_ADD, "eth0"))
    # b holds now; a stays out, whatever it reads, until the backoff ends
    held = Snapshot(other, (other,))
    assert not [a for a in h.handle(Seen(held), 0.5) if isinstance(a, (Register, Campaign, AddVips))]
    assert h.state == State.FAULT and h.next_deadline() <= 0.4 + fsm.VIP_RETRY_FIRST
    assert Register(11, 200) not in h.handle(Tick(), 0.4 + fsm.VIP_RETRY_FIRST - 0.01)
    actions = h.handle(Tick(), 0.4 + fsm.VIP_RETRY_FIRST)
    assert Register(11, 200) in actions
    assert (h.state, h.reason) == (State.FOLLOWER, "held by b")


def test_a_refused_add_again_doubles_the_backoff_and_a_good_one_resets_it() -> None:
    c = started("a", 100, 11)
    now = 0.1
    assert Campaign(11, 100) in c.handle(Seen(Snapshot(None, (Entry("a", 100, 11),))), now)
    for expected in (1.0, 2.0, 4.0):
        assert AddVips in kinds(c.handle(Done(Campaign(11, 100), True), now))
        assert Resign(11) in c.handle(REFUSED, now)
        assert c.vip_retry_at == now + expected
        c.handle(LeaseRenewed(11, TTL, c.vip_retry_at - 0.5), c.vip_retry_at - 0.5)
        assert c.state == State.FAULT
        now = c.vip_retry_at
        # a candidate again: the key is still absent, so it campaigns at once
        actions = c.handle(Tick(), now)
        assert Register(11, 100) in actions and Campaign(11, 100) in actions
    c.handle(Done(Campaign(11, 100), True), now)
    c.handle(VipsAdded("eth0"), now)
    assert c.state == State.LEADER and c.vips
    c.handle(LeaseRenewed(11, TTL, now + 1), now + 1)
    assert Resign(11) in c.handle(REFUSED, now + 1)
    assert c.vip_retry_at == now + 1 + fsm.VIP_RETRY_FIRST


def test_a_successor_whose_vips_are_refused_gives_up_without_accepting() -> None:
    s = started("b", 200, 22)
    holder, me = Entry("a", 100, 11), Entry("b", 200, 22)
    offered = Snapshot(holder, (holder, me), handover=("a", "b"))
    assert AddVips in kinds(s.handle(Seen(offered), 1.0))
    actions = s.handle(REFUSED, 1.05)
    assert RemoveVips() in actions and Unregister() in actions
    assert not [a for a in actions if isinstance(a, (Accept, Resign))]
    assert s.state == State.FAULT and s.reason.startswith("vip_add:eth0")
    assert not [a for a in s.handle(Seen(offered), 1.1) if isinstance(a, (AddVips, Accept))]


def test_a_refusal_while_letting_go_after_a_transfer_is_no_fault() -> None:
    h = leader("a", 100, 11)
    holder, high = Entry("a", 100, 11), Entry("b", 200, 22)
    h.handle(Seen(Snapshot(holder, (holder, high))), 1.0)
    h.handle(Seen(Snapshot(holder, (holder, high), ("a", "b"), accepted=("b", "a"))), 1.1)
    h.handle(Done(Transfer(11, high), True), 1.2)
    assert h.vips and h.state == State.FOLLOWER
    h.handle(REFUSED, 1.25)
    assert h.vip_fault is None and h.state == State.FOLLOWER
