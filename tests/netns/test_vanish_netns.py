"""A backend host vanishes (its link cut: SYNs go nowhere, no reset) under a client that opens a new
connection every 10 ms, with the frontend's default settings: no request fails, none waits a second.

A request whose bytes were already forwarded to be1 when its link went down cannot be saved by an L4
proxy (retry only before the first byte), so at most the one or two requests in flight at the cut
may time out; every request started after it must succeed."""
from __future__ import annotations

import time

import pytest
from test_proxy_helpers import Proxy, start_http_backend, wait_listening

from vipd.lab import connclient

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VIP = "198.18.0.10"
IN_FLIGHT = 0.1          # a request is answered in a few ms; one started this long before the cut is done


@pytest.mark.timeout(120)
def test_a_backend_host_vanishing_fails_no_new_connection_with_default_settings(lab, tmp_path):
    client = lab.add_host("client", ["198.18.0.5/24"])
    edge = lab.add_host("edge", [f"{VIP}/24"])
    backends = [lab.add_host(f"be{i}", [f"198.18.0.{20 + i}/24"]) for i in (1, 2)]
    for i, host in enumerate(backends, 1):
        start_http_backend(host, "0.0.0.0:8080", f"be{i}")
        wait_listening(host, 8080)
    proxy = Proxy(edge, tmp_path)
    try:
        # Nothing but the listen address and the backends: default timeouts, retries and health.
        proxy.write_config([{"name": "api", "listen": f"{VIP}:6443", "health": {},
                             "backends": ["198.18.0.21:8080", "198.18.0.22:8080"]}], workers=2)
        proxy.start()
        out = tmp_path / "client.json"
        load = client.python(["-m", "vipd.lab.connclient", "--target", f"{VIP}:6443", "--interval", "0.01",
                              "--duration", "4", "--timeout", "3", "--out", str(out)])
        time.sleep(1.0)                              # both backends serve, in both workers
        cutting_at = time.monotonic()
        backends[0].set_link(False)
        cut_at = time.monotonic()
        assert load.wait(timeout=30) == 0
        attempts = connclient.load(str(out))
        status = proxy.frontend()
    finally:
        proxy.stop()
    after = [a for a in attempts if a.start >= cut_at]
    in_flight = [a for a in attempts if cutting_at - IN_FLIGHT <= a.start < cut_at]
    settled = [a for a in attempts if a not in in_flight]
    whole, since_cut = connclient.summarize(attempts), connclient.summarize(after)
    be1 = next(b for b in status["backends"] if b["address"] == "198.18.0.21:8080")
    print(f"\nbe1's link cut under a new connection every 10 ms: {whole['requests']} requests, "
          f"{whole['failed']} failed; max latency {whole['max_latency'] * 1000:.0f} ms overall, "
          f"{since_cut['max_latency'] * 1000:.0f} ms after the cut ({since_cut['requests']} requests); "
          f"be1 {be1['state']}, {be1['passive_failures']} passive failures")
    assert whole["requests"] >= 300 and since_cut["requests"] >= 200
    assert since_cut["failed"] == 0, since_cut["errors"]
    assert connclient.summarize(settled)["failed"] == 0, whole
    lost = [a for a in in_flight if not a.ok]
    assert len(lost) <= 2 and {a.detail for a in lost} <= {"timeout"}, lost
    assert connclient.summarize(settled)["max_latency"] < 1.0, whole
    assert {a.detail for a in attempts if a.start < cut_at} == {"be1", "be2"}
    assert be1["state"] == "down" and be1["passive_failures"] >= 3, be1
