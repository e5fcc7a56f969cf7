"""A reload that changes an election: which changes restart it (`needs_restart`) and what the core
decides for the rest (`Reconfigured`): the lease and the key stay, the candidacy record follows the
new priority, preemption follows the ranking, the VIPs follow the new list."""
from __future__ import annotations

import asyncio
import ipaddress
from dataclasses import replace

from test_election_core import TTL, leader, started

from vipd.election import core
from vipd.election.config import ElectionConfig, EtcdConfig, needs_restart
from vipd.election.core import (
    Accept,
    AddVips,
    Announce,
    Campaign,
    Done,
    DropVips,
    Eligibility,
    Entry,
    LeaseRenewed,
    Offer,
    Reconfigured,
    Register,
    RemoveVips,
    Resign,
    Revoke,
    Seen,
    Snapshot,
    State,
    StateChanged,
    Transfer,
    Unregister,
    VipsAdded,
)
from vipd.election.owner import ElectionOwner
from vipd.vrrp.addresses import Change
from vipd.vrrp.config import Track
from vipd.vrrp.links import InterfaceTable

BASE = ElectionConfig(name="api", interface="eth0", virtual_ips=(ipaddress.ip_interface("198.18.0.100/24"),),
                      key="/vipd/elections/api", priority=100)


def reconfigured(priority: int, reasons: frozenset[str] = frozenset(), added: tuple[str, ...] = (),
                 dropped: tuple[str, ...] = ()) -> Reconfigured:
    return Reconfigured(Eligibility(reasons, priority), added, dropped)


def session_actions(actions: list) -> list:
    """What moves the key, the lease or the state: none of it may come from an in-place change
    that leaves the holder the best."""
    return [a for a in actions if isinstance(a, (Offer, Transfer, Resign, Revoke, Campaign, RemoveVips, Unregister,
                                                 StateChanged, core.Grant))]


def test_key_name_and_interface_restart_an_election_priority_tracks_and_vips_do_not() -> None:
    assert not needs_restart(BASE, BASE)
    in_place = [replace(BASE, priority=50), replace(BASE, tracks=(Track(kind="frontend", target="api", weight=0),)),
                replace(BASE, virtual_ips=(ipaddress.ip_interface("198.18.0.101/24"),)),
                replace(BASE, virtual_ips=(*BASE.virtual_ips, ipaddress.ip_interface("2001:db8::100/64")))]
    assert [needs_restart(BASE, new) for new in in_place] == [False] * 4
    restart = [replace(BASE, key="/vipd/elections/other"), replace(BASE, interface="eth1"),
               replace(BASE, name="api2")]
    assert [needs_restart(BASE, new) for new in restart] == [True] * 3


def test_a_holder_whose_priority_changes_but_stays_best_republishes_and_keeps_the_key() -> None:
    h = leader("a", 200, 11)
    me, low = Entry("a", 200, 11), Entry("b", 100, 22)
    h.handle(Seen(Snapshot(me, (me, low))), 0.5)
    actions = h.handle(reconfigured(150), 0.6)
    assert actions == [Register(11, 150)]
    assert (h.state, h.holder, h.priority, h.lease, h.vips) == (State.LEADER, "a", 150, 11, True)
    # the next read shows our new record: nothing more to do
    assert session_actions(h.handle(Seen(Snapshot(me, (replace(me, priority=150), low))), 0.7)) == []


def test_a_holder_lowered_below_another_candidate_hands_over_as_preemption_does() -> None:
    h = leader("a", 200, 11)
    me, other = Entry("a", 200, 11), Entry("b", 100, 22)
    h.handle(Seen(Snapshot(me, (me, other))), 0.5)
    actions = h.handle(reconfigured(50), 0.6)
    assert Register(11, 50) in actions and Offer("b", 11) in actions
    assert h.vips and h.state == State.LEADER            # VIPs stay until the successor has them
    lowered = (replace(me, priority=50), other)
    actions = h.handle(Seen(Snapshot(me, lowered, ("a", "b"), accepted=("b", "a"))), 0.8)
    assert actions == [Transfer(11, other)]
    actions = h.handle(Done(Transfer(11, other), True), 0.85)
    assert RemoveVips() not in actions and h.state == State.FOLLOWER and h.holder == "b"
    assert RemoveVips() in h.handle(core.Tick(), 0.85 + core.RELEASE_GRACE)


def test_a_follower_raised_above_the_holder_republishes_and_the_holder_then_offers() -> None:
    f = started("b", 100, 22)
    holder = Entry("a", 150, 11)
    f.handle(Seen(Snapshot(holder, (holder, Entry("b", 100, 22)))), 0.1)
    actions = f.handle(reconfigured(200), 0.2)
    assert Register(22, 200) in actions
    assert not [a for a in actions if isinstance(a, (AddVips, Campaign))] and f.state == State.FOLLOWER
    # the holder reads the new record and offers the key to it
    h = leader("a", 150, 11)
    assert Offer("b", 11) in h.handle(Seen(Snapshot(holder, (holder, Entry("b", 200, 22)))), 0.3)


def test_a_reload_whose_track_now_fails_with_weight_0_resigns_like_a_failing_track() -> None:
    h = leader("a", 200, 11)
    me = Entry("a", 200, 11)
    h.handle(Seen(Snapshot(me, (me,))), 0.5)
    actions = h.handle(reconfigured(200, frozenset({"track:api"})), 0.6)
    assert Unregister() in actions and RemoveVips() in actions and Resign(11) in actions
    assert h.state == State.FOLLOWER and h.reason == "not eligible: track:api"


