"""Failover as a client sees it, vipd against keepalived + nginx, on a namespace lab.

Two edges (priorities 150/100) in front of three HTTP backends; a client opens a new TCP connection
to the VIP every 10 ms through the edges' proxy. Per run: edge-1 MASTER, edge-2 BACKUP, 1 s of
steady traffic, then the fault on edge-1:

  kill       kill -9 of the load-balancing software (vipd / keepalived + nginx, with children)
  term       planned stop, SIGTERM (vipd: resign, hand over, drain; keepalived: resign, nginx stays)
  link       edge-1's cable cut at the switch (carrier loss, silent drop)
  partition  VRRP dropped between the edges for --partition-seconds, then healed

By default the fault hits right after an advert from edge-1 reached edge-2 (--phase advert), so a
takeover waits the full master-down interval every time and the two daemons are compared at the
same phase; --phase random puts it anywhere in the advert interval, as a real failure would.

"VIP on backup" is from the fault to the kernel adding the VIP on edge-2 (`ip monitor address` in
its namespace); for `partition` it is from the heal until edge-2 removed it again (one master).
Client columns cover 0.5 s before the fault until 1.5 s after that event. Each cell is the median of --rounds.

--plot FILE draws the first round of each cell as a timeline (matplotlib; PNG, SVG or PDF by the
suffix): a row per fault, a column per implementation and advert interval.
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

import _common
import _election
from _common import Cluster, edges

from vipd.lab import connclient, timeline

SCENARIOS = ("kill", "term", "link", "partition")
FAULT_LABELS = {"kill": "kill -9", "term": "SIGTERM", "link": "link cut", "partition": "partition"}
# keepalived 2.2.7, measured earlier on this lab: VIP on the backup after the fault (s), by advert interval.
KEEPALIVED_REFERENCE = {
    ("kill", 1.0): 3.30, ("kill", 0.1): 0.28,
    ("link", 1.0): 3.31, ("link", 0.1): 0.27,
    ("term", 1.0): 0.62, ("term", 0.1): 0.07,
    ("partition", 1.0): 0.28, ("partition", 0.1): 0.06,
}
SETTLE = 1.5
# After a heal, a client sent to the wrong edge recovers only when something re-announces the VIP or
# its ARP entry expires; watch long enough (past the client's 3 s timeout) to see it.
SETTLE_PARTITION = 5.0
# keepalived repeats its gratuitous ARPs 5 s after becoming master (garp_master_delay); a partition
# before that burst would be repaired by it rather than by the protocol, unlike on a long-running master.
MASTER_AGE_BEFORE_PARTITION = 6.0
NOISE = 0.03          # seconds: differences below this are scheduling noise on a shared box


def run_once(cluster: Cluster, scenario: str, interval: float, partition_seconds: float, phase: str,
             plot: bool = False) -> tuple[dict, timeline.Panel | None]:
    """The run's numbers, and its timeline when `plot`."""
    e = cluster.edge_lab
    cluster.reset()
    cluster.configure(interval)
    cluster.bring_up(timeout=10 * interval + 15)
    t_master = time.monotonic()
    watch = _common.AddressWatch(e.edges[1], edges.VIP)
    tap = _common.AdvertTap(e.edges[1])
    running = lambda i: i in cluster.daemons and cluster.daemons[i].poll() is None
    holders = timeline.HolderSampler(e, running).start() if plot else None
    t_heal = None
    client = e.start_client(interval=0.01, duration=120, timeout=3)
    try:
        time.sleep(1.0)
        if scenario == "partition":
            time.sleep(max(0.0, t_master + MASTER_AGE_BEFORE_PARTITION - time.monotonic()))
        # The backup's master-down timer restarts with every advert, so where the fault falls between
        # two adverts moves the takeover by up to one interval; pin it, or draw it at random.
        heard = tap.wait_next(e.edges[0].ipv4, time.monotonic(), 3 * interval + 1)
        if phase == "random":
            time.sleep(random.uniform(0, interval))
        t_fault = time.monotonic()
        event_timeout = 10 * interval + 10
        if scenario == "kill":
            cluster.kill(0)
        elif scenario == "term":
            cluster.terminate(0)
        elif scenario == "link":
            e.edges[0].set_link(False)
        elif scenario == "partition":
            e.lab.partition(["edge1"], ["edge2"], vrrp_only=True)
        if scenario == "partition":
            split = watch.wait(True, t_fault, event_timeout)
            # Which master hears the other first after the heal decides whether the VIP is re-announced
            # (see README); a random heal phase samples both orders instead of locking onto one.
            heal_at = t_fault + partition_seconds + random.uniform(0, interval)
            time.sleep(max(0.0, heal_at - time.monotonic()))
            t_heal = time.monotonic()
            e.lab.heal()
            event = watch.wait(False, t_heal, event_timeout)
            took = None if event is None or split is None else event - t_heal
        else:
            event = watch.wait(True, t_fault, event_timeout)
            took = None if event is None else event - t_fault
        t_end = (event or time.monotonic()) + (SETTLE_PARTITION if scenario == "partition" else SETTLE)
        time.sleep(max(0.0, t_end - time.monotonic()))
    finally:
        attempts = e.finish_client(client)
        watch.close()
        tap.close()
        if holders is not None:
            holders.stop()
    steady = connclient.summarize(attempts, None, t_fault)
    # From half a second before the fault, so the longest gap spans the last reply before it.
    during = connclient.summarize(attempts, t_fault - 0.5, t_end)
    result = {"took": took, "since_advert": None if heard is None else t_fault - heard,
              "steady_failed": steady["failed"], "longest_gap": longest_gap(attempts, t_fault - 0.5, t_end),
              **{k: during[k] for k in ("failed", "slow", "requests", "errors")}}
    panel = None
    if holders is not None:
        panel = timeline.Panel(f"{cluster.impl} · {scenario} · advert {interval:g} s", attempts, holders.changes,
                               t_fault, FAULT_LABELS[scenario], max(t_fault - 1.0, attempts[0].start if attempts else 0), t_end,
                               marks=[(t_heal, "heal")] if t_heal is not None else [])
    return result, panel


