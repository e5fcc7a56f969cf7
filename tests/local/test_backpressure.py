"""Bounded buffering and backpressure in every order of events, with the limits that refuse or
close what costs memory for nothing: a Frontend in this process under uvloop, loopback backends,
the worker's own sweeps. The bound asserted is the one lbproxy.connection promises per direction:
the high-water mark (buffer_size) plus one read (at most buffer_size)."""
from __future__ import annotations

import asyncio
import hashlib
import random
import socket
import time

import pytest
import uvloop
from support import LoopbackFrontend, eventually, serve

from lbproxy.config import FrontendConfig
from lbproxy.connection import Connection

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024
STREAM = random.Random(7).randbytes(24 * MiB)


def run(scenario) -> None:
    uvloop.run(asyncio.wait_for(scenario(), 45))


class Proxy(LoopbackFrontend):
    def __init__(self, backend: str, workers: int = 1, **settings) -> None:
        super().__init__([backend], workers, sweep_idle=True, **settings)

    def bound(self) -> int:
        return 2 * self.config.buffer_size

    def only_connection(self) -> Connection:
        (conn,) = self.frontend.connections
        return conn


async def slow_client(port: int, rcvbuf: int = 4096, source: str = "127.0.0.1") -> socket.socket:
    loop = asyncio.get_running_loop()
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    client.setblocking(False)
    client.bind((source, 0))
    await loop.sock_connect(client, ("127.0.0.1", port))
    return client


def buffered(conn: Connection) -> tuple[int, int]:
    """Bytes the proxy holds per direction: (towards the client, towards the backend)."""
    client, backend = conn.client, conn.backend
    to_client = client.transport.get_write_buffer_size() if client and client.transport else 0
    to_backend = backend.transport.get_write_buffer_size() if backend and backend.transport else 0
    held = len(backend.held) if backend is not None and backend.held is not None else 0
    return to_client + held, to_backend


async def watch_until_stalled(proxy: Proxy, progress, limit: float = 15.0) -> int:
    """Sample what the proxy buffers every millisecond until `progress()` stops moving for 0.5 s;
    assert the bound on every sample; return the largest sample."""
    most, last, still_since = 0, -1, time.monotonic()
    deadline = still_since + limit
    while time.monotonic() - still_since < 0.5:
        for conn in list(proxy.frontend.connections):
            most = max(most, *buffered(conn))
        assert most <= proxy.bound(), (most, proxy.bound())
        assert time.monotonic() < deadline, "the stream never stalled"
        if progress() != last:
            last, still_since = progress(), time.monotonic()
        await asyncio.sleep(0.001)
    return most


async def drain_and_check(client: socket.socket, proxy: Proxy, size: int) -> None:
    """Read the whole stream through the proxy, checking the bound on the way, and its digest."""
    loop = asyncio.get_running_loop()
    digest, got = hashlib.sha256(), 0
    while got < size:
        chunk = await asyncio.wait_for(loop.sock_recv(client, 1024 * 1024), 10)
        assert chunk, f"the stream ended after {got} of {size} bytes"
        digest.update(chunk)
        got += len(chunk)
        for conn in list(proxy.frontend.connections):
            assert max(buffered(conn)) <= proxy.bound()
    assert digest.digest() == hashlib.sha256(STREAM[:size]).digest()


# ---------------------------------------------------------------- backpressure in every order


