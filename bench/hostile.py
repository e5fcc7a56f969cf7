"""What an attacker on the segment can do: flood rate against advert jitter and spurious takeovers,
vipd beside keepalived in the same run.

Two edges (150/100, VRRPv3 multicast, --interval adverts) run `vipd run` or keepalived + nginx; a
client opens a new connection to the VIP every 20 ms; a forger host (vipd.lab.forger, raw frames)
attacks for --duration seconds per row:
- `forged TTL 64`: well-formed adverts sent from off-link, spoofed as the other edge (priority 255
  unicast to the master, priority 0 and a 40.95 s interval to the backup, both to the group);
- `flood N pps`: 255-address adverts for a VRID neither runs, bad-checksum adverts for theirs from
  spoofed sources, and one loud sender, all TTL 255 to 224.0.0.18, N frames a second in total.
Each row starts a fresh pair. tcpdump in the backup's namespace timestamps the master's adverts
(BPF filter on the master's MAC, so the flood does not reach tcpdump); the table shows their
intervals (p50, p99, worst) against the master-down interval, the VIP taken by the backup
(`ip monitor address`) and the client's failed connections.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import _common
from _common import Cluster, edges

MASTER, BACKUP, FORGER = "198.18.0.11", "198.18.0.12", "198.18.0.66"
BACKUP_PRIORITY = 100


def attacks(rates: tuple[float, ...], master_mac: str, backup_mac: str) -> list[tuple[str, float, list[str]]]:
    forged = [
        f"src={BACKUP},dst={MASTER},dst_mac={master_mac},ttl=64,priority=255",
        f"src={MASTER},dst={BACKUP},dst_mac={backup_mac},ttl=64,priority=0",
        f"src={MASTER},dst={BACKUP},dst_mac={backup_mac},ttl=64,priority=255,interval=4095",
        f"src={BACKUP},dst=224.0.0.18,ttl=64,priority=255",
        f"src={MASTER},dst=224.0.0.18,ttl=64,priority=0",
    ]
    flood = [
        "src=random,dst=224.0.0.18,vrid=200,count=255",
        "src=random,dst=224.0.0.18,vrid=51,checksum=bad",
        f"src={FORGER},dst=224.0.0.18,vrid=51,count=255,checksum=bad",
    ]
    return [("none", 0.0, []), ("forged TTL 64", 300.0, forged)] + [(f"flood {r:g} pps", r, flood) for r in rates]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run_attack(cluster: Cluster, forger, watch: _common.AddressWatch, kinds: list[str], rate: float,
               seconds: float, master_mac: str) -> dict:
    e = cluster.edge_lab
    backup = cluster.hosts[1]
    # The master's own frames only: the forger spoofs its IP address, not its MAC.
    tap = backup.popen(["timeout", str(seconds + 3), "tcpdump", "--immediate-mode", "-i", backup.ifname, "-n",
                        "-tt", "-l", "-p", f"ether src {master_mac} and ip proto 112 and dst host 224.0.0.18"],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    client = e.start_client(interval=0.02, duration=seconds + 5, timeout=2)
    time.sleep(1.0)
    t0_mono, t0 = time.monotonic(), time.time()
    sent = {"sent": 0, "rate": 0.0}
    if kinds:
        proc = forger.python(["-m", "vipd.lab.forger", "--interface", forger.ifname, "--rate", str(rate),
                              "--duration", str(seconds), *(a for k in kinds for a in ("--kind", k))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate(timeout=seconds + 30)
        if proc.returncode != 0:
            raise RuntimeError(f"forger failed: {err.strip()}")
        sent = json.loads(out.strip().splitlines()[-1])
    else:
        time.sleep(seconds)
    t1 = time.time()
    attempts = e.finish_client(client)
    out, _ = tap.communicate(timeout=seconds + 10)
    stamps = [float(line.split()[0]) for line in out.splitlines() if line[:1].isdigit()]
    during = [t for t in stamps if t0 <= t <= t1]
    gaps = [b - a for a, b in zip(during, during[1:])]
    tail = [a for a in attempts if a.start >= t0_mono]
    return {
        "sent_rate": sent["rate"], "adverts": len(during), "p50": percentile(gaps, 50),
        "p99": percentile(gaps, 99), "worst": max(gaps, default=None),
        "vip_taken": sum(1 for t, added in watch.events if added and t >= t0_mono),
        "client": f"{sum(not a.ok for a in tail)}/{len(tail)}",
    }


def settle(cluster: Cluster, timeout: float = 15.0) -> None:
    """The starting point of a row: edge-1 master with the VIP, edge-2 backup."""
    ok = edges.wait_for(lambda: cluster.edge_lab.holders() == [0] and cluster.state(1) == "BACKUP", timeout)
    if not ok:
        raise RuntimeError(f"{cluster.impl}: did not settle back to edge-1 master\n{cluster.logs()}")


def main() -> int:
    parser = _common.bench_parser(__doc__)
    parser.add_argument("--impl", default="vipd,keepalived", help="vipd,keepalived (default: both)")
    parser.add_argument("--rates", default="1000,5000,20000", help="flood rates, frames/s (default 1000,5000,20000)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per attack (default 10)")
    parser.add_argument("--interval", type=float, default=0.1, help="VRRP advert interval (default 0.1)")
    args = parser.parse_args()
    impls = _common.parse_list(args.impl, _common.IMPLEMENTATIONS, "impl")
    rates = _common.parse_floats(args.rates, "rates")
    if not (0 < args.duration <= 600 and 0 < args.interval <= 10):
        raise SystemExit("--duration must be in (0, 600], --interval in (0, 10]")
    reason = _common.missing(impls, extra=("tcpdump",))
    if reason:
        print(f"hostile bench: {reason}", file=sys.stderr)
        return 2

    rows: list[tuple[str, str, float, dict]] = []
    with _common.lab_session("vipd-bench-hostile-", args.keep) as (lab, workdir):
        edge_lab = edges.build(lab, workdir / "lab", advert_interval=args.interval, preempt=True)
        forger = lab.add_host("forger", [f"{FORGER}/24"])
        macs = [h.run(["cat", f"/sys/class/net/{h.ifname}/address"]).stdout.strip() for h in edge_lab.edges]
        for impl in impls:
            for name, rate, kinds in attacks(rates, *macs):
                # A fresh pair for every row: what one attack did must not carry over to the next.
                cluster = Cluster(edge_lab, impl, workers=1)
                watch = None
                try:
                    cluster.reset()
                    cluster.configure(args.interval)
                    cluster.bring_up(timeout=10 * args.interval + 15)
                    settle(cluster)
                    watch = _common.AddressWatch(cluster.hosts[1], edges.VIP)
                    rows.append((impl, name, rate, run_attack(cluster, forger, watch, kinds, rate, args.duration,
                                                              macs[0])))
                    print(f"{impl}: {name} done: {rows[-1][3]}", flush=True)
                finally:
                    if watch is not None:
                        watch.close()
                    cluster.reset()

    limit = 3 * args.interval + (256 - BACKUP_PRIORITY) * args.interval / 256
    header = ["edges run", "attack", "frames/s sent", "master adverts seen", "interval p50", "p99", "worst",
              "VIP taken by backup", "client failed/total"]
    table = [[impl, name, _common.fmt(r["sent_rate"], "", 0), str(r["adverts"]), _common.fmt(r["p50"], " s", 3),
              _common.fmt(r["p99"], " s", 3), _common.fmt(r["worst"], " s", 3), str(r["vip_taken"]), r["client"]]
             for impl, name, _, r in rows]
    print()
    print(f"VRRP advert interval {args.interval:g} s (backup's master-down interval {limit:.3f} s), "
          f"{args.duration:g} s per attack, backup priority {BACKUP_PRIORITY}\n")
    print(_common.markdown_table(header, table))
    spurious = [f"{impl} ({name})" for impl, name, _, r in rows if r["vip_taken"]]
    print(f"\nspurious takeovers: {', '.join(spurious) if spurious else 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
