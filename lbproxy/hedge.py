"""When a connect to a backend has taken too long to still be ordinary: the moment a second
attempt to another backend starts while the first carries on (happy-eyeballs style).

A backend host that vanished (link cut, no RST) drops SYNs, and its connect would only fail at
connect_timeout. Each backend's connect times are tracked as TCP tracks round-trip times (RFC
6298: a smoothed mean and mean deviation), and an attempt is overdue after mean + 4 deviations,
clamped to [HEDGE_FLOOR, connect_timeout]. Connects on a LAN take well under a millisecond, so
the floor is what applies there: a vanished backend costs a client about HEDGE_FLOOR.
"""
from __future__ import annotations

HEDGE_FLOOR = 0.05          # seconds; below this, event-loop latency alone would start hedges
HEDGE_UNKNOWN = 0.25        # seconds, for a backend with no successful connect seen yet
_GAIN, _DEVIATION_GAIN = 1 / 8, 1 / 4


class ConnectTimes:
    """The smoothed connect time of one backend, from the connects that succeeded."""

    __slots__ = ("mean", "deviation")

    def __init__(self) -> None:
        self.mean = -1.0                    # < 0: nothing observed yet
        self.deviation = 0.0

    def observe(self, seconds: float) -> None:
        if self.mean < 0:
            self.mean, self.deviation = seconds, seconds / 2
            return
        self.deviation += _DEVIATION_GAIN * (abs(seconds - self.mean) - self.deviation)
        self.mean += _GAIN * (seconds - self.mean)

    def overdue_after(self, connect_timeout: float) -> float:
        """Seconds after which a connect to this backend is overdue."""
        if self.mean < 0:
            return min(HEDGE_UNKNOWN, connect_timeout)
        return min(max(self.mean + 4 * self.deviation, HEDGE_FLOOR), connect_timeout)


def next_attempt_at(started: float, overdue_after: float, attempts: int, max_attempts: int) -> float | None:
    """When a connection whose newest attempt began at `started` starts its next one if nothing
    has answered by then; None when its attempts are spent (it waits for those in flight).
    An attempt that fails outright is retried at once instead, as before hedging."""
    if attempts >= max_attempts:
        return None
    return started + overdue_after
