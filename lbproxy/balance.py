"""Which backend gets the next connection: small balancers over a worker's pool snapshot.

`pick` runs once per accepted connection (and once per retry), so it walks the pool in a
single pass with plain attribute reads and integer arithmetic. The worker passes the
backends' current states on every call; the balancer itself only keeps what an algorithm
needs between picks (round-robin weights, hash seeds) and is rebuilt by `make_balancer`
whenever the backend list changes.
"""
from __future__ import annotations

import math
import random
import zlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import AbstractSet, Sequence

from lbproxy.health import BackendState

ALGORITHMS = ("round_robin", "least_conn", "random2", "source_hash")

_MASK64 = (1 << 64) - 1
_TWO_POW_MINUS_53 = 2.0 ** -53


@dataclass(slots=True)
class Candidate:
    index: int                 # position in the frontend's backend list (stable id)
    weight: int
    state: str                 # "up" | "down" | "drain"
    active: int = 0            # connections this worker has open to it now
    max_connections: int = 0   # 0 = unlimited; active >= max => full, skipped


class Balancer(ABC):
    """Filters the pool to what may be used, then lets the algorithm choose among it."""

    algorithm = ""

    def __init__(self, backends: Sequence[Candidate]) -> None:
        self.all_down = False

    def pick(self, pool: Sequence[Candidate], tried: AbstractSet[int],
             client_ip: str) -> Candidate | None:
        up: list[Candidate] = []
        down: list[Candidate] = []
        any_up = False
        for c in pool:
            state = c.state
            if state == BackendState.UP:
                any_up = True
                target = up
            elif state == BackendState.DOWN:
                target = down
            else:
                continue
            if c.index in tried or (c.max_connections and c.active >= c.max_connections):
                continue
            target.append(c)
        # Only when health says nothing is up do we try the down ones: a stale or wrong
        # health view must not turn into a total outage.
        self.all_down = not any_up
        eligible = up if any_up else down
        if not eligible:
            return None
        if len(eligible) == 1:
            return eligible[0]
        return self._choose(eligible, client_ip)

    @abstractmethod
    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        """Choose among at least two usable candidates of the same health tier."""


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
            value = current.get(c.index, 0) + c.weight
            current[c.index] = value
            total += c.weight
            if best_value is None or value > best_value:
                best, best_value = c, value
        current[best.index] = best_value - total
        return best


class RoundRobin(Balancer):
    algorithm = "round_robin"

    def __init__(self, backends: Sequence[Candidate]) -> None:
        super().__init__(backends)
        self._weights = _SmoothWeights()

    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        return self._weights.choose(eligible)


class LeastConn(Balancer):
    """Fewest active connections per unit of weight; ties go round robin, weighted."""

    algorithm = "least_conn"

    def __init__(self, backends: Sequence[Candidate]) -> None:
        super().__init__(backends)
        self._ties = _SmoothWeights()

    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        best = eligible[0]
        ties = [best]
        for c in eligible[1:]:
            # c.active / c.weight against best.active / best.weight, without division.
            mine = c.active * best.weight
            theirs = best.active * c.weight
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

    algorithm = "random2"

    def _choose(self, eligible: list[Candidate], client_ip: str) -> Candidate:
        total = 0
        for c in eligible:
            total += c.weight
        first = _weighted_draw(eligible, total, None)
        second = _weighted_draw(eligible, total - first.weight, first)
        if second.active * first.weight < first.active * second.weight:
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
        left -= c.weight
        if left < 0:
            break
    return chosen


class SourceHash(Balancer):
    """Weighted rendezvous (HRW) hashing on the client address.

    Each (client, backend) pair gets a score; the best usable backend wins. When a backend
    goes away only the clients whose best score was on it move, and they spread over the
    others by weight; the hash is deterministic, so every worker process agrees.
    """

    algorithm = "source_hash"

    def __init__(self, backends: Sequence[Candidate]) -> None:
        super().__init__(backends)
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
            score = log(((z >> 11) + 0.5) * _TWO_POW_MINUS_53) / c.weight
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


_BALANCERS: dict[str, type[Balancer]] = {
    cls.algorithm: cls for cls in (RoundRobin, LeastConn, Random2, SourceHash)}


def make_balancer(algorithm: str, backends: Sequence[Candidate]) -> Balancer:
    """A fresh balancer for this backend list; ValueError for an unknown algorithm."""
    try:
        cls = _BALANCERS[algorithm]
    except KeyError:
        raise ValueError(f"unknown balance algorithm {algorithm!r}; "
                         f"use one of {', '.join(ALGORITHMS)}") from None
    return cls(backends)
