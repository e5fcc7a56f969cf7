"""Health: the one counter for track scripts and backend checks alike (HAProxy check.c style),
and the backend states it decides.

`health` lives in [0, rise + fall). UP means health >= rise. A success moves it up, a failure
down; crossing the boundary flips the state and jumps to the far end, so a DOWN check needs
`rise` consecutive successes to come up and an UP check `fall` consecutive failures to go down.
"""
from __future__ import annotations

import enum


class HealthCounter:
    __slots__ = ("rise", "fall", "health")

    def __init__(self, rise: int = 2, fall: int = 3, up: bool = True) -> None:
        if rise < 1 or fall < 1:
            raise ValueError("rise and fall must be >= 1")
        self.rise = rise
        self.fall = fall
        self.health = self._top if up else 0

    @property
    def _top(self) -> int:
        return self.rise + self.fall - 1

    @property
    def up(self) -> bool:
        return self.health >= self.rise

    def record(self, ok: bool) -> bool:
        """Record one check result; return True when UP/DOWN changed."""
        was_up = self.up
        if ok:
            self.health = min(self.health + 1, self._top)
            if not was_up and self.up:
                self.health = self._top
        else:
            self.health = max(self.health - 1, 0)
            if was_up and not self.up:
                self.health = 0
        return was_up != self.up

    def force(self, up: bool) -> None:
        self.health = self._top if up else 0

    def describe(self) -> str:
        """'2/3 UP' as HAProxy shows it: progress towards the other state."""
        if self.up:
            return f"{self.health - self.rise + 1}/{self.fall} UP"
        return f"{self.health}/{self.rise} DOWN"


class BackendState(enum.StrEnum):
    """A backend as the balancer sees it: UP takes new connections; DOWN failed its checks (and is
    still tried when every backend is down); DRAIN was taken out by the operator."""
    UP = "up"
    DOWN = "down"
    DRAIN = "drain"
