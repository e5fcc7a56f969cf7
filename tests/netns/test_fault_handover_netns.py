"""A master that goes to FAULT (a weight-0 track script fails) on a live pair of real `vipd run`
processes with the proxy: it resigns and holds its VIP quietly while edge-2, which cannot tell a
fault from a planned stop, bridges back the connections established through it. Those connections
keep working, new ones go to edge-2, and edge-1 lets the VIP go once the hold is over."""
from __future__ import annotations

import signal
import time
import tomllib

import pytest
from held import use_held_connections_after

from vipd.lab import connclient
from vipd.lab.edges import build, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

HELD = 10


def script_track(flag) -> str:
    """Edge-1's weight-0 track: failing while `flag` exists."""
    return "\n".join(["  [[vrrp.track]]", f'  script = "test ! -e {flag}"', "  interval = 0.2", "  timeout = 0.1",
                      "  rise = 1", "  fall = 1", "  weight = 0", "", ""])


def frontend_totals(status: dict) -> int:
    return sum(b["total_connections"] for b in status["frontends"][0]["backends"])


@pytest.mark.timeout(120)
def test_connections_through_a_master_that_faults_survive_on_its_quiet_hold(lab, tmp_path) -> None:
    edges = build(lab, tmp_path / "lab", backends=2, priorities=[150, 100], advert_interval=0.1,
                  frontend_track_weight=None)
    flag = tmp_path / "failing"
    config = edges.config_text(0)
    (edges.workdir / "edge1.toml").write_text(config.replace("[[frontend]]", script_track(flag) + "[[frontend]]", 1))
    # The successor bridges, and the old master holds quietly, for the longest drain_timeout plus a second.
    hold = tomllib.loads(config)["frontend"][0]["drain_timeout"] + 1.0
    try:
        edges.start_edge(0)
        assert wait_for(lambda: edges.state(0) == "MASTER" and edges.holders() == [0], 20), edges.log(0)
        edges.start_edge(1)
        assert wait_for(lambda: edges.state(1) == "BACKUP", 20), edges.log(1)

        faulted_at: list[float] = []

        def fail_track() -> None:
            faulted_at.append(time.monotonic())
            flag.touch()

        results = use_held_connections_after(edges, HELD, fail_track)
        assert len(results) == HELD and all(r.startswith("HTTP/1.1 200 OK be-") for r in results), results
        after_held = edges.status(0)
        vrrp = after_held["vrrp"][0]
        assert vrrp["state"] == "FAULT" and vrrp["fault_reasons"] == ["track:script:test"], vrrp
        assert vrrp["master"] is None and vrrp["handing_over"] is False
        assert "bridging connections in flight to 198.18.0.11" in edges.log(1)
        assert 0 in edges.holders(), "edge-1 keeps the VIP (quietly) while edge-2 bridges back to it"

        # New connections go to edge-2: edge-1 is silent on ARP for the VIP.
        served_before = frontend_totals(edges.status(1))
        client = edges.start_client(interval=0.02, duration=1.0, timeout=3)
        client.wait(20)
        attempts = edges.finish_client(client)
        summary = connclient.summarize(attempts)
        assert summary["requests"] >= 40 and summary["failed"] == 0, summary
        assert frontend_totals(edges.status(1)) - served_before == summary["requests"]
        assert frontend_totals(edges.status(0)) == frontend_totals(after_held)

        # Renewed while held (the hold outlasts the VIP's lifetime), released once it is over.
        assert wait_for(lambda: 0 not in edges.holders(), hold + 5), edges.log(0)
        released_after = time.monotonic() - faulted_at[0]
        assert hold - 0.5 < released_after < hold + 3, f"released {released_after:.2f} s after the fault"
        assert "releasing the VIPs held quietly (quiet_hold_over)" in edges.log(0)
        assert edges.holders() == [1] and edges.state(1) == "MASTER"

        # The track passes again: edge-1 rejoins as BACKUP (no preempt), edge-2 keeps the VIP.
        flag.unlink()
        assert wait_for(lambda: edges.state(0) == "BACKUP", 10), edges.log(0)
        time.sleep(1.0)
        assert edges.state(1) == "MASTER" and edges.holders() == [1]
        for i in range(2):
            assert "Traceback" not in edges.log(i), edges.log(i)
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)
