"""Real `vipd run` processes on namespace lab hosts: elections, failover, faults, tracks, split
brain, IPv6, unicast, reload, and a mixed cluster with real keepalived.

State is read from the namespaces (`ip addr`), the daemons' logs and `lbctl status --json`.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import require_binary

from vipd.control.client import request
from vipd.lab import edges
from vipd.lab.edges import toml_value
from vipd.lab.keepalived import keepalived_config, start_keepalived
from vipd.lab.netns import Lab
from vipd.vrrp.instance import vip_lifetime

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VIP = "198.18.0.100"
VIP6 = "2001:db8::100"
INTERVAL = 0.05


# Adds a VIP as a vipd run without VIP lifetimes did: marked IFA_PROTO 112, valid forever.
LEFTOVER = """
import sys
from pyroute2 import IPRoute
with IPRoute() as ipr:
    ipr.addr("add", index=ipr.link_lookup(ifname="eth0")[0], address=sys.argv[1], prefixlen=24, proto=112)
"""


def wait_for(predicate, timeout: float = 15.0, step: float = 0.05):
    return edges.wait_for(predicate, timeout, step)


class Node:
    """One lab host running `vipd run`, its config, log and control socket in a temp dir."""

    def __init__(self, lab: Lab, workdir: Path, name: str, addresses: list[str]) -> None:
        self.lab = lab
        self.host = lab.add_host(name, addresses)
        self.name = name
        self.config = workdir / f"{name}.toml"
        self.log_path = workdir / f"{name}.log"
        self.socket = workdir / f"{name}.sock"
        self.proc: subprocess.Popen | None = None

    def write(self, instances: list[dict], tracks: dict[str, list[dict]] | None = None) -> None:
        lines = ["[node]", f'name = "{self.name}"', f'control_socket = "{self.socket}"', ""]
        for vrrp in instances:
            vrrp = {"interface": "eth0", "advert_interval": INTERVAL, "garp_repeat": 2, **vrrp}
            lines += ["[[vrrp]]", *(f"{k} = {toml_value(v)}" for k, v in vrrp.items()), ""]
            for track in (tracks or {}).get(vrrp["name"], []):
                lines += ["  [[vrrp.track]]", *(f"  {k} = {toml_value(v)}" for k, v in track.items()), ""]
        self.config.write_text("\n".join(lines))

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = self.host.popen([sys.executable, "-m", "vipd", "run", "-c", str(self.config)],
                                        stdout=log, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self.lab.stop(self.proc, sig, timeout=15)

    def has(self, address: str) -> bool:
        return self.host.has_address(address)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict | None:
        done = subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", str(self.socket), "status", "--json"],
                              capture_output=True, text=True, timeout=20)
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def instance(self, name: str = "api") -> dict | None:
        status = self.status()
        return next((v for v in status["vrrp"] if v["name"] == name), None) if status else None

    def transitions(self, to: str) -> list[str]:
        """Reasons of this node's transitions into state `to`, from its log."""
        return re.findall(rf"-> {to} \(([^)]*)\)", self.log)


def holders(nodes: list[Node], address: str = VIP) -> list[str]:
    return [n.name for n in nodes if n.has(address)]


def api(priority: int, **kw) -> dict:
    return {"name": "api", "vrid": 51, "priority": priority, "virtual_ips": [f"{VIP}/24"], **kw}


def build(lab: Lab, tmp_path: Path, priorities: list[int], **kw) -> list[Node]:
    nodes = []
    for i, priority in enumerate(priorities):
        node = Node(lab, tmp_path, "abcdefgh"[i], [f"198.18.0.{11 + i}/24", f"2001:db8::{11 + i}/64"])
        node.write([api(priority, **kw)])
        nodes.append(node)
    return nodes


def start_all(nodes: list[Node]) -> None:
    for node in nodes:
        node.start()


