"""Active and passive health of one frontend's backends, in the master process's event loop.

Every backend gets its own probe task: tcp (connect, close), http or https (GET `path`,
status in `expect`). Results feed lbproxy.health.HealthCounter, the same rise/fall counter
the VRRP track scripts use. Backends start UP, as in HAProxy, so a restart or reload never
blackholes traffic while the first probes are still out. Workers report failed connects
(passive checks); each counts as one failed probe. `on_change` fires once per change of the
effective state (up/down/drain) or weight, which is what the workers' balancers need to hear about.
The operator's runtime overrides (drain, weight) live here too: a weight of 0 drains.

The checker is the one place that decides (and logs) whether the whole frontend is down:
`all_down` (and `using_backups`) are kept current before `on_change` fires, so its listeners
read a settled summary. Both come from lbproxy.balance's tiers, the rule the balancers pick by.

`up_since` is when a backend last became up (recovered, enabled, or added by a reload; not at
start): the start of its slow-start ramp, pushed to the workers with its state.
"""
from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable

import aiohttp

from lbproxy.balance import RAMP_SCALE, Tier, ramp_weight, tier_of
from lbproxy.config import BackendConfig, FrontendConfig, HealthConfig
from lbproxy.health import BackendState, HealthCounter

log = logging.getLogger("lbproxy.health")

USER_AGENT = "vipd-healthcheck/1"


class CheckFailed(Exception):
    """A probe got an answer, but the wrong one (e.g. HTTP 503)."""


@dataclass(frozen=True)
class Override:
    """What the operator set on one backend at runtime (`lbctl drain`, `lbctl weight`)."""
    drain: bool = False
    weight: int | None = None      # None: the configured weight


@dataclass
class BackendHealth:
    address: str
    counter: HealthCounter
    backend: BackendConfig
    drained: bool = False
    weight_override: int | None = None
    last_error: str | None = None
    last_check_latency: float | None = None
    checks: int = 0
    check_failures: int = 0
    passive_failures: int = 0
    failures_in_row: int = 0
    up_since: float | None = None      # time.monotonic() when it last came up; None: up from the start
    task: asyncio.Task | None = field(default=None, repr=False)

    @property
    def weight(self) -> int:
        return self.backend.weight if self.weight_override is None else self.weight_override

    @property
    def override(self) -> Override:
        return Override(self.drained, self.weight_override)

    @property
    def state(self) -> str:
        if self.drained or self.weight == 0:
            return BackendState.DRAIN
        return BackendState.UP if self.counter.up else BackendState.DOWN


