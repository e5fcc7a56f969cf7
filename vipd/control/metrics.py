"""Prometheus metrics built from the status document at scrape time; the same listener serves the
live status page at / and the document itself at /status.json (vipd.control.statuspage), read-only.

The status document (vipd.control.schema) is the one source of truth: there is no second set
of counters to keep in step. A field missing from the document, or not matching its schema,
just leaves its metric out.

Served off the VRRP loop's critical path, by a process of its own (`python -I`, cwd /): slow,
numerous or never-reading clients, HTTP parsing and rendering cost that process, never the
daemon's loop, and not its interpreter either (a busy thread in the daemon would delay its timers
through the GIL). A request asks the daemon for a snapshot taken after it arrived: the daemon's
loop calls `status()` (and the events) like every other reader of the components' state and sends
the JSON over a socket pair. Requests that arrive meanwhile share it; the daemon answers at most
every SNAPSHOT_MIN_INTERVAL, and less often when a snapshot costs it more than MAX_SHARE of the
time between. Each snapshot is rendered once per kind (metrics, page, JSON) however many ask.

The daemon keeps the listening socket and watches the process: a listener that dies (killed,
crashed, out of memory) is started again on the same socket, after a delay that doubles while it
keeps dying at once (a Backoff); connections that arrive meanwhile wait in the socket's backlog.
"""
from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import os
import re
import signal
import socket
import struct
import sys
import time
from typing import Any, Callable, Iterator

from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder

from lbproxy.configreader import split_host_port
from lbproxy.health import BackendState
from lbproxy.restarts import Backoff, describe_exit
from vipd.anycast.core import AnycastState
from vipd.control.schema import (
    Anycast,
    Election,
    Frontend,
    StatusDocument,
    VrrpInstance,
    check,
)
from vipd.control.server import serve_app
from vipd.control.statuspage import HEADERS, StatusPage, render_error
from vipd.election.core import State as ElectionState
from vipd.vrrp.fsm import State

log = logging.getLogger("vipd.metrics")

# The daemon's loop builds at most one status document per this many seconds for the listener,
# and fewer when building one costs it more than MAX_SHARE of the time between.
SNAPSHOT_MIN_INTERVAL = 0.05
MAX_SHARE = 0.1
_PR_SET_PDEATHSIG = 1
# A snapshot is a 4-byte length and that much JSON; larger is refused.
MAX_SNAPSHOT = 64 << 20
LISTENER_BOOT = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from vipd.control.metrics import listener_main; "
                 "sys.exit(listener_main(sys.argv[1:]))")
# Requests handled at once; more are answered 503 at once (a scraper retries, the page polls).
MAX_IN_FLIGHT = 64
# An idle kept-alive connection, or one whose client stopped reading, is closed after this.
KEEPALIVE_TIMEOUT = 5.0
SHUTDOWN_TIMEOUT = 1.0
# A dead listener is restarted after RESTART_FIRST seconds, doubling per death up to RESTART_MOST;
# one that stayed up RESTART_STABLE seconds starts over from RESTART_FIRST.
RESTART_FIRST = 1.0
RESTART_MOST = 30.0
RESTART_STABLE = 60.0
_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:@-]{1,64}")


def track_label(name: str) -> str:
    """A track's metric label: its name when that is an identifier; a script track named after
    its command line gets a digest instead, so no command line (arguments, paths, secrets in
    them) ever reaches a scrape."""
    kind, _, target = name.partition(":")
    if kind != "script" or _IDENTIFIER.fullmatch(target):
        return name
    return f"script:{hashlib.sha256(target.encode()).hexdigest()[:12]}"