def start_in_order(nodes: list[Node], address: str = VIP) -> None:
    """The first node becomes master alone, then the others join as backups."""
    first, *others = nodes
    first.start()
    assert wait_for(lambda: first.has(address)), first.log
    for node in others:
        node.start()
    assert wait_for(lambda: all(n.transitions("BACKUP") for n in others)), [n.log for n in others]
    assert wait_for(lambda: all(n.status() for n in nodes)), "control sockets did not come up"


def no_tracebacks(nodes: list[Node]) -> None:
    for node in nodes:
        assert "Traceback" not in node.log, node.log


@pytest.mark.timeout(90)
def test_three_nodes_elect_the_highest_and_kill9_moves_the_vip(lab, tmp_path):
    require_binary("ping", "iputils-ping")
    a, b, c = nodes = build(lab, tmp_path, [150, 100, 50])
    client = lab.add_host("client", ["198.18.0.50/24"])
    client.sysctl("net.ipv4.neigh.eth0.locktime", 0)
    start_all(nodes)
    assert wait_for(lambda: holders(nodes) == ["a"]), [n.log for n in nodes]
    assert wait_for(lambda: b.instance() and b.instance()["state"] == "BACKUP")
    time.sleep(10 * INTERVAL)
    assert holders(nodes) == ["a"]
    status = a.instance()
    assert status["state"] == "MASTER" and status["master"] == "198.18.0.11"
    assert status["effective_priority"] == 150 and status["virtual_ips"] == [f"{VIP}/24"]
    assert status["adverts_sent"] > 0 and status["invalid"] == {}
    assert c.instance()["master"] == "198.18.0.11" and c.instance()["adverts_received"] > 0

    client.run(["ping", "-c", "1", "-W", "2", VIP])
    mac = lambda n: n.host.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    neighbour = lambda: client.run(["ip", "neigh", "show", VIP, "dev", "eth0"]).stdout
    assert mac(a) in neighbour()

    a.stop(signal.SIGKILL)
    assert wait_for(lambda: b.has(VIP)), b.log
    assert wait_for(lambda: mac(b) in neighbour(), 5), "the client did not learn the new master from gratuitous ARP"
    time.sleep(10 * INTERVAL)
    assert not c.has(VIP), "only the next-highest priority takes over"
    assert b.transitions("MASTER")[-1] == "master_down_timer"

    # The crashed run's VIP expires by itself (its kernel lifetime). One without a lifetime, as an
    # older vipd left them (IFA_PROTO 112), is removed by the next start, which (nopreempt) stays backup.
    assert wait_for(lambda: not a.has(VIP), vip_lifetime(INTERVAL) + 2), "the dead node kept the VIP"
    a.host.run([sys.executable, "-c", LEFTOVER, VIP])
    assert a.has(VIP)
    a.write([api(150, preempt=False)])
    a.start()
    assert wait_for(lambda: not a.has(VIP)), a.log
    assert "left on eth0 by an earlier run" in a.log
    assert wait_for(lambda: a.instance() and a.instance()["state"] == "BACKUP"), a.log
    time.sleep(10 * INTERVAL)
    assert holders(nodes) == ["b"]
    no_tracebacks(nodes)


@pytest.mark.timeout(60)
def test_sigterm_hands_over_after_skew_time(lab, tmp_path):
    a, b = nodes = build(lab, tmp_path, [150, 100])
    start_in_order(nodes)
    assert a.stop(signal.SIGTERM) == 0
    assert holders(nodes) == ["b"], "the old master released the VIP only after the new one took it"
    assert b.transitions("MASTER") == ["master_resigned"], b.log
    assert a.transitions("INIT") == ["shutdown:handover_complete"], a.log
    no_tracebacks(nodes)


