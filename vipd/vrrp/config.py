"""The `[[vrrp]]` part of the config: one VRRP instance's typed model and its parser."""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
import os
import re
import shlex
import socket
from dataclasses import dataclass, field
from typing import Any

from lbproxy.configreader import (
    Findings,
    Section,
    belongs_in,
    between,
    foreign,
    ip_address,
    one_of,
    positive,
    renamed,
    show,
)
from lbproxy.host import Host
from vipd.vrrp.packet import OWNER_PRIORITY, ChecksumMode, advert_interval_cs


@dataclass(frozen=True)
class Track:
    kind: str                      # "script" | "frontend" | "interface"
    target: str                    # the command line, frontend name or interface name
    weight: int = 0
    interval: float = 1.0
    timeout: float = 0.5           # half the interval unless given: parse_track wants it below
    rise: int = 1
    fall: int = 1

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.target}"


@dataclass(frozen=True)
class Notify:
    master: str | None = None
    backup: str | None = None
    fault: str | None = None
    stop: str | None = None
    generic: str | None = None     # the `notify` key: every transition, as TYPE NAME STATE PRIORITY

    def for_state(self, state: str) -> str | None:
        return {"MASTER": self.master, "BACKUP": self.backup, "FAULT": self.fault, "STOP": self.stop}.get(state)


@dataclass(frozen=True)
class VrrpConfig:
    name: str
    interface: str
    vrid: int
    virtual_ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    priority: int = 100
    version: int = 3
    advert_interval: float = 1.0           # seconds: the state machine's timers
    preempt: bool = True
    preempt_delay: float = 0.0
    unicast_peers: tuple[str, ...] = ()
    unicast_src: str | None = None
    unicast_ttl: int = 255                 # the lowest TTL/hop limit accepted from unicast_peers
    garp_repeat: int = 3
    garp_interval: float = 0.0
    auth_pass: str | None = None
    checksum_mode: ChecksumMode = ChecksumMode.PSEUDO_HEADER
    handover_timeout: float | None = None
    tracks: tuple[Track, ...] = ()
    notify: Notify = field(default_factory=Notify)

    @functools.cached_property
    def advert_interval_cs(self) -> int:
        """The interval as the adverts carry it; parse_vrrp has checked that it converts exactly."""
        return advert_interval_cs(self.advert_interval, self.version)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.virtual_ips[0].version == 6 else socket.AF_INET

    @property
    def effective_handover_timeout(self) -> float:
        """How long a resigning master keeps its VIPs waiting to hear the new master."""
        if self.handover_timeout is not None:
            return self.handover_timeout
        return 3 * self.advert_interval + 1.0


TO_TRACK = belongs_in("a [[vrrp.track]] table")
TO_NOTIFY = "vipd: {} = ... in [vrrp.notify]"
# How keepalived names what these tables hold; see Section.
HINTS = {
    "vrrp": {
        "virtual_router_id": renamed("keepalived", "vrid"),
        "advert_int": renamed("keepalived", "advert_interval"),
        "virtual_ipaddress": renamed("keepalived", "virtual_ips"),
        "unicast_peer": renamed("keepalived", "unicast_peers"),
        "unicast_src_ip": renamed("keepalived", "unicast_src"),
        "vrrp_version": renamed("keepalived", "version"),
        "garp_master_repeat": renamed("keepalived", "garp_repeat"),
        "nopreempt": foreign("keepalived", "vipd: preempt = false"),
        "state": foreign("keepalived", "vipd elects the master by priority; remove it"),
        "authentication": foreign("keepalived", 'vipd: auth_pass = "..." with version = 2'),
        "auth_type": foreign("keepalived", 'vipd has PASS only: auth_pass = "..." with version = 2'),
        "track_script": foreign("keepalived", "vipd: a [[vrrp.track]] table with script = ..."),
        "track_interface": foreign("keepalived", "vipd: a [[vrrp.track]] table with interface = ..."),
        **{f"notify_{state}": foreign("keepalived", TO_NOTIFY.format(state))
           for state in ("master", "backup", "fault", "stop")},
        "interval": f"{TO_TRACK}; the adverts' interval is advert_interval",
        **{key: TO_TRACK for key in ("script", "timeout", "rise", "fall", "weight")},
    },
    "vrrp.notify": {f"notify_{state}": renamed("keepalived", state)
                    for state in ("master", "backup", "fault", "stop")},
}

# What /bin/sh runs itself: no program to look for.
SHELL_WORDS = frozenset(
    "! { ( [ [[ . : alias bg break case cd command continue echo eval exec exit export false fg for "
    "getopts hash if jobs kill local printf pwd read readonly return set shift test times trap true "
    "type ulimit umask unalias unset until wait while".split())
ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")
EXPANDED = re.compile(r"[$`*?~\[\](){};|&<>]")     # only the shell can tell what such a word becomes


def script_line(line: str) -> str | None:
    """Why /bin/sh -c can never run this line, or None."""
    if "\0" in line:
        return "must not contain a NUL byte"
    try:
        shlex.split(line, comments=True)
    except ValueError as exc:
        return f"/bin/sh cannot split it into words ({str(exc).lower()})"
    return None


