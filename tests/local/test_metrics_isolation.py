"""The metrics listener is off the VRRP loop's critical path: 200 clients that send a request and never
read, plus 600 scrapes of the metrics and the (large) status page from another process,
do not delay a timer ticking on the daemon's loop every 50 ms on a fixed grid as the advert timer
does; and no script command line reaches a metric label."""
from __future__ import annotations

import asyncio
import copy
import json
import sys
import textwrap
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from vipd.control import metrics
from vipd.control.metrics import MetricsServer

INTERVAL = 0.05


def big_document() -> dict:
    backend = {"address": "198.18.1.1:6443", "state": "up", "active_connections": 1, "total_connections": 10,
               "failed_connections": 0, "health": "3/3 UP", "bytes_in": 5, "bytes_out": 7}
    backends = [{**backend, "address": f"198.18.{1 + i // 250}.{1 + i % 250}:6443"} for i in range(150)]
    return {
        "node": "edge-1",
        "vrrp": [{"name": "api", "state": "MASTER", "vrid": 51, "interface": "eth0", "version": 3,
                  "priority": 150, "effective_priority": 150, "virtual_ips": ["198.18.0.100/24"],
                  "master": "198.18.0.11", "since": "2026-11-26T23:00:00Z", "tracks": [],
                  "adverts_sent": 1, "adverts_received": 0, "transitions": 1}],
        "frontends": [{"name": "api", "listen": "0.0.0.0:6443", "active_connections": 150,
                       "backends": backends}],
    }


CLIENTS = textwrap.dedent("""
    import socket, sys, threading, time, urllib.request, urllib.error
    host, port, stuck, scrapes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    held = []
    for _ in range(stuck):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
        held.append(s)
    print("stuck", len(held), flush=True)
    counts = {"ok": 0, "busy": 0, "error": 0}
    lock = threading.Lock()
    def scrape(n):
        for i in range(n):
            path = "/metrics" if i % 2 else "/"
            try:
                with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=20) as r:
                    r.read()
                    kind = "ok"
            except urllib.error.HTTPError as e:
                kind = "busy" if e.code == 503 else "error"
            except Exception:
                kind = "error"
            with lock:
                counts[kind] += 1
    threads = [threading.Thread(target=scrape, args=(scrapes // 20,)) for _ in range(20)]
    for t in threads: t.start()
    for t in threads: t.join()
    print("scraped", counts["ok"], counts["busy"], counts["error"], flush=True)
    time.sleep(0.5)
""")


async def ticker(lateness: list[float], stop: asyncio.Event) -> None:
    """A timer on the grid the advert timer keeps (loop.call_at), recording how late each fires."""
    loop = asyncio.get_running_loop()
    due = loop.time() + INTERVAL
    while not stop.is_set():
        fired = loop.create_future()
        loop.call_at(due, fired.set_result, None)
        await fired
        lateness.append(loop.time() - due)
        due += INTERVAL


@pytest.mark.timeout(180)
def test_never_reading_clients_and_a_scrape_storm_do_not_delay_the_daemon_loop(tmp_path) -> None:
    document = big_document()
    built = []

    def status() -> dict:
        built.append(time.monotonic())
        return copy.deepcopy(document)

    async def main() -> tuple[list[float], list[float], str, int]:
        server = MetricsServer("127.0.0.1:0", status)
        await server.start()
        stop = asyncio.Event()
        quiet: list[float] = []
        loaded: list[float] = []
        try:
            host, port = server.address
            task = asyncio.create_task(ticker(quiet, stop))
            await asyncio.sleep(1.5)
            stop.set()
            await task
            stop.clear()
            script = tmp_path / "clients.py"
            script.write_text(CLIENTS)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, str(script), host, str(port), "200", "600", stdout=asyncio.subprocess.PIPE)
            task = asyncio.create_task(ticker(loaded, stop))
            out, _ = await asyncio.wait_for(proc.communicate(), 150)
            stop.set()
            await task
            # The listener still answers afterwards.
            page = await asyncio.to_thread(lambda: urllib.request.urlopen(f"http://{host}:{port}/status.json",
                                                                          timeout=10).read())
            assert json.loads(page)["node"] == "edge-1"
            return quiet, loaded, out.decode(), proc.returncode
        finally:
            await server.stop()

    started = time.monotonic()
    quiet, loaded, out, code = asyncio.run(main())
    assert code == 0, out
    assert "stuck 200" in out
    ok, busy, error = map(int, out.split("scraped ")[1].split())
    # "busy" (503) is the designed answer while MAX_IN_FLIGHT requests are being rendered; how many
    # get it depends on how fast this box renders (232 to over 400 of 600 were served in our runs).
    # A listener wedged by the clients that never read would serve none and time out.
    assert error == 0 and ok + busy == 600 and ok >= 100, out
    # The daemon's loop built far fewer documents than there were requests (shared snapshots),
    # never more often than SNAPSHOT_MIN_INTERVAL allows.
    assert len(built) <= (time.monotonic() - started) / metrics.SNAPSHOT_MIN_INTERVAL + 2
    assert len(built) < 300, "requests in flight together share a snapshot"
    loaded.sort()
    quiet.sort()
    p99 = loaded[int(len(loaded) * 0.99)]
    assert len(loaded) >= 20, "the storm lasted at least a second"
    # Normal jitter on a shared 2-core box is a few ms to a few tens under load; a loop serving the
    # page itself loses a whole rendering (50-80 ms here) per request, seconds over the storm, and a
    # thread in the daemon's interpreter measured p99 120 ms, max 220 ms (the GIL).
    assert p99 < max(0.03, 3 * quiet[-1]), (p99, loaded[-5:], quiet[-5:])
    assert loaded[-1] < 0.1, f"one tick was {loaded[-1] * 1000:.0f} ms late: two advert intervals"


def test_script_command_lines_never_become_metric_labels() -> None:
    document = big_document()
    document["vrrp"][0]["tracks"] = [
        {"name": "script:/usr/local/bin/check --token s3cret", "ok": True, "weight": 0},
        {"name": "script:check_api", "ok": False, "weight": -10},
        {"name": "interface:eth1", "ok": True, "weight": 0},
    ]
    text = "".join(metric_text(metrics.families_from_status(document)))
    labels = {s.labels["track"] for family in text_string_to_metric_families(text) for s in family.samples
              if family.name == "vipd_vrrp_track_ok"}
    digest = metrics.track_label("script:/usr/local/bin/check --token s3cret")
    assert labels == {digest, "script:check_api", "interface:eth1"}
    assert digest.startswith("script:") and len(digest) == len("script:") + 12
    assert "s3cret" not in text and "/usr/local/bin" not in text


def metric_text(families) -> list[str]:
    from prometheus_client import CollectorRegistry, generate_latest

    class Fixed:
        def collect(self):
            return families

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    return [generate_latest(registry).decode()]
