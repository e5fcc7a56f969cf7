"""One client cycling its ports through an edge: connection setup latency when the client's
ephemeral ports come round within TIME_WAIT (conntrack's 120 s, the sockets' 60 s).

Lab: `client` ns (ip_local_port_range narrowed to --ports, e.g. 1000 ports) -> `edge` ns ->
`be1..be3` ns (nginx). The client opens connections one after another (connect, one HTTP
request, the response, close) for --seconds or --count, timing each connect(). Targets:

  direct       the client to be1, no edge
  nft          a bare nftables DNAT (numgen inc over the three) + masquerade: the kernel reference
  nat-rr       lbproxy nat mode, balance round_robin
  nat-sh       lbproxy nat mode, balance source_hash
  proxy        lbproxy proxy mode (one worker)

Each target has its own backend port, so the backends' TIME_WAIT sockets of one target do not
meet another's; conntrack is flushed in the edge before every cell (the cell then measures what a
client alone sees). --close picks who closes first: `server` (the request says Connection: close:
the backend closes, the backend holds TIME_WAIT) or `client` (keep-alive request, the client
closes after the response: the client holds TIME_WAIT; its connect() then needs tcp_tw_reuse).

Run from the repository root as root: `python bench/natreuse.py [--seconds 8] [--close server,client]`.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import bench_parser, lab_session, markdown_table, missing  # noqa: E402
from vipd.lab.netns import Host  # noqa: E402

EDGE = "198.18.0.10"
BACKENDS = ["198.18.0.21", "198.18.0.22", "198.18.0.23"]
# target -> (edge port or None for direct, backend port)
TARGETS = {"direct": (None, 18080), "nft": (8081, 18081), "nat-rr": (8082, 18082),
           "nat-sh": (8083, 18083), "proxy": (8084, 18084)}
STALL = 0.9          # a connect this slow waited for at least one SYN retransmit (1 s)
REPO = Path(__file__).resolve().parents[1]


def nginx_conf(workdir: Path, name: str, host: str) -> str:
    listens = "\n".join(f"    listen {host}:{port} reuseport backlog=4096;" for port in sorted({p for _, p in TARGETS.values()}))
    return f"""daemon off;
worker_processes 1;
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  server {{
{listens}
    location / {{ return 200 "{name}\\n"; }}
  }}
}}
"""


def bare_nft(masquerade: str = "masquerade") -> str:
    edge_port, port = TARGETS["nft"]
    slots = ", ".join(f"{i} : {b}" for i, b in enumerate(BACKENDS))
    backends = ", ".join(BACKENDS)
    return f"""add table ip bench_reuse
delete table ip bench_reuse
table ip bench_reuse {{
  chain pre {{ type nat hook prerouting priority dstnat; policy accept;
    ip daddr {EDGE} tcp dport {edge_port} dnat to numgen inc mod 3 map {{ {slots} }} : {port}
  }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    ip daddr {{ {backends} }} tcp dport {port} {masquerade}
  }}
}}
"""


def lbproxy_conf(workdir: Path) -> str:
    out = [f'[node]\nname = "natreuse"\ncontrol_socket = "{workdir}/lbproxy.sock"\nworkers = 1\n'
           f'log_level = "warning"\nstate_dir = "{workdir}/state"\n']
    for name, balance, mode in (("nat-rr", "round_robin", "nat"), ("nat-sh", "source_hash", "nat"),
                                ("proxy", "round_robin", "proxy")):
        edge_port, port = TARGETS[name]
        out.append(f'[[frontend]]\nname = "{name}"\nlisten = "{EDGE}:{edge_port}"\nmode = "{mode}"\n'
                   f'balance = "{balance}"\n  [frontend.health]\n  type = "tcp"\n  interval = 2.0\n')
        out += [f'  [[frontend.backend]]\n  address = "{b}:{port}"\n' for b in BACKENDS]
    return "\n".join(out)


def complete(response: bytes) -> bool:
    head, sep, body = response.partition(b"\r\n\r\n")
    length = [int(line.split(b":")[1]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(sep) and bool(length) and len(body) >= length[0]


# --- the client (runs in the client namespace: `natreuse.py --client HOST PORT ...`)

def client(host: str, port: int, seconds: float, count: int, close: str) -> dict:
    request = (b"GET / HTTP/1.1\r\nHost: x\r\n" + (b"Connection: close\r\n" if close == "server" else b"")
               + b"\r\n")
    setups, errors, ports = [], {}, set()
    deadline = time.monotonic() + seconds
    while len(setups) + sum(errors.values()) < count and time.monotonic() < deadline:
        s = socket.socket()
        s.settimeout(10)
        started = time.monotonic()
        try:
            s.connect((host, port))
            setups.append(time.monotonic() - started)
            ports.add(s.getsockname()[1])
            s.sendall(request)
            data = b""
            while True:
                chunk = s.recv(4096)
                data += chunk
                if not chunk or (close == "client" and complete(data)):
                    break
        except OSError as exc:
            key = exc.__class__.__name__ if exc.errno is None else os.strerror(exc.errno)
            errors[key] = errors.get(key, 0) + 1
            if exc.errno == 99:      # EADDRNOTAVAIL: every port in TIME_WAIT; do not spin
                time.sleep(0.01)
        finally:
            s.close()
    return {"setups": setups, "errors": errors, "ports": len(ports), "seconds": seconds}


# --- the lab

def stats(result: dict) -> dict:
    s = sorted(result["setups"])
    n = len(s)

    def pct(p: float) -> float:
        return s[min(n - 1, int(p * n))] if n else float("nan")
    return {"n": n, "rate": n / result["seconds"], "p50": pct(0.5), "p99": pct(0.99), "max": s[-1] if n else 0,
            "stalls": sum(1 for x in s if x > STALL), "errors": result["errors"], "ports": result["ports"]}


def edge_counters(edge: Host) -> dict:
    """conntrack's own statistics summed over CPUs (insert_failed, drop, clash_resolve...)."""
    totals: dict[str, int] = {}
    for line in edge.run(["conntrack", "-S"], check=False).stdout.splitlines():
        for field in line.split()[1:]:
            key, _, value = field.partition("=")
            if value.isdigit():
                totals[key] = totals.get(key, 0) + int(value)
    return totals


