"""lbproxy's data path in this process, under uvloop as in a worker: a Frontend (listener, accept
loop, balancer, connections) against loopback backends, with the worker's connect-timeout sweep.
No worker process, no master: failed connects land in a list instead of the IPC channel."""
from __future__ import annotations

import asyncio
import gc
import hashlib
import random
import socket
import struct
import time
import weakref

import pytest
import uvloop
from support import LoopbackFrontend, eventually, serve

from lbproxy.config import FrontendConfig
from lbproxy.hedge import HEDGE_FLOOR, HEDGE_UNKNOWN
from lbproxy.worker import untrack_transports

pytestmark = pytest.mark.timeout(60)

MiB = 1024 * 1024


def run(scenario) -> None:
    uvloop.run(asyncio.wait_for(scenario(), 30))


class Proxy(LoopbackFrontend):
    def slot(self, address: str):
        return next(s for s in self.frontend.slots if s.address == address)


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(256 * 1024):
        writer.write(data)
        await writer.drain()
    writer.close()


def closed_port() -> socket.socket:
    """Bound, never listening: a connect to it is refused."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def blackhole(port: int = 0) -> tuple[socket.socket, list[socket.socket]]:
    """A listener (on `port`, or an ephemeral one) that never accepts, its queue (backlog 0) filled:
    the kernel drops further SYNs, so a connect to it hangs until the connector gives up."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(0)
    fillers = []
    for _ in range(8):
        filler = socket.socket()
        filler.settimeout(0.2)
        try:
            filler.connect(listener.getsockname())
        except TimeoutError:
            filler.close()
            return listener, fillers
        fillers.append(filler)
    raise AssertionError("a backlog-0 listener kept accepting handshakes")


def address(sock: socket.socket) -> str:
    return "%s:%d" % sock.getsockname()


async def read_all(reader: asyncio.StreamReader) -> bytes:
    chunks = []
    while chunk := await reader.read(256 * 1024):
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------- bytes both ways


def test_bytes_cross_intact_both_ways_and_the_clients_end_reaches_the_backend():
    upload = random.Random(1).randbytes(4 * MiB)
    download = random.Random(2).randbytes(3 * MiB)

    async def backend(reader, writer):
        # Sends its own stream while reading, then, once the client's end of file came through,
        # the digest of what arrived: it can only be sent because the other direction stays open.
        writer.write(download)
        received = hashlib.sha256()
        while data := await reader.read(256 * 1024):
            received.update(data)
        writer.write(received.digest())
        await writer.drain()
        writer.close()

    async def scenario():
        server, backend_address = await serve(backend)
        proxy = Proxy([backend_address])
        try:
            reader, writer = await proxy.connect()
            receiving = asyncio.ensure_future(read_all(reader))
            writer.write(upload)
            await writer.drain()
            writer.write_eof()
            received = await receiving
            writer.close()
            assert len(received) == len(download) + 32
            assert hashlib.sha256(received[:-32]).digest() == hashlib.sha256(download).digest()
            assert received[-32:] == hashlib.sha256(upload).digest()
            await asyncio.sleep(0.05)
            slot = proxy.slot(backend_address)
            assert (slot.bytes_in, slot.bytes_out) == (len(upload), len(download) + 32)
            assert proxy.frontend.connections == set() and proxy.failures == []
        finally:
            await proxy.close()
            server.close()
    run(scenario)


def test_the_worker_untracks_uvloops_transports_and_proxied_connections_still_relay():
    async def scenario():
        loop = asyncio.get_running_loop()
        assert untrack_transports(loop)      # a uvloop without the registry would lose the saving unseen
        server, backend_address = await serve(echo)
        proxy = Proxy([backend_address])
        try:
            registry = next(o for o in gc.get_referents(loop) if isinstance(o, weakref.WeakValueDictionary))
            reader, writer = await proxy.connect()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert len(registry) == 0        # the open connection's two transports were not filed
            writer.write_eof()
            assert await read_all(reader) == b""
            writer.close()
            await eventually(lambda: not proxy.frontend.connections)
        finally:
            await proxy.close()
            server.close()
    run(scenario)


