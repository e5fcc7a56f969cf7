"""The L4 data paths side by side in a namespace topology: client ns -> edge ns -> backend ns.

Three lab hosts on one switch (nothing touches the host's network): `client` runs wrk, `edge`
runs the proxies, `backend` runs nginx (HTTP: a small body and a 1 MiB file). Targets:

  direct       the client to the backend, no edge at all: the limit of this box
  nginx        nginx stream (the baseline), nginx-256k: with proxy_buffer_size 256k (bulk only)
  haproxy      HAProxy mode tcp, nbthread = workers
  lbproxy      vipd's user-space proxy (frontend.mode = "proxy"), the same worker count
  lbproxy-nat  vipd's kernel path (frontend.mode = "nat": nftables DNAT + masquerade, vipd's
               health checks and counters running)
  nft          a bare nftables DNAT + masquerade on the edge: what the kernel does here, for reference

Per round, targets are measured interleaved (the order rotates) on three loads:

  keep-alive   small requests on persistent connections (wrk -c64): req/s and p99 (wrk --latency)
  new conn     one connection per request (wrk -H "Connection: close"): req/s
  bulk         GET of the 1 MiB file (wrk -c4): MiB/s

Ratios to nginx are taken within each round, then the median over rounds is printed. CPU:
`proxy CPU` is the user-space proxy's process time (its process group; for lbproxy-nat vipd's own:
health checks, table updates, counter polls); the kernel paths forward in softirq, which no
process is charged for, so `box CPU` is every CPU's busy time on the box
during the cell (/proc/stat: wrk and the backend included) per request or MiB, and `edge CPU` is
box CPU minus direct's in the same round: what the edge hop costs, comparable across all targets.
conntrack is active in the edge namespace for every target (the nat targets need it).

lbproxy workers run 10 nice levels below their master (that is the product: VRRP in the master
comes first); the bench starts the master at nice -10 so that every proxy's data path runs at
nice 0 like the others.

Run from the repository root as root: `python bench/proxy.py [--rounds 3 --duration 5]`.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import NGINX_STREAM_MODULE, fmt, markdown_table, median, parse_list  # noqa: E402
from vipd.lab.netns import Host, Lab, unavailable_reason  # noqa: E402

CLIENT, EDGE, BACKEND = "198.18.0.2", "198.18.0.10", "198.18.0.21"
BACKEND_PORT = 18080
PORTS = {"direct": BACKEND_PORT, "nginx": 18081, "nginx-256k": 18082, "haproxy": 18083, "lbproxy": 18084,
         "lbproxy-nat": 18085, "nft": 18086}
KERNEL = ("lbproxy-nat", "nft")           # forwarded in softirq: nothing listens on the edge
TESTS = ("keepalive", "newconn", "bulk")
BULK_SIZE = 1 << 20
REPO = Path(__file__).resolve().parents[1]


def address(name: str) -> str:
    return f"{BACKEND if name == 'direct' else EDGE}:{PORTS[name]}"


def nginx_backend_conf(workdir: Path) -> str:
    return f"""daemon off;
worker_processes 2;
pid {workdir}/backend.pid;
error_log {workdir}/backend.log warn;
events {{ worker_connections 16384; }}
http {{
  access_log off;
  keepalive_requests 10000000;
  server {{
    listen {BACKEND}:{BACKEND_PORT} reuseport backlog=4096;
    location = / {{ return 200 "hello from the backend\\n"; }}
    location = /healthz {{ return 200 "ok\\n"; }}
    location = /1m {{ alias {workdir}/1m.bin; }}
  }}
}}
"""


def nginx_stream_conf(workdir: Path, name: str, workers: int, port: int, buffer: str | None) -> str:
    extra = f"    proxy_buffer_size {buffer};\n" if buffer else ""
    return f"""load_module {NGINX_STREAM_MODULE};
daemon off;
worker_processes {workers};
pid {workdir}/{name}.pid;
error_log {workdir}/{name}.log warn;
events {{ worker_connections 16384; }}
stream {{
  server {{
    listen {EDGE}:{port} reuseport backlog=4096;
    proxy_pass {BACKEND}:{BACKEND_PORT};
{extra}  }}
}}
"""


def haproxy_conf(workers: int) -> str:
    return f"""global
  nbthread {workers}
  maxconn 9000
defaults
  mode tcp
  timeout connect 2s
  timeout client 600s
  timeout server 600s
