"""The pure decision core of one `[[election]]`: `handle(event, now) -> actions`, `next_deadline()`.
It never does I/O; the shell (vipd.election.owner) carries out the actions and feeds back results.

Keys, all under the election's key K, all written under the writer's own lease (so they vanish
with it):
- K            the holder: {"node", "priority"}; whoever's lease carries it holds the VIPs.
- K/candidates/NODE   {"priority"}: NODE can hold now (tracks fine, not in maintenance).
- K/handover   {"from", "to"}: the holder offers K to a candidate.
- K/accepted   {"node", "from"}: that candidate has added the VIPs and sent its GARPs.

Every node keeps one lease (its session), granted at start and renewed every TTL/3 (0.25 s after
a failure). The fence: `deadline = send time of the last successful grant/renewal + granted TTL
- MARGIN`; at the deadline the node removes its VIPs before anything else and drops the lease.
etcd cannot expire the lease before that send time + TTL, and the key only goes with the lease,
so nobody else can win K while this node still serves. VIPs also carry a kernel lifetime that
ends before the deadline and is refreshed with each renewal, so a killed or frozen holder loses
them without running any code.

Winning: a candidate campaigns (txn: K's create_revision == 0 -> put K under its lease) when K is
absent and no registered candidate ranks above it (priority, then name), or K has been absent
for a whole TTL (the best one is gone quiet).

Hand-over (preemption, a holder whose tracks fail or that goes into maintenance, a stop): the
holder H picks the best other candidate C and writes K/handover {H -> C}. C first bridges
mid-flow segments for the proxy's ports back to H (vipd.vrrp.handover, when there is a proxy),
then adds the VIPs with a kernel lifetime, GARPs, and writes K/accepted. H, seeing it, runs one
txn: if K is still under H's lease, put K = C under C's own lease (and delete K/handover,
K/accepted). Only after that txn succeeded does H let go of its VIPs: it keeps them silent on ARP
while C bridges its connections in flight back to it (quiet_hold, the proxy's drain), or without
a proxy for RELEASE_GRACE, then removes them. C becomes LEADER when it sees K under its lease and
announces again. Both hold the VIPs between C's add and H's remove: that is the planned overlap
(only C answers ARP once H is quiet), and no connection attempt meets a node without the VIP.
C drops its early VIPs when no transfer comes within HANDOVER_TIMEOUT, when K names anyone but
H or C, or at its own fence deadline; H withdraws its offer after HANDOVER_TIMEOUT (a stop then
removes the VIPs and revokes the lease anyway). Every kept VIP still obeys the fence and the
kernel lifetime.

A VIP the kernel refuses (IPv6 disabled on the interface, the interface gone) while holding or
taking over is a FAULT (`vip_add:IFACE`, fsm.Fault.VIP_ADD): the node drops what it added,
resigns K or gives up the offer, and stops being a candidate, so another one holds the VIPs
rather than nobody. It is a candidate again after a backoff (fsm.VIP_RETRY_FIRST, doubling to
fsm.VIP_RETRY_MAX, back to the first once an add succeeds); a refused add then faults again.
A successor accepts a hand-over only once its VIPs are added.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field

from lbproxy.restarts import Backoff
from vipd.vrrp.fsm import VIP_RETRY_FIRST, VIP_RETRY_MAX, Fault, fault_reason

MARGIN = 0.5                  # seconds before the earliest possible expiry of the lease
RETRY = 0.25                  # after a failed grant or renewal
LIFETIME_SLACK = 0.2          # kernel lifetimes are whole seconds and end up to ~0.1 s late
HANDOVER_TIMEOUT = 2.0
# After a transfer the old holder keeps its VIPs this long, so the successor's announcement as
# LEADER lands before: a client that an ARP exchange with the old holder pointed back at it
# is moved again while the old holder still answers.
RELEASE_GRACE = 0.3
RE_OFFER_AFTER = 1.0


class State(enum.StrEnum):
    INIT = "INIT"
    FOLLOWER = "FOLLOWER"
    LEADER = "LEADER"
    FAULT = "FAULT"


@dataclass(frozen=True)
class Entry:
    node: str
    priority: int
    lease: int
    address: str | None = None      # the node's own address on the segment (for the bridge)


@dataclass(frozen=True)
class Snapshot:
    """What one read of K and everything under K/ showed."""
    holder: Entry | None = None
    candidates: tuple[Entry, ...] = ()
    handover: tuple[str, str] | None = None          # (from, to)
    accepted: tuple[str, str] | None = None          # (node, from)


# --- events (what happened)

@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class LeaseGranted:
    lease: int
    ttl: float
    sent_at: float


@dataclass(frozen=True)
class LeaseRenewed:
    lease: int
    ttl: float
    sent_at: float


@dataclass(frozen=True)
class LeaseFailed:
    lease: int | None               # None: the grant failed
    reason: str
    gone: bool = False              # etcd answered that the lease no longer exists


@dataclass(frozen=True)
class Seen:
    snapshot: Snapshot


@dataclass(frozen=True)
class ReadFailed:
    reason: str


@dataclass(frozen=True)
class Eligibility:
    reasons: frozenset[str]          # why this node must not hold (failing weight-0 tracks, no link)
    priority: int


@dataclass(frozen=True)
class Reconfigured:
    """A reload changed this election in place (same key and interface): its priority and tracks
    (their verdict in `eligibility`) and its VIPs (`added`, `dropped`: no longer configured)."""
    eligibility: Eligibility
    added: tuple[str, ...] = ()
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class Maintenance:
    on: bool


@dataclass(frozen=True)
class Stop:
    pass


@dataclass(frozen=True)
class VipsAdded:
    """The kernel's answer to an AddVips: `refused` holds (VIP, why) for each VIP it did not add."""
    interface: str
    refused: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Done:
    """A write finished; `action` is the one asked for."""
    action: object
    ok: bool
    reason: str = ""


