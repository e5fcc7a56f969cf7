"""L4 proxy throughput on loopback: direct, nginx stream, HAProxy (mode tcp) and lbproxy.

Everything runs in one throw-away network namespace (its loopback), so nothing touches the
host's network: an nginx HTTP backend (a small body and a 1 MiB file), the proxies in front of
it with the same number of workers, and wrk as the client. Per round, targets are measured
interleaved (the order rotates) on three loads:

  keep-alive   small requests on persistent connections: req/s and p99 (wrk --latency)
  new conn     one connection per request (wrk -H "Connection: close"): req/s
  bulk         GET of the 1 MiB file: MB/s (MiB/s), against nginx defaults and with
               proxy_buffer_size 256k

Ratios to nginx are taken within each round, then the median over rounds is printed, with
the proxies' CPU time per request (or per MiB) read from /proc. lbproxy workers run 10 nice
levels below their master (that is the product: VRRP in the master comes first); the bench
starts the master at nice -10 so that every proxy's data path runs at nice 0 like the others.

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

from bench._common import NGINX_STREAM_MODULE, fmt, markdown_table, median  # noqa: E402
from vipd.lab.netns import Host, Lab, unavailable_reason  # noqa: E402

BACKEND_PORT = 18080
PORTS = {"direct": BACKEND_PORT, "nginx": 18081, "nginx-256k": 18082, "haproxy": 18083, "lbproxy": 18084}
TESTS = ("keepalive", "newconn", "bulk")
BULK_SIZE = 1 << 20


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
    listen 127.0.0.1:{BACKEND_PORT} reuseport backlog=4096;
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
    listen 127.0.0.1:{port} reuseport backlog=4096;
    proxy_pass 127.0.0.1:{BACKEND_PORT};
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
  bind 127.0.0.1:{PORTS["haproxy"]}
  default_backend be
backend be
  server b1 127.0.0.1:{BACKEND_PORT}
"""


def lbproxy_conf(workdir: Path, workers: int) -> str:
    return f"""[node]
name = "bench"
control_socket = "{workdir}/lbproxy.sock"
workers = {workers}
log_level = "warning"

[[frontend]]
name = "bench"
listen = "127.0.0.1:{PORTS["lbproxy"]}"
max_connections = 100000
  [frontend.health]
  type = "tcp"
  interval = 1.0
  [[frontend.backend]]
  address = "127.0.0.1:{BACKEND_PORT}"
"""


class Proxies:
    """The backend and every proxy of one worker count, running in the bench namespace."""

    def __init__(self, host: Host, workdir: Path, workers: int) -> None:
        self.host = host
        self.workdir = workdir
        self.workers = workers
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, targets: list[str]) -> None:
        w, d = self.workers, self.workdir
        for name in targets:
            if name == "direct":
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
                conf = d / "lbproxy.toml"
                conf.write_text(lbproxy_conf(d, w))
                argv = ["nice", "-n", "-10", sys.executable, "-m", "vipd.proxycli", "run", "-c", str(conf)]
            log = open(d / f"{name}.out", "ab")
            self.procs[name] = self.host.popen(argv, stdout=log, stderr=subprocess.STDOUT,
                                               cwd=str(Path(__file__).resolve().parents[1]))
            log.close()
        for name in targets:
            if not wait_listening(self.host, PORTS[name], 20):
                raise SystemExit(f"{name} did not start listening; see {d}/{name}.out")
        if "lbproxy" in targets:
            time.sleep(1.5)      # the first health checks pass and reach the workers

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


