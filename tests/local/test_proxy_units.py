"""The proxy's small parts on their own: IPC framing, config round trip, counters, listeners."""
from __future__ import annotations

import asyncio
import json
import select
import socket

import pytest

from lbproxy import ipc
from lbproxy.listener import make_listener
from lbproxy.status import TrafficTotals, add_counters, frontend_status
from vipd.config import parse


def test_a_frontend_config_survives_the_trip_to_a_worker():
    config = parse({"frontend": [{
        "name": "api", "listen": "[::]:6443", "balance": "least_conn", "idle_timeout": 30.0,
        "health": {"type": "https", "path": "/readyz", "expect": [200, 204], "tls_verify": True},
        "backend": [{"address": "198.18.0.21:6443", "weight": 3, "max_connections": 7},
                    {"address": "[2001:db8::22]:6443"}]}]})
    original = config.frontends[0]
    assert ipc.frontend_from_dict(json.loads(json.dumps(ipc.frontend_to_dict(original)))) == original


def test_the_channel_skips_and_counts_garbage():
    async def scenario():
        left, right = socket.socketpair()
        channel = await ipc.Channel.open(left)
        right.sendall(b"not json\n[1, 2]\n{\"no\": \"op\"}\n\xff\xfe\n{\"op\": \"stats\", \"n\": 1}\n")
        message = await channel.receive()
        right.close()
        end = await channel.receive()
        channel.close()
        return message, end, channel.garbage

    message, end, garbage = asyncio.run(scenario())
    assert message == {"op": "stats", "n": 1}
    assert end is None
    assert garbage == 4


def test_counter_documents_add_up_per_backend():
    a = {"active": 2, "accepted": 10, "listening": False,
         "backends": {"b1": {"total": 4, "bytes_in": 100}}}
    b = {"active": 1, "accepted": 5, "listening": True,
         "backends": {"b1": {"total": 1, "bytes_in": 1}, "b2": {"total": 3}}}
    assert add_counters(a, b) == {"active": 3, "accepted": 15, "listening": True,
                                  "backends": {"b1": {"total": 5, "bytes_in": 101}, "b2": {"total": 3}}}
    assert add_counters({}, a) == a


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET), ("::1", socket.AF_INET6)])
def test_listeners_share_the_port_and_pass_on_tcp_options(host, family):
    if family == socket.AF_INET6 and not socket.has_ipv6:
        pytest.skip("needs IPv6 on loopback")
    first = make_listener(host, 0)
    port = first.getsockname()[1]
    second = make_listener(host, port)           # SO_REUSEPORT: a second worker joins the port
    try:
        assert first.family == family and first.getblocking() is False
        assert first.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 1
        if family == socket.AF_INET6:
            assert first.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
        client = socket.create_connection((host, port), timeout=5)
        ready = [s for s in (first, second) if _accept_ready(s)]
        accepted, _ = ready[0].accept()
        with client, accepted:
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            assert accepted.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 60
    finally:
        first.close()
        second.close()


def _accept_ready(sock: socket.socket) -> bool:
    return bool(select.select([sock], [], [], 0.5)[0])


def test_totals_keep_an_exited_workers_counters_but_not_its_open_connections():
    totals = TrafficTotals()
    gone = {"api": {"active": 4, "accepted": 10, "failed": 1,
                    "backends": {"b1": {"active": 4, "total": 9, "bytes_in": 50}}}}
    live = {"api": {"active": 1, "accepted": 2, "backends": {"b1": {"active": 1, "total": 2}}},
            "web": {"active": 0, "accepted": 7, "backends": {}}}
    totals.retire(gone)
    assert totals.frontends([live]) == {
        "api": {"active": 1, "accepted": 12, "failed": 1,
                "backends": {"b1": {"active": 1, "total": 11, "bytes_in": 50}}},
        "web": {"active": 0, "accepted": 7, "backends": {}}}
    assert totals.frontends([]) == {"api": {"accepted": 10, "failed": 1,
                                            "backends": {"b1": {"total": 9, "bytes_in": 50}}}}


def test_a_frontends_status_joins_traffic_and_health():
    frontend = parse({"frontend": [{"name": "api", "listen": "127.0.0.1:6443", "balance": "least_conn",
                                    "backend": [{"address": "127.0.0.1:8081", "weight": 2},
                                                {"address": "127.0.0.1:8082", "backup": True}]}]}).frontends[0]
    counters = {"active": 3, "accepted": 20, "failed": 2, "refused": 1,
                "backends": {"127.0.0.1:8081": {"active": 3, "total": 18, "failed": 2,
                                                "bytes_in": 100, "bytes_out": 1000}}}
    health = [{"address": "127.0.0.1:8081", "state": "down", "health": "0/2 DOWN",
               "last_error": "connection refused", "health_reason": "connection refused",
               "check_latency_seconds": 0.001, "checks": 5,
               "check_failures": 3, "passive_failures": 2, "weight": 5, "overrides": {"weight": 5}}]
    status = frontend_status(frontend, counters, health, all_down=False, serving=True, workers=2,
                             using_backups=True)
    assert status == {
        "name": "api", "listen": "127.0.0.1:6443", "balance": "least_conn",
        "active_connections": 3, "total_connections": 20, "failed_connections": 2, "refused": 1,
        "bytes_in": 100, "bytes_out": 1000, "all_down": False, "using_backups": True, "serving": True,
        "workers": 2, "mode": "proxy",
        "backends": [
            {"address": "127.0.0.1:8081", "state": "down", "weight": 5, "backup": False,
             "effective_weight": 5.0, "slow_start_remaining": 0.0, "active_connections": 3,
             "total_connections": 18, "failed_connections": 2, "bytes_in": 100, "bytes_out": 1000,
             "health": "0/2 DOWN", "last_error": "connection refused", "health_reason": "connection refused",
             "check_latency_seconds": 0.001,
             "checks": 5, "check_failures": 3, "passive_failures": 2, "overrides": {"weight": 5}},
            {"address": "127.0.0.1:8082", "state": "up", "weight": 1, "backup": True,
             "effective_weight": 1.0, "slow_start_remaining": 0.0, "active_connections": 0,
             "total_connections": 0, "failed_connections": 0, "bytes_in": 0, "bytes_out": 0,
             "health": None, "last_error": None, "health_reason": None, "check_latency_seconds": None, "checks": 0,
             "check_failures": 0, "passive_failures": 0, "overrides": {}}]}
