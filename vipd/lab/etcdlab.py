"""A lab for `[[election]]`: a 3-member etcd (Debian etcd-server), up to three `vipd run` candidates
each serving the VIP through its own frontend, and a client host, all on one segment. Who really
holds the VIP is read from the kernel: one `ip -ts monitor address` per candidate (all namespaces
share one clock), so a dual holder shows as overlapping intervals whatever the daemons believe.
With `tls`, the members serve https only and ask for a client certificate (--client-cert-auth).
Used by tests/netns/test_election_etcd.py, test_election_tls.py and bench/_election.py (`bench/failover.py --election`)."""
from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from vipd.lab.netns import Lab

ETCD = {"e1": "198.18.0.11", "e2": "198.18.0.12", "e3": "198.18.0.13"}
CANDIDATES = {"c1": "198.18.0.21", "c2": "198.18.0.22", "c3": "198.18.0.23"}
CLIENT = "198.18.0.30"
VIP = "198.18.0.100"
PORT = 8080
BACKEND_PORT = 8081
TTL = 3
MONITOR_LINE = re.compile(r"^\[(?P<ts>[^\]]+)\]\s*(?P<deleted>Deleted )?\d+: \S+\s+inet (?P<ip>[\d.]+)/")


@dataclass(frozen=True)
class EtcdTls:
    """PEM files: the CA both sides trust, the members' certificate (SAN: their IPs; serverAuth and
    clientAuth, since etcd's JSON gateway dials its own gRPC port with it) and a client's one."""
    ca_file: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