# --- actions (what the shell does)

@dataclass(frozen=True)
class Grant:
    pass


@dataclass(frozen=True)
class Renew:
    lease: int


@dataclass(frozen=True)
class Revoke:
    lease: int


@dataclass(frozen=True)
class Register:
    lease: int
    priority: int


@dataclass(frozen=True)
class Unregister:
    pass


@dataclass(frozen=True)
class Campaign:
    lease: int
    priority: int


@dataclass(frozen=True)
class Offer:
    to: str
    lease: int


@dataclass(frozen=True)
class Accept:
    holder: str
    lease: int


@dataclass(frozen=True)
class Transfer:
    lease: int                      # ours: the txn's guard
    to: Entry


@dataclass(frozen=True)
class Withdraw:
    """Delete K/handover (our offer) if K is still ours."""
    lease: int


@dataclass(frozen=True)
class Resign:
    """Delete K (and the offer keys) if K is still under our lease."""
    lease: int


@dataclass(frozen=True)
class AddVips:
    lifetime: int
    announce: bool                  # first add: send GARP/NA


@dataclass(frozen=True)
class RemoveVips:
    pass


@dataclass(frozen=True)
class DropVips:
    """Remove VIPs a reload took out of the config, whatever else is on this node."""
    vips: tuple[str, ...]


@dataclass(frozen=True)
class Announce:
    """GARP/NA for VIPs already on this node."""


@dataclass(frozen=True)
class Bridge:
    """Before taking over: send mid-flow segments of connections the predecessor accepted back to it."""
    predecessor: str


@dataclass(frozen=True)
class HoldQuietly:
    """After a transfer: keep the VIPs, silent on ARP, while the successor bridges our connections to us."""


@dataclass(frozen=True)
class Speak:
    """End a quiet hold: the VIPs are ours to announce again."""


@dataclass(frozen=True)
class StateChanged:
    old: State
    new: State
    reason: str
    holder: str | None


