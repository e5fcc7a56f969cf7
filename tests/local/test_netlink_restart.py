"""The netlink monitor restarts itself: one failure is a fresh dump and no fault; failing again before
that dump completes marks link state unknown on the table (the instances go to FAULT) until a
restart with backoff succeeds. Real rtnetlink sockets (reading needs no privilege)."""
from __future__ import annotations

import asyncio
import errno
import socket

import pytest

from vipd.vrrp import links
from vipd.vrrp.links import InterfaceTable, NetlinkMonitor


class Breakable:
    """A real rtnetlink socket whose next recv fails once the test breaks it."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.broken = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def getsockname(self):
        return self.sock.getsockname()

    def send(self, data: bytes) -> int:
        return self.sock.send(data)

    def recv(self, size: int) -> bytes:
        if self.broken:
            raise OSError(errno.EBADF, "Bad file descriptor")
        return self.sock.recv(size)

    def close(self) -> None:
        self.sock.close()

    def wake(self) -> None:
        """Make the socket readable: ask the kernel for a link dump on it."""
        self.broken = True
        self.sock.send(b"\x14\x00\x00\x00\x12\x00\x01\x03\x63\x00\x00\x00\x00\x00\x00\x00" + bytes(4))


class FlakyMonitor(NetlinkMonitor):
    """Opens real sockets, except that the opens listed in `refused` (counting from 1) fail."""

    def __init__(self, table: InterfaceTable, refused: set[int]) -> None:
        super().__init__(table)
        self.refused = refused
        self.opened: list[Breakable] = []

    def _open(self):
        if len(self.opened) + 1 in self.refused:
            self.opened.append(None)
            raise OSError(errno.EMFILE, "Too many open files")
        sock = Breakable(super()._open())
        self.opened.append(sock)
        return sock


async def until(predicate, timeout: float) -> bool:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():
        if loop.time() > end:
            return False
        await asyncio.sleep(0.01)
    return True


@pytest.mark.timeout(30)
def test_one_failure_restarts_with_a_fresh_dump_and_no_fault() -> None:
    async def main() -> None:
        table = InterfaceTable()
        seen: list[str | None] = []
        table.subscribe(lambda name: seen.append(table.monitor_fault))
        monitor = FlakyMonitor(table, refused=set())
        await monitor.start()
        try:
            assert table.by_name("lo") is not None
            table.links.clear()                 # forget: only a fresh dump brings lo back
            monitor.opened[0].wake()
            assert await until(lambda: table.by_name("lo") is not None, 10)
            assert len(monitor.opened) == 2 and table.monitor_fault is None
            assert all(fault is None for fault in seen)
        finally:
            await monitor.stop()

    asyncio.run(main())


@pytest.mark.timeout(30)
def test_failing_again_marks_link_state_unknown_until_a_retry_succeeds(monkeypatch) -> None:
    monkeypatch.setattr(links, "NETLINK_RETRY_FIRST", 0.2)

    async def main() -> None:
        table = InterfaceTable()
        told: list[str | None] = []
        table.subscribe(lambda name: told.append(table.monitor_fault) if name == "lo" else None)
        monitor = FlakyMonitor(table, refused={2, 3})
        await monitor.start()
        try:
            monitor.opened[0].wake()
            assert await until(lambda: table.monitor_fault is not None, 5)
            assert "Too many open files" in table.monitor_fault
            # open 3 fails after 0.2 s, open 4 after 0.4 s more succeeds and dumps again.
            assert await until(lambda: table.monitor_fault is None, 10)
            assert len(monitor.opened) == 4 and monitor.opened[3] is not None
            assert told[-1] is None and "Too many open files" in told[-2], told
            assert table.by_name("lo") is not None
        finally:
            await monitor.stop()
        assert monitor._thread is None

    asyncio.run(main())
