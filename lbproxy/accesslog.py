"""The access log of a worker: one line per closed connection of a frontend with `access_log =
true`, rate-limited per worker (a token bucket) so a connection flood cannot flood the log; what
the bucket refused is counted and said in one line once lines flow again (or on the next tick).
"""
from __future__ import annotations

import enum
import logging
import time
from typing import Callable

log = logging.getLogger("lbproxy.access")

LINES_PER_SECOND = 100.0
BURST = 100.0


class Result(enum.StrEnum):
    """How a connection ended."""
    OK = "ok"                           # both sides closed normally
    CONNECT_FAILED = "connect_failed"   # no backend could be reached
    REFUSED = "refused"                 # max_connections reached: closed at accept
    TIMEOUT = "timeout"                 # idle or half-close timeout
    RESET = "reset"                     # a side reset, or the connection was aborted (end of a drain)


def client_text(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class TokenBucket:
    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self.tokens = burst
        self.stamp = clock()

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class AccessLog:
    def __init__(self, rate: float = LINES_PER_SECOND, burst: float = BURST,
                 clock: Callable[[], float] = time.monotonic, logger: logging.Logger = log) -> None:
        self.bucket = TokenBucket(rate, burst, clock)
        self.rate = rate
        self.logger = logger
        self.suppressed = 0

    def closed(self, frontend: str, client: str, backend: str | None, result: Result,
               bytes_in: int, bytes_out: int, duration: float) -> None:
        if not self.bucket.take():
            self.suppressed += 1
            return
        self._report_suppressed()
        fields = {"frontend": frontend, "client": client, "backend": backend, "result": result.value,
                  "bytes_in": bytes_in, "bytes_out": bytes_out, "duration": round(duration, 6)}
        self.logger.info("%s %s -> %s %s in=%d out=%d %.3fs", frontend, client, backend or "-",
                         result.value, bytes_in, bytes_out, duration, extra={"access": fields})

    def flush(self) -> None:
        """Say what was suppressed, once the bucket allows a line again (called periodically)."""
        if self.suppressed and self.bucket.take():
            self._report_suppressed()

    def _report_suppressed(self) -> None:
        if self.suppressed:
            self.logger.warning("access log: %d line(s) suppressed (over %g lines/s)", self.suppressed,
                                self.rate, extra={"access": {"suppressed": self.suppressed}})
            self.suppressed = 0
