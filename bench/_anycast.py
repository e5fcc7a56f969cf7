"""The anycast rows of bench/failover.py (`--anycast`): a Linux router with FRR and three edges each
running FRR and `vipd run` with an `[[anycast]]` VIP (vipd.lab.anycast); a client behind the router
opens a new TCP connection to the VIP every 10 ms. Per run, the fault hits edge-3:

  kill         kill -9 of vipd (the kernel deletes its TUN device, FRR withdraws)
  term         planned stop, SIGTERM (withdraw, keep accepting 1 s, drain, exit)
  backends     edge-3's backend fails its health checks (the frontend track withdraws)
  maintenance  `lbctl maintenance on`

"router without it" is from the fault (for maintenance: from `lbctl` returning) to the router's FIB
losing edge-3's nexthop (polled); client
columns cover 0.5 s before the fault until 1.5 s after that. After each run edge-3 is restored.
"""
from __future__ import annotations

import signal
import time

import _common

from vipd.lab import anycast as anycastlab
from vipd.lab import connclient

SCENARIOS = ("kill", "term", "backends", "maintenance")
LABELS = {"kill": "kill -9 of vipd", "term": "SIGTERM (planned)", "backends": "backends down (track)",
          "maintenance": "lbctl maintenance on"}
EDGE = 2


def _fault(lab: anycastlab.AnycastLab, scenario: str) -> None:
    if scenario == "kill":
        lab.procs[EDGE].send_signal(signal.SIGKILL)
    elif scenario == "term":
        lab.procs[EDGE].send_signal(signal.SIGTERM)
    elif scenario == "backends":
        lab.set_backend_healthy(EDGE, False)
    else:
        lab.lbctl(EDGE, "maintenance", "on")


def _restore(lab: anycastlab.AnycastLab, scenario: str) -> None:
    lab.set_backend_healthy(EDGE, True)
    if scenario in ("kill", "term"):
        lab.procs[EDGE].wait(30)          # a planned stop drains first
        lab.start_edge(EDGE)
    else:
        lab.lbctl(EDGE, "maintenance", "off")
    if lab.wait_nexthops(3, 30) is None:
        raise RuntimeError(f"edge-3 did not come back: router has {lab.nexthops()}")
    time.sleep(1.0)


def run_once(lab: anycastlab.AnycastLab, scenario: str) -> dict:
    client = lab.start_client(interval=0.01, timeout=3.0)
    time.sleep(1.0)
    at = time.monotonic()
    _fault(lab, scenario)
    took = lab.wait_nexthops(2, 10)
    time.sleep(3.5)          # past the client's timeout: every attempt of the window has ended
    attempts = lab.finish_client(client)
    _restore(lab, scenario)
    end = at + (took or 10) + 1.5
    summary = connclient.summarize(attempts, since=at - 0.5, until=end)
    return {"took": took, **summary}


def run(rounds: int, keep: bool = False) -> str:
    """Every scenario `rounds` times; the markdown table of medians."""
    results: dict[str, list[dict]] = {}
    with _common.lab_session("vipd-bench-anycast-", keep) as (lab, workdir):
        built = anycastlab.build(lab, workdir / "anycast")
        try:
            for i in range(3):
                built.start_edge(i)
            if built.wait_nexthops(3, 40) is None:
                raise RuntimeError(f"no ECMP route with 3 nexthops: {built.nexthops()}")
            for scenario in SCENARIOS:
                for n in range(rounds):
                    result = run_once(built, scenario)
                    results.setdefault(scenario, []).append(result)
                    print(f"anycast {scenario:11s} round {n + 1}: router {_common.fmt(result['took'], ' s')}, "
                          f"failed {result['failed']}, slow {result['slow']}, gap {result['longest_gap']:.2f} s",
                          flush=True)
        finally:
            built.close()
    rows = [[LABELS[s], _common.fmt(_common.median([r["took"] for r in cell if r["took"] is not None]), " s", 3),
             _common.fmt(_common.median([r["longest_gap"] for r in cell]), " s"),
             _common.fmt(_common.median([r["failed"] for r in cell]), "", 0),
             _common.fmt(_common.median([r["slow"] for r in cell]), "", 0), str(len(cell))]
            for s, cell in results.items()]
    return _common.markdown_table(["fault on edge-3 of 3", "router without it", "longest gap", "failed",
                                   "slow >0.5 s", "runs"], rows)
