"""The asyncio shell around vipd.election.core: feeds it the clock, etcd's answers, the tracks and
maintenance, and carries out its actions (etcd calls, VIP changes, GARPs, events). It decides
nothing the core could.

Session calls (grant, renew, revoke) run at once, each stamped with its send time; the other
writes go through one queue in the order the core asked, and each is followed by a fresh read
of the election's keys. The keys are read every POLL seconds and whenever the watch reports a
change: the watch only makes things faster, the reads and the fence are the truth.
"""
from __future__ import annotations

import asyncio
import datetime
import ipaddress
import json
import logging
import time
from typing import Callable, Mapping

from vipd.election import core
from vipd.election.config import ElectionConfig, EtcdConfig, needs_restart
from vipd.election.etcd import EtcdClient, EtcdError, KeyValue, b64
from vipd.events import Emit, Kind, Level, log_only
from vipd.owner import CoreOwner
from vipd.vrrp import handover
from vipd.vrrp.addresses import AddressWorker
from vipd.vrrp.announce import AnnouncementFrames, FrameSender
from vipd.vrrp.links import InterfaceTable, NetlinkMonitor
from vipd.vrrp.tracks import TrackSet, cancel_and_wait

log = logging.getLogger("vipd.election")

GARP_REPEAT = 3
WATCH_RENEW = 30.0            # re-create the watch now and then: a silent stream may be dead


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def decode_snapshot(key: str, kvs: list[KeyValue]) -> core.Snapshot:
    """What the keys under `key` say; a value vipd did not write still counts as a holder (so
    nobody campaigns over it) but never as a candidate or an offer."""
    holder = None
    candidates = []
    handover = accepted = None
    for kv in kvs:
        value = _json(kv.value)
        if kv.key == key:
            priority = value.get("priority")
            holder = core.Entry(str(value.get("node", "?")), priority if isinstance(priority, int) else 0, kv.lease,
                                _address(value))
        elif kv.key.startswith(key + "/candidates/") and isinstance(value.get("priority"), int):
            candidates.append(core.Entry(kv.key.rpartition("/")[2], value["priority"], kv.lease, _address(value)))
        elif kv.key == key + "/handover" and isinstance(value.get("from"), str) and isinstance(value.get("to"), str):
            handover = (value["from"], value["to"])
        elif kv.key == key + "/accepted" and isinstance(value.get("node"), str) and isinstance(value.get("from"), str):
            accepted = (value["node"], value["from"])
    return core.Snapshot(holder, tuple(candidates), handover, accepted)


def _address(value: dict) -> str | None:
    address = value.get("address")
    return address if isinstance(address, str) else None


def _entry(node: str, priority: int, address: str | None) -> dict:
    return {"node": node, "priority": priority} | ({"address": address} if address else {})


def _put(key: str, value: dict, lease: int) -> dict:
    return {"request_put": {"key": b64(key), "value": b64(json.dumps(value)), "lease": str(lease)}}


def _delete(key: str) -> dict:
    return {"request_delete_range": {"key": b64(key)}}


def _lease_is(key: str, lease: int) -> dict:
    return {"key": b64(key), "result": "EQUAL", "target": "LEASE", "lease": str(lease)}


