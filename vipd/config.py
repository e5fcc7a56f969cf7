"""The one TOML config file: parsing, validation and the typed result.

Every problem is collected (not just the first) as `FILE: key.path: what is wrong`, so
`vipd check` can print them all, like `nginx -t`.
"""
from __future__ import annotations

import ipaddress
import math
import os
import socket
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

DEFAULT_PATH = "/etc/vipd/vipd.toml"
DEFAULT_CONTROL_SOCKET = "/run/vipd/control.sock"
BALANCE_ALGORITHMS = ("round_robin", "least_conn", "random2", "source_hash")
HEALTH_TYPES = ("tcp", "http", "https")
CHECKSUM_MODES = ("pseudo_header", "message_only")


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Track:
    kind: str                      # "script" | "frontend" | "interface"
    target: str                    # the command line, frontend name or interface name
    weight: int = 0
    interval: float = 1.0
    timeout: float = 1.0
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

    def for_state(self, state: str) -> str | None:
        return getattr(self, state.lower(), None)


@dataclass(frozen=True)
class VrrpConfig:
    name: str
    interface: str
    vrid: int
    virtual_ips: tuple[ipaddress.IPv4Interface | ipaddress.IPv6Interface, ...]
    priority: int = 100
    version: int = 3
    advert_interval: float = 1.0
    preempt: bool = True
    preempt_delay: float = 0.0
    unicast_peers: tuple[str, ...] = ()
    unicast_src: str | None = None
    garp_repeat: int = 3
    garp_interval: float = 0.0
    auth_pass: str | None = None
    checksum_mode: str = "pseudo_header"
    handover_timeout: float | None = None
    tracks: tuple[Track, ...] = ()
    notify: Notify = field(default_factory=Notify)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.virtual_ips[0].version == 6 else socket.AF_INET

    @property
    def effective_handover_timeout(self) -> float:
        """How long a resigning master keeps its VIPs waiting to hear the new master."""
        if self.handover_timeout is not None:
            return self.handover_timeout
        return 3 * self.advert_interval + 1.0


@dataclass(frozen=True)
class HealthConfig:
    type: str = "tcp"
    path: str = "/healthz"
    expect: tuple[int, ...] = (200,)
    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    tls_verify: bool = False
    host: str | None = None
    port: int | None = None


@dataclass(frozen=True)
class BackendConfig:
    address: str
    host: str
    port: int
    weight: int = 1
    max_connections: int = 0       # 0: unlimited


@dataclass(frozen=True)
class FrontendConfig:
    name: str
    listen: str
    listen_host: str
    listen_port: int
    backends: tuple[BackendConfig, ...]
    balance: str = "round_robin"
    connect_timeout: float = 2.0
    idle_timeout: float = 600.0
    half_close_timeout: float = 60.0
    max_connections: int = 20000
    retries: int = 2
    drain_timeout: float = 30.0
    health: HealthConfig = field(default_factory=HealthConfig)


@dataclass(frozen=True)
class NodeConfig:
    name: str
    control_socket: str = DEFAULT_CONTROL_SOCKET
    control_group: str | None = None
    metrics_listen: str | None = None
    workers: int = 1
    log_level: str = "info"


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeConfig
    vrrp: tuple[VrrpConfig, ...] = ()
    frontends: tuple[FrontendConfig, ...] = ()

    def frontend(self, name: str) -> FrontendConfig | None:
        return next((f for f in self.frontends if f.name == name), None)


