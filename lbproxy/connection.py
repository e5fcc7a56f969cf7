"""One proxied connection: a client leg and a backend leg, two asyncio Protocols on uvloop
transports tied like Twisted's portforward. What one leg reads is written to the other, and when
a transport's write buffer passes its high-water mark the other leg stops reading until it
drains below the low-water mark.

Userspace buffering is bounded by the frontend's `buffer_size`: every read is at most that long
(uvloop reads into the frontend's ReadBuffer) and each transport's high-water mark is that size,
so one direction holds at most 2 x buffer_size (high water, then one read). Nothing resumes a
leg's reading while its peer's transport is above the mark, whatever the order of events.

Nothing is read from the client before its backend connection is up, so a failed connect can be
retried on another backend without losing a byte. An attempt still unanswered when it is overdue
(lbproxy.hedge) gets a second one to another backend beside it: the first to connect wins, the
others are closed, and an overdue loser counts as a failed connect (a passive health failure).

With `proxy_protocol`, the PROXY header is the first thing written to the backend, before any
client byte. With `accept_proxy_protocol`, the client's header is read first (peeked, then only
its own bytes consumed, so what follows stays in the kernel for the client transport).
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Callable

from lbproxy import proxyproto
from lbproxy.accesslog import Result, client_text
from lbproxy.balance import Candidate
from lbproxy.config import BackendConfig
from lbproxy.hedge import ConnectTimes, next_attempt_at
from lbproxy.listener import AcceptedSocket
from lbproxy.proxyproto import ProxyProtocol

if TYPE_CHECKING:
    from lbproxy.frontend import Frontend

log = logging.getLogger("lbproxy.worker")

# Errors that say "this machine is out of something", not "that backend is broken": they are
# not reported as passive health failures and make the accept loop back off instead.
LOCAL_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
_NOTHING_TRIED: frozenset[int] = frozenset()


class ReadBuffer:
    """Where a frontend's legs read: reads never interleave (one loop, one thread), so one buffer
    of `buffer_size` bytes serves every connection. A write that the kernel did not take whole
    keeps a reference to it in the peer transport; the legs then read into a fresh one."""

    __slots__ = ("view",)

    def __init__(self, size: int) -> None:
        self.view = memoryview(bytearray(size))

    def renew(self) -> None:
        self.view = memoryview(bytearray(len(self.view)))


ReportFailure = Callable[[str, str, str], None]   # (frontend, backend address, reason)


def _drive(coro, done: Callable[[BaseException | None], None]) -> asyncio.Future | None:
    """Run a loop coroutine that only awaits futures without wrapping it in a Task.

    uvloop's create_connection / connect_accepted_socket do all their work synchronously and
    then wait on one internal future; stepping them from that future's callback saves a Task,
    its scheduling and its done-callback hop on every connection. Returns the awaited future
    (cancel it to abort the coroutine) or None when the coroutine already finished."""
    try:
        future = coro.send(None)
    except StopIteration:
        done(None)
        return None
    except BaseException as exc:
        done(exc)
        return None
    future.add_done_callback(functools.partial(_step, coro, done))
    return future


def _step(coro, done, _future) -> None:
    try:
        future = coro.send(None)
    except StopIteration:
        done(None)
    except BaseException as exc:
        done(exc)
    else:
        future.add_done_callback(functools.partial(_step, coro, done))


def describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, asyncio.CancelledError):
        return "connect timeout"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


class BackendSlot:
    """One backend as this worker sees it: the balancer's candidate plus traffic counters."""

    __slots__ = ("address", "host", "port", "candidate", "total", "failed", "bytes_in", "bytes_out",
                 "connect_times")

    def __init__(self, backend: BackendConfig, index: int, state: str) -> None:
        self.address = backend.address
        self.total = self.failed = self.bytes_in = self.bytes_out = 0
        self.connect_times = ConnectTimes()
        self.candidate = Candidate(index, backend.weight, state, 0, backend.max_connections)
        self.configure(backend, index)

    def configure(self, backend: BackendConfig, index: int) -> None:
        self.host, self.port = backend.host, backend.port
        self.candidate.index = index
        self.candidate.weight = backend.weight
        self.candidate.max_connections = backend.max_connections

    def stats(self) -> dict:
        return {"active": self.candidate.active, "total": self.total, "failed": self.failed,
                "bytes_in": self.bytes_in, "bytes_out": self.bytes_out}


