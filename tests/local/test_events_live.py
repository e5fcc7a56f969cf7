"""The event stream and the logs of a real `vipd run` with one [[frontend]] on loopback (as root in
a network namespace of its own): `lbctl events` after drains and reloads, `--follow` live, a
follower that never reads, the access log's byte counts, journald prefixes and JSON logs."""
from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import free_port, own_network, wait_until

from vipd.control.client import backend_path, request
from vipd.control.schema import Event, check

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
# The backend below: it reads this much from each client, then answers with that much and closes.
REQUEST_BYTES = 1000
ANSWER_BYTES = 70_000
BACKEND = f"""
import socket, sys
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(64)
print("ready", flush=True)
while True:
    c, _ = srv.accept()
    got = 0
    while got < {REQUEST_BYTES}:
        chunk = c.recv(65536)
        if not chunk:
            break
        got += len(chunk)
    if got >= {REQUEST_BYTES}:
        c.sendall(b"x" * {ANSWER_BYTES})
    c.close()
"""
CLIENT = f"""
import socket, sys
c = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=10)
c.sendall(b"y" * {REQUEST_BYTES})
got = 0
while True:
    chunk = c.recv(65536)
    if not chunk:
        break
    got += len(chunk)
print(c.getsockname()[1], got)
"""





class Lines:
    """Lines of a pipe as they arrive (select on the descriptor, no hidden buffer)."""

    def __init__(self, pipe) -> None:
        self.fd = pipe.fileno()
        self.buffer = b""

    def next(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode()


class LiveDaemon:
    def __init__(self, root: Path, *, log_format: str = "text", journal: bool = False) -> None:
        self.root = root
        self.sock = root / "control.sock"
        self.config = root / "vipd.toml"
        self.log_path = root / "vipd.log"
        self.backend_port = free_port()
        self.listen_port = free_port()
        self.dead = f"127.0.0.1:{free_port()}"
        self.backend = f"127.0.0.1:{self.backend_port}"
        self.good_config = "\n".join([
            "[node]", 'name = "local-1"', f'control_socket = "{self.sock}"', "workers = 1",
            f'log_format = "{log_format}"', f'state_dir = "{root / "state"}"',
            "[[frontend]]", 'name = "api"', f'listen = "127.0.0.1:{self.listen_port}"', "access_log = true",
            "  [frontend.health]", '  type = "tcp"', "  interval = 0.2", "  timeout = 0.5",
            "  rise = 1", "  fall = 1",
            "  [[frontend.backend]]", f'  address = "{self.backend}"',
            "  [[frontend.backend]]", f'  address = "{self.dead}"', ""])
        self.config.write_text(self.good_config)
        env = dict(ENV)
        with open(self.log_path, "wb") as log:
            if journal:
                st = os.fstat(log.fileno())
                env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            else:
                env.pop("JOURNAL_STREAM", None)
            self.proc = subprocess.Popen(own_network([sys.executable, "-m", "vipd", "run", "-c", str(self.config)]),
                                         cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.helpers: list[subprocess.Popen] = []

    def in_net(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        return ["nsenter", "-t", str(self.proc.pid), "-n", "--", *argv]

    def start_backend(self) -> None:
        wait_until(lambda: self.sock.exists(), 30, "the control socket")
        backend = subprocess.Popen(self.in_net([sys.executable, "-c", BACKEND, str(self.backend_port)]),
                                   stdout=subprocess.PIPE, text=True)
        self.helpers.append(backend)
        assert backend.stdout.readline().strip() == "ready"
        wait_until(lambda: self.states() == {self.backend: "up", self.dead: "down"}, 30, "one backend up, one down")

    def ask(self, method: str, url: str) -> tuple[int, dict]:
        return request(str(self.sock), method, url, 10.0)

    def states(self) -> dict:
        _, body = self.ask("GET", "/v1/status")
        return {b["address"]: b["state"] for b in body["frontends"][0]["backends"]}

    def lbctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", str(self.sock), *args],
                              cwd=REPO, env=ENV, capture_output=True, text=True, timeout=60)

    def events(self) -> list[dict]:
        result = self.lbctl("events", "--json")
        assert result.returncode == 0 and result.stderr == "", result.stderr
        records = [json.loads(line) for line in result.stdout.splitlines()]
        for record in records:
            assert check(record, Event, strict=True).problems == []
        return records

    def log(self) -> str:
        return self.log_path.read_text()

    def stop(self) -> int:
        # The daemon first: a backend killed before it would be reported down, rightly, while the
        # daemon drains, after its daemon.stop event.
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for helper in self.helpers:
                helper.kill()
                helper.wait()


@pytest.fixture
def run_dir():
    path = Path(tempfile.mkdtemp(prefix="vipd-events-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(120)
def test_operator_actions_and_reloads_in_order_follow_access_log_and_journal_prefixes(run_dir: Path) -> None:
    daemon = LiveDaemon(run_dir, journal=True)
    follower = None
    try:
        daemon.start_backend()
        # A follower, connected once it printed the held events' last line.
        follower = subprocess.Popen([sys.executable, "-m", "vipd.control.lbctl", "--socket", str(daemon.sock),
                                     "events", "--follow", "--json", "-n", "1"],
                                    cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        lines = Lines(follower.stdout)
        assert lines.next(30) is not None, "the follower printed nothing"

        started = time.monotonic()
        status, _ = daemon.ask("POST", backend_path("api", daemon.backend, "drain"))
        assert status == 200
        seen = None
        while seen is None and (line := lines.next(started + 1.0 - time.monotonic())) is not None:
            record = json.loads(line)
            if record["kind"] == "backend.drain":
                seen = record
        assert seen is not None, "the follower did not see the drain within 1 s"
        assert seen["fields"] == {"frontend": "api", "backend": daemon.backend, "state": "drain", "by": "lbctl"}

        assert daemon.lbctl("enable", "api", daemon.backend).returncode == 0
        assert daemon.lbctl("reload").returncode == 0
        daemon.config.write_text(daemon.good_config.replace("workers = 1", "workers = 0"))
        refused = daemon.lbctl("reload")
        assert refused.returncode == 1 and "node.workers" in refused.stderr
        daemon.config.write_text(daemon.good_config)

        wanted = ("backend.drain", "backend.enable", "config.reload")
        records = [r for r in daemon.events() if r["kind"] in wanted]
        assert [(r["kind"], r["fields"].get("ok")) for r in records] == [
            ("backend.drain", None), ("backend.enable", None), ("config.reload", True), ("config.reload", False)]
        drain, enable, good, bad = records
        assert drain["seq"] < enable["seq"] < good["seq"] < bad["seq"]
        assert enable["fields"] == {"frontend": "api", "backend": daemon.backend, "state": "up", "by": "lbctl"}
        assert good["fields"] == {"ok": True, "config": str(daemon.config),
                                  "summary": "0 vrrp instance(s), 1 frontend(s)"}
        assert good["level"] == "info" and bad["level"] == "error"
        assert bad["fields"]["ok"] is False and len(bad["fields"]["errors"]) == 1
        assert "node.workers" in bad["fields"]["errors"][0]
        # The dead backend's health verdict came with its reason.
        health = next(r for r in daemon.events() if r["kind"] == "backend.state" and r["subject"] == f"api/{daemon.dead}")
        assert health["fields"]["new"] == "down" and health["fields"]["reason"] == "connection refused"

        readable = daemon.lbctl("events", "-n", "2")
        assert readable.returncode == 0
        lines = readable.stdout.splitlines()
        assert len(lines) == 2 and "config.reload" in lines[1] and "refused" in lines[1]

        ports = []
        for _ in range(3):
            client = subprocess.run(daemon.in_net([sys.executable, "-c", CLIENT, str(daemon.listen_port)]),
                                    capture_output=True, text=True, timeout=30)
            port, got = client.stdout.split()
            assert int(got) == ANSWER_BYTES
            ports.append(port)
        access = wait_until(lambda: [line for line in daemon.log().splitlines() if "lbproxy.access" in line][-3:]
                          if daemon.log().count("lbproxy.access") >= 3 else None, 10, "three access log lines")
        for port, line in zip(ports, access):
            assert line.endswith("s") and line.startswith("<6>INFO lbproxy.access[g1w0]: ")
            assert f"api 127.0.0.1:{port} -> {daemon.backend} ok in={REQUEST_BYTES} out={ANSWER_BYTES} " in line
    finally:
        code = daemon.stop()
        if follower is not None:
            try:
                follower.wait(10)
            finally:
                if follower.poll() is None:
                    follower.kill()
                    follower.wait()
    assert code == 0, daemon.log()
    # The follower saw the stop, then the end of the stream: one line, non-zero.
    rest = follower.stdout.read().decode().splitlines()
    assert json.loads(rest[-1])["kind"] == "daemon.stop"
    assert follower.returncode == 1 and follower.stderr.read().decode() == "lbctl: vipd stopped; the event stream ended\n"
    gone = daemon.lbctl("events", "--follow")
    assert gone.returncode == 1 and gone.stdout == "" and len(gone.stderr.splitlines()) == 1
    assert gone.stderr.startswith(f"lbctl: cannot reach vipd at {daemon.sock}")
    lines = [line for line in daemon.log().splitlines() if line]
    assert lines and all(re.match(r"<[2-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) ", line) for line in lines), lines
    assert any(line.startswith("<3>ERROR vipd: reload of ") for line in lines)
    assert any(line.startswith("<4>WARNING lbproxy.health: frontend api: every backend") for line in lines)
    assert not re.search(r"^\S*\d{4}-\d\d-\d\d ", daemon.log(), re.M), "the journal stamps lines itself"


@pytest.mark.timeout(120)
def test_json_logs_and_a_follower_that_never_reads(run_dir: Path) -> None:
    daemon = LiveDaemon(run_dir, log_format="json")
    stuck = None
    try:
        daemon.start_backend()
        stuck = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck.connect(str(daemon.sock))
        stuck.sendall(b"GET /v1/events?follow=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        slowest = 0.0
        # Each call: a drain or an enable, and every backend down or one up again: 2 events.
        for i in range(900):
            action = "drain" if i % 2 == 0 else "enable"
            status, _ = daemon.ask("POST", backend_path("api", daemon.backend, action))
            assert status == 200
            if i % 20 == 0:
                started = time.monotonic()
                status, _ = daemon.ask("GET", "/v1/status")
                slowest = max(slowest, time.monotonic() - started)
                assert status == 200
        assert slowest < 1.0, f"status took {slowest:.2f}s while a follower did not read"
        client = subprocess.run(daemon.in_net([sys.executable, "-c", CLIENT, str(daemon.listen_port)]),
                                capture_output=True, text=True, timeout=30)
        assert client.stdout.split()[1] == str(ANSWER_BYTES)
        status, body = daemon.ask("GET", "/v1/events?limit=5")
        assert status == 200 and len(body["events"]) == 5 and body["events"][-1]["seq"] >= 800
        status, body = daemon.ask("GET", "/v1/events")
        assert len(body["events"]) == 1000, "the ring holds the newest 1000"
        seqs = [e["seq"] for e in body["events"]]
        assert seqs == list(range(seqs[0], seqs[0] + 1000))
        status, refused = daemon.ask("GET", "/v1/events?after=x")
        assert status == 400 and "after" in refused["error"]
        # Reading at last, the stuck follower learns what it missed, in its stream.
        received = b""
        stuck.settimeout(10)
        deadline = time.monotonic() + 20
        while b'"kind":"events.dropped"' not in received and time.monotonic() < deadline:
            received += stuck.recv(1 << 20)
        gap = json.loads(next(line for line in received.split(b"\r\n") if b'"kind":"events.dropped"' in line))
        assert gap["fields"]["count"] >= 1 and gap["fields"]["last"] - gap["fields"]["first"] + 1 == gap["fields"]["count"]
        # Another one that never reads, stuck in the held events' backlog, when the daemon stops.
        stuck_at_stop = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stuck_at_stop.connect(str(daemon.sock))
        stuck_at_stop.sendall(b"GET /v1/events?follow=1 HTTP/1.1\r\nHost: localhost\r\n\r\n")
        time.sleep(0.5)
        started = time.monotonic()
        code = daemon.stop()
        assert time.monotonic() - started < 10, "stop waited on the follower that does not read"
        stuck_at_stop.close()
    finally:
        if stuck is not None:
            stuck.close()
        if daemon.proc.poll() is None:
            daemon.stop()
    assert code == 0, daemon.log()
    lines = [line for line in daemon.log().splitlines() if line]
    parsed = [json.loads(line) for line in lines]     # every line is one JSON object
    assert all({"time", "level", "logger", "message"} <= set(p) for p in parsed)
    drains = [p for p in parsed if p.get("event", {}).get("kind") == "backend.drain"]
    assert len(drains) == 450 and drains[0]["event"]["fields"]["backend"] == daemon.backend
    (access,) = [p for p in parsed if p["logger"] == "lbproxy.access"]
    assert access["worker"] == "g1w0" and access["access"]["result"] == "ok"
    assert (access["access"]["bytes_in"], access["access"]["bytes_out"]) == (REQUEST_BYTES, ANSWER_BYTES)