BACKEND_COUNTERS = ("TcpExtPAWSTimewait", "TcpExtTCPACKSkippedTimeWait")
CLIENT_COUNTERS = ("TcpExtTCPSynRetrans", "TcpOutRsts")


def snmp(hosts: list[Host], names: tuple[str, ...]) -> dict[str, int]:
    """The namespaces' TCP counters (nstat, absolute), summed."""
    totals = dict.fromkeys(names, 0)
    for host in hosts:
        for line in host.run(["nstat", "-asz", *names], check=False).stdout.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] in totals and fields[1].isdigit():
                totals[fields[0]] += int(fields[1])
    return totals


def remapped(edge: Host) -> int:
    """conntrack entries whose masquerade could not keep the client's source port."""
    count = 0
    for line in edge.run(["conntrack", "-L", "-p", "tcp"], check=False).stdout.splitlines():
        sports = [f[6:] for f in line.split() if f.startswith("sport=")]
        dports = [f[6:] for f in line.split() if f.startswith("dport=")]
        if len(sports) >= 2 and len(dports) >= 2 and sports[0] != dports[1]:
            count += 1
    return count


def tw_sockets(host: Host) -> int:
    return len(host.run(["ss", "-Htan", "state", "time-wait"], check=False).stdout.splitlines())


def run_cell(clients: list[Host], edge: Host, backends: list[Host], target: str, close: str,
             seconds: float, count: int, flush: bool = True) -> dict:
    """Every client at once, each on its own address with the same narrow port range."""
    edge_port, port = TARGETS[target]
    host, dport = (BACKENDS[0], port) if edge_port is None else (EDGE, edge_port)
    if flush:
        edge.run(["conntrack", "-F"], check=False)
    before = edge_counters(edge)
    snmp_before = snmp(backends, BACKEND_COUNTERS) | snmp(clients, CLIENT_COUNTERS)
    procs = [c.popen([sys.executable, str(Path(__file__).resolve()), "--client", host, str(dport),
                      str(seconds), str(count), close], stdout=subprocess.PIPE) for c in clients]
    results = [json.loads(p.communicate(timeout=seconds + 60)[0]) for p in procs]
    after = edge_counters(edge)
    snmp_after = snmp(backends, BACKEND_COUNTERS) | snmp(clients, CLIENT_COUNTERS)
    merged = {"setups": [x for r in results for x in r["setups"]], "errors": {},
              "ports": sum(r["ports"] for r in results), "seconds": seconds}
    for r in results:
        for k, v in r["errors"].items():
            merged["errors"][k] = merged["errors"].get(k, 0) + v
    row = stats(merged)
    row["ct"] = {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}
    row["snmp"] = {k: snmp_after[k] - snmp_before[k] for k in snmp_after}
    row["remapped"] = remapped(edge)
    row["tw_client"] = sum(tw_sockets(c) for c in clients)
    row["tw_backends"] = sum(tw_sockets(b) for b in backends)
    return row