@pytest.mark.timeout(60)
def test_link_down_faults_the_master_and_recovers(lab, tmp_path):
    a, b = nodes = build(lab, tmp_path, [150, 100])
    start_in_order(nodes)
    a.host.set_link(False)
    assert wait_for(lambda: holders(nodes) == ["b"]), a.log
    assert wait_for(lambda: a.transitions("FAULT")), a.log
    status = a.instance()
    assert status["state"] == "FAULT" and status["fault_reasons"] == ["link:eth0"] and status["master"] is None
    a.host.set_link(True)
    assert wait_for(lambda: holders(nodes) == ["a"]), a.log
    assert a.transitions("BACKUP")[-1] == "fault_cleared"
    assert a.transitions("MASTER")[-1] == "preempt"
    no_tracebacks(nodes)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("preempt", [True, False])
def test_failing_track_script_moves_the_vip(lab, tmp_path, preempt):
    flag = tmp_path / "unhealthy"
    a, b = nodes = build(lab, tmp_path, [150, 100])
    a.write([api(150, preempt=preempt)],
            {"api": [{"script": f"test ! -e {flag}", "interval": 0.5, "timeout": 0.4, "rise": 2, "fall": 2,
                      "weight": -60}]})
    start_in_order(nodes)
    flag.touch()
    assert wait_for(lambda: holders(nodes) == ["b"]), a.log
    track = a.instance()["tracks"][0]
    assert track == {"name": "script:test", "ok": False, "weight": -60, "health": "0/2 DOWN"}
    assert a.instance()["effective_priority"] == 90 and a.instance()["state"] == "BACKUP"
    assert b.instance()["master"] == "198.18.0.12"
    flag.unlink()
    assert wait_for(lambda: a.instance()["effective_priority"] == 150)
    if preempt:
        assert wait_for(lambda: holders(nodes) == ["a"]), a.log
    else:
        time.sleep(20 * INTERVAL)
        assert holders(nodes) == ["b"], "nopreempt: a recovered backup leaves the master alone"
    no_tracebacks(nodes)


@pytest.mark.timeout(60)
def test_partition_makes_two_masters_and_healing_leaves_one(lab, tmp_path):
    require_binary("nft", "nftables")
    a, b = nodes = build(lab, tmp_path, [150, 100])
    start_in_order(nodes)
    lab.partition(["a"], ["b"])
    assert wait_for(lambda: holders(nodes) == ["a", "b"]), b.log
    lab.heal()
    assert wait_for(lambda: holders(nodes) == ["a"]), b.log
    assert b.transitions("BACKUP")[-1] == "higher_priority_advert"
    time.sleep(10 * INTERVAL)
    assert holders(nodes) == ["a"]
    no_tracebacks(nodes)


def timed_adverts_received(node: Node) -> tuple[float, int, float]:
    """The node's adverts_received, read straight from its control socket (no lbctl process to
    start), with the monotonic times just before and after: the count held at some instant between."""
    asked = time.monotonic()
    _, document = request(str(node.socket), "GET", "/v1/status")
    return asked, document["vrrp"][0]["adverts_received"], time.monotonic()


def address_added(log: Path, address: str, since: float) -> float | None:
    """Wall-clock time of the first `ip -ts monitor address` line adding `address` at or after `since`."""
    for line in log.read_text().splitlines():
        stamp = re.match(r"\[([^\]]+)\] (?!Deleted).* inet6? " + re.escape(address) + "/", line)
        if stamp and (added := datetime.datetime.fromisoformat(stamp.group(1)).timestamp()) >= since:
            return added
    return None


