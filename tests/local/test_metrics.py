"""Prometheus metrics: a real MetricsServer on loopback, scraped over HTTP and parsed."""
from __future__ import annotations

import asyncio
import copy
import logging
import os
import signal
import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lbproxy.restarts import Backoff
from vipd.control.metrics import MetricsServer

FULL = {
    "node": "edge-1",
    "vrrp": [
        {"name": "api", "state": "MASTER", "vrid": 51, "interface": "eth0", "version": 3,
         "priority": 150, "effective_priority": 90, "virtual_ips": ["198.18.0.100/24"],
         "master": "198.18.0.11", "since": "2026-11-26T23:00:00Z",
         "tracks": [{"name": "frontend:api", "ok": False, "weight": -60}],
         "adverts_sent": 1234, "adverts_received": 17, "transitions": 3,
         "invalid": {"bad_checksum": 4, "bad_ttl": 2}},
    ],
    "frontends": [
        {"name": "api", "listen": "0.0.0.0:6443", "active_connections": 3, "all_down": False,
         "total_connections": 18, "failed_connections": 1, "refused": 5,
         "backends": [
             {"address": "198.18.0.21:6443", "state": "up", "active_connections": 1,
              "total_connections": 10, "failed_connections": 2, "health": "3/3 UP",
              "bytes_in": 5000, "bytes_out": 70000, "check_latency_seconds": 0.0042,
              "checks": 40, "check_failures": 3, "passive_failures": 2},
             {"address": "[2001:db8::22]:6443", "state": "drain", "active_connections": 2,
              "total_connections": 8, "failed_connections": 0, "health": "3/3 UP",
              "bytes_in": 10, "bytes_out": 20, "check_latency_seconds": None},
         ]},
    ],
}

# Exactly the contract's document: none of the extra keys.
CONTRACT_ONLY = {
    "node": "edge-2",
    "vrrp": [
        {"name": "api", "state": "BACKUP", "vrid": 51, "interface": "eth0", "version": 3,
         "priority": 100, "effective_priority": 100, "virtual_ips": ["198.18.0.100/24"],
         "master": None, "since": "2026-11-26T23:00:00Z", "tracks": []},
    ],
    "frontends": [
        {"name": "api", "listen": "0.0.0.0:6443", "active_connections": 0,
         "backends": [
             {"address": "198.18.0.21:6443", "state": "down", "active_connections": 0,
              "total_connections": 0, "failed_connections": 0},
         ]},
    ],
}


def scrape_with(status, scenario_checks) -> None:
    """Serve `status` on an ephemeral loopback port and run `scenario_checks(url)` in a thread."""
    async def main() -> None:
        server = MetricsServer("127.0.0.1:0", status)
        await server.start()
        try:
            host, port = server.address
            await asyncio.wait_for(asyncio.to_thread(scenario_checks, f"http://{host}:{port}"), 60)
        finally:
            await server.stop()
    asyncio.run(main())


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.read().decode()


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value}, and the parse itself must succeed."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@pytest.mark.timeout(60)
def test_values_match_the_status_document() -> None:
    calls = []

    def status() -> dict:
        calls.append(threading.get_ident())
        return FULL

    def checks(url: str) -> None:
        found = samples(fetch(url + "/metrics"))
        inst = {"instance": "api"}
        assert value(found, "vipd_node_info", node="edge-1") == 1
        assert value(found, "vipd_vrrp_state", state="MASTER", **inst) == 1
        for other in ("INIT", "BACKUP", "FAULT"):
            assert value(found, "vipd_vrrp_state", state=other, **inst) == 0
        assert value(found, "vipd_vrrp_priority", **inst) == 150
        assert value(found, "vipd_vrrp_effective_priority", **inst) == 90
        assert value(found, "vipd_vrrp_transitions_total", **inst) == 3
        assert value(found, "vipd_vrrp_adverts_sent_total", **inst) == 1234
        assert value(found, "vipd_vrrp_adverts_received_total", **inst) == 17
        assert value(found, "vipd_vrrp_invalid_packets_total", reason="bad_checksum", **inst) == 4
        assert value(found, "vipd_vrrp_invalid_packets_total", reason="bad_ttl", **inst) == 2
        assert value(found, "vipd_vrrp_track_ok", track="frontend:api", **inst) == 0

        assert value(found, "vipd_frontend_active_connections", frontend="api") == 3
        assert value(found, "vipd_frontend_all_down", frontend="api") == 0
        assert value(found, "vipd_frontend_connections_total", frontend="api") == 18
        assert value(found, "vipd_frontend_failed_connections_total", frontend="api") == 1
        assert value(found, "vipd_frontend_refused_connections_total", frontend="api") == 5
        b1 = {"frontend": "api", "backend": "198.18.0.21:6443"}
        b2 = {"frontend": "api", "backend": "[2001:db8::22]:6443"}
        assert value(found, "vipd_backend_up", **b1) == 1
        assert value(found, "vipd_backend_up", **b2) == 0
        assert value(found, "vipd_backend_state", state="drain", **b2) == 1
        assert value(found, "vipd_backend_state", state="up", **b2) == 0
        assert value(found, "vipd_backend_state", state="down", **b2) == 0
        assert value(found, "vipd_backend_active_connections", **b1) == 1
        assert value(found, "vipd_backend_active_connections", **b2) == 2
        assert value(found, "vipd_backend_connections_total", **b1) == 10
        assert value(found, "vipd_backend_failed_connections_total", **b1) == 2
        assert value(found, "vipd_backend_bytes_in_total", **b1) == 5000
        assert value(found, "vipd_backend_bytes_out_total", **b1) == 70000
        assert value(found, "vipd_backend_check_latency_seconds", **b1) == pytest.approx(0.0042)
        assert ("vipd_backend_check_latency_seconds", tuple(sorted(b2.items()))) not in found
        assert value(found, "vipd_backend_checks_total", **b1) == 40
        assert value(found, "vipd_backend_check_failures_total", **b1) == 3
        assert value(found, "vipd_backend_passive_failures_total", **b1) == 2
        assert ("vipd_backend_checks_total", tuple(sorted(b2.items()))) not in found
        assert value(found, "vipd_status_ok") == 1
        assert value(found, "vipd_status_problems") == 0

        with pytest.raises(urllib.error.HTTPError) as missing:
            fetch(url + "/nothing")
        assert missing.value.code == 404

    scrape_with(status, checks)
    assert calls, "status() is read at scrape time"


