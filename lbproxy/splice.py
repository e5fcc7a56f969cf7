"""The worker's data path: accept, pick a backend, connect, then splice the two sockets.

A proxied connection is two asyncio Protocols on uvloop transports, tied like Twisted's
portforward: what one leg reads is written to the other, and when a transport's write buffer
passes its high-water mark the other leg stops reading until it drains, so a connection never
holds more than one read chunk plus one write buffer per direction.

The client socket is accepted by hand (not by uvloop's server, which closes its listener on
EMFILE) and stays a bare file descriptor until its backend connection is up: nothing is read
from the client before then, so a failed connect can be retried on another backend without
losing a byte. Timeouts (connect, idle, half-close) are swept by one periodic tick per worker
instead of a timer per connection.
"""
from __future__ import annotations

import asyncio
import errno
import functools
import logging
import os
import socket
import time
from typing import Callable

from lbproxy.balance import Candidate, make_balancer
from vipd.config import BackendConfig, FrontendConfig

log = logging.getLogger("lbproxy.worker")

KEEPALIVE_IDLE = 60        # seconds before the first TCP keepalive probe
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 6
ACCEPT_BATCH = 64          # accepts per readiness callback, so one busy listener cannot starve the rest
LISTEN_BACKLOG = 4096
# Errors that say "this machine is out of something", not "that backend is broken": they are
# not reported as passive health failures and make the accept loop back off instead.
LOCAL_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL})
_NOTHING_TRIED: frozenset[int] = frozenset()
BULK_CHUNK = 512 * 1024    # one read of a bulk flow
BULK_SWITCH = 64 * 1024    # a read at least this large marks a bulk flow
# The worker-wide read buffer of bulk flows. Reads never interleave (one loop, one thread), so
# one buffer serves every connection; it is replaced when a peer transport keeps a reference.
_bulk_buffer = [memoryview(bytearray(BULK_CHUNK))]

ReportFailure = Callable[[str, str, str], None]   # (frontend, backend address, reason)


def make_listener(host: str, port: int) -> socket.socket:
    """A non-blocking SO_REUSEPORT listener; accepted sockets inherit NODELAY and keepalive."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # One listen address, one family, as nginx does: "[::]:443" does not take IPv4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_FREEBIND", 78), 1)
        else:
            # Lets a backup node listen on a virtual IP it does not hold yet.
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        _set_tcp_options(sock)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_tcp_options(sock) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


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


class _AcceptedSocket:
    """The part of a socket object uvloop's connect_accepted_socket uses. Building a real
    socket.socket around the accepted descriptor costs a getsockname() and two enum
    conversions per connection; libuv takes the descriptor over and closes it itself."""

    __slots__ = ("family", "_fd")
    type = socket.SOCK_STREAM

    def __init__(self, family: int, fd: int) -> None:
        self.family = family
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        pass


def _set_keepalive(transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock = socket.socket(sock.family, socket.SOCK_STREAM, 0, sock.fileno())
    except OSError:
        return                                   # already closed under us
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError:
        pass
    finally:
        sock.detach()


class BackendSlot:
    """One backend as this worker sees it: the balancer's candidate plus traffic counters."""

    __slots__ = ("address", "host", "port", "candidate", "total", "failed", "bytes_in", "bytes_out")

    def __init__(self, backend: BackendConfig, index: int, state: str) -> None:
        self.address = backend.address
        self.total = self.failed = self.bytes_in = self.bytes_out = 0
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


