"""Which backend gets the next connection: small balancers over a worker's pool snapshot.

`pick` runs once per accepted connection (and once per retry), so it walks the pool in a
single pass with plain attribute reads and integer arithmetic. The worker passes the
backends' current states on every call; the balancer itself only keeps what an algorithm
needs between picks (round-robin weights, hash seeds) and is rebuilt by `make_balancer`
whenever the backend list changes.

Which backends may take a connection is decided here and only here (`tier_of`): up primaries;
while none is up, up backups; while nothing is up at all, the down ones (a stale or wrong
health view must not turn into a total outage). The health checker summarizes a frontend with
the same tiers.

Slow start: a backend that came up `since` a moment ago takes `ramp_weight` of its weight,
growing linearly to the full weight over the frontend's `slow_start` seconds. Every algorithm
reads that effective weight (source_hash too: a growing weight only ever moves clients onto
the recovering backend, never between the others). `since` is a CLOCK_MONOTONIC reading of
the master's: that clock is system-wide on Linux, so the workers compare it with their own.
"""
from __future__ import annotations

import enum
import math
import random
import time
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import AbstractSet, Callable, Sequence

from lbproxy.health import BackendState


class Balance(enum.StrEnum):
    """The algorithms (`frontend.balance`); each names its Balancer below."""
    ROUND_ROBIN = "round_robin"
    LEAST_CONN = "least_conn"
    RANDOM2 = "random2"
    SOURCE_HASH = "source_hash"


_MASK64 = (1 << 64) - 1
_TWO_POW_MINUS_53 = 2.0 ** -53

# Effective weights are integers in 1/RAMP_SCALE of a weight unit, so a ramping weight-1
# backend still moves in 1 % steps while the algorithms keep integer arithmetic.
RAMP_SCALE = 100
NOT_RAMPING = -math.inf        # `since` of a backend up from the start: no slow start


class Tier(enum.IntEnum):
    """Where a backend stands in the order of use; the lowest tier present is the one used."""
    PRIMARY = 0
    BACKUP = 1
    DOWN_PRIMARY = 2
    DOWN_BACKUP = 3


# (state, backup) -> tier as a plain int: `pick` looks it up for every backend of every pick.
_TIERS: dict[tuple[str, bool], int] = {
    (BackendState.UP, False): Tier.PRIMARY.value, (BackendState.UP, True): Tier.BACKUP.value,
    (BackendState.DOWN, False): Tier.DOWN_PRIMARY.value, (BackendState.DOWN, True): Tier.DOWN_BACKUP.value}
_NO_TIER = len(Tier)
_ALL_DOWN_FROM = Tier.DOWN_PRIMARY.value


def tier_of(state: str, backup: bool) -> Tier | None:
    """A backend's tier; None when it takes no new connections at all (drained)."""
    tier = _TIERS.get((state, backup))
    return None if tier is None else Tier(tier)


def ramp_weight(weight: int, elapsed: float, slow_start: float) -> int:
    """The effective weight (in 1/RAMP_SCALE units) `elapsed` seconds after a backend came up:
    linear from 1 unit to the full weight over `slow_start` seconds; full when slow start is
    off or over."""
    full = weight * RAMP_SCALE
    if slow_start <= 0 or elapsed >= slow_start:
        return full
    return max(1, round(full * elapsed / slow_start))


@dataclass(slots=True)
class Candidate:
    index: int                 # position in the frontend's backend list (stable id)
    weight: int
    state: str                 # "up" | "down" | "drain"
    active: int = 0            # connections this worker has open to it now
    max_connections: int = 0   # 0 = unlimited; active >= max => full, skipped
    backup: bool = False       # used only while no primary is up
    since: float = NOT_RAMPING  # monotonic time it last came up, for slow start
    effective: int = 0         # the weight the algorithms use, set by pick for the eligible


