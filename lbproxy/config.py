"""The `[[frontend]]` part of the config: the proxy's typed model and its parser."""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass, field
from typing import Any, Iterable

from lbproxy.balance import Balance
from lbproxy.configreader import (
    Findings,
    Section,
    belongs_in,
    between,
    foreign,
    host_port,
    non_negative,
    one_of,
    positive,
    renamed,
    show,
    split_host_port,
)
from lbproxy.host import Host
from lbproxy.natcheck import nat_backend_refusals, nat_port_clashes, nat_refusals
from lbproxy.proxyproto import ProxyProtocol


class FrontendMode(enum.StrEnum):
    PROXY = "proxy"    # the user-space proxy in worker processes
    NAT = "nat"        # the kernel forwards packets: nftables DNAT + SNAT (lbproxy.natpath)


class HealthType(enum.StrEnum):
    TCP = "tcp"
    HTTP = "http"
    HTTPS = "https"


# nginx's and HAProxy's words for our balance algorithms.
BALANCE_ALIASES = {"roundrobin": Balance.ROUND_ROBIN, "leastconn": Balance.LEAST_CONN,
                   "source": Balance.SOURCE_HASH, "hash": Balance.SOURCE_HASH, "random": Balance.RANDOM2}

ACTIVE_CHECKS = "vipd checks backends actively"
TO_BACKENDS = "vipd sends to this [[frontend]]'s [[frontend.backend]] tables"
# How nginx (stream) and HAProxy (mode tcp) name what these tables hold; see Section.
HINTS = {
    "frontend": {
        "server": foreign("nginx", "vipd: a [[frontend.backend]] table with address = ..."),
        "upstream": foreign("nginx", TO_BACKENDS),
        "proxy_pass": foreign("nginx", TO_BACKENDS),
        "proxy_connect_timeout": renamed("nginx", "connect_timeout"),
        "proxy_timeout": renamed("nginx", "idle_timeout"),
        "proxy_next_upstream_tries": renamed("nginx", "retries"),
        "least_conn": foreign("nginx", 'vipd: balance = "least_conn"'),
        "hash": foreign("nginx", 'vipd: balance = "source_hash"'),
        "random": foreign("nginx", 'vipd: balance = "random2"'),
        "max_fails": foreign("nginx", f"{ACTIVE_CHECKS}: fall in [frontend.health]"),
        "fail_timeout": foreign("nginx", f"{ACTIVE_CHECKS}: interval in [frontend.health]"),
        "bind": renamed("HAProxy", "listen"),
        "maxconn": renamed("HAProxy", "max_connections"),
        "inter": foreign("HAProxy", "vipd: interval in [frontend.health]"),
        "check": foreign("HAProxy", "vipd: a [frontend.health] table"),
        "default_backend": foreign("HAProxy", TO_BACKENDS),
        "use_backend": foreign("HAProxy", TO_BACKENDS),
        "timeout": foreign("HAProxy", "vipd has connect_timeout, idle_timeout, half_close_timeout, "
                                      "and timeout in [frontend.health]"),
        **{key: belongs_in("[frontend.health]") for key in ("interval", "rise", "fall", "type", "path", "expect")},
        "slowstart": renamed("HAProxy", "slow_start"),
        **{key: belongs_in("a [[frontend.backend]] table") for key in ("address", "weight", "backup")},
    },
    "frontend.backend": {
        "server": renamed("nginx", "address"),
        "max_conns": renamed("nginx", "max_connections"),
        "maxconn": renamed("HAProxy", "max_connections"),
        "max_fails": foreign("nginx", f"{ACTIVE_CHECKS}: fall in [frontend.health]"),
        "fail_timeout": foreign("nginx", f"{ACTIVE_CHECKS}: interval in [frontend.health]"),
        "inter": foreign("HAProxy", "vipd: interval in [frontend.health]"),
        "check": foreign("HAProxy", "vipd: the frontend's [frontend.health] table"),
        **{key: belongs_in("[frontend.health]") for key in ("interval", "timeout", "rise", "fall")},
        "slow_start": belongs_in("the [[frontend]] (one ramp for all its backends)"),
        "slowstart": foreign("HAProxy", "vipd: slow_start in the [[frontend]]"),
    },
    "frontend.health": {
        "inter": renamed("HAProxy", "interval"),
        "check_send_proxy": renamed("HAProxy", "send_proxy"),
        "max_fails": foreign("nginx", "vipd calls it fall"),
        "uri": renamed("HAProxy", "path"),
    },
}


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
    send_proxy: bool = False       # a PROXY header (v2 LOCAL / v1 UNKNOWN) opens every check


