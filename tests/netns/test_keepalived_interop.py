"""Mixed VRRP clusters: real keepalived 2.2.7 and real `vipd run` on two lab hosts, one router.

Each case runs one story, both ways round (vipd or keepalived holding the higher priority), over
VRRPv3 (0.1 s adverts, multicast, unicast, IPv6) and VRRPv2 with PASS authentication (1 s adverts):
start; planned stop of the master (SIGTERM: priority-0 resign, the backup takes over at once);
restart (preempt); kill -9 of the master; restart; a priority change by config rewrite + SIGHUP
on either side; kill -9 of the other side while it is master. After every step exactly the
expected node is MASTER and holds the VIP (a killed daemon leaves its VIP behind; that node is
only required to be dead). Neither side may drop or complain about a packet from the other.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from support import require_binary

from vipd.lab import edges
from vipd.lab.keepalived import keepalived_config, start_keepalived
from vipd.lab.netns import Host, Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

KEEPALIVED, VIPD = "keepalived", "vipd"
HIGH, LOW = 150, 100
# keepalived's complaints about a received advert (vrrp_check_packet and friends in 2.2.7).
KEEPALIVED_REJECTS = re.compile(r"invalid|bogus|mismatch|wrong|too short|not present|checksum|bad |"
                                r"dropping|unknown|error", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    version: int
    transport: str            # "multicast" | "unicast"
    higher: str               # which daemon has the higher priority
    family: int = 4

    @property
    def interval(self) -> float:
        return 1.0 if self.version == 2 else 0.1

    @property
    def auth_pass(self) -> str | None:
        return "s3cret" if self.version == 2 else None

    @property
    def vip(self) -> str:
        return "2001:db8::100" if self.family == 6 else "198.18.0.100"

    def __str__(self) -> str:
        return (f"v{self.version}-ipv{self.family}-{self.transport}-{self.higher}-higher"
                + ("-auth" if self.auth_pass else ""))


CASES = [
    Case(3, "multicast", VIPD),
    Case(3, "multicast", KEEPALIVED),
    Case(3, "unicast", VIPD),
    Case(3, "unicast", KEEPALIVED),
    Case(3, "multicast", KEEPALIVED, family=6),
    Case(2, "multicast", VIPD),
    Case(2, "unicast", KEEPALIVED),
]


class MixedCluster:
    """keepalived on host `ka` (198.18.0.11), vipd on host `vd` (198.18.0.12), same VRID and VIP."""

    def __init__(self, lab: Lab, workdir: Path, case: Case) -> None:
        self.lab = lab
        self.workdir = workdir
        self.case = case
        self.hosts: dict[str, Host] = {
            KEEPALIVED: lab.add_host("ka", ["198.18.0.11/24", "2001:db8::11/64"]),
            VIPD: lab.add_host("vd", ["198.18.0.12/24", "2001:db8::12/64"]),
        }
        if case.family == 6:
            lab.wait_link_local()
        self.priority = {case.higher: HIGH, self.other(case.higher): LOW}
        self.procs: dict[str, subprocess.Popen] = {}
        self.vipd_log = workdir / "vd.log"
        self.keepalived_log = workdir / "ka.keepalived.log"
        self.socket = workdir / "vd.sock"
        self.vipd_status_seen: list[dict] = []

    @staticmethod
    def other(who: str) -> str:
        return VIPD if who == KEEPALIVED else KEEPALIVED

    def source(self, who: str) -> str:
        host = self.hosts[who]
        return host.ipv6 if self.case.family == 6 else host.ipv4

    def _unicast_peers(self, who: str) -> list[str]:
        return [self.source(self.other(who))] if self.case.transport == "unicast" else []

    def keepalived_text(self) -> str:
        c = self.case
        return keepalived_config(
            router_id="ka", vrid=51, priority=self.priority[KEEPALIVED], advert_interval=c.interval,
            virtual_ips=[f"{c.vip}/{64 if c.family == 6 else 24}"], version=c.version, auth_pass=c.auth_pass,
            unicast_src=self.source(KEEPALIVED) if c.transport == "unicast" else None,
            unicast_peers=self._unicast_peers(KEEPALIVED))

    def vipd_text(self) -> str:
        c = self.case
        vrrp = {"name": "api", "interface": "eth0", "vrid": 51, "priority": self.priority[VIPD],
                "version": c.version, "advert_interval": c.interval,
                "virtual_ips": [f"{c.vip}/{64 if c.family == 6 else 24}"], "preempt": True,
                "unicast_peers": self._unicast_peers(VIPD), "garp_repeat": 2}
        if c.auth_pass:
            vrrp["auth_pass"] = c.auth_pass
        return "\n".join(["[node]", 'name = "vd"', f'control_socket = "{self.socket}"', "",
                          "[[vrrp]]", *(f"{k} = {json.dumps(v)}" for k, v in vrrp.items()), ""])

    def write(self, who: str) -> None:
        if who == KEEPALIVED:
            (self.workdir / "ka.keepalived.conf").write_text(self.keepalived_text())
        else:
            (self.workdir / "vd.toml").write_text(self.vipd_text())

    def start(self, who: str) -> None:
        if who == KEEPALIVED:
            self.procs[who] = start_keepalived(self.hosts[who], self.workdir, "ka", self.keepalived_text())
        else:
            self.write(VIPD)
            with open(self.vipd_log, "ab") as log:
                self.procs[who] = self.hosts[who].popen(
                    [sys.executable, "-m", "vipd", "run", "-c", str(self.workdir / "vd.toml")],
                    stdout=log, stderr=subprocess.STDOUT)

    def set_priority(self, who: str, priority: int) -> None:
        """Rewrite the daemon's config and SIGHUP it, as an operator would."""
        self.priority[who] = priority
        self.write(who)
        mark = self.log_size(who)
        self.procs[who].send_signal(signal.SIGHUP)
        reloaded = (lambda: "Reload complete" in self.log_since(who, mark)) if who == KEEPALIVED else \
                   (lambda: (s := self.vipd_status()) is not None and s["vrrp"][0]["priority"] == priority)
        assert edges.wait_for(reloaded, 15), f"{who} did not reload\n{self.logs()}"

    def stop(self, who: str, sig: int) -> None:
        """SIGTERM: the daemon resigns and exits, waited for. SIGKILL: the daemon and its children die
        at once (keepalived's VRRP child too), leaving whatever was on the interface."""
        proc = self.procs.pop(who)
        if who == VIPD:
            self.record_vipd_status()
        if sig == signal.SIGKILL:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(10)
            # keepalived's orphaned VRRP child is reaped a moment later; a restart before that
            # would find it through the pid file and refuse to start.
            edges.wait_for(lambda: not _signal_group(proc.pid, 0), 5, step=0.01)
        else:
            assert self.lab.stop(proc, sig, timeout=20) == 0, f"{who} exit status after SIGTERM\n{self.logs()}"

    def drop_stale_vip(self, who: str) -> None:
        """After kill -9 the VIP stays on the dead node's interface; clean it as a reboot would."""
        host = self.hosts[who]
        host.run(["ip", "addr", "del", f"{self.case.vip}/{64 if self.case.family == 6 else 24}",
                  "dev", host.ifname], check=False)

    # ------------------------------------------------------------ observation

    def vipd_status(self) -> dict | None:
        done = subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", str(self.socket),
                               "status", "--json"], capture_output=True, text=True, timeout=10)
        if done.returncode != 0:
            return None
        try:
            status = json.loads(done.stdout)
        except json.JSONDecodeError:
            return None
        return status if status.get("vrrp") else None

    def record_vipd_status(self) -> None:
        status = self.vipd_status()
        if status:
            self.vipd_status_seen.append(status)

    def state(self, who: str) -> str | None:
        if who not in self.procs or self.procs[who].poll() is not None:
            return None
        if who == VIPD:
            status = self.vipd_status()
            return status["vrrp"][0]["state"] if status else None
        states = re.findall(r"\(VI_1\) Entering (\w+) STATE", self.log_since(KEEPALIVED, 0))
        return states[-1] if states else None

    def holds_vip(self, who: str) -> bool:
        return self.hosts[who].has_address(self.case.vip)

    def log_path(self, who: str) -> Path:
        return self.keepalived_log if who == KEEPALIVED else self.vipd_log

    def log_size(self, who: str) -> int:
        path = self.log_path(who)
        return path.stat().st_size if path.exists() else 0

    def log_since(self, who: str, offset: int) -> str:
        path = self.log_path(who)
        if not path.exists():
            return ""
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def logs(self) -> str:
        return "\n".join(f"--- {who} log ---\n{self.log_since(who, 0)[-4000:]}" for who in (KEEPALIVED, VIPD))

    def expect_master(self, who: str, timeout: float | None = None) -> None:
        """`who` is MASTER and holds the VIP; the other side, if running, is BACKUP without it."""
        other = self.other(who)
        other_running = other in self.procs

        def settled() -> bool:
            if self.state(who) != "MASTER" or not self.holds_vip(who):
                return False
            if other_running:
                return self.state(other) == "BACKUP" and not self.holds_vip(other)
            return True
        limit = timeout if timeout is not None else 10 * self.case.interval + 10
        assert edges.wait_for(settled, limit), (
            f"expected {who} MASTER with the VIP, {other} {'BACKUP' if other_running else 'stopped'}; "
            f"states {who}={self.state(who)} {other}={self.state(other)}, VIP on "
            f"{[w for w in (KEEPALIVED, VIPD) if self.holds_vip(w)]}\n{self.logs()}")

    def complaints(self) -> list[str]:
        """Everything either side said about a bad packet from the other."""
        found = [f"keepalived: {line}" for line in self.log_since(KEEPALIVED, 0).splitlines()
                 if KEEPALIVED_REJECTS.search(line) and "Command line" not in line]
        found += [f"vipd: {line}" for line in self.log_since(VIPD, 0).splitlines()
                  if "dropped VRRP packet" in line or "Traceback" in line]
        for status in self.vipd_status_seen:
            invalid = status["vrrp"][0].get("invalid", {})
            if invalid:
                found.append(f"vipd status: invalid {invalid}")
        return found


