"""nft calls of the hand-over bridge with a fake `nft` first on PATH (found as the daemon finds it,
by PATH): a hanging one is killed after the timeout, a failing one is reported, and either way the
hand-over falls back to the plain path (no bridge, no quiet hold) with one line saying why."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
from pathlib import Path

import pytest
from support import wait_until

from vipd.vrrp import handover

VIPS = [ipaddress.ip_interface("198.18.0.100/24")]


@pytest.fixture
def fake_nft(tmp_path: Path, monkeypatch):
    """Installs `nft` as the given shell body on PATH; returns the file its runs record pids in."""
    pids = tmp_path / "pids"

    def install(body: str) -> Path:
        nft = tmp_path / "nft"
        nft.write_text(f"#!/bin/sh\necho $$ >> {pids}\n{body}\n")
        nft.chmod(0o755)
        monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
        return pids
    return install


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(") ", 1)[1][0] != "Z"


@pytest.mark.timeout(30)
def test_a_hanging_nft_is_killed_after_the_timeout_with_its_children(fake_nft, monkeypatch) -> None:
    pids = fake_nft("sleep 3600 &\necho $! >> " + "\"$(dirname $0)/pids\"" + "\nwait")
    monkeypatch.setattr(handover, "NFT_TIMEOUT", 0.5)

    async def main() -> tuple[str | None, float]:
        loop = asyncio.get_running_loop()
        started = loop.time()
        why = await handover._nft("flush ruleset\n")
        return why, loop.time() - started

    why, took = asyncio.run(main())
    assert why == "nft did not finish within 0.5s and was killed"
    assert 0.5 <= took < 2.0
    started = [int(p) for p in pids.read_text().split()]
    assert len(started) == 2, "the fake nft and its sleep"
    # SIGKILL went to the whole group before _nft returned; the sleep (not our child, so not
    # reaped by us) exits as soon as the kernel gets to it.
    wait_until(lambda: not any(alive(p) for p in started), 2.0, "the fake nft and its sleep gone")


@pytest.mark.timeout(30)
def test_a_failing_nft_says_why_in_its_first_line(fake_nft) -> None:
    fake_nft("cat >/dev/null\necho 'Error: Could not process rule: Operation not permitted' >&2\n"
             "echo 'second line' >&2\nexit 1")
    assert asyncio.run(handover._nft("flush ruleset\n")) == \
        "nft: Error: Could not process rule: Operation not permitted"


@pytest.mark.timeout(30)
def test_the_bridge_falls_back_at_once_when_its_rules_are_not_installed(fake_nft, monkeypatch, caplog) -> None:
    fake_nft("sleep 3600")
    monkeypatch.setattr(handover, "NFT_TIMEOUT", 0.3)

    async def main() -> float:
        bridge = handover.Bridge(51, "eth0", handover.BridgePlan(ports=(443,), seconds=60.0))
        loop = asyncio.get_running_loop()
        started = loop.time()
        bridge.prepare("198.18.0.11", [v.ip for v in VIPS])
        await bridge._task      # not 60 s: no rules, no bridge time to wait out
        return loop.time() - started

    with caplog.at_level(logging.WARNING, logger="vipd.vrrp"):
        took = asyncio.run(main())
    assert took < 5.0
    lines = [r.getMessage() for r in caplog.records if "no bridge" in r.getMessage()]
    assert lines == ["vrrp vrid 51: no bridge to 198.18.0.11 (nft did not finish within 0.3s and was killed): "
                     "connections in flight to it are not carried"]


@pytest.mark.timeout(30)
def test_vips_are_held_quietly_only_when_the_arp_silence_is_installed(fake_nft, caplog) -> None:
    fake_nft("cat >/dev/null\necho 'Error: No such file or directory' >&2\nexit 1")
    removed: list[list] = []

    async def remove(vips: list) -> None:
        removed.append(list(vips))

    async def main() -> list:
        quiet = handover.QuietHold(51, "vrrp api")
        quiet.hold(VIPS, remove)
        await quiet._quiet
        kept = list(quiet.vips)
        await quiet.release(remove)
        return kept

    with caplog.at_level(logging.WARNING, logger="vipd.vrrp"):
        kept = asyncio.run(main())
    assert removed[0] == VIPS, "released at once: a VIP kept without ARP silence would pull clients back"
    assert kept == [] and removed[1:] == [[]]
    assert any(r.getMessage().startswith("vrrp api: cannot silence ARP for the VIPs handed over (nft: Error: No such")
               for r in caplog.records)
