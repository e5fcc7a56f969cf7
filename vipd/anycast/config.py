"""The `[[anycast]]` part of the config: VIPs announced by the local routing daemon (FRR) while this
node can serve, through the addresses vipd keeps on a device it owns."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from lbproxy.configreader import Section, show
from vipd.vrrp.config import Track, parse_track

DEFAULT_DEVICE = "vipd0"
IFNAMSIZ = 16                      # the kernel's buffer, NUL included


@dataclass(frozen=True)
class AnycastConfig:
    name: str
    virtual_ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    device: str = DEFAULT_DEVICE
    tracks: tuple[Track, ...] = ()


def device_name(name: str) -> str | None:
    """Why the kernel would refuse `name` as an interface name (its dev_valid_name), or None."""
    if not name:
        return "must not be empty"
    if len(name.encode()) >= IFNAMSIZ:
        return f"must be at most {IFNAMSIZ - 1} bytes (a Linux interface name)"
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        return "must not be . or .. nor contain '/', ':' or whitespace (a Linux interface name)"
    return None


def host_prefix(text: Any) -> ipaddress.IPv4Interface | ipaddress.IPv6Interface | str:
    """A VIP as announced: one address, /32 or /128 (a bare address means that); else why not."""
    if not isinstance(text, str):
        return f"must be an address like 198.18.1.100/32, got {show(text)}"
    try:
        vip = ipaddress.ip_interface(text)
    except ValueError:
        return f"must be an address like 198.18.1.100/32, got {show(text)}"
    if vip.network.prefixlen != vip.max_prefixlen:
        return f"must be /{vip.max_prefixlen}: an anycast VIP is announced as one host route, got {show(text)}"
    return vip


def parse_anycast(problems: list[str], where: str, table: Any, script_user: str | None = None) -> AnycastConfig | None:
    s = Section(problems, where, table, ("name", "virtual_ips", "device", "track"))
    before = len(problems)
    name = s.get("name", str, required=True, check=lambda v: None if v.strip() else "must not be empty")
    device = s.get("device", str, DEFAULT_DEVICE, check=device_name)
    raw = s.get("virtual_ips", list, required=True)
    vips = []
    if raw is not None and not raw:
        s.error("virtual_ips", "must list at least one address")
    for i, text in enumerate(raw or ()):
        vip = host_prefix(text)
        if isinstance(vip, str):
            s.error(f"virtual_ips[{i}]", vip)
        elif vip in vips:
            s.error(f"virtual_ips[{i}]", f"{vip} is listed twice")
        else:
            vips.append(vip)
    tracks = []
    for w, t in s.tables("track"):
        track = parse_track(problems, w, t, script_user)
        if track is not None and track.weight != 0:
            problems.append(f"{w}.weight: an anycast VIP has no priority: a failing track withdraws it; "
                            f"leave weight out (0), got {track.weight}")
        tracks.append(track)
    if len(problems) > before:
        return None
    return AnycastConfig(name=name, virtual_ips=tuple(vips), device=device, tracks=tuple(tracks))
