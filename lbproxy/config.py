"""The `[[frontend]]` part of the config: the proxy's typed model and its parser."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from lbproxy.configreader import (
    Section,
    between,
    host_port,
    non_negative,
    one_of,
    positive,
    show,
    split_host_port,
)


class Balance(enum.StrEnum):
    ROUND_ROBIN = "round_robin"
    LEAST_CONN = "least_conn"
    RANDOM2 = "random2"
    SOURCE_HASH = "source_hash"


class HealthType(enum.StrEnum):
    TCP = "tcp"
    HTTP = "http"
    HTTPS = "https"


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
    buffer_size: int = 16384                 # bytes: largest read, and each transport's high-water mark
    max_connections_per_source: int = 0      # per client address; 0: unlimited
    client_first_byte_timeout: float = 0.0   # seconds the client has to send its first byte; 0: off


@dataclass(frozen=True)
class ProxyConfig:
    """What the proxy runs: its frontends and how many worker processes serve them."""
    frontends: tuple[FrontendConfig, ...]
    workers: int
    log_level: str = "info"
    worker_user: str | None = None     # workers drop root to this user (node.worker_user)

    def frontend(self, name: str) -> FrontendConfig | None:
        return next((f for f in self.frontends if f.name == name), None)


def parse_health(problems: list[str], where: str, table: Any) -> HealthConfig:
    s = Section(problems, where, table, (
        "type", "path", "expect", "interval", "timeout", "rise", "fall", "tls_verify", "host", "port"))
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
    return HealthConfig(
        type=kind or "tcp", path=path or "/healthz", expect=tuple(expect or (200,)),
        interval=interval or 2.0, timeout=timeout or 1.0,
        rise=s.get("rise", int, 2, check=between(1, 1000)) or 2,
        fall=s.get("fall", int, 3, check=between(1, 1000)) or 3,
        tls_verify=s.get("tls_verify", bool, False),
        host=s.get("host", str), port=s.get("port", int, None, check=between(1, 65535)))


def parse_backend(problems: list[str], where: str, table: Any) -> BackendConfig | None:
    s = Section(problems, where, table, ("address", "weight", "max_connections"))
    address = s.get("address", str, required=True, check=host_port)
    weight = s.get("weight", int, 1, check=between(1, 1000))
    max_conns = s.get("max_connections", int, 0, check=non_negative)
    if address is None or weight is None or max_conns is None:
        return None
    host, port = split_host_port(address)
    return BackendConfig(address, host, port, weight, max_conns)


def parse_frontend(problems: list[str], where: str, table: Any) -> FrontendConfig | None:
    s = Section(problems, where, table, (
        "name", "listen", "balance", "connect_timeout", "idle_timeout", "half_close_timeout",
        "max_connections", "retries", "drain_timeout", "health", "backend",
        "buffer_size", "max_connections_per_source", "client_first_byte_timeout"))
    before = len(problems)
    name = s.get("name", str, required=True)
    listen = s.get("listen", str, required=True, check=host_port)
    balance = s.get("balance", str, "round_robin",
                    check=one_of(Balance))
    values = {
        "connect_timeout": s.get("connect_timeout", float, 2.0, check=positive),
        "idle_timeout": s.get("idle_timeout", float, 600.0, check=positive),
        "half_close_timeout": s.get("half_close_timeout", float, 60.0, check=positive),
        "max_connections": s.get("max_connections", int, 20000, check=between(1, 10_000_000)),
        "retries": s.get("retries", int, 2, check=between(0, 100)),
        "drain_timeout": s.get("drain_timeout", float, 30.0, check=non_negative),
        # nginx's stream proxy_buffer_size is 16k; below 4 KiB every read is a system call for a
        # few bytes, above 16 MiB the kernel's own socket buffers are the better place.
        "buffer_size": s.get("buffer_size", int, 16384, check=between(4096, 16 * 1024 * 1024)),
        "max_connections_per_source": s.get("max_connections_per_source", int, 0,
                                            check=between(0, 10_000_000)),
        "client_first_byte_timeout": s.get("client_first_byte_timeout", float, 0.0, check=non_negative),
    }
    health = parse_health(problems, s.path("health"), s.table.get("health", {}))
    backends = [b for w, raw in s.tables("backend") if (b := parse_backend(problems, w, raw)) is not None]
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