@pytest.mark.parametrize("buffer_size", [4096, FrontendConfig.buffer_size])
@pytest.mark.parametrize("busy", [False, True], ids=["late-tie", "busy-loop"])
def test_a_backend_that_sends_before_the_late_tie_stays_bounded(monkeypatch, buffer_size, busy):
    """The backend streams megabytes at once; the client's leg is tied 0.3 s later (while the loop
    runs, or while it is blocked); the proxy's client socket has a small SO_SNDBUF and the client
    reads nothing at first. Before the fix, the tie resumed the backend leg unconditionally and
    everything the backend sent piled up in the worker."""
    sent = [0]

    async def firehose(reader, writer):
        try:
            for offset in range(0, len(STREAM), 256 * 1024):
                writer.write(STREAM[offset:offset + 256 * 1024])
                await writer.drain()
                sent[0] = offset + 256 * 1024
        except ConnectionError:
            pass
        finally:
            writer.close()

    original = Connection.connected
    held_at_tie = []

    def tie_late(self, leg, transport):
        held_at_tie.append(len(leg.held or b""))
        original(self, leg, transport)

    def late(self, leg, transport):
        if busy:
            original(self, leg, transport)
            time.sleep(0.3)          # the worker is busy: the backend's bytes land in the kernel
        else:
            asyncio.get_running_loop().call_later(0.3, tie_late, self, leg, transport)

    monkeypatch.setattr(Connection, "connected", late)

    async def scenario():
        server, backend = await serve(firehose)
        proxy = Proxy(backend, buffer_size=buffer_size)
        proxy.frontend.listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        client = await slow_client(proxy.port)
        try:
            await eventually(lambda: proxy.frontend.connections and proxy.only_connection().client
                           and proxy.only_connection().client.transport, what="the tie")
            conn = proxy.only_connection()
            most = await watch_until_stalled(proxy, lambda: sent[0])
            # Backpressure reached the backend: it is blocked far from the end of its stream.
            assert sent[0] < len(STREAM) // 2, sent[0]
            assert conn.backend.transport.is_reading() is False
            assert conn.client.blocked and buffer_size < most <= proxy.bound()
            if not busy:
                assert held_at_tie == [buffer_size]      # one read, then the backend leg paused
            await drain_and_check(client, proxy, len(STREAM))
        finally:
            client.close()
            await proxy.close()
            server.close()
    run(scenario)


def test_a_backend_that_never_reads_pauses_the_client_with_a_bounded_buffer():
    release: asyncio.Event

    async def deaf(reader, writer):
        await release.wait()                  # reads nothing until told
        digest, got = hashlib.sha256(), 0
        while data := await reader.read(1024 * 1024):
            digest.update(data)
            got += len(data)
        writer.write(f"{digest.hexdigest()} {got}".encode())
        await writer.drain()
        writer.close()

    async def scenario():
        nonlocal release
        release = asyncio.Event()
        server, backend = await serve(deaf, rcvbuf=4096)
        proxy = Proxy(backend)
        loop = asyncio.get_running_loop()
        client = await slow_client(proxy.port)
        uploaded = [0]

        async def upload():
            for offset in range(0, len(STREAM), 64 * 1024):
                await loop.sock_sendall(client, STREAM[offset:offset + 64 * 1024])
                uploaded[0] = offset + 64 * 1024
            client.shutdown(socket.SHUT_WR)
        sending = loop.create_task(upload())
        try:
            await eventually(lambda: proxy.frontend.connections, what="the connection")
            conn = proxy.only_connection()
            most = await watch_until_stalled(proxy, lambda: uploaded[0])
            assert uploaded[0] < len(STREAM) // 2
            assert conn.client.transport.is_reading() is False and conn.backend.blocked
            assert FrontendConfig.buffer_size < most <= proxy.bound()
            release.set()
            await asyncio.wait_for(sending, 20)
            answer = await asyncio.wait_for(loop.sock_recv(client, 200), 20)
            assert answer.decode() == f"{hashlib.sha256(STREAM).hexdigest()} {len(STREAM)}"
        finally:
            sending.cancel()
            client.close()
            await proxy.close()
            server.close()
    run(scenario)


def test_many_never_reading_clients_each_stay_within_the_bound():
    """Twenty clients that never read against a backend that streams to each: every connection
    stops at its bound and the worker holds at most 20 x bound."""
    sent: dict[int, int] = {}

    async def firehose(reader, writer):
        key = id(writer)
        sent[key] = 0
        try:
            while True:
                writer.write(STREAM[:256 * 1024])
                await writer.drain()
                sent[key] += 256 * 1024
        except ConnectionError:
            pass

    async def scenario():
        server, backend = await serve(firehose)
        proxy = Proxy(backend)
        clients = [await slow_client(proxy.port) for _ in range(20)]
        try:
            await eventually(lambda: len(proxy.frontend.connections) == 20
                           and all(c.client and c.client.transport for c in proxy.frontend.connections))
            await watch_until_stalled(proxy, lambda: sum(sent.values()))
            total = sum(sum(buffered(c)) for c in proxy.frontend.connections)
            assert total <= 20 * proxy.bound()
            assert all(not c.backend.transport.is_reading() for c in proxy.frontend.connections)
        finally:
            for client in clients:
                client.close()
            await proxy.close()
            server.close()
    run(scenario)