def test_the_backends_end_reaches_the_client_which_can_still_send():
    arrived: asyncio.Future

    async def backend(reader, writer):
        writer.write(b"hello")
        writer.write_eof()
        arrived.set_result(await read_all(reader))
        writer.close()

    async def scenario():
        nonlocal arrived
        arrived = asyncio.get_running_loop().create_future()
        server, backend_address = await serve(backend)
        proxy = Proxy([backend_address])
        try:
            reader, writer = await proxy.connect()
            assert await read_all(reader) == b"hello"         # end of file, the connection still open
            (conn,) = proxy.frontend.connections
            assert conn.half_closed_at > 0
            writer.write(b"after the backend's end")
            writer.write_eof()
            assert await arrived == b"after the backend's end"
            writer.close()
        finally:
            await proxy.close()
            server.close()
    run(scenario)


# ---------------------------------------------------------------- connecting


def test_a_refused_connect_is_retried_on_another_backend_before_any_byte_is_read():
    async def scenario():
        dead = closed_port()
        server, good = await serve(echo)
        proxy = Proxy([address(dead), good], balance="round_robin", retries=2)
        try:
            reader, writer = await proxy.connect()
            first = b"first bytes, sent before any backend answered"
            writer.write(first)
            assert await reader.readexactly(len(first)) == first
            writer.close()
            assert proxy.failures == [("t", address(dead), "connection refused")]
            dead_slot, good_slot = proxy.slot(address(dead)), proxy.slot(good)
            assert (dead_slot.total, dead_slot.failed, dead_slot.bytes_in) == (1, 1, 0)
            assert (good_slot.total, good_slot.failed) == (1, 0)
        finally:
            await proxy.close()
            server.close()
            dead.close()
    run(scenario)


def test_a_lone_blackholed_backend_times_out_and_the_client_is_closed():
    timeout = 0.4

    async def scenario():
        hole, fillers = blackhole()
        proxy = Proxy([address(hole)], retries=1, connect_timeout=timeout)
        try:
            started = time.monotonic()
            reader, writer = await proxy.connect()
            assert await reader.read(1) == b""
            took = time.monotonic() - started
            writer.close()
            # Nothing else to try: the sweep (every timeout/5) gives up one step after the
            # timeout, well before the kernel's first SYN retry (a second).
            assert timeout <= took < 2 * timeout, took
            assert proxy.failures == [("t", address(hole), "connect timeout")]
            assert proxy.frontend.failed == 1 and proxy.slot(address(hole)).candidate.active == 0
        finally:
            await proxy.close()
            for sock in (hole, *fillers):
                sock.close()
    run(scenario)


def test_a_blackholed_backend_is_overtaken_by_a_second_attempt_long_before_connect_timeout():
    async def scenario():
        hole, fillers = blackhole()
        server, good = await serve(echo)
        proxy = Proxy([address(hole), good], balance="round_robin")      # default connect_timeout 2 s
        try:
            started = time.monotonic()
            reader, writer = await proxy.connect()
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            took = time.monotonic() - started
            writer.close()
            # The hole never answered before: overdue after HEDGE_UNKNOWN; the good one wins then.
            assert HEDGE_UNKNOWN <= took < HEDGE_UNKNOWN + 0.2, took
            assert proxy.failures == [("t", address(hole), "no answer within 250 ms (another backend answered)")]
            hole_slot, good_slot = proxy.slot(address(hole)), proxy.slot(good)
            assert (hole_slot.total, hole_slot.failed, hole_slot.candidate.active) == (1, 1, 0)
            assert (good_slot.total, good_slot.failed) == (1, 0)
            assert len(proxy.frontend.pending) == 0
        finally:
            await proxy.close()
            server.close()
            for sock in (hole, *fillers):
                sock.close()
    run(scenario)


def test_a_backend_that_answered_before_and_then_vanished_costs_only_the_floor():
    async def scenario():
        server, good = await serve(echo)
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        vanishing = address(listener)
        proxy = Proxy([vanishing, good], balance="round_robin")
        fillers = []
        try:
            for _ in range(2):                        # one connect to each: both have a connect time
                reader, writer = await proxy.connect()
                writer.write(b"x")
                writer.close()
            await eventually(lambda: proxy.slot(vanishing).connect_times.mean >= 0 and proxy.slot(good).total == 1)
            assert proxy.slot(vanishing).connect_times.overdue_after(2.0) == HEDGE_FLOOR
            listener.close()                          # now a listener that drops SYNs on that port
            hole, fillers = blackhole(int(vanishing.rsplit(":", 1)[1]))
            fillers.append(hole)
            took = []
            for _ in range(4):
                started = time.monotonic()
                reader, writer = await proxy.connect()
                writer.write(b"ping")
                assert await reader.readexactly(4) == b"ping"
                took.append(time.monotonic() - started)
                writer.close()
            assert max(took) < HEDGE_FLOOR + 0.15, took
            assert proxy.failures and {f[1] for f in proxy.failures} == {vanishing}
        finally:
            await proxy.close()
            server.close()
            listener.close()
            for sock in fillers:
                sock.close()
    run(scenario)


