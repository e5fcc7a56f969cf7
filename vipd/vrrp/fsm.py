"""The VRRP state machine (RFC 5798 section 6.4, RFC 3768 for v2), without sockets, clocks or asyncio.

The shell feeds events stamped with the monotonic time, executes the returned actions in order,
and calls ``handle(Timeout(), now)`` once ``now >= next_deadline()``. ``handle`` first runs every
timer due at or before ``now`` and only then the event, so the outcome does not depend on whether
a late timer callback or a packet reaches the router first.

Decisions beyond the RFC:
- A BACKUP accepts an advert of equal priority whatever the addresses (RFC 5798 6.4.2, as
  keepalived does); the address tie-break applies between two MASTERs.
- A MASTER that hears a lower-priority MASTER (a healed split brain) advertises and sends
  gratuitous ARP/NA at once (RFC 9568), so the other steps down and the network re-learns quickly.
  It answers so (and a priority-0 advert with an advert) at most once per ``answer_holdoff``: the
  first answer heals, and a stream of such adverts must not make it an amplifier.
- An address owner (effective priority 255) never steps down for an advert: no packet, forged or
  from a second owner, takes the address from its owner.
- Graceful shutdown with ``handover_timeout > 0`` keeps state MASTER (``handing_over`` is True)
  and the VIPs, resending priority-0 adverts, until another router advertises or the timeout ends.
- A shutdown that drains (``Shutdown(drain=True)``: the proxy finishes its connections after the
  hand-over) ends a mastership with HoldVipsQuietly instead of RemoveVips: the VIPs stay, silent
  on ARP, with state INIT, until ``Drained`` (or another Shutdown) releases them and stops.
- A BACKUP that hears the master it follows resign prepares the hand-over bridge back to it
  (PrepareBridge) before its own takeover, so the bridge is in place before clients turn around.
- AdvertReceived carries adverts that passed the receive checks (``packet.accept``), so never one
  of our own.
- StateChanged comes after the actions that realise the new state, so notify scripts see the
  VIPs already added or removed.
- A MASTER that yields to another's advert (preempted, a healed split brain) holds the VIPs quietly
  for ``quiet_hold`` seconds instead of removing them, and a BACKUP that preempts a master it heard
  prepares the bridge back to it (PrepareBridge, when it decides to and again as it takes over):
  connections in flight there finish, as on a planned stop. ``quiet_hold`` 0 removes the VIPs at
  once (RFC behaviour).
- VIPs lost (``VipsLost``: their kernel lifetime ran out, the process was frozen or its loop stalled
  past it) mean another router has taken over by now: a MASTER steps down to BACKUP (preempt
  rules then apply to the adverts it hears) instead of reclaiming them. The loss is older than any
  timer that fell due meanwhile, so it is handled before them: the stale advert a resumed master
  owes would otherwise make the new master step down too.
- Maintenance (``MaintenanceChanged``) is an operator's planned hand-over that does not stop the
  router: a MASTER resigns as on Shutdown (priority-0 adverts, VIPs kept until the successor is
  heard), then becomes BACKUP, holding the VIPs quietly for ``quiet_hold`` seconds. While
  maintenance is on the router never arms its master-down timer, so it never becomes MASTER, not as
  the last router nor as address owner. Turned off, it rejoins as a BACKUP with a fresh
  master-down timer (preempt rules apply).
- Faults are a set of reasons (``Fault`` kind, ``kind:detail``): the router is in FAULT while any is
  raised and starts afresh once the last is cleared. The shell reports each reason as it appears
  or goes (a link down, a dead netlink monitor, a VIP the kernel refused, a lost raw socket).
- A MASTER entering FAULT resigns (a priority-0 advert) and, when the VIPs can still serve what
  its successor bridges back (a failing weight-0 track, a dead netlink monitor, a lost raw socket,
  no primary address), holds them quietly for ``quiet_hold`` seconds as a preempted master does:
  the successor cannot tell a fault from a planned stop and bridges back the connections it does
  not know. A refused VIP leaves nothing to hold, and a link down or gone carries neither the
  resignation nor a bridged segment (a gone interface took its VIPs along): those remove the VIPs
  at once, as ``quiet_hold`` 0 does. A lost raw socket cannot send the resignation: the successor
  takes over on its master-down timer without a bridge, and the VIPs held meanwhile serve the
  connections established here only until then. The hold runs on whatever follows (FAULT
  cleared, BACKUP) until its deadline; becoming MASTER again releases and re-adds the VIPs, a stop
  releases them (a draining one once drained).
"""
from __future__ import annotations