def wait_listening(host: Host, port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if host.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout.strip():
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


def run_wrk(host: Host, test: str, port: int, duration: float, connections: int) -> dict:
    url = f"http://127.0.0.1:{port}/" + ("1m" if test == "bulk" else "")
    argv = ["wrk", "-t1", f"-c{connections if test != 'bulk' else 4}", f"-d{duration:g}s", "--timeout", "5s"]
    if test == "keepalive":
        argv.append("--latency")
    if test == "newconn":
        argv += ["-H", "Connection: close"]
    done = host.run(argv + [url], check=False, timeout=duration + 60)
    return parse_wrk(done.stdout)


def measure(host: Host, proxies: Proxies, backend: subprocess.Popen, targets: list[str], rounds: int,
            duration: float, connections: int) -> dict:
    """results[test][target] = list over rounds of {value, p99, cpu, errors}. A cell with wrk
    errors has no value: it counts in the error total, not in the medians."""
    results: dict = {t: {name: [] for name in targets} for t in TESTS}
    for r in range(rounds):
        for test in TESTS:
            order = targets[r % len(targets):] + targets[:r % len(targets)]
            for name in order:
                if name == "nginx-256k" and test != "bulk":
                    continue
                for what, proc in (("the nginx backend", backend), (name, proxies.procs.get(name))):
                    if proc is not None and proc.poll() is not None:
                        raise SystemExit(f"{what} exited ({proc.returncode}) in the middle of the bench "
                                         "(another program's `pkill nginx`?); no table")
                before = proxies.cpu_seconds(name)
                got = run_wrk(host, test, PORTS[name], duration, connections)
                cpu = proxies.cpu_seconds(name) - before
                value = got.get("mbps") if test == "bulk" else got.get("rps")
                if got.get("errors"):
                    value = None
                units = (got.get("bytes", 0) / 1024 ** 2) if test == "bulk" else got.get("requests", 0)
                results[test][name].append({
                    "value": value, "p99": got.get("p99") if value else None, "errors": got.get("errors", 0),
                    "cpu_per_unit": (cpu / units * 1e6) if value and units and name != "direct" else None})
                print(f"  round {r + 1} {test:9} {name:10} {fmt(value, digits=0):>8}"
                      f"{'' if test != 'keepalive' else ' p99 ' + fmt((got.get('p99') or 0) * 1e3, 'ms')}"
                      f"  errors {got.get('errors', 0)}", file=sys.stderr, flush=True)
    return results


def ratio(results: dict, test: str, name: str, baseline: str, key: str = "value") -> float | None:
    per_round = [a[key] / b[key] for a, b in zip(results[test][name], results[test][baseline])
                 if a.get(key) and b.get(key)]
    return median(per_round)


def table(all_results: dict[int, dict], targets: list[str]) -> str:
    proxies = [t for t in targets if t not in ("direct", "nginx-256k")]
    header = ["load", "workers", *targets, *(f"{p}/nginx" for p in proxies if p != "nginx"),
              *(f"{p} CPU" for p in proxies)]
    rows = []
    for workers, results in all_results.items():
        for test in TESTS:
            label = {"keepalive": "keep-alive req/s", "newconn": "new conn req/s", "bulk": "1 MiB bulk MiB/s"}[test]
            cells = [fmt(median([x["value"] for x in results[test][t]]), digits=0) if t != "nginx-256k" or test == "bulk"
                     else "" for t in targets]
            ratios = []
            for p in proxies:
                if p == "nginx":
                    continue
                text = fmt(ratio(results, test, p, "nginx"), "x")
                if test == "bulk" and "nginx-256k" in targets:
                    text += f" ({fmt(ratio(results, test, p, 'nginx-256k'), 'x')} vs 256k)"
                ratios.append(text)
            unit = "µs/MiB" if test == "bulk" else "µs/req"
            cpu = [fmt(median([x["cpu_per_unit"] for x in results[test][p]]), f" {unit}", 1) for p in proxies]
            rows.append([label, str(workers), *cells, *ratios, *cpu])
            if test == "keepalive":
                p99 = [fmt((median([x["p99"] for x in results[test][t]]) or 0) * 1e3, " ms") if t != "nginx-256k" else ""
                       for t in targets]
                p99_ratios = [fmt(ratio(results, test, p, "nginx", "p99"), "x") for p in proxies if p != "nginx"]
                rows.append(["keep-alive p99", str(workers), *p99, *p99_ratios, *([""] * len(proxies))])
    errors = sum(x["errors"] for results in all_results.values() for t in results.values()
                 for runs in t.values() for x in runs)
    return markdown_table(header, rows) + f"\n\nwrk errors (all cells): {errors}"


def missing() -> str | None:
    reason = unavailable_reason()
    if reason:
        return reason
    for binary in ("nginx", "haproxy", "wrk"):
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
    parser.add_argument("--connections", type=int, default=50, help="wrk connections (bulk uses 4)")
    parser.add_argument("--targets", default="direct,nginx,nginx-256k,haproxy,lbproxy")
    args = parser.parse_args()
    reason = missing()
    if reason:
        print(f"bench/proxy.py: {reason}", file=sys.stderr)
        return 2
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
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
        host = lab.add_host("bench")
        (workdir / "backend.conf").write_text(nginx_backend_conf(workdir))
        backend = host.popen(["nginx", "-p", str(workdir), "-e", str(workdir / "backend.log"),
                              "-c", str(workdir / "backend.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if not wait_listening(host, BACKEND_PORT, 10):
            print("the nginx backend did not start", file=sys.stderr)
            return 1
        for workers in worker_counts:
            print(f"workers = {workers}", file=sys.stderr)
            proxies = Proxies(host, workdir, workers)
            try:
                proxies.start(targets)
                all_results[workers] = measure(host, proxies, backend, targets, args.rounds, args.duration,
                                               args.connections)
            finally:
                proxies.stop()
        lab.stop(backend)
    print(f"\nLoopback, {os.cpu_count()} CPUs, wrk -t1 -c{args.connections} (bulk -c4), {args.duration:g} s per cell, "
          f"median of {args.rounds} rounds; ratios are per-round medians; CPU = proxy process time per request / per MiB.\n")
    print(table(all_results, targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
