"""The proxy's worker under hostile load, as `lbproxy run` runs it in a lab namespace: clients that
never read cost a bounded amount of worker memory, a frozen worker is replaced, and a worker holds
no more privilege than binding a port needs."""
from __future__ import annotations

import os
import pwd
import signal
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_proxy_helpers import (
    Load,
    NetnsSockets,
    Proxy,
    failures,
    frontend,
    start_http_backend,
    start_sink,
    wait_listening,
)

from lbproxy.config import FrontendConfig
from lbproxy.ipc import STATS_INTERVAL
from lbproxy.privileges import CAP_NET_BIND_SERVICE, WORKER_OOM_SCORE_ADJ
from lbproxy.supervisor import HEARTBEAT_CHECK, HEARTBEAT_TIMEOUT

pytestmark = [pytest.mark.netns, pytest.mark.slow]

API = ("127.0.0.1", 6443)
THREADS = 8
CLIENTS = 200
BUFFER = FrontendConfig.buffer_size
# What one proxied connection costs a worker besides its buffers (Connection, two legs, two uvloop
# transports and libuv handles, allocator slack), measured with idle connections at 3-4 KiB.
OVERHEAD = 10 * 1024
# Towards a client that never reads: high water plus one read, each read possibly in a fresh
# ReadBuffer when the first write was partial (lbproxy.connection), so three buffers at most.
STALLED = 3 * BUFFER


@pytest.fixture
def edge(lab, tmp_path):
    host = lab.add_host("edge", ["198.18.0.10/24"])
    net = NetnsSockets(host)
    proxy = Proxy(host, tmp_path)
    try:
        yield SimpleNamespace(lab=lab, host=host, net=net, proxy=proxy, tmp=tmp_path)
    finally:
        proxy.stop()
        net.close()


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def proc_status(pid: int) -> dict[str, str]:
    return dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if ":\t" in line)


def settle(proxy: Proxy, value, still: float = 1.0, limit: float = 60.0):
    """Poll value(status) until it stays the same for `still` seconds; that value."""
    deadline = time.monotonic() + limit
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now_value = value(proxy.status())
        if now_value != last:
            last, since = now_value, time.monotonic()
        elif time.monotonic() - since >= still:
            return now_value
        time.sleep(0.1)
    raise AssertionError(f"never settled: last {last}")


def open_clients(edge, command: bytes, count: int) -> list[socket.socket]:
    clients = []
    for _ in range(count):
        sock = edge.net.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(10)
        sock.connect(API)
        sock.sendall(command)
        clients.append(sock)
    return clients


@pytest.mark.timeout(180)
def test_clients_that_never_read_cost_the_worker_a_bounded_amount_of_memory(edge):
    # Small kernel socket buffers in this namespace: the streams stall after little data, so 200
    # of them fit the box; what is measured is the worker's own memory, not the kernel's.
    edge.host.sysctl("net.ipv4.tcp_rmem", "4096 16384 65536")
    edge.host.sysctl("net.ipv4.tcp_wmem", "4096 16384 65536")
    start_sink(edge.host, "127.0.0.1:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["127.0.0.1:9000"],
                                      max_connections=4 * CLIENTS)], workers=1)
    edge.proxy.start()
    (worker,) = edge.proxy.worker_pids()
    clients: list[socket.socket] = []
    try:
        warm = open_clients(edge, b"ECHO\n", 20)          # code paths and allocator pools warmed up
        for sock in warm:
            sock.close()
        settle(edge.proxy, lambda s: s["frontends"][0]["active_connections"])
        base = rss(worker)

        clients = open_clients(edge, b"ECHO\n", CLIENTS)
        settle(edge.proxy, lambda s: s["frontends"][0]["active_connections"])
        idle = (rss(worker) - base) / CLIENTS
        for sock in clients:
            sock.close()
        assert settle(edge.proxy, lambda s: s["frontends"][0]["active_connections"]) == 0

        clients = open_clients(edge, b"DOWN 100000000000 1\n", CLIENTS)
        assert settle(edge.proxy, lambda s: s["frontends"][0]["active_connections"]) == CLIENTS
        streamed = settle(edge.proxy, lambda s: s["frontends"][0]["bytes_out"], still=1.5)
        grown = rss(worker) - base
        print(f"\nper connection: idle {idle / 1024:.1f} KiB, stalled stream {grown / CLIENTS / 1024:.1f} KiB "
              f"(bound {(STALLED + OVERHEAD) / 1024:.0f} KiB); {streamed / CLIENTS / 1024:.0f} KiB streamed "
              f"to each before the stall; worker RSS {base / 2**20:.1f} -> {(base + grown) / 2**20:.1f} MiB")
        assert idle <= OVERHEAD
        assert streamed > CLIENTS * 2 * BUFFER               # the streams did fill the buffers
        assert grown <= CLIENTS * (STALLED + OVERHEAD), grown
    finally:
        for sock in clients:
            sock.close()