@pytest.mark.timeout(60)
def test_ten_millisecond_adverts_hold_steady_and_fail_over(lab, tmp_path):
    """The shortest v3 interval: 100 adverts/s, no flapping, failover in tens of milliseconds."""
    interval = 0.01
    a, b = nodes = build(lab, tmp_path, [150, 100], advert_interval=interval)
    start_in_order(nodes)
    before = b.instance()
    first_asked, first_count, first_answered = timed_adverts_received(b)
    time.sleep(4)
    second_asked, second_count, second_answered = timed_adverts_received(b)
    after = b.instance()
    assert after["state"] == "BACKUP" and after["transitions"] == before["transitions"], b.log
    # The window between the two counts lies within these bounds, whatever the calls cost.
    shortest, longest = second_asked - first_answered, second_answered - first_asked
    received = second_count - first_count
    assert 0.9 * shortest / interval <= received <= longest / interval + 1, (received, shortest, longest)
    assert holders(nodes) == ["a"]

    events = tmp_path / "b-addresses.log"
    with open(events, "w") as out:
        monitor = b.host.popen(["ip", "-ts", "monitor", "address"], stdout=out, stderr=subprocess.STDOUT)
    time.sleep(0.5)   # the monitor subscribes before the kill
    killed = time.time()
    a.stop(signal.SIGKILL)
    assert wait_for(lambda: b.has(VIP), 5), b.log
    lab.stop(monitor)
    took_over = address_added(events, VIP, since=killed)
    assert took_over is not None, (events.read_text(), b.log)
    # master_down_interval is 3 * 0.01 + 156/256 * 0.01 = 0.036 s; 1 s adverts would need 3.6 s.
    master_down_interval = 3 * interval + (256 - 100) / 256 * interval
    assert took_over - killed < master_down_interval + 0.16, (took_over - killed, b.log)
    no_tracebacks(nodes)


@pytest.mark.timeout(60)
def test_ipv6_instance(lab, tmp_path):
    require_binary("ping", "iputils-ping")
    a, b = nodes = build(lab, tmp_path, [150, 100])
    for node, priority in zip(nodes, (150, 100)):
        node.write([{"name": "api6", "vrid": 61, "priority": priority, "virtual_ips": [f"{VIP6}/64"]}])
    lab.wait_link_local()
    client = lab.add_host("client", ["2001:db8::50/64"])
    start_in_order(nodes, VIP6)
    status = b.instance("api6")
    assert status["master"] == a.host.link_local(), "IPv6 adverts come from the link-local address"
    assert a.instance("api6")["invalid"] == {} and b.instance("api6")["adverts_received"] > 0
    flags = a.host.run(["ip", "-o", "-6", "addr", "show", "dev", "eth0", "to", VIP6]).stdout
    assert "nodad" in flags and "tentative" not in flags
    client.run(["ping", "-6", "-c", "1", "-W", "2", VIP6])
    mac = lambda n: n.host.run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
    neighbour = lambda: client.run(["ip", "-6", "neigh", "show", VIP6, "dev", "eth0"]).stdout
    assert mac(a) in neighbour()
    a.stop(signal.SIGKILL)
    assert wait_for(lambda: b.has(VIP6)), b.log
    assert wait_for(lambda: mac(b) in neighbour(), 5), "the client did not learn the new master from the NA"
    no_tracebacks(nodes)


@pytest.mark.timeout(60)
def test_unicast_peers_only(lab, tmp_path):
    a, b, c = nodes = build(lab, tmp_path, [150, 100, 200])
    a.write([api(150, unicast_peers=["198.18.0.12"])])
    b.write([api(100, unicast_peers=["198.18.0.11"])])
    # c is not a listed peer: its higher priority must not count for a and b.
    c.write([api(200, unicast_peers=["198.18.0.11", "198.18.0.12"])])
    start_in_order([a, b])
    c.start()
    assert wait_for(lambda: c.has(VIP)), c.log
    assert wait_for(lambda: (a.instance()["invalid"].get("unknown_peer") or 0) > 3), a.log
    assert holders([a, b]) == ["a"] and a.instance()["state"] == "MASTER"
    assert b.instance()["master"] == "198.18.0.11"
    c.stop(signal.SIGKILL)
    a.stop(signal.SIGKILL)
    assert wait_for(lambda: b.has(VIP)), b.log
    no_tracebacks(nodes)


