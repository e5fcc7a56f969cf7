"""nat mode with the real kernel: `lbproxy run` in an edge namespace puts its nftables table in
place, a client namespace connects to the VIP, three backend namespaces answer. Spread, drain
(established flows finish), a dead backend removed by health, the empty map, the table gone at stop."""
from __future__ import annotations

import collections
import signal
import time
from types import SimpleNamespace

import pytest
from held import (
    planned_failover_under_load,
    use_held_connections_after_a_planned_failover,
)
from test_proxy_helpers import (
    KeepAlive,
    NetnsSockets,
    Proxy,
    frontend,
    http_get,
    start_http_backend,
    wait_listening,
)

from lbproxy.natrules import object_name
from vipd.lab.edges import build, wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VIP = "198.18.0.100"
BACKENDS = [f"198.18.0.{20 + i}:8080" for i in (1, 2, 3)]
HEALTH = {"type": "http", "path": "/healthz", "interval": 0.2, "timeout": 0.3, "rise": 1, "fall": 2}


@pytest.fixture
def nat(lab, tmp_path):
    client = lab.add_host("client", ["198.18.0.2/24"])
    edge = lab.add_host("edge", ["198.18.0.10/24", f"{VIP}/24"])
    edge.sysctl("net.ipv4.ip_forward", 0)
    procs = {}
    for i, address in enumerate(BACKENDS, 1):
        host = lab.add_host(f"be{i}", [address.split(":")[0] + "/24"])
        procs[address] = start_http_backend(host, address, f"be{i}")
        wait_listening(host, 8080)
    net = NetnsSockets(client)
    proxy = Proxy(edge, tmp_path)
    proxy.write_config([frontend("api", f"{VIP}:80", BACKENDS, HEALTH, mode="nat")])
    proxy.workers = 0                     # nat frontends run in no worker
    try:
        proxy.start()
        yield SimpleNamespace(lab=lab, edge=edge, net=net, proxy=proxy, procs=procs)
    finally:
        proxy.stop()
        net.close()


def served(n, count: int) -> collections.Counter:
    names = collections.Counter()
    for _ in range(count):
        status, body = http_get(n.net, (VIP, 80), timeout=3)
        assert status == 200
        names[body] += 1
    return names


def nft_tables(n) -> str:
    return n.edge.run(["nft", "list", "tables"]).stdout


def wait_map(n, addresses: set[str], timeout: float = 3.0) -> None:
    """Until the kernel's map holds exactly `addresses` (vipd applies a change within milliseconds,
    after the control request has returned)."""
    chains = {object_name("b", "api", a): a for a in BACKENDS}
    deadline = time.monotonic() + timeout
    while True:
        text = n.edge.run(["nft", "list", "chain", "inet", "vipd_nat", object_name("f", "api")]).stdout
        if {a for c, a in chains.items() if f"goto {c}" in text} == addresses:
            return
        assert time.monotonic() < deadline, text
        time.sleep(0.02)


