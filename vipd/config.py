"""The one TOML config file: the node, its VIP owners (vipd.vrrp.config, vipd.anycast.config) and
its frontends (lbproxy.config), validated together; every problem is reported as `FILE: key.path: reason`,
every warning (what may be fine at run time) as `FILE: WARNING: key.path: reason`."""
from __future__ import annotations

import os
import pwd
import socket
from dataclasses import dataclass, field
from typing import Any

from lbproxy import config as proxyconfig
from lbproxy.config import (
    FrontendConfig,
    ProxyConfig,
    check_frontends,
    check_frontends_on_host,
    parse_frontend,
)
from lbproxy.configreader import (
    ConfigError,
    Findings,
    Section,
    between,
    foreign,
    host_port,
    one_of,
    read_toml,
    renamed,
)
from lbproxy.host import Host
from lbproxy.logsetup import LogFormat
from vipd.anycast.config import AnycastConfig, parse_anycast
from vipd.control.client import DEFAULT_CONTROL_SOCKET
from vipd.election.config import (
    ElectionConfig,
    EtcdConfig,
    check_elections,
    check_elections_on_host,
    parse_election,
    parse_etcd,
)
from vipd.scriptsafety import path_problem
from vipd.vrrp import config as vrrpconfig
from vipd.vrrp.config import (
    VrrpConfig,
    check_tracks_on_host,
    check_vrrp_on_host,
    parse_vrrp,
)

DEFAULT_PATH = "/etc/vipd/vipd.toml"
DEFAULT_STATE_DIR = "/var/lib/vipd"
EXIT_REFUSED = 2            # the exit status of every command that refuses a config (check, run)
LOG_LEVELS = ("debug", "info", "warning", "error")

# How keepalived, nginx and HAProxy name the top level and the node; see Section.
HINTS = {
    "": {
        "vrrp_instance": renamed("keepalived", "[[vrrp]]"),
        "vrrp_script": foreign("keepalived", "vipd: a [[vrrp.track]] table with script = ..., in its [[vrrp]]"),
        "global_defs": renamed("keepalived", "[node]"),
        "stream": foreign("nginx", "vipd: [[frontend]] tables"),
        "upstream": foreign("nginx", "vipd: [[frontend.backend]] tables inside a [[frontend]]"),
        "server": foreign("nginx", "vipd: [[frontend.backend]] tables inside a [[frontend]]"),
        "listen": foreign("HAProxy", "vipd: a [[frontend]] table"),
        "backend": foreign("HAProxy", "vipd: [[frontend.backend]] tables inside a [[frontend]]"),
        "global": foreign("HAProxy", "vipd: [node]"),
        "defaults": foreign("HAProxy", "vipd sets these in each [[frontend]]"),
    },
    "node": {
        "router_id": renamed("keepalived", "name"),
        "worker_processes": renamed("nginx", "workers"),
        "nbthread": foreign("HAProxy", "vipd: workers (processes)"),
        "nbproc": renamed("HAProxy", "workers"),
    },
    **vrrpconfig.HINTS,
    **proxyconfig.HINTS,
}


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
    log_format: LogFormat = LogFormat.TEXT
    worker_user: str | None = None
    script_security: bool = True            # scripts and this file must be root's (vipd.scriptsafety)
    script_user: str | None = None          # whom track and notify scripts run as (None: the daemon's user)


@dataclass(frozen=True)
class Config:
    path: str
    node: NodeConfig
    vrrp: tuple[VrrpConfig, ...] = ()
    frontends: tuple[FrontendConfig, ...] = ()
    etcd: EtcdConfig | None = None
    elections: tuple[ElectionConfig, ...] = ()
    anycast: tuple[AnycastConfig, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=False)    # printed lines

    def frontend(self, name: str) -> FrontendConfig | None:
        return next((f for f in self.frontends if f.name == name), None)

    @property
    def proxy(self) -> ProxyConfig:
        return ProxyConfig(self.frontends, self.node.workers, self.node.log_level, self.node.log_format,
                           self.node.worker_user)


