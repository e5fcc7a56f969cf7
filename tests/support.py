"""Helpers the tests of every folder share (on sys.path through pytest's `pythonpath`)."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def require_binary(name: str, package: str | None = None) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"needs `{name}` (Debian package {package or name})")


# A valid config using every section (node, a VRRP instance tracking a frontend, a frontend): the
# config tests break it one key at a time; the CLI tests run the commands on it.
GOOD_CONFIG = """
[node]
name = "edge-1"
control_socket = "/tmp/vipd-test.sock"
workers = 2

[[vrrp]]
name = "api"
interface = "eth0"
vrid = 51
priority = 150
advert_interval = 0.05
virtual_ips = ["198.18.0.100/24"]

  [[vrrp.track]]
  frontend = "api"
  weight = -60

[[frontend]]
name = "api"
listen = "0.0.0.0:6443"

  [[frontend.backend]]
  address = "198.18.0.21:6443"
"""

# The same without its frontend (the VRRP track then follows an interface): enough for vipd, not for lbproxy.
VRRP_ONLY_CONFIG = GOOD_CONFIG[:GOOD_CONFIG.index("[[frontend]]")].replace('frontend = "api"', 'interface = "eth1"')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def own_network(argv: list[str]) -> list[str]:
    """As root the proxy sets net.ipv4.tcp_migrate_req: run `argv` in a network namespace of its
    own (loopback only) so this host's stays as it is. Its control socket is a file, reachable."""
    if os.geteuid() != 0:
        return argv
    require_binary("unshare", "util-linux")
    require_binary("ip", "iproute2")
    return ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def start_vipd_run(config: os.PathLike, log: Path) -> subprocess.Popen:
    """`vipd run -c config` with its output in `log`, once it logged that it is running; the test
    stops it by PID."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vipd", "run", "-c", str(config)], stdout=out, stderr=out)
    deadline = time.monotonic() + 30
    while "running " not in log.read_text() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    return proc


@contextlib.contextmanager
def vipd_running(config: os.PathLike, log: Path):
    """`start_vipd_run`, checked to be running; when the block ends without an error, SIGTERM must
    stop it with exit status 0. Killed by PID if still running, and its log holds no traceback."""
    proc = start_vipd_run(config, log)
    try:
        assert proc.poll() is None, log.read_text()
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in log.read_text()


def wait_until(predicate, timeout: float, what: str):
    """The predicate's first true value within `timeout` (an OSError counts as not yet)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = predicate()
        except OSError:
            found = None
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")
