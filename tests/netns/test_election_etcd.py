"""`[[election]]` against a real 3-member etcd (Debian etcd-server) and real `vipd run` candidates,
each in its own namespace on one segment, each serving the VIP through its own frontend. Who really holds the VIP is read from the kernel: one
`ip -ts monitor address` per candidate (all namespaces share one clock), so a dual holder shows
as overlapping intervals whatever the daemons believe."""
from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support import require_binary, wait_until

from vipd.lab import connclient

ETCD = {"e1": "198.18.0.11", "e2": "198.18.0.12", "e3": "198.18.0.13"}
CANDIDATES = {"c1": "198.18.0.21", "c2": "198.18.0.22", "c3": "198.18.0.23"}
CLIENT = "198.18.0.30"
VIP = "198.18.0.100"
PORT = 8080
BACKEND_PORT = 8081
TTL = 3
MONITOR_LINE = re.compile(r"^\[(?P<ts>[^\]]+)\]\s*(?P<deleted>Deleted )?\d+: \S+\s+inet (?P<ip>[\d.]+)/")


class Cluster:
    def __init__(self, lab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        for name, ip in {**ETCD, **CANDIDATES, "client": CLIENT}.items():
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
        ip = ETCD[name]
        cluster = ",".join(f"{n}=http://{a}:2380" for n, a in ETCD.items())
        log = open(self.workdir / f"{name}.etcd.log", "ab")
        self.etcd[name] = self.lab[name].popen([
            "etcd", "--name", name, "--data-dir", str(self.workdir / f"{name}.data"),
            "--listen-client-urls", f"http://{ip}:2379", "--advertise-client-urls", f"http://{ip}:2379",
            "--listen-peer-urls", f"http://{ip}:2380", "--initial-advertise-peer-urls", f"http://{ip}:2380",
            "--initial-cluster", cluster, "--initial-cluster-state", state, "--initial-cluster-token", "vipd-test",
            "--heartbeat-interval", "50", "--election-timeout", "500", "--pre-vote=true",
            "--logger", "zap", "--log-level", "warn"], stdout=log, stderr=subprocess.STDOUT)
        log.close()

    def etcd_healthy(self) -> bool:
        done = self.lab["e1"].run(["etcdctl", "--endpoints", ",".join(f"http://{a}:2379" for a in ETCD.values()),
                                   "endpoint", "health"], check=False, timeout=10,
                                  env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
        return done.returncode == 0

    # --- candidates

    def config(self, name: str, priority: int) -> Path:
        path = self.workdir / f"{name}.toml"
        endpoints = ", ".join(f'"http://{a}:2379"' for a in ETCD.values())
        path.write_text(f"""
[node]
name = "{name}"
control_socket = "{self.workdir}/{name}.sock"
state_dir = "{self.workdir}/{name}.state"
log_level = "info"
workers = 1

[etcd]
endpoints = [{endpoints}]
lease_ttl = {TTL}

[[election]]
name = "api"
interface = "eth0"
virtual_ips = ["{VIP}/24"]
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

    def start(self, name: str, priority: int) -> subprocess.Popen:
        log = open(self.workdir / f"{name}.log", "ab")
        proc = self.lab[name].popen([sys.executable, "-m", "vipd", "run", "-c", str(self.config(name, priority))],
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

    def holders(self) -> list[str]:
        return [n for n in CANDIDATES if self.lab[n].has_address(VIP)]

    def cut_from_etcd(self, name: str, on: bool) -> None:
        if on:
            members = ", ".join(ETCD.values())
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


@pytest.fixture
def cluster(lab, tmp_path):
    require_binary("etcd", "etcd-server")
    require_binary("etcdctl", "etcd-client")
    c = Cluster(lab, tmp_path / "election")
    for name in ETCD:
        c.start_etcd(name)
    assert wait_until(c.etcd_healthy, 20, "etcd cluster healthy")
    try:
        yield c
    finally:
        for proc in [*c.vipd.values(), *c.etcd.values()]:
            lab.stop(proc, signal.SIGKILL, timeout=5)


def leader_is(c: Cluster, name: str) -> bool:
    return c.election(name).get("state") == "LEADER" and c.holders() == [name]


@pytest.mark.timeout(150)
def test_one_holder_and_no_dual_holder_when_it_is_killed_cut_off_or_frozen(cluster):
    c = cluster
    c.start("c1", 200)
    c.start("c2", 100)
    c.start("c3", 50)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 leads"), c.logs()
    assert wait_until(lambda: all(c.election(n).get("holder") == "c1" for n in CANDIDATES), 10, "all see c1"), c.logs()
    follower = c.election("c2")
    assert (follower["state"], follower["reason"], follower["virtual_ips"]) == ("FOLLOWER", "held by c1", [f"{VIP}/24"])
    assert "api" in c.lbctl("c1", "status").stdout and "LEADER" in c.lbctl("c1", "status").stdout

    # SIGKILL: the kernel lifetime drops the dead holder's VIP before the lease can expire
    killed = time.time()
    c.lab.stop(c.vipd["c1"], signal.SIGKILL)
    assert wait_until(lambda: c.holders() == ["c2"], TTL + 2, "c2 holds after the kill"), c.logs()
    took = c.added_at("c2", killed) - killed
    assert c.removed_at("c1", killed) < c.added_at("c2", killed)
    assert took <= TTL + 2 and c.overlap(killed, time.time()) == 0.0
    print(f"SIGKILL: takeover {took:.2f}s, dead holder's VIP gone after {c.removed_at('c1', killed) - killed:.2f}s")

    # the higher priority comes back and takes over by hand-over
    c.start("c1", 200)
    assert wait_until(lambda: leader_is(c, "c1"), 15, "c1 preempts"), c.logs()
    assert wait_until(lambda: c.election("c2").get("state") == "FOLLOWER", 5, "c2 follows"), c.logs()

    # cut off from every etcd member: steps down (fence) before anyone else can win
    cut = time.time()
    c.cut_from_etcd("c1", True)
    try:
        assert wait_until(lambda: c.holders() == ["c2"], TTL + 3, "c2 holds after the cut"), c.logs()
        assert c.removed_at("c1", cut) < c.added_at("c2", cut)
        assert c.overlap(cut, time.time()) == 0.0
        print(f"cut off: holder stepped down after {c.removed_at('c1', cut) - cut:.2f}s, "
              f"successor after {c.added_at('c2', cut) - cut:.2f}s")
        faulted = c.election("c1")
        assert faulted["state"] == "FAULT" and faulted["reason"].startswith("etcd:"), faulted
    finally:
        c.cut_from_etcd("c1", False)
    assert wait_until(lambda: leader_is(c, "c1"), 15, "c1 back after the heal"), c.logs()

    # frozen holder: the kernel drops its VIP; the successor adds it only after that
    frozen = time.time()
    c.vipd["c1"].send_signal(signal.SIGSTOP)
    try:
        assert wait_until(lambda: c.holders() == ["c2"], TTL + 3, "c2 holds while c1 is frozen"), c.logs()
        assert c.removed_at("c1", frozen) < c.added_at("c2", frozen)
        assert c.overlap(frozen, time.time()) == 0.0
    finally:
        c.vipd["c1"].send_signal(signal.SIGCONT)
    assert wait_until(lambda: leader_is(c, "c1"), 15, "c1 back after SIGCONT"), c.logs()
    assert "Traceback" not in c.logs()


@pytest.mark.timeout(120)
def test_without_an_etcd_quorum_nobody_holds_the_vip_and_status_says_why(cluster):
    c = cluster
    c.start("c1", 200)
    c.start("c2", 100)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 leads"), c.logs()
    lost = time.time()
    for name in ("e2", "e3"):
        c.lab.stop(c.etcd[name], signal.SIGKILL)
    assert wait_until(lambda: c.holders() == [] and all(c.election(n).get("state") == "FAULT" for n in ("c1", "c2")),
                      TTL + 4, "nobody holds"), c.logs()
    time.sleep(TTL)             # and it stays so
    assert c.holders() == [] and c.overlap(lost, time.time()) == 0.0
    for n in ("c1", "c2"):
        e = c.election(n)
        assert e["state"] == "FAULT" and e["reason"].startswith("etcd:") and e["holder"] is None, e
    for name in ("e2", "e3"):
        c.start_etcd(name, state="existing")
    assert wait_until(lambda: leader_is(c, "c1"), 30, "c1 leads again"), c.logs()
    assert "Traceback" not in c.logs()


@pytest.mark.timeout(120)
def test_preemption_and_maintenance_hand_over_without_a_failed_request(cluster):
    c = cluster
    c.start("c2", 100)
    assert wait_until(lambda: leader_is(c, "c2"), 20, "c2 leads"), c.logs()
    out = c.workdir / "client.json"
    client = c.lab["client"].python(["-m", "vipd.lab.connclient", "--target", f"{VIP}:{PORT}", "--interval", "0.015",
                                     "--duration", "60", "--timeout", "3", "--out", str(out)])
    time.sleep(1.0)
    started = time.time()
    c.start("c1", 200)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 preempts by hand-over"), c.logs()
    handed = time.time()
    # the planned overlap: the successor added the VIP before the old holder removed it
    assert c.added_at("c1", started) < c.removed_at("c2", started)
    time.sleep(0.5)
    on = c.lbctl("c1", "maintenance", "on", "api")
    assert on.returncode == 0, on.stderr
    assert wait_until(lambda: leader_is(c, "c2"), 10, "maintenance hands back to c2"), c.logs()
    assert json.loads((c.workdir / "c1.state" / "runtime.json").read_text())["maintenance"]["owners"] == ["api"]
    e = c.election("c1")
    assert (e["state"], e["maintenance"], e["holder"]) == ("FOLLOWER", True, "c2")
    time.sleep(TTL)            # priority 200 against 100: still not taking it back
    assert c.holders() == ["c2"]
    off = c.lbctl("c1", "maintenance", "off", "api")
    assert off.returncode == 0, off.stderr
    assert wait_until(lambda: leader_is(c, "c1"), 10, "back to c1"), c.logs()
    time.sleep(0.5)
    # a stopping holder hands over too
    assert c.lab.stop(c.vipd["c1"], signal.SIGTERM, timeout=20) == 0, c.log("c1")
    assert wait_until(lambda: leader_is(c, "c2"), 10, "c2 after c1 stopped"), c.logs()
    time.sleep(0.5)
    c.lab.stop(client, signal.SIGTERM, timeout=10)
    attempts = connclient.load(str(out))
    result = connclient.summarize(attempts)
    skew = time.time() - time.monotonic()
    print("not ok or slow:", [(round(a.start + skew - started, 3), round(a.duration, 3), a.detail)
                              for a in attempts if not a.ok or a.duration > 0.5][:10])
    print("VIP spans:", {n: [(round(a - started, 3), round(b - started, 3)) for a, b in spans]
                         for n, spans in c.intervals().items()})
    print("hand-overs under traffic:", result, f"preemption took {handed - started:.2f}s")
    assert result["requests"] > 300 and result["failed"] == 0, result
    assert "Traceback" not in c.logs()
