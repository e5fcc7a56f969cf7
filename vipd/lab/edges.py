"""The edge topology on a namespace lab: edge hosts running real `vipd`, HTTP backends, a client.

    client 198.18.0.50 ──┐
    edge-1 198.18.0.11 ──┤  one bridge; VIP 198.18.0.100 on the master edge
    edge-2 198.18.0.12 ──┤
    be-1..3 198.18.0.21..23

Used by `vipd demo`, the integration tests and the benches, so all three exercise the same thing.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vipd.lab import connclient
from vipd.lab.netns import Host, Lab

VIP = "198.18.0.100"
PORT = 6443
BACKEND_PORT = 8080


@dataclass
class EdgeLab:
    lab: Lab
    workdir: Path
    edges: list[Host]
    backends: list[Host]
    client: Host
    priorities: list[int]
    advert_interval: float
    preempt: bool
    frontend_track_weight: int | None
    vrid: int = 51
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    def socket(self, i: int) -> str:
        return str(self.workdir / f"edge{i + 1}.sock")

    def config_text(self, i: int, **vrrp_overrides) -> str:
        vrrp = {
            "name": "api", "interface": "eth0", "vrid": self.vrid, "priority": self.priorities[i],
            "advert_interval": self.advert_interval, "virtual_ips": [f"{VIP}/24"], "preempt": self.preempt,
            "garp_repeat": 2,
        }
        vrrp.update(vrrp_overrides)
        lines = [
            "[node]", f'name = "edge-{i + 1}"', f'control_socket = "{self.socket(i)}"', "workers = 1",
            # Each edge its own runtime state: the lab's hosts share this host's file system.
            f'state_dir = "{self.workdir / f"edge{i + 1}.state"}"', "",
            "[[vrrp]]", *(f"{k} = {toml_value(v)}" for k, v in vrrp.items()), "",
        ]
        if self.frontend_track_weight is not None:
            lines += ["  [[vrrp.track]]", '  frontend = "api"', f"  weight = {self.frontend_track_weight}", ""]
        lines += [
            "[[frontend]]", 'name = "api"', f'listen = "0.0.0.0:{PORT}"', 'balance = "round_robin"',
            "connect_timeout = 0.5", "retries = 2", "drain_timeout = 5.0", "",
            "  [frontend.health]", '  type = "http"', '  path = "/healthz"', "  interval = 0.2",
            "  timeout = 0.2", "  rise = 1", "  fall = 2", "",
        ]
        for backend in self.backends:
            lines += ["  [[frontend.backend]]", f'  address = "{backend.ipv4}:{BACKEND_PORT}"', ""]
        return "\n".join(lines)

    def write_config(self, i: int, **vrrp_overrides) -> Path:
        path = self.workdir / f"edge{i + 1}.toml"
        path.write_text(self.config_text(i, **vrrp_overrides))
        return path

    def start_edge(self, i: int) -> subprocess.Popen:
        path = self.workdir / f"edge{i + 1}.toml"
        if not path.exists():
            self.write_config(i)
        log = open(self.workdir / f"edge{i + 1}.log", "ab")
        proc = self.edges[i].popen([sys.executable, "-m", "vipd", "run", "-c", str(path)],
                                   stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.procs[i] = proc
        return proc

    def stop_edge(self, i: int, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int | None:
        return self.lab.stop(self.procs[i], sig, timeout)

    def lbctl(self, i: int, *args: str, timeout: float = 10) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", self.socket(i), *args],
                              capture_output=True, text=True, timeout=timeout)

    def status(self, i: int) -> dict | None:
        done = self.lbctl(i, "status", "--json")
        if done.returncode != 0:
            return None
        try:
            return json.loads(done.stdout)
        except json.JSONDecodeError:
            return None

    def state(self, i: int) -> str | None:
        status = self.status(i)
        return status["vrrp"][0]["state"] if status and status.get("vrrp") else None

    def holders(self) -> list[int]:
        """Edges that have the VIP on their interface."""
        return [i for i, edge in enumerate(self.edges) if edge.has_address(VIP)]

    def log(self, i: int) -> str:
        path = self.workdir / f"edge{i + 1}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_client(self, interval: float = 0.01, duration: float = 60.0, timeout: float = 3.0) -> subprocess.Popen:
        out = self.workdir / "client.json"
        out.unlink(missing_ok=True)
        return self.client.python(["-m", "vipd.lab.connclient", "--target", f"{VIP}:{PORT}", "--interval",
                                   str(interval), "--duration", str(duration), "--timeout", str(timeout),
                                   "--out", str(out)])

    def finish_client(self, proc: subprocess.Popen) -> list[connclient.Attempt]:
        self.lab.stop(proc, signal.SIGTERM, timeout=10)
        return connclient.load(str(self.workdir / "client.json"))


def toml_value(value) -> str:
    """A Python value as a TOML value, for the lab's generated configs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.05) -> object:
    """Poll until predicate() is truthy; its value, or None after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            return None
        time.sleep(step)


def build(lab: Lab, workdir: Path, *, edges: int = 2, backends: int = 3, priorities: list[int] | None = None,
          advert_interval: float = 0.1, preempt: bool = False,
          frontend_track_weight: int | None = -60) -> EdgeLab:
    edge_hosts = [lab.add_host(f"edge{i + 1}", [f"198.18.0.{11 + i}/24"]) for i in range(edges)]
    backend_hosts = [lab.add_host(f"be{i + 1}", [f"198.18.0.{21 + i}/24"]) for i in range(backends)]
    client = lab.add_host("client", ["198.18.0.50/24"])
    for i, backend in enumerate(backend_hosts):
        backend.python(["-m", "vipd.lab.httpbackend", "--listen", f"0.0.0.0:{BACKEND_PORT}", "--name", f"be-{i + 1}",
                        "--unhealthy-if", str(workdir / f"be{i + 1}.unhealthy")],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workdir.mkdir(parents=True, exist_ok=True)
    edge_lab = EdgeLab(lab, workdir, edge_hosts, backend_hosts, client,
                       priorities or [150 - 50 * i for i in range(edges)], advert_interval, preempt,
                       frontend_track_weight)
    for i in range(edges):
        edge_lab.write_config(i)
    for backend in backend_hosts:
        listening = lambda: backend.run(["ss", "-Htln", f"sport = :{BACKEND_PORT}"], check=False).stdout.strip()
        if not wait_for(listening, 10):
            raise RuntimeError(f"{backend.name}: lab backend did not start")
    return edge_lab
