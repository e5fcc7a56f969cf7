"""A frontend inside one worker: its listener, the accept loop, its backends and balancer, and
the one periodic sweep of connect, first-byte, idle and half-close timeouts (no timer per
connection).

Limits are per worker: max_connections and max_connections_per_source are each split evenly
(rounded up) over the workers, as the kernel spreads connections (also one source's, by port)
over their SO_REUSEPORT listeners. A source may so be refused a little before its limit in
total, or admitted up to workers - 1 beyond it; a refusal counts in `refused`.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import os
import socket
import time

from lbproxy.accesslog import AccessLog, Result, client_text
from lbproxy.balance import NOT_RAMPING, make_balancer
from lbproxy.config import FrontendConfig
from lbproxy.connection import (
    LOCAL_ERRORS,
    BackendSlot,
    Connection,
    ReadBuffer,
    ReportFailure,
)
from lbproxy.health import BackendState
from lbproxy.listener import make_listener, set_keepalive

log = logging.getLogger("lbproxy.worker")

ACCEPT_BATCH = 64          # accepts per readiness callback, so one busy listener cannot starve the rest


class Frontend:
    """One [[frontend]] inside one worker: its listener, backends, balancer and connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: FrontendConfig, workers: int,
                 states: dict[str, str], report_failure: ReportFailure,
                 access_log: AccessLog | None = None, weights: dict[str, int] | None = None,
                 since: dict[str, float] | None = None) -> None:
        self.loop = loop
        self.name = config.name
        self.report_failure = report_failure
        self._access_log = access_log
        self.access_log: AccessLog | None = None
        self.connections: set[Connection] = set()
        self.connecting: dict[Connection, None] = {}
        self.sources: dict[str, int] = {}            # open connections per client address
        self.read_buffer: ReadBuffer | None = None
        self.accepted = self.refused = self.failed = 0
        self.listener: socket.socket | None = None
        self.accepting = False
        self._slots: dict[str, BackendSlot] = {}
        self.backoff = 0.0
        self._resume_handle: asyncio.TimerHandle | None = None
        self._log_times: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._idle_waiters: list[asyncio.Future] = []
        self.configure(config, workers, states, weights, since)

    def configure(self, config: FrontendConfig, workers: int, states: dict[str, str],
                  weights: dict[str, int] | None = None, since: dict[str, float] | None = None) -> None:
        """Apply a (re)loaded frontend: backends keep their counters by address; `weights` are the
        runtime ones that replace the configured; `since`, when each backend that is ramping up
        (slow start) came up."""
        self.config = config
        self.access_log = self._access_log if config.access_log else None
        self.max_connections = -(-config.max_connections // max(workers, 1))
        self.max_per_source = -(-config.max_connections_per_source // max(workers, 1))
        if self.read_buffer is None or len(self.read_buffer.view) != config.buffer_size:
            self.read_buffer = ReadBuffer(config.buffer_size)    # open connections keep theirs
        slots = []
        for index, backend in enumerate(config.backends):
            slot = self._slots.get(backend.address)
            if slot is None:
                slot = self._slots[backend.address] = BackendSlot(backend, index, states.get(backend.address, BackendState.UP))
            else:
                slot.configure(backend, index)
            if backend.address in states:
                slot.candidate.state = states[backend.address]
            if weights and backend.address in weights:
                slot.candidate.weight = weights[backend.address]
            slot.candidate.backup = backend.backup
            slot.candidate.since = (since or {}).get(backend.address, NOT_RAMPING)
            slots.append(slot)
        self.slots = slots
        self.pool = [s.candidate for s in slots]
        self.balancer = make_balancer(config.balance, self.pool, config.slow_start)

    def set_state(self, address: str, state: str, weight: int | None = None,
                  since: float | None = None) -> None:
        """One backend's news from the master; `since` None: not ramping up."""
        slot = self._slots.get(address)
        if slot is not None:
            slot.candidate.state = state
            slot.candidate.since = NOT_RAMPING if since is None else since
            if weight is not None:
                slot.candidate.weight = weight

    # --- accepting

    def listen(self) -> None:
        self.listener = make_listener(self.config.listen_host, self.config.listen_port)
        self.family = self.listener.family
        self._start_accepting()

    def _start_accepting(self) -> None:
        self._resume_handle = None
        if self.listener is not None:
            self.loop.add_reader(self.listener.fileno(), self._on_acceptable)
            self.accepting = True

    def _on_acceptable(self) -> None:
        accept = self.listener._accept
        for _ in range(ACCEPT_BATCH):
            try:
                fd, address = accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in LOCAL_ERRORS:
                    self.local_resource_error("accept", exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR):
                    continue
                self._rate_limited("accept", "%s: accept failed: %s", self.name, exc)
                self._pause_accepting()
                return
            self.backoff = 0.0
            self.take(fd, address)
            if self._resume_handle is not None:
                return                               # out of descriptors: backing off

    def take(self, fd: int, address: tuple) -> None:
        self.accepted += 1
        if len(self.connections) >= self.max_connections:
            os.close(fd)
            self.refused += 1
            self._rate_limited("max_connections", "%s: max_connections (%d in this worker) reached; "
                               "closing new connections", self.name, self.max_connections)
            if self.access_log is not None:
                self.access_log.closed(self.name, client_text(address[0], address[1]), None, Result.REFUSED, 0, 0, 0.0)
            return
        client_ip = address[0]
        from_source = self.sources.get(client_ip, 0)
        if self.max_per_source and from_source >= self.max_per_source:
            os.close(fd)
            self.refused += 1
            self._rate_limited("max_connections_per_source", "%s: max_connections_per_source (%d in this "
                               "worker) reached by %s; closing its new connections", self.name,
                               self.max_per_source, client_ip)
            if self.access_log is not None:
                self.access_log.closed(self.name, client_text(client_ip, address[1]), None, Result.REFUSED, 0, 0, 0.0)
            return
        self.sources[client_ip] = from_source + 1
        conn = Connection(self, fd, self.family, client_ip, address[1])
        self.connections.add(conn)
        conn.connect()

    def source_closed(self, client_ip: str) -> None:
        left = self.sources.pop(client_ip) - 1
        if left:
            self.sources[client_ip] = left

    def local_resource_error(self, what: str, exc: OSError) -> None:
        self._rate_limited("resources", "%s: %s: %s; pausing accepts, existing connections carry on",
                           self.name, what, exc.strerror or exc)
        self._pause_accepting()

    def _pause_accepting(self) -> None:
        if self._resume_handle is not None or self.listener is None:
            return
        self.loop.remove_reader(self.listener.fileno())
        self.backoff = min(max(self.backoff * 2, 0.02), 1.0)
        self._resume_handle = self.loop.call_later(self.backoff, self._start_accepting)

    def stop_accepting(self) -> int:
        """Close the listener after taking whatever is already queued on it; how many were."""
        if self.listener is None:
            return 0
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        else:
            self.loop.remove_reader(self.listener.fileno())
        taken = 0
        # Closing a listener resets what waits in its queue (unless the kernel migrates it):
        # serve those first.
        for _ in range(100_000):
            try:
                fd, address = self.listener._accept()
            except OSError:
                break
            taken += 1
            self.take(fd, address)
        self.listener.close()
        self.listener = None
        self.accepting = False
        return taken

    # --- timeouts and draining

    def sweep_connecting(self, now: float) -> None:
        for conn in list(self.connecting):
            if conn.deadline > now:
                break                        # ordered by start, one timeout per frontend
            del self.connecting[conn]
            conn.time_out()

    def sweep_idle(self, now: float) -> None:
        idle = self.config.idle_timeout
        half = self.config.half_close_timeout
        first_byte = self.config.client_first_byte_timeout
        for conn in list(self.connections):
            client, backend = conn.client, conn.backend
            if client is None or client.transport is None:
                continue
            if conn.awaiting_client:
                # `moved` is only ever set by a read or the end of file, so it says the client spoke.
                if client.moved or client.eof or not first_byte:
                    conn.awaiting_client = False
                elif now - conn.tied_at >= first_byte:
                    self._rate_limited("first_byte", "%s: client_first_byte_timeout (%gs): closing "
                                       "connections whose client sent nothing", self.name, first_byte)
                    conn.abort()
                    continue
            if not conn.keepalive:
                # The client leg inherits keepalive from the listener. The backend leg gets it
                # here, on its first sweep: probes start after KEEPALIVE_IDLE anyway, and the
                # short-lived majority never pays the five system calls.
                conn.keepalive = True
                if not backend.lost:
                    set_keepalive(backend.transport)
            if client.moved or backend.moved:
                client.moved = backend.moved = False
                conn.quiet_since = now
            elif now - conn.quiet_since >= (min(idle, half) if conn.half_closed_at else idle):
                # Half-closed connections get the shorter of the two: one side is done, and a
                # peer that never closes the other direction must not pin it for idle_timeout.
                log.debug("%s: closing a connection quiet for %.1fs%s", self.name, now - conn.quiet_since,
                          " (half-closed)" if conn.half_closed_at else "")
                conn.abort(Result.TIMEOUT)

    def abort_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()

    def idle_event(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no connection is left; False when `timeout` passed first."""
        if not self.connections:
            return True
        waiter = self.loop.create_future()
        self._idle_waiters.append(waiter)
        try:
            await asyncio.wait_for(waiter, timeout)
        except asyncio.TimeoutError:
            return not self.connections
        return True

    # --- reporting

    def log_failure(self, reason: str) -> None:
        self._rate_limited("failed", "%s: dropped a client connection: %s", self.name, reason)

    def _rate_limited(self, key: str, message: str, *args) -> None:
        now = time.monotonic()
        if now - self._log_times.get(key, -1e9) < 10.0:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        suppressed = self._suppressed.pop(key, 0)
        self._log_times[key] = now
        if suppressed:
            message += f" ({suppressed} more since the last message)"
        log.warning(message, *args)

    def stats(self) -> dict:
        return {"active": len(self.connections), "accepted": self.accepted, "refused": self.refused,
                "failed": self.failed, "listening": self.listener is not None,
                "backends": {s.address: s.stats() for s in self._slots.values()}}
