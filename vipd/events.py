"""The node's event stream: one ordered record of what happened (transitions with their reason,
health changes, operator actions, reloads), held in a bounded ring for `lbctl events` and the
status page, fanned out to followers (`lbctl events --follow`) and written to the log.

Emitting never blocks and never waits for a reader: each follower has a bounded queue, and a
follower that falls behind loses events, counted and reported to it in the stream itself as one
`events.dropped` record (whose fields say which sequence numbers it missed).
"""
from __future__ import annotations

import asyncio
import collections
import datetime
import enum
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from lbproxy.events import ProxyEvent

log = logging.getLogger("vipd.events")

RING_SIZE = 1000
FOLLOWER_QUEUE = 1000


class Kind(enum.StrEnum):
    DAEMON_START = "daemon.start"
    DAEMON_STOP = "daemon.stop"
    RELOAD = "config.reload"                  # fields: ok, config, summary | errors
    VRRP_STATE = "vrrp.state"                 # old, new, reason, priority, master
    VRRP_PRIORITY = "vrrp.priority"           # old, new (the tracks moved it)
    ELECTION_STATE = "election.state"         # old, new, reason, holder
    ANYCAST_STATE = "anycast.state"           # old, new, reason
    MAINTENANCE = "maintenance"               # on, instance (null: all)
    BACKEND_STATE = ProxyEvent.BACKEND_STATE.value          # frontend, backend, old, new, reason, health
    FRONTEND_ALL_DOWN = ProxyEvent.FRONTEND_ALL_DOWN.value  # frontend, all_down
    WORKER_RESTART = ProxyEvent.WORKER_RESTART.value        # worker, pid, exit, ran_seconds, restart_in
    BACKEND_DRAIN = "backend.drain"           # frontend, backend, state (after), by
    BACKEND_ENABLE = "backend.enable"         # frontend, backend, state (after), by
    BACKEND_WEIGHT = "backend.weight"         # frontend, backend, weight, old, by
    DROPPED = "events.dropped"                # only in a follower's stream: count, first, last


class Level(enum.StrEnum):
    """An event's severity, as the log and the journal see it."""
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def logging_level(self) -> int:
        return logging.getLevelName(self.name)


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Event:
    seq: int
    time: str                  # UTC, `2026-11-26T23:00:00.123Z`
    kind: Kind
    subject: str               # what it is about: an instance, `frontend/backend`, a worker, the config file
    message: str               # one line for a person
    level: Level = Level.INFO
    fields: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The record as the control socket and `lbctl events --json` carry it (schema: Event)."""
        return {"seq": self.seq, "time": self.time, "kind": self.kind.value, "subject": self.subject,
                "level": self.level.value, "message": self.message, "fields": dict(self.fields)}


def render_line(record: Mapping[str, Any]) -> str:
    """One readable line of an Event's dict (lbctl, the status page): time, kind, message."""
    return f"{record.get('time', '-')}  {record.get('kind', '-'):<20} {record.get('message', '')}"


# EventLog.emit's signature: (kind, subject, message, fields=None, *, level, logger, logged).
Emit = Callable[..., object]


def log_only(kind: Kind, subject: str, message: str, fields: Mapping[str, Any] | None = None, *,
             level: Level = Level.INFO, logger: logging.Logger | None = None, logged: bool = False) -> None:
    """An Emit for components run without an event log (tests, tools): the log line only."""
    if not logged:
        (logger or log).log(Level(level).logging_level, message)


class Subscription:
    """One follower's view: the events emitted since it subscribed, in order, at most `limit`
    waiting. Iterate with `async for`; the iteration ends when the log closes."""

    def __init__(self, owner: "EventLog", limit: int) -> None:
        self._owner = owner
        self._limit = max(limit, 2)
        self._pending: collections.deque[Event] = collections.deque()
        self._waiter: asyncio.Future | None = None
        self._gap: list[int] = []          # [count, first seq, last seq] of events lost right now
        self.dropped = 0
        self.closed = False

    def offer(self, event: Event) -> None:
        """Called by the emitter: queue or count, never wait."""
        if self.closed:
            return
        room = self._limit - len(self._pending)
        if room < (2 if self._gap else 1):
            self.dropped += 1
            if self._gap:
                self._gap[0] += 1
                self._gap[2] = event.seq
            else:
                self._gap = [1, event.seq, event.seq]
            return
        self._report_gap()
        self._pending.append(event)
        self._wake()

    def _report_gap(self) -> None:
        if self._gap:
            count, first, last = self._gap
            self._gap = []
            self._pending.append(Event(
                last, utc_now(), Kind.DROPPED, "events",
                f"this reader fell behind: {count} event(s) dropped (seq {first}..{last})",
                Level.WARNING, {"count": count, "first": first, "last": last}))

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._report_gap()
            self._owner._subscribers.discard(self)
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def get(self) -> Event | None:
        """The next event; None once the subscription is closed and emptied."""
        while not self._pending:
            if self.closed:
                return None
            if self._gap:
                self._report_gap()
                break
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._pending.popleft()

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> Event:
        event = await self.get()
        if event is None:
            raise StopAsyncIteration
        return event


