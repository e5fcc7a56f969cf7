"""Raw IPPROTO_VRRP sockets: one per (interface, family), shared by that interface's
instances and demultiplexed by VRID, read without blocking the loop, with the kernel's receive
timestamp so a stalled loop does not age an advert.
"""
from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import struct
import time
from typing import Callable

from vipd.vrrp import packet
from vipd.vrrp.links import InterfaceTable, Link, VrrpError

log = logging.getLogger("vipd.vrrp")

IPPROTO_VRRP = packet.IPPROTO_VRRP
VRRP_GROUP = {socket.AF_INET: str(packet.VRRP_GROUPS[4]), socket.AF_INET6: str(packet.VRRP_GROUPS[6])}
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
IPTOS_PREC_INTERNETCONTROL = 0xC0
# Work per readiness callback: then the loop runs its timers (our adverts, the master-down timer)
# before reading on. A packet costs microseconds up to the costly checks, so this is a backlog of
# thousands per second and never a visible delay.
POLL_MAX_PACKETS = 128
POLL_MAX_SECONDS = 0.004
CATCH_UP_MAX_PACKETS = 2048
CATCH_UP_MAX_SECONDS = 0.02
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
RECEIVE_BUFFER = 4 << 20
# The largest VRRP packet: a 60-byte IPv4 header, 255 IPv6 addresses and v2's trailer, rounded up.
MAX_PACKET = 4352
# Errors that say the socket itself is gone (closed under us): it is reopened. Others (link down,
# no route, a firewall drop, no buffer space) pass with the condition that caused them.
SOCKET_LOST = frozenset({errno.EBADF, errno.ENOTSOCK})
# A socket that cannot be reopened is retried after this, doubling up to the maximum.
REOPEN_RETRY_FIRST = 0.5
REOPEN_RETRY_MAX = 10.0
# Classic BPF opcodes for the VRID filter.
_BPF_LDX_IP_HEADER_LEN = 0xB1   # X = 4 * (packet[k] & 0x0f)
_BPF_LD_BYTE_ABS = 0x30         # A = packet[k]
_BPF_LD_BYTE_IND = 0x50         # A = packet[X + k]
_BPF_JEQ = 0x15
_BPF_RET = 0x06