@dataclass(frozen=True)
class BackendConfig:
    address: str
    host: str
    port: int
    weight: int = 1
    max_connections: int = 0       # 0: unlimited
    backup: bool = False           # used only while no primary (non-backup) backend is up


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
    access_log: bool = False       # one line per closed connection, in the worker's log
    buffer_size: int = 16384                 # bytes: largest read, and each transport's high-water mark
    max_connections_per_source: int = 0      # per client address; 0: unlimited
    client_first_byte_timeout: float = 0.0   # seconds the client has to send its first byte; 0: off
    slow_start: float = 0.0                  # seconds a backend that came up ramps to full weight; 0: off
    proxy_protocol: str = ProxyProtocol.OFF  # PROXY header sent to backends
    accept_proxy_protocol: bool = False      # clients (all from trusted_proxies) send a PROXY header
    trusted_proxies: tuple[str, ...] = ()    # networks, normalized ("198.18.0.0/24", "2001:db8::1/128")
    mode: str = "proxy"                      # FrontendMode


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy runs: its frontends and how many worker processes serve them."""
    frontends: tuple[FrontendConfig, ...]
    workers: int
    log_level: str = "info"
    log_format: str = "text"       # lbproxy.logsetup.LogFormat
    worker_user: str | None = None     # workers drop root to this user (node.worker_user)

    def frontend(self, name: str) -> FrontendConfig | None:
        return next((f for f in self.frontends if f.name == name), None)


def parse_health(problems: list[str], where: str, table: Any) -> HealthConfig:
    s = Section(problems, where, table, (
        "type", "path", "expect", "interval", "timeout", "rise", "fall", "tls_verify", "host", "port",
        "send_proxy"))
    kind = s.get("type", str, "tcp",
                 check=one_of(HealthType))
    path = s.get("path", str, "/healthz", check=lambda v: None if v.startswith("/") else "must start with /")
    expect = s.get("expect", list, [200])
    for i, code in enumerate(expect or []):
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            s.error(f"expect[{i}]", f"must be an HTTP status 100..599, got {show(code)}")
    if expect == []:
        s.error("expect", "must list at least one status")
    interval = s.get("interval", float, 2.0, check=positive)
    timeout = s.get("timeout", float, 1.0, check=positive)
    if interval and timeout and timeout > interval:
        # It works (probes never overlap: the next waits for the last), only more slowly.
        s.warn("timeout", f"{timeout:g} is longer than interval {interval:g}: a backend that does not "
                          f"answer is probed every {timeout:g}s, not every {interval:g}s")
    return HealthConfig(
        type=kind or "tcp", path=path or "/healthz", expect=tuple(expect or (200,)),
        interval=interval or 2.0, timeout=timeout or 1.0,
        rise=s.get("rise", int, 2, check=between(1, 1000)) or 2,
        fall=s.get("fall", int, 3, check=between(1, 1000)) or 3,
        tls_verify=s.get("tls_verify", bool, False),
        host=s.get("host", str), port=s.get("port", int, None, check=between(1, 65535)),
        send_proxy=s.get("send_proxy", bool, None))


def parse_trusted_proxies(s: Section, key: str) -> tuple[str, ...]:
    trusted = []
    for i, entry in enumerate(s.get(key, list, []) or []):
        try:
            if not isinstance(entry, str):
                raise TypeError(entry)
            trusted.append(str(ipaddress.ip_network(entry, strict=False)))
        except (TypeError, ValueError):
            s.error(f"{key}[{i}]", f"must be an address or a network (CIDR), got {show(entry)}")
    return tuple(trusted)


def parse_backend(problems: list[str], where: str, table: Any) -> BackendConfig | None:
    s = Section(problems, where, table, ("address", "weight", "max_connections", "backup"))
    address = s.get("address", str, required=True, check=host_port)
    weight = s.get("weight", int, 1, check=between(1, 1000))
    max_conns = s.get("max_connections", int, 0, check=non_negative)
    backup = s.get("backup", bool, False)
    if address is None or weight is None or max_conns is None:
        return None
    host, port = split_host_port(address)
    return BackendConfig(address, host, port, weight, max_conns, backup)


def parse_frontend(problems: list[str], where: str, table: Any) -> FrontendConfig | None:
    s = Section(problems, where, table, (
        "name", "listen", "balance", "connect_timeout", "idle_timeout", "half_close_timeout",
        "max_connections", "retries", "drain_timeout", "health", "backend", "access_log",
        "buffer_size", "max_connections_per_source", "client_first_byte_timeout", "slow_start",
        "proxy_protocol", "accept_proxy_protocol", "trusted_proxies", "mode"))
    before = len(problems)
    name = s.get("name", str, required=True)
    listen = s.get("listen", str, required=True, check=host_port)
    balance = s.get("balance", str, "round_robin",
                    check=one_of(Balance, BALANCE_ALIASES))
    values = {
        "connect_timeout": s.get("connect_timeout", float, 2.0, check=positive),
        "idle_timeout": s.get("idle_timeout", float, 600.0, check=positive),
        "half_close_timeout": s.get("half_close_timeout", float, 60.0, check=positive),
        "max_connections": s.get("max_connections", int, 20000, check=between(1, 10_000_000)),
        "retries": s.get("retries", int, 2, check=between(0, 100)),
        "drain_timeout": s.get("drain_timeout", float, 30.0, check=non_negative),
        "access_log": s.get("access_log", bool, False),
        # nginx's stream proxy_buffer_size is 16k; below 4 KiB every read is a system call for a
        # few bytes, above 16 MiB the kernel's own socket buffers are the better place.
        "buffer_size": s.get("buffer_size", int, 16384, check=between(4096, 16 * 1024 * 1024)),
        "max_connections_per_source": s.get("max_connections_per_source", int, 0,
                                            check=between(0, 10_000_000)),
        "client_first_byte_timeout": s.get("client_first_byte_timeout", float, 0.0, check=non_negative),
        "slow_start": s.get("slow_start", float, 0.0, check=between(0, 3600, "0..3600 seconds")),
        "proxy_protocol": s.get("proxy_protocol", str, ProxyProtocol.OFF, check=one_of(ProxyProtocol)),
        "accept_proxy_protocol": s.get("accept_proxy_protocol", bool, False),
        "trusted_proxies": parse_trusted_proxies(s, "trusted_proxies"),
    }
    if values["accept_proxy_protocol"] and not values["trusted_proxies"] and s.table.get("mode") != FrontendMode.NAT:
        s.error("trusted_proxies", "accept_proxy_protocol needs the addresses of the balancers in front "
                                   "(every other source is refused); 0.0.0.0/0 and ::/0 trust anyone")
    health = parse_health(problems, s.path("health"), s.table.get("health", {}))
    if health.send_proxy is None:
        # As HAProxy: checks carry the header when traffic does, unless they go to another port.
        health = dataclasses.replace(health, send_proxy=values["proxy_protocol"] != ProxyProtocol.OFF
                                     and health.port is None)
    backends = [b for w, raw in s.tables("backend") if (b := parse_backend(problems, w, raw)) is not None]
    if "backend" not in s.table:
        s.error("backend", "needs at least one [[frontend.backend]]")
    seen: set[str] = set()
    for i, b in enumerate(backends):
        if b.address in seen:
            s.error(f"backend[{i}].address", f"duplicate backend {b.address}")
        seen.add(b.address)
    mode = s.get("mode", str, FrontendMode.PROXY, check=one_of(FrontendMode))
    if mode == FrontendMode.NAT and len(problems) == before:
        _check_nat(s, listen, backends)
    if len(problems) > before:
        return None
    host, port = split_host_port(listen)
    return FrontendConfig(name=name, listen=listen, listen_host=host, listen_port=port,
                          backends=tuple(backends), balance=balance, health=health, mode=mode, **values)


def _check_nat(s: Section, listen: str, backends: list[BackendConfig]) -> None:
    for key, why in nat_refusals(s.table):
        s.error(key, f"not with mode = \"nat\": {why}")
    listed = [(f"backend[{i}]", b.host, b.max_connections) for i, b in enumerate(backends)]
    for key, why in nat_backend_refusals(split_host_port(listen)[0], listed):
        s.error(key, f"not with mode = \"nat\": {why}")



def check_frontends(problems: list[str], frontends: list[FrontendConfig]) -> None:
    """Problems between frontends: duplicate names and listen addresses."""
    seen: dict[str, int] = {}
    listens: dict[str, int] = {}
    for i, f in enumerate(frontends):
        if f.name in seen:
            problems.append(f"frontend[{i}].name: duplicate frontend name {f.name!r} (also frontend[{seen[f.name]}])")
        seen.setdefault(f.name, i)
        if f.listen in listens:
            problems.append(f"frontend[{i}].listen: {f.listen} is already used by frontend[{listens[f.listen]}]")
        listens.setdefault(f.listen, i)
    for i, why in nat_port_clashes([(f.mode, f.listen_host, f.listen_port) for f in frontends]):
        problems.append(f"frontend[{i}].listen: {why}")


def check_frontends_on_host(problems: Findings, frontends: Iterable[FrontendConfig], host: Host,
                            vips: Iterable[str] = ()) -> None:
    """Warnings about this host now: a listen address it does not hold (the listener binds it
    anyway, with IP_FREEBIND) unless it is one of `vips`, which this node adds when master."""
    ours = set(vips)
    for i, f in enumerate(frontends):
        try:
            ip = ipaddress.ip_address(f.listen_host)
        except ValueError:
            continue
        if ip.is_unspecified or str(ip) in ours or host.holds_address(str(ip)):
            continue
        problems.warnings.append(
            f"frontend[{i}].listen: {ip} is not an address of this host now; the listener binds it "
            f"anyway and serves once it is there (a VIP of another daemon?)")