@dataclass
class ElectionCore:
    node: str
    priority: int
    ttl: float
    quiet_hold: float = 0.0                 # seconds an old holder keeps its VIPs quietly (0: no bridge)
    address: str | None = None
    state: State = State.INIT
    reason: str = "starting"
    lease: int | None = None
    deadline: float = 0.0
    granted_ttl: float = 0.0
    snapshot: Snapshot = field(default_factory=Snapshot)
    problems: frozenset[str] = frozenset()
    maintenance: bool = False
    stopping: bool = False
    stopped: bool = False
    vips: bool = False                      # asked to be on this node
    last_error: str | None = None
    keepalive_failures: int = 0
    _session_busy: bool = False
    _session_at: float = 0.0                # when the next grant/renewal is due
    _registered: tuple[int, int] | None = None      # (lease, priority) of our candidacy
    _campaigning: bool = False
    _absent_since: float | None = None
    _offered: tuple[str, float] | None = None        # (to, at)
    _offer_after: float = 0.0
    _transferring: bool = False
    _taking_over: tuple[str, float] | None = None    # (from, since): our VIPs are up early
    _accepted: bool = False
    _fenced: str | None = None              # why the last lease was dropped, until a new one
    _fresh: bool = False                    # read the keys since the lease was granted
    _gave_up: tuple[str, str] | None = None          # an offer we could not complete in time
    _stop_since: float | None = None
    _release_at: float | None = None                 # a transfer is done: VIPs go then
    _stale_revoked: set[int] = field(default_factory=set)
    _vips_in_place: bool = False            # the last claim's VIPs are on the interface
    vip_fault: str | None = None            # a refused VIP add: not a candidate until vip_retry_at
    vip_retry_at: float = 0.0
    _vip_backoff: Backoff = field(default_factory=lambda: Backoff(VIP_RETRY_FIRST, VIP_RETRY_MAX))

    # ------------------------------------------------------------ reading

    def valid(self, now: float) -> bool:
        return self.lease is not None and now < self.deadline

    @property
    def holder(self) -> str | None:
        return self.snapshot.holder.node if self.snapshot.holder else None

    def holds_key(self) -> bool:
        h = self.snapshot.holder
        return h is not None and self.lease is not None and h.node == self.node and h.lease == self.lease

    def may_hold(self, now: float) -> bool:
        return (self.valid(now) and not self.problems and not self.maintenance and not self.stopping
                and self.vip_fault is None)

    @property
    def release_at(self) -> float | None:
        """When VIPs kept after a transfer (quietly, or for the grace) go; None: none kept."""
        return self._release_at

    def lifetime(self, now: float) -> int:
        return max(1, math.floor(self.deadline - now - LIFETIME_SLACK))

    def next_deadline(self) -> float | None:
        times = [self._session_at if not self._session_busy else None]
        if self.lease is not None:
            times.append(self.deadline)
        if self._offered:
            times.append(self._offered[1] + HANDOVER_TIMEOUT)
        if self._taking_over:
            times.append(self._taking_over[1] + HANDOVER_TIMEOUT)
        if self._absent_since is not None:
            times.append(self._absent_since + self.ttl)
        if self._stop_since is not None:
            times.append(self._stop_since + HANDOVER_TIMEOUT)
        if self._release_at is not None:
            times.append(self._release_at)
        if self._offer_after:
            times.append(self._offer_after)
        if self.vip_fault is not None:
            times.append(self.vip_retry_at)
        pending = [t for t in times if t is not None]
        return min(pending) if pending and not self.stopped else None

    def _rank(self, e: Entry) -> tuple[int, str]:
        return (e.priority, e.node)

    def _others(self) -> list[Entry]:
        return sorted((c for c in self.snapshot.candidates if c.node != self.node), key=self._rank, reverse=True)

    # ------------------------------------------------------------ deciding

    def handle(self, event: object, now: float) -> list:
        actions: list = []
        if self.stopped:
            return actions
        match event:
            case LeaseGranted(lease, ttl, sent_at):
                self._session_busy = False
                self.lease, self.granted_ttl = lease, ttl
                self._fresh = False
                self._fenced = None
                self.deadline = sent_at + ttl - MARGIN
                self._session_at = sent_at + ttl / 3
                self.last_error = None
            case LeaseRenewed(lease, ttl, sent_at):
                self._session_busy = False
                if lease == self.lease:
                    self.deadline = max(self.deadline, sent_at + ttl - MARGIN)
                    self.granted_ttl = ttl
                    self._session_at = sent_at + ttl / 3
                    self.last_error = None
                    if self.vips and self.valid(now):
                        actions.append(AddVips(self.lifetime(now), announce=False))
            case LeaseFailed(lease, reason, gone):
                self._session_busy = False
                self.keepalive_failures += lease is not None
                self.last_error = reason
                self._session_at = now + RETRY
                if gone and lease == self.lease:
                    actions += self._fence(now, f"lease lost: {reason}", revoke=False)
            case Seen(snapshot):
                self.snapshot = snapshot
                self._fresh = True
                self._campaigning = False if snapshot.holder else self._campaigning
            case ReadFailed(reason):
                self.last_error = reason
            case Eligibility(problems, priority):
                self.problems, self.priority = frozenset(problems), priority
            case Maintenance(on):
                self.maintenance = on
            case Reconfigured(eligibility, added, dropped):
                self.problems, self.priority = frozenset(eligibility.reasons), eligibility.priority
                actions += self._revip(added, dropped, now)
            case Stop():
                self.stopping = True
                self._stop_since = now
            case Done(action, ok, reason):
                actions += self._done(action, ok, reason, now)
            case VipsAdded(interface, refused):
                self._vips_added(interface, refused, now)
        actions += self._decide(now)
        return actions

    def _done(self, action: object, ok: bool, reason: str, now: float) -> list:
        if not ok:
            self.last_error = reason
        match action:
            case Campaign(lease, priority):
                self._campaigning = False
                if ok and lease == self.lease:
                    self.snapshot = Snapshot(holder=Entry(self.node, priority, lease, self.address),
                                             candidates=self.snapshot.candidates)
            case Transfer(_, to):
                self._transferring = False
                self._offered = None
                if ok:
                    self.snapshot = Snapshot(holder=to, candidates=self.snapshot.candidates)
                    if self.quiet_hold > 0:
                        self._release_at = now + self.quiet_hold
                        return [HoldQuietly()]
                    self._release_at = now + RELEASE_GRACE
            case Register(lease, priority):
                if not ok and self._registered == (lease, priority):
                    self._registered = None
            case Offer():
                if not ok:
                    self._offered = None
            case Accept():
                if not ok:
                    self._accepted = False
            case Revoke():
                if self.stopping and self.lease is None:
                    self.stopped = True
        return []

    def _vips_added(self, interface: str, refused: tuple[tuple[str, str], ...], now: float) -> None:
        if not refused:
            self._vip_backoff.reset()
            self._vips_in_place = self.vips
            return
        # Refused while letting go (quiet hold, grace) or after dropping them: nothing to give up.
        if not self.vips or not (self.holds_key() or self._taking_over is not None) or self.vip_fault:
            return
        why = "; ".join(f"{vip}: {reason}" for vip, reason in refused)
        self.vip_fault = f"{fault_reason(Fault.VIP_ADD, interface)} (cannot add {why})"
        self.vip_retry_at = now + self._vip_backoff.next()

    def _revip(self, added: tuple[str, ...], dropped: tuple[str, ...], now: float) -> list:
        """VIPs on this node follow the new list: dropped ones go at once; new ones join (and are
        announced) unless this node is letting its VIPs go. Priority and eligibility need nothing
        here: the candidacy record, preemption and hand-over follow them in `_decide`."""
        if not self.vips:
            return []
        actions: list = [DropVips(dropped)] if dropped else []
        if added and self._release_at is None and self.valid(now):
            self._vips_in_place = False         # a successor accepts only once the new ones are added too
            actions.append(AddVips(self.lifetime(now), announce=True))
        return actions

    def _fence(self, now: float, reason: str, revoke: bool = True) -> list:
        """The lease can no longer be trusted: VIPs off first, then start a new session."""
        actions = self._drop_vips()
        old, self.lease = self.lease, None
        self._registered = None
        self._campaigning = self._transferring = self._accepted = False
        self._offered = self._taking_over = self._release_at = None
        self.snapshot = Snapshot()
        self._session_busy = False
        self._session_at = now
        if revoke and old is not None:
            actions.append(Revoke(old))
        self._fenced = reason
        self._set(State.FAULT, reason, actions)
        return actions

    def _drop_vips(self) -> list:
        if not self.vips:
            return []
        self.vips = self._vips_in_place = False
        return [RemoveVips()]

    def _set(self, state: State, reason: str, actions: list) -> None:
        if (state, reason) != (self.state, self.reason):
            old, self.state, self.reason = self.state, state, reason
            if old != state:
                actions.append(StateChanged(old, state, reason, self.holder))

    def _decide(self, now: float) -> list:
        actions: list = []
        if self.vip_fault is not None and now >= self.vip_retry_at:
            self.vip_fault = None           # a candidate again: the next add says whether it works
        if self.lease is not None and now >= self.deadline:
            actions += self._fence(now, f"etcd: lease not renewed in time ({self.last_error or 'no answer'})")
        if not self._session_busy and now >= self._session_at and not (self.stopping and self.lease is None):
            self._session_busy = True
            actions.append(Grant() if self.lease is None else Renew(self.lease))
        if self.stopping:
            return actions + self._stop(now)
        if self.lease is None:
            self._set(State.FAULT, self._fenced or (f"etcd: no lease ({self.last_error})" if self.last_error
                                                    else "etcd: waiting for a lease"), actions)
            return actions
        lease = self.lease
        snap = self.snapshot
        can = self.may_hold(now)
        # Our candidacy mirrors whether we may hold.
        if can and self._registered != (lease, self.priority):
            self._registered = (lease, self.priority)
            actions.append(Register(lease, self.priority))
        elif not can and self._registered is not None:
            self._registered = None
            actions.append(Unregister())
        h = snap.holder
        if h is not None and h.node == self.node and h.lease != lease and h.lease not in self._stale_revoked:
            self._stale_revoked.add(h.lease)       # our own key from an earlier session
            actions.append(Revoke(h.lease))
        self._absent_since = (self._absent_since or now) if h is None else None
        if self.holds_key():
            actions += self._as_holder(now, lease, can)
        else:
            actions += self._as_follower(now, lease, can)
        return actions

    def _as_holder(self, now: float, lease: int, can: bool) -> list:
        actions: list = []
        if self.vip_fault is not None:      # no holder without its VIPs: another candidate takes K
            return self._let_go(lease, actions)
        was_taking_over = self._taking_over is not None
        self._taking_over = None
        if self.vips and self._release_at is None and was_taking_over:
            actions.append(Announce())
        self._claim_vips(now, actions)
        self._accepted = False
        others = self._others()
        if can:
            self._set(State.LEADER, "holds the lease on the key", actions)
            wanted = next((c for c in others if c.priority > self.priority), None)
        else:
            wanted = others[0] if others else None
            if wanted is None:      # nobody to hand to: let go
                return self._let_go(lease, actions)
        snap = self.snapshot
        if self._offered and now >= self._offered[1] + HANDOVER_TIMEOUT:
            self._offered = None
            self._offer_after = now + RE_OFFER_AFTER
            actions.append(Withdraw(lease))
        elif self._offer_after and now >= self._offer_after:
            self._offer_after = 0.0
        if wanted is None:
            if self._offered:
                self._offered = None
                actions.append(Withdraw(lease))
            return actions
        if (self._offered and snap.accepted and snap.accepted == (self._offered[0], self.node)
                and not self._transferring):
            to = next((c for c in snap.candidates if c.node == self._offered[0]), None)
            if to is not None:
                self._transferring = True
                actions.append(Transfer(lease, to))
        elif not self._offered and not self._offer_after:
            self._offered = (wanted.node, now)
            actions.append(Offer(wanted.node, lease))
        return actions

    def _let_go(self, lease: int, actions: list) -> list:
        actions += self._drop_vips()
        actions.append(Resign(lease))
        self._offered = None
        self.snapshot = Snapshot(candidates=self.snapshot.candidates)
        self._set_follower(self._why_not(), actions)
        return actions

    def _set_follower(self, reason: str, actions: list) -> None:
        """FOLLOWER, or FAULT while a refused VIP keeps this node from being a candidate."""
        if self.vip_fault is not None:
            self._set(State.FAULT, self.vip_fault, actions)
        else:
            self._set(State.FOLLOWER, reason, actions)

    def _as_follower(self, now: float, lease: int, can: bool) -> list:
        actions: list = []
        snap, h = self.snapshot, self.snapshot.holder
        self._offered = None
        offer = snap.handover
        if offer != self._gave_up:
            self._gave_up = None
        if (can and h is not None and offer == (h.node, self.node) and offer != self._gave_up
                and (self._taking_over is None or self._taking_over[0] == h.node)):
            if self._taking_over is None:
                self._taking_over = (h.node, now)
            if now >= self._taking_over[1] + HANDOVER_TIMEOUT:
                self._gave_up = offer
            else:
                if not self.vips and self.quiet_hold > 0 and h.address:
                    actions.append(Bridge(h.address))
                self._claim_vips(now, actions)
                if not self._accepted and self._vips_in_place:     # VIPs in place before we say so
                    self._accepted = True
                    actions.append(Accept(h.node, lease))
                self._set(State.FOLLOWER, f"taking over from {h.node}", actions)
                return actions
        releasing = self._release_at is not None and now < self._release_at and self.valid(now)
        if (self._taking_over is not None or self.vips) and not releasing:
            self._taking_over = self._release_at = None
            self._accepted = False
            actions += self._drop_vips()
        if h is None and can and not self._campaigning and self._fresh:
            best = max((*snap.candidates, Entry(self.node, self.priority, lease, self.address)), key=self._rank)
            waited = self._absent_since is not None and now >= self._absent_since + self.ttl
            if best.node == self.node or waited:
                self._campaigning = True
                actions.append(Campaign(lease, self.priority))
        self._set_follower(f"held by {h.node}" if h else ("campaigning" if can else self._why_not()), actions)
        return actions

    def _claim_vips(self, now: float, actions: list) -> None:
        """VIPs on and announced: added, or taken back out of a quiet hold."""
        if not self.vips:
            self.vips = True
            self._vips_in_place = False
            actions.append(AddVips(self.lifetime(now), announce=True))
        elif self._release_at is not None:
            actions += [Speak(), Announce()]
        self._release_at = None

    def _why_not(self) -> str:
        if self.maintenance:
            return "maintenance"
        if self.problems:
            return "not eligible: " + ", ".join(sorted(self.problems))
        return "stopping" if self.stopping else "not eligible"

    def _stop(self, now: float) -> list:
        """Hand over when someone can take it, else (or when that times out) let go."""
        actions: list = []
        lease = self.lease
        if lease is not None and self.holds_key() and self.valid(now):
            others = self._others()
            expired = self._stop_since is not None and now >= self._stop_since + HANDOVER_TIMEOUT
            if others and not expired:
                if self._registered is not None:
                    self._registered = None
                    actions.append(Unregister())
                actions += self._as_holder(now, lease, can=False)
                if self.holds_key():
                    return actions
        if self._release_at is not None and now < self._release_at and self.valid(now):
            return actions
        actions += self._drop_vips()
        if lease is not None:
            self.lease = None
            actions.append(Revoke(lease))
        else:
            self.stopped = True
        self._offered = self._taking_over = None
        self._set(State.FOLLOWER if self.state != State.FAULT else State.FAULT, "stopped", actions)
        return actions