@pytest.mark.timeout(120)
def test_a_frozen_worker_is_replaced_and_the_other_keeps_serving(edge):
    for i in (1, 2):
        start_http_backend(edge.host, f"127.0.0.1:{8080 + i}", f"be{i}")
    for i in (1, 2):
        wait_listening(edge.host, 8080 + i)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["127.0.0.1:8081", "127.0.0.1:8082"])], workers=2)
    edge.proxy.start()
    before = edge.proxy.worker_pids()
    victim = before[0]
    # New connections the kernel hands to the frozen worker's listener wait in its queue until the
    # kill (then migrate): short client timeouts, so that no client thread waits for long.
    load = Load(edge.net, API, threads=THREADS, timeout=1.0).start()
    try:
        load.wait_for(100)
        os.kill(victim, signal.SIGSTOP)
        stopped_at = time.monotonic()
        deadline = stopped_at + HEARTBEAT_TIMEOUT + 10
        while victim in edge.proxy.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.05)
        gone_after = time.monotonic() - stopped_at
        served_while_frozen = sum(a.ok and a.end < stopped_at + gone_after for a in load.attempts
                                  if a.start > stopped_at)
        replaced = edge.proxy.wait(lambda s: len(edge.proxy.worker_pids()) == 2 and
                                   s["frontends"][0]["workers"] == 2, 15)
        killed_at = stopped_at + gone_after
        load.wait_for(load.count() + 100)
    finally:
        attempts = load.stop()
        if victim in edge.proxy.worker_pids():
            os.kill(victim, signal.SIGCONT)
    after = edge.proxy.worker_pids()
    frozen = failures(attempts, stopped_at)
    print(f"\nworker frozen: killed after {gone_after:.1f}s; {served_while_frozen} requests served by "
          f"the other meanwhile, {len(frozen)} timed out on the frozen one; "
          f"{len(failures(attempts))} of {len(attempts)} failed")
    assert victim not in after and before[1] in after and replaced
    # Silent since its last stats (up to STATS_INTERVAL before the stop) for HEARTBEAT_TIMEOUT,
    # seen at the next check, then killed and reaped.
    assert HEARTBEAT_TIMEOUT - STATS_INTERVAL <= gone_after <= HEARTBEAT_TIMEOUT + 2 * HEARTBEAT_CHECK + 1.0
    assert served_while_frozen >= 10
    # What the frozen worker had already accepted dies with it (at most one per client thread);
    # after its kill every request succeeds.
    assert len(failures(attempts)) - len(frozen) <= THREADS
    assert failures(attempts, killed_at) == []
    assert f"worker g1w0 (pid {victim}) sent nothing for" in edge.proxy.log()


class UserProxy(Proxy):
    def __init__(self, host, workdir, node: dict[str, str]) -> None:
        super().__init__(host, workdir)
        self.node = node

    def write_config(self, frontends, workers=1) -> None:
        super().write_config(frontends, workers)
        extra = "".join(f'{key} = "{value}"\n' for key, value in self.node.items())
        self.config.write_text(self.config.read_text().replace("[node]\n", "[node]\n" + extra, 1))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("user", [None, "nobody"])
def test_workers_run_isolated_with_nothing_but_net_bind_service(lab, tmp_path, user):
    host = lab.add_host("edge", ["198.18.0.10/24"])
    net = NetnsSockets(host)
    proxy = UserProxy(host, tmp_path, {"worker_user": user} if user else {})
    try:
        start_sink(host, "127.0.0.1:9000")
        wait_listening(host, 9000)
        # Port 443: binding it needs the one capability the worker keeps.
        proxy.write_config([frontend("api", "127.0.0.1:443", ["127.0.0.1:9000"])], workers=1)
        proxy.start()
        (worker,) = proxy.worker_pids()
        status = proc_status(worker)
        only_bind = f"{1 << CAP_NET_BIND_SERVICE:016x}"
        assert (status["CapEff"], status["CapPrm"], status["CapInh"], status["CapAmb"]) == (
            only_bind, only_bind, f"{0:016x}", f"{0:016x}")
        assert status["CapBnd"] == only_bind           # root outside systemd may shrink it
        assert status["NoNewPrivs"] == "1"
        uid = pwd.getpwnam(user).pw_uid if user else 0
        assert status["Uid"].split() == [str(uid)] * 4
        assert Path(f"/proc/{worker}/oom_score_adj").read_text().strip() == str(WORKER_OOM_SCORE_ADJ)
        assert os.readlink(f"/proc/{worker}/cwd") == "/"
        assert Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")[1] == b"-I"
        master = proc_status(proxy.proc.pid)
        assert int(master["CapEff"], 16) & (1 << 12)     # the master keeps NET_ADMIN (VRRP's side)
        with net.connect(("127.0.0.1", 443)) as sock:
            sock.sendall(b"ECHO\nthrough the unprivileged worker")
            assert sock.recv(100) == b"through the unprivileged worker"
    finally:
        proxy.stop()
        net.close()
