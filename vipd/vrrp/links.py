"""Link and address state from rtnetlink: an InterfaceTable kept current by a NetlinkMonitor
thread (a full dump first, a new dump after any lost event), read by the VRRP instances.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable, Iterable

from lbproxy.restarts import Backoff

log = logging.getLogger("vipd.vrrp")

# IFA_PROTO value marking the addresses vipd added (IPPROTO_VRRP), so a later run can tell them
# from the host's own.
VIP_ADDRESS_PROTO = 112

_IFF_UP = 0x1
_IFF_RUNNING = 0x40
_IFA_F_SECONDARY = 0x01
_IFA_F_UNUSABLE = 0x08 | 0x40   # DADFAILED | TENTATIVE: cannot be a source address yet
_RTMGRP_LINK, _RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK = 16, 17, 18
_RTM_NEWADDR, _RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
# A netlink monitor that failed twice in a row retries after this, doubling up to the maximum.
NETLINK_RETRY_FIRST = 0.5
NETLINK_RETRY_MAX = 10.0


class VrrpError(Exception):
    """A problem an operator must fix (missing privileges, ...): one line, no traceback."""




@dataclass(frozen=True)
class Address:
    family: int
    address: str
    prefixlen: int
    flags: int = 0
    proto: int = 0
    scope: int = 0

    @property
    def ours(self) -> bool:
        return self.proto == VIP_ADDRESS_PROTO

    @property
    def usable(self) -> bool:
        return not self.flags & _IFA_F_UNUSABLE


@dataclass
class Link:
    index: int
    name: str
    up: bool
    mac: str | None
    addresses: list[Address] = field(default_factory=list)

    def has(self, address: str) -> Address | None:
        wanted = ipaddress.ip_address(address)
        return next((a for a in self.addresses if ipaddress.ip_address(a.address) == wanted), None)

    def primary_ipv4(self, exclude: Iterable[str] = ()) -> str | None:
        """The first primary (non-secondary) IPv4 address that is not a VIP."""
        skip = {ipaddress.ip_address(a) for a in exclude}
        for a in self.addresses:
            if (a.family == socket.AF_INET and not a.flags & _IFA_F_SECONDARY and not a.ours
                    and ipaddress.ip_address(a.address) not in skip):
                return a.address
        return None

    def link_local(self) -> str | None:
        for a in self.addresses:
            if a.family == socket.AF_INET6 and a.usable and ipaddress.ip_address(a.address).is_link_local:
                return a.address
        return None


class InterfaceTable:
    """This namespace's links and addresses as netlink reports them; lives on the loop thread."""

    def __init__(self) -> None:
        self.links: dict[int, Link] = {}
        # Why link state is not followed right now (the netlink monitor is down), or None.
        self.monitor_fault: str | None = None
        self._listeners: list[Callable[[str], None]] = []

    def by_name(self, name: str) -> Link | None:
        return next((link for link in self.links.values() if link.name == name), None)

    def link_up(self, name: str) -> bool:
        link = self.by_name(name)
        return link is not None and link.up

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[str], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def apply(self, event: tuple) -> None:
        kind = event[0]
        changed: set[str] = set()
        if kind == "snapshot":
            _, links, addresses = event
            old_names = {link.name for link in self.links.values()}
            self.links = {index: Link(index, name, up, mac) for index, name, up, mac in links}
            for index, address in addresses:
                if index in self.links:
                    self.links[index].addresses.append(address)
            changed = old_names | {link.name for link in self.links.values()}
        elif kind == "link":
            _, index, name, up, mac = event
            link = self.links.get(index)
            if link is None:
                self.links[index] = Link(index, name, up, mac)
            else:
                if link.name != name:
                    changed.add(link.name)
                link.name, link.up, link.mac = name, up, mac
            changed.add(name)
        elif kind == "monitor":
            self.monitor_fault = event[1]
            changed = {link.name for link in self.links.values()}
        elif kind == "dellink":
            link = self.links.pop(event[1], None)
            if link is not None:
                changed.add(link.name)
        elif kind in ("addr", "deladdr"):
            _, index, address = event
            link = self.links.get(index)
            if link is None:
                return
            same = ipaddress.ip_address(address.address)
            link.addresses = [a for a in link.addresses if ipaddress.ip_address(a.address) != same]
            if kind == "addr":
                link.addresses.append(address)
            changed.add(link.name)
        for name in changed:
            for listener in list(self._listeners):
                try:
                    listener(name)
                except Exception:
                    log.exception("link listener failed for %s", name)


def _parse_link(msg) -> tuple | None:
    if msg["family"] != socket.AF_UNSPEC:   # AF_BRIDGE port notifications carry no link state
        return None
    name = msg.get_attr("IFLA_IFNAME")
    if name is None:
        return None
    flags = msg["flags"]
    up = bool(flags & _IFF_UP) and bool(flags & _IFF_RUNNING)
    return msg["index"], name, up, msg.get_attr("IFLA_ADDRESS")


def _parse_address(msg) -> tuple[int, Address] | None:
    family = msg["family"]
    if family not in (socket.AF_INET, socket.AF_INET6):
        return None
    address = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if address is None:
        return None
    flags = msg.get_attr("IFA_FLAGS")
    return msg["index"], Address(family, address, msg["prefixlen"],
                                 msg["flags"] if flags is None else flags,
                                 msg.get_attr("IFA_PROTO") or 0, msg["scope"])