def vrid_filter(family: int, vrids) -> bytes:
    """A classic BPF program that lets through only VRRP messages for `vrids`: the kernel drops
    the rest before they are queued, so a flood for other VRIDs costs this process nothing. An
    IPv4 raw socket sees the IP header (its length in the first byte), an IPv6 one the payload."""
    vrids = sorted(set(vrids))[:255]
    if family == socket.AF_INET:
        program = [(_BPF_LDX_IP_HEADER_LEN, 0, 0, 0), (_BPF_LD_BYTE_IND, 0, 0, 1)]
    else:
        program = [(_BPF_LD_BYTE_ABS, 0, 0, 1)]
    n = len(vrids)
    program += [(_BPF_JEQ, n - j, 0, vrid) for j, vrid in enumerate(vrids)]
    program += [(_BPF_RET, 0, 0, 0), (_BPF_RET, 0, 0, 0xFFFF)]
    return b"".join(struct.pack("HBBI", *insn) for insn in program)


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
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None
        # Why the socket is lost and not reopened yet (the instances here are in FAULT), or None.
        self.fault: str | None = None
        self.watchers: list[Callable[[], None]] = []     # told when `fault` changes
        self._retry: asyncio.TimerHandle | None = None
        self._retry_delay = REOPEN_RETRY_FIRST

    @property
    def is_open(self) -> bool:
        return self._sock is not None

    def sync(self, link: Link | None, strict: bool = False) -> None:
        """Follow the interface: open once it exists, reopen when it was re-created. A socket that
        cannot be opened raises VrrpError with `strict`, and otherwise becomes this channel's
        fault, retried with backoff."""
        if link is None:
            self.close()
            return
        if self._sock is not None and self.index == link.index:
            return
        self.close()
        if strict:
            self.open(link.index)
        else:
            self._reopen(link.index)

    def _reopen(self, index: int) -> None:
        self._retry = None
        self._loop = asyncio.get_running_loop()
        try:
            self.open(index)
        except VrrpError as exc:
            self._set_fault(str(exc))
            self._retry = asyncio.get_running_loop().call_later(self._retry_delay, self._reopen, index)
            self._retry_delay = min(2 * self._retry_delay, REOPEN_RETRY_MAX)
            return
        self._retry_delay = REOPEN_RETRY_FIRST
        if self._sock is not None:
            if self.fault is not None:
                log.warning("%s: VRRP socket reopened", self.ifname)
            self._set_fault(None)

    def _set_fault(self, why: str | None) -> None:
        if why == self.fault:
            return
        self.fault = why
        # Later, not from inside a send: the instance may be executing its state machine's actions.
        for watcher in list(self.watchers):
            self._loop.call_soon(self._tell, watcher)

    def _tell(self, watcher: Callable[[], None]) -> None:
        try:
            watcher()
        except Exception:
            log.exception("%s: VRRP socket watcher failed", self.ifname)

    def _lost(self, exc: OSError) -> None:
        """The socket broke under us: open a new one on the same interface."""
        index = self.index
        log.error("%s: VRRP socket lost (%s); reopening it", self.ifname, exc.strerror or exc)
        self._close_socket()
        if index is not None:
            self._reopen(index)

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
            # Room for a few hundred milliseconds of a flood while the loop is busy elsewhere:
            # past net.core.rmem_max when the daemon may (CAP_NET_ADMIN), within it otherwise.
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
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
        self._fd = sock.fileno()
        self.index = index
        self.update_filter()
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._fd, self.poll)

    def update_filter(self) -> None:
        """Let the kernel drop what no receiver here wants (see vrid_filter); best effort."""
        if self._sock is None or not self.receivers:
            return
        program = vrid_filter(self.family, self.receivers)
        buffer = ctypes.create_string_buffer(program)
        fprog = struct.pack("HL", len(program) // 8, ctypes.addressof(buffer))
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
        except OSError as exc:
            log.warning("%s: no in-kernel VRID filter (%s); filtering in the daemon", self.ifname, exc)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        self._retry_delay = REOPEN_RETRY_FIRST
        self._close_socket()
        self._set_fault(None)

    def _close_socket(self) -> None:
        if self._sock is not None:
            # By the number it was registered under: a socket closed under us has fileno() -1.
            try:
                self._loop.remove_reader(self._fd)
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
            if exc.errno in SOCKET_LOST:
                self._lost(exc)
            else:
                log.debug("%s: VRRP advert %s -> %s not sent: %s", self.ifname, src, dst, exc.strerror or exc)
            return False

    def poll(self, until: float | None = None) -> bool:
        """Hand waiting packets to their instance, stamped with their arrival time, so a loop that
        was busy for a while does not mistake adverts still in the queue for silence. Bounded in
        count and time: what is left is read on the loop's next turn.

        With `until` (before a timer fires) it reads on, within a larger bound, until a packet that
        arrived after `until`. True when nothing that arrived by then is left unread."""
        if until is None:
            limit, stop = POLL_MAX_PACKETS, time.monotonic() + POLL_MAX_SECONDS
        else:
            limit, stop = CATCH_UP_MAX_PACKETS, time.monotonic() + CATCH_UP_MAX_SECONDS
        for _ in range(limit):
            if self._sock is None:
                return True
            try:
                data, ancdata, flags, address = self._sock.recvmsg(MAX_PACKET, 512)
            except (BlockingIOError, InterruptedError):
                return True
            except OSError as exc:
                if exc.errno in SOCKET_LOST:
                    self._lost(exc)
                else:
                    log.debug("%s: VRRP receive error: %s", self.ifname, exc)
                return True
            arrival = _arrival(ancdata)
            if flags & socket.MSG_TRUNC:
                self.rx_errors.record(packet.Invalid("length", "longer than any VRRP packet"), address[0])
            else:
                parsed = _split_ipv4(data) if self.family == socket.AF_INET else _split_ipv6(data, ancdata, address)
                if parsed is not None:
                    self._deliver(*parsed, arrival)
            if until is not None and arrival > until:
                return True
            if time.monotonic() >= stop:
                return False
        return False

    def _deliver(self, payload: bytes, src: str, dst: str, ttl: int | None, arrival: float) -> None:
        receiver = self.receivers.get(payload[1]) if len(payload) >= 2 else None
        if receiver is None:
            # Nothing here runs this VRID: counted from the header byte, never decoded.
            self.rx_errors.record(packet.Invalid("vrid", "not configured here") if len(payload) >= 2
                                  else packet.Invalid("length", f"{len(payload)} bytes"), src)
            return
        try:
            receiver(payload, src, dst, ttl, arrival)
        except Exception:
            log.exception("%s: VRRP receive handler failed for a packet from %s", self.ifname, src)


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
            channel.sync(self.interfaces.by_name(ifname), strict=True)
            self.channels[key] = channel
        channel.receivers[vrid] = receiver
        channel.update_filter()
        return channel

    def unregister(self, ifname: str, family: int, vrid: int) -> None:
        channel = self.channels.get((ifname, family))
        if channel is None:
            return
        channel.receivers.pop(vrid, None)
        channel.update_filter()
        if not channel.receivers:
            channel.close()
            del self.channels[(ifname, family)]

    def _on_link(self, name: str) -> None:
        for (ifname, _), channel in self.channels.items():
            if ifname == name:
                channel.sync(self.interfaces.by_name(name))

    def close(self) -> None:
        self.interfaces.unsubscribe(self._on_link)
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()