def split_host_port(text: str) -> tuple[str, int]:
    """'198.18.0.21:6443' or '[2001:db8::1]:6443' -> (host, port); ValueError with a reason."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("must be HOST:PORT")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("must be [IPV6]:PORT")
        ipaddress.IPv6Address(host)
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets: [ADDR]:PORT")
        if not host:
            raise ValueError("missing host")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    return host, int(port)


class _Section:
    """Reads one TOML table, recording problems under its key path instead of raising."""

    def __init__(self, problems: list[str], where: str, table: Any, known: tuple[str, ...]) -> None:
        self.problems = problems
        self.where = where
        self.table = table if isinstance(table, dict) else {}
        if not isinstance(table, dict):
            self.error("", f"must be a table, got {type(table).__name__}")
        for key in self.table:
            if key not in known:
                self.error(key, "unknown key")

    def path(self, key: str) -> str:
        if not key:
            return self.where
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path(key)}: {message}")

    def get(self, key: str, kind: type | tuple, default: Any = None, required: bool = False,
            check: Callable[[Any], str | None] | None = None) -> Any:
        if key not in self.table:
            if required:
                self.error(key, "is required")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.error(key, f"must be {names}, got {_show(value)}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.error(key, f"must be a finite number, got {value}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(key, f"{problem}, got {_show(value)}")
                return default
        return value

    def tables(self, key: str) -> list[tuple[str, Any]]:
        value = self.table.get(key, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            self.error(key, "must be an array of tables")
            return []
        return [(f"{self.path(key)}[{i}]", item) for i, item in enumerate(value)]


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _between(low: float, high: float, what: str = "") -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not low <= value <= high:
            return f"must be {what or f'{low}..{high}'}"
        return None
    return check


def _positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def _non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def _ip(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address"
    return None


def _host_port(value: str) -> str | None:
    try:
        split_host_port(value)
    except ValueError as exc:
        return str(exc)
    return None


def _parse_track(problems: list[str], where: str, table: Any) -> Track | None:
    s = _Section(problems, where, table,
                 ("script", "frontend", "interface", "weight", "interval", "timeout", "rise", "fall"))
    kinds = [k for k in ("script", "frontend", "interface") if k in s.table]
    if len(kinds) != 1:
        s.error("", "needs exactly one of script, frontend, interface")
        return None
    kind = kinds[0]
    target = s.get(kind, str, required=True, check=lambda v: None if v.strip() else "must not be empty")
    weight = s.get("weight", int, 0, check=_between(-254, 254))
    interval = s.get("interval", float, 1.0, check=_positive)
    timeout = s.get("timeout", float, interval or 1.0, check=_positive)
    rise = s.get("rise", int, 1, check=_between(1, 1000))
    fall = s.get("fall", int, 1, check=_between(1, 1000))
    if kind != "script":
        for key in ("interval", "timeout", "rise", "fall"):
            if key in s.table:
                s.error(key, f"only applies to script tracks, not {kind} tracks")
    if target is None:
        return None
    return Track(kind, target, weight, interval, timeout, rise, fall)


def _parse_vrrp(problems: list[str], where: str, table: Any) -> VrrpConfig | None:
    s = _Section(problems, where, table, (
        "name", "interface", "vrid", "priority", "version", "advert_interval", "virtual_ips",
        "preempt", "preempt_delay", "unicast_peers", "unicast_src", "garp_repeat", "garp_interval",
        "auth_pass", "checksum_mode", "handover_timeout", "track", "notify"))
    before = len(problems)
    name = s.get("name", str, required=True)
    interface = s.get("interface", str, required=True)
    vrid = s.get("vrid", int, required=True, check=_between(1, 255))
    priority = s.get("priority", int, 100, check=_between(1, 255, "1..254 (255 = address owner)"))
    version = s.get("version", int, 3, check=lambda v: None if v in (2, 3) else "must be 2 or 3")
    interval = s.get("advert_interval", float, 1.0)
    if interval is not None:
        if version == 2 and (interval != int(interval) or not 1 <= interval <= 255):
            s.error("advert_interval", f"VRRPv2 needs whole seconds 1..255, got {interval}")
        elif version == 3:
            centis = round(interval * 100)
            if abs(centis - interval * 100) > 1e-6 or not 1 <= centis <= 4095:
                s.error("advert_interval", f"VRRPv3 needs 0.01 s steps from 0.01 to 40.95, got {interval}")
    vips_raw = s.get("virtual_ips", list, required=True)
    vips: list = []
    if vips_raw is not None:
        if not vips_raw:
            s.error("virtual_ips", "must list at least one address")
        for i, text in enumerate(vips_raw):
            try:
                if not isinstance(text, str):
                    raise ValueError
                vip = ipaddress.ip_interface(text if "/" in text else
                                             text + ("/128" if ":" in text else "/32"))
            except ValueError:
                s.error(f"virtual_ips[{i}]", f"must be an address like 198.18.0.100/24, got {_show(text)}")
                continue
            vips.append(vip)
        if len({v.version for v in vips}) > 1:
            s.error("virtual_ips", "mixes IPv4 and IPv6; use one instance per family")
        if vips and version == 2 and vips[0].version == 6:
            s.error("virtual_ips", "VRRPv2 carries IPv4 only; use version = 3 for IPv6")
    preempt = s.get("preempt", bool, True)
    preempt_delay = s.get("preempt_delay", float, 0.0, check=_between(0, 3600, "0..3600 seconds"))
    peers = s.get("unicast_peers", list, [])
    for i, peer in enumerate(peers or []):
        if not isinstance(peer, str) or _ip(peer):
            s.error(f"unicast_peers[{i}]", f"must be an IP address, got {_show(peer)}")
        elif vips and ipaddress.ip_address(peer).version != vips[0].version:
            s.error(f"unicast_peers[{i}]", "must be the same family as virtual_ips")
    unicast_src = s.get("unicast_src", str, None, check=_ip)
    garp_repeat = s.get("garp_repeat", int, 3, check=_between(0, 100))
    garp_interval = s.get("garp_interval", float, 0.0, check=_between(0, 10, "0..10 seconds"))
    auth_pass = s.get("auth_pass", str, None,
                      check=lambda v: None if 1 <= len(v.encode()) <= 8 else "must be 1..8 bytes")
    if auth_pass is not None and version == 3:
        s.error("auth_pass", "VRRPv3 has no authentication (RFC 5798); remove it or use version = 2")
    checksum_mode = s.get("checksum_mode", str, "pseudo_header",
                          check=lambda v: None if v in CHECKSUM_MODES else f"must be one of {', '.join(CHECKSUM_MODES)}")
    handover = s.get("handover_timeout", float, None, check=_between(0, 60, "0..60 seconds"))
    tracks = [t for w, raw in s.tables("track") if (t := _parse_track(problems, w, raw)) is not None]
    notify_table = s.table.get("notify", {})
    n = _Section(problems, s.path("notify"), notify_table, ("master", "backup", "fault", "stop"))
    notify = Notify(**{k: n.get(k, str) for k in ("master", "backup", "fault", "stop")})
    if len(problems) > before:
        return None
    return VrrpConfig(
        name=name, interface=interface, vrid=vrid, virtual_ips=tuple(vips), priority=priority,
        version=version, advert_interval=interval, preempt=preempt, preempt_delay=preempt_delay,
        unicast_peers=tuple(peers), unicast_src=unicast_src, garp_repeat=garp_repeat,
        garp_interval=garp_interval, auth_pass=auth_pass, checksum_mode=checksum_mode,
        handover_timeout=handover, tracks=tuple(tracks), notify=notify)


def _parse_health(problems: list[str], where: str, table: Any) -> HealthConfig:
    s = _Section(problems, where, table, (
        "type", "path", "expect", "interval", "timeout", "rise", "fall", "tls_verify", "host", "port"))
    kind = s.get("type", str, "tcp",
                 check=lambda v: None if v in HEALTH_TYPES else f"must be one of {', '.join(HEALTH_TYPES)}")
    path = s.get("path", str, "/healthz", check=lambda v: None if v.startswith("/") else "must start with /")
    expect = s.get("expect", list, [200])
    for i, code in enumerate(expect or []):
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            s.error(f"expect[{i}]", f"must be an HTTP status 100..599, got {_show(code)}")
    if expect == []:
        s.error("expect", "must list at least one status")
    interval = s.get("interval", float, 2.0, check=_positive)
    timeout = s.get("timeout", float, 1.0, check=_positive)
    return HealthConfig(
        type=kind or "tcp", path=path or "/healthz", expect=tuple(expect or (200,)),
        interval=interval or 2.0, timeout=timeout or 1.0,
        rise=s.get("rise", int, 2, check=_between(1, 1000)) or 2,
        fall=s.get("fall", int, 3, check=_between(1, 1000)) or 3,
        tls_verify=s.get("tls_verify", bool, False),
        host=s.get("host", str), port=s.get("port", int, None, check=_between(1, 65535)))


def _parse_backend(problems: list[str], where: str, table: Any) -> BackendConfig | None:
    s = _Section(problems, where, table, ("address", "weight", "max_connections"))
    address = s.get("address", str, required=True, check=_host_port)
    weight = s.get("weight", int, 1, check=_between(1, 1000))
    max_conns = s.get("max_connections", int, 0, check=_non_negative)
    if address is None or weight is None or max_conns is None:
        return None
    host, port = split_host_port(address)
    return BackendConfig(address, host, port, weight, max_conns)


def _parse_frontend(problems: list[str], where: str, table: Any) -> FrontendConfig | None:
    s = _Section(problems, where, table, (
        "name", "listen", "balance", "connect_timeout", "idle_timeout", "half_close_timeout",
        "max_connections", "retries", "drain_timeout", "health", "backend"))
    before = len(problems)
    name = s.get("name", str, required=True)
    listen = s.get("listen", str, required=True, check=_host_port)
    balance = s.get("balance", str, "round_robin",
                    check=lambda v: None if v in BALANCE_ALGORITHMS else f"must be one of {', '.join(BALANCE_ALGORITHMS)}")
    values = {
        "connect_timeout": s.get("connect_timeout", float, 2.0, check=_positive),
        "idle_timeout": s.get("idle_timeout", float, 600.0, check=_positive),
        "half_close_timeout": s.get("half_close_timeout", float, 60.0, check=_positive),
        "max_connections": s.get("max_connections", int, 20000, check=_between(1, 10_000_000)),
        "retries": s.get("retries", int, 2, check=_between(0, 100)),
        "drain_timeout": s.get("drain_timeout", float, 30.0, check=_non_negative),
    }
    health = _parse_health(problems, s.path("health"), s.table.get("health", {}))
    backends = [b for w, raw in s.tables("backend") if (b := _parse_backend(problems, w, raw)) is not None]
    if "backend" not in s.table:
        s.error("backend", "needs at least one [[frontend.backend]]")
    seen: set[str] = set()
    for i, b in enumerate(backends):
        if b.address in seen:
            s.error(f"backend[{i}].address", f"duplicate backend {b.address}")
        seen.add(b.address)
    if len(problems) > before:
        return None
    host, port = split_host_port(listen)
    return FrontendConfig(name=name, listen=listen, listen_host=host, listen_port=port,
                          backends=tuple(backends), balance=balance, health=health, **values)


def _parse_node(problems: list[str], table: Any) -> NodeConfig:
    s = _Section(problems, "node", table, (
        "name", "control_socket", "control_group", "metrics_listen", "workers", "log_level"))
    return NodeConfig(
        name=s.get("name", str, socket.gethostname()) or socket.gethostname(),
        control_socket=s.get("control_socket", str, DEFAULT_CONTROL_SOCKET) or DEFAULT_CONTROL_SOCKET,
        control_group=s.get("control_group", str),
        metrics_listen=s.get("metrics_listen", str, None, check=_host_port),
        workers=s.get("workers", int, os.cpu_count() or 1, check=_between(1, 256)) or (os.cpu_count() or 1),
        log_level=s.get("log_level", str, "info", check=lambda v: None if v in (
            "debug", "info", "warning", "error") else "must be debug, info, warning or error") or "info")


def _cross_check(problems: list[str], vrrps: list[VrrpConfig], frontends: list[FrontendConfig]) -> None:
    names: dict[str, int] = {}
    routers: dict[tuple, int] = {}
    for i, v in enumerate(vrrps):
        if v.name in names:
            problems.append(f"vrrp[{i}].name: duplicate instance name {v.name!r} (also vrrp[{names[v.name]}])")
        names.setdefault(v.name, i)
        key = (v.interface, v.vrid, v.family)
        if key in routers:
            problems.append(f"vrrp[{i}].vrid: vrid {v.vrid} on {v.interface} is already used by vrrp[{routers[key]}]")
        routers.setdefault(key, i)
        for j, t in enumerate(v.tracks):
            if t.kind == "frontend" and t.target not in {f.name for f in frontends}:
                problems.append(f"vrrp[{i}].track[{j}].frontend: no [[frontend]] named {t.target!r}")
    seen: dict[str, int] = {}
    listens: dict[str, int] = {}
    for i, f in enumerate(frontends):
        if f.name in seen:
            problems.append(f"frontend[{i}].name: duplicate frontend name {f.name!r} (also frontend[{seen[f.name]}])")
        seen.setdefault(f.name, i)
        if f.listen in listens:
            problems.append(f"frontend[{i}].listen: {f.listen} is already used by frontend[{listens[f.listen]}]")
        listens.setdefault(f.listen, i)


def parse(data: dict[str, Any], path: str = "<config>", *, require_vrrp: bool = False) -> Config:
    problems: list[str] = []
    top = _Section(problems, "", data, ("node", "vrrp", "frontend"))
    node = _parse_node(problems, data.get("node", {}))
    vrrps = [v for w, t in top.tables("vrrp") if (v := _parse_vrrp(problems, w, t)) is not None]
    frontends = [f for w, t in top.tables("frontend") if (f := _parse_frontend(problems, w, t)) is not None]
    if not problems:
        _cross_check(problems, vrrps, frontends)
    if not problems and require_vrrp and not vrrps and not frontends:
        problems.append("vrrp: nothing to run: no [[vrrp]] and no [[frontend]]")
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return Config(path=path, node=node, vrrp=tuple(vrrps), frontends=tuple(frontends))


def load(path: str | os.PathLike, *, require_vrrp: bool = False) -> Config:
    """Read and validate a config file; ConfigError lists every problem, one line each."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: TOML syntax: {exc}"]) from None
    return parse(data, name, require_vrrp=require_vrrp)
