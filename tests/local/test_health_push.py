"""Health flows one way: probe -> counter -> the supervisor's `serving` verdict, pushed (only on
change) to the VRRP side, whose frontend track records it. A real supervisor with a real worker
process on loopback; the VRRP side is a VrrpService whose one instance is just its TrackSet."""
from __future__ import annotations

import asyncio
import logging
import socket
from types import SimpleNamespace

import pytest
from support import eventually

from lbproxy.config import BackendConfig, FrontendConfig, HealthConfig, ProxyConfig
from lbproxy.supervisor import ProxySupervisor
from vipd.vrrp.config import Track
from vipd.vrrp.service import VrrpService
from vipd.vrrp.tracks import TrackSet

pytestmark = pytest.mark.timeout(90)

ALL_DOWN = "every backend is down"


class Backend:
    """A loopback TCP server that can be stopped and started again on the same port."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()

    @staticmethod
    async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


def reserved_port() -> socket.socket:
    """A bound, not listening SO_REUSEPORT socket: holds a port the worker's listener can join."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def test_serving_verdicts_are_pushed_once_per_change_and_reach_the_frontend_track(caplog, capfd):
    caplog.set_level(logging.INFO)

    async def scenario():
        one, two = Backend(), Backend()
        await one.start()
        await two.start()
        holder = reserved_port()
        port = holder.getsockname()[1]
        frontend = FrontendConfig(
            name="api", listen=f"127.0.0.1:{port}", listen_host="127.0.0.1", listen_port=port,
            backends=tuple(BackendConfig(b.address, "127.0.0.1", b.port) for b in (one, two)),
            health=HealthConfig(type="tcp", interval=0.05, timeout=0.5, rise=2, fall=2))
        pushes: list[tuple[str, bool]] = []
        priorities: list[int] = []
        vrrp: VrrpService | None = None

        def on_serving(name: str, serving: bool) -> None:
            pushes.append((name, serving))
            if vrrp is not None:
                vrrp.frontend_serving(name, serving)

        supervisor = ProxySupervisor(ProxyConfig((frontend,), workers=1), on_serving=on_serving)
        await supervisor.start()
        try:
            assert pushes == [("api", True)]
            # As the daemon does: VRRP starts after the proxy, from the verdicts pushed so far.
            vrrp = VrrpService(None, serving=supervisor.serving)
            tracks = TrackSet([Track("frontend", "api", weight=-50)],
                              lambda: priorities.append(tracks.effective_priority(100)),
                              lambda name: True, vrrp.serving)
            vrrp.instances["vi"] = SimpleNamespace(tracks=tracks)
            assert tracks.effective_priority(100) == 100

            state = lambda i: supervisor.status()[0]["backends"][i]["state"]
            await one.stop()
            await eventually(lambda: state(0) == "down", 10.0, "backend one down")
            await asyncio.sleep(0.5)         # ten probe rounds: one backend down is no news for VRRP
            assert pushes == [("api", True)] and priorities == []

            await two.stop()
            await eventually(lambda: len(pushes) == 2, 10.0, "the all-down verdict")
            assert pushes[1] == ("api", False) and priorities == [50]
            status = supervisor.status()[0]
            assert (status["all_down"], status["serving"]) == (True, False)
            # A client while everything is down: the worker tries the down backends, logging nothing
            # about the summary (that is the master's line).
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            await asyncio.sleep(0.3)

            await one.start()
            await eventually(lambda: len(pushes) == 3, 10.0, "the serving verdict")
            await two.start()
            await eventually(lambda: state(1) == "up", 10.0, "backend two up")
            assert pushes[2] == ("api", True) and priorities == [50, 100]

            # Probes keep running and pass; nothing changes, so nothing is pushed.
            checks = supervisor.status()[0]["backends"][0]["checks"]
            await asyncio.sleep(1.0)
            assert supervisor.status()[0]["backends"][0]["checks"] >= checks + 10
            assert len(pushes) == 3 and len(priorities) == 2

            # Passive failures reported for both backends count as failed checks.
            checker = supervisor.checkers["api"]
            for address in (one.address, two.address):
                for _ in range(frontend.health.fall):
                    checker.report_connect_failure(address, "connection refused")
            assert pushes[3:] == [("api", False)] and priorities[2:] == [50]
            await eventually(lambda: len(pushes) == 5, 10.0, "active checks to bring them back")
            assert pushes[4] == ("api", True) and priorities[3:] == [100]
        finally:
            await supervisor.stop_accepting()
            await supervisor.drain()
            holder.close()
            await one.stop()
            await two.stop()
        assert pushes[5:] == [("api", False)], "closing the listeners ends serving, once"
        assert priorities[4:] == [50]

    asyncio.run(asyncio.wait_for(scenario(), 60))
    worker_output = capfd.readouterr().err
    master = [r for r in caplog.records if ALL_DOWN in r.getMessage()]
    assert len(master) == 2 and {r.name for r in master} == {"lbproxy.health"}
    assert ALL_DOWN not in worker_output and "Traceback" not in worker_output
