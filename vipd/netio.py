"""The VRRP engine's contact with the kernel: raw VRRP sockets, link/address state from netlink,
VIP changes through pyroute2, gratuitous ARP / unsolicited NA frames.

Nothing here blocks the asyncio loop: netlink events are read by a thread and handed over with
``call_soon_threadsafe``; VIP changes run on one worker thread (in submission order); VRRP and
ARP/NA frames go out through non-blocking sockets.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

from vipd import packet

log = logging.getLogger("vipd.vrrp")

IPPROTO_VRRP = packet.IPPROTO_VRRP
VRRP_GROUP = {socket.AF_INET: "224.0.0.18", socket.AF_INET6: "ff02::12"}
# IFA_PROTO value marking the addresses vipd added, so a later run can tell them from the host's own.
VIP_ADDRESS_PROTO = IPPROTO_VRRP
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IPTOS_PREC_INTERNETCONTROL = 0xC0

_IFF_UP = 0x1
_IFF_RUNNING = 0x40
_IFA_F_SECONDARY = 0x01
_IFA_F_NODAD = 0x02
_IFA_F_UNUSABLE = 0x08 | 0x40   # DADFAILED | TENTATIVE: cannot be a source address yet
_RTMGRP_LINK, _RTMGRP_IPV4_IFADDR, _RTMGRP_IPV6_IFADDR = 0x1, 0x10, 0x100
_RTM_NEWLINK, _RTM_DELLINK, _RTM_GETLINK = 16, 17, 18
_RTM_NEWADDR, _RTM_DELADDR, _RTM_GETADDR = 20, 21, 22
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300


class VrrpError(Exception):
    """A problem an operator must fix (missing privileges, ...): one line, no traceback."""


# --------------------------------------------------------------------------------------------
# Link and address state


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
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR | _RTMGRP_IPV6_IFADDR))
        except OSError:
            sock.close()
            raise
        self._wake_r, self._wake_w = os.pipe()
        self._thread = threading.Thread(target=self._run, args=(sock, MarshalRtnl()),
                                        name="vipd-netlink", daemon=True)
        self._thread.start()
        await asyncio.wait_for(asyncio.shield(self._ready), 10)

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

    def _run(self, sock: socket.socket, marshal) -> None:
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

        try:
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
        except Exception:
            log.exception("netlink monitor stopped; link state is no longer followed")
        finally:
            sock.close()


# --------------------------------------------------------------------------------------------
# VIPs


class AddressWorker:
    """Adds and removes VIPs with pyroute2 on one thread, in the order asked."""

    def __init__(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vipd-addr")
        self._local = threading.local()

    def _ipr(self):
        ipr = getattr(self._local, "ipr", None)
        if ipr is None:
            from pyroute2 import IPRoute
            # A plain selector loop of its own: under uvloop's policy pyroute2 would get a uvloop
            # loop, whose datagram transports refuse netlink sockets.
            self._local.loop = asyncio.SelectorEventLoop()
            ipr = self._local.ipr = IPRoute(groups=0, use_event_loop=self._local.loop)
        return ipr

    def _change(self, command: str, ifname: str, vips: tuple) -> list[str]:
        done: list[str] = []
        ipr = self._ipr()
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            log.warning("cannot %s VIPs on %s: no such interface", command, ifname)
            return done
        for vip in vips:
            kwargs = {"index": found[0], "address": str(vip.ip), "prefixlen": vip.network.prefixlen}
            if command == "add":
                kwargs["proto"] = VIP_ADDRESS_PROTO
                if vip.version == 6:
                    kwargs["flags"] = _IFA_F_NODAD
            try:
                ipr.addr(command, **kwargs)
                done.append(str(vip))
            except Exception as exc:
                code = getattr(exc, "code", None)
                if (command, code) in (("add", errno.EEXIST), ("del", errno.EADDRNOTAVAIL),
                                       ("del", errno.ENOENT), ("del", errno.ENODEV)):
                    continue
                log.error("cannot %s %s on %s: %s", command, vip, ifname, exc)
        return done

    def add(self, ifname: str, vips: Iterable) -> asyncio.Future:
        return asyncio.wrap_future(self._executor.submit(self._change, "add", ifname, tuple(vips)))

    def remove(self, ifname: str, vips: Iterable) -> asyncio.Future:
        return asyncio.wrap_future(self._executor.submit(self._change, "del", ifname, tuple(vips)))

    def close(self) -> None:
        def close_ipr() -> None:
            ipr = getattr(self._local, "ipr", None)
            if ipr is not None:
                ipr.close()
                self._local.loop.close()
        self._executor.submit(close_ipr)
        self._executor.shutdown(wait=True)


# --------------------------------------------------------------------------------------------
# Gratuitous ARP / unsolicited NA


def build_gratuitous_frames(mac: str, vips: Iterable) -> list[bytes]:
    """One Ethernet frame per VIP: an ARP request for itself (IPv4) or an unsolicited Neighbor
    Advertisement with the override flag to all nodes (IPv6)."""
    from scapy.layers.inet6 import ICMPv6ND_NA, ICMPv6NDOptDstLLAddr, IPv6
    from scapy.layers.l2 import ARP, Ether

    frames = []
    for vip in vips:
        ip = str(vip.ip)
        if vip.version == 4:
            frame = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
                     / ARP(op=1, hwsrc=mac, psrc=ip, hwdst="ff:ff:ff:ff:ff:ff", pdst=ip))
        else:
            frame = (Ether(src=mac, dst="33:33:00:00:00:01")
                     / IPv6(src=ip, dst="ff02::1", hlim=255)
                     / ICMPv6ND_NA(tgt=ip, R=0, S=0, O=1)
                     / ICMPv6NDOptDstLLAddr(lladdr=mac))
        frames.append(bytes(frame))
    return frames


class FrameSender:
    """Prebuilt link-layer frames out of one interface through a non-blocking AF_PACKET socket."""

    def __init__(self, ifname: str) -> None:
        self.ifname = ifname
        self._sock: socket.socket | None = None

    def send(self, frames: Iterable[bytes]) -> int:
        sent = 0
        for frame in frames:
            try:
                if self._sock is None:
                    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                    sock.setblocking(False)
                    try:
                        sock.bind((self.ifname, 0))
                    except OSError:
                        sock.close()
                        raise
                    self._sock = sock
                self._sock.send(frame)
                sent += 1
            except OSError as exc:
                log.warning("%s: gratuitous ARP/NA not sent: %s", self.ifname, exc.strerror or exc)
                self.close()   # the interface may have been re-created; bind again next time
                break
        return sent

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# --------------------------------------------------------------------------------------------
# VRRP sockets


# payload, source, destination, TTL/hop limit (None: unknown), arrival time on the monotonic clock
Receiver = Callable[[bytes, str, str, "int | None", float], None]


class VrrpChannel:
    """One raw IPPROTO_VRRP socket per (interface, family), shared by that interface's instances
    and demultiplexed by VRID."""

    def __init__(self, ifname: str, family: int) -> None:
        self.ifname = ifname
        self.family = family
        self.index: int | None = None
        self.receivers: dict[int, Receiver] = {}
        self.rx_errors = packet.RxErrors(f"{ifname}/{'IPv6' if family == socket.AF_INET6 else 'IPv4'}")
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def sync(self, link: Link | None) -> None:
        """Follow the interface: open once it exists, reopen when it was re-created."""
        if link is None:
            self.close()
            return
        if self._sock is not None and self.index == link.index:
            return
        self.close()
        self.open(link.index)

    def open(self, index: int) -> None:
        family = self.family
        try:
            sock = socket.socket(family, socket.SOCK_RAW, IPPROTO_VRRP)
        except PermissionError:
            raise VrrpError(f"cannot open a raw VRRP socket on {self.ifname}: "
                            "permission denied (vipd needs root or CAP_NET_RAW)") from None
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.ifname.encode())
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            group = VRRP_GROUP[family]
            if family == socket.AF_INET:
                mreqn = socket.inet_aton(group) + bytes(4) + struct.pack("i", index)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, bytes(8) + struct.pack("i", index))
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, packet.VRRP_TTL)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, packet.VRRP_TTL)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, IPTOS_PREC_INTERNETCONTROL)
            else:
                mreq = socket.inet_pton(socket.AF_INET6, group) + struct.pack("I", index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, mreq)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, index)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, packet.VRRP_TTL)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, packet.VRRP_TTL)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, 0)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVHOPLIMIT, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, IPTOS_PREC_INTERNETCONTROL)
        except OSError as exc:
            sock.close()
            if exc.errno == errno.ENODEV:
                log.warning("%s: no such interface yet; VRRP socket waits for it", self.ifname)
                return
            raise VrrpError(f"cannot set up the VRRP socket on {self.ifname}: {exc.strerror or exc}") from None
        self._sock = sock
        self.index = index
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self.poll)

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._loop.remove_reader(self._sock.fileno())
            except Exception:
                pass
            self._sock.close()
            self._sock = None
        self.index = None

    def send(self, payload: bytes, src: str, dst: str) -> bool:
        if self._sock is None or self.index is None:
            return False
        try:
            if self.family == socket.AF_INET:
                info = struct.pack("I4s4s", self.index, socket.inet_aton(src), bytes(4))
                self._sock.sendmsg([payload], [(socket.IPPROTO_IP, IP_PKTINFO, info)], 0, (dst, 0))
            else:
                info = socket.inet_pton(socket.AF_INET6, src) + struct.pack("I", self.index)
                self._sock.sendmsg([payload], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, info)], 0,
                                   (dst, 0, 0, self.index))
            return True
        except OSError as exc:
            log.debug("%s: VRRP advert %s -> %s not sent: %s", self.ifname, src, dst, exc.strerror or exc)
            return False

    def poll(self) -> None:
        """Hand every waiting packet to its instance, stamped with its arrival time, so a loop that
        was busy for a while does not mistake adverts still in the queue for silence."""
        for _ in range(64):   # bounded per wake-up so one busy segment cannot starve the loop
            if self._sock is None:
                return
            try:
                data, ancdata, _, address = self._sock.recvmsg(65535, 512)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("%s: VRRP receive error: %s", self.ifname, exc)
                return
            arrival = _arrival(ancdata)
            if self.family == socket.AF_INET:
                parsed = _split_ipv4(data)
            else:
                parsed = _split_ipv6(data, ancdata, address)
            if parsed is not None:
                self._deliver(*parsed, arrival)

    def _deliver(self, payload: bytes, src: str, dst: str, ttl: int | None, arrival: float) -> None:
        receiver = self.receivers.get(payload[1]) if len(payload) >= 2 else None
        if receiver is not None:
            try:
                receiver(payload, src, dst, ttl, arrival)
            except Exception:
                log.exception("%s: VRRP receive handler failed for a packet from %s", self.ifname, src)
            return
        try:
            result = packet.decode(payload, src=src, dst=dst, ttl=ttl)
        except ValueError:
            return
        if isinstance(result, packet.Invalid):
            self.rx_errors.record(result, src)
        else:
            self.rx_errors.record(packet.Invalid("vrid", f"VRID {result.vrid} is not configured here"), src)


def _arrival(ancdata) -> float:
    """The kernel's receive timestamp (wall clock) moved onto the monotonic clock."""
    now = time.monotonic()
    for level, kind, value in ancdata:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
            seconds, nanoseconds = struct.unpack("qq", value[:16])
            age = time.time() - (seconds + nanoseconds / 1e9)
            return now - min(max(age, 0.0), 60.0)
    return now