class _Families:
    """Metric families keyed by name, created on first use so absent data makes no family."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}

    def add(self, kind: type, name: str, help_text: str, labels: dict[str, str],
            value: int | float | bool | None) -> None:
        if value is None:
            return
        family = self.families.get(name)
        if family is None:
            family = kind(name, help_text, labels=list(labels))
            self.families[name] = family
        family.add_metric(list(labels.values()), float(value))

    def gauge(self, name: str, help_text: str, labels: dict[str, str], value: int | float | bool | None) -> None:
        self.add(GaugeMetricFamily, name, help_text, labels, value)

    def counter(self, name: str, help_text: str, labels: dict[str, str], value: int | float | None) -> None:
        self.add(CounterMetricFamily, name, help_text, labels, value)


def families_from_status(document: Any) -> list[Metric]:
    """The families of what in `document` matches the status schema; the rest is left out and
    counted in vipd_status_problems."""
    checked = check(document, StatusDocument)
    status: StatusDocument = checked.value if isinstance(checked.value, dict) else {}
    out = _Families()
    if "node" in status:
        out.gauge("vipd_node_info", "This node's name.", {"node": status["node"]}, 1)
    for v in status.get("vrrp", []):
        _vrrp_metrics(out, v)
    for e in status.get("elections", []):
        _election_metrics(out, e)
    for f in status.get("frontends", []):
        _frontend_metrics(out, f)
    for a in status.get("anycast", []):
        _anycast_metrics(out, a)
    out.gauge("vipd_status_problems", "Fields of the status document that do not match its "
              "schema (docs/status.schema.json); 0 unless something is wrong.", {}, len(checked.problems))
    return list(out.families.values())


def _vrrp_metrics(out: _Families, v: VrrpInstance) -> None:
    if "name" not in v:
        return
    who = {"instance": v["name"]}
    if "state" in v:
        for known in State:
            out.gauge("vipd_vrrp_state", "1 for the VRRP instance's current state.",
                      {**who, "state": known.value}, known == v["state"])
    out.gauge("vipd_vrrp_priority", "Configured VRRP priority.", who, v.get("priority"))
    out.gauge("vipd_vrrp_effective_priority", "Priority after track weights.", who,
              v.get("effective_priority"))
    out.counter("vipd_vrrp_transitions", "VRRP state changes.", who, v.get("transitions"))
    out.counter("vipd_vrrp_adverts_sent", "VRRP advertisements sent.", who, v.get("adverts_sent"))
    out.counter("vipd_vrrp_adverts_received", "Valid VRRP advertisements received.", who,
                v.get("adverts_received"))
    for reason, count in sorted(v.get("invalid", {}).items()):
        out.counter("vipd_vrrp_invalid_packets", "VRRP packets dropped, by reason.",
                    {**who, "reason": reason}, count)
    for track in v.get("tracks", []):
        if "name" in track:
            out.gauge("vipd_vrrp_track_ok", "1 while the track is ok.",
                      {**who, "track": track_label(track["name"])}, track.get("ok"))


def _election_metrics(out: _Families, e: Election) -> None:
    if "name" not in e:
        return
    who = {"name": e["name"]}
    if "state" in e:
        out.gauge("vipd_election_leader", "1 while this node holds the election's VIPs.", who,
                  e["state"] == ElectionState.LEADER)
        for known in ElectionState:
            out.gauge("vipd_election_state", "1 for the election's current state.",
                      {**who, "state": known.value}, known == e["state"])
    out.gauge("vipd_election_fence_remaining_seconds", "Seconds until this node must stop serving "
              "unless a lease renewal succeeds.", who, e.get("fence_remaining"))
    out.counter("vipd_election_keepalive_failures", "Lease renewals that failed.", who,
                e.get("keepalive_failures"))
    out.counter("vipd_election_transitions", "Election state changes.", who, e.get("transitions"))


def _anycast_metrics(out: _Families, a: Anycast) -> None:
    if "name" not in a:
        return
    who = {"name": a["name"]}
    if "state" in a:
        out.gauge("vipd_anycast_announced", "1 while the anycast VIPs are on their device (announced).",
                  who, a["state"] == AnycastState.ANNOUNCED)
    out.gauge("vipd_anycast_maintenance", "1 while withdrawn by lbctl maintenance.", who, a.get("maintenance"))
    out.counter("vipd_anycast_transitions", "Anycast announce/withdraw changes.", who, a.get("transitions"))
    for track in a.get("tracks", []):
        if "name" in track:
            out.gauge("vipd_anycast_track_ok", "1 while the track is ok.",
                      {**who, "track": track_label(track["name"])}, track.get("ok"))


def _frontend_metrics(out: _Families, f: Frontend) -> None:
    if "name" not in f:
        return
    where = {"frontend": f["name"]}
    out.gauge("vipd_frontend_active_connections", "Open client connections.", where,
              f.get("active_connections"))
    out.counter("vipd_frontend_connections", "Client connections accepted.", where,
                f.get("total_connections"))
    out.counter("vipd_frontend_failed_connections", "Client connections no backend took.", where,
                f.get("failed_connections"))
    out.counter("vipd_frontend_refused_connections", "Client connections refused at max_connections.",
                where, f.get("refused"))
    out.gauge("vipd_frontend_all_down", "1 while no backend is up.", where, f.get("all_down"))
    for b in f.get("backends", []):
        if "address" not in b:
            continue
        who = {**where, "backend": b["address"]}
        if "state" in b:
            out.gauge("vipd_backend_up", "1 while the backend takes new connections.", who,
                      b["state"] == BackendState.UP)
            for known in BackendState:
                out.gauge("vipd_backend_state", "1 for the backend's current state.",
                          {**who, "state": known.value}, known == b["state"])
        out.gauge("vipd_backend_active_connections", "Open connections to the backend.", who,
                  b.get("active_connections"))
        out.counter("vipd_backend_connections", "Connections sent to the backend.", who,
                    b.get("total_connections"))
        out.counter("vipd_backend_failed_connections", "Failed connects to the backend.", who,
                    b.get("failed_connections"))
        out.counter("vipd_backend_bytes_in", "Bytes received from clients for the backend.", who,
                    b.get("bytes_in"))
        out.counter("vipd_backend_bytes_out", "Bytes sent to clients from the backend.", who,
                    b.get("bytes_out"))
        out.gauge("vipd_backend_check_latency_seconds", "Duration of the last health check.", who,
                  b.get("check_latency_seconds"))
        out.counter("vipd_backend_checks", "Active health checks run.", who, b.get("checks"))
        out.counter("vipd_backend_check_failures", "Active health checks failed.", who,
                    b.get("check_failures"))
        out.counter("vipd_backend_passive_failures", "Failed connects counted against health.", who,
                    b.get("passive_failures"))


class RestartsCollector:
    """The listener's own restarts, which the status document does not hold: the daemon gives
    each listener process the count on its command line."""

    def __init__(self, restarts: int) -> None:
        self.restarts = restarts

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("vipd_metrics_listener_restarts", "Times the metrics listener process "
                                  "died and was started again since the daemon started.", value=self.restarts)


class StatusCollector:
    """A prometheus_client collector reading the status document on every scrape."""

    def __init__(self, status: Callable[[], dict]) -> None:
        self.status = status

    def collect(self) -> Iterator[Metric]:
        try:
            families = families_from_status(self.status())
            ok = True
        except Exception:
            log.exception("cannot build metrics from the status document")
            families, ok = [], False
        yield from families
        yield GaugeMetricFamily("vipd_status_ok", "1 when the status document could be read.",
                                value=float(ok))


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT as in the config; port 0 (an ephemeral port) is allowed here for tests."""
    if text.endswith(":0"):
        host, _ = split_host_port(text[:-1] + "1")
        return host, 0
    return split_host_port(text)