def _signal_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


@pytest.fixture
def mixed(lab, tmp_path, request):
    require_binary("keepalived")
    cluster = MixedCluster(lab, tmp_path, request.param)
    try:
        yield cluster
    finally:
        for who in list(cluster.procs):
            cluster.stop(who, signal.SIGKILL)


@pytest.mark.timeout(150)
@pytest.mark.parametrize("mixed", CASES, ids=str, indirect=True)
def test_mixed_cluster(mixed: MixedCluster):
    case = mixed.case
    high, low = case.higher, mixed.other(case.higher)

    mixed.start(low)
    mixed.start(high)
    mixed.expect_master(high)

    mark = mixed.log_size(low)
    mixed.stop(high, signal.SIGTERM)
    assert not mixed.holds_vip(high), "a resigning master releases its VIP"
    mixed.expect_master(low)
    # The takeover came from the priority-0 advert, not from the master-down timer running out.
    if low == KEEPALIVED:
        assert "Backup received priority 0 advertisement" in mixed.log_since(low, mark), mixed.logs()
        assert "(shutdown:handover_complete)" in mixed.log_since(high, 0), "vipd heard keepalived take over"
    else:
        assert "BACKUP -> MASTER (master_resigned)" in mixed.log_since(low, mark), mixed.logs()

    mixed.start(high)
    mixed.expect_master(high)

    mixed.stop(high, signal.SIGKILL)
    mixed.expect_master(low)
    if high == KEEPALIVED:
        mixed.drop_stale_vip(high)       # vipd's own leftovers are its job (cleaned on start)
    mixed.start(high)
    mixed.expect_master(high)

    mixed.set_priority(high, LOW - 10)
    mixed.expect_master(low)
    mixed.set_priority(low, LOW - 20)
    mixed.expect_master(high)
    mixed.set_priority(low, HIGH + 50)
    mixed.expect_master(low)

    mixed.stop(low, signal.SIGKILL)
    mixed.expect_master(high)
    if VIPD in mixed.procs:
        mixed.record_vipd_status()
        assert mixed.vipd_status_seen[-1]["vrrp"][0]["adverts_received"] > 0

    assert mixed.complaints() == [], mixed.logs()