def _split_ipv4(data: bytes) -> tuple[bytes, str, str, int] | None:
    if len(data) < 20 or data[0] >> 4 != 4:
        return None
    header_len = (data[0] & 0x0F) * 4
    total_len = struct.unpack_from("!H", data, 2)[0]
    if header_len < 20 or total_len > len(data) or total_len < header_len:
        return None
    return (data[header_len:total_len], socket.inet_ntoa(data[12:16]), socket.inet_ntoa(data[16:20]),
            data[8])


def _split_ipv6(data: bytes, ancdata, address) -> tuple[bytes, str, str, int | None] | None:
    src = address[0].split("%", 1)[0]
    dst, hop_limit = None, None
    for level, kind, value in ancdata:
        if level != socket.IPPROTO_IPV6:
            continue
        if kind == socket.IPV6_HOPLIMIT and len(value) >= 4:
            hop_limit = struct.unpack("i", value[:4])[0]
        elif kind == socket.IPV6_PKTINFO and len(value) >= 16:
            dst = socket.inet_ntop(socket.AF_INET6, value[:16])
    if dst is None:
        return None
    return data, src, dst, hop_limit


class ChannelPool:
    """Shares VrrpChannels between instances and keeps them in step with the links."""

    def __init__(self, interfaces: InterfaceTable) -> None:
        self.interfaces = interfaces
        self.channels: dict[tuple[str, int], VrrpChannel] = {}
        interfaces.subscribe(self._on_link)

    def register(self, ifname: str, family: int, vrid: int, receiver: Receiver) -> VrrpChannel:
        key = (ifname, family)
        channel = self.channels.get(key)
        if channel is None:
            channel = VrrpChannel(ifname, family)
            channel.sync(self.interfaces.by_name(ifname))
            self.channels[key] = channel
        channel.receivers[vrid] = receiver
        return channel

    def unregister(self, ifname: str, family: int, vrid: int) -> None:
        channel = self.channels.get((ifname, family))
        if channel is None:
            return
        channel.receivers.pop(vrid, None)
        if not channel.receivers:
            channel.close()
            del self.channels[(ifname, family)]

    def _on_link(self, name: str) -> None:
        for (ifname, _), channel in self.channels.items():
            if ifname == name:
                try:
                    channel.sync(self.interfaces.by_name(name))
                except VrrpError as exc:
                    log.error("%s", exc)

    def close(self) -> None:
        self.interfaces.unsubscribe(self._on_link)
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()