@pytest.mark.timeout(60)
def test_each_scrape_reads_the_document_again_on_the_loop_thread() -> None:
    document = copy.deepcopy(FULL)
    loop_threads = set()

    def status() -> dict:
        loop_threads.add(threading.get_ident())
        return document

    def checks(url: str) -> None:
        first = samples(fetch(url + "/metrics"))
        assert value(first, "vipd_vrrp_adverts_sent_total", instance="api") == 1234
        document["vrrp"][0]["adverts_sent"] = 1300
        document["vrrp"][0]["state"] = "BACKUP"
        second = samples(fetch(url + "/metrics"))
        assert value(second, "vipd_vrrp_adverts_sent_total", instance="api") == 1300
        assert value(second, "vipd_vrrp_state", instance="api", state="BACKUP") == 1
        assert value(second, "vipd_vrrp_state", instance="api", state="MASTER") == 0
        assert threading.get_ident() not in loop_threads

    scrape_with(status, checks)
    assert len(loop_threads) == 1, "status() runs on the asyncio loop's thread only"


@pytest.mark.timeout(60)
def test_a_document_without_extras_still_scrapes() -> None:
    def checks(url: str) -> None:
        found = samples(fetch(url + "/metrics"))
        names = {name for name, _ in found}
        assert value(found, "vipd_vrrp_state", instance="api", state="BACKUP") == 1
        assert value(found, "vipd_vrrp_effective_priority", instance="api") == 100
        b = {"frontend": "api", "backend": "198.18.0.21:6443"}
        assert value(found, "vipd_backend_up", **b) == 0
        assert value(found, "vipd_backend_state", state="down", **b) == 1
        assert value(found, "vipd_backend_connections_total", **b) == 0
        for absent in ("vipd_vrrp_adverts_sent_total", "vipd_vrrp_adverts_received_total",
                       "vipd_vrrp_transitions_total", "vipd_vrrp_invalid_packets_total",
                       "vipd_backend_bytes_in_total", "vipd_backend_bytes_out_total",
                       "vipd_backend_check_latency_seconds", "vipd_frontend_all_down",
                       "vipd_frontend_connections_total", "vipd_frontend_refused_connections_total",
                       "vipd_backend_checks_total", "vipd_backend_check_failures_total"):
            assert absent not in names
        assert value(found, "vipd_status_problems") == 0

    scrape_with(lambda: CONTRACT_ONLY, checks)


