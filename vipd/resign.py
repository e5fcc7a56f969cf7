"""`vipd resign`: what a daemon that died can no longer do itself, run by systemd's ExecStopPost.

For each `[[vrrp]]` instance of the config it removes the VIPs the dead run left on the interface
(only addresses vipd added: IFA_PROTO 112, never the host's own) and, when there were any, sends
one priority-0 advert so a backup takes over after Skew_Time (RFC 5798 6.4.2) instead of
Master_Down_Interval. No VIP left means this node was not master, and a priority-0 advert from a
router that is not master would make a keepalived backup take over from a live master: none is
sent then, nor when the VIPs were only held quietly after a hand-over (another router is master).
"""
from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass

from vipd.vrrp import handover
from vipd.vrrp.addresses import AddressWorker
from vipd.vrrp.config import VrrpConfig
from vipd.vrrp.instance import destinations, encode_advert
from vipd.vrrp.links import InterfaceTable, Link, NetlinkMonitor, VrrpError
from vipd.vrrp.packet import RESIGN_PRIORITY
from vipd.vrrp.sockets import VrrpChannel

# systemd's $SERVICE_RESULT after a stop that needs nothing from us.
CLEAN_STOP = "success"


@dataclass(frozen=True)
class Outcome:
    instance: str
    removed: tuple[str, ...]
    advertised: bool
    note: str

    def line(self) -> str:
        done = [f"removed {', '.join(self.removed)}"] if self.removed else []
        done += ["sent a priority-0 advert"] if self.advertised else []
        return f"vrrp {self.instance}: " + "; ".join(done + ([self.note] if self.note else []))


def _primary(c: VrrpConfig, link: Link) -> str | None:
    if c.unicast_src:
        return c.unicast_src
    if c.family == socket.AF_INET6:
        return link.link_local()
    return link.primary_ipv4(exclude=[str(v.ip) for v in c.virtual_ips])


def _advertise_resign(c: VrrpConfig, link: Link) -> str | None:
    """None once sent; otherwise why not."""
    src = _primary(c, link)
    if src is None:
        return f"no address on {c.interface} to send the priority-0 advert from"
    channel = VrrpChannel(c.interface, c.family)
    channel.open(link.index)
    try:
        sent = [channel.send(encode_advert(c, RESIGN_PRIORITY, src, dst), src, dst) for dst in destinations(c)]
    finally:
        channel.close()
    return None if any(sent) else f"the priority-0 advert could not be sent on {c.interface}"


async def _resign_one(c: VrrpConfig, table: InterfaceTable, addresses: AddressWorker) -> Outcome:
    link = table.by_name(c.interface)
    if link is None:
        return Outcome(c.name, (), False, f"no interface {c.interface}: nothing to do")
    left = [v for v in c.virtual_ips if (found := link.has(str(v.ip))) is not None and found.ours]
    quiet = bool(left) and c.family == socket.AF_INET and await handover.quiet_hold_left(c.vrid)
    try:
        if not left:
            return Outcome(c.name, (), False, f"no VIP left on {c.interface}: this node was not master")
        # The VIPs first: from here on this node no longer answers for them.
        removed = tuple((await addresses.remove(c.interface, left)).done)
        expired = "" if removed else "the VIPs expired meanwhile"
        if quiet:
            return Outcome(c.name, removed, False, "they were held quietly after a hand-over: no advert")
        why_not = _advertise_resign(c, link)
        return Outcome(c.name, removed, why_not is None, why_not or expired)
    finally:
        if c.family == socket.AF_INET:
            await handover.clear_leftovers(c.vrid)


async def resign(configs: tuple[VrrpConfig, ...]) -> list[Outcome]:
    table = InterfaceTable()
    monitor = NetlinkMonitor(table)
    try:
        await monitor.start()
    except OSError as exc:
        raise VrrpError(f"cannot read links and addresses over netlink: {exc.strerror or exc}") from None
    addresses = AddressWorker()
    try:
        return [await _resign_one(c, table, addresses) for c in configs]
    finally:
        await monitor.stop()
        await asyncio.to_thread(addresses.close)
