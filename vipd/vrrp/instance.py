"""One VRRP instance: drives the pure state machine (`vipd.vrrp.fsm`) from the clock, received adverts,
link state and tracks, and carries out its actions on the network (vipd.vrrp.sockets, addresses,
announce, handover). It decides nothing the state machine could: it feeds events and executes actions.

The state machine's timer is a `loop.call_at`; events are handled as they arrive. Every slow
thing (VIP changes, scripts, frame building) runs in a thread or a subprocess, so adverts go out
on time whatever else happens.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import logging
import math
import socket
import time
from typing import Callable, Mapping

from lbproxy.restarts import Backoff
from vipd.events import Emit, Kind, Level, log_only
from vipd.vrrp import fsm, handover, packet
from vipd.vrrp.addresses import AddressWorker
from vipd.vrrp.announce import AnnouncementFrames, FrameSender
from vipd.vrrp.config import VrrpConfig
from vipd.vrrp.links import InterfaceTable
from vipd.vrrp.notify import NotifyQueue
from vipd.vrrp.sockets import VRRP_GROUP, ChannelPool, VrrpChannel
from vipd.vrrp.tracks import TrackSet

log = logging.getLogger("vipd.vrrp")

NO_ADDRESS = {socket.AF_INET: "0.0.0.0", socket.AF_INET6: "::"}
STOP_SAFETY_MARGIN = 5.0
# Self-fencing: a held VIP carries a kernel lifetime, renewed this often from the loop that sends
# the adverts, so a daemon killed, frozen or wedged loses its VIPs without anyone's help.
VIP_REFRESH_PERIOD = 1.0


def vip_lifetime(advert_interval: float) -> int:
    """Whole seconds a VIP outlives its last refresh: three refresh periods (a loop stall of two
    seconds costs nothing), and no shorter than a backup waits before it takes over (three
    adverts and Skew_Time: under an interval in v3, under a second in v2), so that the VIPs expire
    only once a backup holds them."""
    return max(math.ceil(3 * VIP_REFRESH_PERIOD), math.ceil(3 * advert_interval + max(advert_interval, 1.0)))


def _utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def needs_recreate(old: VrrpConfig, new: VrrpConfig) -> bool:
    """True when `new` is another router, not the same one reconfigured."""
    return (old.interface, old.vrid, old.version, old.family) != (new.interface, new.vrid, new.version, new.family)


def encode_advert(c: VrrpConfig, priority: int, src: str, dst: str) -> bytes:
    """The advert `c` sends from `src` to `dst` (without the IP header)."""
    advert = packet.Advert(
        c.version, c.vrid, priority, c.advert_interval_cs, tuple(v.ip for v in c.virtual_ips),
        packet.AUTH_SIMPLE_PASSWORD if c.auth_pass else packet.AUTH_NONE,
        packet.password_bytes(c.auth_pass) if c.auth_pass else b"")
    return packet.encode(advert, src=src, dst=dst, checksum_mode=c.checksum_mode)


def destinations(c: VrrpConfig) -> list[str]:
    return list(c.unicast_peers) or [VRRP_GROUP[c.family]]


class VrrpInstance:
    """A VIP owner (vipd.owner.VipOwner)."""

    kind = "vrrp"

    def __init__(self, config: VrrpConfig, *, interfaces: InterfaceTable, channels: ChannelPool,
                 addresses: AddressWorker, serving: Mapping[str, bool] | None = None,
                 bridge: handover.BridgePlan = handover.BridgePlan(),
                 clock: Callable[[], float] = time.monotonic, emit: Emit = log_only) -> None:
        self.config = config
        self.emit = emit
        self.interfaces = interfaces
        self.channels = channels
        self.addresses = addresses
        self.clock = clock
        self._started = False
        self.bridge = handover.Bridge(config.vrid, config.interface)
        self.plan_bridge(bridge)
        self.router = fsm.VrrpRouter(self._params(NO_ADDRESS[config.family]))
        self._receive_checks = self._checks_for(config)
        self.tracks = TrackSet(config.tracks, self._evaluate, interfaces.link_up, serving)
        self.notify = NotifyQueue(config.name)
        self.rx_errors = packet.RxErrors(f"vrrp {config.name}")
        self._sources = packet.SourceLimiter()
        self._strangers = packet.SourceLimiter(rate=1000.0, burst=200.0, max_sources=1)
        self.channel: VrrpChannel | None = None
        self.frames = FrameSender(config.interface)
        self.since = _utc_now()
        self.transitions = 0
        self.adverts_sent = 0
        self.adverts_received = 0
        # The faults only the shell sees happen (the kernel refused a VIP): reason -> words.
        self._vip_fault: dict[str, str] = {}
        self._vip_retry: asyncio.TimerHandle | None = None
        self._vip_backoff = Backoff(fsm.VIP_RETRY_FIRST, fsm.VIP_RETRY_MAX)
        self._unmanaged: set = set()        # configured VIPs that are the host's own addresses
        self._holding = False
        self._refreshed_at = 0.0
        self._vips_seen: set = set()         # managed VIPs netlink showed on the link while held
        self._vip_change: asyncio.Future | None = None
        self.announcement = AnnouncementFrames()
        self._garp: asyncio.Task | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._encoded: dict[tuple, bytes] = {}
        self._resigned = asyncio.Event()     # stopped, or holding the VIPs quietly for the drain
        self._bug_reported: dict[tuple, float] = {}
        self._last_now = 0.0
        self._maintenance = False
        self.quiet = handover.QuietHold(config.vrid, f"vrrp {config.name}")

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def state(self) -> str:
        return self.router.state.value

    @property
    def fault_reasons(self) -> set[str]:
        return set(self.router.faults)

    @property
    def maintenance(self) -> bool:
        return self._maintenance

    def set_maintenance(self, on: bool) -> None:
        """Out of service (a MASTER hands over first) or back; before start() too."""
        if on == self._maintenance:
            return
        self._maintenance = on
        if self._started:
            log.info("vrrp %s: maintenance %s", self.name, "on: never master until it is off" if on else "off")
        self._dispatch(fsm.MaintenanceChanged(on))

    # ---------------------------------------------------------------- configuration

    @property
    def kept_vips(self) -> list:
        """The VIPs a completed hand-over holds quietly until `release()`."""
        return self.quiet.vips

    def _params(self, primary: str) -> fsm.RouterParams:
        c = self.config
        return fsm.RouterParams(
            vrid=c.vrid, version=c.version, priority=c.priority, advert_interval=c.advert_interval,
            primary_address=primary, preempt=c.preempt, preempt_delay=c.preempt_delay,
            handover_timeout=c.effective_handover_timeout,
            # Given up to another router, the VIPs stay (quietly) while its bridge sends us our
            # connections in flight; without a bridge (no proxy ports, IPv6) they go at once.
            quiet_hold=self.bridge.plan.seconds)

    @staticmethod
    def _checks_for(c: VrrpConfig) -> packet.ReceiveChecks:
        """The receive checks for this config, parsed once rather than per packet."""
        return packet.ReceiveChecks(
            vrid=c.vrid, version=c.version, peers=frozenset(ipaddress.ip_address(p) for p in c.unicast_peers),
            auth_type=packet.AUTH_SIMPLE_PASSWORD if c.auth_pass else packet.AUTH_NONE,
            auth_data=packet.password_bytes(c.auth_pass) if c.auth_pass else b"",
            interval_cs=c.advert_interval_cs if c.version == 2 else None, unicast_ttl=c.unicast_ttl)

    def _find_primary(self) -> str | None:
        c = self.config
        if c.unicast_src:
            return c.unicast_src
        link = self.interfaces.by_name(c.interface)
        if link is None:
            return None
        if c.family == socket.AF_INET6:
            return link.link_local()
        return link.primary_ipv4(exclude=[str(v.ip) for v in self._managed_vips()])

    def _managed_vips(self) -> list:
        return [v for v in self.config.virtual_ips if v not in self._unmanaged]

    def _encode(self, priority: int, src: str, dst: str) -> bytes:
        key = (priority, src, dst)
        payload = self._encoded.get(key)
        if payload is None:
            payload = encode_advert(self.config, priority, src, dst)
            if len(self._encoded) > 64:
                self._encoded.clear()
            self._encoded[key] = payload
        return payload

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        c = self.config
        link = self.interfaces.by_name(c.interface)
        stale = []
        for vip in c.virtual_ips:
            present = link.has(str(vip.ip)) if link is not None else None
            if present is None:
                continue
            if present.ours or c.priority != packet.OWNER_PRIORITY:
                stale.append(vip)
            else:
                self._unmanaged.add(vip)
                log.info("vrrp %s: %s is an address of %s already; as address owner it is left in place",
                         self.name, vip, c.interface)
        if stale:
            log.warning("vrrp %s: removing VIPs left on %s by an earlier run: %s", self.name, c.interface,
                        ", ".join(map(str, stale)))
            await self.addresses.remove(c.interface, stale)
        if c.family == socket.AF_INET:
            await handover.clear_leftovers(c.vrid)
        self.channel = self.channels.register(c.interface, c.family, c.vrid, self._on_packet)
        self.channel.watchers.append(self._evaluate)
        self.interfaces.subscribe(self._on_link)
        self._rebuild_frames()
        self.tracks.start()
        await self.tracks.wait_first_results(self.tracks.first_result_timeout)
        log.info("vrrp %s: starting on %s (vrid %d, VRRPv%d, priority %d, %s)", self.name, c.interface, c.vrid,
                 c.version, c.priority, "unicast to " + ", ".join(c.unicast_peers) if c.unicast_peers else "multicast")
        self._started = True
        self._evaluate()
        if not self.fault_reasons:
            self._dispatch(fsm.Startup())

    async def update(self, config: VrrpConfig) -> None:
        """Apply a changed config to the running router (same interface, VRID, version, family)."""
        old = self.config
        self.config = config
        self._receive_checks = self._checks_for(config)
        self._encoded.clear()
        self.notify.name = config.name
        for vip in config.virtual_ips:
            if vip not in old.virtual_ips and config.priority == packet.OWNER_PRIORITY:
                link = self.interfaces.by_name(config.interface)
                present = link.has(str(vip.ip)) if link is not None else None
                if present is not None and not present.ours:
                    self._unmanaged.add(vip)
        self._unmanaged &= set(config.virtual_ips)
        self._execute(self.router.update_params(self._params(self.router.params.primary_address), self.clock()))
        if old.virtual_ips != config.virtual_ips:
            dropped = [v for v in old.virtual_ips if v not in config.virtual_ips and v not in self._unmanaged]
            if dropped:
                self._vip_change = self.addresses.remove(config.interface, dropped)
            if self._holding:
                self._add_vips()
            self._rebuild_frames()
            if self._holding:
                self._start_garp()
        await self.tracks.update(config.tracks)
        self._evaluate()
        self._schedule()
        log.info("vrrp %s: configuration updated in place", self.name)

    async def stop(self, handover: bool = True, keep_vips: bool = False) -> None:
        """Resign (priority 0) and release the VIPs; with handover, keep them until the new master
        is heard or the handover timeout passes. With keep_vips, a completed hand-over keeps them,
        silent on ARP, for `release()` (the proxy drains meanwhile)."""
        if self._started and not self.router.stopped:
            # Only nftables can silence ARP for the VIPs: IPv4 only.
            drain = keep_vips and self.config.family == socket.AF_INET
            self._dispatch(fsm.Shutdown(handover=handover, drain=drain))
            limit = (self.config.effective_handover_timeout if handover else 0.0) + STOP_SAFETY_MARGIN
            try:
                await asyncio.wait_for(self._resigned.wait(), limit)
            except asyncio.TimeoutError:
                self._dispatch(fsm.Shutdown())
        self._started = False
        self._cancel_timer()
        self._cancel_garp()
        if self._vip_retry is not None:
            self._vip_retry.cancel()
            self._vip_retry = None
        await self.bridge.end()
        if self._holding:   # only if the state machine failed (a bug): never leave VIPs behind
            self._remove_vips()
        await self._vip_change_done()
        self.interfaces.unsubscribe(self._on_link)
        if self.channel is not None:
            if self._evaluate in self.channel.watchers:
                self.channel.watchers.remove(self._evaluate)
            self.channels.unregister(self.config.interface, self.config.family, self.config.vrid)
            self.channel = None
        self.frames.close()
        await self.tracks.stop()
        if not self.router.holds_vips_quietly:
            await self._close_notify()
        elif not self.kept_vips:
            await self.release()   # every VIP is an address of the host's own: no drain to wait for

    async def release(self) -> None:
        """Drop the VIPs a completed hand-over kept (see stop): the drain is over."""
        if not self.router.holds_vips_quietly:
            return
        self._dispatch(fsm.Drained())
        await self._vip_change_done()
        await self._close_notify()

    async def _vip_change_done(self) -> None:
        if self._vip_change is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._vip_change), 10)
            except Exception as exc:
                log.error("vrrp %s: releasing VIPs: %s", self.name, exc)

    async def _close_notify(self) -> None:
        await self.notify.drain()
        await self.notify.close()

    # ---------------------------------------------------------------- inputs

    def plan_bridge(self, plan: handover.BridgePlan) -> None:
        """The proxy's ports and drain time, for the next hand-over."""
        self.bridge.plan = plan.where(ipv4=self.config.family == socket.AF_INET)
        if self._started:
            self._execute(self.router.update_params(self._params(self.router.params.primary_address), self.clock()))

    def _on_link(self, name: str) -> None:
        if name == self.config.interface:
            self._rebuild_frames()
            self._check_vips_present()
        self.tracks.links_changed()
        self._evaluate()

    def _evaluate(self) -> None:
        """Bring the router in line with link state, primary address and tracks."""
        if not self._started or self.router.stopped:
            return
        primary = self._find_primary()
        if primary is not None and primary != self.router.params.primary_address:
            if self.router.params.primary_address != NO_ADDRESS[self.config.family]:
                log.info("vrrp %s: primary address is now %s", self.name, primary)
            self._encoded.clear()
            self._execute(self.router.update_params(self._params(primary), self.clock()))
        reasons = self._current_faults(primary)
        known = self.router.faults
        if reasons != known:
            if reasons - known:
                log.warning("vrrp %s: fault: %s", self.name, ", ".join(sorted(reasons)))
            elif known:
                log.info("vrrp %s: fault cleared: %s", self.name, ", ".join(sorted(known - reasons)))
        priority = self.tracks.effective_priority(self.config.priority)
        if priority != self.router.effective_priority:
            old = self.router.effective_priority
            failing = [t["name"] for t in self.tracks.status() if not t["ok"]]
            self.emit(Kind.VRRP_PRIORITY, self.name, f"vrrp {self.name}: effective priority {old} -> {priority}"
                      + (f" (failing: {', '.join(failing)})" if failing else ""),
                      {"old": old, "new": priority, "failing": failing}, logger=log)
            self._dispatch(fsm.PriorityChanged(priority))
        for reason in sorted(reasons - known):
            self._dispatch(fsm.FaultRaised(reason))
        for reason in sorted(known - reasons):
            self._dispatch(fsm.FaultCleared(reason))

    def _current_faults(self, primary: str | None) -> set[str]:
        c = self.config
        reasons = set(self.tracks.fault_reasons())
        if not self.interfaces.link_up(c.interface):
            reasons.add(fsm.fault_reason(fsm.Fault.LINK, c.interface))
        if primary is None:
            reasons.add(fsm.fault_reason(fsm.Fault.NO_ADDRESS))
        if self.interfaces.monitor_fault is not None:
            reasons.add(fsm.fault_reason(fsm.Fault.NETLINK))
        if self.channel is not None and self.channel.fault is not None:
            reasons.add(fsm.fault_reason(fsm.Fault.SOCKET, c.interface))
        reasons.update(self._vip_fault)
        return reasons

    def _on_packet(self, payload: bytes, src: str, dst: str, ttl: int | None, arrival: float | None = None) -> None:
        if not self._started:
            return
        checks = self._receive_checks
        result = checks.screen(payload, src=src, dst=dst, ttl=ttl, own=self.router.params.primary_address)
        if not isinstance(result, packet.Invalid):
            result = self._admit(src, arrival or self.clock()) or result
        if not isinstance(result, packet.Invalid):
            result = checks.finish(result)
        if isinstance(result, packet.Invalid):
            self.rx_errors.record(result, src)
            return
        self.adverts_received += 1
        self._dispatch(fsm.AdvertReceived(src, result.priority, result.interval), arrival)

    def _admit(self, src: str, now: float) -> packet.Invalid | None:
        """Budgets for the costly checks: one per sender, and one shared by every sender but the
        master we follow, so a flood from spoofed sources cannot crowd out the master's adverts."""
        if not self._sources.admit(src, now):
            return packet.Invalid("flood", f"more than {self._sources.rate:g} packets/s from this sender")
        if src != self.router.master and not self._strangers.admit(None, now):
            return packet.Invalid("flood", f"more than {self._strangers.rate:g} packets/s from senders "
                                           "other than the master")
        return None

    # ---------------------------------------------------------------- the state machine

    def _dispatch(self, event, now: float | None = None) -> None:
        if self.router.stopped:
            return
        if not isinstance(event, fsm.VipsLost):
            # Said before anything else, above all before the adverts that fell due meanwhile.
            self._tell_if_vips_expired()
        # Never hand the router a time before one it has already seen.
        now = self._last_now = max(self._last_now, self.clock() if now is None else now)
        try:
            actions = self.router.handle(event, now)
        except Exception as exc:
            self._report_bug(f"handling {event!r}", exc)
            actions = []
        self._execute(actions)
        if self.router.stopped or self.router.holds_vips_quietly:
            self._resigned.set()
        self._schedule()

    def _report_bug(self, what: str, exc: Exception) -> None:
        """To the loop's exception handler: the daemon's resigns and exits (vipd.daemon); outside
        it, the default one logs. A bug that fires every advert interval must not flood the log:
        once a minute per kind."""
        key = (what.split("(")[0], type(exc).__name__)
        now = self.clock()
        if now - self._bug_reported.get(key, -3600.0) >= 60.0:
            self._bug_reported[key] = now
            message = f"vrrp {self.name}: {what} failed"
            try:
                asyncio.get_running_loop().call_exception_handler({"message": message, "exception": exc})
            except RuntimeError:
                log.error("%s", message, exc_info=exc)

    def _schedule(self) -> None:
        self._cancel_timer()
        deadline = self.router.next_deadline()
        if deadline is None or not self._started:
            return
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(loop.time() + max(0.0, deadline - self.clock()), self._on_timer, deadline)

    def _on_timer(self, deadline: float) -> None:
        self._timer = None
        if self.channel is not None:
            # Adverts that arrived before the deadline count, even if read late.
            caught_up = self.channel.poll(until=deadline)
            if self.router.stopped or self._timer is not None:   # stopped, or an advert moved the timer
                return
            if not caught_up and self.router.state is fsm.State.BACKUP:
                # A flood still queues packets from before the deadline: the master's advert may be
                # among them. Read on, a turn of the loop later, before declaring it gone.
                self._timer = asyncio.get_running_loop().call_later(0, self._on_timer, deadline)
                return
        # The loop's timer may fire a hair before the monotonic clock reaches the deadline.
        self._dispatch(fsm.Timeout(), max(self.clock(), deadline))

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _execute(self, actions: list) -> None:
        for action in actions:
            try:
                self._execute_one(action)
            except Exception as exc:
                self._report_bug(f"executing {action!r}", exc)

    def _execute_one(self, action) -> None:
        if isinstance(action, fsm.SendAdvert):
            self._send_advert(action.priority)
        elif isinstance(action, fsm.AddVips):
            self._add_vips()
        elif isinstance(action, fsm.RemoveVips):
            self._remove_vips()
        elif isinstance(action, fsm.HoldVipsQuietly):
            self._hold_quietly()
        elif isinstance(action, fsm.ReleaseVips):
            log.info("vrrp %s: releasing the VIPs held quietly (%s)", self.name, action.reason)
            # Queued now, so a later AddVips (rejoining after maintenance) comes after it, and no
            # renewal after it.
            self.quiet.stop_refreshing()
            removed = self.addresses.remove(self.config.interface, self.quiet.vips)
            self._vip_change = asyncio.ensure_future(self.quiet.release(lambda vips: removed))
        elif isinstance(action, fsm.PrepareBridge):
            self.bridge.prepare(action.predecessor, [v.ip for v in self._managed_vips()])
        elif isinstance(action, fsm.SendGratuitous):
            self._start_garp()
        elif isinstance(action, fsm.StateChanged):
            self._on_state_changed(action)
        elif isinstance(action, fsm.Stopped):
            self._resigned.set()
            self.notify.transition(self.config.notify, "STOP", self.router.effective_priority, self._vip_change)

    def _send_advert(self, priority: int) -> None:
        self._refresh_vips()
        src = self.router.params.primary_address
        if self.channel is None or src == NO_ADDRESS[self.config.family]:
            return
        sent = False
        for dst in destinations(self.config):
            sent |= self.channel.send(self._encode(priority, src, dst), src, dst)
        if sent:
            self.adverts_sent += 1

    def _add_vips(self) -> None:
        self._holding = True
        self._refreshed_at = self.clock()
        change = self._vip_change = self.addresses.add(self.config.interface, self._managed_vips(),
                                                       vip_lifetime(self.config.advert_interval))
        change.add_done_callback(self._vips_added)

    def _vips_added(self, change: asyncio.Future) -> None:
        if change.cancelled():
            return
        failed = {"VIPs": str(change.exception())} if change.exception() else change.result().failed
        if not failed:
            self._vip_backoff.reset()
            return
        if not self._holding or not self._started or self._vip_fault:
            return
        where = self.config.interface
        self._vip_fault = {fsm.fault_reason(fsm.Fault.VIP_ADD, where): f"cannot add {', '.join(failed)} on {where}: "
                           + "; ".join(sorted(set(failed.values())))}
        delay = self._vip_backoff.next()
        log.error("vrrp %s: %s; FAULT, trying again in %gs", self.name, *self._vip_fault.values(), delay)
        self._vip_retry = asyncio.get_running_loop().call_later(delay, self._retry_vips)
        self._evaluate()

    def _retry_vips(self) -> None:
        self._vip_retry = None
        self._vip_fault = {}
        self._evaluate()

    def _refresh_vips(self, due_only: bool = True) -> asyncio.Future | None:
        """Renew the VIPs' lifetime (at most once a refresh period): called as adverts go out."""
        now = self.clock()
        # Half an interval early rather than an interval late: adverts and renewals share a grid.
        due = self._refreshed_at + VIP_REFRESH_PERIOD - self.config.advert_interval / 2
        if not self._holding or (due_only and now < due):
            return None
        self._refreshed_at = now
        change = self.addresses.add(self.config.interface, self._managed_vips(),
                                    vip_lifetime(self.config.advert_interval))
        change.add_done_callback(self._vips_added)     # a refused renewal is a refused add: FAULT
        return change

    def _report_failure(self, change: asyncio.Future, what: str) -> None:
        def done(future: asyncio.Future) -> None:
            if future.cancelled():
                return
            if future.exception() is not None:
                log.error("vrrp %s: %s: %s", self.name, what, future.exception())
            elif future.result().failed:
                log.error("vrrp %s: %s: %s", self.name, what, future.result().failed)
        change.add_done_callback(done)

    def _check_vips_present(self) -> None:
        """A held VIP gone from the link: when its lifetime ran out (this process was frozen or its
        loop stalled), the router steps down (VipsLost); when someone deleted it, it is added again
        at once and announced. Until netlink first shows a VIP (the add is in flight) its absence
        says nothing."""
        link = self.interfaces.by_name(self.config.interface)
        if not self._holding or link is None:
            self._vips_seen.clear()
            return
        managed = self._managed_vips()
        present = {v for v in managed if link.has(str(v.ip)) is not None}
        vanished = (self._vips_seen & set(managed)) - present
        self._vips_seen = present
        if not vanished or self.router.state is not fsm.State.MASTER:
            return
        if self._tell_if_vips_expired():
            return
        log.warning("vrrp %s: %s vanished from %s while master; adding again", self.name,
                    ", ".join(map(str, sorted(vanished, key=str))), self.config.interface)
        self._vip_change = self._refresh_vips(due_only=False)
        self._start_garp()

    def _tell_if_vips_expired(self) -> bool:
        """Frozen or stalled past the VIPs' lifetime: the kernel has dropped them, and a backup
        holds them by now; the router hears VipsLost."""
        late = self.clock() - self._refreshed_at
        if not self._holding or late < vip_lifetime(self.config.advert_interval):
            return False
        log.warning("vrrp %s: the VIPs expired, %.1fs after their last renewal (was this process stopped "
                    "or its loop stalled?)", self.name, late)
        self._dispatch(fsm.VipsLost())
        return True

    def _remove_vips(self) -> None:
        self._give_up_vips()
        self._vip_change = self.addresses.remove(self.config.interface, self._managed_vips())

    def _hold_quietly(self) -> None:
        self._give_up_vips()
        lifetime = vip_lifetime(self.config.advert_interval)
        self.quiet.hold(self._managed_vips(), lambda vips: self.addresses.remove(self.config.interface, vips),
                        VIP_REFRESH_PERIOD,
                        lambda vips: self._report_failure(self.addresses.add(self.config.interface, vips, lifetime),
                                                          "renewing VIPs held quietly"))

    def _give_up_vips(self) -> None:
        # No more gratuitous ARP for VIPs we no longer serve, nor a bridge for their connections.
        self._holding = False
        self._vips_seen.clear()
        self._cancel_garp()
        self.bridge.end_soon()

    def _on_state_changed(self, change: fsm.StateChanged) -> None:
        self.since = _utc_now()
        self.transitions += 1
        priority, master = self.router.effective_priority, self.router.master
        self.emit(Kind.VRRP_STATE, self.name,
                  f"vrrp {self.name}: {change.old.value} -> {change.new.value} ({change.reason}), "
                  f"priority {priority}, master {master or 'unknown'}",
                  {"old": change.old.value, "new": change.new.value, "reason": change.reason,
                   "priority": priority, "master": master},
                  level=Level.WARNING if change.new is fsm.State.FAULT else Level.INFO, logger=log)
        if change.new is not fsm.State.MASTER:
            self._cancel_garp()
        self.notify.transition(self.config.notify, change.new.value, priority, self._vip_change)

    # ---------------------------------------------------------------- gratuitous ARP / NA

    def _rebuild_frames(self) -> None:
        link = self.interfaces.by_name(self.config.interface)
        self.announcement.rebuild(link.mac if link else None, self.config.virtual_ips)

    def _start_garp(self) -> None:
        self._cancel_garp()
        if self.config.garp_repeat <= 0 or self.announcement.frames is None:
            return
        self._garp = asyncio.create_task(self._garp_burst(self.announcement.frames, self._vip_change),
                                         name=f"garp {self.name}")

    async def _garp_burst(self, frames_future: asyncio.Future, after: asyncio.Future | None) -> None:
        try:
            if after is not None:
                await asyncio.shield(after)
            frames = await asyncio.shield(frames_future)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("vrrp %s: no gratuitous ARP/NA: %s", self.name, exc)
            return
        for i in range(self.config.garp_repeat):
            if self.router.state is not fsm.State.MASTER:
                return
            self.frames.send(frames)
            if self.config.garp_interval > 0 and i + 1 < self.config.garp_repeat:
                await asyncio.sleep(self.config.garp_interval)

    def _cancel_garp(self) -> None:
        if self._garp is not None:
            self._garp.cancel()
            self._garp = None

    # ---------------------------------------------------------------- status

    def _fault_reason(self) -> str | None:
        words = []
        for reason in sorted(self.fault_reasons):
            kind, _, what = reason.partition(":")
            if kind == "link":
                words.append(f"link {what} is down")
            elif kind == "track":
                words.append(f"track {what} is failing (weight 0)")
            elif kind == "no_address":
                words.append(f"no usable address on {self.config.interface}")
            elif kind == fsm.Fault.NETLINK:
                words.append(f"link state is not followed (netlink: {self.interfaces.monitor_fault})")
            elif kind == fsm.Fault.SOCKET:
                words.append(f"VRRP socket on {what} lost: {self.channel.fault if self.channel else 'closed'}")
            elif reason in self._vip_fault:
                words.append(self._vip_fault[reason])
            else:
                words.append(reason)
        return "; ".join(words) or None

    def status(self) -> dict:
        c = self.config
        invalid = {reason: n for reason, n in self.rx_errors.counts.items() if n}
        return {
            "name": c.name,
            "state": self.router.state.value,
            "vrid": c.vrid,
            "interface": c.interface,
            "version": c.version,
            "priority": c.priority,
            "effective_priority": self.router.effective_priority,
            "virtual_ips": [str(v) for v in c.virtual_ips],
            "master": self.router.master,
            "since": self.since,
            "tracks": self.tracks.status(),
            "adverts_sent": self.adverts_sent,
            "adverts_received": self.adverts_received,
            "invalid": invalid,
            "transitions": self.transitions,
            "fault_reasons": sorted(self.fault_reasons),
            "fault_reason": self._fault_reason(),
            "master_advert_interval": self.router.master_adver_interval,
            "unicast_peers": list(c.unicast_peers),
            "handing_over": self.router.handing_over,
            "maintenance": self._maintenance,
        }