def test_max_connections_closes_the_one_too_many_at_once():
    async def scenario():
        server, good = await serve(echo)
        proxy = Proxy([good], max_connections=2)
        held = []
        try:
            for i in range(2):
                reader, writer = await proxy.connect()
                writer.write(b"%d" % i)
                assert await reader.readexactly(1) == b"%d" % i
                held.append((reader, writer))
            reader, writer = await proxy.connect()
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            writer.close()
            fe = proxy.frontend
            assert (fe.accepted, fe.refused, len(fe.connections)) == (3, 1, 2)
            assert proxy.slot(good).total == 2
            held.pop()[1].close()
            await asyncio.sleep(0.1)
            reader, writer = await proxy.connect()         # room again
            writer.write(b"x")
            assert await reader.readexactly(1) == b"x"
            writer.close()
            assert fe.refused == 1
        finally:
            for _, writer in held:
                writer.close()
            await proxy.close()
            server.close()
    run(scenario)


# ---------------------------------------------------------------- flow control


def test_a_client_that_never_reads_pauses_the_backend_with_a_bounded_buffer():
    sent = [0]
    chunk = random.Random(3).randbytes(256 * 1024)

    async def firehose(reader, writer):
        try:
            while True:
                writer.write(chunk)
                await writer.drain()
                sent[0] += len(chunk)
        except ConnectionError:
            pass

    async def scenario():
        loop = asyncio.get_running_loop()
        server, backend_address = await serve(firehose)
        proxy = Proxy([backend_address])
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        try:
            await loop.sock_connect(client, ("127.0.0.1", proxy.port))
            await eventually(lambda: proxy.frontend.connections and next(iter(proxy.frontend.connections)).client)
            (conn,) = proxy.frontend.connections
            to_client, from_backend = conn.client.transport, conn.backend.transport
            high = to_client.get_write_buffer_limits()[1]
            assert high == FrontendConfig.buffer_size
            # What the proxy holds for one direction: below the high-water mark before a read, plus
            # one read (at most buffer_size) after it; then the backend leg stops reading.
            bound = high + FrontendConfig.buffer_size
            most = 0
            last, still_since = -1, time.monotonic()
            deadline = still_since + 10
            while time.monotonic() - still_since < 0.5:          # until the stream stalls
                most = max(most, to_client.get_write_buffer_size())
                assert most <= bound and time.monotonic() < deadline, (most, bound, sent[0])
                if sent[0] != last:
                    last, still_since = sent[0], time.monotonic()
                await asyncio.sleep(0.001)
            buffered = to_client.get_write_buffer_size()
            assert from_backend.is_reading() is False
            assert high < buffered <= bound, (high, buffered, bound)

            # The client reads again: the backend leg resumes and the stream flows on, 8 MiB more.
            stalled_at = sent[0]
            while sent[0] < stalled_at + 8 * MiB:
                assert await loop.sock_recv(client, 1024 * 1024)
                assert to_client.get_write_buffer_size() <= bound
        finally:
            client.close()
            await proxy.close()
            server.close()
    run(scenario)




# ---------------------------------------------------------------- PROXY protocol


class HeaderBackend:
    """A backend that requires a PROXY header: parses it (on its own, not with lbproxy's codec),
    then echoes everything that follows."""

    def __init__(self) -> None:
        self.headers: list[tuple] = []
        self.connections = 0

    async def __call__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        first = await reader.readexactly(5)
        if first == b"PROXY":
            words = (first + await reader.readuntil(b"\r\n")).decode().split()
            self.headers.append(("v1", words[1], (words[2], int(words[4])), (words[3], int(words[5]))))
        else:
            fixed = first + await reader.readexactly(11)
            assert fixed[:12] == b"\r\n\r\n\x00\r\nQUIT\n"
            command, family, length = struct.unpack("!BBH", fixed[12:])
            block = await reader.readexactly(length)
            src, dst, sport, dport = struct.unpack_from("!4s4sHH", block)
            self.headers.append(("v2", hex(command), hex(family), (socket.inet_ntoa(src), sport),
                                 (socket.inet_ntoa(dst), dport)))
        await echo(reader, writer)


