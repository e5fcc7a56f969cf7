"""Adding and removing VIPs through pyroute2, on one thread, in the order asked."""
from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import logging
import threading
from typing import Iterable

from vipd.vrrp.links import VIP_ADDRESS_PROTO

log = logging.getLogger("vipd.vrrp")

_IFA_F_NODAD = 0x02


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

    def _change(self, command: str, ifname: str, vips: tuple,
                lifetime: int | None = None) -> list[str]:
        done: list[str] = []
        ipr = self._ipr()
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            log.warning("cannot %s VIPs on %s: no such interface", command, ifname)
            return done
        for vip in vips:
            kwargs = {"index": found[0], "address": str(vip.ip), "prefixlen": vip.network.prefixlen}
            if command in ("add", "replace"):
                kwargs["proto"] = VIP_ADDRESS_PROTO
                if lifetime is not None:
                    kwargs["valid_lft"] = kwargs["preferred_lft"] = lifetime
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

    def add(self, ifname: str, vips: Iterable, lifetime: int | None = None) -> asyncio.Future:
        """With `lifetime` (whole seconds) the kernel itself deletes each VIP that long after the
        last add: calling add again refreshes it, so a holder that stops refreshing (killed,
        frozen, wedged) loses its VIPs without anyone's help."""
        command = "add" if lifetime is None else "replace"
        return asyncio.wrap_future(
            self._executor.submit(self._change, command, ifname, tuple(vips), lifetime))

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
