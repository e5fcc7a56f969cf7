"""Prometheus metrics built from the status document at scrape time; the same listener serves the
live status page at / and the document itself at /status.json (vipd.control.statuspage), read-only.

The status document (vipd.control.schema) is the one source of truth: there is no second set
of counters to keep in step. A field missing from the document, or not matching its schema,
just leaves its metric out. Served by aiohttp inside the daemon's loop, so `status()` runs on
the loop thread like every other reader of the components' state.
"""
from __future__ import annotations

import json
import logging
import socket
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
from vipd.control.schema import Election, Frontend, StatusDocument, VrrpInstance, check
from vipd.control.server import serve_app
from vipd.control.statuspage import HEADERS, StatusPage, render_error
from vipd.election.core import State as ElectionState
from vipd.vrrp.fsm import State

log = logging.getLogger("vipd.metrics")


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
                      {**who, "track": track["name"]}, track.get("ok"))


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


class MetricsServer:
    """Prometheus text at http://LISTEN/metrics, the status page at / and the status document at
    /status.json; GET and HEAD only. `events` returns the recent events for the page, if any."""

    def __init__(self, listen: str, status: Callable[[], dict],
                 events: Callable[[], list[dict]] | None = None) -> None:
        self.listen = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(StatusCollector(status))
        self.page = StatusPage(status, events)
        self.address: tuple[str, int] | None = None
        self._runner = None

    async def start(self) -> None:
        from aiohttp import web

        host, port = parse_listen(self.listen)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/", self._page)
        app.router.add_get("/status.json", self._status_json)
        self._runner = await serve_app(app, sock)
        self.address = sock.getsockname()[:2]
        where = self.listen if port else f"{host}:{self.address[1]}"
        log.info("metrics on http://%s/metrics, status page on http://%s/", where, where)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request):
        from aiohttp import web

        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

    async def _page(self, request):
        from aiohttp import web

        try:
            body, code = self.page.html(), 200
        except Exception as exc:
            log.exception("cannot render the status page")
            body, code = render_error(str(exc) or type(exc).__name__, self.page.clock()), 503
        return web.Response(text=body, status=code, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def _status_json(self, request):
        from aiohttp import web

        try:
            body, code = json.dumps(self.page.document(), indent=2) + "\n", 200
        except Exception as exc:
            log.exception("cannot read the status document")
            body, code = json.dumps({"error": str(exc) or type(exc).__name__}) + "\n", 503
        return web.Response(text=body, status=code, content_type="application/json",
                            headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})