class _Leg(asyncio.BufferedProtocol):
    """One side of a proxied connection: reads into the frontend's ReadBuffer and relays to
    `out`, the other side's transport. `blocked`: this leg's own transport is above its
    high-water mark, so its peer must not read."""

    __slots__ = ("conn", "slot", "buffer", "transport", "peer", "out", "eof", "lost", "moved", "blocked",
                 "nbytes")

    # uvloop looks this up on every new transport and only buffer_updated is ever called; as
    # a missing attribute, each lookup raised and formatted an AttributeError.
    data_received = None

    def __init__(self, conn: "Connection", slot: BackendSlot) -> None:
        self.conn = conn
        self.slot = slot
        self.buffer: ReadBuffer = conn.frontend.read_buffer
        self.transport = None
        self.peer: _Leg | None = None
        self.out = None
        self.eof = False
        self.lost = False
        self.moved = False
        self.blocked = False
        self.nbytes = 0                      # read on this leg: the access log's bytes in / out

    def __call__(self) -> "_Leg":
        # The protocol factory of create_connection / connect_accepted_socket.
        return self

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buffer.view

    def relay(self, nbytes: int) -> None:
        out, buffer = self.out, self.buffer
        if out.get_write_buffer_size():
            out.write(bytes(buffer.view[:nbytes]))      # queued behind older bytes: keep only these
        else:
            out.write(buffer.view[:nbytes])
            if out.get_write_buffer_size():
                buffer.renew()                           # the transport holds on to the view

    def pause_writing(self) -> None:
        self.blocked = True
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        self.blocked = False
        peer = self.peer
        if not peer.eof:
            peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self.eof = True
        self.moved = True
        peer = self.peer
        if peer.transport is None:
            return True                      # the client side is not up yet; passed on at the tie
        if peer.eof:
            self.conn.close()
        elif not peer.lost:
            peer.transport.write_eof()
            self.conn.half_closed_at = time.monotonic()
        return True

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        if exc is not None and self.conn.outcome is None:
            self.conn.outcome = Result.RESET
        self.conn.leg_lost(self)


class ClientLeg(_Leg):
    __slots__ = ()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.tie(self, transport)

    def buffer_updated(self, nbytes: int) -> None:
        self.slot.bytes_in += nbytes
        self.nbytes += nbytes
        self.moved = True
        self.relay(nbytes)


