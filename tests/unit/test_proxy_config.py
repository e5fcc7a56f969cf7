"""The PROXY protocol keys of [[frontend]] and [frontend.health]: parsed and checked once."""
from __future__ import annotations

import json

import pytest

from lbproxy import ipc
from vipd.config import ConfigError, parse


def frontend(**keys):
    health = keys.pop("health", {})
    table = {"name": "api", "listen": "198.18.0.100:6443", "backend": [{"address": "198.18.0.21:6443"}],
             "health": health, **keys}
    return parse({"frontend": [table]}).frontends[0]


def refusal(**keys) -> str:
    with pytest.raises(ConfigError) as caught:
        frontend(**keys)
    return str(caught.value)


def test_defaults_send_and_accept_nothing():
    f = frontend()
    assert (f.proxy_protocol, f.accept_proxy_protocol, f.trusted_proxies, f.health.send_proxy) == \
        ("off", False, (), False)


def test_trusted_proxies_are_normalized_networks():
    f = frontend(accept_proxy_protocol=True, trusted_proxies=["198.18.0.5", "198.18.1.7/24", "2001:db8::/32"])
    assert f.trusted_proxies == ("198.18.0.5/32", "198.18.1.0/24", "2001:db8::/32")


@pytest.mark.parametrize("keys, message", [
    ({"proxy_protocol": "v3"}, "proxy_protocol: must be one of off, v1, v2"),
    ({"proxy_protocol": True}, "proxy_protocol: must be str"),
    ({"accept_proxy_protocol": True}, "accept_proxy_protocol needs the addresses of the balancers"),
    ({"accept_proxy_protocol": True, "trusted_proxies": ["198.18.0.300"]},
     "trusted_proxies[0]: must be an address or a network (CIDR)"),
    ({"trusted_proxies": [5]}, "trusted_proxies[0]: must be an address or a network"),
    ({"health": {"send_proxy": "yes"}}, "send_proxy: must be bool"),
    ({"health": {"check_send_proxy": True}}, "send_proxy"),
])
def test_bad_values_are_refused_with_the_key(keys, message):
    assert message in refusal(**keys)


@pytest.mark.parametrize("keys, send_proxy", [
    ({"proxy_protocol": "v2"}, True),                                    # checks carry it, as HAProxy
    ({"proxy_protocol": "v1", "health": {"port": 8081}}, False),         # a separate check port: not
    ({"proxy_protocol": "v2", "health": {"send_proxy": False}}, False),
    ({"health": {"send_proxy": True}}, True),
])
def test_checks_send_the_header_by_default_only_when_traffic_does_on_the_same_port(keys, send_proxy):
    assert frontend(**keys).health.send_proxy is send_proxy


def test_the_new_keys_survive_the_trip_to_the_workers():
    f = frontend(proxy_protocol="v1", accept_proxy_protocol=True, trusted_proxies=["198.18.0.0/24"])
    assert ipc.frontend_from_dict(json.loads(json.dumps(ipc.frontend_to_dict(f)))) == f
