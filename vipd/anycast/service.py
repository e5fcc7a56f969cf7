"""Every `[[anycast]]` section of the config, run in the daemon's loop: the shell around
vipd.anycast.core. It owns the devices (vipd.anycast.device), feeds each core its tracks (the same
TrackSet as VRRP) and maintenance, and executes the announce/withdraw actions in order."""
from __future__ import annotations

import asyncio
import datetime
import logging
import os
import time
from typing import Callable, Mapping

from vipd.anycast import core
from vipd.anycast.config import AnycastConfig
from vipd.anycast.device import DeviceError, DeviceWorker, open_tun
from vipd.events import Emit, Kind, Level, log_only
from vipd.owner import CoreOwner
from vipd.vrrp.links import InterfaceTable, NetlinkMonitor
from vipd.vrrp.tracks import TrackSet

__all__ = ["AnycastOwner", "AnycastService", "DeviceError", "WITHDRAW_SETTLE"]

log = logging.getLogger("vipd.anycast")

# How long a stopping node keeps accepting after its withdrawal, so connections the routers still
# send here meanwhile are served: FRR took ~125 ms from the address change to the router's FIB
# (research/bgp-anycast-frr.md); the rest is room for slower routers.
WITHDRAW_SETTLE = 1.0


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class AnycastOwner(CoreOwner):
    """A VIP owner (vipd.owner.VipOwner): one `[[anycast]]` section."""

    kind = "anycast"

    def __init__(self, config: AnycastConfig, worker: DeviceWorker, *, link_up: Callable[[str], bool],
                 serving: Mapping[str, bool] | None, emit: Emit = log_only,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.worker = worker
        self.emit = emit
        self.clock = clock
        self.core = core.AnycastCore(since=clock())
        self.tracks = TrackSet(config.tracks, self._evaluate, link_up, serving)
        self._change: asyncio.Future | None = None      # the last device change asked for

    def set_maintenance(self, on: bool) -> None:
        """On: withdraw (established connections keep being served); off: announce when healthy."""
        if on != self.core.maintenance:
            self._dispatch(core.MaintenanceChanged(on))

    def _failing(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tracks.tracks if not t.ok)

    def _evaluate(self) -> None:
        self._dispatch(core.TracksChanged(self._failing()))

    def _dispatch(self, event: core.Event) -> None:
        for action in self.core.handle(event, self.clock()):
            self._execute(action)

    def _execute(self, action: core.Action) -> None:
        vips, device = self.config.virtual_ips, self.config.device
        if isinstance(action, core.Announce):
            # Address first: local delivery never lapses while the VIP moves from lo to the device.
            self.worker.add(device, vips)
            self._change = self.worker.stop_local_delivery(vips)
        elif isinstance(action, core.Withdraw):
            self.worker.deliver_locally(vips)
            self._change = self.worker.remove(device, vips)
        elif isinstance(action, core.StateChanged):
            expected = action.reason in ("stopping", "starting", "maintenance")
            self.emit(Kind.ANYCAST_STATE, self.name,
                      f"anycast {self.name}: {action.old.value} -> {action.new.value} ({action.reason})",
                      {"old": action.old.value, "new": action.new.value, "reason": action.reason},
                      level=Level.INFO if expected or action.new is core.AnycastState.ANNOUNCED else Level.WARNING,
                      logger=log)

    async def start(self) -> None:
        """Tracks running and first heard; announced from here on when they pass."""
        self.tracks.start()
        await self.tracks.wait_first_results(self.tracks.first_result_timeout)
        self.core.failing = self._failing()
        self._dispatch(core.Started())
        await self.settled()

    async def settled(self) -> None:
        if self._change is not None:
            await self._change

    async def update(self, config: AnycastConfig) -> None:
        """The same VIPs on the same device: only the tracks changed."""
        self.config = config
        await self.tracks.update(config.tracks)

    async def withdraw(self) -> None:
        """For good: the daemon stops or the section is gone. Local delivery stays until `close`."""
        self._dispatch(core.Stopping())
        await self.settled()

    async def close(self) -> None:
        await self.tracks.stop()
        self._dispatch(core.Stopping())
        self.worker.remove(self.config.device, self.config.virtual_ips)
        await self.worker.stop_local_delivery(self.config.virtual_ips)

    def status(self) -> dict:
        return {
            "name": self.name,
            "state": self.state,
            "virtual_ips": [str(v) for v in self.config.virtual_ips],
            "device": self.config.device,
            "maintenance": self.core.maintenance,
            "since": _utc(self.core.since),
            "reason": self.core.reason,
            "transitions": self.core.transitions,
            "tracks": self.tracks.status(),
        }


def needs_recreate(old: AnycastConfig, new: AnycastConfig) -> bool:
    return (old.virtual_ips, old.device) != (new.virtual_ips, new.device)


class AnycastService:
    def __init__(self, configs: tuple[AnycastConfig, ...], serving: Mapping[str, bool] | None = None,
                 emit: Emit = log_only, maintenance: Callable[[str], bool] = lambda name: False) -> None:
        self.configs = configs
        self.emit = emit
        self.maintenance = maintenance
        self.serving: dict[str, bool] = dict(serving or {})
        self.owners: dict[str, AnycastOwner] = {}
        self.devices: dict[str, int] = {}          # name -> the descriptor keeping it alive
        self.interfaces = InterfaceTable()
        self._monitor: NetlinkMonitor | None = None
        self._worker: DeviceWorker | None = None

    async def _open_devices(self, configs) -> None:
        for name in sorted({c.device for c in configs} - set(self.devices)):
            self.devices[name] = open_tun(name)
            log.info("anycast: created TUN device %s", name)
            await self._worker.set_up(name)

    def _close_devices(self, keep: set[str]) -> None:
        for name in sorted(set(self.devices) - keep):
            os.close(self.devices.pop(name))

    async def _follow_links(self, configs) -> None:
        if self._monitor is None and any(t.kind == "interface" for c in configs for t in c.tracks):
            self._monitor = NetlinkMonitor(self.interfaces)
            await self._monitor.start()
            self.interfaces.subscribe(self._on_link)

    def _on_link(self, name: str) -> None:
        for owner in self.owners.values():
            owner.tracks.links_changed()

    async def _start_owners(self, configs) -> None:
        created = []
        for c in configs:
            owner = AnycastOwner(c, self._worker, link_up=self.interfaces.link_up, serving=self.serving,
                                 emit=self.emit)
            owner.set_maintenance(self.maintenance(c.name))
            self.owners[c.name] = owner
            created.append(owner)
        await asyncio.gather(*(o.start() for o in created))

    async def start(self) -> None:
        """Devices up, stale local routes of a killed run gone, each owner announced if healthy."""
        if not self.configs:
            return
        self._worker = DeviceWorker()
        await self._worker.forget_stale(v for c in self.configs for v in c.virtual_ips)
        await self._open_devices(self.configs)
        await self._follow_links(self.configs)
        await self._start_owners(self.configs)

    async def reload(self, configs: tuple[AnycastConfig, ...]) -> None:
        wanted = {c.name: c for c in configs}
        self.configs = configs
        if self._worker is None:
            self._worker = DeviceWorker()
        gone = [o for name, o in self.owners.items() if name not in wanted or needs_recreate(o.config, wanted[name])]
        for owner in gone:
            del self.owners[owner.name]
        await asyncio.gather(*(o.close() for o in gone))
        await self._open_devices(configs)
        await self._follow_links(configs)
        await asyncio.gather(*(self.owners[n].update(c) for n, c in wanted.items()
                               if n in self.owners and self.owners[n].config != c))
        await self._start_owners([c for n, c in wanted.items() if n not in self.owners])
        self._close_devices({c.device for c in configs})

    async def withdraw(self, settle: float = WITHDRAW_SETTLE) -> None:
        """Every VIP withdrawn, still delivered locally; returns `settle` seconds later, when the
        routers have stopped sending new connections here."""
        if not self.owners:
            return
        await asyncio.gather(*(o.withdraw() for o in self.owners.values()))
        await asyncio.sleep(settle)

    async def close(self) -> None:
        """Local delivery ends, the devices go."""
        await asyncio.gather(*(o.close() for o in self.owners.values()))
        self.owners.clear()
        self._close_devices(set())
        if self._monitor is not None:
            self.interfaces.unsubscribe(self._on_link)
            await self._monitor.stop()
            self._monitor = None
        if self._worker is not None:
            await asyncio.to_thread(self._worker.close)
            self._worker = None

    def frontend_serving(self, name: str, serving: bool) -> None:
        self.serving[name] = serving
        for owner in self.owners.values():
            owner.tracks.frontend_serving(name, serving)

    def status(self) -> list[dict]:
        return [o.status() for o in self.owners.values()]
