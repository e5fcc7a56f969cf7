"""Workers of a dead master (issue 8): `kill -9` of `lbproxy run` and its workers stop accepting at
once (a new connect is refused within about a second), while a connection they carry still relays;
then they drain and exit. The whole scenario runs as one script in a network namespace of its own
as root (support.own_network), on loopback otherwise."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import free_port, own_network

REPO = Path(__file__).resolve().parents[2]

SCENARIO = r"""
import json, os, signal, socket, subprocess, sys, threading, time
root = sys.argv[1]

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

backend = socket.socket()
backend.bind(("127.0.0.1", 0))
backend.listen(16)

def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)

def serve():
    while True:
        conn, _ = backend.accept()
        threading.Thread(target=echo, args=(conn,), daemon=True).start()

threading.Thread(target=serve, daemon=True).start()
listen = free_port()
config = os.path.join(root, "lbproxy.toml")
with open(config, "w") as f:
    f.write("\n".join([
        "[node]", 'name = "orphans"', f'control_socket = "{root}/control.sock"', "workers = 2",
        f'state_dir = "{root}/state"',
        "[[frontend]]", 'name = "api"', f'listen = "127.0.0.1:{listen}"', "drain_timeout = 4.0",
        "  [frontend.health]", '  type = "tcp"', "  interval = 0.2", "  timeout = 0.5", "  rise = 1", "  fall = 1",
        "  [[frontend.backend]]", f'  address = "127.0.0.1:{backend.getsockname()[1]}"', ""]))
log = open(os.path.join(root, "lbproxy.log"), "wb")
master = subprocess.Popen([sys.executable, "-m", "vipd.proxycli", "run", "-c", config], stdout=log,
                          stderr=subprocess.STDOUT)

def relays(sock, payload):
    sock.sendall(payload)
    got = b""
    while len(got) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got == payload

held, deadline = None, time.monotonic() + 30
while held is None and time.monotonic() < deadline:
    try:
        candidate = socket.create_connection(("127.0.0.1", listen), timeout=5)
        if relays(candidate, b"ping"):
            held = candidate
        else:
            candidate.close()
            time.sleep(0.1)
    except OSError:
        time.sleep(0.1)
assert held is not None, "the proxy never relayed"
workers = [int(p) for p in open(f"/proc/{master.pid}/task/{master.pid}/children").read().split()]
killed = time.monotonic()
os.kill(master.pid, signal.SIGKILL)
master.wait()
refused_after = None
while time.monotonic() - killed < 10:
    try:
        socket.create_connection(("127.0.0.1", listen), timeout=1).close()
    except ConnectionRefusedError:
        refused_after = time.monotonic() - killed
        break
    except OSError:
        pass
    time.sleep(0.01)
still_relays = relays(held, b"after the master died" * 100)
held.close()

def alive(pid):
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False

while any(alive(p) for p in workers) and time.monotonic() - killed < 15:
    time.sleep(0.05)
print(json.dumps({"workers": len(workers), "refused_after": refused_after, "still_relays": still_relays,
                  "exited_after": time.monotonic() - killed, "left": [p for p in workers if alive(p)]}))
"""


@pytest.mark.timeout(90)
def test_workers_of_a_killed_master_refuse_new_connections_and_finish_open_ones(tmp_path):
    done = subprocess.run(own_network([sys.executable, "-c", SCENARIO, str(tmp_path)]), cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=80)
    log = (tmp_path / "lbproxy.log").read_text(errors="replace") if (tmp_path / "lbproxy.log").exists() else ""
    assert done.returncode == 0, done.stderr + log
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nkill -9 of the proxy master: new connects refused after {result['refused_after']:.2f}s; "
          f"{result['workers']} workers exited {result['exited_after']:.2f}s after it")
    assert result["workers"] == 2
    assert result["refused_after"] is not None and result["refused_after"] < 1.0, log
    assert result["still_relays"], log
    assert result["left"] == [], log
    assert "the master is gone" in log


# `lbproxy run` with one real failure: the supervisor's clock raises on the heartbeat task's third
# look at it, so that task (which no one awaits) fails as a bug there would, a second after the start.
FAILING_PROXY = """
import sys, time
from lbproxy import supervisor
calls = 0
class FailingClock:
    @staticmethod
    def monotonic():
        global calls
        if sys._getframe(1).f_code.co_name == "_watch_heartbeats":
            calls += 1
            if calls == 3:
                raise RuntimeError("injected failure")
        return time.monotonic()
supervisor.time = FailingClock
from vipd.proxycli import main
sys.argv[0] = "lbproxy"
sys.exit(main())
"""


@pytest.mark.timeout(90)
def test_a_task_that_fails_unawaited_stops_the_daemon_with_one_line_and_exit_1(tmp_path):
    listen, backend = free_port(), free_port()
    config = tmp_path / "lbproxy.toml"
    config.write_text("\n".join([
        "[node]", 'name = "fails"', f'control_socket = "{tmp_path}/control.sock"', "workers = 1",
        f'state_dir = "{tmp_path}/state"',
        "[[frontend]]", 'name = "api"', f'listen = "127.0.0.1:{listen}"',
        "  [[frontend.backend]]", f'  address = "127.0.0.1:{backend}"', ""]))
    done = subprocess.run(own_network([sys.executable, "-c", FAILING_PROXY, "run", "-c", str(config)]), cwd=REPO,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    log = done.stdout + done.stderr
    assert done.returncode == 1, log
    fatal = [line for line in log.splitlines() if "fatal:" in line]
    assert len(fatal) == 1, log
    assert "task" in fatal[0] and "RuntimeError: injected failure" in fatal[0], log
    assert "Traceback" in log and "_watch_heartbeats" in log
