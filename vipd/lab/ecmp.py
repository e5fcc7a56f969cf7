"""Established flows across a change of the anycast lab's edge set (vipd.lab.anycast): the two ways
its Linux router can spread the VIP, and the long-lived flows of vipd.lab.flowclient counted by
the edge they were on.

  Routing.PLAIN      zebra's BGP route: a hash-threshold nexthop group, kept by zebra
  Routing.RESILIENT  config/frr/router/resilient-nexthops.sh: a static route over a resilient group,
                     rerun with the edges that announce (zebra's BGP RIB) after each change

Used by bench/ecmp.py and tests/netns/test_anycast_resilient_netns.py.
"""
from __future__ import annotations

import enum
import json
import signal
import subprocess
from dataclasses import dataclass

from vipd.lab import flowclient
from vipd.lab.anycast import SNIPPETS, VIP, AnycastLab
from vipd.lab.edges import wait_for

SCRIPT = SNIPPETS / "router" / "resilient-nexthops.sh"
GROUP_ID = 1000          # the script's group


class Routing(enum.Enum):
    PLAIN = "plain ECMP (zebra, hash-threshold)"
    RESILIENT = "resilient group (resilient-nexthops.sh)"


def bgp_paths(lab: AnycastLab) -> list[str]:
    """The edges zebra's BGP route for the VIP goes to (installed in the FIB or not)."""
    shown = lab.frr[0].vtysh(f"show ip route {VIP}/32 json")
    try:
        entries = json.loads(shown).get(f"{VIP}/32", [])
    except json.JSONDecodeError:
        return []
    return sorted(hop["ip"] for entry in entries if entry.get("protocol") == "bgp"
                  for hop in entry.get("nexthops", []) if "ip" in hop)


def wait_bgp_paths(lab: AnycastLab, count: int, timeout: float) -> list[str]:
    if not wait_for(lambda: len(bgp_paths(lab)) == count, timeout, step=0.01):
        raise RuntimeError(f"zebra's BGP route for the VIP has {bgp_paths(lab)}, not {count} paths")
    return bgp_paths(lab)


def fib_route(lab: AnycastLab) -> tuple[str, list[str]]:
    """The FIB's route for the VIP: its protocol and its nexthops in the kernel's order (the order
    hash-threshold splits the hash space in)."""
    shown = lab.router.run(["ip", "route", "show", f"{VIP}/32"], check=False).stdout.split()
    proto = shown[shown.index("proto") + 1] if "proto" in shown else ""
    return proto, [shown[i + 1] for i, word in enumerate(shown) if word == "via"]


def script_command(edges: list[str]) -> list[str]:
    return ["sh", str(SCRIPT), "eth0", VIP, *edges]


def route_resiliently(lab: AnycastLab, edges: list[str]) -> None:
    """The shipped script on the router, with `edges`; the FIB then uses its group alone (zebra
    takes its BGP route out of the FIB a moment later)."""
    lab.router.run(script_command(edges))
    if not wait_for(lambda: fib_route(lab) == ("static", edges), 5, step=0.01):
        raise RuntimeError(f"the FIB does not use the resilient group: {fib_route(lab)}")


def route_plainly(lab: AnycastLab) -> None:
    """Back to zebra's BGP route. The static route goes first: the kernel tells zebra nothing of a
    route it removes with its nexthop group, so zebra would keep its BGP route out of the FIB."""
    lab.router.run(["ip", "route", "del", f"{VIP}/32", "proto", "static"])
    lab.router.run(["ip", "nexthop", "del", "id", str(GROUP_ID)])
    if not wait_for(lambda: fib_route(lab)[0] == "bgp", 10):
        raise RuntimeError(f"zebra did not put its BGP route back: {fib_route(lab)}")


def follow(lab: AnycastLab, routing: Routing, count: int, timeout: float = 40) -> list[str]:
    """After an edge started or stopped announcing: zebra's BGP route has `count` paths, and with
    RESILIENT the script has been rerun with them (what the router's automation would do)."""
    edges = wait_bgp_paths(lab, count, timeout)
    if routing is Routing.RESILIENT:
        route_resiliently(lab, edges)
    return edges


def buckets(lab: AnycastLab) -> dict[str, int]:
    """The resilient group's buckets per edge."""
    shown = lab.router.run(["ip", "-j", "nexthop", "bucket", "list", "id", str(GROUP_ID)], check=False).stdout
    gateways = {str(nh["id"]): nh.get("gateway") for nh in json.loads(
        lab.router.run(["ip", "-j", "nexthop"], check=False).stdout or "[]")}
    counted: dict[str, int] = {}
    for bucket in json.loads(shown or "[]"):
        edge = gateways.get(str(bucket["bucket"]["nhid"]), "?")
        counted[edge] = counted.get(edge, 0) + 1
    return counted


class Flows:
    """vipd.lab.flowclient in the lab's client, started and waited for until all flows are open."""

    def __init__(self, lab: AnycastLab, count: int, interval: float, stall: float, name: str = "flows") -> None:
        self.lab = lab
        self.out = lab.workdir / f"{name}.json"
        self.out.unlink(missing_ok=True)
        self.proc = lab.client.python(["-m", "vipd.lab.flowclient", "--target", lab.target, "--flows", str(count),
                                       "--interval", str(interval), "--stall", str(stall), "--out", str(self.out)],
                                      stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        if line[:1] != ["ready"]:
            lab.lab.stop(self.proc, signal.SIGKILL)
            raise RuntimeError(f"the flow client did not open its flows (exit {self.proc.poll()})")
        self.open = int(line[1])

    def finish(self) -> list[flowclient.Flow]:
        self.lab.lab.stop(self.proc, signal.SIGTERM, timeout=15)
        return flowclient.load(str(self.out))


@dataclass
class Broken:
    """Flows open at a change, by whose they were, and how many of each broke after it."""
    own: int = 0
    own_broken: int = 0
    others: int = 0
    others_broken: int = 0
    broken_before: int = 0         # broke before the change: not the change's doing (should be 0)

    @classmethod
    def count(cls, flows: list[flowclient.Flow], moved_edge: str, at: float) -> "Broken":
        result = cls()
        for flow in flows:
            if flow.edge is None:
                continue
            if flow.broke_at is not None and flow.broke_at < at:
                result.broken_before += 1
                continue
            broke = flow.broke_at is not None
            if flow.edge == moved_edge:
                result.own += 1
                result.own_broken += broke
            else:
                result.others += 1
                result.others_broken += broke
        return result

    def __add__(self, other: "Broken") -> "Broken":
        return Broken(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))
