"""Fuzzing the config loader at more than 100 000 inputs (issue 8).

`vipd.config.load` turns any exception into a one-line refusal, so a crash in a validator would
hide there; this calls `parse` itself, whose only way to refuse is ConfigError. Every case is a
rich, valid config (VRRP, election, anycast, proxy and nat frontends) with a few random
mutations: a value swapped for one of another type or out of range, a key dropped, an unknown key,
a table turned into a list. The parse must return a Config or raise ConfigError with lines that
name the file, and never anything else.
"""
import copy
import math
import random
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lbproxy.configreader import ConfigError
from vipd.config import Config, parse

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CASES, VARIANTS_PER_CASE = 1_000, 105      # 105 000 configs

BASE = tomllib.loads("""
[node]
name = "edge-1"
control_socket = "/tmp/vipd-fuzz.sock"
workers = 2
state_dir = "/tmp/vipd-fuzz-state"
log_format = "json"
script_security = false

[[vrrp]]
name = "api"
interface = "eth0"
vrid = 51
priority = 150
version = 3
advert_interval = 0.05
virtual_ips = ["198.18.0.100/24"]
unicast_peers = ["198.18.0.12"]
unicast_src = "198.18.0.11"
preempt_delay = 1.5
  [[vrrp.track]]
  frontend = "api"
  weight = -60
  [[vrrp.track]]
  script = "/bin/true --x"
  interval = 1.0
  rise = 2
  fall = 3
  [vrrp.notify]
  master = "/bin/true master"
  timeout = 5.0

[etcd]
endpoints = ["http://198.18.0.31:2379", "https://198.18.0.32:2379"]
lease_ttl = 3.0

[[election]]
name = "api-etcd"
interface = "eth0"
virtual_ips = ["198.18.0.101/24"]
priority = 120
  [[election.track]]
  frontend = "api"
  weight = 0

[[anycast]]
name = "api-anycast"
virtual_ips = ["198.18.1.100/32", "2001:db8::100/128"]
device = "vipd0"
  [[anycast.track]]
  frontend = "api"
  weight = 0

[[frontend]]
name = "api"
listen = "0.0.0.0:6443"
balance = "least_conn"
proxy_protocol = "v2"
accept_proxy_protocol = true
trusted_proxies = ["198.18.0.0/24", "2001:db8::/32"]
slow_start = 10.0
max_connections_per_source = 50
client_first_byte_timeout = 5.0
buffer_size = 16384
  [frontend.health]
  type = "http"
  path = "/readyz"
  interval = 0.5
  rise = 2
  fall = 3
  send_proxy = true
  [[frontend.backend]]
  address = "198.18.0.21:6443"
  weight = 3
  [[frontend.backend]]
  address = "198.18.0.29:6443"
  backup = true

[[frontend]]
name = "nat"
listen = "198.18.0.100:8080"
mode = "nat"
balance = "source_hash"
  [[frontend.backend]]
  address = "198.18.0.21:8080"
  [[frontend.backend]]
  address = "198.18.0.22:8080"
  weight = 2
""")

ODD_VALUES = [
    0, -1, 1, 255, 256, 65535, 65536, 2**63, -(2**63), 10**400, 0.0, -0.0, 1e-9, 1e308, math.inf, -math.inf,
    math.nan, True, False, "", " ", "x" * 5000, "\0", "é", "198.18.0.1", "198.18.0.1:0", "[::1]:70000",
    "0.0.0.0/0", "::/0", "2001:db8::1/129", "198.18.0.1/33", "http://", "https://[::1]:2379", "v3", "nat",
    "off", "/", "../../etc/passwd", [], [1], ["a", None], [[[]]], {}, {"a": {"b": {}}}, [{}], [{"x": 1}],
]


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    elif isinstance(tree, list) and tree and all(isinstance(x, dict) for x in tree):
        for i, value in enumerate(tree):
            yield from _leaves(value, (*path, i))
    yield path


def _holder(tree, path):
    for step in path[:-1]:
        tree = tree[step]
    return tree


def _random_value(rng: random.Random):
    choice = rng.random()
    if choice < 0.6:
        return copy.deepcopy(rng.choice(ODD_VALUES))     # a shared dict could come to hold itself
    if choice < 0.75:
        return rng.uniform(-1e6, 1e6)
    if choice < 0.9:
        return rng.randint(-70000, 70000)
    return "".join(rng.choice("ab:/.[]0123456789 \t\x01") for _ in range(rng.randint(0, 40)))


def _mutate(config: dict, rng: random.Random, count: int) -> dict:
    config = copy.deepcopy(config)
    for _ in range(count):
        paths = [p for p in _leaves(config) if p]
        if not paths:
            break
        path = rng.choice(paths)
        holder = _holder(config, path)
        key = path[-1]
        action = rng.random()
        try:
            if action < 0.55:
                holder[key] = _random_value(rng)
            elif action < 0.7 and isinstance(holder, dict):
                del holder[key]
            elif action < 0.8 and isinstance(holder, dict):
                holder[rng.choice(["bogus", "vrid", "name", "weight", "mode", "track", "backend"])] = \
                    _random_value(rng)
            elif action < 0.9:
                holder[key] = [holder[key], copy.deepcopy(holder[key])]
            else:
                holder[key] = {"nested": holder[key]}
        except (TypeError, IndexError, KeyError):
            continue
    return config


def test_the_base_config_is_valid():
    assert isinstance(parse(copy.deepcopy(BASE), "F.toml", require_vrrp=True), Config)


@settings(max_examples=CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, 2**32 - 1), mutations=st.integers(1, 4))
def test_fuzz_config_parse_refuses_with_config_error_only(seed, mutations):
    rng = random.Random(seed)
    for _ in range(VARIANTS_PER_CASE):
        data = _mutate(BASE, rng, mutations)
        try:
            result = parse(data, "F.toml", require_vrrp=True)
        except ConfigError as exc:
            assert exc.problems and all(line.startswith("F.toml: ") for line in exc.problems)
            continue
        assert isinstance(result, Config)


@pytest.mark.parametrize("value", [1e308, -1e308, 2**63 - 1])
def test_huge_advert_interval_is_a_refusal_not_an_overflow(value):
    data = copy.deepcopy(BASE)
    data["vrrp"][0]["advert_interval"] = value
    with pytest.raises(ConfigError) as refused:
        parse(data, "F.toml", require_vrrp=True)
    assert refused.value.problems == [
        f"F.toml: vrrp[0].advert_interval: VRRPv3 needs 0.01 s steps from 0.01 to 40.95, got {float(value):g}"]
