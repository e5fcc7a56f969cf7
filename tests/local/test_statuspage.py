"""The status page and /status.json on a real MetricsServer on loopback: as curl sees them, and in
a real headless Chromium (Debian's /usr/bin/chromium driven by Playwright)."""
from __future__ import annotations

import asyncio
import contextlib
import copy
import html
import json
import os
import re
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from vipd.control.metrics import MetricsServer
from vipd.control.statuspage import StatusPage

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
XSS_BACKEND = '<img src=x onerror="window.__xss=1">:80'
XSS_TRACK = "script:/bin/check </td><script>window.__xss=2</script>"

DOCUMENT = {
    "node": "edge-7",
    "vrrp": [
        {"name": "api", "state": "MASTER", "vrid": 51, "interface": "eth0", "version": 3,
         "priority": 150, "effective_priority": 90, "virtual_ips": ["198.18.0.100/24"],
         "master": "198.18.0.11", "since": "2026-11-26T23:00:00Z", "transitions": 3,
         "tracks": [{"name": "frontend:api", "ok": False, "weight": -60},
                    {"name": XSS_TRACK, "ok": True, "weight": 0}]},
    ],
    "frontends": [
        {"name": "api", "listen": "0.0.0.0:6443", "active_connections": 3,
         "backends": [
             {"address": "198.18.0.21:6443", "state": "up", "active_connections": 1,
              "total_connections": 10, "failed_connections": 2, "weight": 5, "health": "3/3 UP"},
             {"address": "198.18.0.22:6443", "state": "down", "active_connections": 0,
              "total_connections": 4, "failed_connections": 0, "health": "0/3 DOWN",
              "last_error": "GET /healthz: HTTP 503"},
             {"address": XSS_BACKEND, "state": "up", "active_connections": 0,
              "total_connections": 0, "failed_connections": 0},
         ]},
    ],
}


class Served:
    """A MetricsServer on an ephemeral loopback port, in a thread with its own event loop, serving
    whatever `document` holds when asked."""

    def __init__(self, document: dict, events=None) -> None:
        self.document = document
        self.events = events
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = MetricsServer("127.0.0.1:0", lambda: self.document, self.events)
        try:
            await server.start()
            host, port = server.address
            self.url = f"http://{host}:{port}"
            self._ready.set()
            await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
        finally:
            await server.stop()

    def __enter__(self) -> "Served":
        self._thread.start()
        assert self._ready.wait(10), "the metrics server did not start"
        if self._error:
            raise self._error
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


