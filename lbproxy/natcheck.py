"""What `mode = "nat"` cannot honour, found in a `[[frontend]]` table as written: the kernel
forwards the client's packets itself, so nothing that needs a user-space connection applies."""
from __future__ import annotations

import ipaddress
from typing import Any, Mapping

USE_PROXY = 'use mode = "proxy" for it'
NO_CONNECTION = "nat mode has no user-space connection to"

# Keys whose mere presence asks for something the kernel path does not do.
IGNORED_BY_KERNEL = {
    "connect_timeout": f"{NO_CONNECTION} time out (the kernel forwards the SYN; conntrack's timeouts apply)",
    "idle_timeout": f"{NO_CONNECTION} time out (conntrack's tcp timeouts apply)",
    "half_close_timeout": f"{NO_CONNECTION} time out (conntrack's tcp timeouts apply)",
    "retries": f"{NO_CONNECTION} retry: the kernel sends the SYN to one backend only",
    "buffer_size": f"{NO_CONNECTION} buffer",
    "max_connections": f"{NO_CONNECTION} count; {USE_PROXY}",
    "client_first_byte_timeout": f"{NO_CONNECTION} read",
}


def nat_refusals(table: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key path, reason) for every setting of a nat frontend the kernel path cannot honour."""
    out = [(key, why) for key, why in IGNORED_BY_KERNEL.items() if key in table]
    if table.get("balance") in ("least_conn", "leastconn"):
        out.append(("balance", "least_conn needs each backend's open connections at pick time; nat mode "
                               "balances in the kernel with round_robin, random2 (weighted random) or source_hash"))
    if table.get("proxy_protocol", "off") not in ("off", False):
        out.append(("proxy_protocol", f"the kernel forwards the client's bytes unchanged and cannot add a "
                                      f"PROXY header; {USE_PROXY}"))
    if table.get("accept_proxy_protocol", False) is not False:
        out.append(("accept_proxy_protocol", f"the kernel cannot read a PROXY header; {USE_PROXY}"))
    if table.get("trusted_proxies"):
        out.append(("trusted_proxies", "only used with accept_proxy_protocol, which nat mode cannot do"))
    if table.get("access_log", False) is not False:
        out.append(("access_log", f"{NO_CONNECTION} log (`conntrack -E` shows the kernel's flows); {USE_PROXY}"))
    if table.get("max_connections_per_source", 0) != 0:
        out.append(("max_connections_per_source", f"not enforced on the kernel path; {USE_PROXY}"))
    if table.get("slow_start", 0) not in (0, 0.0):
        out.append(("slow_start", "the kernel's map holds whole weights only; nat mode cannot ramp them"))
    return out


def nat_backend_refusals(listen_host: str, backends: list[tuple[str, str, int]]) -> list[tuple[str, str]]:
    """(key path, reason) for backends (where, host, max_connections) DNAT cannot serve from
    `listen_host`: each must be an IP literal of the listen address's family, not loopback (the
    kernel will not route there), without a connection limit."""
    try:
        family = ipaddress.ip_address(listen_host).version
    except ValueError:
        return [("listen", f"nat mode needs an IP address (or 0.0.0.0 / [::]) to match packets on, got {listen_host!r}")]
    out = []
    for where, host, max_connections in backends:
        if max_connections:
            out.append((f"{where}.max_connections", f"{NO_CONNECTION} count; {USE_PROXY}"))
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            out.append((f"{where}.address", f"nat mode needs an IP address (the kernel does not resolve names), got {host!r}"))
            continue
        if ip.version != family:
            out.append((f"{where}.address", f"nat mode cannot translate between IPv{family} (listen) and IPv{ip.version}"))
        elif ip.is_loopback:
            out.append((f"{where}.address", "nat mode cannot forward to a loopback address"))
    return out


def nat_port_clashes(listens: list[tuple[str, str, int]]) -> list[tuple[int, str]]:
    """(index, reason) for frontends whose packets a nat frontend on 0.0.0.0 / [::] would take:
    it translates its port on every local address. `listens`: (mode, host, port) per frontend."""
    out = []
    for i, (mode, host, port) in enumerate(listens):
        for j, (other_mode, other_host, other_port) in enumerate(listens):
            if i == j or port != other_port or other_mode != "nat" or host == other_host:
                continue        # the same listen twice is refused as a duplicate already
            other = ipaddress.ip_address(other_host)
            if other.is_unspecified and ipaddress.ip_address(host).version == other.version:
                out.append((i, f"port {port} is taken on every local address by the nat frontend[{j}] "
                               f"({other_host}); give that one a specific address"))
    return out