async def round_trip(proxy: "Proxy", payload: bytes, before: bytes = b"", split: int = 0) -> tuple[bytes, int]:
    """Send `before` (cut in two writes at `split`) and `payload`; what comes back, and the client's port."""
    reader, writer = await proxy.connect()
    port = writer.get_extra_info("sockname")[1]
    if split:
        writer.write(before[:split])
        await writer.drain()
        await asyncio.sleep(0.05)
        before = before[split:]
    writer.write(before + payload)
    writer.write_eof()
    back = await read_all(reader)
    writer.close()
    return back, port


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_backend_gets_a_proxy_header_with_the_client_address_then_the_payload(version):
    payload = random.Random(5).randbytes(MiB)

    async def scenario():
        backend = HeaderBackend()
        server, backend_address = await serve(backend)
        proxy = Proxy([backend_address], proxy_protocol=version)
        try:
            back, client_port = await round_trip(proxy, payload)
            assert back == payload
            client, listen = ("127.0.0.1", client_port), ("127.0.0.1", proxy.port)
            expected = ("v1", "TCP4", client, listen) if version == "v1" else ("v2", "0x21", "0x11", client, listen)
            assert backend.headers == [expected]
        finally:
            await proxy.close()
            server.close()
    run(scenario)


@pytest.mark.parametrize("split", [0, 9, 30])
def test_a_trusted_balancers_header_is_read_and_its_client_passed_on(split):
    payload = random.Random(6).randbytes(256 * 1024)
    upstream = b"PROXY TCP4 198.18.0.7 198.18.0.100 40000 443\r\n"

    async def scenario():
        backend = HeaderBackend()
        server, backend_address = await serve(backend)
        proxy = Proxy([backend_address], proxy_protocol="v2", accept_proxy_protocol=True,
                      trusted_proxies=("127.0.0.0/8",))
        try:
            back, _ = await round_trip(proxy, payload, upstream, split)
            assert back == payload
            assert backend.headers == [("v2", "0x21", "0x11", ("198.18.0.7", 40000), ("198.18.0.100", 443))]
            assert proxy.frontend.refused == 0
        finally:
            await proxy.close()
            server.close()
    run(scenario)


@pytest.mark.parametrize("trusted, sent, why", [
    (("198.18.0.0/24",), b"PROXY TCP4 198.18.0.7 198.18.0.100 40000 443\r\nhello", "untrusted source"),
    (("127.0.0.1",), b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "no header"),
    (("127.0.0.1",), b"PROXY TCP4 198.18.0.7 198.18.0.100 99999 443\r\nhello", "bad port"),
])
def test_a_connection_without_a_good_header_from_a_trusted_source_is_refused(trusted, sent, why):
    async def scenario():
        backend = HeaderBackend()
        server, backend_address = await serve(backend)
        proxy = Proxy([backend_address], accept_proxy_protocol=True, trusted_proxies=trusted)
        try:
            reader, writer = await proxy.connect()
            writer.write(sent)
            try:
                assert await asyncio.wait_for(reader.read(1), 5) == b""
            except ConnectionResetError:
                pass
            writer.close()
            assert proxy.frontend.refused == 1, why
            assert backend.connections == 0 and proxy.slot(backend_address).total == 0
            await eventually(lambda: not proxy.frontend.connections and not proxy.frontend.sources)
        finally:
            await proxy.close()
            server.close()
    run(scenario)


def test_a_trusted_source_that_sends_no_header_is_closed_after_the_first_byte_timeout():
    async def scenario():
        server, backend_address = await serve(echo)
        proxy = Proxy([backend_address], accept_proxy_protocol=True, trusted_proxies=("127.0.0.1",),
                      client_first_byte_timeout=0.3)
        try:
            started = time.monotonic()
            reader, writer = await proxy.connect()
            writer.write(b"PROXY TCP4 ")                 # a beginning, then nothing
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            took = time.monotonic() - started
            writer.close()
            assert 0.3 <= took < 0.6, took
            assert proxy.frontend.refused == 1 and proxy.slot(backend_address).total == 0
        finally:
            await proxy.close()
            server.close()
    run(scenario)