# ---------------------------------------------------------------- limits


async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def closed_by_proxy(client: socket.socket, timeout: float) -> bool:
    """True when the proxy ends the connection (EOF or reset) within `timeout`."""
    loop = asyncio.get_running_loop()
    try:
        return await asyncio.wait_for(loop.sock_recv(client, 1), timeout) == b""
    except ConnectionResetError:
        return True
    except asyncio.TimeoutError:
        return False


def test_a_client_that_sends_nothing_is_closed_after_the_first_byte_timeout():
    timeout = 0.6

    async def banner(reader, writer):
        writer.write(b"220 hello\r\n")           # a server-first backend does not count as the client
        await echo(reader, writer)

    async def scenario():
        loop = asyncio.get_running_loop()
        server, backend = await serve(banner)
        proxy = Proxy(backend, client_first_byte_timeout=timeout)
        silent = await slow_client(proxy.port, rcvbuf=65536)
        talker = await slow_client(proxy.port, rcvbuf=65536)
        try:
            started = time.monotonic()
            assert await loop.sock_recv(silent, 100) == b"220 hello\r\n"
            assert await loop.sock_recv(talker, 100) == b"220 hello\r\n"
            await asyncio.sleep(timeout / 2)
            await loop.sock_sendall(talker, b"ping")
            assert await loop.sock_recv(talker, 100) == b"ping"
            assert await closed_by_proxy(silent, 3 * timeout)
            took = time.monotonic() - started
            # The sweep runs every timeout/4: at most a quarter late, plus scheduling.
            assert timeout <= took < timeout * 1.25 + 0.3, took
            # The one that spoke lives on past the deadline, and nothing else was closed.
            assert not await closed_by_proxy(talker, timeout)
            assert len(proxy.frontend.connections) == 1
        finally:
            silent.close()
            talker.close()
            await proxy.close()
            server.close()
    run(scenario)


def test_without_a_first_byte_timeout_a_silent_client_stays():
    async def scenario():
        server, backend = await serve(echo)
        proxy = Proxy(backend, idle_timeout=30.0)
        silent = await slow_client(proxy.port)
        try:
            assert not await closed_by_proxy(silent, 1.0)
            assert len(proxy.frontend.connections) == 1
        finally:
            silent.close()
            await proxy.close()
            server.close()
    run(scenario)


def test_max_connections_per_source_refuses_the_excess_of_one_address_only():
    async def scenario():
        loop = asyncio.get_running_loop()
        server, backend = await serve(echo)
        proxy = Proxy(backend, max_connections_per_source=2)
        fe = proxy.frontend
        held = []
        try:
            for i in range(2):
                client = await slow_client(proxy.port, rcvbuf=65536)
                held.append(client)
                await loop.sock_sendall(client, b"%d" % i)
                assert await loop.sock_recv(client, 1) == b"%d" % i
            third = await slow_client(proxy.port)
            assert await closed_by_proxy(third, 5)
            third.close()
            assert (fe.accepted, fe.refused, fe.sources) == (3, 1, {"127.0.0.1": 2})
            other = await slow_client(proxy.port, rcvbuf=65536, source="127.0.0.2")   # another source
            await loop.sock_sendall(other, b"x")
            assert await loop.sock_recv(other, 1) == b"x"
            other.close()
            held.pop().close()
            await eventually(lambda: fe.sources == {"127.0.0.1": 1}, what="the count going down")
            again = await slow_client(proxy.port, rcvbuf=65536)                    # room again
            held.append(again)
            await loop.sock_sendall(again, b"y")
            assert await loop.sock_recv(again, 1) == b"y"
            assert fe.refused == 1
        finally:
            for client in held:
                client.close()
            await proxy.close()
        assert fe.sources == {}
        server.close()
    run(scenario)


@pytest.mark.parametrize("limit, workers, per_worker", [(0, 4, 0), (1, 4, 1), (10, 4, 3), (8, 2, 4)])
def test_max_connections_per_source_is_split_over_the_workers_rounded_up(limit, workers, per_worker):
    async def scenario():
        proxy = Proxy("127.0.0.1:9", workers=workers, max_connections_per_source=limit)
        try:
            assert proxy.frontend.max_per_source == per_worker
        finally:
            await proxy.close()
    run(scenario)
