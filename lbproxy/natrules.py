"""The nat frontends' nftables ruleset, rendered from the config and the backends' health: a pure
function, so that what the kernel is told is decided (and tested) here, and lbproxy.natpath only
hands the text to `nft -f` (one file = one transaction: the kernel switches atomically).

vipd's own table, `inet vipd_nat`, nothing else. Per frontend: prerouting (and output, for clients
on the edge itself) sends the frontend's packets to its chain, whose single rule picks a backend
chain from a verdict map (`numgen inc` round robin, `numgen random`, or `jhash` of the source
address), each weight expanded into that many slots; the backend chain counts the connection (a
nat chain sees only a flow's first packet) and DNATs it. Postrouting masquerades those flows so
replies come back through the edge; conntrack carries every later packet, so a backend taken out
of the map (drain, down) keeps its established flows. With no backend in the map, nothing is
translated and the input chain answers the SYN with a TCP reset (counted as refused).
"""
from __future__ import annotations

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from typing import Sequence

from lbproxy.balance import tier_of
from lbproxy.config import Balance, FrontendConfig

FAMILY = "inet"
TABLE = "vipd_nat"
WHERE = f"{FAMILY} {TABLE}"
# Base chains: (name, type, hook, priority). Output: connections opened on the edge itself.
BASE_CHAINS = (("prerouting", "nat", "prerouting", "dstnat"), ("output", "nat", "output", "-100"),
               ("postrouting", "nat", "postrouting", "srcnat"), ("input", "filter", "input", "filter"))


@dataclass(frozen=True)
class Target:
    """A configured backend as the map sees it now."""
    address: str          # "HOST:PORT" as configured: the key of status and overrides
    host: str
    port: int
    weight: int
    state: str            # BackendState
    backup: bool = False


@dataclass(frozen=True)
class Ruleset:
    text: str
    objects: frozenset[str]       # the per-frontend chains and counters it declares


def object_name(kind: str, *parts: str) -> str:
    """A stable nft identifier for a frontend ("f") or backend ("b"): the same name, hence the same
    counter, across reloads and on every edge."""
    return f"{kind}_{hashlib.sha1('|'.join(parts).encode()).hexdigest()[:12]}"


def in_map(targets: Sequence[Target]) -> list[Target]:
    """Who gets new connections: the lowest tier present (lbproxy.balance.Tier, as in proxy mode:
    up primaries, else up backups, else the down ones, so that a wrong health view does not
    become an outage). Drained backends and weight 0 never."""
    tiers = [(tier_of(t.state, t.backup), t) for t in targets if t.weight > 0]
    present = [tier for tier, _ in tiers if tier is not None]
    return [t for tier, t in tiers if present and tier == min(present)]


