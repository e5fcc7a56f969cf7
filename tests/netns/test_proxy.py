"""The proxy as an operator runs it: real `lbproxy run` (master + spawned workers) in a lab
namespace, real backends, real client connections; status and drain through the control socket."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from test_proxy_helpers import (
    REPO,
    KeepAlive,
    Load,
    NetnsSockets,
    Proxy,
    failures,
    frontend,
    http_get,
    pattern_block,
    pattern_sha256,
    read_all,
    start_http_backend,
    start_sink,
    wait_listening,
)

from vipd.control.client import request
from vipd.lab.edges import wait_for

pytestmark = [pytest.mark.netns, pytest.mark.slow]

API = ("127.0.0.1", 6443)
HTTP_HEALTH = {"type": "http", "path": "/healthz", "interval": 0.2, "timeout": 0.3, "rise": 1, "fall": 2}


@pytest.fixture
def edge(lab, tmp_path):
    host = lab.add_host("edge", ["198.18.0.10/24", "2001:db8::10/64"])
    net = NetnsSockets(host)
    proxy = Proxy(host, tmp_path)
    try:
        yield SimpleNamespace(lab=lab, host=host, net=net, proxy=proxy, tmp=tmp_path)
    finally:
        proxy.stop()
        net.close()


def http_backends(edge, count: int, flags: bool = False) -> list:
    procs = []
    for i in range(1, count + 1):
        flag = edge.tmp / f"be{i}.unhealthy" if flags else None
        procs.append(start_http_backend(edge.host, f"127.0.0.1:{8080 + i}", f"be{i}", flag))
    for i in range(1, count + 1):
        wait_listening(edge.host, 8080 + i)
    return procs


def addresses(count: int) -> list[str]:
    return [f"127.0.0.1:{8080 + i}" for i in range(1, count + 1)]


def served_by(attempts) -> set[str]:
    return {a.detail for a in attempts if a.ok}


@pytest.mark.timeout(90)
def test_backend_killed_under_load_fails_no_new_connection(edge):
    procs = http_backends(edge, 3)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(3), HTTP_HEALTH,
                                      connect_timeout=1.0, retries=2)], workers=2)
    edge.proxy.start()
    load = Load(edge.net, API, threads=4).start()
    try:
        load.wait_for(150)
        edge.lab.stop(procs[1], signal.SIGKILL)
        killed_at = time.monotonic()
        load.wait_for(load.count() + 400)
        down = edge.proxy.wait(lambda s: s["frontends"][0]["backends"][1]["state"] == "down", 10)
        marked_down = time.monotonic()
        load.wait_for(load.count() + 200)
    finally:
        attempts = load.stop()
    before = failures(attempts)
    after = failures(attempts, killed_at)
    print(f"\n{len(attempts)} requests; {len(before) - len(after)} in flight on be2 when it was killed failed; "
          f"{len(after)} of {sum(a.start >= killed_at for a in attempts)} started after the kill failed")
    assert after == [], after[:5]
    assert down, edge.proxy.backend("127.0.0.1:8082")
    assert served_by([a for a in attempts if a.start >= marked_down]) == {"be1", "be3"}
    assert served_by(attempts) == {"be1", "be2", "be3"}


@pytest.mark.timeout(90)
def test_backend_host_vanishing_without_reset_fails_no_request(lab, tmp_path):
    edge_host = lab.add_host("edge", ["198.18.0.10/24"])
    backends = [lab.add_host(f"be{i}", [f"198.18.0.{20 + i}/24"]) for i in (1, 2)]
    for i, host in enumerate(backends, 1):
        start_http_backend(host, "0.0.0.0:8080", f"be{i}")
        wait_listening(host, 8080)
    net = NetnsSockets(edge_host)
    proxy = Proxy(edge_host, tmp_path)
    try:
        proxy.write_config([frontend("api", "198.18.0.10:6443", ["198.18.0.21:8080", "198.18.0.22:8080"],
                                     HTTP_HEALTH, connect_timeout=0.3, retries=2)], workers=2)
        proxy.start()
        load = Load(net, ("198.18.0.10", 6443), threads=4).start()
        try:
            load.wait_for(100)
            backends[0].set_link(False)
            cut_at = time.monotonic()
            down = proxy.wait(lambda s: s["frontends"][0]["backends"][0]["state"] == "down", 10, step=0.01)
            marked_down_after = time.monotonic() - cut_at
            load.wait_for(load.count() + 200)
        finally:
            attempts = load.stop()
        status = proxy.frontend()
        print(f"\nbe1's link cut: marked down after {marked_down_after:.2f}s "
              f"(health every 0.2s, timeout 0.3s, fall 2; passive connect failures count too); "
              f"{len(attempts)} requests, {len(failures(attempts))} failed "
              f"({len(failures(attempts, cut_at))} of those started after the cut)")
        assert down, status
        assert status["backends"][0]["last_error"]
        assert failures(attempts, cut_at) == [], failures(attempts, cut_at)[:5]
        assert served_by([a for a in attempts if a.start > cut_at + marked_down_after]) == {"be2"}
    finally:
        proxy.stop()
        net.close()


@pytest.mark.timeout(60)
def test_health_transitions_and_all_down_show_in_status_and_traffic(edge):
    http_backends(edge, 2, flags=True)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(2), HTTP_HEALTH)])
    edge.proxy.start()
    assert edge.proxy.frontend()["serving"] is True

    (edge.tmp / "be1.unhealthy").touch()
    assert edge.proxy.wait(lambda s: s["frontends"][0]["backends"][0]["state"] == "down")
    be1 = edge.proxy.backend("127.0.0.1:8081")
    assert be1["health"] == "0/1 DOWN" and be1["last_error"] == "HTTP 503", be1
    assert {http_get(edge.net, API)[1] for _ in range(8)} == {"be2"}

    # Every backend down: the proxy says so, and still tries them rather than refusing.
    (edge.tmp / "be2.unhealthy").touch()
    assert edge.proxy.wait(lambda s: s["frontends"][0]["all_down"] is True)
    assert edge.proxy.frontend()["serving"] is False
    assert {http_get(edge.net, API) for _ in range(8)} == {(200, "be1"), (200, "be2")}

    (edge.tmp / "be1.unhealthy").unlink()
    (edge.tmp / "be2.unhealthy").unlink()
    assert edge.proxy.wait(lambda s: all(b["state"] == "up" for b in s["frontends"][0]["backends"]))
    frontend_status = edge.proxy.frontend()
    assert frontend_status["all_down"] is False and frontend_status["serving"] is True
    assert frontend_status["backends"][0]["health"] == "2/2 UP"
    assert "every backend is down" in edge.proxy.log()


@pytest.mark.timeout(60)
def test_drain_stops_new_connections_while_existing_ones_finish(edge):
    http_backends(edge, 2)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(2), balance="round_robin")])
    edge.proxy.start()
    held = [KeepAlive(edge.net, API) for _ in range(4)]
    names = [conn.get()[1] for conn in held]
    assert sorted(names) == ["be1", "be1", "be2", "be2"]

    edge.proxy.drain("127.0.0.1:8081")
    assert edge.proxy.backend("127.0.0.1:8081")["state"] == "drain"
    assert {http_get(edge.net, API)[1] for _ in range(10)} == {"be2"}
    for conn, name in zip(held, names):          # the open connections keep their backend
        assert conn.get() == (200, name)
    assert edge.proxy.wait(lambda s: s["frontends"][0]["backends"][0]["active_connections"] == 2)

    for conn, name in zip(held, names):
        if name == "be1":
            conn.close()
    assert edge.proxy.wait(lambda s: s["frontends"][0]["backends"][0]["active_connections"] == 0)

    edge.proxy.drain("127.0.0.1:8081", enable=True)
    assert edge.proxy.backend("127.0.0.1:8081")["state"] == "up"
    assert {http_get(edge.net, API)[1] for _ in range(10)} == {"be1", "be2"}
    for conn in held:
        conn.close()


@pytest.mark.timeout(120)
def test_five_reloads_during_connection_churn_refuse_and_reset_nothing(edge):
    http_backends(edge, 3)
    config = lambda n, workers: edge.proxy.write_config(
        [frontend("api", "127.0.0.1:6443", addresses(n), drain_timeout=5.0)], workers=workers)
    config(2, 1)
    edge.proxy.start()
    load = Load(edge.net, API, threads=6, pause=0.0).start()
    generations = [edge.proxy.worker_pids()]
    try:
        load.wait_for(100)
        for i in range(5):
            workers = 2 if i % 2 == 0 else 1
            config(3 if i % 2 == 0 else 2, workers)   # the worker count changes: a new generation
            edge.proxy.reload()
            assert edge.proxy.wait(lambda s: s["frontends"][0]["workers"] == workers and
                                   len(edge.proxy.worker_pids()) == workers, 20), edge.proxy.log()
            generations.append(edge.proxy.worker_pids())
            load.wait_for(load.count() + 100)
        config(2, 2)                                 # and a backend-only change, in place
        edge.proxy.reload()
        load.wait_for(load.count() + 100)
        in_place = edge.proxy.worker_pids()
    finally:
        attempts = load.stop()
    print(f"\n{len(attempts)} requests across 5 reloads (worker generations {generations}): "
          f"{len(failures(attempts))} failed")
    assert failures(attempts) == [], failures(attempts)[:5]
    for old, new in zip(generations, generations[1:]):
        assert not set(old) & set(new)
    assert in_place == generations[-1]
    assert "tcp_migrate_req" in edge.proxy.log()


@pytest.mark.timeout(60)
def test_reload_adds_and_removes_frontends_and_a_failed_one_keeps_the_old(edge):
    http_backends(edge, 2)
    one = frontend("api", "127.0.0.1:6443", addresses(1))
    two = frontend("admin", "127.0.0.1:7443", addresses(2)[1:])
    edge.proxy.write_config([one])
    edge.proxy.start()
    edge.proxy.write_config([one, two])
    edge.proxy.reload()
    assert http_get(edge.net, ("127.0.0.1", 7443)) == (200, "be2")
    assert http_get(edge.net, API) == (200, "be1")
    edge.proxy.write_config([one])
    edge.proxy.reload()
    assert edge.proxy.wait(lambda s: [f["name"] for f in s["frontends"]] == ["api"])

    def refused() -> bool:
        try:
            edge.net.connect(("127.0.0.1", 7443)).close()
        except ConnectionRefusedError:
            return True
        return False
    # The old generation closes its listeners as it starts draining, just after the status changed.
    assert wait_for(refused, 5), "the removed frontend still accepts"

    blocker = edge.host.python(["-c", "import socket, time; s = socket.socket(); "
                                "s.bind(('127.0.0.1', 8443)); s.listen(); time.sleep(60)"])
    wait_listening(edge.host, 8443)
    edge.proxy.write_config([one, frontend("taken", "127.0.0.1:8443", addresses(1))])
    code, body = request(edge.proxy.socket, "POST", "/v1/reload", timeout=30)
    assert code == 400 and "cannot listen on 127.0.0.1:8443" in body["error"], body
    assert http_get(edge.net, API) == (200, "be1")
    assert [f["name"] for f in edge.proxy.status()["frontends"]] == ["api"]
    edge.lab.stop(blocker)


@pytest.mark.timeout(60)
def test_half_close_over_ipv6_and_ipv4_listeners(edge):
    start_sink(edge.host, "[::1]:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("v6", "[::1]:6443", ["[::1]:9000"]),
                             frontend("v4", "127.0.0.1:6444", ["[::1]:9000"])])
    edge.proxy.start()
    payload = pattern_block(7)[:300_000]
    for address in (("::1", 6443), ("127.0.0.1", 6444)):
        with edge.net.connect(address) as sock:
            sock.sendall(b"ECHO\n" + payload)
            sock.shutdown(socket.SHUT_WR)            # our side is done; the reply must still come
            assert read_all(sock) == payload


@pytest.mark.timeout(90)
def test_100_megabytes_arrive_intact_both_ways(edge):
    start_sink(edge.host, "127.0.0.1:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["127.0.0.1:9000"])])
    edge.proxy.start()
    size, block = 100 * 1024 * 1024, pattern_block(11)
    with edge.net.connect(API, timeout=30) as sock:
        sock.sendall(b"UP\n")
        for offset in range(0, size, len(block)):
            sock.sendall(block[:min(len(block), size - offset)])
        sock.shutdown(socket.SHUT_WR)
        assert read_all(sock).decode().split() == [pattern_sha256(size, 11), str(size)]
    with edge.net.connect(API, timeout=30) as sock:
        sock.sendall(f"DOWN {size} 13\n".encode())
        digest, got = __import__("hashlib").sha256(), 0
        while chunk := sock.recv(1 << 20):
            digest.update(chunk)
            got += len(chunk)
    assert got == size and digest.hexdigest() == pattern_sha256(size, 13)
    counters = edge.proxy.wait(lambda s: s["frontends"][0]["bytes_out"] >= size and s["frontends"][0])
    assert counters["bytes_in"] >= size and counters["active_connections"] == 0


@pytest.mark.timeout(60)
def test_idle_timeout_closes_idle_connections_only(edge):
    start_sink(edge.host, "127.0.0.1:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["127.0.0.1:9000"], idle_timeout=0.6)])
    edge.proxy.start()
    idle = edge.net.connect(API, timeout=10)
    busy = edge.net.connect(API, timeout=10)
    for sock in (idle, busy):
        sock.sendall(b"ECHO\nhello")
        assert sock.recv(100) == b"hello"
    opened = time.monotonic()
    while time.monotonic() - opened < 2.0:           # the busy one talks every 0.1 s: it stays
        busy.sendall(b"x")
        assert busy.recv(10) == b"x"
        time.sleep(0.1)
    try:
        closed = idle.recv(10) == b""
    except ConnectionResetError:
        closed = True
    assert closed
    busy.sendall(b"still here")
    assert busy.recv(100) == b"still here"
    idle.close()
    busy.close()


@pytest.mark.timeout(60)
def test_half_close_timeout_ends_a_connection_left_half_open(edge):
    start_sink(edge.host, "127.0.0.1:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["127.0.0.1:9000"],
                                      idle_timeout=300.0, half_close_timeout=0.5)])
    edge.proxy.start()
    with edge.net.connect(API, timeout=10) as sock:
        sock.sendall(b"HOLD\nbye")
        sock.shutdown(socket.SHUT_WR)                # the backend never answers nor closes
        try:
            assert sock.recv(10) == b""
        except ConnectionResetError:
            pass
    assert edge.proxy.wait(lambda s: s["frontends"][0]["active_connections"] == 0)


@pytest.mark.timeout(60)
def test_max_connections_closes_the_excess_at_once_and_counts_it(edge):
    start_sink(edge.host, "127.0.0.1:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["127.0.0.1:9000"], max_connections=3)])
    edge.proxy.start()
    held = []
    for _ in range(3):
        sock = edge.net.connect(API)
        sock.sendall(b"ECHO\nping")
        assert sock.recv(10) == b"ping"
        held.append(sock)
    with edge.net.connect(API) as extra:
        try:
            assert extra.recv(10) == b""
        except ConnectionResetError:
            pass
    assert edge.proxy.wait(lambda s: s["frontends"][0]["refused"] >= 1)
    held.pop().close()
    assert edge.proxy.wait(lambda s: s["frontends"][0]["active_connections"] == 2)
    with edge.net.connect(API) as again:
        again.sendall(b"ECHO\npong")
        assert again.recv(10) == b"pong"
    for sock in held:
        sock.close()


@pytest.mark.timeout(60)
def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(edge):
    http_backends(edge, 2)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(2))], workers=2)
    edge.proxy.start()
    before = edge.proxy.worker_pids()
    assert len(before) == 2
    load = Load(edge.net, API, threads=4).start()
    try:
        load.wait_for(100)
        victim = before[0]
        subprocess.run(["kill", "-KILL", str(victim)], check=True)
        deadline = time.monotonic() + 10
        while victim in edge.proxy.worker_pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        killed_at = time.monotonic()
        replaced = edge.proxy.wait(lambda s: len(edge.proxy.worker_pids()) == 2 and
                                   s["frontends"][0]["workers"] == 2, 15)
        load.wait_for(load.count() + 200)
    finally:
        attempts = load.stop()
    after = edge.proxy.worker_pids()
    print(f"\n{len(attempts)} requests, {len(failures(attempts))} failed "
          f"({len(failures(attempts, killed_at))} started after the worker died)")
    assert replaced and victim not in after and before[1] in after
    assert failures(attempts, killed_at) == []
    assert "(killed by SIGKILL)" in edge.proxy.log()


@pytest.mark.timeout(90)
def test_file_descriptor_exhaustion_is_survived_and_recovered_from(edge):
    start_sink(edge.host, "127.0.0.1:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["127.0.0.1:9000"], connect_timeout=1.0)])
    edge.proxy.start(nofile=64)
    workers = edge.proxy.worker_pids()
    first = edge.net.connect(API)
    first.sendall(b"ECHO\nfirst")
    assert first.recv(10) == b"first"
    crowd = []
    for _ in range(60):                              # far more than 64 descriptors' worth
        sock = edge.net.connect(API, timeout=10)
        sock.sendall(b"ECHO\n")
        crowd.append(sock)
    assert edge.proxy.wait(lambda s: "Too many open files" in edge.proxy.log(), 10), edge.proxy.log()
    first.sendall(b"alive")                          # established connections carry on
    assert first.recv(10) == b"alive"
    for sock in crowd:
        sock.close()
    first.close()
    assert edge.proxy.wait(lambda s: s["frontends"][0]["active_connections"] == 0, 15)
    with edge.net.connect(API, timeout=10) as again:
        again.sendall(b"ECHO\nback")
        assert again.recv(10) == b"back"
    assert edge.proxy.worker_pids() == workers and edge.proxy.proc.poll() is None


@pytest.mark.timeout(60)
def test_sigterm_stops_accepting_drains_and_exits(edge):
    http_backends(edge, 1)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(1), drain_timeout=10.0)])
    edge.proxy.start()
    held = KeepAlive(edge.net, API)
    assert held.get() == (200, "be1")
    edge.proxy.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    refused = False
    while time.monotonic() < deadline and not refused:
        try:
            edge.net.connect(API, timeout=2).close()
            time.sleep(0.05)
        except ConnectionRefusedError:
            refused = True
    assert refused
    assert held.get() == (200, "be1")                # still draining: the old connection works
    assert edge.proxy.proc.poll() is None
    held.close()
    assert edge.proxy.proc.wait(15) == 0
    assert edge.proxy.worker_pids() == []


@pytest.mark.timeout(60)
def test_drain_timeout_ends_connections_that_do_not_finish(edge):
    start_sink(edge.host, "127.0.0.1:9000")
    wait_listening(edge.host, 9000)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", ["localhost:9000"], drain_timeout=0.5)])
    edge.proxy.start()
    held = edge.net.connect(API, timeout=10)
    held.sendall(b"ECHO\nhi")                        # a backend given by name works too
    assert held.recv(10) == b"hi"
    edge.proxy.proc.send_signal(signal.SIGTERM)
    assert edge.proxy.proc.wait(15) == 0             # did not wait for the open connection
    try:
        assert held.recv(10) == b""
    except ConnectionResetError:
        pass
    held.close()
    assert "drain timeout: closing 1 connection(s)" in edge.proxy.log()


def test_lbproxy_run_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[[frontend]]\nname = "api"\nlisten = "nowhere"\n')
    done = subprocess.run([sys.executable, "-m", "vipd.proxycli", "run", "-c", str(bad)], cwd=str(REPO),
                          capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert "frontend[0].listen" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "vipd.proxycli", "run", "-c", str(tmp_path / "nope.toml")],
                             cwd=str(REPO), capture_output=True, text=True, timeout=30)
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


@pytest.mark.timeout(60)
def test_a_port_taken_by_another_program_is_a_clear_start_error(edge):
    blocker = edge.host.python(["-c", "import socket, time; s = socket.socket(); "
                                "s.bind(('127.0.0.1', 6443)); s.listen(); time.sleep(60)"])
    wait_listening(edge.host, 6443)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(1))])
    with pytest.raises(RuntimeError):
        edge.proxy.start(timeout=15)
    assert edge.proxy.proc.returncode != 0
    log = edge.proxy.log()
    assert "cannot listen on 127.0.0.1:6443: Address already in use" in log
    assert "Traceback" not in log
    edge.lab.stop(blocker)


@pytest.mark.timeout(90)
def test_a_worker_dying_young_again_and_again_is_restarted_with_backoff(edge):
    http_backends(edge, 1)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(1))])
    edge.proxy.start()
    killed = []
    for _ in range(4):
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = [p for p in edge.proxy.worker_pids() if p not in killed]
            if pids:
                break
            time.sleep(0.01)
        assert pids, edge.proxy.log()
        subprocess.run(["kill", "-KILL", str(pids[0])], check=True)
        killed.append(pids[0])
    restarts = lambda: [line.rsplit(" in ", 1)[1] for line in edge.proxy.log().splitlines()
                        if "(killed by SIGKILL)" in line]
    assert edge.proxy.wait(lambda s: len(restarts()) >= 4, 10)
    assert restarts() == ["0.0s", "0.5s", "1.0s", "2.0s"], edge.proxy.log()
    assert edge.proxy.wait(lambda s: s["frontends"][0]["workers"] == 1, 20)
    assert http_get(edge.net, API) == (200, "be1")


@pytest.mark.timeout(60)
def test_workers_of_a_dead_master_drain_and_exit(edge):
    http_backends(edge, 1)
    edge.proxy.write_config([frontend("api", "127.0.0.1:6443", addresses(1), drain_timeout=10.0)], workers=2)
    edge.proxy.start()
    workers = edge.proxy.worker_pids()
    held = KeepAlive(edge.net, API)
    assert held.get() == (200, "be1")
    edge.lab.stop(edge.proxy.proc, signal.SIGKILL)
    alive = lambda: [p for p in workers if Path(f"/proc/{p}").exists() and
                     Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
    assert held.get() == (200, "be1")                # orphaned workers finish what they carry
    held.close()
    deadline = time.monotonic() + 15
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == []
