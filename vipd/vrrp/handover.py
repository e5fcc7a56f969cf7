"""Carry open connections across a planned VIP move (IPv4, nftables).

When a master hands its VIPs over, clients follow the new master's gratuitous ARP at once, but a
connection whose handshake reached the old master just before keeps sending its segments: they now
arrive at the new master, which has no socket for them and would reset it. So for a while:

- the new master bridges such segments (to a VIP frontend port, no SYN or RST, matching only a
  wildcard listener: no local connection of its own) back to the old master at layer 2; for a
  nat frontend, whose flows are the kernel's, a segment conntrack has not seen (state new) is
  bridged: the old master's conntrack holds its translation;
- the old master keeps the VIPs, silent on ARP so it never pulls clients back, until its proxy
  has drained; then it releases them.

The state machine decides when (PrepareBridge, HoldVipsQuietly, ReleaseVips); `Bridge` and
`QuietHold` carry it out with nftables tables named after the VRID.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

log = logging.getLogger("vipd.vrrp")

# An nft call that takes longer is killed and counts as failed: a wedged nft must not hold a
# hand-over (or a stop) hostage.
NFT_TIMEOUT = 2.0

_warned = False


def _names(addresses) -> str:
    return ", ".join(sorted(str(a) for a in addresses))


async def _nft(script: str) -> str | None:
    """Run `nft -f -` (found on PATH) with `script`: None once it succeeded, otherwise why not."""
    global _warned
    nft = shutil.which("nft")
    if nft is None:
        if not _warned:
            log.warning("nft not found: planned failovers cannot carry connections in flight (install nftables)")
            _warned = True
        return "nft not found"
    try:
        proc = await asyncio.create_subprocess_exec(
            nft, "-f", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except OSError as exc:
        return f"cannot run {nft}: {exc.strerror or exc}"
    try:
        _, err = await asyncio.wait_for(proc.communicate(script.encode()), NFT_TIMEOUT)
    except asyncio.TimeoutError:
        return f"nft did not finish within {NFT_TIMEOUT:g}s and was killed"
    finally:
        if proc.returncode is None:
            # Its own session: whatever it started goes with it.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines() if err else []
        return f"nft: {lines[0] if lines else f'exit status {proc.returncode}'}"
    return None


def bridge_table(vrid: int) -> str:
    return f"vipd_bridge_{vrid}"


def quiet_table(vrid: int) -> str:
    return f"vipd_quiet_{vrid}"


def _ports(ports) -> str:
    return ", ".join(str(p) for p in sorted(ports))


def bridge_script(predecessor: str, vips, plan: BridgePlan, interface: str, vrid: int) -> str:
    table = bridge_table(vrid)
    # After conntrack (-200), before the nat frontends' DNAT (-100).
    mid_flow = "tcp flags & (syn | rst) == 0"
    back = f"dup to {predecessor} device \"{interface}\" drop"
    rules = []
    if plan.ports:
        rules.append(f"ip daddr {{ {_names(vips)} }} tcp dport {{ {_ports(plan.ports)} }} {mid_flow} socket wildcard 1 {back}")
    if plan.nat_ports:
        rules.append(f"ip daddr {{ {_names(vips)} }} tcp dport {{ {_ports(plan.nat_ports)} }} {mid_flow} ct state new {back}")
    body = "".join(f"    {r}\n" for r in rules)
    return (f"table ip {table} {{}}\ndelete table ip {table}\n"
            f"table ip {table} {{\n"
            f"  chain prerouting {{ type filter hook prerouting priority -150; policy accept;\n"
            f"{body}  }}\n}}\n")


async def bridge_to(predecessor: str, vips, plan: BridgePlan, interface: str, vrid: int) -> bool:
    """On the new master: hand mid-flow segments for the VIPs' frontend ports to `predecessor`."""
    script = bridge_script(predecessor, vips, plan, interface, vrid)
    why = await _nft(script)
    if why is None:
        log.info("vrrp vrid %d: bridging connections in flight to %s while it drains", vrid, predecessor)
    else:
        log.warning("vrrp vrid %d: no bridge to %s (%s): connections in flight to it are not carried",
                    vrid, predecessor, why)
    return why is None


async def quiet(vips, vrid: int) -> str | None:
    """On the old master: keep the VIPs but neither answer nor send ARP for them. None once the
    rules are in place, otherwise why not."""
    table = quiet_table(vrid)
    names = _names(vips)
    script = (
        f"table arp {table} {{}}\ndelete table arp {table}\n"
        f"table arp {table} {{\n"
        f"  chain input {{ type filter hook input priority 0; policy accept; "
        f"arp operation request arp daddr ip {{ {names} }} drop; }}\n"
        f"  chain output {{ type filter hook output priority 0; policy accept; "
        f"arp saddr ip {{ {names} }} drop; }}\n}}\n")
    return await _nft(script)


async def remove(family: str, table: str) -> None:
    if shutil.which("nft") is not None:
        why = await _nft(f"table {family} {table} {{}}\ndelete table {family} {table}\n")
        if why is not None:
            log.warning("cannot remove nftables table %s %s: %s", family, table, why)


async def quiet_hold_left(vrid: int) -> bool:
    """Whether a run that died left the ARP silence of a quiet hold: it had resigned already."""
    if shutil.which("nft") is None:
        return False
    proc = await asyncio.create_subprocess_exec(
        "nft", "list", "table", "arp", quiet_table(vrid), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    return await proc.wait() == 0


async def clear_leftovers(vrid: int) -> None:
    """Remove the tables a run killed mid-hand-over left: a stale ARP silence would hide the VIPs
    the next time this node is master."""
    await remove("arp", quiet_table(vrid))
    await remove("ip", bridge_table(vrid))


@dataclass(frozen=True)
class BridgePlan:
    """What a new master bridges back to its predecessor: the proxy's listen ports and the nat
    frontends' ports, for as long as the predecessor may drain (the longest drain_timeout, plus a
    second)."""
    ports: tuple[int, ...] = ()
    seconds: float = 0.0
    nat_ports: tuple[int, ...] = ()

    @property
    def carries(self) -> bool:
        return bool(self.ports or self.nat_ports)

    def where(self, ipv4: bool) -> BridgePlan:
        """This plan for VIPs of one family: nothing to bridge (and no time to hold the VIPs
        quietly) unless IPv4, whose bridge relies on ARP silence, and some port is carried."""
        return self if ipv4 and self.carries else BridgePlan()


class Bridge:
    """On the new master: the bridge back to its predecessor, up for `seconds` (the predecessor's
    drain) or until this node gives the VIPs up. No ports: nothing to bridge."""

    def __init__(self, vrid: int, interface: str, plan: BridgePlan = BridgePlan()) -> None:
        self.vrid = vrid
        self.interface = interface
        self.plan = plan
        self._task: asyncio.Task | None = None
        self._ending: asyncio.Task | None = None

    def prepare(self, predecessor: str, vips: Sequence) -> None:
        # Harmless if another backup wins: no VIP here, no segment matches.
        if not self.plan.carries or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.ensure_future(self._run(predecessor, list(vips)))

    async def _run(self, predecessor: str, vips: list) -> None:
        try:
            plan = self.plan
            if await bridge_to(predecessor, vips, plan, self.interface, self.vrid):
                await asyncio.sleep(plan.seconds)
        finally:
            await remove("ip", bridge_table(self.vrid))

    def end_soon(self) -> None:
        """Take the bridge down; its own cleanup removes the table."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            self._ending = task

    async def end(self) -> None:
        """Take the bridge down and wait until its table is gone."""
        self.end_soon()
        task, self._ending = self._ending, None
        if task is not None:
            try:
                await task
            except asyncio.CancelledError:
                pass


class QuietHold:
    """On the old master: the VIPs it keeps, silent on ARP, while its proxy drains. Their kernel
    lifetime is renewed every `period` by `renew` while held (from the daemon's loop: a daemon
    that dies meanwhile still loses them)."""

    def __init__(self, vrid: int, label: str) -> None:
        self.vrid = vrid
        self.label = label
        self.vips: list = []
        self._quiet: asyncio.Future | None = None
        self._renewal: asyncio.TimerHandle | None = None

    def hold(self, vips: Sequence, remove_addresses: Callable[[list], Awaitable], period: float = 0.0,
             renew: Callable[[list], object] | None = None) -> None:
        """Keep `vips` silent on ARP, renewing their kernel lifetime every `period` with `renew`; if
        the rules that silence them cannot be installed, a VIP kept would answer ARP and pull clients
        back: they go at once instead (`remove_addresses`)."""
        self.vips = list(vips)
        self._quiet = asyncio.ensure_future(self._silence(remove_addresses))
        self.stop_refreshing()
        if renew is not None and period > 0 and self.vips:
            self._schedule_renewal(period, renew)

    async def _silence(self, remove_addresses: Callable[[list], Awaitable]) -> None:
        why = await quiet([v.ip for v in self.vips], self.vrid)
        if why is None or not self.vips:
            return
        log.warning("%s: cannot silence ARP for the VIPs handed over (%s): releasing them now instead of "
                    "holding them for connections in flight", self.label, why)
        self.stop_refreshing()
        vips, self.vips = self.vips, []
        try:
            await asyncio.wait_for(remove_addresses(vips), 10)
        except Exception as exc:
            log.error("%s: releasing VIPs: %s", self.label, exc)

    def _schedule_renewal(self, period: float, renew: Callable[[list], object]) -> None:
        def fire() -> None:
            renew(self.vips)
            self._schedule_renewal(period, renew)
        self._renewal = asyncio.get_running_loop().call_later(period, fire)

    def stop_refreshing(self) -> None:
        """Called before the VIPs' removal is queued, so no renewal follows (and re-adds) them."""
        if self._renewal is not None:
            self._renewal.cancel()
            self._renewal = None

    async def release(self, remove_addresses: Callable[[list], Awaitable]) -> None:
        """Drop the VIPs first, then the ARP silence: never answer ARP for a VIP being released."""
        self.stop_refreshing()
        if self._quiet is not None:
            await self._quiet
        try:
            await asyncio.wait_for(remove_addresses(self.vips), 10)
        except Exception as exc:
            log.error("%s: releasing VIPs: %s", self.label, exc)
        self.vips = []
        await remove("arp", quiet_table(self.vrid))
