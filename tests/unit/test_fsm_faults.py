"""The state machine's fault set: each reason raised and cleared on its own (a dead netlink monitor,
a VIP the kernel refused, a lost raw socket, beside link and track faults)."""
from __future__ import annotations

from vipd.vrrp.fsm import (
    AddVips,
    AdvertReceived,
    Fault,
    FaultCleared,
    FaultRaised,
    RemoveVips,
    RouterParams,
    SendAdvert,
    Startup,
    State,
    StateChanged,
    Timeout,
    VrrpRouter,
    fault_reason,
)

VIP_ADD = fault_reason(Fault.VIP_ADD, "eth0")
NETLINK = fault_reason(Fault.NETLINK)
SOCKET = fault_reason(Fault.SOCKET, "eth0")


def master(now: float = 0.0) -> VrrpRouter:
    router = VrrpRouter(RouterParams(vrid=51, version=3, priority=150, advert_interval=1.0,
                                     primary_address="198.18.0.11"))
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