class NetlinkMonitor:
    """Reads rtnetlink link and address events on a thread and applies them to an InterfaceTable
    on the loop. A full dump starts it, and a new dump follows any lost event (ENOBUFS)."""

    def __init__(self, table: InterfaceTable) -> None:
        self.table = table
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = -1, -1
        self._ready: asyncio.Future | None = None

    async def start(self) -> None:
        from pyroute2.netlink.rtnl.marshal import MarshalRtnl

        self._loop = asyncio.get_running_loop()
        self._ready = self._loop.create_future()
        sock = self._open()
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, args=(sock, MarshalRtnl()),
                                        name="vipd-netlink", daemon=True)
        self._thread.start()
        await asyncio.wait_for(asyncio.shield(self._ready), 10)

    def _open(self) -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        except OSError:
            sock.close()
            raise
        return sock

    async def stop(self) -> None:
        if self._thread is None:
            return
        os.write(self._wake_w, b"x")
        await asyncio.to_thread(self._thread.join, 5)
        self._thread = None
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)

    def _post(self, event: tuple) -> None:
        try:
            self._loop.call_soon_threadsafe(self.table.apply, event)
        except RuntimeError:   # the loop is closed: we are shutting down
            pass

    def _post_ready(self) -> None:
        def done() -> None:
            if not self._ready.done():
                self._ready.set_result(None)
        try:
            self._loop.call_soon_threadsafe(done)
        except RuntimeError:
            pass

    def _run(self, sock: socket.socket | None, marshal) -> None:
        """Follow until stopped. A failure restarts the monitor at once (a fresh dump follows);
        failing again before that dump completes marks link state unknown on the table (the
        instances go to FAULT) and retries with backoff until a dump completes again."""
        failures = 0
        reported = False
        backoff = Backoff(NETLINK_RETRY_FIRST, NETLINK_RETRY_MAX)

        def followed_again() -> None:
            nonlocal failures, reported
            failures = 0
            backoff.reset()
            if reported:
                reported = False
                log.warning("netlink monitor restarted; link state is followed again")
                self._post(("monitor", None))

        while True:
            try:
                if sock is None:
                    sock = self._open()
                self._follow(sock, marshal, followed_again)
                return
            except Exception as exc:
                why = f"{type(exc).__name__}: {exc}"
                failures += 1
                if failures == 1:
                    log.warning("netlink monitor failed (%s); restarting it", why)
                elif not reported:
                    reported = True
                    log.error("netlink monitor failed again (%s); link state is no longer followed, "
                              "retrying with backoff", why)
                    self._post(("monitor", why))
            finally:
                if sock is not None:
                    sock.close()
                    sock = None
            if failures > 1:
                delay = backoff.next()
                if select.select([self._wake_r], [], [], delay)[0]:
                    return

    def _follow(self, sock: socket.socket, marshal, on_snapshot: Callable[[], None]) -> None:
        port = sock.getsockname()[0]
        seq = 0
        pending: list[int] = []          # dump requests still to send, one at a time
        dump_links: list[tuple] = []
        dump_addresses: list[tuple[int, Address]] = []
        in_dump: int | None = None

        def request_dumps() -> None:
            nonlocal in_dump
            pending[:] = [_RTM_GETLINK, _RTM_GETADDR]
            dump_links.clear()
            dump_addresses.clear()
            in_dump = None
            send_next()

        def send_next() -> None:
            nonlocal seq, in_dump
            kind = pending.pop(0)
            seq += 1
            body = struct.pack("BxHiII", 0, 0, 0, 0, 0) if kind == _RTM_GETLINK else struct.pack("BBBBI", 0, 0, 0, 0, 0)
            sock.send(struct.pack("IHHII", 16 + len(body), kind, _NLM_F_REQUEST | _NLM_F_DUMP, seq, port) + body)
            in_dump = seq

        request_dumps()
        while True:
            readable, _, _ = select.select([sock, self._wake_r], [], [])
            if self._wake_r in readable:
                return
            try:
                data = sock.recv(1 << 20)
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    log.warning("netlink events were lost; re-reading links and addresses")
                    request_dumps()
                    continue
                raise
            for msg in marshal.parse(data):
                header = msg["header"]
                kind, msg_seq = header["type"], header["sequence_number"]
                from_dump = in_dump is not None and msg_seq == in_dump
                if kind in (_NLMSG_DONE, _NLMSG_ERROR) and from_dump:
                    if pending:
                        send_next()
                    else:
                        in_dump = None
                        self._post(("snapshot", list(dump_links), list(dump_addresses)))
                        self._post_ready()
                        on_snapshot()
                elif kind in (_RTM_NEWLINK, _RTM_DELLINK):
                    parsed = _parse_link(msg)
                    if parsed is None:
                        continue
                    if from_dump:
                        dump_links.append(parsed)
                    elif kind == _RTM_NEWLINK:
                        self._post(("link", *parsed))
                    else:
                        self._post(("dellink", parsed[0]))
                elif kind in (_RTM_NEWADDR, _RTM_DELADDR):
                    parsed = _parse_address(msg)
                    if parsed is None:
                        continue
                    if from_dump:
                        dump_addresses.append(parsed)
                    else:
                        self._post(("addr" if kind == _RTM_NEWADDR else "deladdr", *parsed))