class Balancer(ABC):
    """Filters the pool to what may be used, then lets the algorithm choose among it."""

    algorithm = ""

    def __init__(self, backends: Sequence[Candidate], slow_start: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.all_down = False
        self.slow_start = slow_start
        self.clock = clock

    def pick(self, pool: Sequence[Candidate], tried: AbstractSet[int],
             client_ip: str) -> Candidate | None:
        tier_get = _TIERS.get
        best = _NO_TIER
        eligible: list[Candidate] = []
        for c in pool:
            tier = tier_get((c.state, c.backup))
            # The best tier by health alone decides: a primary that is up but full or already
            # tried keeps the backups (and the down ones) out.
            if tier is None or tier > best:
                continue
            if tier < best:
                best = tier
                eligible = []
            if c.index in tried or (c.max_connections and c.active >= c.max_connections):
                continue
            eligible.append(c)
        self.all_down = best >= _ALL_DOWN_FROM
        if not eligible:
            return None
        if len(eligible) == 1:
            return eligible[0]
        slow_start = self.slow_start
        if slow_start:
            now = self.clock()
            settled = now - slow_start
            for c in eligible:
                c.effective = (c.weight * RAMP_SCALE if c.since <= settled
                               else ramp_weight(c.weight, now - c.since, slow_start))
        else:
            for c in eligible:
                c.effective = c.weight * RAMP_SCALE
        return self._choose(eligible, client_ip)

    @abstractmethod
    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        """Choose among at least two usable candidates of the same tier, by `effective` weight."""


class _SmoothWeights:
    """nginx's smooth weighted round robin: spreads a heavy backend's turns out evenly."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: dict[int, int] = {}

    def choose(self, eligible: list[Candidate]) -> Candidate:
        current = self.current
        total = 0
        best = eligible[0]
        best_value = None
        for c in eligible:
            value = current.get(c.index, 0) + c.effective
            current[c.index] = value
            total += c.effective
            if best_value is None or value > best_value:
                best, best_value = c, value
        current[best.index] = best_value - total
        return best


class RoundRobin(Balancer):
    algorithm = Balance.ROUND_ROBIN

    def __init__(self, backends: Sequence[Candidate], slow_start: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(backends, slow_start, clock)
        self._weights = _SmoothWeights()

    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        return self._weights.choose(eligible)


class LeastConn(Balancer):
    """Fewest active connections per unit of weight; ties go round robin, weighted."""

    algorithm = Balance.LEAST_CONN

    def __init__(self, backends: Sequence[Candidate], slow_start: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(backends, slow_start, clock)
        self._ties = _SmoothWeights()

    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        best = eligible[0]
        ties = [best]
        for c in eligible[1:]:
            # c.active / c.effective against best.active / best.effective, without division.
            mine = c.active * best.effective
            theirs = best.active * c.effective
            if mine < theirs:
                best = c
                ties = [c]
            elif mine == theirs:
                ties.append(c)
        if len(ties) == 1:
            return best
        return self._ties.choose(ties)


class Random2(Balancer):
    """Power of two choices: two weighted random draws, the less loaded one wins."""

    algorithm = Balance.RANDOM2

    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        total = 0
        for c in eligible:
            total += c.effective
        first = _weighted_draw(eligible, total, None)
        second = _weighted_draw(eligible, total - first.effective, first)
        if second.active * first.effective < first.active * second.effective:
            return second
        return first


def _weighted_draw(eligible: list[Candidate], total: int, skip: Candidate | None) -> Candidate:
    # The module-level generator is reseeded in every forked worker by CPython itself.
    left = random.random() * total
    chosen = None
    for c in eligible:
        if c is skip:
            continue
        chosen = c
        left -= c.effective
        if left < 0:
            break
    return chosen


class SourceHash(Balancer):
    """Weighted rendezvous (HRW) hashing on the client address.

    Each (client, backend) pair gets a score; the best usable backend wins. When a backend
    goes away only the clients whose best score was on it move, and they spread over the
    others by weight; the hash is deterministic, so every worker process agrees.
    """

    algorithm = Balance.SOURCE_HASH

    def __init__(self, backends: Sequence[Candidate], slow_start: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(backends, slow_start, clock)
        self._seeds: dict[int, int] = {c.index: _backend_seed(c.index) for c in backends}

    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        client = _splitmix64(zlib.crc32(client_ip.encode()))
        seeds = self._seeds
        log = math.log
        best = eligible[0]
        best_score = -math.inf
        for c in eligible:
            seed = seeds.get(c.index)
            if seed is None:
                seed = seeds[c.index] = _backend_seed(c.index)
            z = client ^ seed
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
            z ^= z >> 31
            # -Exp(weight) race: the highest log(u)/weight wins with probability weight/total.
            score = log(((z >> 11) + 0.5) * _TWO_POW_MINUS_53) / c.effective
            if score > best_score:
                best, best_score = c, score
        return best


def _splitmix64(value: int) -> int:
    z = (value + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _backend_seed(index: int) -> int:
    return _splitmix64(_splitmix64(index + 0x5EED))


_BALANCERS: dict[Balance, type[Balancer]] = {
    cls.algorithm: cls for cls in (RoundRobin, LeastConn, Random2, SourceHash)}


def make_balancer(algorithm: str, backends: Sequence[Candidate], slow_start: float = 0.0,
                  clock: Callable[[], float] = time.monotonic) -> Balancer:
    """A fresh balancer for this backend list; ValueError for an unknown algorithm."""
    try:
        cls = _BALANCERS[algorithm]
    except KeyError:
        raise ValueError(f"unknown balance algorithm {algorithm!r}; "
                         f"use one of {', '.join(Balance)}") from None
    return cls(backends, slow_start, clock)