class _Leg(asyncio.Protocol):
    """One side of a proxied connection. `forward` writes to the other side's transport."""

    __slots__ = ("conn", "slot", "transport", "peer", "forward", "eof", "lost", "moved")

    def __init__(self, conn: "Connection", slot: BackendSlot) -> None:
        self.conn = conn
        self.slot = slot
        self.transport = None
        self.peer: _Leg | None = None
        self.forward = None
        self.eof = False
        self.lost = False
        self.moved = False

    def __call__(self) -> "_Leg":
        # The protocol factory of create_connection / connect_accepted_socket.
        return self

    def pause_writing(self) -> None:
        self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
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
        self.conn.leg_lost(self)


    def go_bulk(self, inbound: bool) -> None:
        if self.peer.transport is not None and not self.lost:
            self.transport.set_protocol(_BulkReader(self, inbound))


class _BulkReader(asyncio.BufferedProtocol):
    """A leg's reader once its flow turned out to be bulk: uvloop reads straight into the shared
    buffer and the peer transport writes from it, so no bytes object is made (and copied) per
    256 KiB chunk. Small messages stay on data_received, which costs one call per read, not two."""

    __slots__ = ("leg", "inbound")

    def __init__(self, leg: _Leg, inbound: bool) -> None:
        self.leg = leg
        self.inbound = inbound

    def get_buffer(self, sizehint: int) -> memoryview:
        return _bulk_buffer[0]

    def buffer_updated(self, nbytes: int) -> None:
        leg = self.leg
        leg.forward(_bulk_buffer[0][:nbytes])
        if leg.peer.transport.get_write_buffer_size():
            _bulk_buffer[0] = memoryview(bytearray(BULK_CHUNK))   # the peer still holds the old one
        if self.inbound:
            leg.slot.bytes_in += nbytes
        else:
            leg.slot.bytes_out += nbytes
        leg.moved = True

    def eof_received(self) -> bool:
        return self.leg.eof_received()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.leg.connection_lost(exc)

    def pause_writing(self) -> None:
        self.leg.pause_writing()

    def resume_writing(self) -> None:
        self.leg.resume_writing()


class ClientLeg(_Leg):
    __slots__ = ()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.tie(self, transport)

    def data_received(self, data: bytes) -> None:
        self.forward(data)
        size = len(data)
        self.slot.bytes_in += size
        self.moved = True
        if size >= BULK_SWITCH:
            self.go_bulk(True)


class BackendLeg(_Leg):
    __slots__ = ("held",)

    def __init__(self, conn: "Connection", slot: BackendSlot) -> None:
        super().__init__(conn, slot)
        self.held = None
        self.forward = self._hold

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.conn.connected(self, transport)

    def data_received(self, data: bytes) -> None:
        self.forward(data)
        size = len(data)
        self.slot.bytes_out += size
        self.moved = True
        if size >= BULK_SWITCH:
            self.go_bulk(False)

    def _hold(self, data: bytes) -> None:
        # The backend spoke before the client's transport is up (one loop turn): keep the
        # chunk and stop reading until the tie.
        self.held = data if self.held is None else self.held + data
        self.transport.pause_reading()