def test_a_holder_adds_and_announces_new_vips_and_removes_dropped_ones_in_place() -> None:
    h = leader("a", 200, 11)
    me = Entry("a", 200, 11)
    h.handle(Seen(Snapshot(me, (me,))), 0.5)
    actions = h.handle(reconfigured(200, added=("198.18.0.101/24",), dropped=("198.18.0.100/24",)), 0.6)
    assert actions == [DropVips(("198.18.0.100/24",)), AddVips(h.lifetime(0.6), announce=True)]
    assert (h.state, h.lease, h.vips) == (State.LEADER, 11, True)
    # only dropped: nothing to add or announce
    assert h.handle(reconfigured(200, dropped=("198.18.0.101/24",)), 0.7) == [DropVips(("198.18.0.101/24",))]


def test_a_follower_without_vips_changes_nothing_on_the_node_for_a_new_vip_list() -> None:
    f = started("b", 100, 22)
    holder = Entry("a", 150, 11)
    f.handle(Seen(Snapshot(holder, (holder, Entry("b", 100, 22)))), 0.1)
    assert f.handle(reconfigured(100, added=("198.18.0.101/24",), dropped=("198.18.0.100/24",)), 0.2) == []


def test_a_successor_whose_vips_change_mid_take_over_accepts_only_once_the_new_ones_are_added() -> None:
    s = started("b", 200, 22)
    holder = Entry("a", 100, 11)
    offered = Snapshot(holder, (holder, Entry("b", 200, 22)), handover=("a", "b"))
    assert AddVips in [type(a) for a in s.handle(Seen(offered), 1.0)]
    actions = s.handle(reconfigured(200, added=("198.18.0.101/24",)), 1.05)
    assert actions == [AddVips(s.lifetime(1.05), announce=True)]
    assert s.handle(VipsAdded("eth0"), 1.1) == [Accept("a", 22)]


def test_an_old_holder_letting_go_after_a_transfer_drops_removed_vips_but_adds_no_new_ones() -> None:
    h = leader("a", 100, 11)
    holder, high = Entry("a", 100, 11), Entry("b", 200, 22)
    h.handle(Seen(Snapshot(holder, (holder, high))), 1.0)
    h.handle(Seen(Snapshot(holder, (holder, high), ("a", "b"), accepted=("b", "a"))), 1.2)
    h.handle(Done(Transfer(11, high), True), 1.25)
    assert h.release_at is not None and h.vips
    actions = h.handle(reconfigured(100, added=("198.18.0.101/24",), dropped=("198.18.0.100/24",)), 1.3)
    assert actions == [DropVips(("198.18.0.100/24",))]
    assert Announce() not in actions and h.state == State.FOLLOWER


def test_the_fence_still_holds_after_an_in_place_change() -> None:
    h = leader("a", 200, 11)
    me = Entry("a", 200, 11)
    h.handle(Seen(Snapshot(me, (me,))), 0.5)
    h.handle(reconfigured(120, added=("198.18.0.101/24",)), 0.6)
    assert h.deadline == TTL - core.MARGIN
    actions = h.handle(core.Tick(), TTL - core.MARGIN)
    assert actions[0] == RemoveVips() and h.state == State.FAULT


class RecordedAddresses:
    """The address worker's calls, each answered at once."""

    def __init__(self) -> None:
        self.added: list[list[str]] = []

    def add(self, interface: str, vips, lifetime: int | None = None) -> asyncio.Future:
        self.added.append([str(v) for v in vips])
        return self._done()

    def remove(self, interface: str, vips) -> asyncio.Future:
        return self._done()

    @staticmethod
    def _done() -> asyncio.Future:
        done = asyncio.get_running_loop().create_future()
        done.set_result(Change())
        return done


class Unanswered:
    """An etcd client whose renewals never come back: the test feeds the renewal itself."""

    async def renew(self, lease: int) -> float:
        return await asyncio.get_running_loop().create_future()


class LinkUp(InterfaceTable):
    def link_up(self, name: str) -> bool:
        return True


def test_an_old_holder_letting_go_renews_the_vips_it_holds_and_never_adds_one_a_reload_brought() -> None:
    """The VIP a reload adds while the old holder lets its VIPs go stays off it: its lease renewals
    renew only what it holds (a VIP added there would answer ARP beside the successor's)."""
    async def run() -> list[list[str]]:
        addresses = RecordedAddresses()
        now = [0.0]
        owner = ElectionOwner(BASE, EtcdConfig(endpoints=("http://198.18.0.31:2379",), lease_ttl=TTL), "a",
                              client=Unanswered(), interfaces=LinkUp(), addresses=addresses, clock=lambda: now[0])
        owner.core = leader("a", 100, 11)
        holder, high = Entry("a", 100, 11), Entry("b", 200, 22)
        for now[0], event in ((1.0, Seen(Snapshot(holder, (holder, high)))),
                              (1.2, Seen(Snapshot(holder, (holder, high), ("a", "b"), accepted=("b", "a")))),
                              (1.25, Done(Transfer(11, high), True))):
            owner._feed(event)
        assert owner.core.release_at is not None and owner.core.vips
        await owner.update(replace(BASE, virtual_ips=(*BASE.virtual_ips, ipaddress.ip_interface("198.18.0.101/24"))))
        addresses.added.clear()
        owner._feed(LeaseRenewed(11, TTL, 1.3))
        await asyncio.sleep(0)
        return addresses.added

    assert asyncio.run(run()) == [["198.18.0.100/24"]]
