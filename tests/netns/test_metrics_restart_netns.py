"""The metrics listener of a live `vipd run` master comes back after it is killed, later each time
it dies again at once, and none of it moves the VIP."""
import os
import re
import signal
import sys
import time

import pytest

from vipd.lab.edges import VIP, build, wait_for

SCRAPE = ("import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
          "'http://127.0.0.1:9477/metrics',timeout=10).read().decode())")


def listener_pid(daemon_pid: int) -> int | None:
    """The daemon's metrics listener process (a child running listener_main), if one is up."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == daemon_pid and b"listener_main" in argv:
            return int(entry)
    return None


def restarts_metric(text: str) -> float | None:
    found = re.search(r"^vipd_metrics_listener_restarts_total (\S+)$", text, re.M)
    return float(found.group(1)) if found else None


@pytest.mark.timeout(120)
def test_a_killed_metrics_listener_comes_back_with_backoff_and_the_vip_stays(lab, tmp_path):
    built = build(lab, tmp_path / "lab", edges=1, backends=1, advert_interval=0.1)
    config = built.workdir / "edge1.toml"
    config.write_text(config.read_text().replace('workers = 1', 'workers = 1\nmetrics_listen = "127.0.0.1:9477"'))
    proc = built.start_edge(0)
    edge = built.edges[0]
    try:
        assert wait_for(lambda: built.state(0) == "MASTER", 20), built.log(0)
        before = built.status(0)["vrrp"][0]
        first = wait_for(lambda: listener_pid(proc.pid), 10)
        assert first, built.log(0)
        assert restarts_metric(edge.run([sys.executable, "-c", SCRAPE]).stdout) == 0

        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        scraped = edge.run([sys.executable, "-c", SCRAPE], timeout=15).stdout   # waits in the backlog
        assert time.monotonic() - killed < 5 and restarts_metric(scraped) == 1, built.log(0)
        assert re.search(rf"metrics listener \(pid {first}\) died after [\d.]+ s: killed by SIGKILL; "
                         r"starting it again in 1 s \(restart 1\)", built.log(0)), built.log(0)
        assert "metrics listener started again" in built.log(0)

        # A listener that dies at once, again and again: each restart waits twice as long.
        gaps = []
        for _ in range(3):
            pid = wait_for(lambda: listener_pid(proc.pid), 20)
            assert pid, built.log(0)
            os.kill(pid, signal.SIGKILL)
            died = time.monotonic()
            assert wait_for(lambda: listener_pid(proc.pid) not in (None, pid), 20), built.log(0)
            gaps.append(time.monotonic() - died)
        assert all(delay <= gap < delay + 1.5 for delay, gap in zip((2, 4, 8), gaps)), gaps
        log = built.log(0)
        assert [int(n) for n in re.findall(r"starting it again in (\d+) s", log)] == [1, 2, 4, 8], log
        assert restarts_metric(edge.run([sys.executable, "-c", SCRAPE], timeout=15).stdout) == 4

        after = built.status(0)["vrrp"][0]
        assert after["state"] == "MASTER" and after["transitions"] == before["transitions"]
        assert edge.has_address(VIP) and proc.poll() is None
    finally:
        built.stop_edge(0, signal.SIGTERM)
    assert "Traceback" not in built.log(0)