def longest_gap(attempts: list[connclient.Attempt], since: float, until: float) -> float:
    """The longest time without a successful reply in [since, until]; an outage still going on at
    `until` counts up to there (connclient.summarize only sees gaps between two replies)."""
    ends = sorted(a.start + a.duration for a in attempts if a.ok and since <= a.start < until)
    if not ends:
        return until - since
    return max([b - a for a, b in zip(ends, ends[1:])] + [until - ends[-1]])


def main() -> int:
    parser = _common.bench_parser(__doc__)
    parser.add_argument("--impl", default="vipd,keepalived", help="vipd,keepalived (default: both)")
    parser.add_argument("--scenario", help=",".join(SCENARIOS) + " (default: all)")
    parser.add_argument("--interval", default="1,0.1", help="advert intervals in seconds (default: 1,0.1)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per cell; the median is reported (default 3)")
    parser.add_argument("--partition-seconds", type=float, default=5.0)
    parser.add_argument("--phase", choices=("advert", "random"), default="advert",
                        help="when the fault hits: right after an advert reached the backup (default; "
                             "the full master-down interval, same for every run) or at a random point "
                             "of the advert interval")
    parser.add_argument("--json", metavar="FILE", help="also write every run's numbers to FILE")
    parser.add_argument("--plot", metavar="FILE", help="also draw each cell's first run as a timeline "
                        "(what the client saw, who held the VIP, the fault) to FILE (needs matplotlib)")
    parser.add_argument("--anycast", action="store_true", help="instead: the [[anycast]] rows with real FRR "
                        "(router + 3 edges; see bench/_anycast.py); uses --rounds")
    parser.add_argument("--election", action="store_true", help="instead: the [[election]] rows with a real "
                        "3-member etcd (see bench/_election.py); uses --rounds, --ttl, --json, --scenario "
                        f"({','.join(_election.SCENARIOS)})")
    parser.add_argument("--ttl", type=int, default=3, help="--election: lease_ttl in seconds (default 3)")
    args = parser.parse_args()
    if args.election:
        reason = _common.missing((), extra=("etcd", "etcdctl", "nft"))
        if reason:
            print(f"failover bench: {reason}", file=sys.stderr)
            return 2
        scenarios = _common.parse_list(args.scenario or ",".join(_election.SCENARIOS), _election.SCENARIOS, "scenario")
        print(_election.run(args.rounds, args.ttl, scenarios, args.keep, args.json))
        return 0
    if args.anycast:
        import _anycast
        reason = _common.missing(("vipd",)) or _anycast.anycastlab.unavailable_reason()
        if reason:
            print(f"failover bench: {reason}", file=sys.stderr)
            return 2
        print(_anycast.run(args.rounds, args.keep))
        return 0
    impls = _common.parse_list(args.impl, _common.IMPLEMENTATIONS, "impl")
    scenarios = _common.parse_list(args.scenario or ",".join(SCENARIOS), SCENARIOS, "scenario")
    intervals = _common.parse_floats(args.interval, "interval")
    if not 1 <= args.rounds <= 50:
        raise SystemExit("--rounds: expected 1..50")
    reason = _common.missing(impls, extra=("tcpdump",)) or (timeline.matplotlib_missing() if args.plot else None)
    if reason:
        print(f"failover bench: {reason}", file=sys.stderr)
        return 2

    runs: dict[tuple, list[dict]] = {}
    panels: dict[tuple, timeline.Panel] = {}
    with _common.lab_session("vipd-bench-failover-", args.keep) as (lab, workdir):
        edge_lab = edges.build(lab, workdir / "lab", advert_interval=intervals[0], preempt=True)
        for impl in impls:
            cluster = Cluster(edge_lab, impl)
            try:
                for scenario in scenarios:
                    for interval in intervals:
                        for n in range(args.rounds):
                            result, panel = run_once(cluster, scenario, interval, args.partition_seconds,
                                                     args.phase, plot=bool(args.plot) and n == 0)
                            runs.setdefault((scenario, interval, impl), []).append(result)
                            if panel is not None:
                                panels[(scenario, interval, impl)] = panel
                            print(f"{impl:10s} {scenario:9s} advert {interval:g}s round {n + 1}: "
                                  f"VIP {_common.fmt(result['took'], ' s')}, gap {result['longest_gap']:.2f} s, "
                                  f"failed {result['failed']}, slow {result['slow']}"
                                  + (f" ({', '.join(result['errors'])})" if result["errors"] else ""), flush=True)
            finally:
                cluster.reset()
    if args.json:
        Path(args.json).write_text(json.dumps([{"scenario": s, "interval": i, "impl": m, "runs": r}
                                               for (s, i, m), r in runs.items()], indent=1))
    if args.plot and panels:
        # Row-major: a row per fault, a column per implementation and interval.
        order = [(s, i, m) for s in scenarios for m in impls for i in intervals]
        timeline.save([panels[k] for k in order if k in panels], args.plot, columns=len(impls) * len(intervals),
                      title=f"failover as a client saw it: a new connection to the VIP every 10 ms "
                            f"(fault phase: {args.phase})")
        print(f"timeline drawn: {args.plot}")
    print(f"\nfault phase: {args.phase}; median of {args.rounds} run(s) per row; client: new TCP "
          f"connection to the VIP every 10 ms\n")
    print(table(runs, scenarios, intervals, impls))
    for line in verdicts(runs, scenarios, intervals):
        print(line)
    return 0


