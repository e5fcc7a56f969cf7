"""The election rows of bench/failover.py (`--election`): failover of an `[[election]]` VIP (etcd
leases) as a client and the kernel see it, on a namespace lab
(vipd.lab.etcdlab): a 3-member etcd, candidates c1 (priority 200) and c2 (100), each serving the VIP
through its own frontend, and a client opening a new TCP connection to the VIP every 10 ms.

Per run, c1 holds the VIP, then the fault on c1:

  kill       kill -9 of c1's vipd (its VIP goes by its kernel lifetime)
  partition  c1 cut off from every etcd member (nft drop in its namespace)
  freeze     SIGSTOP of c1's vipd (its VIP goes by its kernel lifetime), SIGCONT after the takeover
  term       planned stop, SIGTERM: hand-over to c2 (successor first, connections in flight bridged)

"VIP on c2" is from the fault to the kernel adding the VIP on c2; "dual holder" the time both
namespaces had it configured (`ip -ts monitor address`; for `term` that is the planned, ARP-silent
hold of the old holder, not a split brain). Client columns cover 0.5 s before the fault until
1.5 s after the takeover. Each cell is the median of --rounds.
"""
from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import _common

from vipd.lab import connclient, etcdlab

SCENARIOS = ("kill", "partition", "freeze", "term")
SETTLE = 1.5


def run_once(c: etcdlab.ElectionLab, scenario: str) -> dict:
    if "c1" not in c.vipd or c.vipd["c1"].poll() is not None:
        c.start("c1", 200)
    if not etcdlab.wait(lambda: c.leads("c1") and c.election("c2").get("holder") == "c1", 30):
        raise RuntimeError("c1 did not take the VIP")
    out = c.workdir / "client.json"
    client = etcdlab.start_client(c, out, interval=0.01, duration=120)
    try:
        time.sleep(1.0)
        fault_wall, fault = time.time(), time.monotonic()
        if scenario == "kill":
            c.lab.stop(c.vipd["c1"], signal.SIGKILL)
        elif scenario == "partition":
            c.cut_from_etcd("c1", True)
        elif scenario == "freeze":
            c.vipd["c1"].send_signal(signal.SIGSTOP)
        else:
            c.vipd["c1"].send_signal(signal.SIGTERM)
        took = etcdlab.wait(lambda: "c2" in c.holders(), 3 * c.ttl + 10)
        end = time.monotonic() + SETTLE
        time.sleep(SETTLE)
        if scenario == "term":
            c.lab.stop(c.vipd["c1"], signal.SIGTERM, timeout=20)
    finally:
        c.lab.stop(client, signal.SIGTERM, timeout=10)
        if scenario == "partition":
            c.cut_from_etcd("c1", False)
        elif scenario == "freeze":
            c.vipd["c1"].send_signal(signal.SIGCONT)
    added = c.added_at("c2", fault_wall)
    attempts = connclient.load(str(out))
    during = connclient.summarize(attempts, fault - 0.5, end)
    return {"took": None if not took or added is None else added - fault_wall,
            "c1_vip_gone": None if c.removed_at("c1", fault_wall) is None else c.removed_at("c1", fault_wall) - fault_wall,
            "dual": c.overlap(fault_wall, time.time()),
            **{k: during[k] for k in ("failed", "slow", "requests", "longest_gap", "errors")}}


def run(rounds: int, ttl: int, scenarios: list[str], keep: bool = False, json_path: str | None = None) -> str:
    """Every scenario `rounds` times; the markdown table of medians."""
    runs: dict[str, list[dict]] = {}
    with _common.lab_session("vipd-bench-election-", keep) as (lab, workdir):
        c = etcdlab.ElectionLab(lab, workdir / "lab", ttl=ttl)
        try:
            etcdlab.start_cluster(c)
            c.start("c2", 100)
            for scenario in scenarios:
                for n in range(rounds):
                    result = run_once(c, scenario)
                    runs.setdefault(scenario, []).append(result)
                    print(f"election {scenario:9s} round {n + 1}: VIP on c2 {_common.fmt(result['took'], ' s')}, "
                          f"dual {result['dual']:.3f} s, failed {result['failed']}, slow {result['slow']}"
                          + (f" ({', '.join(result['errors'])})" if result["errors"] else ""), flush=True)
        finally:
            etcdlab.stop_all(c)
    if json_path:
        Path(json_path).write_text(json.dumps(runs, indent=1))
    rows = [[s, _common.fmt(_common.median([r["took"] for r in cell]), " s"),
             _common.fmt(_common.median([r["c1_vip_gone"] for r in cell]), " s"),
             _common.fmt(max(r["dual"] for r in cell), " s", 3),
             _common.fmt(_common.median([r["longest_gap"] for r in cell]), " s"),
             _common.fmt(_common.median([r["failed"] for r in cell]), "", 0),
             _common.fmt(_common.median([r["slow"] for r in cell]), "", 0), f"{len(cell)}"]
            for s, cell in runs.items()]
    return (f"lease_ttl {ttl} s; median of {rounds} run(s) per row; client: new TCP connection to the VIP every "
            "10 ms\n\n" + _common.markdown_table(["fault", "VIP on c2", "c1's VIP gone", "dual holder (worst run)",
                                                  "longest gap", "failed", "slow >0.5 s", "runs"], rows))
