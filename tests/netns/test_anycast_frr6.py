"""`[[anycast]]` with an IPv6 VIP and real FRR: the lab of test_anycast_frr.py dual-stacked, each
edge announcing 2001:db8:1::100/128 over an IPv6 BGP session (config/frr/*/bgpd-ipv6.conf). The
router must hold an ECMP route with one nexthop per edge, spread a client's new connections over
them, and drop an edge whose vipd is killed while requests keep succeeding."""
from __future__ import annotations

import sys

import pytest
from test_anycast_frr import (
    sigkill_edge_3,
    spread_over_the_three_edges,
    started_lab,
    watch,
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    yield from started_lab(tmp_path_factory, ipv6=True)


def edge_of(lab) -> dict[str, int]:
    """Each address the router may use as an edge's nexthop (global or link-local) -> the edge."""
    return {address: i for i, host in enumerate(lab.edges) for address in (host.ipv6, host.link_local())}


@pytest.mark.timeout(60)
def test_the_router_spreads_new_connections_over_the_three_edges(lab):
    owners = edge_of(lab)
    print("the router's nexthops for 2001:db8:1::100/128:", lab.nexthops())
    assert sorted(owners.get(hop) for hop in lab.nexthops()) == [0, 1, 2], (lab.nexthops(), owners)
    for i in range(3):
        status = lab.status(i)
        assert status["anycast"] == [{
            **status["anycast"][0], "name": "api-anycast", "state": "ANNOUNCED", "device": "vipd0",
            "virtual_ips": ["2001:db8:1::100/128"], "maintenance": False, "reason": "serving"}]
        shown = lab.edges[i].run(["ip", "-o", "-6", "addr", "show", "dev", "vipd0", "scope", "global"]).stdout
        assert [line.split()[3] for line in shown.splitlines()] == ["2001:db8:1::100/128"]
    assert len(spread_over_the_three_edges(lab, " to [2001:db8:1::100]:6443")) == 300


@pytest.mark.timeout(60)
def test_sigkill_of_vipd_withdraws_its_nexthop(lab):
    sigkill_edge_3(lab)
    assert sorted(edge_of(lab).get(hop) for hop in lab.nexthops()) == [0, 1]
    assert "vipd0" not in lab.edges[2].run(["ip", "-o", "link"]).stdout


def local_route(lab, i: int) -> list[str]:
    """vipd's own local routes for the VIP on edge i (how a withdrawn VIP is still delivered)."""
    shown = lab.edges[i].run(["ip", "-6", "-o", "route", "show", "table", "local", "proto", "112"]).stdout
    return [line.split()[1] for line in shown.splitlines()]


ASK = ("import socket; s = socket.create_connection(('2001:db8:1::100', 6443), timeout=3); "
       "s.sendall(b'GET / HTTP/1.1\\r\\nHost: vip\\r\\nConnection: close\\r\\n\\r\\n'); "
       "print(s.makefile('rb').read().split(b'\\r\\n\\r\\n', 1)[1].decode().strip())")


@pytest.mark.timeout(60)
def test_maintenance_withdraws_and_the_vip_stays_deliverable(lab):
    if lab.procs[2].poll() is not None:
        lab.start_edge(2)
        assert lab.wait_nexthops(3, 20) is not None, lab.nexthops()
    assert local_route(lab, 0) == []
    watch(lab, lambda: lab.lbctl(0, "maintenance", "on", "api-anycast"), 2)
    try:
        assert sorted(edge_of(lab).get(hop) for hop in lab.nexthops()) == [1, 2]
        assert lab.edges[0].run(["ip", "-o", "-6", "addr", "show", "dev", "vipd0", "scope", "global"]).stdout == ""
        assert local_route(lab, 0) == ["2001:db8:1::100"]
        # Connections still routed here while the routers converge are served.
        assert lab.edges[0].run([sys.executable, "-c", ASK]).stdout.strip() == "edge-1"
    finally:
        watch(lab, lambda: lab.lbctl(0, "maintenance", "off"), 3)
    assert local_route(lab, 0) == []