def main() -> int:
    parser = bench_parser(__doc__)
    parser.add_argument("--client", nargs=5, metavar=("HOST", "PORT", "SECONDS", "COUNT", "CLOSE"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per cell")
    parser.add_argument("--count", type=int, default=20000, help="connections per cell at most")
    parser.add_argument("--clients", type=int, default=1, help="client namespaces running at once")
    parser.add_argument("--shared-backend-port", action="store_true",
                        help="every edge target on the same backend port (as bench/proxy.py has it)")
    parser.add_argument("--nft-masquerade", default="masquerade",
                        help='the bare nft target\'s statement, e.g. "masquerade fully-random"')
    parser.add_argument("--no-flush", action="store_true", help="keep the edge's conntrack between cells")
    parser.add_argument("--ports", default="40000 40999", help="the client's ip_local_port_range")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--close", default="server", help="server,client: who closes first")
    parser.add_argument("--tw-reuse", default="2", help="the client's net.ipv4.tcp_tw_reuse values, e.g. 2,1")
    parser.add_argument("--edge-sysctl", action="append", default=[],
                        help="KEY=VALUE set in the edge namespace (e.g. net.netfilter.nf_conntrack_tcp_be_liberal=1)")
    args = parser.parse_args()
    if args.client:
        host, port, seconds, count, close = args.client
        print(json.dumps(client(host, int(port), float(seconds), int(count), close)))
        return 0
    reason = missing(impls=(), extra=("nginx", "nft", "conntrack"))
    if reason:
        print(f"bench/natreuse.py: {reason}", file=sys.stderr)
        return 2
    targets = [t for t in args.targets.split(",") if t]
    if args.shared_backend_port:
        for name, (edge_port, _) in TARGETS.items():
            if edge_port is not None:
                TARGETS[name] = (edge_port, TARGETS["nft"][1])
    rows = []
    procs: list[tuple[Host, subprocess.Popen]] = []
    with lab_session("natreuse-", args.keep) as (lab, workdir):
        workdir.chmod(0o755)
        clients = [lab.add_host(f"client{i}", [f"198.18.0.{2 + i}/24"]) for i in range(args.clients)]
        for c in clients:
            c.sysctl("net.ipv4.ip_local_port_range", args.ports.replace("-", " "))
        edge = lab.add_host("edge", [f"{EDGE}/24"])
        edge.sysctl("net.ipv4.ip_forward", 1)
        for setting in args.edge_sysctl:
            key, _, value = setting.partition("=")
            edge.sysctl(key, value)
        backends = []
        try:
            for i, address in enumerate(BACKENDS, 1):
                be = lab.add_host(f"be{i}", [f"{address}/24"])
                backends.append(be)
                (workdir / f"be{i}.conf").write_text(nginx_conf(workdir, f"be{i}", address))
                procs.append((be, be.popen(["nginx", "-p", str(workdir), "-c", str(workdir / f"be{i}.conf")],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            edge.run(["nft", "-f", "-"], input=bare_nft(args.nft_masquerade))
            (workdir / "lbproxy.toml").write_text(lbproxy_conf(workdir))
            log = open(workdir / "lbproxy.out", "ab")
            procs.append((edge, edge.popen([sys.executable, "-m", "vipd.proxycli", "run", "-c",
                                            str(workdir / "lbproxy.toml")], stdout=log,
                                           stderr=subprocess.STDOUT, cwd=str(REPO))))
            log.close()
            time.sleep(4)       # nginx up, lbproxy's table in place and its first health checks passed
            if "vipd_nat" not in edge.run(["nft", "list", "tables"]).stdout:
                print((workdir / "lbproxy.out").read_text(), file=sys.stderr)
                return 1
            for close in args.close.split(","):
                for reuse in args.tw_reuse.split(","):
                    for c in clients:
                        c.sysctl("net.ipv4.tcp_tw_reuse", reuse)
                    for target in targets:
                        row = run_cell(clients, edge, backends, target, close, args.seconds, args.count,
                                       not args.no_flush)
                        row.update(target=target, close=close, tw_reuse=reuse)
                        rows.append(row)
                        print(json.dumps(row), file=sys.stderr)
        finally:
            for host, proc in reversed(procs):
                lab.stop(proc)
            edge.run(["nft", "delete", "table", "ip", "bench_reuse"], check=False)
    header = ["closes first", "tw_reuse", "target", "connects", "conn/s", "p50", "p99", "max",
              f"> {STALL:g} s", "errors", "client SynRetrans / OutRsts", "backend PAWSTimewait",
              "port remapped", "conntrack -S (edge)"]
    table = [[r["close"], r["tw_reuse"], r["target"], r["n"], f"{r['rate']:.0f}", f"{r['p50'] * 1e3:.2f} ms",
              f"{r['p99'] * 1e3:.2f} ms", f"{r['max'] * 1e3:.0f} ms", r["stalls"],
              ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "0",
              f"{r['snmp']['TcpExtTCPSynRetrans']} / {r['snmp']['TcpOutRsts']}", r["snmp"]["TcpExtPAWSTimewait"],
              r["remapped"],
              ", ".join(f"{k} {v}" for k, v in sorted(r["ct"].items()) if k not in ("found", "searched"))]
             for r in rows]
    print(f"\n{args.clients} client(s) at once, each ip_local_port_range {args.ports}, {args.seconds:g} s per cell, conntrack flushed "
          f"before each cell; edge sysctls: {', '.join(args.edge_sysctl) or 'defaults'}\n")
    print(markdown_table(header, table))
    return 0


if __name__ == "__main__":
    sys.exit(main())
