"""Takes docs/status-page.png: the status page of a sample edge node, served by a real
MetricsServer on loopback and shown in headless Chromium (Debian's /usr/bin/chromium, driven by
Playwright from the test extra).

    .venv/bin/python scripts/screenshot_status_page.py [OUT.png]
"""
from __future__ import annotations

import asyncio
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vipd.control.metrics import MetricsServer  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


NOW = time.time()


def _utc(seconds_ago: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(NOW - seconds_ago))


def sample_document() -> dict:
    """An edge in front of three kube-apiservers, one being drained and one failing its check."""
    backend = lambda address, state, active, total, failed, health, error=None: {
        "address": address, "state": state, "active_connections": active, "total_connections": total,
        "failed_connections": failed, "weight": 1, "health": health, "last_error": error,
        "check_latency_seconds": 0.0031}
    return {
        "node": "edge-1", "pid": 4127, "config": "/etc/vipd/vipd.toml",
        "vrrp": [
            {"name": "api", "state": "BACKUP", "vrid": 51, "interface": "eth0", "version": 3,
             "priority": 150, "effective_priority": 150, "virtual_ips": ["198.18.0.100/24"],
             "master": "198.18.0.12", "since": _utc(754), "transitions": 3, "maintenance": False,
             "tracks": [{"name": "frontend:api", "ok": True, "weight": -60},
                        {"name": "interface:eth0", "ok": True, "weight": 0}]},
            {"name": "api-v6", "state": "FAULT", "vrid": 52, "interface": "eth1", "version": 3,
             "priority": 100, "effective_priority": 100, "virtual_ips": ["2001:db8::100/64"],
             "master": None, "since": _utc(95), "transitions": 2, "maintenance": False,
             "fault_reason": "link eth1 is down",
             "tracks": [{"name": "interface:eth1", "ok": False, "weight": 0}]},
        ],
        "frontends": [
            {"name": "api", "listen": "198.18.0.100:6443", "balance": "least_conn", "active_connections": 41,
             "total_connections": 18231, "failed_connections": 2, "serving": True, "workers": 2,
             "backends": [
                 {**backend("198.18.0.21:6443", "up", 22, 9120, 0, "3/3 UP"), "weight": 2},
                 backend("198.18.0.22:6443", "drain", 19, 9109, 2, "3/3 UP"),
                 backend("198.18.0.23:6443", "down", 0, 2, 0, "0/3 DOWN",
                         "GET /readyz: HTTP 500 (apiserver shutting down)"),
             ]},
        ],
    }


def sample_events() -> list[dict]:
    now = NOW
    return [
        {"time": now - 754, "type": "vrrp", "name": "api", "state": "BACKUP", "reason": "higher priority master"},
        {"time": now - 300, "type": "drain", "frontend": "api", "backend": "198.18.0.22:6443", "by": "lbctl"},
        {"time": now - 131, "type": "health", "frontend": "api", "backend": "198.18.0.23:6443",
         "state": "down", "reason": "GET /readyz: HTTP 500"},
        {"time": now - 95, "type": "vrrp", "name": "api-v6", "state": "FAULT", "reason": "link eth1 is down"},
    ]


async def take(out: Path) -> None:
    from playwright.async_api import async_playwright

    document = sample_document()
    v6 = document["vrrp"][1]
    served = copy.deepcopy(document)
    served["vrrp"][0].update(state="MASTER", since=_utc(1500), master="198.18.0.11")
    served["vrrp"][1].update(state="BACKUP", since=_utc(700), fault_reason=None, master="198.18.0.12",
                             tracks=[{**v6["tracks"][0], "ok": True}])
    server = MetricsServer("127.0.0.1:0", lambda: served, sample_events)
    await server.start()
    try:
        host, port = server.address
        server.page.document()              # the history shows the states seen before the current ones
        served.clear()
        served.update(document)
        async with async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 800}, device_scale_factor=1)
                await page.goto(f"http://{host}:{port}/")
                await page.wait_for_selector("#conn.live")
                await page.screenshot(path=str(out), full_page=True)
            finally:
                await browser.close()
    finally:
        await server.stop()


def main() -> int:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "docs" / "status-page.png")
    if not Path(CHROMIUM).exists():
        print(f"screenshot: needs {CHROMIUM} (Debian package chromium; scripts/install.sh)", file=sys.stderr)
        return 2
    asyncio.run(take(out))
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