def _parse_node(problems: list[str], table: Any) -> NodeConfig:
    s = Section(problems, "node", table, (
        "name", "control_socket", "control_group", "metrics_listen", "workers", "log_level", "log_format",
        "state_dir", "worker_user", "script_security", "script_user"))
    return NodeConfig(
        name=s.get("name", str, socket.gethostname()) or socket.gethostname(),
        control_socket=s.get("control_socket", str, DEFAULT_CONTROL_SOCKET) or DEFAULT_CONTROL_SOCKET,
        control_group=s.get("control_group", str),
        metrics_listen=s.get("metrics_listen", str, None, check=host_port),
        workers=s.get("workers", int, None, check=between(1, 256)) or default_workers(),
        log_level=s.get("log_level", str, "info", check=lambda v: None if v in LOG_LEVELS
                        else f"must be one of {', '.join(LOG_LEVELS)}") or "info",
        log_format=LogFormat(s.get("log_format", str, "text", check=one_of(LogFormat)) or "text"),
        state_dir=s.get("state_dir", str, DEFAULT_STATE_DIR, check=lambda v: None if os.path.isabs(v)
                        else "must be an absolute path") or DEFAULT_STATE_DIR,
        worker_user=s.get("worker_user", str, None, check=_known_user),
        script_security=s.get("script_security", bool, True),
        script_user=s.get("script_user", str, None, check=_known_user))


def _known_user(name: str) -> str | None:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return "no such user on this system"
    return None


def _cross_check(problems: list[str], vrrps: list[VrrpConfig], frontends: list[FrontendConfig],
                 anycasts: list[AnycastConfig] = (), elections: list[ElectionConfig] = ()) -> None:
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
        _check_track_frontends(problems, f"vrrp[{i}]", v.tracks, frontends)
    # `lbctl maintenance NAME` names an owner of any kind.
    owners = {v.name: f"vrrp[{i}]" for i, v in reversed(list(enumerate(vrrps)))}
    for i, e in enumerate(elections):
        if e.name in owners and not owners[e.name].startswith("election"):    # those: check_elections
            problems.append(f"election[{i}].name: {e.name!r} already names {owners[e.name]}; "
                            "VIP owners need distinct names")
        owners.setdefault(e.name, f"election[{i}]")
        _check_track_frontends(problems, f"election[{i}]", e.tracks, frontends)
    announced: dict = {}
    for i, a in enumerate(anycasts):
        if a.name in owners:
            problems.append(f"anycast[{i}].name: {a.name!r} already names {owners[a.name]}; "
                            "VIP owners need distinct names")
        owners.setdefault(a.name, f"anycast[{i}]")
        for j, vip in enumerate(a.virtual_ips):
            if vip.ip in announced:
                problems.append(f"anycast[{i}].virtual_ips[{j}]: {vip.ip} is also in {announced[vip.ip]}")
            announced.setdefault(vip.ip, f"anycast[{i}]")
        _check_track_frontends(problems, f"anycast[{i}]", a.tracks, frontends)
    for i, v in enumerate(vrrps):
        for j, vip in enumerate(v.virtual_ips):
            if vip.ip in announced:
                problems.append(f"vrrp[{i}].virtual_ips[{j}]: {vip.ip} is also announced by {announced[vip.ip]}")
    check_frontends(problems, frontends)


def _check_track_frontends(problems: list[str], where: str, tracks, frontends: list[FrontendConfig]) -> None:
    for j, t in enumerate(tracks):
        if t.kind == "frontend" and t.target not in {f.name for f in frontends}:
            problems.append(f"{where}.track[{j}].frontend: no [[frontend]] named {t.target!r}")


