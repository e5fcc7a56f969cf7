"""VRRP advert timing while the master's proxy is saturated: does the backup ever take over?

Two edges run `vipd run` (VRRP adverts every --interval, proxy with --workers workers) in front of
three HTTP backends. After --idle seconds without load, wrk in the client namespace hammers the
VIP for --duration seconds. The backup's namespace captures every advert (tcpdump, kernel
timestamps); from them: the advert-to-advert intervals the backup saw from the master (median,
p99, worst) against its master-down interval (3 x advert + skew: a gap that long is a takeover).
Spurious transitions are VIP additions on the backup (`ip monitor address`) and, for vipd, the
backup's own transition counter. `--impl keepalived` runs the same with keepalived + nginx.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import _common
from _common import Cluster, edges

BACKUP_PRIORITY = 100


def master_down_interval(interval: float, priority: int = BACKUP_PRIORITY) -> float:
    """RFC 5798: 3 x Master_Adver_Interval + (256 - priority) x Master_Adver_Interval / 256."""
    return 3 * interval + (256 - priority) * interval / 256


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def wrk(cluster: Cluster, duration: float, connections: int, threads: int) -> tuple[subprocess.Popen, Path]:
    out = cluster.edge_lab.workdir / "wrk.txt"
    with open(out, "wb") as f:
        proc = cluster.edge_lab.client.popen(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "2s",
             f"http://{edges.VIP}:{edges.PORT}/"], stdout=f, stderr=subprocess.STDOUT)
    return proc, out


def backup_transitions(cluster: Cluster) -> int | None:
    if cluster.impl != "vipd":
        return None
    status = cluster.edge_lab.status(1)
    return status["vrrp"][0]["transitions"] if status and status.get("vrrp") else None


def phase(cluster: Cluster, capture: _common.AdvertTap, watch: _common.AddressWatch, seconds: float,
          load: dict | None) -> dict:
    """One measured period, idle or under wrk; the numbers for one table row."""
    transitions_before = backup_transitions(cluster)
    t0_mono, t0_wall = time.monotonic(), time.time()
    proc = out = None
    if load:
        proc, out = wrk(cluster, seconds, load["connections"], load["threads"])
    deadline = t0_mono + seconds
    states = set()
    while time.monotonic() < deadline:
        states.add(cluster.state(1))
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    if proc is not None:
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            cluster.edge_lab.lab.stop(proc, signal.SIGTERM)
    t1_wall = time.time()
    time.sleep(0.5)   # tcpdump prints the last adverts of the phase
    stamps = capture.stamps(cluster.hosts[0].ipv4, t0_wall, t1_wall)
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    report = out.read_text(errors="replace") if out is not None else ""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", report)
    transitions_after = backup_transitions(cluster)
    return {
        "adverts": len(stamps), "p50": percentile(gaps, 50), "p99": percentile(gaps, 99),
        "worst": max(gaps, default=None),
        "vip_taken": sum(1 for t, added in watch.events if added and t >= t0_mono),
        "transitions": (None if transitions_before is None or transitions_after is None
                        else transitions_after - transitions_before),
        "backup_states": sorted(s or "unreachable" for s in states),
        "requests_per_s": float(rate.group(1)) if rate else None,
        "wrk": report.strip().splitlines()[-6:] if report else [],
    }


def main() -> int:
    parser = _common.bench_parser(__doc__)
    parser.add_argument("--impl", default="vipd", help="vipd,keepalived (default: vipd)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds under wrk load (default 60)")
    parser.add_argument("--idle", type=float, default=10.0, help="seconds measured without load first (default 10)")
    parser.add_argument("--interval", type=float, default=0.1, help="VRRP advert interval (default 0.1)")
    parser.add_argument("--workers", type=int, default=2, help="proxy worker processes per edge (default 2)")
    parser.add_argument("--connections", type=int, default=256, help="wrk connections (default 256)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    args = parser.parse_args()
    impls = _common.parse_list(args.impl, _common.IMPLEMENTATIONS, "impl")
    for name in ("duration", "interval"):
        if not getattr(args, name) > 0:
            raise SystemExit(f"--{name}: must be > 0")
    if args.idle < 0 or not 1 <= args.workers <= 64 or args.connections < 1 or args.threads < 1:
        raise SystemExit("--idle must be >= 0, --workers 1..64, --connections and --threads >= 1")
    reason = _common.missing(impls, extra=("wrk", "tcpdump"))
    if reason:
        print(f"advert jitter bench: {reason}", file=sys.stderr)
        return 2

    rows: list[tuple[str, str, float, dict]] = []
    with _common.lab_session("vipd-bench-jitter-", args.keep) as (lab, workdir):
        edge_lab = edges.build(lab, workdir / "lab", advert_interval=args.interval, preempt=True)
        for impl in impls:
            cluster = Cluster(edge_lab, impl, workers=args.workers)
            capture = watch = None
            try:
                cluster.reset()
                cluster.configure(args.interval)
                cluster.bring_up(timeout=10 * args.interval + 15)
                capture = _common.AdvertTap(cluster.hosts[1])
                watch = _common.AddressWatch(cluster.hosts[1], edges.VIP)
                if args.idle:
                    rows.append((impl, "idle", args.idle, phase(cluster, capture, watch, args.idle, None)))
                    print(f"{impl}: idle done", flush=True)
                rows.append((impl, f"wrk -c{args.connections} -t{args.threads}", args.duration,
                             phase(cluster, capture, watch, args.duration,
                                   {"connections": args.connections, "threads": args.threads})))
                print(f"{impl}: load done", flush=True)
                for line in rows[-1][3]["wrk"]:
                    print(f"  {line}")
            finally:
                if watch is not None:
                    watch.close()
                if capture is not None:
                    capture.close()
                cluster.reset()

    limit = master_down_interval(args.interval)
    header = ["edges run", "load", "seconds", "adverts seen", "interval p50", "p99", "worst",
              "backup's master-down", "VIP taken by backup", "backup transitions", "backup states", "req/s"]
    table = [[impl, load, f"{seconds:g}", str(r["adverts"]), _common.fmt(r["p50"], " s", 3),
              _common.fmt(r["p99"], " s", 3), _common.fmt(r["worst"], " s", 3), f"{limit:.3f} s",
              str(r["vip_taken"]), _common.fmt(r["transitions"]), "/".join(r["backup_states"]),
              _common.fmt(r["requests_per_s"], "", 0)]
             for impl, load, seconds, r in rows]
    print()
    print(f"VRRP advert interval {args.interval:g} s, {args.workers} proxy workers per edge, "
          f"backup priority {BACKUP_PRIORITY}\n")
    print(_common.markdown_table(header, table))
    spurious = [f"{impl} ({load})" for impl, load, _, r in rows if r["vip_taken"] or r["transitions"]]
    print(f"\nspurious takeovers: {', '.join(spurious) if spurious else 'none'}")
    return 1 if spurious else 0


if __name__ == "__main__":
    sys.exit(main())