import dataclasses
import enum
import ipaddress
from dataclasses import dataclass

from vipd.vrrp.packet import OWNER_PRIORITY, RESIGN_PRIORITY


class State(enum.StrEnum):
    INIT = "INIT"
    BACKUP = "BACKUP"
    MASTER = "MASTER"
    FAULT = "FAULT"


class Fault(enum.StrEnum):
    """Why a router is in FAULT: the kind that starts each reason (``kind`` or ``kind:detail``)."""
    LINK = "link"                # the interface is down or gone
    TRACK = "track"              # a weight-0 track is failing
    NO_ADDRESS = "no_address"    # no usable primary address to advertise from
    NETLINK = "netlink"          # link state is no longer followed (the monitor died)
    VIP_ADD = "vip_add"          # the kernel refused a VIP
    SOCKET = "socket"            # the raw VRRP socket is lost and cannot be reopened


# After the kernel refused a VIP, the owner stays in FAULT this long before it tries again (a VRRP
# router as BACKUP first, an election candidate by campaigning), doubling up to the maximum.
VIP_RETRY_FIRST = 1.0
VIP_RETRY_MAX = 30.0


# The faults after which the VIPs still serve what a successor bridges back (see the module's
# docstring): the rest remove them at once.
_HOLD_THROUGH = frozenset({Fault.TRACK, Fault.NETLINK, Fault.SOCKET, Fault.NO_ADDRESS})


def fault_reason(kind: Fault, detail: str = "") -> str:
    return f"{kind.value}:{detail}" if detail else kind.value


def holds_through(reason: str) -> bool:
    """Whether a MASTER that enters FAULT for `reason` may hold its VIPs quietly."""
    return reason.partition(":")[0] in _HOLD_THROUGH


@dataclass
class RouterParams:
    vrid: int
    version: int
    priority: int
    advert_interval: float          # seconds, as checked by packet.advert_interval_cs at config load
    primary_address: str
    preempt: bool = True
    preempt_delay: float = 0.0
    handover_timeout: float = 0.0
    # After the new master is heard, hold the VIPs this much longer: its gratuitous ARP / NA may
    # trail its first advert, and a client that still resolves the VIP to us must not hit a host
    # that has just dropped the address (a lost SYN costs the client a 1 s retransmit).
    handover_linger: float = 0.25
    # How long a master that gives the VIPs up to another router keeps them quietly for the
    # connections in flight its successor bridges back (the successor's bridge time); 0: at once.
    quiet_hold: float = 0.0
    # A master answers lower-priority and priority-0 adverts at most this often (at least one
    # advert interval).
    answer_holdoff: float = 1.0

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.vrid <= 255:
            problems.append(f"vrid {self.vrid} not in 1..255")
        if self.version not in (2, 3):
            problems.append(f"version {self.version} is not 2 or 3")
        if not 1 <= self.priority <= OWNER_PRIORITY:
            problems.append(f"priority {self.priority} not in 1..255")
        if self.preempt_delay < 0:
            problems.append(f"preempt_delay {self.preempt_delay} must be >= 0")
        if self.handover_timeout < 0:
            problems.append(f"handover_timeout {self.handover_timeout} must be >= 0")
        if self.handover_linger < 0:
            problems.append(f"handover_linger {self.handover_linger} must be >= 0")
        if self.quiet_hold < 0:
            problems.append(f"quiet_hold {self.quiet_hold} must be >= 0")
        try:
            ipaddress.ip_address(self.primary_address)
        except ValueError:
            problems.append(f"primary_address {self.primary_address!r} is not an IP address")
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class Startup:
    pass


@dataclass(frozen=True)
class Shutdown:
    # False: resign at once whatever handover_timeout says (an instance removed by a reload).
    handover: bool = True
    # The caller drains connections after a planned hand-over and sends Drained when done.
    drain: bool = False


@dataclass(frozen=True)
class Drained:
    pass


@dataclass(frozen=True)
class AdvertReceived:
    src: str
    priority: int
    interval: float


@dataclass(frozen=True)
class PriorityChanged:
    effective_priority: int


@dataclass(frozen=True)
class FaultRaised:
    reason: str


@dataclass(frozen=True)
class FaultCleared:
    reason: str | None = None      # None: every fault


@dataclass(frozen=True)
class MaintenanceChanged:
    on: bool


@dataclass(frozen=True)
class VipsLost:
    pass


@dataclass(frozen=True)
class Timeout:
    pass


