"""The shipped config/frr/router/resilient-nexthops.sh on the anycast lab's Linux router (real FRR,
real vipd): with its resilient group, an edge leaving breaks only its own established flows; with
zebra's plain hash-threshold route (the control, same lab, same edge) it breaks flows of a
surviving edge too (README: the known limit; bench/ecmp.py measures it with more flows)."""
from __future__ import annotations

import time

import pytest

from vipd.lab import anycast as anycastlab
from vipd.lab import ecmp
from vipd.lab.ecmp import Broken, Flows, Routing
from vipd.lab.netns import Lab, unavailable_reason

EDGES = ["198.18.0.11", "198.18.0.12", "198.18.0.13"]
# Hash-threshold splits the hash space in the FIB's nexthop order; dropping the first (last) of
# three hands a half of the middle edge's third to the other end: each flow moves with p = 1/6, so
# the control sees no other edge's flow break with p = (5/6)^90 = 7.5e-8 (dropping the middle one
# would move none).
FLOWS = 90


@pytest.fixture
def lab(tmp_path):
    reason = unavailable_reason() or anycastlab.unavailable_reason()
    if reason:
        pytest.skip(reason)
    namespaces = Lab()
    built = None
    try:
        built = anycastlab.build(namespaces, tmp_path / "anycast")
        for i in range(3):
            built.start_edge(i)
        ecmp.wait_bgp_paths(built, 3, 40)
        yield built
    finally:
        if built is not None:
            built.close()
        namespaces.close()


def remove_edge(lab, routing: Routing, i: int) -> Broken:
    """Flows through the VIP, then edge i in maintenance (withdrawn, still serving its flows) and
    the router following; the flows counted."""
    flows = Flows(lab, FLOWS, interval=0.2, stall=1.5, name=routing.name)
    try:
        assert flows.open == FLOWS
        time.sleep(0.5)
        at = time.monotonic()
        done = lab.lbctl(i, "maintenance", "on", "api-anycast")
        assert done.returncode == 0, done.stderr
        assert ecmp.follow(lab, routing, 2, timeout=10) == [e for e in EDGES if e != EDGES[i]]
        time.sleep(2.5)
    finally:
        result = flows.finish()
    return Broken.count(result, f"edge-{i + 1}", at)


@pytest.mark.timeout(120)
def test_with_the_resilient_group_a_leaving_edge_breaks_only_its_own_flows(lab):
    proto, order = ecmp.fib_route(lab)
    assert proto == "bgp" and sorted(order) == EDGES, (proto, order)
    # An end of the FIB's order (for the control), and not the script's last argument: the edges
    # after it in the script's list must keep their nexthops.
    leaving = EDGES.index(order[0] if order[0] != EDGES[-1] else order[-1])

    plain = remove_edge(lab, Routing.PLAIN, leaving)
    lab.lbctl(leaving, "maintenance", "off")
    ecmp.route_resiliently(lab, ecmp.wait_bgp_paths(lab, 3, 10))
    resilient = remove_edge(lab, Routing.RESILIENT, leaving)
    print(f"edge-{leaving + 1} (FIB order {order}) leaves; plain: {plain}; resilient: {resilient}")

    for broken in (plain, resilient):
        assert broken.broken_before == 0 and broken.own + broken.others == FLOWS, broken
        # The leaving edge keeps serving, but the router sends its flows elsewhere: all reset.
        assert broken.own > 0 and broken.own_broken == broken.own, broken
    assert plain.others_broken > 0, plain
    assert resilient.others_broken == 0, resilient
    # The script's group, not zebra's route, carried the VIP; one nexthop id per edge, kept.
    assert ecmp.fib_route(lab) == ("static", [e for e in EDGES if e != EDGES[leaving]])
    assert set(ecmp.buckets(lab)) == {e for e in EDGES if e != EDGES[leaving]}