class HealthChecker:
    def __init__(self, frontend: FrontendConfig, on_change: Callable[[str, str, str], None],
                 overrides: dict[str, Override] | None = None) -> None:
        self.frontend = frontend
        self.on_change = on_change
        self.backends: dict[str, BackendHealth] = {
            b.address: self._new_backend(b) for b in frontend.backends}
        for address, override in (overrides or {}).items():
            if address in self.backends:
                bh = self.backends[address]
                bh.drained, bh.weight_override = override.drain, self._override_weight(bh, override.weight)
        self._session: aiohttp.ClientSession | None = None
        self._verifying_tls = ssl.create_default_context()
        self._retiring: set[asyncio.Task] = set()
        self._running = False
        self.all_down = self.using_backups = False
        self._summarize(quiet=True)

    @property
    def health(self) -> HealthConfig:
        return self.frontend.health

    def _new_backend(self, backend: BackendConfig) -> BackendHealth:
        counter = HealthCounter(self.health.rise, self.health.fall, up=True)
        return BackendHealth(backend.address, counter, backend)

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        # force_close: every probe opens a fresh connection, so a pass proves that
        # new connections work, not that an old keep-alive one still does.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0),
            timeout=aiohttp.ClientTimeout(total=None),
            cookie_jar=aiohttp.DummyCookieJar(),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False)
        self._start_probes(list(self.backends.values()))

    async def stop(self) -> None:
        self._running = False
        for bh in self.backends.values():
            self._retire(bh)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _start_probes(self, targets: list[BackendHealth]) -> None:
        # Spread the first round over one interval so backends are not probed in lockstep.
        interval = self.health.interval
        for position, bh in enumerate(targets):
            first = interval * (position + random.random()) / len(targets)
            bh.task = asyncio.get_running_loop().create_task(
                self._probe_loop(bh, first), name=f"health {self.frontend.name} {bh.address}")

    def _retire(self, bh: BackendHealth) -> None:
        if bh.task is None:
            return
        bh.task.cancel()
        self._retiring.add(bh.task)
        bh.task.add_done_callback(self._retiring.discard)
        bh.task = None

    async def _probe_loop(self, bh: BackendHealth, first_delay: float) -> None:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(first_delay)
        while True:
            started = loop.time()
            await self.check_once(bh)
            interval = self.health.interval * random.uniform(0.9, 1.1)
            elapsed = loop.time() - started
            await asyncio.sleep(max(interval - elapsed, interval / 10))

    async def check_once(self, bh: BackendHealth) -> bool:
        """Probe one backend now and record the result; True when it passed."""
        hc = self.health
        started = time.monotonic()
        try:
            async with asyncio.timeout(hc.timeout):
                if hc.type == "tcp":
                    detail = await self._probe_tcp(bh.backend)
                else:
                    detail = await self._probe_http(bh.backend)
            ok, reason = True, detail
        except TimeoutError:
            phase = "connect timeout" if hc.type == "tcp" else "no answer"
            ok, reason = False, f"{phase} within {hc.timeout:g}s"
        except CheckFailed as exc:
            ok, reason = False, str(exc)
        except (aiohttp.ClientError, OSError, ssl.SSLError, ValueError) as exc:
            ok, reason = False, describe_error(exc)
        except Exception as exc:  # a probe must never take the master's loop down
            log.warning("%s %s: unexpected health check error", self.frontend.name, bh.address,
                        exc_info=True)
            ok, reason = False, describe_error(exc)
        bh.last_check_latency = time.monotonic() - started
        bh.checks += 1
        if not ok:
            bh.check_failures += 1
        self._record(bh, ok, reason)
        return ok

    def _target(self, backend: BackendConfig) -> tuple[str, int]:
        return backend.host, self.health.port or backend.port

    async def _probe_tcp(self, backend: BackendConfig) -> str:
        host, port = self._target(backend)
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        await writer.wait_closed()
        return "connected"

    async def _probe_http(self, backend: BackendConfig) -> str:
        hc = self.health
        host, port = self._target(backend)
        literal = f"[{host}]" if ":" in host else host
        url = f"{hc.type}://{literal}:{port}{hc.path}"
        options: dict = {"headers": {"Host": hc.host or backend.address}, "allow_redirects": False}
        if hc.type == "https":
            if hc.tls_verify:
                options["ssl"] = self._verifying_tls
                if hc.host:
                    options["server_hostname"] = hc.host
            else:
                options["ssl"] = False
        if self._session is None:
            raise RuntimeError("HealthChecker.start() has not run")
        async with self._session.get(url, **options) as response:
            status = response.status
        if status not in hc.expect:
            raise CheckFailed(f"HTTP {status}")
        return f"HTTP {status}"

    def _record(self, bh: BackendHealth, ok: bool, reason: str, passive: bool = False) -> None:
        before = bh.state
        bh.failures_in_row = 0 if ok else bh.failures_in_row + 1
        if not ok:
            bh.last_error = reason
        if bh.counter.record(ok):
            if bh.counter.up:
                log.info("%s %s UP: %s (%d/%d succeeded)", self.frontend.name, bh.address,
                         reason, bh.counter.rise, bh.counter.rise)
            else:
                log.info("%s %s DOWN: %s (%s%d/%d failed)", self.frontend.name, bh.address,
                         reason, "passive, " if passive else "", bh.failures_in_row,
                         bh.counter.fall)
        self._announce(bh, before)

    def _announce(self, bh: BackendHealth, before: str, weight_changed: bool = False) -> None:
        after = bh.state
        if after == before and not weight_changed:
            return
        if after != before:
            bh.up_since = time.monotonic() if after == BackendState.UP else None
        self._summarize()
        try:
            self.on_change(self.frontend.name, bh.address, after)
        except Exception:
            log.exception("%s %s: on_change callback failed", self.frontend.name, bh.address)

    def report_connect_failure(self, address: str, reason: str) -> None:
        """A worker could not connect: counts as one failed check."""
        bh = self.backends.get(address)
        if bh is None:
            log.debug("%s: connect failure for unknown backend %s (reloaded?)",
                      self.frontend.name, address)
            return
        bh.passive_failures += 1
        self._record(bh, False, reason, passive=True)

    def drain(self, address: str) -> None:
        bh = self.backends[address]
        if not bh.drained:
            before = bh.state
            bh.drained = True
            log.info("%s %s DRAIN: no new connections", self.frontend.name, address)
            self._announce(bh, before)

    def enable(self, address: str) -> None:
        bh = self.backends[address]
        if bh.drained:
            before = bh.state
            bh.drained = False
            log.info("%s %s ENABLED: health %s", self.frontend.name, address, bh.counter.describe())
            self._announce(bh, before)

    @staticmethod
    def _override_weight(bh: BackendHealth, weight: int | None) -> int | None:
        return None if weight == bh.backend.weight else weight

    def set_weight(self, address: str, weight: int | None) -> int | None:
        """`weight` None, or the configured one, removes the override; the override now in force."""
        bh = self.backends[address]
        before = bh.state
        bh.weight_override = self._override_weight(bh, weight)
        log.info("%s %s WEIGHT %d%s", self.frontend.name, address, bh.weight,
                 "" if bh.weight_override is None else " (runtime override)")
        self._announce(bh, before, weight_changed=True)
        return bh.weight_override

    def update(self, frontend: FrontendConfig) -> None:
        """Reload: surviving backends keep counters and drain; others come and go."""
        restart = frontend.health != self.health
        old = self.backends
        self.frontend = frontend
        fresh: list[BackendHealth] = []
        backends: dict[str, BackendHealth] = {}
        for backend in frontend.backends:
            bh = old.get(backend.address)
            if bh is None:
                bh = self._new_backend(backend)
                bh.up_since = time.monotonic()
                fresh.append(bh)
            else:
                bh.backend = backend
                bh.weight_override = self._override_weight(bh, bh.weight_override)
                if (bh.counter.rise, bh.counter.fall) != (frontend.health.rise, frontend.health.fall):
                    bh.counter = HealthCounter(frontend.health.rise, frontend.health.fall,
                                               up=bh.counter.up)
            backends[backend.address] = bh
        self.backends = backends
        for address, bh in old.items():
            if address not in backends:
                self._retire(bh)
        self._summarize()
        if not self._running:
            return
        if restart:
            for bh in backends.values():
                self._retire(bh)
            self._start_probes(list(backends.values()))
        elif fresh:
            self._start_probes(fresh)

    def _summarize(self, quiet: bool = False) -> None:
        """Refresh `all_down` (no backend takes new connections) and `using_backups` (only
        backups do), and log when either flips."""
        tiers = [t for bh in self.backends.values() if (t := tier_of(bh.state, bh.backend.backup)) is not None]
        best = min(tiers, default=None)
        all_down = best is None or best >= Tier.DOWN_PRIMARY
        using_backups = best == Tier.BACKUP
        was_down, was_backups = self.all_down, self.using_backups
        self.all_down, self.using_backups = all_down, using_backups
        if quiet:
            return
        if all_down != was_down:
            if all_down:
                log.warning("frontend %s: every backend is down or drained; new connections still "
                            "try the down ones", self.frontend.name)
            else:
                log.info("frontend %s: a backend is up again", self.frontend.name)
        if using_backups != was_backups and not all_down:
            if using_backups:
                log.warning("frontend %s: no primary backend is up; the backups take new connections",
                            self.frontend.name)
            else:
                log.info("frontend %s: a primary backend is up again; the backups stand by",
                         self.frontend.name)

    def ramp(self, bh: BackendHealth, now: float) -> tuple[float, float]:
        """(effective weight, seconds of slow start left) of one backend at `now`."""
        slow_start = self.frontend.slow_start
        if bh.up_since is None or not slow_start:
            return float(bh.weight), 0.0
        elapsed = now - bh.up_since
        return ramp_weight(bh.weight, elapsed, slow_start) / RAMP_SCALE, max(slow_start - elapsed, 0.0)

    def status(self) -> list[dict]:
        now = time.monotonic()
        return [self._backend_status(bh, now) for bh in self.backends.values()]

    def _backend_status(self, bh: BackendHealth, now: float) -> dict:
        effective, remaining = self.ramp(bh, now)
        return {
            "address": bh.address,
            "state": bh.state,
            "weight": bh.weight,
            "backup": bh.backend.backup,
            "effective_weight": round(effective, 3),
            "slow_start_remaining": round(remaining, 3),
            "overrides": {**({"drain": True} if bh.drained else {}),
                          **({} if bh.weight_override is None else {"weight": bh.weight_override})},
            "health": bh.counter.describe(),
            "last_error": bh.last_error,
            "health_reason": bh.last_error if bh.failures_in_row or not bh.counter.up else None,
            "check_latency_seconds": bh.last_check_latency,
            "checks": bh.checks,
            "check_failures": bh.check_failures,
            "passive_failures": bh.passive_failures,
        }


def describe_error(exc: BaseException) -> str:
    """One line an operator can act on, from whatever a probe raised."""
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        problem = exc.certificate_error
        return f"TLS certificate: {getattr(problem, 'verify_message', None) or problem}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return describe_error(exc.os_error)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.reason or exc}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server closed the connection without answering"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