def table(runs: dict, scenarios, intervals, impls) -> str:
    rows = []
    for scenario in scenarios:
        for interval in intervals:
            for impl in impls:
                cell = runs.get((scenario, interval, impl))
                if not cell:
                    continue
                ref = KEEPALIVED_REFERENCE.get((scenario, interval)) if impl == "keepalived" else None
                rows.append([scenario, f"{interval:g} s", impl,
                             _common.fmt(_common.median([r["took"] for r in cell]), " s"),
                             _common.fmt(_common.median([r["longest_gap"] for r in cell]), " s"),
                             _common.fmt(max(r["longest_gap"] for r in cell), " s"),
                             _common.fmt(_common.median([r["failed"] for r in cell]), "", 0),
                             _common.fmt(_common.median([r["slow"] for r in cell]), "", 0),
                             f"{len(cell)}", _common.fmt(ref, " s")])
    header = ["fault", "advert", "edges run", "VIP on backup (partition: one master)", "longest gap",
              "worst run's gap", "failed", "slow >0.5 s", "runs", "keepalived earlier"]
    return _common.markdown_table(header, rows)


def verdicts(runs: dict, scenarios, intervals) -> list[str]:
    """vipd against keepalived per row (medians). A difference within NOISE is a tie; where vipd is
    slower beyond it, the line says so."""
    lines = []
    for scenario in scenarios:
        for interval in intervals:
            ours, theirs = runs.get((scenario, interval, "vipd")), runs.get((scenario, interval, "keepalived"))
            if not ours or not theirs:
                continue
            for key, what in (("took", "VIP time"), ("longest_gap", "longest client gap")):
                a, b = _common.median([r[key] for r in ours]), _common.median([r[key] for r in theirs])
                if a is None or b is None:
                    lines.append(f"- {scenario} @ {interval:g} s, {what}: not measured for one side")
                elif a - b > max(NOISE, 0.1 * b):
                    lines.append(f"- {scenario} @ {interval:g} s, {what}: vipd SLOWER, {a:.2f} s vs keepalived {b:.2f} s")
                else:
                    verdict = "faster" if b - a > max(NOISE, 0.1 * a) else "same within noise"
                    lines.append(f"- {scenario} @ {interval:g} s, {what}: vipd {a:.2f} s, keepalived {b:.2f} s ({verdict})")
    return lines


if __name__ == "__main__":
    sys.exit(main())
