"""Established flows when the anycast edge set changes (README: the known limit), on the anycast lab
(vipd.lab.anycast: a Linux router with FRR, three edges with FRR and `vipd run`, a client).

The client keeps --flows long-lived TCP connections to the VIP, each sending an HTTP request every
--interval through an edge's vipd proxy (vipd.lab.flowclient); a flow breaks when it is reset or
an answer takes over --stall. Per round, starting from three edges announcing:

  remove  edge-3's vipd gets SIGTERM (withdraws, drains, exits)
  add     edge-3's vipd starts again and announces

with fresh flows opened before each, counted --settle s after the router's change. Both under
the router's two routings (vipd.lab.ecmp): zebra's plain ECMP route (hash-threshold), and the
resilient nexthop group of config/frr/router/resilient-nexthops.sh (created afresh with the three
edges at the start of each round, so edge-3 holds a third of its buckets), rerun with the edges
zebra's BGP route has after each change. A resilient group hands an added edge only the buckets
idle for its idle_timer (60 s): the last column says how many edge-3 got.

Run from the repository root as root: `python bench/ecmp.py` (about 2 minutes).
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path

import _common

from vipd.lab import anycast as anycastlab
from vipd.lab import ecmp
from vipd.lab.ecmp import Broken, Flows, Routing

MOVED = 2          # edge-3
EVENTS = ("remove", "add")


def one_change(lab: anycastlab.AnycastLab, routing: Routing, event: str, args) -> tuple[Broken, int | None]:
    """Fresh flows, the change, the flows counted; and, with RESILIENT, edge-3's buckets after it."""
    flows = Flows(lab, args.flows, args.interval, args.stall, name=f"{routing.name}-{event}")
    try:
        time.sleep(1.0)
        before = ecmp.fib_route(lab)[1]
        at = time.monotonic()
        if event == "add":
            lab.start_edge(MOVED)
            edges = ecmp.follow(lab, routing, 3)
        else:
            lab.procs[MOVED].send_signal(signal.SIGTERM)
            edges = ecmp.follow(lab, routing, 2)
        changed = time.monotonic()
        time.sleep(args.settle)
        note = f"FIB order before: {', '.join(before)}"
        held = None
        if routing is Routing.RESILIENT:
            held = ecmp.buckets(lab).get(lab.edges[MOVED].ipv4, 0)
            note += f"; buckets after: {ecmp.buckets(lab)}"
    finally:
        result = flows.finish()
    broken = Broken.count(result, f"edge-{MOVED + 1}", at)
    late = sum(1 for f in result if f.broke_at is not None and f.broke_at > changed + args.settle)
    print(f"  {routing.name.lower():9s} {event:6s}: {flows.open} open, own {broken.own_broken}/{broken.own}, "
          f"others {broken.others_broken}/{broken.others}, before {broken.broken_before}, "
          f"router changed after {changed - at:.2f} s, edges {edges}; {note}"
          + (f"; {late} broke after the settle time" if late else ""), flush=True)
    if event == "remove" and lab.procs[MOVED].wait(30) != 0:
        raise RuntimeError(f"edge-3's vipd exited {lab.procs[MOVED].returncode}")
    return broken, held


def run(args) -> tuple[dict[tuple[Routing, str], Broken], list[int]]:
    """Flows broken per routing and change (summed over the rounds); edge-3's buckets after each add."""
    totals: dict[tuple[Routing, str], Broken] = {}
    added_buckets: list[int] = []
    with _common.lab_session("vipd-bench-ecmp-", args.keep) as (lab, workdir):
        built = anycastlab.build(lab, workdir / "anycast")
        try:
            for i in range(3):
                built.start_edge(i)
            ecmp.wait_bgp_paths(built, 3, 40)
            for routing in Routing:
                for n in range(args.rounds):
                    print(f"{routing.value}, round {n + 1}", flush=True)
                    if routing is Routing.RESILIENT:
                        if n:
                            ecmp.route_plainly(built)
                        ecmp.route_resiliently(built, ecmp.bgp_paths(built))
                    for event in EVENTS:
                        broken, held = one_change(built, routing, event, args)
                        totals[(routing, event)] = totals.get((routing, event), Broken()) + broken
                        if event == "add" and held is not None:
                            added_buckets.append(held)
        finally:
            built.close()
    return totals, added_buckets


def share(broken: int, total: int) -> str:
    return f"{broken}/{total} ({100 * broken / total:.0f}%)" if total else "0/0"


def table(totals: dict[tuple[Routing, str], Broken], added_buckets: list[int], rounds: int) -> str:
    labels = {"add": "edge-3 added (vipd started)", "remove": "edge-3 removed (vipd SIGTERM)"}
    gets = {Routing.PLAIN: "1/3 of the hash at once",
            Routing.RESILIENT: f"{', '.join(map(str, added_buckets))} of 128 buckets"}
    rows = [[routing.value, labels[event], share(b.own_broken, b.own) if event == "remove" else "-",
             share(b.others_broken, b.others), str(b.broken_before), gets[routing] if event == "add" else "-",
             str(rounds)]
            for (routing, event), b in totals.items()]
    return _common.markdown_table(["router", "change", "edge-3's own flows broken", "other edges' flows broken",
                                   "broken before the change", "edge-3 gets", "runs"], rows)


def main() -> int:
    parser = _common.bench_parser(__doc__)
    parser.add_argument("--flows", type=int, default=300, help="long-lived flows per change (default 300)")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a flow's requests (0.1)")
    parser.add_argument("--stall", type=float, default=1.5, help="an answer later than this breaks the flow (1.5)")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds counted after the router's change (3)")
    parser.add_argument("--rounds", type=int, default=2, help="add+remove rounds per routing (default 2)")
    args = parser.parse_args()
    if not (1 <= args.rounds <= 10 and 1 <= args.flows <= 2000 and args.settle > args.stall):
        raise SystemExit("expected --rounds 1..10, --flows 1..2000 and --settle > --stall")
    reason = _common.missing(("vipd",)) or anycastlab.unavailable_reason()
    if reason:
        print(f"ecmp bench: {reason}", file=sys.stderr)
        return 2
    print(f"python bench/ecmp.py --flows {args.flows} --interval {args.interval} --stall {args.stall} "
          f"--settle {args.settle} --rounds {args.rounds}", flush=True)
    totals, added_buckets = run(args)
    print(f"\n{args.flows} flows (a request every {args.interval:g} s each, broken = reset or no answer in "
          f"{args.stall:g} s) opened before each change, counted {args.settle:g} s after the router's change; "
          f"resilient: `sh {ecmp.SCRIPT.relative_to(Path(__file__).resolve().parents[1])} eth0 {anycastlab.VIP} EDGE...` rerun with zebra's BGP paths; "
          f"sums of {args.rounds} round(s)\n")
    print(table(totals, added_buckets, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