frontend fe
  bind {EDGE}:{PORTS["haproxy"]}
  default_backend be
backend be
  server b1 {BACKEND}:{BACKEND_PORT}
"""


def lbproxy_conf(workdir: Path, name: str, workers: int) -> str:
    nat = name == "lbproxy-nat"
    settings = 'mode = "nat"' if nat else "max_connections = 100000"
    return f"""[node]
name = "bench"
control_socket = "{workdir}/{name}.sock"
workers = {workers}
log_level = "warning"

[[frontend]]
name = "bench"
listen = "{address(name)}"
{settings}
  [frontend.health]
  type = "tcp"
  interval = 1.0
  [[frontend.backend]]
  address = "{BACKEND}:{BACKEND_PORT}"
"""


def bare_nft(port: int) -> str:
    """The reference: DNAT to the backend and masquerade, nothing else (no health, no counters)."""
    return f"""add table ip bench_nat
delete table ip bench_nat
table ip bench_nat {{
  chain pre {{ type nat hook prerouting priority dstnat; policy accept;
    ip daddr {EDGE} tcp dport {port} dnat to {BACKEND}:{BACKEND_PORT}
  }}
  chain post {{ type nat hook postrouting priority srcnat; policy accept;
    ip daddr {BACKEND} tcp dport {BACKEND_PORT} ct original proto-dst {port} masquerade
  }}
}}
"""


class Proxies:
    """Every edge of one worker count, running in the edge namespace."""

    def __init__(self, edge: Host, workdir: Path, workers: int) -> None:
        self.host = edge
        self.workdir = workdir
        self.workers = workers
        self.procs: dict[str, subprocess.Popen] = {}
        self.nft = False

    def start(self, targets: list[str]) -> None:
        w, d = self.workers, self.workdir
        for name in targets:
            if name == "direct":
                continue
            if name == "nft":
                self.host.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
                self.host.run(["nft", "-f", "-"], input=bare_nft(PORTS["nft"]))
                self.nft = True
                continue
            if name in ("nginx", "nginx-256k"):
                conf = d / f"{name}.conf"
                conf.write_text(nginx_stream_conf(d, name, w, PORTS[name], "256k" if name == "nginx-256k" else None))
                argv = ["nginx", "-p", str(d), "-e", str(d / f"{name}.log"), "-c", str(conf)]
            elif name == "haproxy":
                conf = d / "haproxy.cfg"
                conf.write_text(haproxy_conf(w))
                argv = ["haproxy", "-db", "-f", str(conf)]
            else:
                conf = d / f"{name}.toml"
                conf.write_text(lbproxy_conf(d, name, w))
                argv = ["nice", "-n", "-10", sys.executable, "-m", "vipd.proxycli", "run", "-c", str(conf)]
            log = open(d / f"{name}.out", "ab")
            self.procs[name] = self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))
            log.close()
        for name in targets:
            if name not in ("direct", *KERNEL) and not wait_listening(self.host, PORTS[name], 20):
                raise SystemExit(f"{name} did not start listening; see {d}/{name}.out")
        if "lbproxy-nat" in targets and not wait_nat(self.host, 20):
            raise SystemExit(f"lbproxy-nat did not install its table; see {d}/lbproxy-nat.out")
        if {"lbproxy", "lbproxy-nat"} & set(targets):
            time.sleep(1.5)      # the first health checks pass and reach the workers / the map

    def cpu_seconds(self, name: str) -> float:
        """CPU time used so far by the proxy's processes (its process group)."""
        proc = self.procs.get(name)
        if proc is None:
            return 0.0
        total = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == proc.pid:          # pgrp: popen starts a new session
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)      # the proxy's own process group
                except ProcessLookupError:
                    continue
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        self.procs.clear()
        if self.nft:
            self.host.run(["nft", "delete", "table", "ip", "bench_nat"], check=False)
            self.nft = False


def box_busy_seconds() -> float:
    """Busy time of every CPU of the box so far (/proc/stat: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def wait_listening(host: Host, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout.strip():
            return True
        time.sleep(0.1)
    return False


def wait_nat(host: Host, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if "vipd_nat" in host.run(["nft", "list", "tables"], check=False).stdout:
            return True
        time.sleep(0.1)
    return False


_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_SIZES = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3, "TB": 1024 ** 4}


def parse_wrk(text: str) -> dict:
    out: dict = {"errors": 0}
    if m := re.search(r"Requests/sec:\s+([\d.]+)", text):
        out["rps"] = float(m.group(1))
    if m := re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text):
        out["mbps"] = float(m.group(1)) * _SIZES.get(m.group(2), 1) / 1024 ** 2
    if m := re.search(r"^\s+99%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M):
        out["p99"] = float(m.group(1)) * _UNITS[m.group(2)]
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        out["errors"] += sum(int(g) for g in m.groups())
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["errors"] += int(m.group(1))
    if m := re.search(r"(\d+) requests in", text):
        out["requests"] = int(m.group(1))
    if m := re.search(r"requests in [\d.]+\w+, ([\d.]+)(\w+) read", text):
        out["bytes"] = float(m.group(1)) * _SIZES.get(m.group(2), 1)
    return out


def run_wrk(client: Host, test: str, name: str, duration: float, connections: int) -> dict:
    url = f"http://{address(name)}/" + ("1m" if test == "bulk" else "")
    argv = ["wrk", "-t1", f"-c{connections if test != 'bulk' else 4}", f"-d{duration:g}s", "--timeout", "5s"]
    if test == "keepalive":
        argv.append("--latency")
    if test == "newconn":
        argv += ["-H", "Connection: close"]
    done = client.run(argv + [url], check=False, timeout=duration + 60)
    return parse_wrk(done.stdout)


def measure(client: Host, proxies: Proxies, backend: subprocess.Popen, targets: list[str],
            tests: tuple[str, ...], rounds: int, duration: float, connections: int) -> dict:
    """results[test][target] = list over rounds of {value, p99, errors, cpu_per_unit, box_per_unit,
    edge_per_unit}. A cell with wrk errors has no value: it counts in the error total, not in the medians."""
    results: dict = {t: {name: [] for name in targets} for t in TESTS}
    for r in range(rounds):
        for test in tests:
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for name in order:
                if name == "nginx-256k" and test != "bulk":
                    continue
                for what, proc in (("the nginx backend", backend), (name, proxies.procs.get(name))):
                    if proc is not None and proc.poll() is not None:
                        raise SystemExit(f"{what} exited ({proc.returncode}) in the middle of the bench "
                                         "(another program's `pkill nginx`?); no table")
                proxies.host.run(["conntrack", "-F"], check=False)
                before, box_before = proxies.cpu_seconds(name), box_busy_seconds()
                got = run_wrk(client, test, name, duration, connections)
                cpu, box = proxies.cpu_seconds(name) - before, box_busy_seconds() - box_before
                value = got.get("mbps") if test == "bulk" else got.get("rps")
                if got.get("errors"):
                    value = None
                units = (got.get("bytes", 0) / 1024 ** 2) if test == "bulk" else got.get("requests", 0)
                per_unit = lambda seconds: seconds / units * 1e6 if value and units else None
                results[test][name].append({
                    "value": value, "p99": got.get("p99") if value else None, "errors": got.get("errors", 0),
                    "cpu_per_unit": per_unit(cpu) if name not in ("direct", "nft") else None,
                    "box_per_unit": per_unit(box)})
                print(f"  round {r + 1} {test:9} {name:11} {fmt(value, digits=0):>8}"
                      f"{'' if test != 'keepalive' else ' p99 ' + fmt((got.get('p99') or 0) * 1e3, 'ms')}"
                      f"  box {fmt(per_unit(box), digits=1)} µs  errors {got.get('errors', 0)}",
                      file=sys.stderr, flush=True)
        for test in tests:
            direct = results[test].get("direct", [None] * (r + 1))[r]
            for name, runs in results[test].items():
                if runs and len(runs) == r + 1:
                    box, base = runs[r]["box_per_unit"], direct and direct["box_per_unit"]
                    runs[r]["edge_per_unit"] = box - base if box is not None and base is not None else None
    return results


def ratio(results: dict, test: str, name: str, baseline: str, key: str = "value") -> float | None:
    per_round = [a[key] / b[key] for a, b in zip(results[test][name], results[test][baseline])
                 if a.get(key) and b.get(key)]
    return median(per_round)


def table(all_results: dict[int, dict], targets: list[str]) -> str:
    header = ["load", "workers", "target", "value", "×nginx", "keep-alive p99", "proxy CPU", "box CPU", "edge CPU"]
    rows = []
    for workers, results in all_results.items():
        for test in TESTS:
            label = {"keepalive": "keep-alive req/s", "newconn": "new conn req/s", "bulk": "1 MiB bulk MiB/s"}[test]
            unit = " µs/MiB" if test == "bulk" else " µs/req"
            for t in targets:
                runs = results[test][t]
                if not runs:
                    continue
                col = lambda key: median([x.get(key) for x in runs])
                versus = "" if t == "nginx" else fmt(ratio(results, test, t, "nginx"), "x")
                if test == "bulk" and t not in ("nginx", "nginx-256k") and "nginx-256k" in targets:
                    versus += f" ({fmt(ratio(results, test, t, 'nginx-256k'), 'x')} vs 256k)"
                p99 = fmt((col("p99") or 0) * 1e3, " ms") if test == "keepalive" and col("p99") else ""
                proxy_cpu = {"direct": "", "nft": "kernel"}.get(t, fmt(col("cpu_per_unit"), unit, 1))
                if t == "lbproxy-nat":
                    proxy_cpu += " + kernel"
                edge = "" if t == "direct" else fmt(col("edge_per_unit"), unit, 1)
                rows.append([label, str(workers), t, fmt(col("value"), digits=0), versus, p99, proxy_cpu,
                             fmt(col("box_per_unit"), unit, 1), edge])
    errors = sum(x["errors"] for results in all_results.values() for t in results.values()
                 for runs in t.values() for x in runs)
    return markdown_table(header, rows) + f"\n\nwrk errors (all cells): {errors}"


def missing() -> str | None:
    reason = unavailable_reason()
    if reason:
        return reason
    for binary in ("nginx", "haproxy", "wrk", "nft", "conntrack"):
        if shutil.which(binary) is None:
            return f"needs `{binary}` (run scripts/install.sh)"
    if not os.path.exists(NGINX_STREAM_MODULE):
        return f"needs nginx's stream module {NGINX_STREAM_MODULE} (Debian libnginx-mod-stream)"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per cell")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare, e.g. 1,2")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (bulk uses 4)")
    parser.add_argument("--targets", default=",".join(PORTS))
    parser.add_argument("--tests", default=",".join(TESTS), help="loads to run, e.g. newconn,bulk")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"bench/proxy.py: {reason}", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    tests = parse_list(args.tests, TESTS, "tests")
    unknown = [t for t in targets if t not in PORTS]
    if unknown or "nginx" not in targets:
        print(f"--targets: choose from {', '.join(PORTS)} (nginx is the baseline and required)", file=sys.stderr)
        return 2
    try:
        worker_counts = [int(w) for w in args.workers.split(",")]
    except ValueError:
        print(f"--workers: expected numbers like 1,2, got {args.workers!r}", file=sys.stderr)
        return 2
    all_results: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="lbproxy-bench-") as tmp, Lab() as lab:
        workdir = Path(tmp)
        workdir.chmod(0o755)                 # nginx's workers (www-data) read the 1 MiB file
        (workdir / "1m.bin").write_bytes(os.urandom(BULK_SIZE))
        (workdir / "1m.bin").chmod(0o644)
        client = lab.add_host("client", [f"{CLIENT}/24"])
        edge = lab.add_host("edge", [f"{EDGE}/24"])
        server = lab.add_host("backend", [f"{BACKEND}/24"])
        (workdir / "backend.conf").write_text(nginx_backend_conf(workdir))
        backend = server.popen(["nginx", "-p", str(workdir), "-e", str(workdir / "backend.log"),
                                "-c", str(workdir / "backend.conf")], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        if not wait_listening(server, BACKEND_PORT, 10):
            print("the nginx backend did not start", file=sys.stderr)
            return 1
        for workers in worker_counts:
            print(f"workers = {workers}", file=sys.stderr)
            proxies = Proxies(edge, workdir, workers)
            try:
                proxies.start(targets)
                all_results[workers] = measure(client, proxies, backend, targets, tests, args.rounds,
                                               args.duration, args.connections)
            finally:
                proxies.stop()
        lab.stop(backend)
    print(f"\nclient ns -> edge ns -> backend ns (veth + bridge), {os.cpu_count()} CPUs, wrk -t1 -c{args.connections} "
          f"(bulk -c4), {args.duration:g} s per cell, median of {args.rounds} rounds; ×nginx: per-round ratios' median; "
          f"proxy CPU: the proxy's process time, box CPU: all CPUs' busy time (wrk and backend included), "
          f"edge CPU: box CPU minus direct's, per request / per MiB.\n")
    print(table(all_results, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