class Snapshot:
    """The status document and events as the daemon's loop returned them (or why it could not)."""

    def __init__(self, document: Any = None, document_error: str | None = None,
                 events: list[dict] | None = None, events_error: str | None = None) -> None:
        self._document, self._document_error = document, document_error
        self._events, self._events_error = events, events_error
        self.rendered: dict[tuple, Any] = {}               # each rendering once per snapshot

    def document(self) -> Any:
        if self._document_error is not None:
            raise RuntimeError(self._document_error)
        return self._document

    def events(self) -> list[dict] | None:
        if self._events_error is not None:
            raise RuntimeError(self._events_error)
        return self._events


def _encode_snapshot(status: Callable[[], Any], events: Callable[[], list[dict]] | None) -> bytes:
    """On the daemon's loop: the snapshot as length-prefixed JSON."""
    out: dict[str, Any] = {}
    for key, function in (("document", status), ("events", events)):
        if function is None:
            continue
        try:
            out[key] = function()
        except Exception as exc:
            log.exception("cannot read the %s for the metrics listener", "status document" if key == "document" else key)
            out[f"{key}_error"] = str(exc) or type(exc).__name__
    try:
        data = json.dumps(out, default=str).encode()
    except Exception as exc:
        data = json.dumps({"document_error": f"not JSON: {exc}"}).encode()
    return struct.pack("!I", len(data)) + data


