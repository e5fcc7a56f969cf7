"""Every `[[vrrp]]` instance of the config, run in the daemon's asyncio loop.

The service owns what the instances share: the netlink monitor and its interface table, one raw
VRRP socket per (interface, family), and the worker thread that changes addresses.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Callable, Mapping

from vipd.events import Emit, log_only
from vipd.vrrp.addresses import AddressWorker
from vipd.vrrp.config import VrrpConfig
from vipd.vrrp.handover import BridgePlan
from vipd.vrrp.instance import VrrpInstance, needs_recreate
from vipd.vrrp.links import InterfaceTable, NetlinkMonitor, VrrpError
from vipd.vrrp.sockets import ChannelPool

__all__ = ["VrrpService", "VrrpError"]

log = logging.getLogger("vipd.vrrp")


class VrrpService:
    def __init__(self, configs: tuple[VrrpConfig, ...], bridge: BridgePlan = BridgePlan(),
                 serving: Mapping[str, bool] | None = None, emit: Emit = log_only,
                 maintenance: Callable[[str], bool] = lambda name: False) -> None:
        self.configs = configs
        self.emit = emit
        self.bridge = bridge
        # Whether an instance starts in maintenance (the daemon's runtime state), asked at creation.
        self.maintenance = maintenance
        # The proxy's verdicts as last pushed (frontend_serving); new frontend tracks start from them.
        self.serving: dict[str, bool] = dict(serving or {})
        self.instances: dict[str, VrrpInstance] = {}
        self.interfaces = InterfaceTable()
        self._monitor: NetlinkMonitor | None = None
        self._channels: ChannelPool | None = None
        self._addresses: AddressWorker | None = None
        self._kept: list[VrrpInstance] = []

    async def _ensure_running(self) -> None:
        if self._monitor is not None:
            return
        monitor = NetlinkMonitor(self.interfaces)
        try:
            await monitor.start()
        except OSError as exc:
            raise VrrpError(f"cannot follow link state over netlink: {exc.strerror or exc}") from None
        self._monitor = monitor
        self._channels = ChannelPool(self.interfaces)
        self._addresses = AddressWorker()

    def _new_instance(self, vrrp) -> VrrpInstance:
        instance = VrrpInstance(vrrp, interfaces=self.interfaces, channels=self._channels,
                                addresses=self._addresses, serving=self.serving, bridge=self.bridge,
                                emit=self.emit)
        instance.set_maintenance(self.maintenance(vrrp.name))
        return instance

    async def _start_instances(self, configs) -> None:
        created = [self._new_instance(v) for v in configs]
        for instance in created:
            self.instances[instance.name] = instance
        results = await asyncio.gather(*(i.start() for i in created), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def start(self) -> None:
        """Sockets open, every instance running (BACKUP, or MASTER for an address owner)."""
        if not self.configs:
            return
        await self._ensure_running()
        await self._start_instances(self.configs)

    async def reload(self, configs: tuple[VrrpConfig, ...], bridge: BridgePlan) -> None:
        """Unchanged instances are left alone; changed ones are updated in place when they stay the
        same router (interface, VRID, version, family) and re-created otherwise; removed ones
        resign and release their VIPs; new ones start."""
        old = self.instances
        wanted = {v.name: v for v in configs}
        self.configs = configs
        self.bridge = bridge
        if wanted:
            await self._ensure_running()
        gone = [i for name, i in old.items() if name not in wanted or needs_recreate(i.config, wanted[name])]
        for instance in gone:
            log.info("vrrp %s: %s", instance.name,
                     "removed from the config" if instance.name not in wanted else "re-created for the new config")
            del self.instances[instance.name]
        await asyncio.gather(*(i.stop(handover=False) for i in gone))
        for instance in self.instances.values():
            instance.plan_bridge(bridge)
        updates = [self.instances[name].update(v) for name, v in wanted.items()
                   if name in self.instances and self.instances[name].config != v]
        await asyncio.gather(*updates)
        await self._start_instances([v for name, v in wanted.items() if name not in self.instances])

    async def shutdown(self, handover: bool = True, keep_vips: bool = False) -> None:
        """Every instance resigns (priority 0); returns once each released its VIPs, or, with
        keep_vips, once each completed hand-over holds them quietly until `release()`."""
        await asyncio.gather(*(i.stop(handover=handover, keep_vips=keep_vips) for i in self.instances.values()))
        self._kept = [i for i in self.instances.values() if i.kept_vips]
        self.instances.clear()
        if self._channels is not None:
            self._channels.close()
            self._channels = None
        if self._monitor is not None:
            await self._monitor.stop()
            self._monitor = None
        if not self._kept:
            await self._close_addresses()

    async def release(self) -> None:
        """Drop the VIPs that `shutdown(keep_vips=True)` kept."""
        kept, self._kept = self._kept, []
        await asyncio.gather(*(i.release() for i in kept))
        await self._close_addresses()

    async def _close_addresses(self) -> None:
        if self._addresses is not None:
            await asyncio.to_thread(self._addresses.close)
            self._addresses = None

    def frontend_serving(self, name: str, serving: bool) -> None:
        """The proxy pushed a new verdict on frontend `name`: every instance's frontend tracks
        record it."""
        self.serving[name] = serving
        for instance in self.instances.values():
            instance.tracks.frontend_serving(name, serving)

    def status(self) -> list[dict]:
        return [instance.status() for instance in self.instances.values()]
