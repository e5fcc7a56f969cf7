"""Helpers the tests of every folder share (on sys.path through pytest's `pythonpath`)."""
from __future__ import annotations

import asyncio
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

from lbproxy.config import BackendConfig, FrontendConfig
from lbproxy.frontend import Frontend
from lbproxy.worker import _sweep_step


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


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class LoopbackFrontend:
    """One lbproxy Frontend in this process on an ephemeral loopback port, swept as the worker's tick
    sweeps it: connect timeouts, and idle connections with `sweep_idle`. Failed connects land in
    `failures` instead of the IPC channel."""

    def __init__(self, backends: list[str], workers: int = 1, sweep_idle: bool = False, **settings) -> None:
        self.config = FrontendConfig(
            name="t", listen="127.0.0.1:0", listen_host="127.0.0.1", listen_port=0,
            backends=tuple(BackendConfig(a, a.rsplit(":", 1)[0], int(a.rsplit(":", 1)[1])) for a in backends),
            **settings)
        self.failures: list[tuple[str, str, str]] = []
        loop = asyncio.get_running_loop()
        self.frontend = Frontend(loop, self.config, workers, {}, lambda *failure: self.failures.append(failure))
        self.frontend.listen()
        self.port = self.frontend.listener.getsockname()[1]
        step = self.config.connect_timeout / 5
        if sweep_idle:
            step = min(step, _sweep_step(self.config))
        self._sweeper = loop.create_task(self._sweep(step, sweep_idle))

    async def _sweep(self, step: float, sweep_idle: bool) -> None:
        while True:
            now = time.monotonic()
            self.frontend.sweep_connecting(now)
            if sweep_idle:
                self.frontend.sweep_idle(now)
            await asyncio.sleep(step)

    async def close(self) -> None:
        self._sweeper.cancel()
        self.frontend.stop_accepting()
        self.frontend.abort_all()
        assert await self.frontend.wait_idle(5)

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


async def serve(handler, rcvbuf: int | None = None) -> tuple[asyncio.Server, str]:
    """A loopback asyncio server on an ephemeral port (its accepted sockets with `rcvbuf`): it and its HOST:PORT."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)    # inherited by accepted sockets
    sock.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(handler, sock=sock)
    return server, f"127.0.0.1:{sock.getsockname()[1]}"


async def eventually(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Returns once `predicate()` is true, polled on the running loop; fails after `timeout`."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        await asyncio.sleep(0.002)
