"""The anycast topology on a namespace lab: a Linux router running FRR, edges each running FRR and a
real `vipd` with an `[[anycast]]` VIP over a local HTTP backend, and a client behind the router.

    client 198.18.0.50 ──┐   route VIP via the router
    router 198.18.0.1  ──┤   FRR (config/frr/router), ECMP with L4 hashing
    edge-N 198.18.0.1N ──┘   FRR (config/frr/edge), vipd: VIP 198.19.0.100/32 on vipd0, backend 127.0.0.1:8080

With `ipv6=True` every host also gets 2001:db8::N/64, FRR also reads the bgpd-ipv6.conf snippets
(an IPv6 session per edge), and the VIP is 2001:db8:1::100/128 on a frontend listening on [::].

FRR runs from the shipped config/frr snippets (only each edge's ASN and router-id are changed), one
daemon per file, every path in a run directory of its own, stopped by the PIDs in its pid files.
Used by the namespace tests and bench/failover.py.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from vipd.lab import connclient
from vipd.lab.edges import toml_value, wait_for
from vipd.lab.netns import Host, Lab

VIP = "198.19.0.100"
PORT = 6443
BACKEND = "127.0.0.1:8080"
ROUTER = "198.18.0.1"
CLIENT = "198.18.0.50"
VIP6 = "2001:db8:1::100"
ROUTER6 = "2001:db8::1"
CLIENT6 = "2001:db8::50"
FRR = Path("/usr/lib/frr")
SNIPPETS = Path(__file__).resolve().parents[2] / "config" / "frr"
# The values the shipped edge snippet is written for; each edge gets its own.
SNIPPET_ASN, SNIPPET_ROUTER_ID = "65001", "198.18.0.11"


def unavailable_reason() -> str | None:
    for daemon in ("zebra", "bgpd", "bfdd"):
        if not (FRR / daemon).exists():
            return f"needs FRR's {daemon} (Debian package frr)"
    if not SNIPPETS.is_dir():
        return f"needs the FRR snippets in {SNIPPETS}"
    return None


class FrrNode:
    """zebra, bfdd and bgpd in one namespace, every path under `rundir`."""

    DAEMONS = ("zebra", "bfdd", "bgpd")

    def __init__(self, host: Host, rundir: Path, bgpd: str, bfdd: str) -> None:
        self.host = host
        self.rundir = rundir
        rundir.mkdir(parents=True)
        (rundir / "zebra.conf").write_text("")
        (rundir / "bgpd.conf").write_text(bgpd)
        (rundir / "bfdd.conf").write_text(bfdd)
        shutil.chown(rundir, "frr", "frr")
        for child in rundir.iterdir():
            shutil.chown(child, "frr", "frr")

    def _common(self, daemon: str) -> list[str]:
        r = self.rundir
        return [str(FRR / daemon), "-d", "-u", "frr", "-g", "frr", "--vty_socket", str(r), "-P", "0",
                "-f", str(r / f"{daemon}.conf"), "-i", str(r / f"{daemon}.pid"), "-z", str(r / "zserv.api"),
                "--log", f"file:{r / f'{daemon}.log'}"]

    def start(self) -> None:
        self.host.run([*self._common("zebra"), "-s", "90000000"])
        if not wait_for(lambda: (self.rundir / "zserv.api").exists(), 10):
            raise RuntimeError(f"{self.host.name}: zebra did not open its zserv socket")
        self.host.run([*self._common("bfdd"), "--bfdctl", str(self.rundir / "bfdd.sock")])
        self.host.run(self._common("bgpd"))

    def pids(self) -> list[int]:
        found = []
        for daemon in self.DAEMONS:
            try:
                found.append(int((self.rundir / f"{daemon}.pid").read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                pass
        return found

    def vtysh(self, command: str) -> str:
        return self.host.run(["vtysh", "--vty_socket", str(self.rundir), "-c", command], check=False).stdout

    def log(self) -> str:
        return "".join((self.rundir / f"{d}.log").read_text(errors="replace")
                       for d in self.DAEMONS if (self.rundir / f"{d}.log").exists())


def stop_frr(nodes: list[FrrNode], timeout: float = 8.0) -> None:
    """SIGTERM to every daemon at once (each takes 1.5-2 s to exit), SIGKILL to what remains."""
    pids = [pid for node in nodes for pid in node.pids()]
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
        time.sleep(0.05)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class AnycastLab:
    lab: Lab
    workdir: Path
    frrdir: Path
    router: Host
    edges: list[Host]
    client: Host
    frr: list[FrrNode] = field(default_factory=list)
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)
    backends: dict[int, subprocess.Popen] = field(default_factory=dict)
    ipv6: bool = False

    @property
    def vip_prefix(self) -> str:
        return f"{VIP6}/128" if self.ipv6 else f"{VIP}/32"

    @property
    def listen_host(self) -> str:
        return "[::]" if self.ipv6 else "0.0.0.0"

    @property
    def target(self) -> str:
        return f"[{VIP6}]:{PORT}" if self.ipv6 else f"{VIP}:{PORT}"

    # --- edges

    def socket(self, i: int) -> str:
        return str(self.workdir / f"edge{i + 1}.sock")

    def sick_flag(self, i: int) -> Path:
        return self.workdir / f"edge{i + 1}.unhealthy"

    def config_text(self, i: int) -> str:
        lines = [
            "[node]", f'name = "edge-{i + 1}"', f'control_socket = "{self.socket(i)}"', "workers = 1",
            f'state_dir = "{self.workdir / f"edge{i + 1}.state"}"', "",
            "[[frontend]]", 'name = "api"', f'listen = "{self.listen_host}:{PORT}"', "connect_timeout = 0.5",
            "drain_timeout = 5.0", "",
            "  [frontend.health]", '  type = "http"', '  path = "/healthz"', "  interval = 0.2",
            "  timeout = 0.2", "  rise = 1", "  fall = 2", "",
            "  [[frontend.backend]]", f"  address = {toml_value(BACKEND)}", "",
            "[[anycast]]", 'name = "api-anycast"', f"virtual_ips = {toml_value([self.vip_prefix])}", "",
            "  [[anycast.track]]", '  frontend = "api"', "",
        ]
        return "\n".join(lines)

    def start_edge(self, i: int) -> subprocess.Popen:
        path = self.workdir / f"edge{i + 1}.toml"
        path.write_text(self.config_text(i))
        with open(self.workdir / f"edge{i + 1}.log", "ab") as log:
            proc = self.edges[i].popen([sys.executable, "-m", "vipd", "run", "-c", str(path)],
                                       stdout=log, stderr=subprocess.STDOUT)
        self.procs[i] = proc
        return proc

    def stop_edge(self, i: int, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        return self.lab.stop(self.procs[i], sig, timeout)

    def set_backend_healthy(self, i: int, healthy: bool) -> None:
        if healthy:
            self.sick_flag(i).unlink(missing_ok=True)
        else:
            self.sick_flag(i).touch()

    def lbctl(self, i: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", self.socket(i), *args],
                              capture_output=True, text=True, timeout=timeout)

    def status(self, i: int) -> dict | None:
        done = self.lbctl(i, "status", "--json")
        try:
            return json.loads(done.stdout) if done.returncode == 0 else None
        except json.JSONDecodeError:
            return None

    def anycast_state(self, i: int) -> str | None:
        status = self.status(i)
        return status["anycast"][0]["state"] if status and status.get("anycast") else None

    def log(self, i: int) -> str:
        path = self.workdir / f"edge{i + 1}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # --- the router

    def nexthops(self) -> list[str]:
        """The edges the router's FIB sends the VIP to."""
        shown = self.router.run(["ip", *(["-6"] if self.ipv6 else []), "-o", "route", "show", self.vip_prefix],
                                check=False).stdout
        return sorted(re.findall(r"via (\S+)", shown))

    def wait_nexthops(self, count: int, timeout: float) -> float | None:
        """Seconds until the router has `count` nexthops for the VIP (polled), or None."""
        began = time.monotonic()
        while time.monotonic() - began < timeout:
            if len(self.nexthops()) == count:
                return time.monotonic() - began
            time.sleep(0.002)
        return None

    # --- the client

    def start_client(self, interval: float = 0.02, duration: float = 60.0, timeout: float = 3.0,
                     count: int = 100_000, name: str = "client") -> subprocess.Popen:
        out = self.workdir / f"{name}.json"
        out.unlink(missing_ok=True)
        return self.client.python(["-m", "vipd.lab.connclient", "--target", self.target, "--interval",
                                   str(interval), "--duration", str(duration), "--timeout", str(timeout),
                                   "--count", str(count), "--out", str(out)])

    def finish_client(self, proc: subprocess.Popen, name: str = "client",
                      wait: bool = False) -> list[connclient.Attempt]:
        if wait:
            proc.wait(120)
        else:
            self.lab.stop(proc, signal.SIGTERM, timeout=10)
        return connclient.load(str(self.workdir / f"{name}.json"))

    def close(self) -> None:
        for i in list(self.procs):
            self.stop_edge(i, signal.SIGKILL, timeout=5)
        stop_frr(self.frr)
        shutil.rmtree(self.frrdir, ignore_errors=True)


