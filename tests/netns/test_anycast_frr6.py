"""`[[anycast]]` with an IPv6 VIP and real FRR: the lab of test_anycast_frr.py dual-stacked, each
edge announcing 2001:db8:1::100/128 over an IPv6 BGP session (config/frr/*/bgpd-ipv6.conf). The
router must hold an ECMP route with one nexthop per edge, spread a client's new connections over
them, and drop an edge whose vipd is killed while requests keep succeeding."""
from __future__ import annotations

import collections
import signal
import sys

import pytest
from test_anycast_frr import failed_across_the_move, probe, started_lab, watch

from vipd.lab import connclient


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
    client = lab.start_client(interval=0.01, count=300)
    attempts = lab.finish_client(client, wait=True)
    spread = collections.Counter(a.detail for a in attempts if a.ok)
    print("300 new connections to [2001:db8:1::100]:6443:", dict(sorted(spread.items())))
    assert len(attempts) == 300 and sum(not a.ok for a in attempts) == 0
    assert set(spread) == {"edge-1", "edge-2", "edge-3"} and min(spread.values()) >= 60, spread


@pytest.mark.timeout(60)
def test_sigkill_of_vipd_withdraws_its_nexthop(lab):
    timings = {}

    def kill():
        timings["ms"] = watch(lab, lambda: lab.stop_edge(2, signal.SIGKILL), 2, timings=timings)

    attempts, at, _ = probe(lab, kill)
    owners = edge_of(lab)
    print(f"vipd SIGKILL -> router FIB without edge-3: {timings['ms']:.0f} ms")
    assert sorted(owners.get(hop) for hop in lab.nexthops()) == [0, 1]
    assert "vipd0" not in lab.edges[2].run(["ip", "-o", "link"]).stdout
    summary = connclient.summarize(attempts)
    failed = failed_across_the_move(attempts, timings["change"])
    print(f"client around the kill: {summary}; {len(failed)} open across the router's change failed")
    assert timings["ms"] < 1000 and summary["requests"] > 150
    after = connclient.summarize(attempts, since=timings["change"][1] + 0.2)
    assert after["slow"] == 0 and after["failed"] == 0 and after["requests"] > 50, after


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