class MetricsServer:
    """Prometheus text at http://LISTEN/metrics, the status page at / and the status document at
    /status.json; GET and HEAD only. `events` returns the recent events for the page, if any.
    `status` and `events` are called on the loop that runs start(); the listener is a child process,
    restarted when it dies."""

    def __init__(self, listen: str, status: Callable[[], dict],
                 events: Callable[[], list[dict]] | None = None) -> None:
        self.listen = listen
        self.status = status
        self.events = events
        self.address: tuple[str, int] | None = None
        self.snapshots = 0                     # taken on the daemon's loop
        self.restarts = 0
        self.backoff = Backoff(RESTART_FIRST, RESTART_MOST)
        self._sock: socket.socket | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._started_at = 0.0
        self._watcher: asyncio.Task | None = None
        self._pair: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: asyncio.TimerHandle | None = None
        self._asked = False
        self._next_at = float("-inf")
        self._out = bytearray()

    async def start(self) -> None:
        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        # Kept open (never accepted on here) so that a restarted listener serves the same port.
        self._sock = sock
        self.address = sock.getsockname()[:2]
        self._loop = asyncio.get_running_loop()
        try:
            await self._spawn()
        except BaseException:
            self._sock.close()
            self._sock = None
            raise
        self._watcher = asyncio.create_task(self._watch(), name="metrics listener watcher")
        where = self.listen if port else f"{host}:{self.address[1]}"
        log.info("metrics on http://%s/metrics, status page on http://%s/", where, where)

    async def _spawn(self) -> None:
        assert self._sock is not None
        parent, child = socket.socketpair()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        argv = [sys.executable, "-I", "-c", LISTENER_BOOT, root, str(self._sock.fileno()), str(child.fileno()),
                "events" if self.events is not None else "no-events", str(self.restarts)]
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(self._sock.fileno(), child.fileno()), stdin=asyncio.subprocess.DEVNULL, cwd="/")
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()
        self._started_at = self._loop.time()
        parent.setblocking(False)
        self._pair = parent
        self._loop.add_reader(parent.fileno(), self._on_request)

    async def _watch(self) -> None:
        """Restarts the listener whenever its process ends, until stop()."""
        while True:
            pid = self._proc.pid
            returncode = await self._proc.wait()
            self._close_pair()
            uptime = self._loop.time() - self._started_at
            delay = self.backoff.after_run(uptime, RESTART_STABLE)
            self.restarts += 1
            log.error("metrics listener (pid %d) died after %.1f s: %s; starting it again in %g s (restart %d)",
                      pid, uptime, describe_exit(returncode), delay, self.restarts)
            while True:
                await asyncio.sleep(delay)
                try:
                    await self._spawn()
                    break
                except Exception as exc:
                    delay = self.backoff.delay(0.0)
                    log.error("cannot start the metrics listener again: %s; next try in %g s",
                              str(exc) or type(exc).__name__, delay)
            log.info("metrics listener started again (pid %d)", self._proc.pid)

    def _close_pair(self) -> None:
        if self._pair is not None:
            self._loop.remove_reader(self._pair.fileno())
            if self._out:
                self._loop.remove_writer(self._pair.fileno())
                self._out.clear()
            self._pair.close()
            self._pair = None
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        self._asked = False

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            try:
                await self._watcher
            except asyncio.CancelledError:
                pass
            self._watcher = None
        self._close_pair()
        if self._proc is not None:
            if self._proc.returncode is None:
                self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
            self._proc = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ---------------------------------------------------------------- on the daemon's loop

    def _on_request(self) -> None:
        try:
            data = self._pair.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            # The listener is ending; _watch says how once its process has exited, and restarts it.
            self._loop.remove_reader(self._pair.fileno())
            return
        self._asked = True
        if self._pending is None and not self._out:
            self._pending = self._loop.call_at(max(self._loop.time(), self._next_at), self._answer)

    def _answer(self) -> None:
        self._pending = None
        if not self._asked or self._pair is None:
            return
        self._asked = False
        started = time.perf_counter()
        self._out += _encode_snapshot(self.status, self.events)
        self.snapshots += 1
        cost = time.perf_counter() - started
        self._next_at = self._loop.time() + max(SNAPSHOT_MIN_INTERVAL, cost / MAX_SHARE)
        self._flush()

    def _flush(self) -> None:
        try:
            sent = self._pair.send(self._out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._out.clear()
            return
        del self._out[:sent]
        if self._out:
            self._loop.add_writer(self._pair.fileno(), self._flush)
            return
        self._loop.remove_writer(self._pair.fileno())
        if self._asked and self._pending is None:
            self._pending = self._loop.call_at(max(self._loop.time(), self._next_at), self._answer)


# The snapshot a request in the listener renders (each request is a task of its own).
_current: contextvars.ContextVar[Snapshot] = contextvars.ContextVar("vipd_metrics_snapshot")


class Listener:
    """The listener process: serves the app on the inherited socket, asking the daemon for
    snapshots over the socket pair."""

    def __init__(self, with_events: bool, restarts: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(lambda: _current.get().document()))
        self.registry.register(RestartsCollector(restarts))
        self.page = StatusPage(lambda: _current.get().document(),
                               (lambda: _current.get().events()) if with_events else None)
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._taking: asyncio.Task | None = None
        self._taking_since = 0.0
        self._in_flight = 0

    async def run(self, listen_fd: int, pair_fd: int) -> None:
        from aiohttp import web

        pair = socket.socket(fileno=pair_fd)
        self._reader, self._writer = await asyncio.open_connection(sock=pair, limit=MAX_SNAPSHOT)
        listening = socket.socket(fileno=listen_fd)
        listening.setblocking(False)

        @web.middleware
        async def bounded(request, handler):
            return await self._bounded(request, handler)

        app = web.Application(middlewares=[bounded])
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._status_json)
        runner = await serve_app(app, listening, shutdown_timeout=SHUTDOWN_TIMEOUT,
                                 keepalive_timeout=KEEPALIVE_TIMEOUT)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()

    async def _bounded(self, request, handler):
        from aiohttp import web

        if self._in_flight >= MAX_IN_FLIGHT:
            return web.Response(status=503, text="busy\n", headers={"Retry-After": "1"})
        self._in_flight += 1
        try:
            _current.set(await self._snapshot())
            return await handler(request)
        finally:
            self._in_flight -= 1

    async def _snapshot(self) -> Snapshot:
        """A snapshot taken after now, shared with the requests that arrive meanwhile."""
        asked = time.monotonic()
        while True:
            taking = self._taking
            if taking is None:
                taking = self._taking = asyncio.ensure_future(self._take())
                self._taking_since = time.monotonic()
            if self._taking_since >= asked:
                return await asyncio.shield(taking)
            await asyncio.wait([taking])

    async def _take(self) -> Snapshot:
        try:
            self._writer.write(b"?")
            await self._writer.drain()
            size = struct.unpack("!I", await self._reader.readexactly(4))[0]
            if size > MAX_SNAPSHOT:
                raise ValueError(f"a snapshot of {size} bytes")
            return Snapshot(**json.loads(await self._reader.readexactly(size)))
        except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
            return Snapshot(document_error=f"the daemon does not answer: {exc}")
        finally:
            self._taking = None

    @staticmethod
    def _rendered(key: tuple, render: Callable[[], Any]) -> Any:
        rendered = _current.get().rendered
        if key not in rendered:
            rendered[key] = render()
        return rendered[key]

    async def _metrics(self, request):
        from aiohttp import web

        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = self._rendered(("metrics", content_type), lambda: encoder(self.registry))
        return web.Response(body=body, headers={"Content-Type": content_type})

    async def _page(self, request):
        from aiohttp import web

        body, code = self._rendered(("page",), self._render_page)
        return web.Response(text=body, status=code, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def _status_json(self, request):
        from aiohttp import web

        body, code = self._rendered(("json",), self._render_json)
        return web.Response(text=body, status=code, content_type="application/json",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})

    def _render_page(self) -> tuple[str, int]:
        try:
            return self.page.html(), 200
        except Exception as exc:
            log.exception("cannot render the status page")
            return render_error(str(exc) or type(exc).__name__, self.page.clock()), 503

    def _render_json(self) -> tuple[str, int]:
        try:
            return json.dumps(self.page.document(), indent=2) + "\n", 200
        except Exception as exc:
            log.exception("cannot read the status document")
            return json.dumps({"error": str(exc) or type(exc).__name__}) + "\n", 503


def listener_main(argv: list[str]) -> int:
    """The listener process: LISTEN_FD PAIR_FD events|no-events RESTARTS. SIGTERM stops it, and so
    does the daemon's death (it must not keep the port from a restarted daemon)."""
    import ctypes

    logging.basicConfig(level=logging.WARNING, format="vipd metrics: %(message)s")
    listen_fd, pair_fd, events, restarts = int(argv[0]), int(argv[1]), argv[2] == "events", int(argv[3])
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() == 1:          # the daemon died before prctl
        return 0
    asyncio.run(Listener(events, restarts).run(listen_fd, pair_fd))
    return 0
