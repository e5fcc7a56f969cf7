"""Carry open connections across a planned VIP move (IPv4, nftables).

When a master hands its VIPs over, clients follow the new master's gratuitous ARP at once, but a
connection whose handshake reached the old master just before keeps sending its segments: they now
arrive at the new master, which has no socket for them and would reset it. So for a while:

- the new master bridges such segments (to a VIP frontend port, no SYN or RST, matching only a
  wildcard listener: no local connection of its own) back to the old master at layer 2;
- the old master keeps the VIPs, silent on ARP so it never pulls clients back, until its proxy
  has drained; then it releases them.
"""
from __future__ import annotations

import asyncio
import logging
import shutil

log = logging.getLogger("vipd.vrrp")

_warned = False


def _names(addresses) -> str:
    return ", ".join(sorted(str(a) for a in addresses))


async def _nft(script: str) -> bool:
    global _warned
    if shutil.which("nft") is None:
        if not _warned:
            log.warning("nft not found: planned failovers cannot carry connections in flight (install nftables)")
            _warned = True
        return False
    proc = await asyncio.create_subprocess_exec(
        "nft", "-f", "-", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate(script.encode())
    if proc.returncode != 0:
        log.warning("nft: %s", err.decode(errors="replace").strip().splitlines()[0] if err else proc.returncode)
        return False
    return True


def bridge_table(vrid: int) -> str:
    return f"vipd_bridge_{vrid}"


def quiet_table(vrid: int) -> str:
    return f"vipd_quiet_{vrid}"


async def bridge_to(predecessor: str, vips, ports, interface: str, vrid: int) -> bool:
    """On the new master: hand mid-flow segments for the VIPs' frontend ports to `predecessor`."""
    table = bridge_table(vrid)
    script = (
        f"table ip {table} {{}}\ndelete table ip {table}\n"
        f"table ip {table} {{\n"
        f"  chain prerouting {{ type filter hook prerouting priority -150; policy accept;\n"
        f"    ip daddr {{ {_names(vips)} }} tcp dport {{ {', '.join(str(p) for p in sorted(ports))} }} "
        f"tcp flags & (syn | rst) == 0 socket wildcard 1 dup to {predecessor} device \"{interface}\" drop\n"
        f"  }}\n}}\n")
    done = await _nft(script)
    if done:
        log.info("vrrp vrid %d: bridging connections in flight to %s while it drains", vrid, predecessor)
    return done


async def quiet(vips, vrid: int) -> bool:
    """On the old master: keep the VIPs but neither answer nor send ARP for them."""
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
        await _nft(f"table {family} {table} {{}}\ndelete table {family} {table}\n")
