"""`lbctl maintenance` on two real edges under traffic: a clean hand-over, a node that never takes the
VIP back while in maintenance (not even preempting with the higher priority, nor after a restart),
and a clean return when it is turned off."""
from __future__ import annotations

import json
import signal
import time

import pytest

from vipd.lab import connclient
from vipd.lab.edges import build, wait_for


@pytest.mark.timeout(90)
def test_maintenance_hands_over_without_a_failed_request_and_survives_a_restart(lab, tmp_path):
    edges = build(lab, tmp_path / "lab", advert_interval=0.1, preempt=True)   # edge-1: 150, edge-2: 100
    edges.start_edge(0)
    try:
        assert wait_for(lambda: edges.holders() == [0] and edges.state(0) == "MASTER", 20), edges.log(0)
        edges.start_edge(1)
        assert wait_for(lambda: edges.state(1) == "BACKUP", 20), edges.log(1)
        client = edges.start_client(interval=0.01, duration=60, timeout=3)
        time.sleep(1.0)

        started = time.monotonic()
        on = edges.lbctl(0, "maintenance", "on")
        assert on.returncode == 0, on.stderr
        assert on.stdout == "api: maintenance on, MASTER (handing the VIPs over)\n"
        assert wait_for(lambda: edges.state(1) == "MASTER", 10), edges.log(1)
        assert wait_for(lambda: edges.state(0) == "BACKUP", 10), edges.log(0)
        # The VIPs stay on edge-1, quiet, while edge-2 bridges back its connections in flight.
        assert wait_for(lambda: edges.holders() == [1], 10), edges.log(0)
        instance = edges.status(0)["vrrp"][0]
        assert instance["maintenance"] is True and instance["master"] == "198.18.0.12"
        assert "BACKUP (maint)" in edges.lbctl(0, "status").stdout
        unknown = edges.lbctl(0, "maintenance", "on", "nope")
        assert (unknown.returncode, unknown.stderr) == (1, "lbctl: no VIP owner 'nope' on this node (there is api)\n")

        time.sleep(1.5)         # preempt and priority 150 against 100: still not master
        assert edges.state(0) == "BACKUP" and edges.holders() == [1]

        assert edges.stop_edge(0, signal.SIGTERM) == 0, edges.log(0)
        saved = json.loads((edges.workdir / "edge1.state" / "runtime.json").read_text())
        assert saved["maintenance"] == {"all": True, "owners": []}
        edges.start_edge(0)
        assert wait_for(lambda: (edges.status(0) or {}).get("vrrp"), 20), edges.log(0)
        time.sleep(1.5)         # several master-down intervals
        instance = edges.status(0)["vrrp"][0]
        assert (instance["state"], instance["maintenance"]) == ("BACKUP", True)
        assert edges.holders() == [1] and edges.state(1) == "MASTER"

        back = time.monotonic()
        off = edges.lbctl(0, "maintenance", "off", "api")
        assert off.returncode == 0 and off.stdout == "api: maintenance off, BACKUP\n", off.stderr
        assert wait_for(lambda: edges.state(0) == "MASTER" and edges.state(1) == "BACKUP", 10), edges.log(0)
        assert wait_for(lambda: edges.holders() == [0], 10), edges.log(1)
        time.sleep(0.5)
        attempts = edges.finish_client(client)
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)
    handed_over = connclient.summarize(attempts, since=started - 0.5, until=back)
    came_back = connclient.summarize(attempts, since=back)
    print("maintenance on, restart:", handed_over, "\nmaintenance off:", came_back)
    assert handed_over["requests"] > 500 and came_back["requests"] > 50
    assert handed_over["failed"] == 0 and handed_over["slow"] == 0, handed_over
    assert came_back["failed"] == 0 and came_back["slow"] == 0, came_back
    assert "maintenance on" in edges.log(0) and "Traceback" not in edges.log(0) + edges.log(1)
    assert json.loads((edges.workdir / "edge1.state" / "runtime.json").read_text())["maintenance"] == {
        "all": False, "owners": []}
