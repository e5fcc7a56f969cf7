"""Planned failovers of edge 0 to edge 1: what a client opening new connections saw, and connections
opened through the master before a failover (planned, or a fault the master resigns for) and used
only after the client follows the new master: what each one answered."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from typing import Callable

from vipd.lab.connclient import Attempt
from vipd.lab.edges import VIP, EdgeLab, wait_for

HELD_CONNECTIONS = r"""
import socket, sys, json
held = []
for _ in range(int(sys.argv[1])):
    s = socket.create_connection(("198.18.0.100", 6443), timeout=5)
    held.append(s)
print("ready", flush=True)
sys.stdin.readline()
results = []
for s in held:
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        results.append(data.split(b"\r\n")[0].decode() + " " + data.rsplit(b"\n", 2)[-2].decode())
    except OSError as exc:
        results.append(f"error {exc.strerror or exc}")
print(json.dumps(results), flush=True)
"""


def planned_failover_under_load(edges: EdgeLab, interval: float, timeout: float,
                                settle: float) -> tuple[list[Attempt], float]:
    """A new connection every `interval` from the client while edge 0, the master, gets SIGTERM
    (`settle` seconds after the client started, and counted as long after): edge 1 must become
    master and edge 0 exit with status 0. The attempts, and when the SIGTERM was sent."""
    client = edges.start_client(interval=interval, duration=30, timeout=timeout)
    time.sleep(settle)
    sent = time.monotonic()
    edges.procs[0].send_signal(signal.SIGTERM)
    assert wait_for(lambda: edges.state(1) == "MASTER", 10), edges.log(1)
    assert edges.procs[0].wait(30) == 0, edges.log(0)
    time.sleep(settle)
    return edges.finish_client(client), sent


def use_held_connections_after_a_planned_failover(edges: EdgeLab, count: int) -> list[str]:
    """Open `count` connections through edge 0, SIGTERM it, wait until edge 1 is master and the
    client's neighbour entry for the VIP points at it, then send one request on each."""
    return use_held_connections_after(edges, count, lambda: edges.procs[0].send_signal(signal.SIGTERM))


def use_held_connections_after(edges: EdgeLab, count: int, fail_over: Callable[[], object]) -> list[str]:
    """Open `count` connections through edge 0, `fail_over`, wait until edge 1 is master and the
    client's neighbour entry for the VIP points at it, then send one request on each."""
    client = edges.client.popen([sys.executable, "-c", HELD_CONNECTIONS, str(count)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "ready"
        new_mac = edges.edges[1].run(["cat", "/sys/class/net/eth0/address"]).stdout.strip()
        fail_over()
        assert wait_for(lambda: edges.state(1) == "MASTER", 10), edges.log(1)
        neighbour = lambda: edges.client.run(["ip", "neigh", "show", VIP, "dev", "eth0"]).stdout
        assert wait_for(lambda: new_mac in neighbour(), 5), "the client did not follow the new master"
        client.stdin.write("go\n")
        client.stdin.flush()
        results = json.loads(client.stdout.readline())
        client.wait(10)
        return results
    finally:
        edges.lab.stop(client, signal.SIGKILL, timeout=5)