class ElectionOwner(CoreOwner):
    """A VIP owner (vipd.owner.VipOwner) whose VIPs follow an etcd lease."""

    kind = "election"

    def __init__(self, config: ElectionConfig, etcd: EtcdConfig, node: str, *, client: EtcdClient,
                 interfaces: InterfaceTable, addresses: AddressWorker, serving: Mapping[str, bool] | None = None,
                 bridge: handover.BridgePlan = handover.BridgePlan(), table_id: int = 256,
                 emit: Emit = log_only, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.node = node
        self.client = client
        self.interfaces = interfaces
        self.addresses = addresses
        self.emit = emit
        self.clock = clock
        self.table_id = table_id            # above 255: its nftables tables never meet a VRRP vrid's
        self.quiet = handover.QuietHold(table_id, f"election {config.name}")
        self._bridged = asyncio.Event()
        self._bridge_task: asyncio.Task | None = None
        self.core = core.ElectionCore(node, config.priority, etcd.lease_ttl)
        self.plan_bridge(bridge)
        self.tracks = TrackSet(config.tracks, self._tracks_changed, interfaces.link_up, serving)
        self.frames = FrameSender(config.interface)
        self.since = utc_now()
        self.transitions = 0
        self._wake = asyncio.Event()
        self._read_now = asyncio.Event()
        self._writes: asyncio.Queue = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self._spawned: set[asyncio.Task] = set()
        self._vip_change: asyncio.Future | None = None
        self._claimed = config.virtual_ips   # the VIPs of the last add made while not letting go
        self._stopped = asyncio.Event()
        self.announcement = AnnouncementFrames()

    # ------------------------------------------------------------ VipOwner

    def set_maintenance(self, on: bool) -> None:
        """On: a holder hands over to the best other candidate first (its VIPs go only once the
        successor has them), then never campaigns while on."""
        if not self._tasks:
            self.core.maintenance = on       # before start: nothing to hand over yet
        elif on != self.core.maintenance:
            self._feed(core.Maintenance(on))

    # ------------------------------------------------------------ running

    def _learn_address(self) -> None:
        link = self.interfaces.by_name(self.config.interface)
        self.core.address = link.primary_ipv4(exclude=[str(v.ip) for v in self.config.virtual_ips]) if link else None

    def _prepare_frames(self) -> None:
        """Build the GARP/NA frames ahead (scapy is slow to load), again when the MAC changes."""
        link = self.interfaces.by_name(self.config.interface)
        self.announcement.rebuild(link.mac if link else None, self.config.virtual_ips)

    async def start(self) -> None:
        """Candidate only once the GARP frames are built: a hand-over right after start must not
        wait for them."""
        await handover.clear_leftovers(self.table_id)
        self._learn_address()
        self._prepare_frames()
        if self.announcement.frames is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self.announcement.frames), 30)
            except Exception as exc:
                log.error("election %s: cannot build gratuitous ARP/NA frames: %s", self.name, exc)
        self.interfaces.subscribe(self._on_link)
        self.tracks.start()
        await self.tracks.wait_first_results(self.tracks.first_result_timeout)
        self._tracks_changed()
        for coro, what in ((self._drive(), "timer"), (self._read_loop(), "reads"), (self._watch_loop(), "watch"),
                           (self._write_loop(), "writes")):
            self._tasks.append(asyncio.create_task(coro, name=f"election {self.name} {what}"))

    async def hand_over(self, timeout: float = core.HANDOVER_TIMEOUT + 2.0) -> None:
        """Stop being a candidate: returns once another node holds the key (this one may still keep
        its VIPs quietly while the successor bridges connections in flight back) or they are gone."""
        if not self.core.stopping:
            self._feed(core.Stop())
        deadline = self.clock() + timeout
        while not self._stopped.is_set() and self.core.release_at is None and self.clock() < deadline:
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        """Hand over if another candidate can take the VIPs, else let go; then revoke the lease."""
        await self.hand_over()
        release_at = self.core.release_at
        timeout = 2.0 + (max(0.0, release_at - self.clock()) if release_at is not None else 0.0)
        try:
            await asyncio.wait_for(self._stopped.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("election %s: stop did not finish within %gs", self.name, timeout)
        if self.core.vips:
            self.core.vips = False
            self._execute([core.RemoveVips()])
        if self._vip_change is not None:
            await asyncio.shield(self._vip_change)
        self.interfaces.unsubscribe(self._on_link)
        await self.tracks.stop()
        for task in [*self._tasks, *self._spawned]:
            await cancel_and_wait(task)
        await self._end_bridge()
        self.frames.close()

    def _feed(self, event: object) -> None:
        actions = self.core.handle(event, self.clock())
        self._execute(actions)
        if self.core.stopped:
            self._stopped.set()
        self._wake.set()

    def _eligibility(self) -> core.Eligibility:
        problems = set(self.tracks.fault_reasons())
        if not self.interfaces.link_up(self.config.interface):
            problems.add(f"link:{self.config.interface}")
        return core.Eligibility(frozenset(problems), self.tracks.effective_priority(self.config.priority))

    def _tracks_changed(self) -> None:
        self._feed(self._eligibility())

    async def update(self, config: ElectionConfig) -> None:
        """Apply a changed config to the running election (same name, key and interface): the core
        decides what the new priority, tracks and VIPs mean; the lease and the key stay."""
        old, self.config = self.config, config
        self._learn_address()
        self._prepare_frames()
        self.plan_bridge(self._plan)
        await self.tracks.update(config.tracks)
        added = tuple(str(v) for v in config.virtual_ips if v not in old.virtual_ips)
        dropped = tuple(str(v) for v in old.virtual_ips if v not in config.virtual_ips)
        self._feed(core.Reconfigured(self._eligibility(), added, dropped))
        log.info("election %s: configuration updated in place", self.name)

    def _on_link(self, name: str) -> None:
        self.tracks.links_changed()
        if name == self.config.interface:
            self._learn_address()
            self._prepare_frames()
            self._tracks_changed()

    async def _drive(self) -> None:
        while True:
            deadline = self.core.next_deadline()
            self._wake.clear()
            if deadline is not None:
                delay = deadline - self.clock()
                if delay > 0:
                    try:
                        await asyncio.wait_for(self._wake.wait(), delay)
                    except asyncio.TimeoutError:
                        pass
            else:
                await self._wake.wait()
            self._feed(core.Tick())

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)

    # ------------------------------------------------------------ actions

    def _execute(self, actions: list) -> None:
        for action in actions:
            match action:
                case core.Grant():
                    self._spawn(self._grant())
                case core.Renew(lease):
                    self._spawn(self._renew(lease))
                case core.Revoke(lease):
                    self._spawn(self._revoke(action, lease))
                case core.AddVips(lifetime, announce):
                    if self.core.release_at is None:
                        self._claimed = self.config.virtual_ips
                    # Letting go, a renewal renews what is held: a VIP a reload added meanwhile was
                    # never added here, and added now it would answer ARP beside the successor's.
                    vips = [v for v in self._claimed if v in self.config.virtual_ips]
                    added = self.addresses.add(self.config.interface, vips, lifetime)
                    self._vip_change = asyncio.ensure_future(self._tell_added(added))
                    if announce:
                        self._spawn(self._announce(self._vip_change))
                case core.Announce():
                    self._spawn(self._announce(self._vip_change))
                case core.Bridge(predecessor):
                    self._start_bridge(predecessor)
                case core.HoldQuietly():
                    self.quiet.hold(self.config.virtual_ips, self._remove_vips)
                case core.Speak():
                    self._spawn(handover.remove("arp", handover.quiet_table(self.table_id)))
                case core.DropVips(vips):     # submitted now: the worker removes them before any later add
                    removed = self.addresses.remove(self.config.interface, [ipaddress.ip_interface(v) for v in vips])
                    self._spawn(self._dropped(removed))
                case core.RemoveVips():
                    self._spawn(self._end_bridge())
                    self._vip_change = asyncio.ensure_future(self.quiet.release(self._remove_vips))
                case core.StateChanged(old, new, reason, holder):
                    self.since = utc_now()
                    self.transitions += 1
                    self.emit(Kind.ELECTION_STATE, self.name, f"election {self.name}: {old} -> {new} ({reason})",
                              {"old": old.value, "new": new.value, "reason": reason, "holder": holder},
                              level=Level.WARNING if new == core.State.FAULT else Level.INFO, logger=log)
                case _:
                    self._writes.put_nowait(action)

    async def _tell_added(self, added: asyncio.Future) -> None:
        """The core hears what the kernel said before anyone waiting for the change goes on."""
        try:
            refused = tuple((await added).failed.items())
        except Exception as exc:
            refused = tuple((str(vip), str(exc)) for vip in self.config.virtual_ips)
        was = self.core.vip_fault
        self._feed(core.VipsAdded(self.config.interface, refused))
        if was is None and self.core.vip_fault is not None:
            log.error("election %s: %s; FAULT, a candidate again in %.3gs", self.name, self.core.vip_fault,
                      max(0.0, self.core.vip_retry_at - self.clock()))

    async def _dropped(self, removed: asyncio.Future) -> None:
        try:
            await removed
        except Exception as exc:
            log.error("election %s: removing VIPs no longer configured: %s", self.name, exc)

    def _remove_vips(self, vips: list) -> asyncio.Future:
        return self.addresses.remove(self.config.interface, self.config.virtual_ips)

    def plan_bridge(self, plan: handover.BridgePlan) -> None:
        """The proxy's ports and drain time, for the next hand-over."""
        self._plan = plan
        self.bridge = plan.where(ipv4=self.config.virtual_ips[0].version == 4)
        self.core.quiet_hold = self.bridge.seconds

    def _start_bridge(self, predecessor: str) -> None:
        self._bridged.clear()
        self._bridge_task = asyncio.create_task(self._bridge(predecessor), name=f"election {self.name} bridge")

    async def _bridge(self, predecessor: str) -> None:
        try:
            await handover.bridge_to(predecessor, [v.ip for v in self.config.virtual_ips], self.bridge,
                                     self.config.interface, self.table_id)
            self._bridged.set()
            await asyncio.sleep(self.bridge.seconds)
        finally:
            self._bridged.set()
            await handover.remove("ip", handover.bridge_table(self.table_id))

    async def _end_bridge(self) -> None:
        task, self._bridge_task = self._bridge_task, None
        if task is not None:
            await cancel_and_wait(task)

    async def _grant(self) -> None:
        sent = self.clock()
        try:
            lease, ttl = await self.client.grant(self.core.ttl)
        except EtcdError as exc:
            self._feed(core.LeaseFailed(None, str(exc)))
            return
        if ttl != round(self.core.ttl):
            log.warning("election %s: etcd granted a %gs lease for the %gs asked; the fence follows etcd",
                        self.name, ttl, self.core.ttl)
        self._feed(core.LeaseGranted(lease, ttl, sent))
        self._read_now.set()

    async def _renew(self, lease: int) -> None:
        sent = self.clock()
        try:
            ttl = await self.client.renew(lease)
        except EtcdError as exc:
            self._feed(core.LeaseFailed(lease, str(exc), exc.gone))
            return
        self._feed(core.LeaseRenewed(lease, ttl, sent))

    async def _revoke(self, action: object, lease: int) -> None:
        try:
            await self.client.revoke(lease)
            self._feed(core.Done(action, True))
        except EtcdError as exc:
            self._feed(core.Done(action, False, str(exc)))

    async def _announce(self, added: asyncio.Future | None) -> None:
        try:
            if added is not None:
                await asyncio.shield(added)
            if self.announcement.frames is None:
                log.warning("election %s: no gratuitous ARP/NA: no MAC address known for %s",
                            self.name, self.config.interface)
                return
            frames = await asyncio.shield(self.announcement.frames)
            if self._bridge_task is not None:      # connections in flight go back before clients move
                await asyncio.wait_for(self._bridged.wait(), 2)
        except Exception as exc:
            log.error("election %s: no gratuitous ARP/NA: %s", self.name, exc)
            return
        sent = 0
        for _ in range(GARP_REPEAT):
            if not self.core.vips:
                break
            sent += self.frames.send(frames)
            await asyncio.sleep(0.05)
        log.info("election %s: %d gratuitous ARP/NA frame(s) sent on %s", self.name, sent, self.config.interface)

    async def _write_loop(self) -> None:
        while True:
            action = await self._writes.get()
            try:
                ok = await self._write(action)
                self._feed(core.Done(action, ok))
            except EtcdError as exc:
                log.info("election %s: %s failed: %s", self.name, type(action).__name__, exc)
                self._feed(core.Done(action, False, str(exc)))
            self._read_now.set()

    async def _write(self, action: object) -> bool:
        key, me = self.config.key, self.node
        match action:
            case core.Register(lease, priority):
                value = {"priority": priority} | ({"address": self.core.address} if self.core.address else {})
                return await self.client.txn([], [_put(f"{key}/candidates/{me}", value, lease)])
            case core.Unregister():
                return await self.client.txn([], [_delete(f"{key}/candidates/{me}")])
            case core.Campaign(lease, priority):
                absent = {"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}
                return await self.client.txn([absent], [_put(key, _entry(me, priority, self.core.address), lease)])
            case core.Offer(to, lease):
                return await self.client.txn([_lease_is(key, lease)],
                                             [_put(f"{key}/handover", {"from": me, "to": to}, lease)])
            case core.Accept(holder, lease):
                return await self.client.txn([], [_put(f"{key}/accepted", {"node": me, "from": holder}, lease)])
            case core.Transfer(lease, to):
                return await self.client.txn([_lease_is(key, lease)], [
                    _put(key, _entry(to.node, to.priority, to.address), to.lease),
                    _delete(f"{key}/handover"), _delete(f"{key}/accepted")])
            case core.Withdraw(lease):
                return await self.client.txn([_lease_is(key, lease)],
                                             [_delete(f"{key}/handover"), _delete(f"{key}/accepted")])
            case core.Resign(lease):
                return await self.client.txn([_lease_is(key, lease)], [
                    _delete(key), _delete(f"{key}/handover"), _delete(f"{key}/accepted")])
        raise AssertionError(f"unknown action {action!r}")

    # ------------------------------------------------------------ learning the holder

    async def _read_loop(self) -> None:
        poll = max(0.2, min(1.0, self.core.ttl / 4))
        while True:
            self._read_now.clear()
            try:
                kvs = await self.client.prefix(self.config.key)
                self._feed(core.Seen(decode_snapshot(self.config.key, kvs)))
            except EtcdError as exc:
                self._feed(core.ReadFailed(str(exc)))
            try:
                await asyncio.wait_for(self._read_now.wait(), poll)
            except asyncio.TimeoutError:
                pass

    async def _watch_loop(self) -> None:
        while True:
            try:
                async with asyncio.timeout(WATCH_RENEW):
                    async for _ in self.client.watch(self.config.key):
                        self._read_now.set()
            except (EtcdError, TimeoutError) as exc:
                log.debug("election %s: watch ended: %s", self.name, exc)
            await asyncio.sleep(core.RETRY)

    # ------------------------------------------------------------ status

    def status(self) -> dict:
        c, now = self.core, self.clock()
        return {
            "name": self.name,
            "state": c.state.value,
            "holder": c.holder,
            "virtual_ips": [str(v) for v in self.config.virtual_ips],
            "maintenance": c.maintenance,
            "since": self.since,
            "reason": c.reason,
            "interface": self.config.interface,
            "key": self.config.key,
            "priority": self.config.priority,
            "effective_priority": c.priority,
            "lease_ttl": c.granted_ttl or c.ttl,
            "fence_remaining": round(max(0.0, c.deadline - now), 3) if c.lease is not None else 0.0,
            "keepalive_failures": c.keepalive_failures,
            "transitions": self.transitions,
            "tracks": self.tracks.status(),
        }


class ElectionService:
    """Every `[[election]]`, sharing one etcd client, the netlink view and the address worker."""

    def __init__(self, configs: tuple[ElectionConfig, ...], etcd: EtcdConfig, node: str,
                 bridge: handover.BridgePlan = handover.BridgePlan(),
                 serving: Mapping[str, bool] | None = None, emit: Emit = log_only,
                 maintenance: Callable[[str], bool] = lambda name: False) -> None:
        self.configs = configs
        self.etcd = etcd
        self.node = node
        self.bridge = bridge
        self.emit = emit
        self.maintenance = maintenance
        self.serving: dict[str, bool] = dict(serving or {})
        self.instances: dict[str, ElectionOwner] = {}
        self.interfaces = InterfaceTable()
        self._monitor: NetlinkMonitor | None = None
        self._addresses: AddressWorker | None = None
        self._client: EtcdClient | None = None

    async def start(self) -> None:
        if self._monitor is None:
            monitor = NetlinkMonitor(self.interfaces)
            await monitor.start()
            self._monitor = monitor
            self._addresses = AddressWorker()
        if self._client is None:
            self._client = EtcdClient(self.etcd, timeout=max(0.5, self.etcd.lease_ttl / 3))
        await self._start(self.configs)

    async def _start(self, configs) -> None:
        created = []
        for config in configs:
            owner = ElectionOwner(config, self.etcd, self.node, client=self._client, interfaces=self.interfaces,
                                  addresses=self._addresses, serving=self.serving, bridge=self.bridge,
                                  table_id=self._free_table_id(), emit=self.emit)
            owner.set_maintenance(self.maintenance(config.name))
            self.instances[config.name] = owner
            created.append(owner)
        await asyncio.gather(*(o.start() for o in created))

    def _free_table_id(self) -> int:
        """Above 255 (VRRP's vrids) and not used by a running election: one kept across a reload
        keeps its own."""
        used = {o.table_id for o in self.instances.values()}
        return next(i for i in range(256, 257 + len(used)) if i not in used)

    async def reload(self, configs: tuple[ElectionConfig, ...], etcd: EtcdConfig,
                     bridge: handover.BridgePlan) -> None:
        """Unchanged elections run on (a new bridge plan, from changed frontends, applies to their
        next hand-over); changed ones are updated in place when they stay the same election (name,
        key, interface: `needs_restart`), keeping their lease and key; the others and removed ones
        step down (handing over), new ones start; another [etcd] restarts them all."""
        self.bridge = bridge
        if etcd != self.etcd:
            await self._stop_all()
            self.etcd = etcd
            self.configs = configs
            await self.start()
            return
        wanted = {c.name: c for c in configs}
        gone = [o for name, o in self.instances.items() if name not in wanted or needs_restart(o.config, wanted[name])]
        for owner in gone:
            log.info("election %s: %s", owner.name,
                     "removed from the config" if owner.name not in wanted else "restarted for the new config")
            del self.instances[owner.name]
        await asyncio.gather(*(o.stop() for o in gone))
        for owner in self.instances.values():
            owner.plan_bridge(bridge)
        await asyncio.gather(*(o.update(wanted[name]) for name, o in self.instances.items()
                               if o.config != wanted[name]))
        self.configs = configs
        await self._start([c for name, c in wanted.items() if name not in self.instances])

    async def _stop_all(self) -> None:
        await asyncio.gather(*(o.stop() for o in self.instances.values()))
        self.instances.clear()
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def shutdown(self, keep_vips: bool = False) -> None:
        """Every election hands over; with keep_vips, return once each did (a successor holds the
        key) and keep what they hold quietly until `release()`; otherwise let everything go."""
        if keep_vips:
            await asyncio.gather(*(o.hand_over() for o in self.instances.values()))
            return
        await self.release()

    async def release(self) -> None:
        await self._stop_all()
        if self._monitor is not None:
            await self._monitor.stop()
            self._monitor = None
        if self._addresses is not None:
            await asyncio.to_thread(self._addresses.close)
            self._addresses = None

    def frontend_serving(self, name: str, serving: bool) -> None:
        self.serving[name] = serving
        for owner in self.instances.values():
            owner.tracks.frontend_serving(name, serving)

    def status(self) -> list[dict]:
        return [owner.status() for owner in self.instances.values()]