class ElectionLab:
    def __init__(self, lab: Lab, workdir: Path, ttl: int = TTL, members: tuple[str, ...] = tuple(ETCD),
                 tls: EtcdTls | None = None) -> None:
        self.lab = lab
        self.ttl = ttl
        self.members = {name: ETCD[name] for name in members}
        self.tls = tls
        self.scheme = "https" if tls else "http"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for name, ip in {**self.members, **CANDIDATES, "client": CLIENT}.items():
            lab.add_host(name, [f"{ip}/24"])
        self.etcd: dict[str, subprocess.Popen] = {}
        self.vipd: dict[str, subprocess.Popen] = {}
        self.monitors: dict[str, subprocess.Popen] = {}
        for name in CANDIDATES:
            out = open(workdir / f"{name}.monitor", "w")
            self.monitors[name] = lab[name].popen(["ip", "-ts", "monitor", "address", "dev", "eth0"], stdout=out)
            out.close()
            lab[name].popen([sys.executable, "-m", "vipd.lab.httpbackend", "--listen", f"127.0.0.1:{BACKEND_PORT}",
                             "--name", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    # --- etcd

    def start_etcd(self, name: str, state: str = "new") -> None:
        ip = self.members[name]
        cluster = ",".join(f"{n}=http://{a}:2380" for n, a in self.members.items())
        tls = ["--client-cert-auth", "--trusted-ca-file", str(self.tls.ca_file), "--cert-file",
               str(self.tls.server_cert), "--key-file", str(self.tls.server_key)] if self.tls else []
        log = open(self.workdir / f"{name}.etcd.log", "ab")
        self.etcd[name] = self.lab[name].popen([
            "etcd", "--name", name, "--data-dir", str(self.workdir / f"{name}.data"),
            "--listen-client-urls", f"{self.scheme}://{ip}:2379",
            "--advertise-client-urls", f"{self.scheme}://{ip}:2379",
            "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
            "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", "vipd-test",
            "--heartbeat-interval", "50", "--election-timeout", "500", "--pre-vote=true",
            "--logger", "zap", "--log-level", "warn", *tls], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def etcd_healthy(self) -> bool:
        tls = ["--cacert", str(self.tls.ca_file), "--cert", str(self.tls.client_cert), "--key",
               str(self.tls.client_key)] if self.tls else []
        host = self.lab[next(iter(self.members))]
        done = host.run(["etcdctl", "--endpoints", self.endpoints(), *tls, "endpoint", "health"], check=False,
                        timeout=10, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return done.returncode == 0

    def endpoints(self) -> str:
        return ",".join(f"{self.scheme}://{a}:2379" for a in self.members.values())

    # --- candidates

    def config(self, name: str, priority: int, etcd_files: dict[str, Path] | None = None,
               vips: tuple[str, ...] = (f"{VIP}/24",)) -> Path:
        """`etcd_files`: ca_file/cert_file/key_file for the candidate's [etcd] table."""
        path = self.workdir / f"{name}.toml"
        endpoints = ", ".join(f'"{e}"' for e in self.endpoints().split(","))
        files = "".join(f'{key} = "{value}"\n' for key, value in (etcd_files or {}).items())
        path.write_text(f"""
[node]
name = "{name}"
control_socket = "{self.workdir}/{name}.sock"
state_dir = "{self.workdir}/{name}.state"
log_level = "info"
workers = 1

[etcd]
endpoints = [{endpoints}]
lease_ttl = {self.ttl}
{files}
[[election]]
name = "api"
interface = "eth0"
virtual_ips = [{", ".join(f'"{v}"' for v in vips)}]
priority = {priority}
  [[election.track]]
  frontend = "api"
  weight = 0

[[frontend]]
name = "api"
listen = "0.0.0.0:{PORT}"
drain_timeout = 1.0
  [frontend.health]
  type = "http"
  interval = 0.2
  timeout = 0.2
  [[frontend.backend]]
  address = "127.0.0.1:{BACKEND_PORT}"
""")
        return path

    def start(self, name: str, priority: int, etcd_files: dict[str, Path] | None = None,
              vips: tuple[str, ...] = (f"{VIP}/24",)) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        config = self.config(name, priority, etcd_files, vips)
        proc = self.lab[name].popen([sys.executable, "-m", "vipd", "run", "-c", str(config)],
                                    stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self.vipd[name] = proc
        return proc

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {n}\n{self.log(n)}" for n in self.vipd)

    def lbctl(self, name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket",
                               str(self.workdir / f"{name}.sock"), *args], capture_output=True, text=True, timeout=10)

    def election(self, name: str) -> dict:
        done = self.lbctl(name, "status", "--json")
        return (json.loads(done.stdout)["elections"] or [{}])[0] if done.returncode == 0 else {}

    def leads(self, name: str) -> bool:
        """`name` says LEADER and is the only candidate with the VIP."""
        return self.election(name).get("state") == "LEADER" and self.holders() == [name]

    def holders(self, vip: str = VIP) -> list[str]:
        return [n for n in CANDIDATES if self.lab[n].has_address(vip)]

    def cut_from_etcd(self, name: str, on: bool) -> None:
        if on:
            members = ", ".join(self.members.values())
            self.lab[name].run(["nft", f"add table inet cut; add chain inet cut out {{ type filter hook output "
                                      f"priority 0; policy accept; }}; add rule inet cut out ip daddr {{ {members} }} drop"])
        else:
            self.lab[name].run(["nft", "delete table inet cut"])

    # --- what the kernel says

    def intervals(self) -> dict[str, list[tuple[float, float]]]:
        """Per candidate, when the VIP was configured (wall-clock seconds), from the monitors."""
        now = time.time()
        result = {}
        for name in CANDIDATES:
            spans, since = [], None
            for line in (self.workdir / f"{name}.monitor").read_text().splitlines():
                m = MONITOR_LINE.match(line)
                if not m or m["ip"] != VIP:
                    continue
                at = datetime.datetime.fromisoformat(m["ts"]).timestamp()
                if m["deleted"] and since is not None:
                    spans.append((since, at))
                    since = None
                elif not m["deleted"] and since is None:
                    since = at
            if since is not None:
                spans.append((since, now))
            result[name] = spans
        return result

    def overlap(self, since: float, until: float) -> float:
        """Seconds within [since, until] during which two candidates or more had the VIP."""
        edges = []
        for spans in self.intervals().values():
            for a, b in spans:
                a, b = max(a, since), min(b, until)
                if a < b:
                    edges += [(a, 1), (b, -1)]
        total, count, last = 0.0, 0, None
        for at, step in sorted(edges, key=lambda e: (e[0], e[1])):
            if count >= 2:
                total += at - last
            count += step
            last = at
        return total

    def added_at(self, name: str, after: float) -> float | None:
        return next((a for a, _ in self.intervals()[name] if a >= after), None)

    def removed_at(self, name: str, after: float) -> float | None:
        return next((b for _, b in self.intervals()[name] if b >= after), None)



def wait(predicate, timeout: float, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def start_cluster(c: ElectionLab) -> None:
    for name in c.members:
        c.start_etcd(name)
    if not wait(c.etcd_healthy, 20, 0.2):
        raise RuntimeError("the etcd cluster did not become healthy")


def stop_all(c: ElectionLab) -> None:
    for proc in [*c.vipd.values(), *c.etcd.values()]:
        c.lab.stop(proc, signal.SIGKILL, timeout=5)


def start_client(c: ElectionLab, out: Path, interval: float = 0.015, duration: float = 60.0) -> subprocess.Popen:
    """A new TCP connection (one HTTP GET) to the VIP every `interval` (vipd.lab.connclient)."""
    return c.lab["client"].python(["-m", "vipd.lab.connclient", "--target", f"{VIP}:{PORT}", "--interval",
                                   str(interval), "--duration", str(duration), "--timeout", "3", "--out", str(out)])
