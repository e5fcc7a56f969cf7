"""A dead netlink monitor on a live VRRP pair (real `vipd run` processes): restarted at once when
it fails once; failing again before it reads links and addresses afresh, the master goes to FAULT
(resigning with priority 0, so the backup takes the VIP after its skew time, and holding the VIP
quietly while the backup bridges connections in flight back) and comes back when link state is
followed again. The fault is injected inside edge-1's process by netlink_breaker.py."""
from __future__ import annotations

import datetime
import json
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from vipd.lab import edges as edgelab
from vipd.lab.edges import EdgeLab
from vipd.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

BREAKER = Path(__file__).with_name("netlink_breaker.py")
INTERVAL = 0.5
PRIORITIES = [150, 100]
# How long edge-2 waits after a priority-0 advert (RFC 5798 Skew_Time). Without that resign it
# would wait its Master_Down_Interval (3 x interval + skew) from the last advert it heard: at least
# 2 x interval + skew after the fault.
SKEW = (256 - PRIORITIES[1]) * INTERVAL / 256


def wait_for(predicate, timeout: float = 15.0):
    return edgelab.wait_for(predicate, timeout, 0.05)


def start_breakable(edges: EdgeLab, i: int, flags: Path) -> subprocess.Popen:
    """`vipd run` on edge i through netlink_breaker.py, with its output in the edge's log."""
    flags.mkdir()
    with open(edges.workdir / f"edge{i + 1}.log", "ab") as log:
        proc = edges.edges[i].popen([sys.executable, str(BREAKER), str(flags), "run", "-c",
                                     str(edges.workdir / f"edge{i + 1}.toml")],
                                    stdout=log, stderr=subprocess.STDOUT)
    edges.procs[i] = proc
    return proc


def instance(edges: EdgeLab, i: int) -> dict | None:
    status = edges.status(i)
    return status["vrrp"][0] if status else None


def state_events(edges: EdgeLab, i: int) -> list[dict]:
    done = edges.lbctl(i, "events", "--json")
    assert done.returncode == 0, done.stderr
    return [r for r in map(json.loads, done.stdout.splitlines()) if r["kind"] == "vrrp.state"]


def change(record: dict) -> tuple[str, str, str]:
    return record["fields"]["old"], record["fields"]["new"], record["fields"]["reason"]


def at(record: dict) -> datetime.datetime:
    return datetime.datetime.fromisoformat(record["time"])


@pytest.mark.timeout(150)
def test_a_dead_netlink_monitor_is_a_fault_that_hands_over_at_once_and_clears(lab: Lab, tmp_path: Path) -> None:
    edges = edgelab.build(lab, tmp_path / "lab", backends=1, priorities=PRIORITIES, advert_interval=INTERVAL,
                          preempt=True, frontend_track_weight=None)
    flags = tmp_path / "flags"
    try:
        start_breakable(edges, 0, flags)
        assert wait_for(lambda: edges.state(0) == "MASTER", 20), edges.log(0)
        edges.start_edge(1)
        assert wait_for(lambda: edges.state(1) == "BACKUP" and edges.holders() == [0], 20), edges.log(1)
        before = instance(edges, 0)

        # 1. One failure: the monitor is restarted at once (a fresh dump), no fault, no hand-over.
        (flags / "break").touch()
        assert wait_for(lambda: not (flags / "break").exists(), 5)
        assert wait_for(lambda: "netlink monitor failed (OSError: [Errno 88] Socket operation on non-socket); "
                        "restarting it" in edges.log(0), 5), edges.log(0)
        time.sleep(4 * INTERVAL)
        after = instance(edges, 0)
        assert after["state"] == "MASTER" and after["transitions"] == before["transitions"], edges.log(0)
        assert after["fault_reasons"] == [] and edges.holders() == [0] and edges.state(1) == "BACKUP"
        assert "failed again" not in edges.log(0)

        # 2. Broken again and it cannot be reopened: FAULT, resigning so that edge-2 takes over now.
        (flags / "refuse").touch()
        (flags / "break").touch()
        faulted = wait_for(lambda: (s := instance(edges, 0)) and s["state"] == "FAULT" and s, 10)
        assert faulted, edges.log(0)
        assert faulted["fault_reasons"] == ["netlink"]
        assert faulted["fault_reason"] == "link state is not followed (netlink: OSError: [Errno 24] Too many open files)"
        assert faulted["master"] is None
        shown = edges.lbctl(0, "status")
        assert shown.returncode == 0 and any(line.startswith("api/51") and " FAULT " in line
                                             for line in shown.stdout.splitlines()), shown.stdout
        assert wait_for(lambda: edges.state(1) == "MASTER", 5), edges.log(1)
        # edge-1 keeps the VIP quietly while edge-2 bridges its connections in flight back to it:
        # the frontend's drain_timeout plus a second.
        quiet_hold = tomllib.loads(edges.config_text(1))["frontend"][0]["drain_timeout"] + 1.0
        assert wait_for(lambda: edges.holders() == [0, 1], 5), "the faulted node holds the VIP quietly"
        assert wait_for(lambda: "bridging connections in flight to 198.18.0.11" in edges.log(1), 5), edges.log(1)
        assert wait_for(lambda: edges.holders() == [1], quiet_hold + 5), "the faulted node still holds the VIP"
        assert "releasing the VIPs held quietly (quiet_hold_over)" in edges.log(0)
        *_, fault = state_events(edges, 0)
        assert change(fault) == ("MASTER", "FAULT", "fault:netlink") and fault["level"] == "warning"
        *_, takeover = state_events(edges, 1)
        assert change(takeover) == ("BACKUP", "MASTER", "master_resigned"), takeover
        taken_after = (at(takeover) - at(fault)).total_seconds()
        assert 0 <= taken_after < SKEW + INTERVAL, f"edge-2 took over {taken_after:.3f} s after the fault"

        # It stays in FAULT while the monitor cannot be reopened (retried with backoff), reported once.
        time.sleep(3 * INTERVAL)
        assert instance(edges, 0)["state"] == "FAULT" and edges.holders() == [1]
        assert edges.log(0).count("netlink monitor failed again (OSError: [Errno 24] Too many open files)") == 1

        # 3. Reopened: link state is followed again, the fault clears, and edge-1 (150, preempt)
        # takes the VIP back from edge-2 (100).
        (flags / "refuse").unlink()
        back = wait_for(lambda: (s := instance(edges, 0)) and s["state"] == "MASTER" and s, 20)
        assert back, edges.log(0)
        assert back["fault_reasons"] == [] and back["fault_reason"] is None and back["master"] == "198.18.0.11"
        assert "netlink monitor restarted; link state is followed again" in edges.log(0)
        assert wait_for(lambda: edges.state(1) == "BACKUP" and 0 in edges.holders(), 5), edges.log(1)
        # edge-2 keeps the VIP quietly in turn while edge-1 bridges back to it.
        assert wait_for(lambda: edges.holders() == [0], quiet_hold + 5), edges.log(1)
        recovered = [change(r) for r in state_events(edges, 0) if at(r) > at(fault)]
        assert recovered[0] == ("FAULT", "BACKUP", "fault_cleared"), recovered
        assert recovered[-1][:2] == ("BACKUP", "MASTER"), recovered
        # And it stays there.
        time.sleep(4 * INTERVAL)
        assert edges.state(0) == "MASTER" and edges.state(1) == "BACKUP" and edges.holders() == [0]

        assert edges.stop_edge(0) == 0
        for i in range(2):
            assert "Traceback" not in edges.log(i), edges.log(i)
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)
