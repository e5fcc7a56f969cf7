"""What nginx's and HAProxy's translations share: address forms and the `[[frontend]]` table."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from lbproxy.configreader import split_host_port
from vipd.migrate.source import Directive, Origin
from vipd.migrate.toml import Table

BACKEND_WEIGHT_RANGE = (1, 1000)
MAX_RETRIES = 100


def source(d: Directive) -> str:
    """A key's comment: where its value came from."""
    return f"{os.path.basename(d.origin.file)}:{d.origin.line} {d.text}"


def listen_address(host: str, port: str) -> str:
    """`HOST:PORT` as vipd's `listen`, or ValueError with the reason."""
    if host in ("", "*"):
        host = "0.0.0.0"
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise ValueError("vipd listens on an IP address, not a name") from None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def backend_address(text: str) -> str:
    """`HOST:PORT` / `[V6]:PORT` as vipd's backend `address`, or ValueError with the reason."""
    if text.startswith("unix:"):
        raise ValueError("vipd connects to TCP backends only")
    host, port = split_host_port(text)
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return f"{host}:{port}"
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


@dataclass
class FrontendDraft:
    """One translated frontend before it is named and checked against the others."""
    name: str
    listen: str
    origin: Origin
    listen_comment: str
    settings: Table = field(default_factory=Table)
    health: Table = field(default_factory=Table)
    backends: list[Table] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)     # comment lines: servers not translated
    comments: list[str] = field(default_factory=list)

    def table(self) -> Table:
        table = Table(comments=[*self.comments, *self.left_out])
        table.set("name", self.name)
        table.set("listen", self.listen, self.listen_comment)
        for key, value in self.settings.values.items():
            table.set(key, value, self.settings.key_comments.get(key))
        if self.health.values:
            table.set("health", self.health)
        table.set("backend", self.backends)
        return table


def backend_table(address: str, comment: str, weight: int | None = None,
                  max_connections: int | None = None, backup: bool = False) -> Table:
    backend = Table()
    backend.set("address", address, comment)
    if weight is not None:
        backend.set("weight", weight)
    if max_connections:
        backend.set("max_connections", max_connections)
    if backup:
        backend.set("backup", True)
    return backend