@dataclass(frozen=True)
class SendAdvert:
    priority: int


@dataclass(frozen=True)
class AddVips:
    pass


@dataclass(frozen=True)
class RemoveVips:
    pass


@dataclass(frozen=True)
class HoldVipsQuietly:
    """Keep the VIPs but neither answer nor send ARP for them: clients already gone to the new
    master stay there, while connections still in flight here finish."""


@dataclass(frozen=True)
class ReleaseVips:
    """Drop the VIPs held quietly."""
    reason: str


@dataclass(frozen=True)
class PrepareBridge:
    """Send segments of connections in flight to `predecessor`, the master that resigned."""
    predecessor: str


@dataclass(frozen=True)
class SendGratuitous:
    pass


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State
    reason: str


@dataclass(frozen=True)
class Stopped:
    pass


Event = (Startup | Shutdown | Drained | AdvertReceived | PriorityChanged | FaultRaised | FaultCleared
         | MaintenanceChanged | VipsLost | Timeout)
Action = (SendAdvert | AddVips | RemoveVips | HoldVipsQuietly | ReleaseVips | PrepareBridge | SendGratuitous
          | StateChanged | Stopped)


def address_rank(address: str) -> tuple[int, int]:
    """Order primary addresses as integers (RFC 5798 6.4.3), never as strings: 10.0.0.10 > 10.0.0.9."""
    parsed = ipaddress.ip_address(address)
    return parsed.version, int(parsed)


