"""Backup backends and slow start end to end: a real supervisor with two real worker processes
on loopback, backends that answer with their name, and clients counting who answered."""
from __future__ import annotations

import asyncio
import dataclasses
import math
import socket
import time

import pytest
from support import eventually

from lbproxy.config import BackendConfig, FrontendConfig, HealthConfig, ProxyConfig
from lbproxy.supervisor import ProxySupervisor

pytestmark = pytest.mark.timeout(120)


class _Answer(asyncio.Protocol):
    def __init__(self, name: bytes) -> None:
        self.name = name

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.name)
        transport.close()


class Named:
    """A loopback TCP server that sends its name and closes; stops and starts on one port.
    Plain protocols and sockets on both ends keep this process's own cost per request low."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Answer(self.name.encode()), "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def config(self, backup: bool = False) -> BackendConfig:
        return BackendConfig(self.address, "127.0.0.1", self.port, backup=backup)


def reserved_port() -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket: holds a port the workers' listeners join."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def ask(port: int) -> str:
    loop = asyncio.get_running_loop()
    with socket.socket() as sock:
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", port))
        return (await asyncio.wait_for(loop.sock_recv(sock, 64), 5)).decode()


async def answers(port: int, count: int) -> list[str]:
    return [await ask(port) for _ in range(count)]


def frontend_config(port: int, backends: list[BackendConfig], **settings) -> FrontendConfig:
    return FrontendConfig(
        name="api", listen=f"127.0.0.1:{port}", listen_host="127.0.0.1", listen_port=port,
        backends=tuple(backends), health=HealthConfig(type="tcp", interval=0.05, timeout=0.5, rise=2, fall=2),
        **settings)


class Running:
    """The supervisor and what the test needs of its status."""

    def __init__(self, supervisor: ProxySupervisor) -> None:
        self.supervisor = supervisor

    def frontend(self) -> dict:
        return self.supervisor.status()[0]

    def backend(self, address: str) -> dict:
        return next(b for b in self.frontend()["backends"] if b["address"] == address)

    async def state(self, address: str, state: str) -> None:
        await eventually(lambda: self.backend(address)["state"] == state, 10.0, f"{address} {state}")
        await asyncio.sleep(0.05)             # the push reaches the workers over their pipes


def test_backups_serve_only_while_no_primary_is_up_and_hand_back_at_once():
    async def scenario():
        p1, p2, b1, b2 = Named("p1"), Named("p2"), Named("b1"), Named("b2")
        for backend in (p1, p2, b1, b2):
            await backend.start()
        holder = reserved_port()
        port = holder.getsockname()[1]
        frontend = frontend_config(port, [p1.config(), p2.config(), b1.config(backup=True), b2.config(backup=True)])
        pushes: list[bool] = []
        supervisor = ProxySupervisor(ProxyConfig((frontend,), workers=2),
                                     on_serving=lambda name, serving: pushes.append(serving))
        await supervisor.start()
        run = Running(supervisor)
        try:
            got = await answers(port, 60)
            assert set(got) == {"p1", "p2"}
            assert [(b["backup"], b["effective_weight"]) for b in run.frontend()["backends"]] == [
                (False, 1.0), (False, 1.0), (True, 1.0), (True, 1.0)]

            await p1.stop()
            await run.state(p1.address, "down")
            assert set(await answers(port, 40)) == {"p2"}, "one primary up keeps the backups out"

            await p2.stop()
            await run.state(p2.address, "down")
            got = await answers(port, 80)
            assert set(got) == {"b1", "b2"} and min(got.count("b1"), got.count("b2")) >= 25, got
            status = run.frontend()
            assert (status["using_backups"], status["all_down"], status["serving"]) == (True, False, True)
            assert pushes == [True], "a frontend with only backups up is still serving"

            await p2.start()
            await run.state(p2.address, "up")
            assert set(await answers(port, 40)) == {"p2"}, "traffic returns to the primary at once"
            assert run.frontend()["using_backups"] is False

            supervisor.set_drain("api", p2.address, True)     # drained primaries do not count as up
            await run.state(p2.address, "drain")
            assert set(await answers(port, 40)) == {"b1", "b2"}
            supervisor.set_drain("api", p2.address, False)
            await run.state(p2.address, "up")
            assert set(await answers(port, 40)) == {"p2"}

            for backend in (b1, b2):
                await backend.stop()
                await run.state(backend.address, "down")
            await p2.stop()
            await run.state(p2.address, "down")
            status = run.frontend()
            assert (status["using_backups"], status["all_down"], status["serving"]) == (False, True, False)
            assert pushes == [True, False]
        finally:
            await supervisor.stop_accepting()
            await supervisor.drain()
            holder.close()
            for backend in (p1, p2, b1, b2):
                await backend.stop()

    asyncio.run(asyncio.wait_for(scenario(), 100))


SLOW_START = 2.0


def mean_share(low: float, high: float, others: float = 1.0) -> float:
    """The average share of a backend whose weight ramps linearly from `low` to `high` (of its
    full weight 1) against `others` of settled weight: the mean of f / (others + f)."""
    integral = lambda f: f - others * math.log(others + f)
    return (integral(high) - integral(low)) / (high - low)


async def sample(port: int, since: float, until: float, clients: int = 4) -> list[tuple[float, str]]:
    """(seconds after `since`, who answered) from `clients` concurrent client loops."""
    seen: list[tuple[float, str]] = []

    async def loop() -> None:
        while (sent := time.monotonic()) < until:
            seen.append((sent - since, await ask(port)))
    await asyncio.gather(*(loop() for _ in range(clients)))
    return seen


def share(seen: list[tuple[float, str]], name: str, low: float, high: float) -> tuple[float, int]:
    window = [who for at, who in seen if low <= at < high]
    return window.count(name) / len(window), len(window)


def test_a_recovered_backend_ramps_up_over_slow_start_and_one_added_by_a_reload_too():
    async def scenario():
        a, b, c = Named("a"), Named("b"), Named("c")
        for backend in (a, b, c):
            await backend.start()
        holder = reserved_port()
        port = holder.getsockname()[1]
        frontend = frontend_config(port, [a.config(), b.config()], slow_start=SLOW_START)
        supervisor = ProxySupervisor(ProxyConfig((frontend,), workers=2))
        await supervisor.start()
        run = Running(supervisor)
        try:
            # Not at start: both take their full share at once.
            got = await answers(port, 80)
            assert 0.4 <= got.count("b") / 80 <= 0.6, got
            assert run.backend(b.address)["slow_start_remaining"] == 0.0

            await b.stop()
            await run.state(b.address, "down")
            await b.start()
            await eventually(lambda: run.backend(b.address)["state"] == "up", 10.0, "b up")
            since = supervisor.checkers["api"].backends[b.address].up_since
            ramping = run.backend(b.address)
            assert 0 < ramping["effective_weight"] < 0.5 and 1.5 < ramping["slow_start_remaining"] <= SLOW_START

            seen = await sample(port, since, since + SLOW_START + 0.6)
            quarters = [share(seen, "b", q * SLOW_START / 4, (q + 1) * SLOW_START / 4) for q in range(4)]
            settled = share(seen, "b", SLOW_START + 0.1, SLOW_START + 0.6)
            report = (quarters, settled)
            assert all(count >= 25 for _, count in quarters + [settled]), report
            # The mean shares of a linear ramp against one settled equal: 0.11, 0.27, 0.38, 0.47,
            # then 0.5. Each worker's smooth round robin stays within a pick of its exact share
            # over any stretch: two workers, two picks, beside the ramp's own spread in a window.
            for q, (got_share, count) in enumerate(quarters):
                expected = mean_share(q / 4, (q + 1) / 4)
                assert abs(got_share - expected) <= 0.03 + 2 / count, (q, expected, report)
            assert quarters[0][0] < quarters[1][0] < quarters[3][0], report
            assert abs(settled[0] - 0.5) <= 0.03 + 2 / settled[1], report
            assert (run.backend(b.address)["effective_weight"], run.backend(b.address)["slow_start_remaining"]) == (1.0, 0.0)

            # A backend added by a reload ramps too (its origin reaches the workers in `configure`).
            reloaded = dataclasses.replace(frontend, backends=(a.config(), b.config(), c.config()))
            await supervisor.reload(ProxyConfig((reloaded,), workers=2))
            since = supervisor.checkers["api"].backends[c.address].up_since
            assert since is not None
            seen = await sample(port, since, since + SLOW_START / 4)
            first, count = share(seen, "c", 0.0, SLOW_START / 4)
            # Against two settled equals: mean of f / (2 + f) over f in 0..0.25 is 0.058.
            assert count >= 25 and first <= 0.058 + 0.03 + 2 / count, seen
            await asyncio.sleep(max(0.0, since + SLOW_START - time.monotonic()) + 0.1)
            got = await answers(port, 90)
            assert abs(got.count("c") / 90 - 1 / 3) <= 0.03 + 2 / 90, got
        finally:
            await supervisor.stop_accepting()
            await supervisor.drain()
            holder.close()
            for backend in (a, b, c):
                await backend.stop()

    asyncio.run(asyncio.wait_for(scenario(), 100))
