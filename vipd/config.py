"""The one TOML config file: the node, its VRRP instances (vipd.vrrp.config) and its frontends
(lbproxy.config), validated together; every problem is reported as `FILE: key.path: reason`."""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from typing import Any

from lbproxy.config import FrontendConfig, ProxyConfig, check_frontends, parse_frontend
from lbproxy.configreader import ConfigError, Section, between, host_port, read_toml
from vipd.control.client import DEFAULT_CONTROL_SOCKET
from vipd.vrrp.config import VrrpConfig, parse_vrrp

DEFAULT_PATH = "/etc/vipd/vipd.toml"
DEFAULT_STATE_DIR = "/var/lib/vipd"
LOG_LEVELS = ("debug", "info", "warning", "error")


def default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True)
class NodeConfig:
    name: str
    control_socket: str = DEFAULT_CONTROL_SOCKET
    control_group: str | None = None
    metrics_listen: str | None = None
    workers: int = field(default_factory=default_workers)
    log_level: str = "info"
    state_dir: str = DEFAULT_STATE_DIR      # runtime drains, weights, maintenance (vipd.runtime_state)


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeConfig
    vrrp: tuple[VrrpConfig, ...] = ()
    frontends: tuple[FrontendConfig, ...] = ()

    def frontend(self, name: str) -> FrontendConfig | None:
        return next((f for f in self.frontends if f.name == name), None)

    @property
    def proxy(self) -> ProxyConfig:
        return ProxyConfig(self.frontends, self.node.workers, self.node.log_level)


def _parse_node(problems: list[str], table: Any) -> NodeConfig:
    s = Section(problems, "node", table, (
        "name", "control_socket", "control_group", "metrics_listen", "workers", "log_level", "state_dir"))
    return NodeConfig(
        name=s.get("name", str, socket.gethostname()) or socket.gethostname(),
        control_socket=s.get("control_socket", str, DEFAULT_CONTROL_SOCKET) or DEFAULT_CONTROL_SOCKET,
        control_group=s.get("control_group", str),
        metrics_listen=s.get("metrics_listen", str, None, check=host_port),
        workers=s.get("workers", int, None, check=between(1, 256)) or default_workers(),
        log_level=s.get("log_level", str, "info", check=lambda v: None if v in LOG_LEVELS
                        else f"must be one of {', '.join(LOG_LEVELS)}") or "info",
        state_dir=s.get("state_dir", str, DEFAULT_STATE_DIR, check=lambda v: None if os.path.isabs(v)
                        else "must be an absolute path") or DEFAULT_STATE_DIR)


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
    check_frontends(problems, frontends)


def parse(data: dict[str, Any], path: str = "<config>", *, require_vrrp: bool = False,
          require_frontend: bool = False) -> Config:
    """`require_vrrp`: something to run (what `vipd run` needs); `require_frontend`: at least one
    [[frontend]] (what `lbproxy run` needs)."""
    problems: list[str] = []
    top = Section(problems, "", data, ("node", "vrrp", "frontend"))
    node = _parse_node(problems, data.get("node", {}))
    vrrps = [v for w, t in top.tables("vrrp") if (v := parse_vrrp(problems, w, t)) is not None]
    frontends = [f for w, t in top.tables("frontend") if (f := parse_frontend(problems, w, t)) is not None]
    if not problems:
        _cross_check(problems, vrrps, frontends)
    if not problems and require_vrrp and not vrrps and not frontends:
        problems.append("vrrp: nothing to run: no [[vrrp]] and no [[frontend]]")
    if not problems and require_frontend and not frontends:
        problems.append("frontend: lbproxy needs at least one [[frontend]]")
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems])
    return Config(path=path, node=node, vrrp=tuple(vrrps), frontends=tuple(frontends))


def load(path: str | os.PathLike, *, require_vrrp: bool = False, require_frontend: bool = False) -> Config:
    """Read and validate a config file; ConfigError lists every problem, one line each."""
    return parse(read_toml(path), str(path), require_vrrp=require_vrrp, require_frontend=require_frontend)
