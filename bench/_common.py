"""What the VRRP benches share: the two edges of an `EdgeLab` running either `vipd run` or
keepalived + nginx (stream), a watcher that timestamps VIP changes in a namespace, and tables.

Run the benches from the repository root as root: `python bench/failover.py`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipd.lab import edges  # noqa: E402
from vipd.lab.keepalived import keepalived_config, start_keepalived  # noqa: E402
from vipd.lab.netns import Host, Lab, unavailable_reason  # noqa: E402

NGINX_STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"
IMPLEMENTATIONS = ("vipd", "keepalived")


def missing(impls: tuple[str, ...] = IMPLEMENTATIONS, extra: tuple[str, ...] = ()) -> str | None:
    """Why a bench cannot run here (one line), or None."""
    reason = unavailable_reason()
    if reason:
        return reason
    needed = list(extra)
    if "keepalived" in impls:
        needed += ["keepalived", "nginx"]
    for binary in needed:
        if shutil.which(binary) is None:
            return f"needs `{binary}` (run scripts/install.sh)"
    if "keepalived" in impls and not os.path.exists(NGINX_STREAM_MODULE):
        return f"needs nginx's stream module {NGINX_STREAM_MODULE} (Debian libnginx-mod-stream)"
    return None


def nginx_config(workdir: Path, name: str, backends: list[str], port: int, workers: int = 1) -> str:
    """nginx as the L4 proxy beside keepalived: the same listen port, backends and timeouts as the
    vipd frontend of `EdgeLab.config_text`. Open-source nginx has passive health checks only."""
    servers = "\n".join(f"    server {b} max_fails=1 fail_timeout=2s;" for b in backends)
    return f"""load_module {NGINX_STREAM_MODULE};
daemon off;
worker_processes {workers};
pid {workdir}/{name}.nginx.pid;
error_log {workdir}/{name}.nginx.log warn;
events {{ worker_connections 4096; }}
stream {{
  upstream api {{
{servers}
  }}
  server {{
    listen {port} backlog=1024;
    proxy_pass api;
    proxy_connect_timeout 500ms;
    proxy_next_upstream on;
    proxy_next_upstream_tries 3;
    proxy_timeout 600s;
  }}
}}
"""


def start_nginx(host: Host, workdir: Path, name: str, backends: list[str], port: int,
                workers: int = 1) -> subprocess.Popen:
    conf = workdir / f"{name}.nginx.conf"
    conf.write_text(nginx_config(workdir, name, backends, port, workers))
    return host.popen(["nginx", "-p", str(workdir), "-e", str(workdir / f"{name}.nginx.log"), "-c", str(conf)],
                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def kill_groups(procs: list[subprocess.Popen], sig: int = signal.SIGKILL, timeout: float = 5.0) -> None:
    """Signal daemons and every process they forked (keepalived's VRRP child, proxy workers), by
    PGID, all at once, then wait until every group is gone."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + timeout
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    # Orphaned children are reaped by init a moment later; until then keepalived's pid-file check
    # would take them for a running instance.
    for proc in procs:
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.01)


def listening(host: Host, port: int) -> bool:
    return bool(host.run(["ss", "-Htln", f"sport = :{port}"], check=False).stdout.strip())


def first_seen(changed: threading.Condition, find, timeout: float) -> float | None:
    """What `find` returns once it is not None, checked each time a reader thread notifies `changed`
    (and at least every 0.1 s); None after `timeout`."""
    deadline = time.monotonic() + timeout
    with changed:
        while True:
            hit = find()
            if hit is not None:
                return hit
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            changed.wait(min(left, 0.1))


