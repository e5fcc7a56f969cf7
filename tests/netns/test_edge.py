"""The edge daemon as an operator runs it: real `vipd run` on two lab edges with the proxy, real
backends, a real client, `lbctl` against the live control socket, metrics scraped."""
import json
import re
import signal
import subprocess
import sys
import time

import pytest
from held import (
    planned_failover_under_load,
    use_held_connections_after_a_planned_failover,
)

from vipd.lab import connclient
from vipd.lab.edges import VIP, build, wait_for


def start_pair(lab, tmp_path, preempt=False):
    built = build(lab, tmp_path / "lab", advert_interval=0.1, preempt=preempt)
    built.start_edge(0)
    try:
        assert wait_for(lambda: built.holders() == [0] and built.state(0) == "MASTER", 20), built.log(0)
        built.start_edge(1)
        assert wait_for(lambda: built.state(1) == "BACKUP", 20), built.log(1)
        yield built
    finally:
        for i in list(built.procs):
            built.stop_edge(i, signal.SIGKILL, timeout=5)


@pytest.fixture
def edges(lab, tmp_path):
    yield from start_pair(lab, tmp_path, preempt=False)


@pytest.fixture
def preempting_edges(lab, tmp_path):
    yield from start_pair(lab, tmp_path, preempt=True)


def backend_counts(attempts):
    counts = {}
    for a in attempts:
        if a.ok:
            counts[a.detail] = counts.get(a.detail, 0) + 1
    return counts


@pytest.mark.timeout(120)
def test_planned_failover_loses_nothing(edges):
    """SIGTERM on the master: resign, keep serving until the backup has the VIP, then drain."""
    attempts, t_term = planned_failover_under_load(edges, interval=0.01, timeout=3, settle=1.5)
    during = connclient.summarize(attempts, since=t_term - 0.5)
    whole = connclient.summarize(attempts)
    print("planned failover:", during)
    assert whole["requests"] > 200
    assert during["failed"] == 0, during
    assert during["slow"] == 0, during
    assert edges.holders() == [1]
    assert "Traceback" not in edges.log(0)


@pytest.mark.timeout(120)
def test_frontend_track_moves_vip_when_master_loses_all_backends(preempting_edges):
    edges = preempting_edges
    edges.lab.partition(["edge1"], ["be1", "be2", "be3"], vrrp_only=False)
    assert wait_for(lambda: edges.holders() == [1], 15), edges.log(0)
    status = edges.status(0)
    track = status["vrrp"][0]["tracks"][0]
    assert track["name"] == "frontend:api" and track["ok"] is False and track["weight"] == -60
    assert status["vrrp"][0]["effective_priority"] == 90
    assert all(b["state"] == "down" for b in status["frontends"][0]["backends"])
    client = edges.start_client(interval=0.02, duration=2, timeout=2)
    attempts = edges.finish_client(client) if client.wait(10) is not None else []
    assert attempts and connclient.summarize(attempts)["failed"] == 0
    edges.lab.heal()
    assert wait_for(lambda: edges.status(0)["vrrp"][0]["tracks"][0]["ok"], 15)
    assert wait_for(lambda: edges.holders() == [0], 15), "preempt: the VIP comes back"


@pytest.mark.timeout(120)
def test_lbctl_against_live_daemon(edges, tmp_path):
    table = edges.lbctl(0, "status")
    assert table.returncode == 0, table.stderr
    for needle in ("edge-1", "MASTER", "198.18.0.100/24", "198.18.0.21:8080", "up"):
        assert needle in table.stdout
    document = json.loads(edges.lbctl(0, "status", "--json").stdout)
    assert document["node"] == "edge-1"
    vrrp = document["vrrp"][0]
    assert {k: vrrp[k] for k in ("name", "state", "vrid", "interface", "version", "priority")} == {
        "name": "api", "state": "MASTER", "vrid": 51, "interface": "eth0", "version": 3, "priority": 150}
    assert vrrp["master"] == "198.18.0.11" and vrrp["virtual_ips"] == ["198.18.0.100/24"]
    frontend = document["frontends"][0]
    assert frontend["name"] == "api" and len(frontend["backends"]) == 3
    for backend in frontend["backends"]:
        assert set(backend) >= {"address", "state", "active_connections", "total_connections", "failed_connections"}

    drained = edges.lbctl(0, "drain", "api", "198.18.0.21:8080")
    assert drained.returncode == 0, drained.stderr
    client = edges.start_client(interval=0.01, duration=1.5, timeout=2)
    client.wait(10)
    counts = backend_counts(edges.finish_client(client))
    assert "be-1" not in counts and counts.get("be-2") and counts.get("be-3"), counts
    state = {b["address"]: b["state"] for b in edges.status(0)["frontends"][0]["backends"]}
    assert state["198.18.0.21:8080"] == "drain"
    assert edges.lbctl(0, "enable", "api", "198.18.0.21:8080").returncode == 0
    client = edges.start_client(interval=0.01, duration=1.5, timeout=2)
    client.wait(10)
    assert backend_counts(edges.finish_client(client)).get("be-1"), "enabled backend gets traffic again"

    for args, needle in ((("drain", "nope", "198.18.0.21:8080"), "nope"), (("drain", "api", "198.18.0.99:1"), "198.18.0.99:1")):
        failed = edges.lbctl(0, *args)
        assert failed.returncode != 0 and needle in failed.stderr and "Traceback" not in failed.stderr
        assert len(failed.stderr.strip().splitlines()) == 1

    config = edges.workdir / "edge1.toml"
    good = config.read_text()
    config.write_text(good.replace("priority = 150", "priority = 0"))
    refused = edges.lbctl(0, "reload")
    assert refused.returncode != 0 and "vrrp[0].priority" in refused.stderr and "Traceback" not in refused.stderr
    assert edges.state(0) == "MASTER" and edges.holders() == [0]
    config.write_text(good.replace("priority = 150", "priority = 140"))
    applied = edges.lbctl(0, "reload")
    assert applied.returncode == 0, applied.stderr
    assert wait_for(lambda: edges.status(0)["vrrp"][0]["priority"] == 140, 5)
    assert edges.state(0) == "MASTER", "a priority change in place does not flap the master"

    missing = subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", str(tmp_path / "none.sock"), "status"],
                             capture_output=True, text=True, timeout=10)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(120)
