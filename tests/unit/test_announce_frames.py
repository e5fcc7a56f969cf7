"""AnnouncementFrames: GARP/NA frames built off the loop, again only when the MAC or the VIPs change."""
from __future__ import annotations

import asyncio
import ipaddress

from vipd.vrrp.announce import AnnouncementFrames

V4 = ipaddress.ip_interface("198.18.0.100/24")
V6 = ipaddress.ip_interface("2001:db8::100/64")
MAC1, MAC2 = "02:00:00:00:00:01", "02:00:00:00:00:02"


def test_frames_are_built_once_per_mac_and_vips_and_not_without_a_mac() -> None:
    async def run() -> None:
        cache = AnnouncementFrames()
        cache.rebuild(None, [V4])
        assert cache.frames is None
        cache.rebuild(MAC1, [V4, V6])
        first = cache.frames
        arp, na = await first
        assert arp[:12] == bytes.fromhex("ffffffffffff020000000001") and arp[12:14] == b"\x08\x06"
        assert arp[-4:] == V4.ip.packed                      # ARP request for the VIP itself
        assert na[:6] == bytes.fromhex("333300000001") and na[12:14] == b"\x86\xdd"
        cache.rebuild(MAC1, (V4, V6))
        assert cache.frames is first                        # same MAC, same VIPs: no rebuild
        cache.rebuild(None, [V4, V6])                        # the link went away: keep what we have
        assert cache.frames is first
        cache.rebuild(MAC2, [V4, V6])
        assert cache.frames is not first
        assert [f[6:12] for f in await cache.frames] == [bytes.fromhex("020000000002")] * 2
        second = cache.frames
        cache.rebuild(MAC2, [V4])
        assert cache.frames is not second and len(await cache.frames) == 1

    asyncio.run(run())