class BackendLeg(_Leg):
    """Also one connect attempt while it is in flight: `overdue_at` is when it stops being an
    ordinary connect, `hedges` whether that moment starts the connection's next attempt, and
    `abandoned` that another attempt won (or the connection ended) and this one only closes."""

    __slots__ = ("held", "pending", "started", "deadline", "overdue_at", "hedges", "abandoned")

    def __init__(self, conn: "Connection", slot: BackendSlot) -> None:
        super().__init__(conn, slot)
        self.held = None
        self.pending: asyncio.Future | None = None
        self.started = self.deadline = self.overdue_at = 0.0
        self.hedges = False
        self.abandoned = False

    def connection_made(self, transport) -> None:
        if self.abandoned:
            transport.abort()
            return
        self.transport = transport
        self.conn.connected(self, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.abandoned:
            super().connection_lost(exc)

    def connect_done(self, exc: BaseException | None) -> None:
        self.pending = None
        if not self.abandoned:
            self.conn.connect_done(self, exc)

    def time_out(self) -> None:
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()            # the coroutine closes its socket; connect_done retries

    def buffer_updated(self, nbytes: int) -> None:
        self.slot.bytes_out += nbytes
        self.nbytes += nbytes
        self.moved = True
        if self.out is None:
            self._hold(nbytes)
        else:
            self.relay(nbytes)

    def _hold(self, nbytes: int) -> None:
        # The backend spoke before the client's transport is up: keep this one read and stop
        # reading; the tie sends it on and resumes only if the client side has room.
        data = bytes(self.buffer.view[:nbytes])
        self.held = data if self.held is None else self.held + data
        self.transport.pause_reading()


class PendingConnects:
    """One frontend's connect attempts in flight: their connect timeouts (swept by the worker's
    tick, in order of start as the timeout is one per frontend) and the one timer that starts the
    next attempt of those that became overdue (no timer per connection)."""

    __slots__ = ("loop", "legs", "timer", "timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.legs: dict[BackendLeg, None] = {}
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0

    def __len__(self) -> int:
        return len(self.legs)

    def add(self, leg: BackendLeg) -> None:
        self.legs[leg] = None
        if leg.hedges:
            self._arm(leg.overdue_at)

    def discard(self, leg: BackendLeg) -> None:
        self.legs.pop(leg, None)

    def expire(self, now: float) -> None:
        for leg in list(self.legs):
            if leg.deadline > now:
                break
            del self.legs[leg]
            leg.time_out()

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _arm(self, at: float) -> None:
        if self.timer is not None:
            if self.timer_at <= at:
                return
            self.timer.cancel()
        self.timer_at = at
        self.timer = self.loop.call_later(max(at - time.monotonic(), 0.0), self._hedge)

    def _hedge(self) -> None:
        self.timer = None
        now = time.monotonic()
        later = 0.0
        for leg in list(self.legs):
            if not leg.hedges:
                continue
            if leg.overdue_at <= now:
                leg.hedges = False
                leg.conn.hedge()
            elif not later or leg.overdue_at < later:
                later = leg.overdue_at
        if later:
            self._arm(later)


class Connection:
    """A client connection from accept to close: (the client's PROXY header,) connect with
    retries and hedged attempts, then two legs."""

    __slots__ = ("frontend", "fd", "family", "client_ip", "client_port", "slot", "attempts", "tried",
                 "trying", "client", "backend", "half_closed_at", "quiet_since", "keepalive",
                 "retry", "local_deadline", "tied_at", "awaiting_client", "started", "outcome", "target",
                 "origin", "destination", "header_socket", "header_data", "header_timer")

    def __init__(self, frontend: "Frontend", fd: int, family: int, client_ip: str, client_port: int = 0) -> None:
        self.frontend = frontend
        self.fd = fd
        self.family = family
        self.client_ip = client_ip           # the peer: what per-source limits count
        self.client_port = client_port
        self.origin: tuple[str, int] | None = None        # the client named by its PROXY header
        self.destination: tuple[str, int] | None = None   # the address that client connected to
        self.started = time.monotonic()
        self.outcome: Result | None = None   # set by what ends the connection early; None: ok
        self.target: str | None = None       # the last backend tried, for the access log
        self.slot: BackendSlot | None = None
        self.attempts = 0
        self.tried = _NOTHING_TRIED
        self.trying: list[BackendLeg] = []
        self.client: ClientLeg | None = None
        self.backend: BackendLeg | None = None
        self.half_closed_at = 0.0
        self.quiet_since = 0.0
        self.keepalive = False
        self.retry: asyncio.TimerHandle | None = None
        self.local_deadline = 0.0
        self.tied_at = 0.0
        self.awaiting_client = False      # the client has not spoken yet, and it has a deadline
        self.header_socket: socket.socket | None = None
        self.header_data = b""
        self.header_timer: asyncio.TimerHandle | None = None

    # --- the client's PROXY header (accept_proxy_protocol), before anything else

    def read_proxy_header(self, timeout: float) -> None:
        fe = self.frontend
        self.header_socket = socket.socket(self.family, socket.SOCK_STREAM, 0, self.fd)
        self.header_timer = fe.loop.call_later(timeout, self._header_failed, f"no PROXY header within {timeout:g}s")
        fe.loop.add_reader(self.fd, self._header_readable)

    def _header_readable(self) -> None:
        sock = self.header_socket
        try:
            peeked = sock.recv(proxyproto.MAX_HEADER - len(self.header_data), socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._header_failed(f"reading the PROXY header: {exc.strerror or exc}")
            return
        if not peeked:
            self._header_failed("closed before sending a PROXY header")
            return
        data = self.header_data + peeked
        decoded = proxyproto.decode(data)
        if isinstance(decoded, proxyproto.Invalid):
            self._header_failed(f"bad PROXY header: {decoded.reason}")
            return
        # Only the header's own bytes are consumed: the client's first payload stays queued.
        take = len(peeked) if decoded is proxyproto.NEED_MORE else decoded.length - len(self.header_data)
        try:
            sock.recv(take, socket.MSG_DONTWAIT)
        except OSError as exc:
            self._header_failed(f"reading the PROXY header: {exc.strerror or exc}")
            return
        if decoded is proxyproto.NEED_MORE:
            self.header_data = data
            return
        self._stop_reading_header()
        self.origin, self.destination = decoded.source, decoded.destination
        self.connect()

    def _stop_reading_header(self) -> None:
        fe = self.frontend
        fe.loop.remove_reader(self.fd)
        self.header_timer.cancel()
        self.header_timer = None
        self.header_socket.detach()
        self.header_socket = None
        self.header_data = b""

    def _header_failed(self, reason: str) -> None:
        fe = self.frontend
        self._stop_reading_header()
        fe.refuse_header(self.client_ip, self.client_port, reason)
        self.outcome = Result.REFUSED
        self._close_fd()
        self._finish()

    def proxy_header(self, version: ProxyProtocol) -> bytes:
        source = self.origin or (self.client_ip, self.client_port)
        destination = self.destination if self.origin else self.frontend.local_address(self.fd)
        return proxyproto.encode(version, source, destination)

    # --- connecting: the client is a bare descriptor until a backend answers

    def connect(self) -> None:
        self.retry = None
        fe = self.frontend
        origin = self.origin
        candidate = fe.balancer.pick(fe.pool, self.tried, origin[0] if origin else self.client_ip)
        if candidate is None:
            if not self.trying:
                self.give_up("no backend available")
            return                           # the attempts in flight carry on
        slot = fe.slots[candidate.index]
        self.target = slot.address
        self.attempts += 1
        candidate.active += 1
        slot.total += 1
        leg = BackendLeg(self, slot)
        config = fe.config
        leg.started = now = time.monotonic()
        leg.deadline = now + config.connect_timeout
        leg.overdue_at = now + slot.connect_times.overdue_after(config.connect_timeout)
        leg.hedges = (next_attempt_at(now, leg.overdue_at - now, self.attempts, config.retries + 1) or
                      leg.deadline) < leg.deadline
        self.trying.append(leg)
        fe.pending.add(leg)
        leg.pending = _drive(fe.loop.create_connection(leg, slot.host, slot.port), leg.connect_done)

    def hedge(self) -> None:
        """The newest attempt is overdue: another backend, beside the ones in flight."""
        if self.frontend is None or self.backend is not None:
            return
        self.tried = self.tried.union([leg.slot.candidate.index for leg in self.trying])
        self.connect()

    def connect_done(self, leg: BackendLeg, exc: BaseException | None) -> None:
        if exc is None:
            return                          # BackendLeg.connection_made took over
        fe = self.frontend
        fe.pending.discard(leg)
        self.trying.remove(leg)
        slot = leg.slot
        slot.candidate.active -= 1
        reason = describe_connect_error(exc)
        if isinstance(exc, OSError) and exc.errno in LOCAL_ERRORS:
            # Out of descriptors or ports here, not a backend fault: keep the client waiting
            # (it has sent nothing we could lose) and try again once the accept backoff ends.
            slot.total -= 1
            self.attempts -= 1
            fe.local_resource_error("connect", exc)
            if self.trying:
                return
            now = time.monotonic()
            if not self.local_deadline:
                self.local_deadline = now + fe.config.connect_timeout
            if now < self.local_deadline:
                self.retry = fe.loop.call_later(max(fe.backoff, 0.02), self.connect)
            else:
                self.give_up(f"connect to {slot.address}: {reason}")
            return
        slot.failed += 1
        fe.report_failure(fe.name, slot.address, reason)
        self.tried = self.tried | {slot.candidate.index}
        if self.trying:
            return                           # an attempt in flight may still answer
        if self.attempts > fe.config.retries:
            self.give_up(f"connect to {slot.address}: {reason} (after {self.attempts} attempts)")
            return
        self.connect()

    def _abandon_attempts(self, winner_at: float | None) -> None:
        """Close the attempts in flight. Those overdue when another won count as failed connects."""
        fe = self.frontend
        trying, self.trying = self.trying, []
        for leg in trying:
            leg.abandoned = True
            fe.pending.discard(leg)
            slot = leg.slot
            slot.candidate.active -= 1
            if leg.pending is not None and not leg.pending.done():
                leg.pending.cancel()
            if winner_at is not None and winner_at >= leg.overdue_at:
                slot.failed += 1
                fe.report_failure(fe.name, slot.address, f"no answer within "
                                  f"{(leg.overdue_at - leg.started) * 1000:.0f} ms (another backend answered)")
            else:
                slot.total -= 1

    def give_up(self, reason: str) -> None:
        fe = self.frontend
        fe.failed += 1
        self.outcome = Result.CONNECT_FAILED
        fe.log_failure(reason)
        self._close_fd()
        self._finish()

    def _close_fd(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def connected(self, leg: BackendLeg, transport) -> None:
        """The backend answered: wrap the client descriptor in a transport of its own."""
        fe = self.frontend
        now = time.monotonic()
        fe.pending.discard(leg)
        self.trying.remove(leg)
        if self.trying:
            self._abandon_attempts(now)
        slot = leg.slot
        slot.connect_times.observe(now - leg.started)
        self.slot = slot
        self.backend = leg
        self.target = slot.address
        version = fe.config.proxy_protocol
        if version != ProxyProtocol.OFF:
            transport.write(self.proxy_header(version))
        client = ClientLeg(self, slot)
        client.peer = leg
        leg.peer = client
        self.client = client
        client.out = transport
        high = fe.config.buffer_size
        transport.set_write_buffer_limits(high, high // 4)
        fd, self.fd = self.fd, -1
        _drive(fe.loop.connect_accepted_socket(client, AcceptedSocket(self.family, fd)), self._client_done)

    def _client_done(self, exc: BaseException | None) -> None:
        client = self.client
        if exc is None or client.transport is not None:
            return
        log.debug("%s: client transport failed: %s", self.frontend.name, exc)
        client.lost = True
        self.outcome = self.outcome or Result.RESET
        if self.backend.lost:
            self._finish()
        else:
            self.backend.transport.abort()

    def tie(self, client: ClientLeg, transport) -> None:
        """The client transport is up: from now on both legs splice directly."""
        backend = self.backend
        high = self.frontend.config.buffer_size
        transport.set_write_buffer_limits(high, high // 4)
        backend.out = transport
        self.tied_at = self.quiet_since = time.monotonic()
        self.awaiting_client = self.frontend.config.client_first_byte_timeout > 0
        if backend.held is not None:
            held, backend.held = backend.held, None
            transport.write(held)            # past high water, the client leg is blocked
            if not (backend.eof or backend.lost or client.blocked):
                backend.transport.resume_reading()
        if backend.lost:
            transport.close()
        elif backend.eof:
            transport.write_eof()
            self.half_closed_at = time.monotonic()

    # --- closing

    def close(self) -> None:
        """Both directions are finished: flush what is buffered and close both legs."""
        for leg in (self.client, self.backend):
            if leg is not None and leg.transport is not None and not leg.lost:
                leg.transport.close()

    def abort(self, outcome: Result = Result.RESET) -> None:
        """Drop the connection now (timeouts, end of a drain): reset both sides."""
        self.outcome = self.outcome or outcome
        if self.client is None:
            if self.frontend is None:
                return
            if self.trying:
                self._abandon_attempts(None)
            elif self.retry is not None:
                self.retry.cancel()
                self.retry = None
            elif self.header_socket is not None:
                self._stop_reading_header()
            self._close_fd()
            self._finish()
            return
        for leg in (self.client, self.backend):
            if leg.transport is not None and not leg.lost:
                leg.transport.abort()

    def leg_lost(self, leg: _Leg) -> None:
        other = leg.peer
        if other.transport is None:
            if not other.lost:
                return                       # the client transport is still being made; tie() closes it
        elif not other.lost:
            other.transport.close()          # its connection_lost finishes the connection
            return
        self._finish()

    def _finish(self) -> None:
        fe = self.frontend
        if fe is None:
            return
        self.frontend = None
        fe.connections.discard(self)
        fe.source_closed(self.client_ip)
        for leg in (self.client, self.backend):
            if leg is not None:              # break the cycles so the legs die by refcount
                leg.peer = leg.out = None
        if fe.access_log is not None:
            self._log_access(fe)
        self.client = self.backend = None
        if self.slot is not None:
            self.slot.candidate.active -= 1
            self.slot = None
        if not fe.connections:
            fe.idle_event()

    def _log_access(self, fe: "Frontend") -> None:
        outcome = self.outcome or (Result.OK if self.client is not None else Result.CONNECT_FAILED)
        bytes_in = self.client.nbytes if self.client is not None else 0
        bytes_out = self.backend.nbytes if self.backend is not None else 0
        client_ip, client_port = self.origin or (self.client_ip, self.client_port)
        fe.access_log.closed(fe.name, client_text(client_ip, client_port), self.target, outcome,
                             bytes_in, bytes_out, time.monotonic() - self.started)
