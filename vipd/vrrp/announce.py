"""Gratuitous ARP / unsolicited Neighbor Advertisement frames for VIPs, built with scapy once
and sent through a non-blocking AF_PACKET socket."""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Iterable

log = logging.getLogger("vipd.vrrp")


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


class AnnouncementFrames:
    """The frames for one interface's VIPs, built off the loop (scapy is slow to load) and built
    again only when the interface's MAC or the VIPs change. `frames` resolves to the latest build;
    None until a MAC is known."""

    def __init__(self) -> None:
        self.frames: asyncio.Future | None = None
        self._built_for: tuple | None = None

    def rebuild(self, mac: str | None, vips: Iterable) -> None:
        wanted = (mac, tuple(vips))
        if mac is None or wanted == self._built_for:
            return
        self._built_for = wanted
        self.frames = asyncio.ensure_future(asyncio.to_thread(build_gratuitous_frames, *wanted))


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