def describe_proxy_event(kind: ProxyEvent, fields: Mapping[str, Any]) -> tuple[str, str, Level]:
    """(subject, message, level) of an event the proxy supervisor reported."""
    if kind is ProxyEvent.BACKEND_STATE:
        subject = f"{fields['frontend']}/{fields['backend']}"
        reason = f": {fields['reason']}" if fields.get("reason") else ""
        level = Level.WARNING if fields.get("new") == "down" else Level.INFO
        return subject, f"frontend {subject} {fields['old']} -> {fields['new']}{reason} ({fields.get('health')})", level
    if kind is ProxyEvent.FRONTEND_ALL_DOWN:
        if fields["all_down"]:
            return fields["frontend"], f"frontend {fields['frontend']}: every backend is down or drained", Level.WARNING
        return fields["frontend"], f"frontend {fields['frontend']}: a backend takes connections again", Level.INFO
    if kind is ProxyEvent.WORKER_RESTART:
        return fields["worker"], (f"proxy worker {fields['worker']} (pid {fields['pid']}) ended ({fields['exit']}) after "
                                  f"{fields['ran_seconds']:.1f}s; restarting it in {fields['restart_in']:.1f}s"), Level.ERROR
    return "proxy", f"proxy: {kind}", Level.INFO


class EventLog:
    """The ring and its followers. Used from the daemon's event loop only."""

    def __init__(self, capacity: int = RING_SIZE, follower_queue: int = FOLLOWER_QUEUE) -> None:
        self.capacity = capacity
        self.follower_queue = follower_queue
        self._ring: collections.deque[Event] = collections.deque(maxlen=capacity)
        self._subscribers: set[Subscription] = set()
        self.last_seq = 0
        self.closed = False

    def emit(self, kind: Kind, subject: str, message: str, fields: Mapping[str, Any] | None = None, *,
             level: Level = Level.INFO, logger: logging.Logger | None = None, logged: bool = False) -> Event:
        """Record an event, hand it to every follower and log `message` (through `logger`, with the
        event attached for structured logs) unless its origin `logged` it already."""
        self.last_seq += 1
        event = Event(self.last_seq, utc_now(), Kind(kind), subject, message, Level(level), dict(fields or {}))
        self._ring.append(event)
        for subscriber in list(self._subscribers):
            subscriber.offer(event)
        if not logged:
            (logger or log).log(event.level.logging_level, message, extra={"event": event.to_dict()})
        return event

    def recent(self, limit: int | None = None, after_seq: int = 0) -> list[Event]:
        """The newest `limit` held events with a sequence number above `after_seq`, oldest first."""
        found = [e for e in self._ring if e.seq > after_seq] if after_seq else list(self._ring)
        return found[max(len(found) - limit, 0):] if limit is not None else found

    def __iter__(self) -> Iterator[Event]:
        return iter(list(self._ring))

    def subscribe(self, backlog: int | None = 0, after_seq: int = 0) -> Subscription:
        """A follower, first fed the held events `recent(backlog, after_seq)` (None: all of them)."""
        subscription = Subscription(self, self.follower_queue)
        if backlog != 0:
            for event in self.recent(backlog, after_seq):
                subscription.offer(event)
        if self.closed:
            subscription.close()
        else:
            self._subscribers.add(subscription)
        return subscription

    @property
    def followers(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every follower's stream (the daemon stops); what is queued is still delivered."""
        self.closed = True
        for subscriber in list(self._subscribers):
            subscriber.close()