@pytest.mark.timeout(60)
def test_garbage_or_failing_status_never_breaks_a_scrape() -> None:
    garbage = {
        "node": 7,
        "vrrp": [None, "x", {"state": "MASTER"}, {"name": "v", "state": 5, "priority": "high",
                                                   "invalid": ["not", "a", "dict"],
                                                   "adverts_sent": float("nan"), "tracks": [{"ok": True}]}],
        "frontends": {"not": "a list"},
    }
    half_valid = copy.deepcopy(FULL)
    half_valid["vrrp"][0]["state"] = "LEADER"
    half_valid["frontends"][0]["backends"][0]["total_connections"] = -1
    documents = [garbage, RuntimeError("status blew up"), {"vrrp": "nope"}, half_valid]

    def status() -> dict:
        item = documents.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def checks(url: str) -> None:
        first = samples(fetch(url + "/metrics"))
        assert value(first, "vipd_status_ok") == 1
        assert not any(name.startswith("vipd_vrrp") for name, _ in first)
        # node, vrrp[0], vrrp[1], frontends: 4; vrrp[2]: 10 missing; vrrp[3]: 4 wrong, 7 + 2 missing
        assert value(first, "vipd_status_problems") == 27
        second = samples(fetch(url + "/metrics"))
        assert value(second, "vipd_status_ok") == 0
        third = samples(fetch(url + "/metrics"))
        assert value(third, "vipd_status_ok") == 1
        assert value(third, "vipd_status_problems") == 3, "vrrp is not a list; node, frontends missing"
        # What matches the schema is still scraped; what does not is left out.
        fourth = samples(fetch(url + "/metrics"))
        assert value(fourth, "vipd_status_problems") == 2
        assert not any(name == "vipd_vrrp_state" for name, _ in fourth)
        assert value(fourth, "vipd_vrrp_adverts_sent_total", instance="api") == 1234
        b1 = {"frontend": "api", "backend": "198.18.0.21:6443"}
        assert ("vipd_backend_connections_total", tuple(sorted(b1.items()))) not in fourth
        assert value(fourth, "vipd_backend_bytes_in_total", **b1) == 5000

    scrape_with(status, checks)
    assert documents == []


@pytest.mark.timeout(60)
def test_openmetrics_when_asked_and_ipv6_loopback() -> None:
    def checks(url: str) -> None:
        req = urllib.request.Request(url + "/metrics",
                                     headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        with urllib.request.urlopen(req, timeout=10) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            body = response.read().decode()
        assert body.rstrip().endswith("# EOF")
        assert 'vipd_vrrp_adverts_sent_total{instance="api"} 1234.0' in body

    async def main() -> None:
        server = MetricsServer("[::1]:0", lambda: FULL)
        try:
            await server.start()
        except OSError as exc:
            pytest.skip(f"no IPv6 loopback: {exc}")
        try:
            host, port = server.address
            assert host == "::1"
            await asyncio.wait_for(asyncio.to_thread(checks, f"http://[::1]:{port}"), 60)
        finally:
            await server.stop()
    asyncio.run(main())


@pytest.mark.timeout(60)
def test_serves_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop", reason="needs uvloop (the daemon's event loop)")

    async def main() -> None:
        server = MetricsServer("127.0.0.1:0", lambda: FULL)
        await server.start()
        try:
            host, port = server.address
            text = await asyncio.wait_for(asyncio.to_thread(fetch, f"http://{host}:{port}/metrics"), 60)
        finally:
            await server.stop()
        assert value(samples(text), "vipd_backend_bytes_out_total",
                     frontend="api", backend="198.18.0.21:6443") == 70000

    uvloop.run(main())


@pytest.mark.timeout(60)
def test_a_killed_listener_is_started_again_on_the_same_port(caplog) -> None:
    async def main() -> None:
        server = MetricsServer("127.0.0.1:0", lambda: FULL)
        server.backoff = Backoff(first=0.2, most=0.4)
        await server.start()
        try:
            host, port = server.address
            url = f"http://{host}:{port}/metrics"
            first = samples(await asyncio.to_thread(fetch, url))
            assert value(first, "vipd_metrics_listener_restarts_total") == 0
            for restart in (1, 2):
                pid = server._proc.pid
                os.kill(pid, signal.SIGKILL)
                # Asked while the listener is down: the request waits in the kept socket's backlog.
                again = samples(await asyncio.to_thread(fetch, url))
                assert server._proc.pid != pid and server.address == (host, port)
                assert value(again, "vipd_metrics_listener_restarts_total") == restart
                assert value(again, "vipd_vrrp_adverts_sent_total", instance="api") == 1234
        finally:
            await server.stop()

    with caplog.at_level(logging.INFO, logger="vipd.metrics"):
        asyncio.run(main())
    died = [r.getMessage() for r in caplog.records if "died" in r.getMessage()]
    assert len(died) == 2 and all("killed by SIGKILL" in line for line in died), died
    assert "starting it again in 0.2 s (restart 1)" in died[0] and "(restart 2)" in died[1]
