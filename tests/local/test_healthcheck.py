"""Health checks against real servers on loopback: aiohttp backends, a closed port, TLS."""
import asyncio
import contextlib
import logging
import socket
import ssl
import subprocess

import pytest
from aiohttp import web
from support import require_binary

from lbproxy.healthcheck import HealthChecker
from vipd.config import parse

pytestmark = pytest.mark.timeout(60)

FAST = {"interval": 0.05, "timeout": 0.5, "rise": 2, "fall": 2}


def frontend(addresses, **health):
    table = {"name": "api", "listen": "127.0.0.1:6443",
             "health": {"type": "http", **FAST, **health},
             "backend": [{"address": a} for a in addresses]}
    return parse({"frontend": [table]}).frontends[0]


def run(coro):
    asyncio.run(asyncio.wait_for(coro, 40))


async def wait_until(predicate, what, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def checks_pass(checker, address, count):
    """Let `count` more probes of `address` complete."""
    target = checker.backends[address].checks + count
    await wait_until(lambda: checker.backends[address].checks >= target, f"{count} checks of {address}")


class HttpBackend:
    """A real HTTP(S) server on an ephemeral loopback port that records what reached it."""

    def __init__(self, status=200, hang=False, tls=None, host="127.0.0.1"):
        self.status = status
        self.hang = hang
        self.tls = tls
        self.host = host
        self.requests = []
        self.runner = None

    async def handle(self, request):
        self.requests.append({"peer": request.transport.get_extra_info("peername")[:2],
                              "host": request.headers.get("Host"), "path": request.path,
                              "agent": request.headers.get("User-Agent")})
        if self.hang:
            await asyncio.sleep(60)
        return web.Response(status=self.status, text="health\n")

    async def __aenter__(self):
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.bind((self.host, 0))
        self.port = sock.getsockname()[1]
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.SockSite(self.runner, sock, ssl_context=self.tls).start()
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()

    @property
    def address(self):
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@contextlib.contextmanager
def closed_port():
    """A loopback port that refuses connections: bound (so nobody else takes it), not listening."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@contextlib.asynccontextmanager
async def running(checker):
    await checker.start()
    try:
        yield checker
    finally:
        await checker.stop()


def recorder():
    events = []
    return events, lambda frontend_name, address, state: events.append((frontend_name, address, state))


def test_http_status_drives_state_and_each_transition_is_reported_once(caplog):
    caplog.set_level(logging.INFO, logger="lbproxy.health")

    async def scenario():
        async with HttpBackend(200) as good, HttpBackend(500) as bad:
            events, on_change = recorder()
            checker = HealthChecker(frontend([good.address, bad.address]), on_change)
            assert checker.backends[bad.address].state == "up"   # optimistic start, like HAProxy
            async with running(checker):
                await wait_until(lambda: events, "the 500 backend to go down")
                await checks_pass(checker, bad.address, 5)
                await checks_pass(checker, good.address, 5)
                assert events == [("api", bad.address, "down")]
                assert checker.backends[good.address].state == "up"
                assert checker.all_down is False
                by_address = {row["address"]: row for row in checker.status()}
                assert by_address[bad.address]["state"] == "down"
                assert by_address[bad.address]["last_error"] == "HTTP 500"
                assert by_address[bad.address]["health"] == "0/2 DOWN"
                assert by_address[bad.address]["check_failures"] == by_address[bad.address]["checks"]
                assert by_address[good.address]["health"] == "2/2 UP"
                assert by_address[good.address]["last_error"] is None
                assert by_address[good.address]["check_failures"] == 0
                assert by_address[good.address]["check_latency_seconds"] > 0

                bad.status = 200
                await wait_until(lambda: len(events) == 2, "the backend to come back")
                await checks_pass(checker, bad.address, 5)
                assert events == [("api", bad.address, "down"), ("api", bad.address, "up")]
            # Stopped: no probe reaches the servers any more.
            seen = len(good.requests) + len(bad.requests)
            await asyncio.sleep(0.3)
            assert len(good.requests) + len(bad.requests) == seen

    run(scenario())
    transitions = [r.getMessage() for r in caplog.records if " UP: " in r.getMessage()
                   or " DOWN: " in r.getMessage()]
    assert len(transitions) == 2
    assert transitions[0].endswith("DOWN: HTTP 500 (2/2 failed)")
    assert transitions[1].endswith("UP: HTTP 200 (2/2 succeeded)")


def test_http_probe_uses_a_fresh_connection_each_time_with_host_header_and_path():
    async def scenario():
        async with HttpBackend(204) as plain, HttpBackend(204) as named:
            checker = HealthChecker(frontend([plain.address], path="/readyz", expect=[204]), print)
            named_checker = HealthChecker(
                frontend([named.address], path="/livez", expect=[204], host="api.example"), print)
            async with running(checker), running(named_checker):
                await checks_pass(checker, plain.address, 6)
                await checks_pass(named_checker, named.address, 3)
            assert len(plain.requests) >= 6
            assert len({r["peer"] for r in plain.requests}) == len(plain.requests)
            assert {r["host"] for r in plain.requests} == {plain.address}
            assert {r["path"] for r in plain.requests} == {"/readyz"}
            assert all(r["agent"].startswith("vipd-healthcheck") for r in plain.requests)
            assert {r["host"] for r in named.requests} == {"api.example"}
            assert {r["path"] for r in named.requests} == {"/livez"}
            assert checker.backends[plain.address].state == "up"

    run(scenario())


def test_hanging_backend_fails_by_timeout():
    async def scenario():
        async with HttpBackend(200, hang=True) as stuck:
            events, on_change = recorder()
            checker = HealthChecker(frontend([stuck.address], timeout=0.2, interval=0.1, fall=1),
                                    on_change)
            async with running(checker):
                await wait_until(lambda: events, "the hanging backend to go down")
                bh = checker.backends[stuck.address]
                assert events == [("api", stuck.address, "down")]
                assert bh.last_error == "no answer within 0.2s"
                assert bh.last_check_latency >= 0.2
                assert checker.all_down is True

    run(scenario())


@pytest.mark.parametrize("kind", ["tcp", "http"])
def test_closed_port_is_down_and_listening_port_stays_up(kind):
    async def scenario():
        async with HttpBackend(200) as alive:
            with closed_port() as dead:
                events, on_change = recorder()
                checker = HealthChecker(frontend([alive.address, dead], type=kind), on_change)
                async with running(checker):
                    await wait_until(lambda: events, "the closed port to go down")
                    await checks_pass(checker, alive.address, 3)
                assert events == [("api", dead, "down")]
                assert checker.backends[dead].last_error == "connection refused"
                assert checker.backends[alive.address].state == "up"
                assert checker.backends[alive.address].checks >= 3
                # tcp connects and closes; http gets as far as a request.
                assert bool(alive.requests) is (kind == "http")

    run(scenario())


def test_ipv6_loopback_backend():
    if not socket.has_ipv6:
        pytest.skip("needs IPv6")
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("needs the IPv6 loopback address ::1")

    async def scenario():
        async with HttpBackend(200, host="::1") as v6:
            checker = HealthChecker(frontend([v6.address]), print)
            async with running(checker):
                await checks_pass(checker, v6.address, 3)
            assert checker.backends[v6.address].check_failures == 0
            assert {r["host"] for r in v6.requests} == {v6.address}

    run(scenario())


def test_health_port_override_probes_another_port():
    async def scenario():
        async with HttpBackend(200) as status_port:
            with closed_port() as service:
                checker = HealthChecker(frontend([service], port=status_port.port), print)
                async with running(checker):
                    await checks_pass(checker, service, 3)
                assert checker.backends[service].check_failures == 0
                assert len(status_port.requests) >= 3
                assert {r["host"] for r in status_port.requests} == {service}

    run(scenario())


@pytest.fixture
def tls_context(tmp_path):
    require_binary("openssl")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    made = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert made.returncode == 0, made.stderr
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@pytest.mark.parametrize("verify", [False, True])
def test_https_self_signed_passes_only_without_verification(tls_context, verify):
    async def scenario():
        async with HttpBackend(200, tls=tls_context) as secure:
            events, on_change = recorder()
            checker = HealthChecker(frontend([secure.address], type="https", tls_verify=verify),
                                    on_change)
            async with running(checker):
                await checks_pass(checker, secure.address, 4)
            bh = checker.backends[secure.address]
            if verify:
                assert events == [("api", secure.address, "down")]
                assert bh.last_error.startswith("TLS certificate:")
                assert "self-signed" in bh.last_error
                assert secure.requests == []
            else:
                assert events == []
                assert bh.check_failures == 0
                assert len(secure.requests) >= 4

    run(scenario())


def test_passive_connect_failures_count_as_failed_checks():
    async def scenario():
        async with HttpBackend(200) as backend:
            events, on_change = recorder()
            checker = HealthChecker(frontend([backend.address], rise=2, fall=3), on_change)
            checker.report_connect_failure(backend.address, "connection refused")
            checker.report_connect_failure(backend.address, "connection refused")
            assert events == []
            checker.report_connect_failure(backend.address, "connect timeout")
            assert events == [("api", backend.address, "down")]
            bh = checker.backends[backend.address]
            assert (bh.passive_failures, bh.checks, bh.last_error) == (3, 0, "connect timeout")
            checker.report_connect_failure(backend.address, "connection refused")
            checker.report_connect_failure("198.18.0.99:6443", "from before a reload")
            assert events == [("api", backend.address, "down")]
            # Active checks bring it back once the backend answers again.
            async with running(checker):
                await wait_until(lambda: len(events) == 2, "recovery by active checks")
            assert events[1] == ("api", backend.address, "up")

    run(scenario())


def test_drain_and_enable():
    async def scenario():
        async with HttpBackend(200) as backend:
            events, on_change = recorder()
            checker = HealthChecker(frontend([backend.address]), on_change)
            async with running(checker):
                checker.drain(backend.address)
                checker.drain(backend.address)
                assert events == [("api", backend.address, "drain")]
                assert checker.all_down is True
                assert checker.status()[0]["state"] == "drain"
                await checks_pass(checker, backend.address, 2)   # still probed while drained
                checker.enable(backend.address)
                checker.enable(backend.address)
                assert events[1:] == [("api", backend.address, "up")]
                assert checker.all_down is False
                # Going down while drained is not news to the balancers; enabling then is.
                checker.drain(backend.address)
                backend.status = 503
                await wait_until(lambda: not checker.backends[backend.address].counter.up, "down")
                assert events[2:] == [("api", backend.address, "drain")]
                checker.enable(backend.address)
                assert events[3:] == [("api", backend.address, "down")]
            with pytest.raises(KeyError):
                checker.drain("198.18.0.99:6443")
            with pytest.raises(KeyError):
                checker.enable("198.18.0.99:6443")

    run(scenario())


def test_update_keeps_surviving_backends_and_restarts_checks_when_health_changes():
    async def scenario():
        async with (HttpBackend(500) as failing, HttpBackend(200) as drained,
                    HttpBackend(200) as removed, HttpBackend(200) as added):
            events, on_change = recorder()
            checker = HealthChecker(
                frontend([failing.address, drained.address, removed.address]), on_change)
            async with running(checker):
                await wait_until(lambda: events, "the failing backend to go down")
                checker.drain(drained.address)
                kept = checker.backends[drained.address]
                checks_before = kept.checks

                checker.update(frontend([failing.address, drained.address, added.address]))
                assert set(checker.backends) == {failing.address, drained.address, added.address}
                assert checker.backends[drained.address] is kept and kept.drained
                assert checker.backends[failing.address].state == "down"
                assert checker.backends[added.address].state == "up"
                await checks_pass(checker, added.address, 3)
                seen_by_removed = len(removed.requests)
                await checks_pass(checker, drained.address, 3)
                assert kept.checks >= checks_before + 3
                assert len(removed.requests) <= seen_by_removed + 1   # at most one probe in flight
                assert events == [("api", failing.address, "down"), ("api", drained.address, "drain")]

                # New [frontend.health]: probes restart with it; state carries over until it
                # is proven otherwise (the 500 backend needs `rise` good checks to come up).
                checker.update(frontend([failing.address, drained.address, added.address],
                                        expect=[200, 500], rise=3, fall=1))
                assert checker.backends[failing.address].counter.rise == 3
                assert checker.backends[failing.address].state == "down"
                await wait_until(lambda: len(events) == 3, "the 500 backend to count as healthy")
                assert events[2] == ("api", failing.address, "up")
                assert checker.backends[drained.address].state == "drain"
                statuses = {row["address"]: row["state"] for row in checker.status()}
                assert statuses == {failing.address: "up", drained.address: "drain",
                                    added.address: "up"}

    run(scenario())


class ProxyHeaderBackend:
    """A server that requires a PROXY header first (as a backend behind send-proxy does): it
    records the header's first line or block, closes on anything else, and answers HTTP 200."""

    def __init__(self):
        self.headers = []
        self.server = None

    async def handle(self, reader, writer):
        try:
            first = await reader.readexactly(5)
            if first == b"PROXY":
                self.headers.append(first + await reader.readuntil(b"\r\n"))
            elif first == b"\r\n\r\n\x00":
                fixed = first + await reader.readexactly(11)
                self.headers.append(fixed + await reader.readexactly(int.from_bytes(fixed[14:16], "big")))
            else:
                return                                   # no header: close without an answer
            if await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def __aenter__(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()


def proxied_frontend(address, proxy_protocol, **health):
    table = {"name": "api", "listen": "127.0.0.1:6443", "proxy_protocol": proxy_protocol,
             "health": {"type": "http", **FAST, **health}, "backend": [{"address": address}]}
    return parse({"frontend": [table]}).frontends[0]


@pytest.mark.parametrize("proxy_protocol, send_proxy, header", [
    ("v2", None, b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"),     # on by default with proxy_protocol: LOCAL
    ("v1", True, b"PROXY UNKNOWN\r\n"),
    ("off", True, b"PROXY UNKNOWN\r\n"),                       # check-send-proxy alone: v1, as HAProxy
])
@pytest.mark.parametrize("kind", ["http", "tcp"])
def test_checks_send_the_proxy_header_to_a_backend_that_requires_it(proxy_protocol, send_proxy, header, kind):
    async def scenario():
        async with ProxyHeaderBackend() as backend:
            events, on_change = recorder()
            health = {"type": kind} if send_proxy is None else {"type": kind, "send_proxy": send_proxy}
            checker = HealthChecker(proxied_frontend(backend.address, proxy_protocol, **health), on_change)
            async with running(checker):
                await checks_pass(checker, backend.address, 3)
            bh = checker.backends[backend.address]
            assert (bh.check_failures, events) == (0, []), bh.last_error
            assert len(backend.headers) >= 3 and set(backend.headers) == {header}

    run(scenario())


def test_http_checks_without_the_header_fail_against_a_backend_that_requires_it():
    async def scenario():
        async with ProxyHeaderBackend() as backend:
            events, on_change = recorder()
            checker = HealthChecker(proxied_frontend(backend.address, "v2", send_proxy=False), on_change)
            async with running(checker):
                await wait_until(lambda: events, "the backend going down")
            assert events == [("api", backend.address, "down")] and backend.headers == []

    run(scenario())