def slot_order(weights: Sequence[int]) -> list[int]:
    """Indexes into `weights`, each as often as its weight (divided by their common divisor),
    spread out as nginx's smooth weighted round robin does: 5,1,1 -> 0 0 1 0 2 0 0, not 0 0 0 0 0 1 2."""
    divisor = math.gcd(*weights)
    reduced = [w // divisor for w in weights]
    current = [0] * len(reduced)
    total = sum(reduced)
    order = []
    for _ in range(total):
        for i, w in enumerate(reduced):
            current[i] += w
        best = max(range(len(reduced)), key=lambda i: current[i])
        current[best] -= total
        order.append(best)
    return order


def _version(frontend: FrontendConfig) -> int:
    return ipaddress.ip_address(frontend.listen_host).version


def _selector(frontend: FrontendConfig, slots: int) -> str:
    if frontend.balance == Balance.SOURCE_HASH:
        # A seed from the name: every edge maps a client to the same backend, also after failover.
        seed = int(hashlib.sha1(frontend.name.encode()).hexdigest()[:8], 16)
        return f"jhash {'ip' if _version(frontend) == 4 else 'ip6'} saddr mod {slots} seed {seed:#x}"
    kind = "inc" if frontend.balance == Balance.ROUND_ROBIN else "random"
    return f"numgen {kind} mod {slots}"


def _match(frontend: FrontendConfig) -> str:
    """The frontend's packets: to its address and port, or, listening on 0.0.0.0 / [::], to the
    port on any address of this host (so traffic routed through the edge is left alone)."""
    ip = ipaddress.ip_address(frontend.listen_host)
    proto = "ip" if ip.version == 4 else "ip6"
    if ip.is_unspecified:
        return f"meta nfproto ipv{ip.version} tcp dport {frontend.listen_port} fib daddr type local"
    return f"{proto} daddr {ip} tcp dport {frontend.listen_port}"


def _host(ip: str) -> str:
    return f"[{ip}]" if ipaddress.ip_address(ip).version == 6 else ip


def _frontend_rules(frontend: FrontendConfig, targets: Sequence[Target], accepting: bool) -> tuple[list[str], set[str]]:
    fe = object_name("f", frontend.name)
    refused = object_name("r", frontend.name)
    proto = "ip" if _version(frontend) == 4 else "ip6"
    lines = [f"add chain {WHERE} {fe}", f"add counter {WHERE} {refused}"]
    names = {fe, refused}
    chains = {}
    for t in targets:
        chain = object_name("b", frontend.name, t.address)
        chains[t.address] = chain
        names.add(chain)
        lines += [f"add chain {WHERE} {chain}", f"add counter {WHERE} {chain}",
                  f'add rule {WHERE} {chain} meta l4proto tcp counter name "{chain}" '
                  f"dnat {proto} to {_host(t.host)}:{t.port}"]
    chosen = in_map(targets) if accepting else []
    if len(chosen) == 1:
        lines.append(f"add rule {WHERE} {fe} goto {chains[chosen[0].address]}")
    elif chosen:
        order = slot_order([t.weight for t in chosen])
        elements = ", ".join(f"{slot} : goto {chains[chosen[i].address]}" for slot, i in enumerate(order))
        lines.append(f"add rule {WHERE} {fe} {_selector(frontend, len(order))} vmap {{ {elements} }}")
    match = _match(frontend)
    backends = ", ".join(f"{t.host} . {t.port}" for t in targets)
    original = "" if ipaddress.ip_address(frontend.listen_host).is_unspecified else \
        f" ct original {proto} daddr {frontend.listen_host}"
    lines += [f"add rule {WHERE} prerouting {match} goto {fe}",
              f"add rule {WHERE} output {match} goto {fe}",
              f"add rule {WHERE} postrouting meta nfproto ipv{_version(frontend)} ct status dnat"
              f"{original} meta l4proto tcp ct original proto-dst {frontend.listen_port} "
              f"{proto} daddr . tcp dport {{ {backends} }} masquerade",
              # Only reached when nothing translated the SYN: no backend in the map.
              f'add rule {WHERE} input {match} ct status != dnat counter name "{refused}" reject with tcp reset']
    return lines, names


def render(frontends: Sequence[tuple[FrontendConfig, Sequence[Target]]], accepting: bool = True,
           previous: Ruleset | None = None) -> Ruleset:
    """The whole table as one transaction. Without `previous` (start) any table left by an earlier
    run is replaced; with it the table is flushed and refilled in place, so that the counters
    survive, and the chains and counters only `previous` had are deleted."""
    lines = [f"add table {WHERE}"]
    lines += [f"delete table {WHERE}", f"add table {WHERE}"] if previous is None else [f"flush table {WHERE}"]
    for name, kind, hook, priority in BASE_CHAINS:
        lines.append(f"add chain {WHERE} {name} {{ type {kind} hook {hook} priority {priority}; policy accept; }}")
    names: set[str] = set()
    for frontend, targets in frontends:
        rules, declared = _frontend_rules(frontend, targets, accepting)
        lines += rules
        names |= declared
    for gone in sorted(previous.objects - names) if previous else ():
        kind = "counter" if gone.startswith("r_") else "chain"
        lines.append(f"delete {kind} {WHERE} {gone}")
        if gone.startswith("b_"):
            lines.append(f"delete counter {WHERE} {gone}")
    return Ruleset("\n".join(lines) + "\n", frozenset(names))


def render_removal() -> str:
    """vipd's table gone (stop); established flows keep their translation in conntrack."""
    return f"add table {WHERE}\ndelete table {WHERE}\n"
