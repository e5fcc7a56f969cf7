"""Self-fencing (issue 8): how long a VIP outlives its last renewal, and what a master does once it
learns that the kernel has dropped them (VipsLost): it steps down, before any advert it owes."""
from __future__ import annotations

import pytest

from vipd.vrrp.fsm import (
    AdvertReceived,
    HoldVipsQuietly,
    RemoveVips,
    RouterParams,
    SendAdvert,
    Startup,
    State,
    StateChanged,
    Timeout,
    VipsLost,
    VrrpRouter,
)
from vipd.vrrp.instance import VIP_REFRESH_PERIOD, vip_lifetime

OWN, HIGHER, LOWER = "198.18.0.11", "198.18.0.12", "198.18.0.5"


def master(**overrides) -> VrrpRouter:
    params = dict(vrid=51, version=3, priority=150, advert_interval=0.1, primary_address=OWN)
    params.update(overrides)
    router = VrrpRouter(RouterParams(**params))
    router.handle(Startup(), 0.0)
    router.handle(Timeout(), router.next_deadline())
    assert router.state is State.MASTER
    return router


@pytest.mark.parametrize("interval", [0.01, 0.1, 0.5, 1.0, 1.5, 3.0, 10.0, 40.95, 255.0])
@pytest.mark.parametrize("version", [2, 3])
def test_vips_outlive_the_backups_wait_and_two_missed_renewals(interval, version):
    lifetime = vip_lifetime(interval)
    assert isinstance(lifetime, int)
    assert lifetime >= 3 * VIP_REFRESH_PERIOD
    for priority in (1, 100, 254):
        skew = (256 - priority) / 256 * (interval if version == 3 else 1.0)
        assert lifetime >= 3 * interval + skew, (interval, priority)
    # ... and not much longer: a dead node stops answering within about a second more.
    assert lifetime <= max(3, 4 * interval + 2)


def test_a_master_whose_vips_expired_steps_down_before_the_adverts_it_owes():
    router = master()
    frozen_until = router.next_deadline() + 5.0      # SIGSTOP for 5 s, 50 adverts overdue
    actions = router.handle(VipsLost(), frozen_until)
    assert [a for a in actions if isinstance(a, SendAdvert)] == []
    assert RemoveVips() in actions and not any(isinstance(a, HoldVipsQuietly) for a in actions)
    assert StateChanged(State.MASTER, State.BACKUP, "vips_lost") in actions
    assert router.state is State.BACKUP and router.master is None
    # Nothing due until a backup's master-down interval from now.
    assert router.next_deadline() == pytest.approx(frozen_until + router.master_down_interval)


def test_after_losing_its_vips_it_follows_the_new_master_without_preempt():
    router = master(preempt=False)
    router.handle(VipsLost(), 10.0)
    now = 10.0
    for _ in range(50):
        now += 0.1
        router.handle(AdvertReceived(LOWER, 100, 0.1), now)
    assert router.state is State.BACKUP and router.master == LOWER


def test_after_losing_its_vips_it_takes_over_again_with_preempt():
    router = master(preempt=True)
    router.handle(VipsLost(), 10.0)
    now, became_master = 10.0, None
    while now < 12.0 and became_master is None:
        now += 0.1
        for action in router.handle(AdvertReceived(LOWER, 100, 0.1), now):
            if isinstance(action, StateChanged) and action.new is State.MASTER:
                became_master = now
    assert became_master is not None and became_master - 10.0 <= router.master_down_interval + 0.1
    assert router.state is State.MASTER


def test_vips_lost_means_nothing_to_a_backup():
    router = master()
    router.handle(AdvertReceived(HIGHER, 200, 0.1), 1.0)
    assert router.state is State.BACKUP
    assert router.handle(VipsLost(), 1.05) == []