class Connection:
    """A client connection from accept to close: connect (with retries), then two legs."""

    __slots__ = ("frontend", "fd", "family", "client_ip", "slot", "attempts", "tried",
                 "deadline", "pending", "client", "backend", "half_closed_at", "quiet_since",
                 "aborting", "keepalive", "retry", "local_deadline")

    def __init__(self, frontend: "Frontend", fd: int, family: int, client_ip: str) -> None:
        self.frontend = frontend
        self.fd = fd
        self.family = family
        self.client_ip = client_ip
        self.slot: BackendSlot | None = None
        self.attempts = 0
        self.tried = _NOTHING_TRIED
        self.pending: asyncio.Future | None = None
        self.client: ClientLeg | None = None
        self.backend: BackendLeg | None = None
        self.half_closed_at = 0.0
        self.quiet_since = 0.0
        self.deadline = 0.0
        self.aborting = False
        self.keepalive = False
        self.retry: asyncio.TimerHandle | None = None
        self.local_deadline = 0.0

    # --- connecting: the client is a bare descriptor until a backend answers

    def connect(self) -> None:
        self.retry = None
        fe = self.frontend
        candidate = fe.balancer.pick(fe.pool, self.tried, self.client_ip)
        if fe.balancer.all_down != fe.all_down:
            fe.note_all_down(fe.balancer.all_down)
        if candidate is None:
            self.give_up("no backend available")
            return
        slot = fe.slots[candidate.index]
        self.slot = slot
        self.attempts += 1
        candidate.active += 1
        slot.total += 1
        leg = BackendLeg(self, slot)
        self.backend = leg
        self.deadline = time.monotonic() + fe.config.connect_timeout
        fe.connecting[self] = None
        self.pending = _drive(fe.loop.create_connection(leg, slot.host, slot.port), self._connect_done)

    def _connect_done(self, exc: BaseException | None) -> None:
        self.pending = None
        if exc is None:
            return                          # BackendLeg.connection_made took over
        fe = self.frontend
        fe.connecting.pop(self, None)
        slot = self.slot
        slot.candidate.active -= 1
        self.slot = None
        self.backend = None
        if self.aborting:
            self._close_fd()
            self._finish()
            return
        reason = describe_connect_error(exc)
        if isinstance(exc, OSError) and exc.errno in LOCAL_ERRORS:
            # Out of descriptors or ports here, not a backend fault: keep the client waiting
            # (it has sent nothing we could lose) and try again once the accept backoff ends.
            slot.total -= 1
            self.attempts -= 1
            now = time.monotonic()
            if not self.local_deadline:
                self.local_deadline = now + fe.config.connect_timeout
            fe.local_resource_error("connect", exc)
            if now < self.local_deadline:
                self.retry = fe.loop.call_later(max(fe.backoff, 0.02), self.connect)
            else:
                self.give_up(f"connect to {slot.address}: {reason}")
            return
        slot.failed += 1
        fe.report_failure(fe.name, slot.address, reason)
        if self.attempts > fe.config.retries:
            self.give_up(f"connect to {slot.address}: {reason} (after {self.attempts} attempts)")
            return
        self.tried = self.tried | {slot.candidate.index}
        self.connect()

    def time_out(self) -> None:
        if self.pending is not None and not self.pending.done():
            self.pending.cancel()            # the coroutine closes its socket; _connect_done retries

    def give_up(self, reason: str) -> None:
        fe = self.frontend
        fe.failed += 1
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
        fe.connecting.pop(self, None)
        client = ClientLeg(self, leg.slot)
        client.peer = leg
        leg.peer = client
        self.client = client
        client.forward = transport.write
        fd, self.fd = self.fd, -1
        _drive(fe.loop.connect_accepted_socket(client, _AcceptedSocket(self.family, fd)), self._client_done)

    def _client_done(self, exc: BaseException | None) -> None:
        client = self.client
        if exc is None or client.transport is not None:
            return
        log.debug("%s: client transport failed: %s", self.frontend.name, exc)
        client.lost = True
        if self.backend.lost:
            self._finish()
        else:
            self.backend.transport.abort()

    def tie(self, client: ClientLeg, transport) -> None:
        """The client transport is up: from now on both legs splice directly."""
        backend = self.backend
        backend.forward = transport.write
        self.quiet_since = time.monotonic()
        if backend.held is not None:
            held, backend.held = backend.held, None
            transport.write(held)
            if not backend.eof and not backend.lost:
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

    def abort(self) -> None:
        """Drop the connection now (timeouts, end of a drain): reset both sides."""
        if self.client is None:
            self.aborting = True
            if self.pending is not None and not self.pending.done():
                self.pending.cancel()                # _connect_done finishes it
            elif self.retry is not None:
                self.retry.cancel()
                self.retry = None
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
        fe.connecting.pop(self, None)
        fe.connections.discard(self)
        for leg in (self.client, self.backend):
            if leg is not None:              # break the cycles so the legs die by refcount
                leg.peer = leg.forward = None
        self.client = self.backend = None
        if self.slot is not None:
            self.slot.candidate.active -= 1
            self.slot = None
        if not fe.connections:
            fe.idle_event()