class VrrpRouter:
    def __init__(self, params: RouterParams) -> None:
        self.params = dataclasses.replace(params)
        self._own_rank = address_rank(params.primary_address)
        self.state = State.INIT
        self.effective_priority = params.priority
        self.master_adver_interval = params.advert_interval
        self.master: str | None = None
        self.stopped = False
        self.handover_deadline: float | None = None
        self.new_master_heard = False
        self.holds_vips_quietly = False
        self.maintenance = False
        self.faults: set[str] = set()
        # The VIPs kept quietly after giving them up (preempted, maintenance, a fault), until then.
        self.quiet_release_deadline: float | None = None
        self._maintenance_handover = False
        self._successor: str | None = None
        self._preempted: str | None = None     # the lower master a preempting BACKUP ignores
        self._drain = False
        self._down_timer: float | None = None
        self._adver_timer: float | None = None
        self._takeover_reason = "master_down_timer"
        self._outranked_master_since: float | None = None
        self._answered_at: float | None = None
        self._handlers = {
            Startup: self._on_startup,
            Shutdown: self._on_shutdown,
            Drained: self._on_drained,
            AdvertReceived: self._on_advert,
            PriorityChanged: self._on_priority_changed,
            FaultRaised: self._on_fault_raised,
            FaultCleared: self._on_fault_cleared,
            MaintenanceChanged: self._on_maintenance,
            VipsLost: self._on_vips_lost,
            Timeout: self._on_timeout,
        }

    @property
    def skew_time(self) -> float:
        if self.params.version == 2:
            return (256 - self.effective_priority) / 256
        return (256 - self.effective_priority) * self.master_adver_interval / 256

    @property
    def master_down_interval(self) -> float:
        return 3 * self.master_adver_interval + self.skew_time

    @property
    def handing_over(self) -> bool:
        return self.handover_deadline is not None

    def next_deadline(self) -> float | None:
        if self.stopped or self.holds_vips_quietly:
            return None
        pending = [t for t in (self._down_timer, self._adver_timer, self.handover_deadline,
                               self.quiet_release_deadline) if t is not None]
        return min(pending, default=None)

    def handle(self, event: Event, now: float) -> list[Action]:
        handler = self._handlers.get(type(event))
        if handler is None:
            raise TypeError(f"not a VRRP event: {event!r}")
        if self.stopped:
            return []
        if self.holds_vips_quietly:
            # Nothing but the end of the drain, or an impatient second stop, concerns us now.
            return handler(event, now) if isinstance(event, (Drained, Shutdown)) else []
        if isinstance(event, VipsLost):
            return handler(event, now) + self._fire_due_timers(now)
        actions = self._fire_due_timers(now)
        if not self.stopped and not self.holds_vips_quietly:
            actions += handler(event, now)
        return actions

    def update_params(self, params: RouterParams, now: float) -> list[Action]:
        """Apply a reloaded config without a state change.

        ``params.priority`` is only recorded: the caller owns the track weights and follows up with
        PriorityChanged(new effective priority). A different vrid or version is a different router.
        """
        if (params.vrid, params.version) != (self.params.vrid, self.params.version):
            raise ValueError("vrid and version cannot change on reload; build a new VrrpRouter")
        if self.stopped or self.holds_vips_quietly:
            return []
        actions = self._fire_due_timers(now)
        old = self.params
        self.params = dataclasses.replace(params)
        self._own_rank = address_rank(params.primary_address)
        if self.state is State.MASTER:
            self.master = params.primary_address
        if not params.preempt:
            self._outranked_master_since = None
        if params.advert_interval != old.advert_interval:
            if self.state is State.MASTER or params.version == 2 or self.master is None:
                self.master_adver_interval = params.advert_interval
            if self._adver_timer is not None:
                self._adver_timer = min(self._adver_timer, now + params.advert_interval)
        return actions

    def _fire_due_timers(self, now: float) -> list[Action]:
        actions: list[Action] = []
        while not self.stopped and not self.holds_vips_quietly:
            if self.handover_deadline is not None and self.handover_deadline <= now:
                actions += self._end_handover(now, "handover_complete" if self.new_master_heard else "handover_timeout")
            elif self._adver_timer is not None and self._adver_timer <= now:
                priority = RESIGN_PRIORITY if self.handing_over else self.effective_priority
                actions.append(SendAdvert(priority))
                # Keep the advert grid: lateness of one wake-up must not push every later
                # advert back (600 per minute at 0.1 s, not 590). Far behind, start afresh.
                following = self._adver_timer + self.params.advert_interval
                self._adver_timer = following if following > now else now + self.params.advert_interval
            elif self._down_timer is not None and self._down_timer <= now:
                actions += self._become_master(now, self._takeover_reason)
            elif self.quiet_release_deadline is not None and self.quiet_release_deadline <= now:
                self.quiet_release_deadline = None
                actions.append(ReleaseVips("quiet_hold_over"))
            else:
                break
        return actions

    def _on_timeout(self, event: Timeout, now: float) -> list[Action]:
        return []

    def _on_startup(self, event: Startup, now: float) -> list[Action]:
        if self.state is not State.INIT:
            return []
        return self._start(now, "startup")

    def _start(self, now: float, reason: str) -> list[Action]:
        if self.effective_priority == OWNER_PRIORITY and not self.maintenance:
            return self._become_master(now, reason)
        self.master_adver_interval = self.params.advert_interval
        return self._become_backup(now, reason, master=None)

    def _on_advert(self, event: AdvertReceived, now: float) -> list[Action]:
        if self.state not in (State.BACKUP, State.MASTER):
            return []
        if self.handing_over:
            if event.priority != RESIGN_PRIORITY and not self.new_master_heard:
                self.new_master_heard = True
                self._successor = event.src
                if self.params.handover_linger <= 0:
                    return self._end_handover(now, "handover_complete")
                assert self.handover_deadline is not None
                self.handover_deadline = min(self.handover_deadline, now + self.params.handover_linger)
            return []
        if self.state is State.BACKUP:
            return self._on_advert_as_backup(event, now)
        return self._on_advert_as_master(event, now)

    def _on_advert_as_backup(self, event: AdvertReceived, now: float) -> list[Action]:
        if self.maintenance:
            # Follow who is master, for the status; never prepare to take over.
            if event.priority != RESIGN_PRIORITY:
                self._learn_interval(event.interval)
                self.master = event.src
            elif self.master is None or address_rank(self.master) == address_rank(event.src):
                self.master = None
            return []
        if event.priority == RESIGN_PRIORITY:
            # A resigning ex-master repeats priority 0 during handover; once another master is
            # heard, those repeats say nothing about whether the current master is alive.
            if self.master is not None and address_rank(self.master) != address_rank(event.src):
                return []
            resign_deadline = now + self.skew_time
            self._down_timer = resign_deadline if self._down_timer is None else min(self._down_timer, resign_deadline)
            # Only the master we followed hands over connections; a resignation heard while no
            # master was known may come from anyone.
            actions: list[Action] = [] if self.master is None else [PrepareBridge(event.src)]
            self.master = None
            self._takeover_reason = "master_resigned"
            return actions
        if self._accepts_as_master(event, now):
            self._learn_interval(event.interval)
            self._down_timer = now + self.master_down_interval
            self.master = event.src
            self._takeover_reason = "master_down_timer"
            self._preempted = None
            return []
        # Preempting: the bridge back to the master we will replace goes up now, well before our
        # gratuitous ARP turns its clients to us (setting it up takes a while).
        self._takeover_reason = "preempt"
        actions = [] if self._preempted == event.src else [PrepareBridge(event.src)]
        self._preempted = event.src
        return actions

    def _accepts_as_master(self, event: AdvertReceived, now: float) -> bool:
        if not self.params.preempt or event.priority >= self.effective_priority:
            self._outranked_master_since = None
            return True
        if self.params.preempt_delay > 0:
            if self._outranked_master_since is None:
                self._outranked_master_since = now
            return now - self._outranked_master_since < self.params.preempt_delay
        return False

    def _on_advert_as_master(self, event: AdvertReceived, now: float) -> list[Action]:
        outranked = self.effective_priority != OWNER_PRIORITY and (
            event.priority > self.effective_priority
            or (event.priority == self.effective_priority and address_rank(event.src) > self._own_rank))
        if outranked:
            self._learn_interval(event.interval)
            reason = "higher_priority_advert" if event.priority > self.effective_priority else "equal_priority_higher_address"
            # One last advert of ours before stepping down: after a split brain heals, the winner
            # may never have heard us, and only our advert makes it re-announce the VIPs to the
            # clients that followed us (its lower-priority rule below).
            return [SendAdvert(self.effective_priority)] + self._become_backup(now, reason, master=event.src,
                                                                               hold=True)
        holdoff = max(self.params.answer_holdoff, self.params.advert_interval)
        if self._answered_at is not None and now - self._answered_at < holdoff:
            return []
        self._answered_at = now
        self._adver_timer = now + self.params.advert_interval
        if event.priority == RESIGN_PRIORITY:
            return [SendAdvert(self.effective_priority)]
        return [SendAdvert(self.effective_priority), SendGratuitous()]

    def _learn_interval(self, interval: float) -> None:
        if self.params.version == 3 and interval > 0:
            self.master_adver_interval = interval

    def _on_priority_changed(self, event: PriorityChanged, now: float) -> list[Action]:
        if event.effective_priority == self.effective_priority:
            return []
        self.effective_priority = event.effective_priority
        if self.state is State.MASTER and not self.handing_over:
            self._adver_timer = now + self.params.advert_interval
            return [SendAdvert(self.effective_priority)]
        return []

    def _on_vips_lost(self, event: VipsLost, now: float) -> list[Action]:
        if self.state is not State.MASTER:
            return []
        if self.handing_over:
            return self._end_handover(now, "vips_lost")
        return self._become_backup(now, "vips_lost", master=None)

    def _on_fault_raised(self, event: FaultRaised, now: float) -> list[Action]:
        if event.reason in self.faults:
            return []
        self.faults.add(event.reason)
        reason = f"fault:{event.reason}"
        if self.handing_over and not self._maintenance_handover:
            return self._finish_shutdown(f"shutdown:{reason}")
        if self.state is State.FAULT:
            return []
        old = self.state
        actions: list[Action] = []
        if old is State.MASTER:
            actions += [SendAdvert(RESIGN_PRIORITY), self._give_up_vips(now, holds_through(event.reason))]
        self._enter(State.FAULT, master=None)
        actions.append(StateChanged(old, State.FAULT, reason))
        return actions

    def _on_fault_cleared(self, event: FaultCleared, now: float) -> list[Action]:
        if event.reason is None:
            self.faults.clear()
        else:
            self.faults.discard(event.reason)
        if self.state is not State.FAULT or self.faults:
            return []
        return self._start(now, "fault_cleared")

    def _on_shutdown(self, event: Shutdown, now: float) -> list[Action]:
        # A second stop request means "now": stop waiting for the new master, or for the drain.
        if self.holds_vips_quietly:
            return self._release("shutdown")
        # Only a planned hand-over leaves connections worth draining.
        if self.handing_over and self._maintenance_handover:
            # The maintenance hand-over already under way becomes the stop's.
            self._maintenance_handover = False
            self._drain = event.drain and event.handover
            return [] if event.handover else self._finish_shutdown("shutdown")
        if self.handing_over:
            return self._finish_shutdown("shutdown")
        self._drain = event.drain and event.handover
        if self.state is State.MASTER and event.handover and self.params.handover_timeout > 0:
            self.handover_deadline = now + self.params.handover_timeout
            self._adver_timer = now + self.params.advert_interval
            return [SendAdvert(RESIGN_PRIORITY)]
        resign: list[Action] = [SendAdvert(RESIGN_PRIORITY)] if self.state is State.MASTER else []
        return resign + self._finish_shutdown("shutdown")

    def _finish_shutdown(self, reason: str) -> list[Action]:
        old = self.state
        held = self.quiet_release_deadline is not None     # since a hand-over or a fault
        self.quiet_release_deadline = None
        hold = (old is State.MASTER or held) and self._drain
        actions: list[Action] = []
        if old is State.MASTER:
            actions.append(HoldVipsQuietly() if hold else RemoveVips())
        elif held and not hold:
            actions.append(ReleaseVips(reason))
        if old is not State.INIT:
            actions.append(StateChanged(old, State.INIT, reason))
        self._enter(State.INIT, master=None)
        if hold:
            self.holds_vips_quietly = True
            return actions
        self.stopped = True
        actions.append(Stopped())
        return actions

    def _on_maintenance(self, event: MaintenanceChanged, now: float) -> list[Action]:
        if event.on == self.maintenance:
            return []
        self.maintenance = event.on
        if not event.on:
            actions: list[Action] = []
            if self.quiet_release_deadline is not None:
                self.quiet_release_deadline = None
                actions.append(ReleaseVips("maintenance_off"))
            # A hand-over under way completes; its end re-arms the timer.
            if self.state is State.BACKUP:
                self._arm_down_timer(now + self.master_down_interval)
            return actions
        if self.state is State.BACKUP:
            self._down_timer = None
        if self.state is not State.MASTER or self.handing_over:
            return []
        self._maintenance_handover = True
        self.new_master_heard = False
        self._successor = None
        if self.params.handover_timeout > 0:
            self.handover_deadline = now + self.params.handover_timeout
            self._adver_timer = now + self.params.advert_interval
            return [SendAdvert(RESIGN_PRIORITY)]
        return [SendAdvert(RESIGN_PRIORITY)] + self._end_handover(now, "")

    def _end_handover(self, now: float, how: str) -> list[Action]:
        if not self._maintenance_handover:
            return self._finish_shutdown(f"shutdown:{how}" if how else "shutdown")
        return self._become_backup(now, f"maintenance:{how}" if how else "maintenance", self._successor, hold=True)

    def _arm_down_timer(self, deadline: float) -> None:
        self._down_timer = None if self.maintenance else deadline

    def _on_drained(self, event: Drained, now: float) -> list[Action]:
        return self._release("drained") if self.holds_vips_quietly else []

    def _release(self, reason: str) -> list[Action]:
        self.holds_vips_quietly = False
        self.stopped = True
        return [ReleaseVips(reason), Stopped()]

    def _become_master(self, now: float, reason: str) -> list[Action]:
        old = self.state
        # Master again before a quiet hold ended: the quiet VIPs go first.
        released: list[Action] = [ReleaseVips("master")] if self.quiet_release_deadline is not None else []
        self.quiet_release_deadline = None
        if reason == "preempt" and self._preempted is not None:
            released.insert(0, PrepareBridge(self._preempted))
        self._enter(State.MASTER, master=self.params.primary_address)
        self.master_adver_interval = self.params.advert_interval
        self._adver_timer = now + self.params.advert_interval
        # VIPs and gratuitous ARP before the advert: a resigning master releases the VIPs when it
        # hears our advert, and by then clients must already be sent here.
        return released + [
            AddVips(), SendGratuitous(), SendAdvert(self.effective_priority),
            StateChanged(old, State.MASTER, reason),
        ]

    def _become_backup(self, now: float, reason: str, master: str | None, hold: bool = False) -> list[Action]:
        """`hold`: another router takes the VIPs over; keep them quietly for `quiet_hold`."""
        old = self.state
        self._enter(State.BACKUP, master=master)
        self._arm_down_timer(now + self.master_down_interval)
        actions: list[Action] = [self._give_up_vips(now, hold)] if old is State.MASTER else []
        actions.append(StateChanged(old, State.BACKUP, reason))
        return actions

    def _give_up_vips(self, now: float, hold: bool) -> Action:
        """A MASTER's VIPs as it steps down: kept quietly for `quiet_hold` when `hold`, else removed."""
        if hold and self.params.quiet_hold > 0:
            self.quiet_release_deadline = now + self.params.quiet_hold
            return HoldVipsQuietly()
        return RemoveVips()

    def _enter(self, state: State, master: str | None) -> None:
        self.state = state
        self.master = master
        self._down_timer = None
        self._adver_timer = None
        self.handover_deadline = None
        self._maintenance_handover = False
        self._takeover_reason = "master_down_timer"
        self._preempted = None
        self._outranked_master_since = None
        self._answered_at = None