@pytest.mark.timeout(120)
def test_nat_spreads_drains_removes_the_dead_and_cleans_up(nat):
    n = nat
    assert "table inet vipd_nat" in nft_tables(n)
    assert n.edge.run(["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip() == "1"
    assert "set net.ipv4.ip_forward=1 for nat frontend api" in n.proxy.log()
    assert not n.proxy.worker_pids(), "a nat frontend runs in no worker process"

    # Round robin in the kernel: exactly one in three each.
    assert served(n, 30) == {"be1": 10, "be2": 10, "be3": 10}
    status = n.proxy.wait(lambda s: s["frontends"][0]["total_connections"] == 30 and s["frontends"][0], timeout=6)
    assert status and status["mode"] == "nat" and status["workers"] == 0 and status["serving"]
    assert [b["total_connections"] for b in status["backends"]] == [10, 10, 10]

    # Drain the backend an open connection uses: no new connection reaches it, the open one goes on.
    held = KeepAlive(n.net, (VIP, 80))
    _, name = held.get()
    address = BACKENDS[int(name[-1]) - 1]
    n.proxy.wait(lambda s: s["frontends"][0]["backends"][int(name[-1]) - 1]["active_connections"] == 1, timeout=6)
    n.proxy.drain(address)
    assert n.proxy.backend(address)["state"] == "drain"
    wait_map(n, set(BACKENDS) - {address})
    assert name not in served(n, 20)
    assert held.get() == (200, name)
    held.close()
    n.proxy.drain(address, enable=True)
    wait_map(n, set(BACKENDS))

    # A backend whose process died: health takes it out, no client connection fails on it.
    dead = BACKENDS[1]
    n.lab.stop(n.procs[dead], signal.SIGKILL)
    assert n.proxy.wait(lambda s: s["frontends"][0]["backends"][1]["state"] == "down", timeout=5)
    wait_map(n, {BACKENDS[0], BACKENDS[2]})
    assert set(served(n, 20)) == {"be1", "be3"}

    # Nothing in the map: the SYN is answered with a reset, at once, and counted.
    for address in BACKENDS:
        n.proxy.drain(address)
    wait_map(n, set())
    started = time.monotonic()
    with pytest.raises(ConnectionRefusedError):
        n.net.connect((VIP, 80), timeout=3)
    assert time.monotonic() - started < 1.0
    assert n.proxy.wait(lambda s: s["frontends"][0]["refused"] >= 1 and not s["frontends"][0]["serving"], timeout=6)

    assert n.proxy.stop() == 0
    assert "vipd_nat" not in nft_tables(n)


@pytest.mark.timeout(60)
def test_stop_resets_new_connections_and_waits_for_open_flows(nat):
    """At stop the map empties at once; the table (without which the kernel stops translating)
    stays while a flow is open, up to drain_timeout, and goes when the last one closes."""
    n = nat
    held = KeepAlive(n.net, (VIP, 80))
    status, name = held.get()
    assert status == 200
    assert n.proxy.wait(lambda s: s["frontends"][0]["active_connections"] == 1, timeout=6)
    n.proxy.proc.send_signal(signal.SIGTERM)
    wait_map(n, set())
    with pytest.raises(ConnectionRefusedError):
        n.net.connect((VIP, 80), timeout=2)
    time.sleep(0.5)
    assert held.get() == (200, name)
    assert n.proxy.proc.poll() is None and "vipd_nat" in nft_tables(n)
    held.close()
    closed = time.monotonic()
    assert n.proxy.proc.wait(10) == 0
    assert time.monotonic() - closed < 3.0          # not the whole drain_timeout (30 s)
    assert "vipd_nat" not in nft_tables(n)


@pytest.mark.timeout(60)
def test_reload_rewrites_the_table_in_place(nat):
    n = nat
    served(n, 3)
    n.proxy.write_config([frontend("api", f"{VIP}:80", BACKENDS[:2], HEALTH, mode="nat")])
    n.proxy.workers = 0
    n.proxy.reload()
    wait_map(n, set(BACKENDS[:2]))
    assert served(n, 10) == {"be1": 5, "be2": 5}
    table = n.edge.run(["nft", "list", "table", "inet", "vipd_nat"]).stdout
    assert object_name("b", "api", BACKENDS[2]) not in table
    # The surviving backends' counters went on counting: 1 + 5 each.
    assert n.proxy.wait(lambda s: [b["total_connections"] for b in s["frontends"][0]["backends"]] == [6, 6], timeout=6)


def nat_edges(lab, tmp_path):
    """vipd's two-edge lab (VRRP, VIP 198.18.0.100) with its frontend in nat mode."""
    built = build(lab, tmp_path / "lab", advert_interval=0.1)
    for i in range(2):
        path = built.write_config(i)
        text = path.read_text().replace("connect_timeout = 0.5\n", "").replace("retries = 2\n", "")
        path.write_text(text.replace('balance = "round_robin"', 'balance = "round_robin"\nmode = "nat"'))
    built.start_edge(0)
    assert wait_for(lambda: built.holders() == [0] and built.state(0) == "MASTER", 20), built.log(0)
    built.start_edge(1)
    assert wait_for(lambda: built.state(1) == "BACKUP", 20), built.log(1)
    return built


@pytest.mark.timeout(120)
def test_edge_failover_moves_the_vip_and_the_other_edge_forwards(lab, tmp_path):
    edges = nat_edges(lab, tmp_path)
    try:
        client = edges.start_client(interval=0.02, duration=30, timeout=2)
        time.sleep(1.0)
        cut = time.monotonic()
        edges.edges[0].set_link(False)                 # the master's cable cut: no hand-over
        assert wait_for(lambda: edges.state(1) == "MASTER", 10), edges.log(1)
        moved = time.monotonic()
        time.sleep(2.0)
        attempts = edges.finish_client(client)
        before = [a for a in attempts if a.start + a.duration < cut]
        after = [a for a in attempts if a.start >= moved + 0.5]
        assert len(before) > 20 and all(a.ok for a in before), [a for a in before if not a.ok][:3]
        assert len(after) > 40 and all(a.ok for a in after), [a for a in after if not a.ok][:3]
        assert {a.detail for a in after} == {"be-1", "be-2", "be-3"}
        frontend = edges.status(1)["frontends"][0]
        assert frontend["mode"] == "nat" and frontend["workers"] == 0
        assert wait_for(lambda: edges.status(1)["frontends"][0]["total_connections"] >= len(after), 5)
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)


@pytest.mark.timeout(120)
def test_planned_failover_of_a_nat_edge_loses_no_new_connection(lab, tmp_path):
    """SIGTERM on the master: it hands the VIP over and keeps its table while its flows finish."""
    edges = nat_edges(lab, tmp_path)
    try:
        attempts, stopped = planned_failover_under_load(edges, interval=0.02, timeout=2, settle=1.0)
        during = [a for a in attempts if a.start >= stopped - 0.5]
        assert len(during) > 50
        assert [(round(a.start - stopped, 3), a.detail) for a in during if not a.ok] == [], edges.log(0) + edges.log(1)
        assert "vipd_nat" not in edges.edges[0].run(["nft", "list", "tables"]).stdout
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)


@pytest.mark.timeout(120)
def test_planned_failover_carries_nat_flows_in_flight(lab, tmp_path):
    """Flows the old master translated, used only after the client follows the new master: the
    new master has no conntrack entry for them (its own DNAT would send them to a backend that
    knows nothing of them, which resets), so it bridges them back to the old master, which
    keeps its table and the VIPs (quietly) while they are open."""
    edges = nat_edges(lab, tmp_path)
    try:
        results = use_held_connections_after_a_planned_failover(edges, 12)
        assert len(results) == 12
        assert all(r.startswith("HTTP/1.1 200 OK be-") for r in results), results
        assert {r.rsplit(" ", 1)[1] for r in results} == {"be-1", "be-2", "be-3"}
        assert edges.procs[0].wait(30) == 0, edges.log(0)
        assert "bridging connections in flight to 198.18.0.11" in edges.log(1)
        assert "vipd_nat" not in edges.edges[0].run(["nft", "list", "tables"]).stdout
        assert not edges.edges[0].has_address(VIP), "the old master released the VIP after its flows ended"
    finally:
        for i in list(edges.procs):
            edges.stop_edge(i, signal.SIGKILL, timeout=5)
