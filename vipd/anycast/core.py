"""Whether an anycast VIP is announced: a pure decision from the tracks, maintenance and the daemon's
life. `handle(event, now)` returns the actions for the shell (vipd.anycast.service) to execute, in
order; nothing here touches the system."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class AnycastState(enum.StrEnum):
    ANNOUNCED = "ANNOUNCED"
    WITHDRAWN = "WITHDRAWN"


# --- events

@dataclass(frozen=True)
class Started:
    """The device is there: from now on the VIPs may be announced."""


@dataclass(frozen=True)
class TracksChanged:
    failing: frozenset[str] = frozenset()     # names of the weight-0 tracks failing now


@dataclass(frozen=True)
class MaintenanceChanged:
    on: bool


@dataclass(frozen=True)
class Stopping:
    """The daemon stops or the section left the config: withdraw for good."""


Event = Started | TracksChanged | MaintenanceChanged | Stopping


# --- actions

@dataclass(frozen=True)
class Announce:
    """Put the VIPs on the device (the routing daemon announces them)."""


@dataclass(frozen=True)
class Withdraw:
    """Take the VIPs off the device but keep delivering them locally, so connections still routed
    here while the routers converge are served."""


@dataclass(frozen=True)
class StateChanged:
    old: AnycastState
    new: AnycastState
    reason: str


Action = Announce | Withdraw | StateChanged


@dataclass
class AnycastCore:
    started: bool = False
    stopping: bool = False
    maintenance: bool = False
    failing: frozenset[str] = frozenset()
    state: AnycastState = AnycastState.WITHDRAWN
    since: float = 0.0
    reason: str = "starting"
    transitions: int = 0

    def withdraw_reason(self) -> str | None:
        """Why the VIPs must not be announced now, or None when they should be."""
        if self.stopping:
            return "stopping"
        if not self.started:
            return "starting"
        if self.maintenance:
            return "maintenance"
        if self.failing:
            return "failing: " + ", ".join(sorted(self.failing))
        return None

    def handle(self, event: Event, now: float) -> list[Action]:
        if isinstance(event, Started):
            self.started = True
        elif isinstance(event, TracksChanged):
            self.failing = frozenset(event.failing)
        elif isinstance(event, MaintenanceChanged):
            self.maintenance = event.on
        elif isinstance(event, Stopping):
            self.stopping = True
        else:
            raise TypeError(f"not an anycast event: {event!r}")
        reason = self.withdraw_reason()
        wanted = AnycastState.WITHDRAWN if reason else AnycastState.ANNOUNCED
        if wanted == self.state:
            self.reason = reason or "serving"
            return []
        old, self.state, self.since = self.state, wanted, now
        self.reason = reason or "serving"
        self.transitions += 1
        change = StateChanged(old, wanted, self.reason)
        return [Announce(), change] if wanted == AnycastState.ANNOUNCED else [Withdraw(), change]