class Frontend:
    """One [[frontend]] inside one worker: its listener, backends, balancer and connections."""

    def __init__(self, loop: asyncio.AbstractEventLoop, config: FrontendConfig, workers: int,
                 states: dict[str, str], report_failure: ReportFailure) -> None:
        self.loop = loop
        self.name = config.name
        self.report_failure = report_failure
        self.connections: set[Connection] = set()
        self.connecting: dict[Connection, None] = {}
        self.accepted = self.refused = self.failed = 0
        self.all_down = False
        self.listener: socket.socket | None = None
        self.accepting = False
        self._slots: dict[str, BackendSlot] = {}
        self.backoff = 0.0
        self._resume_handle: asyncio.TimerHandle | None = None
        self._log_times: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._idle_waiters: list[asyncio.Future] = []
        self.configure(config, workers, states)

    def configure(self, config: FrontendConfig, workers: int, states: dict[str, str]) -> None:
        """Apply a (re)loaded frontend: backends keep their counters by address."""
        self.config = config
        self.max_connections = -(-config.max_connections // max(workers, 1))
        slots = []
        for index, backend in enumerate(config.backends):
            slot = self._slots.get(backend.address)
            if slot is None:
                slot = self._slots[backend.address] = BackendSlot(backend, index, states.get(backend.address, "up"))
            else:
                slot.configure(backend, index)
            if backend.address in states:
                slot.candidate.state = states[backend.address]
            slots.append(slot)
        self.slots = slots
        self.pool = [s.candidate for s in slots]
        self.balancer = make_balancer(config.balance, self.pool)

    def set_state(self, address: str, state: str) -> None:
        slot = self._slots.get(address)
        if slot is not None:
            slot.candidate.state = state

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
            self.take(fd, address[0])
            if self._resume_handle is not None:
                return                               # out of descriptors: backing off

    def take(self, fd: int, client_ip: str) -> None:
        self.accepted += 1
        if len(self.connections) >= self.max_connections:
            os.close(fd)
            self.refused += 1
            self._rate_limited("max_connections", "%s: max_connections (%d in this worker) reached; "
                               "closing new connections", self.name, self.max_connections)
            return
        conn = Connection(self, fd, self.family, client_ip)
        self.connections.add(conn)
        conn.connect()

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
            self.take(fd, address[0])
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
        for conn in list(self.connections):
            client, backend = conn.client, conn.backend
            if client is None or client.transport is None:
                continue
            if not conn.keepalive:
                # The client leg inherits keepalive from the listener. The backend leg gets it
                # here, on its first sweep: probes start after KEEPALIVE_IDLE anyway, and the
                # short-lived majority never pays the five system calls.
                conn.keepalive = True
                if not backend.lost:
                    _set_keepalive(backend.transport)
            if client.moved or backend.moved:
                client.moved = backend.moved = False
                conn.quiet_since = now
            elif now - conn.quiet_since >= (min(idle, half) if conn.half_closed_at else idle):
                # Half-closed connections get the shorter of the two: one side is done, and a
                # peer that never closes the other direction must not pin it for idle_timeout.
                log.debug("%s: closing a connection quiet for %.1fs%s", self.name, now - conn.quiet_since,
                          " (half-closed)" if conn.half_closed_at else "")
                conn.abort()

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

    def note_all_down(self, all_down: bool) -> None:
        self.all_down = all_down
        if all_down:
            log.warning("%s: every backend is down; trying them anyway", self.name)
        else:
            log.info("%s: a backend is up again", self.name)

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
                "failed": self.failed, "all_down": not any(c.state == "up" for c in self.pool),
                "listening": self.listener is not None,
                "backends": {s.address: s.stats() for s in self._slots.values()}}