@pytest.mark.timeout(90)
def test_reload_updates_in_place_and_adds_and_removes_instances(lab, tmp_path):
    a, b = nodes = build(lab, tmp_path, [150, 100])
    start_in_order(nodes)
    before = a.instance()

    a.proc.send_signal(signal.SIGHUP)   # same file: nothing changes
    assert wait_for(lambda: a.log.count("reloaded") == 1), a.log
    after = a.instance()
    assert after["transitions"] == before["transitions"] and after["since"] == before["since"]

    second = {"name": "web", "vrid": 52, "priority": 150, "virtual_ips": ["198.18.0.101/24"]}
    a.write([api(150), second])
    a.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: a.has("198.18.0.101")), a.log
    assert a.instance()["transitions"] == before["transitions"], "an unchanged instance is left alone"

    a.write([api(50)])   # priority down in place: b preempts, "web" goes away with its VIP
    a.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: holders(nodes) == ["b"] and not a.has("198.18.0.101")), a.log
    assert "re-created" not in a.log and "configuration updated in place" in a.log
    assert [v["name"] for v in a.status()["vrrp"]] == ["api"]

    a.write([api(150, advert_interval=0.1, vrid=53)])   # another VRID: a new router
    a.proc.send_signal(signal.SIGHUP)
    assert wait_for(lambda: "re-created for the new config" in a.log), a.log
    assert wait_for(lambda: a.instance() and a.instance()["vrid"] == 53 and a.instance()["state"] == "MASTER")
    no_tracebacks(nodes)


KEEPALIVED_CASES = {
    "v3-ipv4": dict(version=3, interval=0.1, vip=f"{VIP}/24", auth_pass=None),
    "v3-ipv6": dict(version=3, interval=0.1, vip=f"{VIP6}/64", auth_pass=None),
    "v2-auth": dict(version=2, interval=1.0, vip=f"{VIP}/24", auth_pass="s3cret"),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", KEEPALIVED_CASES)
def test_mixed_cluster_with_keepalived(lab, tmp_path, case):
    """Migration one host at a time: vipd and keepalived 2.2.7 elect one master between them."""
    require_binary("keepalived")
    spec = KEEPALIVED_CASES[case]
    vip = spec["vip"].split("/")[0]
    vipd_node = Node(lab, tmp_path, "a", ["198.18.0.11/24", "2001:db8::11/64"])
    keepalived_host = lab.add_host("k", ["198.18.0.12/24", "2001:db8::12/64"])
    lab.wait_link_local()
    conf = keepalived_config(router_id="k", vrid=51, priority=100, advert_interval=spec["interval"],
                                     virtual_ips=[spec["vip"]], version=spec["version"], auth_pass=spec["auth_pass"])
    vrrp = api(150, advert_interval=spec["interval"], version=spec["version"], virtual_ips=[spec["vip"]])
    if spec["auth_pass"]:
        vrrp["auth_pass"] = spec["auth_pass"]
    vipd_node.write([vrrp])
    keepalived = start_keepalived(keepalived_host, tmp_path, "k", conf)
    keepalived_log = lambda: (tmp_path / "k.keepalived.log").read_text(errors="replace")
    try:
        assert wait_for(lambda: keepalived_host.has_address(vip), 20), keepalived_log()
        vipd_node.start()
        assert wait_for(lambda: vipd_node.has(vip) and not keepalived_host.has_address(vip), 20), vipd_node.log
        status = vipd_node.instance()
        assert status["state"] == "MASTER" and status["invalid"] == {}, status
        assert status["adverts_received"] > 0, "vipd heard keepalived's adverts"
        time.sleep(3 * spec["interval"])
        assert not keepalived_host.has_address(vip), keepalived_log()
        assert vipd_node.stop(signal.SIGTERM) == 0
        assert keepalived_host.has_address(vip), "keepalived took over on vipd's priority-0 advert"
        assert vipd_node.transitions("INIT") == ["shutdown:handover_complete"], vipd_node.log
        assert not vipd_node.has(vip)
        no_tracebacks([vipd_node])
        complaints = [line for line in keepalived_log().splitlines()
                      if any(word in line.lower() for word in ("invalid", "mismatch", "not present", "bad ", "checksum"))]
        assert not complaints, "keepalived found fault with vipd's adverts"
    finally:
        os.killpg(keepalived.pid, signal.SIGTERM)
        keepalived.wait(10)
