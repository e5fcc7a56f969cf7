"""The device the announced VIPs live on, and the netlink changes made to it.

The device is a TUN device vipd opens without IFF_PERSIST: the kernel deletes it, with its
addresses, when the last descriptor closes, so a vipd killed by any means (SIGKILL, OOM) withdraws
its VIPs at once (FRR sees the connected routes go). A withdrawn VIP is delivered locally through a
`local` route on lo instead, which FRR does not redistribute (the local table) and which survives
the address going: the last address leaving a device flushes every route through that device.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import struct
from typing import Iterable

from vipd.vrrp.addresses import AddressWorker
from vipd.vrrp.links import VIP_ADDRESS_PROTO

log = logging.getLogger("vipd.anycast")

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
RT_TABLE_LOCAL = 255
# Above the kernel's own local route (metric 0), so both can be there while the VIP moves between
# the device and lo; the same protocol number as vipd's addresses, so a later run finds its own.
LOCAL_ROUTE_METRIC = 1024
LOCAL_ROUTE_PROTO = VIP_ADDRESS_PROTO


class DeviceError(Exception):
    """The device cannot be created: one line for the operator."""


def open_tun(name: str) -> int:
    """The descriptor holding TUN device `name` (made now, gone when it closes)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise DeviceError(f"cannot open /dev/net/tun: {exc.strerror or exc}") from None
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        why = {errno.EBUSY: "another process holds it (a second vipd?)",
               errno.EINVAL: "an interface of another type has that name",
               errno.EPERM: "creating a TUN device needs CAP_NET_ADMIN"}.get(exc.errno, exc.strerror)
        raise DeviceError(f"cannot create TUN device {name}: {why}") from None
    return fd


class DeviceWorker(AddressWorker):
    """AddressWorker's thread and order, plus the device's link and the VIPs' local routes."""

    def _set_up(self, ifname: str) -> None:
        ipr = self._ipr()
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise DeviceError(f"{ifname} vanished right after it was created")
        ipr.link("set", index=found[0], state="up")

    def _local_routes(self, command: str, vips: tuple) -> None:
        ipr = self._ipr()
        lo = ipr.link_lookup(ifname="lo")[0]
        for vip in vips:
            try:
                ipr.route(command, dst=str(vip.ip), dst_len=vip.max_prefixlen, family=_family(vip),
                          type="local", table=RT_TABLE_LOCAL, oif=lo, priority=LOCAL_ROUTE_METRIC,
                          proto=LOCAL_ROUTE_PROTO, scope=254)
            except Exception as exc:
                code = getattr(exc, "code", None)
                if (command, code) in (("add", errno.EEXIST), ("del", errno.ESRCH), ("del", errno.ENOENT)):
                    continue
                log.error("cannot %s the local route of %s: %s", command, vip, exc)

    def _forget_stale(self, keep: tuple) -> list[str]:
        """Local routes on lo a killed run left behind for VIPs no longer configured."""
        ipr = self._ipr()
        wanted = {str(v.ip) for v in keep}
        removed = []
        for family in (2, 10):
            for route in ipr.get_routes(family=family, table=RT_TABLE_LOCAL, proto=LOCAL_ROUTE_PROTO):
                if route.get("priority") != LOCAL_ROUTE_METRIC:
                    continue
                dst = route.get_attr("RTA_DST")
                if dst in wanted:
                    continue
                try:
                    ipr.route("del", dst=dst, dst_len=route["dst_len"], family=family, type="local",
                              table=RT_TABLE_LOCAL, priority=LOCAL_ROUTE_METRIC, proto=LOCAL_ROUTE_PROTO,
                              scope=route["scope"])
                    removed.append(dst)
                except Exception as exc:
                    log.warning("cannot remove the stale local route of %s: %s", dst, exc)
        return removed

    def set_up(self, ifname: str) -> asyncio.Future:
        return asyncio.wrap_future(self._executor.submit(self._set_up, ifname))

    def deliver_locally(self, vips: Iterable) -> asyncio.Future:
        return asyncio.wrap_future(self._executor.submit(self._local_routes, "add", tuple(vips)))

    def stop_local_delivery(self, vips: Iterable) -> asyncio.Future:
        return asyncio.wrap_future(self._executor.submit(self._local_routes, "del", tuple(vips)))

    def forget_stale(self, keep: Iterable) -> asyncio.Future:
        return asyncio.wrap_future(self._executor.submit(self._forget_stale, tuple(keep)))


def _family(vip) -> int:
    return 10 if vip.version == 6 else 2
