"""The one kernel setting the proxy changes: net.ipv4.tcp_migrate_req."""
from __future__ import annotations

import logging

log = logging.getLogger("lbproxy")

MIGRATE_REQ = "/proc/sys/net/ipv4/tcp_migrate_req"


def enable_request_migration() -> None:
    """net.ipv4.tcp_migrate_req=1 (this network namespace): a connection still queued on a
    closing SO_REUSEPORT listener moves to a sibling instead of being reset."""
    try:
        with open(MIGRATE_REQ) as f:
            if f.read().strip() == "1":
                return
    except OSError:
        log.info("proxy: this kernel has no tcp_migrate_req (Linux >= 5.14); on reload, old "
                 "workers serve their queued connections before closing their listeners")
        return
    try:
        with open(MIGRATE_REQ, "w") as f:
            f.write("1")
        log.info("proxy: set net.ipv4.tcp_migrate_req=1 so a closing listener hands its queued "
                 "connections to the remaining ones")
    except OSError as exc:
        log.warning("proxy: cannot set net.ipv4.tcp_migrate_req=1 (%s); on reload, old workers "
                    "serve their queued connections before closing their listeners", exc.strerror or exc)


FORWARDING = {4: ("net.ipv4.ip_forward", "/proc/sys/net/ipv4/ip_forward"),
              6: ("net.ipv6.conf.all.forwarding", "/proc/sys/net/ipv6/conf/all/forwarding")}


def enable_forwarding(version: int, frontend: str) -> bool:
    """Packet forwarding on (this network namespace) for a nat frontend; logged when it changes.
    False when it is off and cannot be set (the nat frontend cannot serve)."""
    name, path = FORWARDING[version]
    try:
        with open(path) as f:
            if f.read().strip() == "1":
                return True
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        log.error("proxy: cannot set %s=1 for nat frontend %s (%s)", name, frontend, exc.strerror or exc)
        return False
    log.info("proxy: set %s=1 for nat frontend %s", name, frontend)
    return True