class AddressWatch:
    """`ip monitor address` in one namespace: the monotonic time of every add/delete of one address,
    taken as the kernel reports it (no polling interval in the measurement)."""

    def __init__(self, host: Host, address: str) -> None:
        self.address = address
        self.events: list[tuple[float, bool]] = []
        self._changed = threading.Condition()
        self._proc = host.popen(["ip", "-o", "monitor", "address", "dev", host.ifname],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._host = host
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if f" {self.address}/" in line:
                with self._changed:
                    self.events.append((time.monotonic(), not line.startswith("Deleted")))
                    self._changed.notify_all()

    def wait(self, present: bool, after: float, timeout: float) -> float | None:
        """The first time at or after `after` the address was added (present) / deleted; None on timeout."""
        return first_seen(self._changed, lambda: next(
            (t for t, added in self.events if t >= after and added == present), None), timeout)

    def close(self) -> None:
        self._host.lab.stop(self._proc, signal.SIGTERM, timeout=3)
        self._reader.join(3)


class AdvertTap:
    """tcpdump on one host's interface, read as it runs: every VRRP advert with its kernel receive
    time (epoch, from tcpdump -tt), the monotonic time we read it, its source and priority."""

    LINE = re.compile(r"^(\d+\.\d+) IP6? (\S+) > \S+: VRRPv\d, Advertisement, vrid \d+, prio (\d+)")

    def __init__(self, host: Host, timeout: float = 5.0) -> None:
        self.adverts: list[tuple[float, float, str, int]] = []
        self._changed = threading.Condition()
        self._host = host
        # --immediate-mode: without it libpcap hands packets over in batches, late by up to a block timeout.
        self._proc = host.popen(["tcpdump", "--immediate-mode", "-i", host.ifname, "-n", "-tt", "-l", "-p", "ip proto 112"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if self.wait_next(None, time.monotonic(), timeout) is None:
            self.close()
            raise RuntimeError(f"{host.name}: tcpdump saw no VRRP advert within {timeout:g} s")

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            match = self.LINE.match(line)
            if match:
                with self._changed:
                    self.adverts.append((float(match.group(1)), time.monotonic(), match.group(2),
                                         int(match.group(3))))
                    self._changed.notify_all()

    def wait_next(self, source: str | None, after: float, timeout: float) -> float | None:
        """Monotonic time we read the first advert (from `source`, or anyone) after `after`."""
        return first_seen(self._changed, lambda: next(
            (seen for _, seen, src, _ in self.adverts if seen > after and source in (None, src)), None), timeout)

    def stamps(self, source: str, since: float, until: float) -> list[float]:
        """Kernel receive times (epoch) of adverts from `source` with since <= time < until."""
        with self._changed:
            return [stamp for stamp, _, src, _ in self.adverts if src == source and since <= stamp < until]

    def close(self) -> None:
        self._host.lab.stop(self._proc, signal.SIGTERM, timeout=3)
        self._reader.join(3)


class Cluster:
    """The two edges of an `EdgeLab` running one implementation: `vipd run` (VRRP + its proxy), or
    keepalived for VRRP with nginx (stream) as the proxy, configured alike (VRID, priorities 150/100,
    advert interval, VIP, listen port, backends)."""

    def __init__(self, edge_lab: edges.EdgeLab, impl: str, workers: int = 1) -> None:
        if impl not in IMPLEMENTATIONS:
            raise ValueError(f"unknown implementation {impl!r}")
        self.edge_lab = edge_lab
        self.impl = impl
        self.workers = workers
        self.daemons: dict[int, subprocess.Popen] = {}
        self.proxies: dict[int, subprocess.Popen] = {}

    @property
    def hosts(self) -> list[Host]:
        return self.edge_lab.edges

    def configure(self, advert_interval: float) -> None:
        self.edge_lab.advert_interval = advert_interval
        for i in range(len(self.hosts)):
            path = self.edge_lab.write_config(i)
            text = path.read_text()
            if "\nworkers = 1\n" not in text:
                raise RuntimeError(f"{path}: no `workers = 1` line to set {self.workers} workers")
            path.write_text(text.replace("\nworkers = 1\n", f"\nworkers = {self.workers}\n"))

    def _keepalived_text(self, i: int) -> str:
        e = self.edge_lab
        return keepalived_config(router_id=f"edge-{i + 1}", vrid=e.vrid, priority=e.priorities[i],
                                         advert_interval=e.advert_interval, virtual_ips=[f"{edges.VIP}/24"],
                                         preempt=e.preempt)

    def start(self, i: int) -> None:
        e = self.edge_lab
        if self.impl == "vipd":
            self.daemons[i] = e.start_edge(i)
            return
        (e.workdir / f"edge{i + 1}.keepalived.log").unlink(missing_ok=True)
        backends = [f"{b.ipv4}:{edges.BACKEND_PORT}" for b in e.backends]
        self.proxies[i] = start_nginx(self.hosts[i], e.workdir, f"edge{i + 1}", backends, edges.PORT,
                                      self.workers)
        self.daemons[i] = start_keepalived(self.hosts[i], e.workdir, f"edge{i + 1}", self._keepalived_text(i))

    def state(self, i: int) -> str | None:
        if self.impl == "vipd":
            return self.edge_lab.state(i)
        log = self.edge_lab.workdir / f"edge{i + 1}.keepalived.log"
        if not log.exists() or i not in self.daemons or self.daemons[i].poll() is not None:
            return None
        states = re.findall(r"Entering (\w+) STATE", log.read_text(errors="replace"))
        return states[-1] if states else None

    def serving(self, i: int) -> bool:
        """The edge's proxy listens and has a healthy backend (vipd: per its health checks)."""
        if self.impl == "keepalived":
            return listening(self.hosts[i], edges.PORT)
        status = self.edge_lab.status(i)
        return bool(status and status.get("frontends") and
                    any(b["state"] == "up" for b in status["frontends"][0]["backends"]))

    def _exited(self) -> str | None:
        for what, procs in (("daemon", self.daemons), ("proxy", self.proxies)):
            for i, proc in procs.items():
                if proc.poll() is not None:
                    return f"edge-{i + 1} {what} exited with {proc.returncode}"
        return None

    def bring_up(self, timeout: float) -> None:
        """edge-1 MASTER holding the VIP, then edge-2 BACKUP, both proxies serving; RuntimeError if not."""
        self.start(0)
        if not edges.wait_for(lambda: self._exited() or (self.edge_lab.holders() == [0] and
                                self.state(0) == "MASTER" and self.serving(0)), timeout) or self._exited():
            raise RuntimeError(f"{self.impl}: edge-1 did not become master ({self._exited() or 'timeout'})\n"
                               f"{self.logs()}")
        self.start(1)
        if not edges.wait_for(lambda: self._exited() or (self.state(1) == "BACKUP" and self.serving(1)),
                                timeout) or self._exited():
            raise RuntimeError(f"{self.impl}: edge-2 did not come up as backup ({self._exited() or 'timeout'})\n"
                               f"{self.logs()}")

    def kill(self, i: int) -> None:
        """kill -9 of the edge's load-balancing software: VRRP daemon and proxy, with their children."""
        kill_groups([procs.pop(i) for procs in (self.daemons, self.proxies) if i in procs])

    def terminate(self, i: int) -> None:
        """The planned stop (`systemctl stop`), not waited for: vipd resigns, hands over and drains;
        keepalived resigns (priority 0) while nginx keeps running, as `systemctl stop keepalived`."""
        proc = self.daemons.get(i)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)

    def reset(self) -> None:
        """Everything stopped, no VIP anywhere, links up, partitions healed: ready for the next run."""
        for i in list(self.daemons) + list(self.proxies):
            self.kill(i)
        self.edge_lab.lab.heal()
        for host in self.hosts:
            host.set_link(True)
            host.run(["ip", "addr", "del", f"{edges.VIP}/24", "dev", host.ifname], check=False)

    def logs(self, tail: int = 2000) -> str:
        out = []
        for i in range(len(self.hosts)):
            name = f"edge{i + 1}.keepalived.log" if self.impl == "keepalived" else f"edge{i + 1}.log"
            path = self.edge_lab.workdir / name
            text = path.read_text(errors="replace") if path.exists() else ""
            out.append(f"--- {self.impl} edge-{i + 1} ---\n{text[-tail:]}")
        return "\n".join(out)


def interrupt_on_sigterm() -> None:
    """SIGTERM (and SIGINT, ignored in background jobs) unwind like Ctrl-C, so `finally` tears the lab down."""
    def interrupted(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fmt(value: float | int | None, unit: str = "", digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}f}{unit}"


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[c])) for r in [header, *rows]) for c in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(v).ljust(w) for v, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def bench_parser(doc: str) -> argparse.ArgumentParser:
    """A bench's command line: its docstring as the help, and --keep for its work directory."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (configs, logs)")
    return parser


def parse_list(text: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [c for c in chosen if c not in allowed]
    if unknown or not chosen:
        raise SystemExit(f"--{what}: expected a comma-separated subset of {', '.join(allowed)}, got {text!r}")
    return chosen


def parse_floats(text: str, what: str) -> tuple[float, ...]:
    try:
        values = tuple(float(p) for p in text.split(",") if p.strip())
    except ValueError:
        values = ()
    if not values or any(v <= 0 for v in values):
        raise SystemExit(f"--{what}: expected comma-separated positive numbers, got {text!r}")
    return values


@contextlib.contextmanager
def lab_session(prefix: str, keep: bool):
    """A lab and a work directory, torn down at the end, on Ctrl-C and on SIGTERM."""
    interrupt_on_sigterm()
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    lab = Lab()
    try:
        yield lab, workdir
    except KeyboardInterrupt:
        print("interrupted; tearing the lab down", file=sys.stderr)
    finally:
        lab.close()
        if keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