def script_program(line: str) -> str | None:
    """The program a script line starts, as /bin/sh looks it up; None when the shell runs it
    itself (a builtin, a keyword) or only the shell can tell (an expansion). For lines that
    script_line accepts."""
    for word in shlex.split(line, comments=True):
        if ASSIGNMENT.match(word):
            continue
        return None if word in SHELL_WORDS or EXPANDED.search(word) else word
    return None


def program_problem(line: str, host: Host) -> str | None:
    """Why the program a script line starts cannot run on `host`, or None. A bare name is looked
    up on PATH, as /bin/sh (and keepalived) do."""
    program = script_program(line)
    if program is None:
        return None
    if "/" not in program:
        return None if host.which(program) else \
            f"{program}: not a shell builtin and not found on PATH; give its absolute path"
    if not os.path.isabs(program):
        return f"{program}: a relative path depends on the daemon's working directory; give an absolute path"
    reason = host.cannot_execute(program)
    return f"{program} {reason}" if reason else None


def parse_track(problems: list[str], where: str, table: Any) -> Track | None:
    s = Section(problems, where, table,
                 ("script", "frontend", "interface", "weight", "interval", "timeout", "rise", "fall"))
    kinds = [k for k in ("script", "frontend", "interface") if k in s.table]
    if len(kinds) != 1:
        s.error("", "needs exactly one of script, frontend, interface")
        return None
    kind = kinds[0]
    target = s.get(kind, str, required=True, check=lambda v: None if v.strip() else "must not be empty")
    weight = s.get("weight", int, 0, check=between(-254, 254))
    interval = s.get("interval", float, 1.0, check=positive)
    timeout = s.get("timeout", float, (interval or 1.0) / 2, check=positive)
    rise = s.get("rise", int, 1, check=between(1, 1000))
    fall = s.get("fall", int, 1, check=between(1, 1000))
    if kind != "script":
        for key in ("interval", "timeout", "rise", "fall"):
            if key in s.table:
                s.error(key, f"only applies to script tracks, not {kind} tracks")
    elif interval and timeout and timeout >= interval:
        s.error("timeout", f"must be below interval ({interval:g}), got {timeout:g}")
    if kind == "script" and target and (problem := script_line(target)):
        s.error("script", problem)
    if target is None:
        return None
    return Track(kind, target, weight, interval, timeout, rise, fall)


def parse_virtual_ips(s: Section) -> tuple[list | None, list]:
    """`virtual_ips` as written (None when missing) and the addresses that parsed."""
    vips_raw = s.get("virtual_ips", list, required=True)
    vips: list = []
    if vips_raw is None:
        return None, vips
    if not vips_raw:
        s.error("virtual_ips", "must list at least one address")
    for i, text in enumerate(vips_raw):
        try:
            if not isinstance(text, str):
                raise ValueError
            vip = ipaddress.ip_interface(text if "/" in text else text + ("/128" if ":" in text else "/32"))
        except ValueError:
            s.error(f"virtual_ips[{i}]", f"must be an address like 198.18.0.100/24, got {show(text)}")
            continue
        vips.append(vip)
    return vips_raw, vips


