"""The `[etcd]` table (the cluster that elects) and the `[[election]]` tables (VIPs held through an
etcd lease): their typed models and parsers. Tracks take the same forms as in `[[vrrp]]`."""
from __future__ import annotations

import ipaddress
import os
import urllib.parse
from dataclasses import dataclass
from typing import Any

from lbproxy.configreader import Findings, Section, between, show
from lbproxy.host import Host
from vipd.vrrp.config import Track, parse_track, parse_virtual_ips

DEFAULT_LEASE_TTL = 5.0
LEASE_TTL_RANGE = (2.0, 60.0)
KEY_PREFIX = "/vipd/elections/"


@dataclass(frozen=True)
class EtcdConfig:
    endpoints: tuple[str, ...]
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    lease_ttl: float = DEFAULT_LEASE_TTL

    @property
    def tls(self) -> bool:
        return any(e.startswith("https://") for e in self.endpoints)


@dataclass(frozen=True)
class ElectionConfig:
    name: str
    interface: str
    virtual_ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    key: str
    priority: int = 100
    tracks: tuple[Track, ...] = ()


def needs_restart(old: ElectionConfig, new: ElectionConfig) -> bool:
    """True when `new` is another election, not the same one reconfigured: its key names the etcd
    records every candidate shares, and its interface carries the VIPs, the GARPs and the bridge.
    Priority, tracks and VIPs change in place (ElectionOwner.update)."""
    return (old.name, old.key, old.interface) != (new.name, new.key, new.interface)


def endpoint(value: Any) -> str | None:
    """Why `value` is not an etcd client URL (http(s)://HOST:PORT, nothing after), or None."""
    if not isinstance(value, str):
        return f"must be a URL like https://198.18.0.31:2379, got {show(value)}"
    try:
        url = urllib.parse.urlsplit(value)
        port = url.port
    except ValueError as exc:
        return f"{value!r} is not a URL ({exc})"
    if url.scheme not in ("http", "https"):
        return f"{value!r}: the scheme must be http or https"
    if not url.hostname or port is None:
        return f"{value!r}: needs a host and a port, e.g. https://198.18.0.31:2379"
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        return f"{value!r}: only scheme, host and port; etcd's API paths are vipd's business"
    return None


def absolute(value: str) -> str | None:
    return None if os.path.isabs(value) else "must be an absolute path"


def readable_file(value: str) -> str | None:
    if not os.path.isfile(value):
        return f"{value}: no such file"
    if not os.access(value, os.R_OK):
        return f"{value}: not readable"
    return None


def parse_etcd(problems: Findings, table: Any) -> EtcdConfig | None:
    s = Section(problems, "etcd", table, ("endpoints", "ca_file", "cert_file", "key_file", "lease_ttl"))
    before = len(problems)
    endpoints = s.get("endpoints", list, required=True)
    for i, url in enumerate(endpoints or []):
        if problem := endpoint(url):
            s.error(f"endpoints[{i}]", problem)
    if endpoints == []:
        s.error("endpoints", "must list at least one etcd member")
    files = {key: s.get(key, str, None, check=absolute) for key in ("ca_file", "cert_file", "key_file")}
    if (files["cert_file"] is None) != (files["key_file"] is None) and len(problems) == before:
        s.error("cert_file" if files["cert_file"] is None else "key_file",
                "cert_file and key_file go together (the client certificate and its key)")
    low, high = LEASE_TTL_RANGE
    ttl = s.get("lease_ttl", float, DEFAULT_LEASE_TTL,
                check=between(low, high, f"{low:g}..{high:g} seconds"))
    if len(problems) > before:
        return None
    if any(files.values()) and not any(url.startswith("https://") for url in endpoints):
        s.warn("ca_file", "TLS files are given but every endpoint is http://; they are not used")
    return EtcdConfig(tuple(endpoints), files["ca_file"], files["cert_file"], files["key_file"], float(ttl))


def parse_election(problems: Findings, where: str, table: Any, script_user: str | None = None) -> ElectionConfig | None:
    s = Section(problems, where, table, ("name", "interface", "virtual_ips", "key", "priority", "track"))
    before = len(problems)
    name = s.get("name", str, required=True, check=lambda v: None if v.strip() and "/" not in v
                 else "must be a non-empty name without '/'")
    interface = s.get("interface", str, required=True)
    vips_raw, vips = parse_virtual_ips(s)
    key = s.get("key", str, None, check=lambda v: None if v.startswith("/") and len(v) > 1
                else "must be an absolute key like /vipd/elections/api")
    priority = s.get("priority", int, 100, check=between(1, 255))
    tracks = [t for w, raw in s.tables("track") if (t := parse_track(problems, w, raw, script_user)) is not None]
    if len(problems) > before or name is None:
        return None
    return ElectionConfig(name=name, interface=interface, virtual_ips=tuple(vips),
                          key=(key or KEY_PREFIX + name).rstrip("/"), priority=priority, tracks=tuple(tracks))


def check_elections(problems: Findings, etcd: EtcdConfig | None, elections: list[ElectionConfig],
                    vrrp_vips: set) -> None:
    """What the tables mean together: an [etcd] to elect with, unique names and keys, one owner per
    VIP (their tracks' frontends are checked with every owner's, in vipd.config)."""
    if elections and etcd is None:
        problems.append("election: [[election]] needs an [etcd] table naming the cluster that elects")
    names: dict[str, int] = {}
    keys: dict[str, int] = {}
    for i, e in enumerate(elections):
        if e.name in names:
            problems.append(f"election[{i}].name: duplicate election name {e.name!r} (also election[{names[e.name]}])")
        names.setdefault(e.name, i)
        nested = next((j for k, j in keys.items() if e.key == k or e.key.startswith(k + "/")
                       or k.startswith(e.key + "/")), None)
        if nested is not None:
            problems.append(f"election[{i}].key: {e.key!r} overlaps election[{nested}].key")
        keys.setdefault(e.key, i)
        for vip in e.virtual_ips:
            if vip.ip in vrrp_vips:
                problems.append(f"election[{i}].virtual_ips: {vip.ip} is also a [[vrrp]] VIP; one owner per VIP")


def check_elections_on_host(problems: Findings, etcd: EtcdConfig | None, elections: list[ElectionConfig],
                            host: Host) -> None:
    """The TLS files must be readable now (the daemon reads them at start); a missing interface
    may appear later."""
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(etcd, key) if etcd is not None else None
        if path and (problem := readable_file(path)):
            problems.append(f"etcd.{key}: {problem}")
    for i, e in enumerate(elections):
        if not host.has_interface(e.interface):
            problems.warnings.append(f"election[{i}].interface: no interface {e.interface!r} on this host now; "
                                     "the election stays in FAULT until it appears")