def _bgpd(role: str, ipv6: bool) -> str:
    """The shipped bgpd snippet of `role`, with its IPv6 part appended as its comment says."""
    text = (SNIPPETS / role / "bgpd.conf").read_text()
    return text + (SNIPPETS / role / "bgpd-ipv6.conf").read_text() if ipv6 else text


def build(lab: Lab, workdir: Path, edges: int = 3, ipv6: bool = False) -> AnycastLab:
    """Hosts addressed and routed, FRR running everywhere, backends up; no vipd yet. `ipv6`: dual
    stack, the VIP an IPv6 one."""
    workdir.mkdir(parents=True, exist_ok=True)
    # FRR drops to the frr user, which must reach its run directory (pytest's tmp is root-only).
    frrdir = Path(tempfile.mkdtemp(prefix="vipd-frr-"))
    frrdir.chmod(0o755)
    v6 = (lambda address: [f"{address}/64"]) if ipv6 else (lambda address: [])
    router = lab.add_host("router", [f"{ROUTER}/24", *v6(ROUTER6)])
    hosts = [lab.add_host(f"edge{i + 1}", [f"198.18.0.{11 + i}/24", *v6(f"2001:db8::{11 + i}")])
             for i in range(edges)]
    client = lab.add_host("client", [f"{CLIENT}/24", *v6(CLIENT6)])
    built = AnycastLab(lab, workdir, frrdir, router, hosts, client, ipv6=ipv6)
    try:
        for key, value in (("net.ipv4.ip_forward", 1), ("net.ipv4.fib_multipath_hash_policy", 1),
                           ("net.ipv4.conf.all.send_redirects", 0), ("net.ipv4.conf.eth0.send_redirects", 0)):
            router.sysctl(key, value)
        client.sysctl("net.ipv4.conf.all.accept_redirects", 0)
        if ipv6:
            # The router sends ICMPv6 redirects for what it forwards back onto the segment; a client
            # obeying them would bypass the router (and its ECMP) to one edge.
            router.sysctl("net.ipv6.conf.all.forwarding", 1)
            router.sysctl("net.ipv6.fib_multipath_hash_policy", 1)
            for key in ("net.ipv6.conf.all.accept_redirects", "net.ipv6.conf.eth0.accept_redirects"):
                client.sysctl(key, 0)
            client.run(["ip", "-6", "route", "add", f"{VIP6}/128", "via", ROUTER6])
        else:
            client.run(["ip", "route", "add", f"{VIP}/32", "via", ROUTER])
        bfdd = (SNIPPETS / "edge" / "bfdd.conf").read_text()
        nodes = [FrrNode(router, frrdir / "router", _bgpd("router", ipv6),
                         (SNIPPETS / "router" / "bfdd.conf").read_text())]
        edge_bgpd = _bgpd("edge", ipv6)
        for i, host in enumerate(hosts):
            bgpd = edge_bgpd.replace(SNIPPET_ASN, f"{65001 + i}").replace(SNIPPET_ROUTER_ID, host.ipv4)
            nodes.append(FrrNode(host, frrdir / host.name, bgpd, bfdd))
        built.frr = nodes
        for node in nodes:
            node.start()
        for i, host in enumerate(hosts):
            built.backends[i] = host.python(["-m", "vipd.lab.httpbackend", "--listen", BACKEND,
                                             "--name", f"edge-{i + 1}", "--unhealthy-if", str(built.sick_flag(i))],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except BaseException:
        built.close()
        raise
    return built