def parse_vrrp(problems: list[str], where: str, table: Any) -> VrrpConfig | None:
    s = Section(problems, where, table, (
        "name", "interface", "vrid", "priority", "version", "advert_interval", "virtual_ips",
        "preempt", "preempt_delay", "unicast_peers", "unicast_src", "unicast_ttl", "garp_repeat", "garp_interval",
        "auth_pass", "checksum_mode", "handover_timeout", "track", "notify"))
    before = len(problems)
    name = s.get("name", str, required=True)
    interface = s.get("interface", str, required=True)
    vrid = s.get("vrid", int, required=True, check=between(1, 255))
    priority = s.get("priority", int, 100,
                     check=between(1, OWNER_PRIORITY, f"1..254 ({OWNER_PRIORITY} = address owner)"))
    version = s.get("version", int, 3, check=lambda v: None if v in (2, 3) else "must be 2 or 3")
    interval = s.get("advert_interval", float, 1.0)
    if interval is not None and version is not None:
        try:
            advert_interval_cs(interval, version)
        except ValueError as exc:
            s.error("advert_interval", str(exc))
    vips_raw, vips = parse_virtual_ips(s)
    if vips_raw is not None:
        if len({v.version for v in vips}) > 1:
            s.error("virtual_ips", "mixes IPv4 and IPv6; use one instance per family")
        if vips and version == 2 and vips[0].version == 6:
            s.error("virtual_ips", "VRRPv2 carries IPv4 only; use version = 3 for IPv6")
    preempt = s.get("preempt", bool, True)
    preempt_delay = s.get("preempt_delay", float, 0.0, check=between(0, 3600, "0..3600 seconds"))
    peers = s.get("unicast_peers", list, [])
    for i, peer in enumerate(peers or []):
        if not isinstance(peer, str) or ip_address(peer):
            s.error(f"unicast_peers[{i}]", f"must be an IP address, got {show(peer)}")
        elif vips and ipaddress.ip_address(peer).version != vips[0].version:
            s.error(f"unicast_peers[{i}]", "must be the same family as virtual_ips")
    unicast_src = s.get("unicast_src", str, None, check=ip_address)
    if vips and len(vips) == len(vips_raw or ()):
        _check_addresses(s, vips, peers or [], unicast_src)
    # keepalived's unicast_ttl is the TTL it sends with and it checks none in unicast mode; vipd
    # always sends 255 and requires at least this much, so on-link is still the default (RFC 5798 7.1).
    unicast_ttl = s.get("unicast_ttl", int, 255, check=between(1, 255))
    if "unicast_ttl" in s.table and peers == []:
        s.error("unicast_ttl", "only applies with unicast_peers; multicast adverts always need TTL 255")
    garp_repeat = s.get("garp_repeat", int, 3, check=between(0, 100))
    garp_interval = s.get("garp_interval", float, 0.0, check=between(0, 10, "0..10 seconds"))
    auth_pass = s.get("auth_pass", str, None, secret=True,
                      check=lambda v: None if 1 <= len(v.encode()) <= 8 else "must be 1..8 bytes")
    if auth_pass is not None and version == 3:
        s.error("auth_pass", "VRRPv3 has no authentication (RFC 5798); remove it or use version = 2")
    checksum_mode = s.get("checksum_mode", str, "pseudo_header",
                          check=one_of(ChecksumMode))
    handover = s.get("handover_timeout", float, None, check=between(0, 60, "0..60 seconds"))
    tracks = [t for w, raw in s.tables("track") if (t := parse_track(problems, w, raw)) is not None]
    notify_table = s.table.get("notify", {})
    n = Section(problems, s.path("notify"), notify_table, ("master", "backup", "fault", "stop", "notify"))
    notify = Notify(**{k: n.get(k, str, check=script_line) for k in ("master", "backup", "fault", "stop")},
                    generic=n.get("notify", str, check=script_line))
    if len(problems) > before:
        return None
    return VrrpConfig(
        name=name, interface=interface, vrid=vrid, virtual_ips=tuple(vips), priority=priority,
        version=version, advert_interval=interval, preempt=preempt, preempt_delay=preempt_delay,
        unicast_peers=tuple(peers), unicast_src=unicast_src, unicast_ttl=unicast_ttl, garp_repeat=garp_repeat,
        garp_interval=garp_interval, auth_pass=auth_pass, checksum_mode=ChecksumMode(checksum_mode),
        handover_timeout=handover, tracks=tuple(tracks), notify=notify)


def _check_addresses(s: Section, vips: list, peers: list, unicast_src: str | None) -> None:
    """Addresses that can never work together: a source of the other family, this node among its
    peers, a VIP that is also a node's own address."""
    family = vips[0].version
    own = ipaddress.ip_address(unicast_src) if unicast_src else None
    if own is not None and own.version != family:
        s.error("unicast_src", f"{own} is IPv{own.version} but virtual_ips are IPv{family}")
    others = {}
    for i, peer in enumerate(peers):
        if isinstance(peer, str) and not ip_address(peer):
            others.setdefault(ipaddress.ip_address(peer), i)
    if own in others:
        s.error(f"unicast_peers[{others[own]}]", f"{own} is this node's own unicast_src; list the other nodes only")
    for i, vip in enumerate(vips):
        if vip.ip == own:
            s.error(f"virtual_ips[{i}]", f"{vip.ip} is also unicast_src: a VIP moves between nodes, "
                                         "this node's own address must not")
        elif vip.ip in others:
            s.error(f"virtual_ips[{i}]", f"{vip.ip} is also unicast_peers[{others[vip.ip]}]: a VIP moves "
                                         "between nodes, a peer's own address must not")


def check_vrrp_on_host(problems: Findings, where: str, v: VrrpConfig, host: Host) -> None:
    """What this host says about an instance now: programs that cannot run are problems; a
    missing interface or address is a warning, since it may appear before it is needed."""
    if not host.has_interface(v.interface):
        problems.warnings.append(f"{where}.interface: no interface {v.interface!r} on this host now; "
                                 "the instance stays in FAULT until it appears")
    if v.unicast_src and not host.holds_address(v.unicast_src, v.interface):
        problems.warnings.append(f"{where}.unicast_src: {v.unicast_src} is not an address of this host "
                                 "now; the adverts are sent from it")
    for j, t in enumerate(v.tracks):
        if t.kind == "interface" and not host.has_interface(t.target):
            problems.warnings.append(f"{where}.track[{j}].interface: no interface {t.target!r} on this "
                                     "host now; the track fails until it appears")
        elif t.kind == "script" and (problem := program_problem(t.target, host)):
            problems.append(f"{where}.track[{j}].script: {problem}")
    for f in dataclasses.fields(v.notify):
        line = getattr(v.notify, f.name)
        if isinstance(line, str) and (problem := program_problem(line, host)):
            problems.append(f"{where}.notify.{f.name}: {problem}")
