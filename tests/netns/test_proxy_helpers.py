"""What the proxy tests share: real `lbproxy run` in a lab namespace, backends, clients.

The proxy, its backends and its clients all live in lab namespaces (nothing touches the host's
interfaces). The test process reaches into a namespace through `NetnsSockets`, which creates
sockets from a helper thread that joined it (setns); connect/send/recv then run in the calling
thread as usual. Run as a script, this module is also the raw TCP test backend (`sink`).
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from vipd.control.client import backend_path, request  # noqa: E402
from vipd.lab.edges import toml_value  # noqa: E402
from vipd.lab.netns import Host  # noqa: E402

CLONE_NEWNET = 0x40000000
PATTERN_BLOCK = 1 << 20


class NetnsSockets:
    """Sockets created inside a lab host's network namespace, used from any thread."""

    def __init__(self, host: Host) -> None:
        self._path = f"/run/netns/{host.netns}"
        self._pool = ThreadPoolExecutor(1, initializer=self._enter)

    def _enter(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(self._path, os.O_RDONLY)
        try:
            if libc.setns(fd, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns {self._path}")
        finally:
            os.close(fd)

    def socket(self, family: int = socket.AF_INET) -> socket.socket:
        return self._pool.submit(socket.socket, family, socket.SOCK_STREAM).result()

    def connect(self, address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
        sock = self.socket(socket.AF_INET6 if ":" in address[0] else socket.AF_INET)
        sock.settimeout(timeout)
        try:
            sock.connect(address)
        except BaseException:
            sock.close()
            raise
        return sock

    def close(self) -> None:
        self._pool.shutdown(wait=True)


# --- clients

def http_get(net: NetnsSockets, address: tuple[str, int], path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One GET on a new connection (Connection: close) -> (status, body)."""
    with net.connect(address, timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        data = read_all(sock)
    return parse_response(data)


def read_all(sock: socket.socket, limit: int = 1 << 30) -> bytes:
    chunks = []
    size = 0
    while size < limit:
        chunk = sock.recv(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def parse_response(data: bytes) -> tuple[int, str]:
    head, _, body = data.partition(b"\r\n\r\n")
    parts = head.split(b" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ConnectionError(f"not an HTTP response: {data[:80]!r}")
    return int(parts[1]), body.decode(errors="replace").strip()


class KeepAlive:
    """A persistent HTTP/1.1 connection through the proxy: one request at a time."""

    def __init__(self, net: NetnsSockets, address: tuple[str, int], timeout: float = 5.0) -> None:
        self.sock = net.connect(address, timeout)
        self.buffer = b""

    def get(self, path: str = "/") -> tuple[int, str]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            self.buffer = head + b"\r\n\r\n" + rest
            self._fill()
            head, _, rest = self.buffer.partition(b"\r\n\r\n")
        body, self.buffer = rest[:length], rest[length:]
        return int(head.split(b" ", 2)[1]), body.decode().strip()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("the proxy closed the keep-alive connection")
        self.buffer += chunk

    def close(self) -> None:
        self.sock.close()


@dataclass
class Attempt:
    start: float
    end: float
    ok: bool
    detail: str                  # the backend's name, or the error


@dataclass
class Load:
    """Steady connection churn: `threads` clients each doing one GET per new connection."""

    net: NetnsSockets
    address: tuple[str, int]
    threads: int = 4
    pause: float = 0.005
    timeout: float = 5.0
    attempts: list[Attempt] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(self.threads)]

    def start(self) -> "Load":
        for worker in self._workers:
            worker.start()
        return self

    def _run(self) -> None:
        deadline = time.monotonic() + 120           # bounded even if stop() is never called
        while not self._stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                status, body = http_get(self.net, self.address, timeout=self.timeout)
                ok, detail = status == 200, body if status == 200 else f"HTTP {status}"
            except (OSError, ConnectionError) as exc:
                ok, detail = False, type(exc).__name__ + (f": {exc.strerror}" if getattr(exc, "strerror", None) else "")
            with self._lock:
                self.attempts.append(Attempt(start, time.monotonic(), ok, detail))
            self._stop.wait(self.pause)

    def stop(self) -> list[Attempt]:
        self._stop.set()
        for worker in self._workers:
            worker.join(self.timeout + 5)
        return sorted(self.attempts, key=lambda a: a.start)

    def count(self) -> int:
        with self._lock:
            return len(self.attempts)

    def wait_for(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < count and time.monotonic() < deadline:
            time.sleep(0.02)


def failures(attempts: list[Attempt], after: float | None = None) -> list[Attempt]:
    return [a for a in attempts if not a.ok and (after is None or a.start >= after)]


# --- the proxy under test

def frontend(name: str, listen: str, backends: list[str], health: dict | None = None, **settings) -> dict:
    return {"name": name, "listen": listen, "backends": backends,
            "health": health or {"type": "tcp", "interval": 0.2, "timeout": 0.2, "rise": 1, "fall": 2},
            **settings}


class Proxy:
    """`lbproxy run` on a lab host: config file, control socket, logs, worker PIDs."""

    def __init__(self, host: Host, workdir: Path) -> None:
        self.host = host
        self.workdir = workdir
        self.config = workdir / "lbproxy.toml"
        self.socket = str(workdir / "control.sock")
        self.logfile = workdir / "lbproxy.log"
        self.proc: subprocess.Popen | None = None
        self.workers = 1

    def write_config(self, frontends: list[dict], workers: int = 1) -> None:
        self.workers = workers
        lines = ["[node]", 'name = "test-edge"', f"control_socket = {toml_value(self.socket)}",
                 f"workers = {workers}", 'log_level = "info"',
                 f"state_dir = {toml_value(str(self.workdir / 'state'))}", ""]
        for fe in frontends:
            lines.append("[[frontend]]")
            lines += [f"{k} = {toml_value(v)}" for k, v in fe.items() if k not in ("health", "backends")]
            lines.append("  [frontend.health]")
            lines += [f"  {k} = {toml_value(v)}" for k, v in fe["health"].items()]
            for address in fe["backends"]:
                lines += ["  [[frontend.backend]]", f"  address = {toml_value(address)}"]
            lines.append("")
        self.config.write_text("\n".join(lines))

    def start(self, nofile: int | None = None, timeout: float = 20.0) -> None:
        argv = ["-m", "vipd.proxycli", "run", "-c", str(self.config)]
        if nofile is not None:
            # Exec'd with the limit already in place, so the master and its workers inherit it.
            argv = ["-c", "import os, resource, sys; "
                    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, {nofile})); "
                    "os.execv(sys.executable, [sys.executable] + sys.argv[1:])", *argv]
        with open(self.logfile, "ab") as log:
            self.proc = self.host.python(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"lbproxy exited with {self.proc.returncode}:\n{self.log()}")
            status = self.try_status()
            if status and status["frontends"] and all(f["workers"] >= self.workers for f in status["frontends"]):
                return
            time.sleep(0.05)
        raise RuntimeError(f"lbproxy did not come up within {timeout}s:\n{self.log()}")

    def try_status(self) -> dict | None:
        try:
            code, body = request(self.socket, "GET", "/v1/status", timeout=5)
        except OSError:
            return None
        return body if code == 200 else None

    def status(self) -> dict:
        code, body = request(self.socket, "GET", "/v1/status", timeout=5)
        assert code == 200, body
        return body

    def frontend(self, name: str = "api") -> dict:
        return next(f for f in self.status()["frontends"] if f["name"] == name)

    def backend(self, address: str, name: str = "api") -> dict:
        return next(b for b in self.frontend(name)["backends"] if b["address"] == address)

    def drain(self, address: str, name: str = "api", enable: bool = False) -> None:
        code, body = request(self.socket, "POST", backend_path(name, address, "enable" if enable else "drain"))
        assert code == 200, body

    def reload(self) -> dict:
        code, body = request(self.socket, "POST", "/v1/reload", timeout=30)
        assert code == 200, body
        return body

    def worker_pids(self) -> list[int]:
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                    if int(stat.rsplit(")", 1)[1].split()[1]) != self.proc.pid:
                        continue
                    # Workers only: the master also runs short-lived children (nft, conntrack).
                    if b"lbproxy.worker" in Path(f"/proc/{entry}/cmdline").read_bytes():
                        pids.append(int(entry))
                except OSError:
                    continue
        return sorted(pids)

    def wait(self, predicate, timeout: float = 10.0, step: float = 0.05):
        """Poll predicate(status document) until truthy; its value, or None on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.try_status()
            value = predicate(status) if status else None
            if value:
                return value
            if time.monotonic() > deadline:
                return None
            time.sleep(step)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc is None:
            return None
        return self.host.lab.stop(self.proc, signal.SIGTERM, timeout)

    def log(self) -> str:
        return self.logfile.read_text(errors="replace") if self.logfile.exists() else ""


def start_http_backend(host: Host, listen: str, name: str, unhealthy_flag: Path | None = None) -> subprocess.Popen:
    argv = ["-m", "vipd.lab.httpbackend", "--listen", listen, "--name", name]
    if unhealthy_flag is not None:
        argv += ["--unhealthy-if", str(unhealthy_flag)]
    return host.python(argv, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def start_sink(host: Host, listen: str) -> subprocess.Popen:
    return host.python([str(Path(__file__).resolve()), "sink", "--listen", listen], cwd=str(REPO),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_listening(host: Host, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not host.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout.strip():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{host.name}: nothing listens on port {port}")
        time.sleep(0.05)


# --- the raw TCP backend: ECHO, UP (hash what arrives), DOWN (send a known stream), HOLD

def pattern_block(seed: int) -> bytes:
    return random.Random(seed).randbytes(PATTERN_BLOCK)


def pattern_sha256(size: int, seed: int) -> str:
    block = pattern_block(seed)
    digest = hashlib.sha256()
    for offset in range(0, size, PATTERN_BLOCK):
        digest.update(block[:min(PATTERN_BLOCK, size - offset)])
    return digest.hexdigest()


async def _sink_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        command = (await reader.readline()).split()
        if not command:
            return
        if command[0] == b"ECHO":
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()
        elif command[0] == b"UP":
            digest, size = hashlib.sha256(), 0
            while data := await reader.read(1 << 20):
                digest.update(data)
                size += len(data)
            writer.write(f"{digest.hexdigest()} {size}\n".encode())
        elif command[0] == b"HOLD":              # read to the end, then never answer nor close
            while await reader.read(1 << 16):
                pass
            await asyncio.sleep(60)
        elif command[0] == b"DOWN":
            size, seed = int(command[1]), int(command[2])
            block = pattern_block(seed)
            for offset in range(0, size, PATTERN_BLOCK):
                writer.write(block[:min(PATTERN_BLOCK, size - offset)])
                await writer.drain()
        await writer.drain()
    except (ConnectionError, ValueError, IndexError):
        pass
    finally:
        writer.close()


async def _serve_sink(host: str, port: int) -> None:
    server = await asyncio.start_server(_sink_connection, host, port, reuse_address=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="raw TCP backend for the proxy tests")
    parser.add_argument("mode", choices=["sink"])
    parser.add_argument("--listen", required=True)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(_serve_sink(host.strip("[]"), int(port)))


if __name__ == "__main__":
    main()