def test_metrics_scraped(lab, tmp_path):
    built = build(lab, tmp_path / "lab", edges=1, backends=2, advert_interval=0.1)
    config = built.workdir / "edge1.toml"
    config.write_text(config.read_text().replace('workers = 1', 'workers = 1\nmetrics_listen = "127.0.0.1:9477"'))
    built.start_edge(0)
    try:
        assert wait_for(lambda: built.state(0) == "MASTER", 20), built.log(0)
        client = built.start_client(interval=0.01, duration=1, timeout=2)
        client.wait(10)
        built.finish_client(client)
        time.sleep(1.2)
        text = built.edges[0].run([sys.executable, "-c",
                                   "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                                   "'http://127.0.0.1:9477/metrics',timeout=5).read().decode())"]).stdout
        from prometheus_client.parser import text_string_to_metric_families
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                samples.setdefault(sample.name, []).append(sample)
        master = [s for s in samples["vipd_vrrp_state"] if s.labels.get("state") == "MASTER"]
        assert master and master[0].value == 1
        assert samples["vipd_vrrp_adverts_sent_total"][0].value > 5
        total = sum(s.value for s in samples["vipd_backend_connections_total"])
        assert total >= 50, total
    finally:
        built.stop_edge(0, signal.SIGTERM)


@pytest.mark.timeout(180)
def test_vipd_demo_runs_and_reports(lab, tmp_path):
    del lab  # only for the root/netns skip
    plot = tmp_path / "timeline.png"
    done = subprocess.run([sys.executable, "-m", "vipd", "demo", "--plot", str(plot)], capture_output=True,
                          text=True, timeout=170)
    assert done.returncode == 0, done.stdout + done.stderr
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"timeline drawn: {plot}" in done.stdout
    out = done.stdout
    for needle in ("kill -9 of the master", "graceful stop of the master", "Who held the VIP", "lbctl status"):
        assert needle in out, out
    graceful = next(line for line in out.splitlines() if "graceful stop of the master" in line and "requests" in line)
    counts = re.search(r"(\d+) requests, (\d+) failed, (\d+) slower than 0.5 s", graceful)
    assert counts and int(counts.group(1)) > 100, graceful
    assert int(counts.group(2)) == 0 and int(counts.group(3)) == 0, graceful
    torn_down = re.search(r"lab torn down \(network namespaces (\S+)-\*\)", done.stderr)
    assert torn_down, done.stderr
    leftovers = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{torn_down.group(1)}-" not in leftovers


@pytest.mark.timeout(60)
def test_vipd_demo_refuses_clearly_without_iproute2():
    import os
    if os.geteuid() != 0:
        pytest.skip("needs root (the demo checks root before iproute2)")
    done = subprocess.run([sys.executable, "-m", "vipd", "demo"], capture_output=True, text=True, timeout=50,
                          env={**os.environ, "PATH": "/nonexistent"})
    assert done.returncode == 1
    assert done.stderr.strip() == "vipd demo: needs iproute2 (the `ip` command); run it as root on Linux with iproute2"


@pytest.mark.timeout(120)
def test_planned_failover_carries_connections_in_flight(edges):
    """Connections accepted by the old master before the hand-over, used only after clients
    follow the new master: the new master bridges their segments back, nothing is reset."""
    results = use_held_connections_after_a_planned_failover(edges, 20)
    assert len(results) == 20
    assert all(r.startswith("HTTP/1.1 200 OK be-") for r in results), results
    assert edges.procs[0].wait(30) == 0, edges.log(0)
    assert "bridging connections in flight to 198.18.0.11" in edges.log(1)
    assert not edges.edges[0].has_address(VIP), "the old master released the VIP after draining"


@pytest.mark.timeout(60)
def test_stale_handover_tables_are_removed_at_start(lab, tmp_path):
    """A run killed mid-hand-over must not leave this node silent on ARP for its VIPs."""
    require_nft = subprocess.run(["which", "nft"], capture_output=True).returncode == 0
    if not require_nft:
        pytest.skip("needs `nft` (Debian package nftables)")
    built = build(lab, tmp_path / "lab", edges=1, backends=1, advert_interval=0.1)
    edge = built.edges[0]
    edge.run(["nft", "-f", "-"], input="table arp vipd_quiet_51 { chain input { type filter hook input priority 0; "
             "arp operation request arp daddr ip 198.18.0.100 drop; }\n}\n")
    built.start_edge(0)
    try:
        assert wait_for(lambda: built.state(0) == "MASTER", 20), built.log(0)
        assert "vipd_quiet_51" not in edge.run(["nft", "list", "tables"]).stdout
        built.client.run(["ping", "-c", "1", "-W", "2", VIP])
    finally:
        built.stop_edge(0, signal.SIGTERM)
