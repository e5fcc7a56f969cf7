"""`vipd demo`: a real failover on a throw-away namespace lab, reported as a client saw it."""
from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from vipd.lab import connclient, edges, timeline
from vipd.lab.netns import Lab, unavailable_reason


def _say(t0: float, text: str) -> None:
    print(f"[{time.monotonic() - t0:6.2f}s] {text}", flush=True)


def _describe(summary: dict) -> str:
    text = (f"{summary['requests']} requests, {summary['failed']} failed, {summary['slow']} slower than 0.5 s, "
            f"longest gap between replies {summary['longest_gap'] * 1000:.0f} ms")
    if summary["errors"]:
        text += f" (errors: {', '.join(summary['errors'])})"
    return text


def run_demo(verbose: bool = False, plot: str | None = None) -> int:
    reason = unavailable_reason()
    if reason:
        print(f"vipd demo: {reason}; run it as root on Linux with iproute2", file=sys.stderr)
        return 1
    if plot is not None:
        reason = timeline.matplotlib_missing() or (
            None if Path(plot).resolve().parent.is_dir() else f"--plot: no directory {Path(plot).parent}")
        if reason:
            print(f"vipd demo: {reason}", file=sys.stderr)
            return 2
    if shutil.which("nft") is None:
        print("vipd demo: note: nftables is not installed (not needed for the demo)", file=sys.stderr)

    def interrupted(signum, frame):
        raise KeyboardInterrupt
    previous = signal.signal(signal.SIGTERM, interrupted)
    workdir = Path(tempfile.mkdtemp(prefix="vipd-demo-"))
    lab = Lab()
    t0 = time.monotonic()
    try:
        print("vipd demo: 2 edges running vipd (VRRP adverts every 0.1 s + proxy), 3 HTTP backends, "
              "1 client opening a new connection to the VIP every 10 ms\n")
        edge = edges.build(lab, workdir, advert_interval=0.1, preempt=False)
        _say(t0, f"lab up: VIP {edges.VIP}:{edges.PORT}, backends {', '.join(b.ipv4 for b in edge.backends)}")
        edge.start_edge(0)
        if not edges.wait_for(lambda: edge.holders() == [0] and edge.state(0) == "MASTER", 20):
            return _fail(edge, "edge-1 did not become master")
        _say(t0, "edge-1 (priority 150) is MASTER and holds the VIP")
        edge.start_edge(1)
        if not edges.wait_for(lambda: edge.state(1) == "BACKUP", 20):
            return _fail(edge, "edge-2 did not come up as backup")
        _say(t0, "edge-2 (priority 100) is BACKUP")
        running = lambda i: i in edge.procs and edge.procs[i].poll() is None
        with timeline.HolderSampler(edge, running) as holders:
            client = edge.start_client(interval=0.01, duration=45)
            time.sleep(3)
            t_kill = time.monotonic()
            _say(t0, "kill -9 vipd on edge-1 (unplanned failure of the master)")
            edge.stop_edge(0, signal.SIGKILL)
            if not edges.wait_for(lambda: edge.state(1) == "MASTER", 10):
                return _fail(edge, "edge-2 did not take over")
            _say(t0, f"edge-2 is MASTER ({time.monotonic() - t_kill:.2f} s after the kill)")
            time.sleep(2)
            t_restart = time.monotonic()
            _say(t0, "restart vipd on edge-1: it rejoins as BACKUP (preempt = false, no second flap)")
            edge.start_edge(0)
            if not edges.wait_for(lambda: edge.state(0) == "BACKUP", 20):
                return _fail(edge, "edge-1 did not rejoin as backup")
            time.sleep(2)
            t_term = time.monotonic()
            _say(t0, "systemctl stop on edge-2 (SIGTERM): resign, hand the VIP over, drain")
            stopper = threading.Thread(target=edge.stop_edge, args=(1, signal.SIGTERM, 30))
            stopper.start()
            if not edges.wait_for(lambda: edge.state(0) == "MASTER", 10):
                return _fail(edge, "edge-1 did not take over after the graceful stop")
            _say(t0, f"edge-1 is MASTER ({time.monotonic() - t_term:.2f} s after SIGTERM)")
            stopper.join(35)
            _say(t0, "edge-2 has drained and exited")
            time.sleep(2)
            t_end = time.monotonic()
            attempts = edge.finish_client(client)
        _say(t0, "edge-2 restarted to show both nodes' status")
        edge.start_edge(1)
        edges.wait_for(lambda: edge.state(1) == "BACKUP", 20)

        print("\nWho held the VIP:")
        for at, holder in holders.changes:
            print(f"  {at - t0:6.2f}s  {holder}")
        print("\nWhat the client saw:")
        phases = [
            ("steady, before the kill", None, t_kill),
            ("kill -9 of the master", t_kill, t_restart),
            ("edge-1 rejoins", t_restart, t_term),
            ("graceful stop of the master", t_term, t_end),
        ]
        for name, since, until in phases:
            print(f"  {name:30s} {_describe(connclient.summarize(attempts, since, until))}")
        total = connclient.summarize(attempts)
        print(f"  {'whole run':30s} {_describe(total)}")
        if plot is not None:
            timeline.save([
                timeline.Panel("kill -9 of the master (edge-1)", attempts, holders.changes, t_kill,
                               "kill -9", t_kill - 1.0, t_restart),
                timeline.Panel("graceful stop of the master (edge-2: SIGTERM)", attempts, holders.changes,
                               t_term, "SIGTERM", t_term - 1.0, t_end),
            ], plot, title="vipd demo: a new connection to the VIP every 10 ms, through two failovers")
            print(f"\ntimeline drawn: {plot}")
        for i in (0, 1):
            print(f"\n$ lbctl status    # on edge-{i + 1}")
            print(edge.lbctl(i, "status").stdout.rstrip())
        if verbose:
            for i in (0, 1):
                print(f"\n--- vipd log, edge-{i + 1} ---\n{edge.log(i)}")
        return 0
    except KeyboardInterrupt:
        print("\nvipd demo: interrupted, tearing the lab down", file=sys.stderr)
        return 130
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous)
        print(f"\nlab torn down (network namespaces {lab.prefix}-*)", file=sys.stderr)


def _fail(edge: edges.EdgeLab, what: str) -> int:
    print(f"vipd demo: {what}; daemon logs follow", file=sys.stderr)
    for i in range(len(edge.edges)):
        print(f"--- edge-{i + 1} ---\n{edge.log(i)[-3000:]}", file=sys.stderr)
    return 1
