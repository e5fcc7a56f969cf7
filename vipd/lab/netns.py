"""A throw-away lab of network namespaces: one layer-2 segment, hosts plugged into it.

The same lab serves `vipd demo`, the integration tests and the benches. The bridge lives in a
namespace of its own, so nothing is ever added to the root namespace. Every process started
through a host is tracked and stopped by PID when the lab closes.
"""
from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Iterable, Sequence

_serial = itertools.count()


def unavailable_reason() -> str | None:
    """Why a namespace lab cannot be built here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None:
        return "needs iproute2 (the `ip` command)"
    probe = f"vlprobe{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot create network namespaces: {made.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


class Host:
    def __init__(self, lab: "Lab", name: str, netns: str, port: str, ifname: str) -> None:
        self.lab = lab
        self.name = name
        self.netns = netns
        self.port = port          # this host's port on the lab bridge
        self.ifname = ifname
        self.addresses: list[str] = []

    @property
    def ipv4(self) -> str | None:
        return next((a.split("/")[0] for a in self.addresses if ":" not in a), None)

    @property
    def ipv6(self) -> str | None:
        return next((a.split("/")[0] for a in self.addresses if ":" in a), None)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def run(self, argv: Sequence[str], check: bool = True, timeout: float = 30,
            **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        done = subprocess.run(self.argv(argv), timeout=timeout, **kwargs)
        if check and done.returncode != 0:
            raise RuntimeError(f"[{self.name}] {' '.join(argv)} exited {done.returncode}: "
                               f"{(done.stderr or '').strip()}")
        return done

    def sh(self, command: str, **kwargs) -> subprocess.CompletedProcess:
        return self.run(["sh", "-c", command], **kwargs)

    def popen(self, argv: Sequence[str], **kwargs) -> subprocess.Popen:
        """Start a process in this host; the lab stops it (by PID) when it closes."""
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.argv(argv), **kwargs)
        self.lab.processes.append(proc)
        return proc

    def python(self, args: Sequence[str], **kwargs) -> subprocess.Popen:
        return self.popen([sys.executable, *args], **kwargs)

    def has_address(self, address: str) -> bool:
        shown = self.run(["ip", "-o", "addr", "show", "dev", self.ifname], check=False).stdout
        return any(f" {address}/" in line for line in shown.splitlines())

    def link_local(self) -> str | None:
        shown = self.run(["ip", "-o", "-6", "addr", "show", "dev", self.ifname, "scope", "link"],
                         check=False).stdout
        for line in shown.split():
            if line.startswith("fe80:"):
                return line.split("/")[0]
        return None

    def set_link(self, up: bool) -> None:
        """Cut or restore this host's cable at the switch: the host sees carrier loss, and
        traffic to it vanishes silently (no reset), like a host that dies."""
        _ip("-n", self.lab.switch, "link", "set", self.port, "up" if up else "down")

    def sysctl(self, key: str, value: str | int) -> None:
        self.run(["sysctl", "-qw", f"{key}={value}"])


class Lab:
    """Namespaces named `<prefix>-<host>` plus `<prefix>-sw` holding the bridge."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"vl{os.getpid()}x{next(_serial)}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self.processes: list[subprocess.Popen] = []
        self._namespaces: list[str] = []
        self._partitions = 0
        self._closed = False
        self._add_netns(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge",
            "forward_delay", "0", "stp_state", "0", "mcast_snooping", "0")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def _add_netns(self, name: str) -> None:
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self, name: str, addresses: Iterable[str] = (), ifname: str = "eth0") -> Host:
        netns = f"{self.prefix}-{name}"
        port = f"p{len(self.hosts)}"
        self._add_netns(netns)
        host = Host(self, name, netns, port, ifname)
        # DAD would hold new IPv6 addresses (and the link-local source of VRRP adverts) for seconds.
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            host.sysctl(key, 0)
        _ip("link", "add", ifname, "netns", netns, "type", "veth", "peer", "name", port,
            "netns", self.switch)
        _ip("-n", self.switch, "link", "set", port, "master", "br0")
        _ip("-n", self.switch, "link", "set", port, "up")
        _ip("-n", netns, "link", "set", ifname, "up")
        for address in addresses:
            _ip("-n", netns, "addr", "add", address, "dev", ifname, *(["nodad"] if ":" in address else []))
            host.addresses.append(address)
        self.hosts[name] = host
        return host

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def wait_link_local(self, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        for host in self.hosts.values():
            while host.link_local() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{host.name}: no IPv6 link-local address on {host.ifname}")
                time.sleep(0.05)

    def partition(self, side_a: Iterable[str], side_b: Iterable[str], vrrp_only: bool = True) -> None:
        """Drop frames between two groups of hosts at the switch (VRRP only, by default)."""
        if self._partitions == 0:
            self._nft("add table bridge vlab")
            self._nft("add chain bridge vlab cut { type filter hook forward priority 0 ; policy accept ; }")
        self._partitions += 1
        match = "meta l4proto 112 " if vrrp_only else ""
        for a in side_a:
            for b in side_b:
                for src, dst in ((a, b), (b, a)):
                    self._nft(f"add rule bridge vlab cut iifname {self.hosts[src].port} "
                              f"oifname {self.hosts[dst].port} {match}drop")

    def heal(self) -> None:
        if self._partitions:
            self._nft("delete table bridge vlab")
            self._partitions = 0

    def _nft(self, rule: str) -> None:
        done = subprocess.run(["ip", "netns", "exec", self.switch, "nft", rule],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"nft {rule}: {done.stderr.strip()}")

    def stop(self, proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 5.0) -> int | None:
        """Signal a lab process by PID and reap it, escalating to SIGKILL after `timeout`."""
        if proc.poll() is None:
            try:
                os.kill(proc.pid, sig)
                proc.wait(timeout)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        return proc.returncode

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for proc in self.processes:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        deadline = time.monotonic() + 5
        for proc in self.processes:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait(5)
        for netns in reversed(self._namespaces):
            # Any stragglers (e.g. grandchildren that left the session) die with their namespace.
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout
            for pid in pids.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", netns, check=False)

    def __enter__(self) -> "Lab":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