def _check_on_host(problems: Findings, node: NodeConfig, vrrps: list[VrrpConfig],
                   frontends: list[FrontendConfig], host: Host, config_file: str | None,
                   anycasts: list[AnycastConfig] = (), elections: list[ElectionConfig] = ()) -> None:
    if config_file is not None and node.script_security and (unsafe := path_problem(config_file)):
        problems.append(f"unsafe config file: {unsafe}; it and every directory above it must be writable "
                        "by root only (or set node.script_security = false)")
    if node.script_user and os.geteuid() != 0 and pwd.getpwnam(node.script_user).pw_uid != os.geteuid():
        problems.append(f"node.script_user: vipd runs as {pwd.getpwuid(os.geteuid()).pw_name}, not root, "
                        f"and cannot run scripts as {node.script_user}")
    for i, v in enumerate(vrrps):
        check_vrrp_on_host(problems, f"vrrp[{i}]", v, host, node.script_security)
    for i, a in enumerate(anycasts):
        check_tracks_on_host(problems, f"anycast[{i}]", a.tracks, host, node.script_security)
    for i, e in enumerate(elections):
        check_tracks_on_host(problems, f"election[{i}]", e.tracks, host, node.script_security)
    for device in sorted({a.device for a in anycasts}):
        if host.has_interface(device):
            problems.warnings.append(f"anycast: device {device!r} exists on this host now; vipd creates it "
                                     "and cannot while another process (another vipd?) holds it")
    owned = [v for o in (*vrrps, *anycasts, *elections) for v in o.virtual_ips]
    check_frontends_on_host(problems, frontends, host, vips=(str(ip.ip) for ip in owned))
    if frontends and node.workers > host.cpu_count():
        problems.warnings.append(f"node.workers: {node.workers} workers for {host.cpu_count()} CPUs; "
                                 "more processes than CPUs only add switching")


def parse(data: dict[str, Any], path: str = "<config>", *, require_vrrp: bool = False,
          require_frontend: bool = False, host: Host | None = None, config_file: str | None = None) -> Config:
    """`require_vrrp`: something to run (what `vipd run` needs); `require_frontend`: at least one
    [[frontend]] (what `lbproxy run` needs); `host`: also check the config against this host
    (its programs, interfaces, addresses, and `config_file`, the file itself), else only the
    file's own meaning."""
    problems = Findings(HINTS)
    top = Section(problems, "", data, ("node", "vrrp", "frontend", "etcd", "election", "anycast"))
    node = _parse_node(problems, data.get("node", {}))
    if not node.script_security:
        problems.warnings.append("node.script_security: false: scripts and the config file are not checked; "
                                 "whoever can change them decides what vipd runs")
    vrrps = [v for w, t in top.tables("vrrp") if (v := parse_vrrp(problems, w, t, node.script_user)) is not None]
    frontends = [f for w, t in top.tables("frontend") if (f := parse_frontend(problems, w, t)) is not None]
    etcd = parse_etcd(problems, data["etcd"]) if "etcd" in data else None
    elections = [e for w, t in top.tables("election") if (e := parse_election(problems, w, t, node.script_user)) is not None]
    anycasts = [a for w, t in top.tables("anycast") if (a := parse_anycast(problems, w, t, node.script_user)) is not None]
    if not problems:
        _cross_check(problems, vrrps, frontends, anycasts, elections)
        check_elections(problems, etcd, elections, {vip.ip for v in (*vrrps, *anycasts) for vip in v.virtual_ips})
    if not problems and require_vrrp and not vrrps and not frontends and not elections and not anycasts:
        problems.append("vrrp: nothing to run: no [[vrrp]] and no [[frontend]]")
    if not problems and require_frontend and not frontends:
        problems.append("frontend: lbproxy needs at least one [[frontend]]")
    if not problems and host is not None:
        _check_on_host(problems, node, vrrps, frontends, host, config_file, anycasts, elections)
        check_elections_on_host(problems, etcd, elections, host)
    warnings = [f"{path}: WARNING: {w}" for w in problems.warnings]
    if problems:
        raise ConfigError([f"{path}: {p}" for p in problems], warnings)
    return Config(path=path, node=node, vrrp=tuple(vrrps), frontends=tuple(frontends), etcd=etcd,
                  elections=tuple(elections), anycast=tuple(anycasts), warnings=tuple(warnings))


THIS_HOST = Host()


def load(path: str | os.PathLike, *, require_vrrp: bool = False, require_frontend: bool = False,
         host: Host | None = THIS_HOST) -> Config:
    """Read and validate a config file, also against `host` (None: the file alone); ConfigError
    lists every problem, one line each; the config's `warnings` what may be fine at run time."""
    data = read_toml(path)
    try:
        return parse(data, str(path), require_vrrp=require_vrrp, require_frontend=require_frontend, host=host,
                     config_file=None if host is None else os.fspath(path))
    except ConfigError:
        raise
    except RecursionError:
        raise ConfigError([f"{path}: nested too deeply"]) from None
    except Exception as exc:
        # A file must never take the daemon down on reload: whatever goes wrong is a refusal.
        raise ConfigError([f"{path}: cannot load: {type(exc).__name__}: {exc}"]) from None