def get(url: str, method: str = "GET") -> tuple[int, dict, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read().decode()


def row_text(page: str, attribute: str, value: str) -> str:
    """The text of the table row whose `attribute` is `value`, tags stripped, spaces collapsed."""
    rows = re.findall(rf'<tr {attribute}="{re.escape(html.escape(value, quote=True))}"[^>]*>(.*?)</tr>', page, re.S)
    assert len(rows) == 1, f"expected one row {attribute}={value!r}, found {len(rows)}"
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", rows[0])).split())


def test_the_page_shows_instances_and_backends_as_text():
    with Served(copy.deepcopy(DOCUMENT)) as served:
        code, headers, page = get(served.url + "/")
    assert code == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert "<title>vipd · edge-7</title>" in page
    api = row_text(page, "data-instance", "api")
    for shown in ("MASTER", "90 of 150", "198.18.0.11", "198.18.0.100/24", "VRID 51 · eth0 · v3",
                  "failing frontend:api weight -60", "FAULT while failing", "3 transition(s) since start"):
        assert shown in api, api
    assert row_text(page, "data-backend", "198.18.0.21:6443") == "198.18.0.21:6443 UP 3/3 UP 5 1 10 2"
    assert row_text(page, "data-backend", "198.18.0.22:6443") == \
        "198.18.0.22:6443 DOWN 0/3 DOWN 0 4 0 GET /healthz: HTTP 503"
    assert "no event stream" in page


def test_every_value_is_escaped():
    with Served(copy.deepcopy(DOCUMENT)) as served:
        _, headers, page = get(served.url + "/")
    # The page's own script is the only one, and the CSP allows only it (by hash).
    assert page.count("<script") == 1
    assert "<img" not in page
    assert html.escape(XSS_TRACK, quote=True) in page
    assert XSS_BACKEND in row_text(page, "data-backend", XSS_BACKEND)
    assert re.search(r"script-src 'sha256-[A-Za-z0-9+/]+=*';", headers["Content-Security-Policy"])
    assert "unsafe-inline" not in headers["Content-Security-Policy"].split("script-src")[1].split(";")[0]


def test_status_json_is_the_document_and_only_get_and_head_are_allowed():
    with Served(copy.deepcopy(DOCUMENT)) as served:
        code, headers, body = get(served.url + "/status.json")
        assert code == 200 and headers["Content-Type"] == "application/json; charset=utf-8"
        assert json.loads(body) == DOCUMENT
        for path in ("/", "/status.json", "/metrics"):
            code, _, body = get(served.url + path, "HEAD")
            assert (code, body) == (200, ""), path
            for method in ("POST", "PUT", "DELETE", "PATCH"):
                code, headers, _ = get(served.url + path, method)
                assert code == 405, (path, method)
                assert set(headers["Allow"].split(",")) == {"GET", "HEAD"}, (path, method)


def test_optional_fields_show_only_when_present():
    document = copy.deepcopy(DOCUMENT)
    with Served(document) as served:
        _, _, page = get(served.url + "/")
        assert "MAINTENANCE" not in page and 'class="reason"></td>' in page
        document["vrrp"][0].update(state="FAULT", maintenance=True, fault_reason="link eth0 is down")
        document["frontends"][0]["backends"][1]["health_reason"] = "connect: refused"
        _, _, page = get(served.url + "/")
    api = row_text(page, "data-instance", "api")
    assert "FAULT MAINTENANCE link eth0 is down since" in api, api
    assert row_text(page, "data-backend", "198.18.0.22:6443").endswith("connect: refused")


def test_events_are_listed_newest_first():
    events = [{"time": 1_800_000_000, "type": "drain", "frontend": "api", "backend": "198.18.0.21:6443"},
              {"time": 1_800_000_005, "type": "vrrp", "name": "api", "state": "<MASTER>"}]
    with Served(copy.deepcopy(DOCUMENT), lambda: events) as served:
        _, _, page = get(served.url + "/")
    table = re.search(r'<table id="events">.*?</table>', page, re.S).group(0)
    rows = [" ".join(html.unescape(re.sub(r"<[^>]+>", " ", r)).split())
            for r in re.findall(r"<tr>(.*?)</tr>", table.split("<tbody>")[1], re.S)]
    assert rows == ["08:00:05 vrrp name=api state=<MASTER>",
                    "08:00:00 drain frontend=api backend=198.18.0.21:6443"]


def test_the_history_keeps_the_states_seen_and_forgets_removed_instances():
    document = copy.deepcopy(DOCUMENT)
    page = StatusPage(lambda: document)
    page.document()
    page.document()
    document["vrrp"][0].update(state="BACKUP", since="2026-11-26T23:05:00Z")
    page.document()
    assert [(c.state, c.since) for c in page.history.of("vrrp", "api")] == [
        ("MASTER", "2026-11-26T23:00:00Z"), ("BACKUP", "2026-11-26T23:05:00Z")]
    document["vrrp"] = []
    page.document()
    assert page.history.of("vrrp", "api") == []


def test_a_failing_status_read_answers_503_with_the_reason_escaped():
    def broken():
        raise RuntimeError("<b>proxy gone</b>")
    async def main():
        server = MetricsServer("127.0.0.1:0", broken)
        await server.start()
        try:
            host, port = server.address
            return await asyncio.to_thread(lambda: (get(f"http://{host}:{port}/"),
                                                    get(f"http://{host}:{port}/status.json")))
        finally:
            await server.stop()
    (code, _, page), (json_code, _, body) = asyncio.run(main())
    assert code == 503 and "&lt;b&gt;proxy gone&lt;/b&gt;" in page and "<b>proxy" not in page
    assert json_code == 503 and json.loads(body) == {"error": "<b>proxy gone</b>"}


@contextlib.contextmanager
def chromium():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: scripts/install.sh installs Debian's chromium")
        pytest.skip(f"needs {CHROMIUM} (Debian package chromium; scripts/install.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.mark.timeout(90)
def test_in_a_real_browser_the_page_updates_after_a_drain_without_reloading():
    from playwright.sync_api import expect

    document = copy.deepcopy(DOCUMENT)
    backend = 'tr[data-backend="198.18.0.21:6443"] td.state'
    with Served(document) as served, chromium() as browser:
        page = browser.new_page()
        problems: list[str] = []
        page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
        page.on("dialog", lambda d: problems.append(f"dialog: {d.message}"))
        loads: list[str] = []
        page.on("load", lambda _: loads.append("load"))
        page.goto(served.url + "/")
        assert page.title() == "vipd · edge-7"
        assert page.inner_text('tr[data-instance="api"] td:nth-child(2)').split()[0] == "MASTER"
        assert page.inner_text(backend).strip() == "UP"
        assert page.locator(f'tr[data-backend="{XSS_BACKEND.replace(chr(34), chr(92) + chr(34))}"] code').inner_text() == XSS_BACKEND
        page.wait_for_selector("#conn.live", timeout=5000)
        page.evaluate("window.__marker = 'still here'")

        document["frontends"][0]["backends"][0]["state"] = "drain"
        document["vrrp"][0].update(state="BACKUP", since="2026-11-26T23:05:00Z", master="198.18.0.12")
        expect(page.locator(backend)).to_have_text("DRAIN", timeout=5000)

        assert page.evaluate("window.__marker") == "still here"
        assert loads == ["load"]
        instance = page.inner_text('tr[data-instance="api"]')
        assert "198.18.0.12" in instance and "MASTER" in instance and "BACKUP" in instance  # history
        assert page.evaluate("window.__xss") is None
        assert problems == []


@pytest.mark.timeout(60)
def test_without_javascript_the_browser_sees_the_same_rows():
    with Served(copy.deepcopy(DOCUMENT)) as served, chromium() as browser:
        context = browser.new_context(java_script_enabled=False)
        page = context.new_page()
        page.goto(served.url + "/")
        assert page.inner_text('tr[data-backend="198.18.0.22:6443"] td.state').strip() == "DOWN"
        assert "static page" in page.inner_text("#conn")
        context.close()
