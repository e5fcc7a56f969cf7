"""Config validation: every problem named with file, key path and reason; defaults defined once.
(The `vipd check` / `lbproxy check` commands themselves are tested in tests/local/test_cli.py.)"""
import ipaddress
import os
import re
import tomllib
from operator import attrgetter
from pathlib import Path

import pytest
from support import GOOD_CONFIG as GOOD
from support import VRRP_ONLY_CONFIG

from lbproxy.config import BackendConfig, Balance, FrontendConfig, HealthType
from lbproxy.configreader import split_host_port
from vipd.config import ConfigError, NodeConfig, load, parse
from vipd.vrrp.config import VrrpConfig
from vipd.vrrp.packet import ChecksumMode

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"
FILE = "F.toml"


def write(tmp_path, text):
    path = tmp_path / "vipd.toml"
    path.write_text(text)
    return path


def problems_of(text, **required):
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text), FILE, **required)
    return caught.value.problems


@pytest.mark.timeout(10)
def test_contract_example_is_valid():
    if not CONTRACT.exists():
        pytest.skip(f"contract not found at {CONTRACT}")
    example = re.search(r"```toml\n(.*?)```", CONTRACT.read_text(), re.S).group(1)
    cfg = parse(tomllib.loads(example), "contract")
    assert cfg.node.name == "edge-1" and cfg.node.workers == 2
    vrrp = cfg.vrrp[0]
    assert (vrrp.vrid, vrrp.priority, vrrp.version, vrrp.advert_interval) == (51, 150, 3, 1.0)
    assert [t.name for t in vrrp.tracks] == [
        "script:/usr/local/bin/check-something --flag", "frontend:api", "interface:eth1"]
    assert vrrp.notify.for_state("MASTER") == "/usr/local/bin/on-master"
    fe = cfg.frontends[0]
    assert (fe.balance, fe.retries, fe.health.type, fe.health.fall) == ("least_conn", 2, "https", 3)
    assert fe.backends[0].host == "198.18.0.21" and fe.backends[0].port == 6443


@pytest.mark.timeout(10)
def test_good_config_loads_with_defaults(tmp_path):
    cfg = load(write(tmp_path, GOOD))
    assert cfg.path == str(tmp_path / "vipd.toml")
    assert cfg.vrrp[0].preempt is True and cfg.vrrp[0].garp_repeat == 3
    assert cfg.vrrp[0].checksum_mode is ChecksumMode.PSEUDO_HEADER
    assert cfg.frontends[0].idle_timeout == 600.0
    assert cfg.frontends[0].balance == Balance.ROUND_ROBIN and cfg.frontends[0].health.type == HealthType.TCP
    assert cfg.frontend("api").listen_port == 6443 and cfg.frontend("web") is None


MINIMAL = {
    "node": 'name = "n"',
    "vrrp": 'name = "v"\ninterface = "eth0"\nvrid = 7\nvirtual_ips = ["198.18.0.100/24"]',
    "frontend": 'name = "f"\nlisten = "127.0.0.1:8080"\n[[frontend.backend]]\naddress = "198.18.0.21:80"',
}


def built_from_defaults(section):
    """The same section built from the dataclass's own defaults (required fields only)."""
    if section == "node":
        return NodeConfig(name="n")
    if section == "vrrp":
        return VrrpConfig(name="v", interface="eth0", vrid=7,
                          virtual_ips=(ipaddress.ip_interface("198.18.0.100/24"),))
    return FrontendConfig(name="f", listen="127.0.0.1:8080", listen_host="127.0.0.1", listen_port=8080,
                          backends=(BackendConfig("198.18.0.21:80", "198.18.0.21", 80),))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("section", sorted(MINIMAL))
def test_the_parser_and_the_dataclass_agree_on_every_default(section):
    header = "[node]" if section == "node" else f"[[{section}]]"
    cfg = parse(tomllib.loads(f"{header}\n{MINIMAL[section]}\n"), FILE)
    parsed = {"node": cfg.node, "vrrp": cfg.vrrp[:1], "frontend": cfg.frontends[:1]}[section]
    expected = built_from_defaults(section)
    assert parsed == (expected if section == "node" else (expected,))


@pytest.mark.timeout(10)
@pytest.mark.parametrize("cpus,workers", [(7, 7), (None, 1)])
def test_workers_default_to_the_cpu_count_in_the_dataclass_and_the_parser(monkeypatch, cpus, workers):
    monkeypatch.setattr(os, "cpu_count", lambda: cpus)
    assert NodeConfig(name="n").workers == workers
    assert parse(tomllib.loads('[node]\nname = "n"\n'), FILE).node.workers == workers
    assert parse(tomllib.loads(GOOD.replace("workers = 2\n", "")), FILE).node.workers == workers


@pytest.mark.timeout(10)
@pytest.mark.parametrize("old,new,expected", [
    ("priority = 150", "priority = 0", "vrrp[0].priority: must be 1..254 (255 = address owner), got 0"),
    ("vrid = 51", "vrid = 256", "vrrp[0].vrid: must be 1..255, got 256"),
    ("vrid = 51", 'vrid = "51"', "vrrp[0].vrid: must be int, got '51'"),
    ("advert_interval = 0.05", "advert_interval = 0.005",
     "vrrp[0].advert_interval: VRRPv3 needs 0.01 s steps from 0.01 to 40.95, got 0.005"),
    ("advert_interval = 0.05", "advert_interval = 41",
     "vrrp[0].advert_interval: VRRPv3 needs 0.01 s steps from 0.01 to 40.95, got 41"),
    ("advert_interval = 0.05", "advert_interval = 0.05\nversion = 2",
     "vrrp[0].advert_interval: VRRPv2 needs whole seconds 1..255, got 0.05"),
    ('virtual_ips = ["198.18.0.100/24"]', 'virtual_ips = ["198.18.0.300/24"]',
     "vrrp[0].virtual_ips[0]: must be an address like 198.18.0.100/24, got '198.18.0.300/24'"),
    ('virtual_ips = ["198.18.0.100/24"]', 'virtual_ips = ["198.18.0.100/24", "2001:db8::100/64"]',
     "vrrp[0].virtual_ips: mixes IPv4 and IPv6; use one instance per family"),
    ('virtual_ips = ["198.18.0.100/24"]', 'virtual_ips = []', "vrrp[0].virtual_ips: must list at least one address"),
    ("priority = 150", "priority = 150\nprio = 1", "vrrp[0].prio: unknown key"),
    ('frontend = "api"', 'frontend = "web"', "vrrp[0].track[0].frontend: no [[frontend]] named 'web'"),
    ('frontend = "api"\n  weight = -60', 'frontend = "api"\n  weight = -600',
     "vrrp[0].track[0].weight: must be -254..254, got -600"),
    # A prefix: the line goes on with a second "got" (split_host_port's reason already holds one).
    ('listen = "0.0.0.0:6443"', 'listen = "0.0.0.0:99999"', "frontend[0].listen: port must be 1..65535, got '99999'"),
    ('address = "198.18.0.21:6443"', 'address = "2001:db8::1:6443"',
     "frontend[0].backend[0].address: IPv6 addresses need brackets: [ADDR]:PORT, got '2001:db8::1:6443'"),
    ("workers = 2", "workers = 0", "node.workers: must be 1..256, got 0"),
    ("workers = 2", "workers = true", "node.workers: must be int, got True"),
])
def test_each_problem_names_file_key_and_reason(old, new, expected):
    assert old in GOOD
    problems = problems_of(GOOD.replace(old, new, 1))
    assert len(problems) == 1 and problems[0].startswith(f"{FILE}: {expected}"), problems


VOCABULARIES = [
    ('listen = "0.0.0.0:6443"', 'listen = "0.0.0.0:6443"\nbalance = {}', "frontend[0].balance", Balance),
    ('listen = "0.0.0.0:6443"', 'listen = "0.0.0.0:6443"\n[frontend.health]\ntype = {}',
     "frontend[0].health.type", HealthType),
    ("vrid = 51", "vrid = 51\nchecksum_mode = {}", "vrrp[0].checksum_mode", ChecksumMode),
]


def value_at(cfg, key):
    """'frontend[0].health.type' -> cfg.frontends[0].health.type"""
    section, _, attributes = key.partition(".")
    node = cfg.frontends[0] if section == "frontend[0]" else cfg.vrrp[0]
    return attrgetter(attributes)(node)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("old,new,key,vocabulary", VOCABULARIES, ids=[v[2] for v in VOCABULARIES])
def test_a_word_outside_a_vocabulary_is_refused_naming_the_enum_values(old, new, key, vocabulary):
    allowed = ", ".join(member.value for member in vocabulary)
    assert problems_of(GOOD.replace(old, new.format('"fastest"'), 1)) == [
        f"{FILE}: {key}: must be one of {allowed}, got 'fastest'"]
    for member in vocabulary:
        cfg = parse(tomllib.loads(GOOD.replace(old, new.format(f'"{member.value}"'), 1)), FILE)
        assert value_at(cfg, key) == member


@pytest.mark.timeout(10)
def test_all_problems_reported_at_once():
    text = GOOD.replace("vrid = 51", "vrid = 0").replace("priority = 150", "priority = 999").replace(
        "workers = 2", "workers = -1")
    assert sorted(problems_of(text)) == sorted([
        f"{FILE}: node.workers: must be 1..256, got -1",
        f"{FILE}: vrrp[0].vrid: must be 1..255, got 0",
        f"{FILE}: vrrp[0].priority: must be 1..254 (255 = address owner), got 999"])


@pytest.mark.timeout(10)
def test_cross_checks():
    text = GOOD + GOOD[GOOD.index("[[vrrp]]"):]
    assert problems_of(text) == [
        f"{FILE}: vrrp[1].name: duplicate instance name 'api' (also vrrp[0])",
        f"{FILE}: vrrp[1].vrid: vrid 51 on eth0 is already used by vrrp[0]",
        f"{FILE}: frontend[1].name: duplicate frontend name 'api' (also frontend[0])",
        f"{FILE}: frontend[1].listen: 0.0.0.0:6443 is already used by frontend[0]"]


@pytest.mark.timeout(10)
def test_v2_rules():
    v2 = GOOD.replace("advert_interval = 0.05", 'advert_interval = 1\nversion = 2\nauth_pass = "s3cret"')
    assert parse(tomllib.loads(v2), FILE).vrrp[0].auth_pass == "s3cret"
    v3auth = GOOD.replace("advert_interval = 0.05", 'advert_interval = 1\nauth_pass = "s3cret"')
    assert problems_of(v3auth) == [
        f"{FILE}: vrrp[0].auth_pass: VRRPv3 has no authentication (RFC 5798); remove it or use version = 2"]
    v2v6 = v2.replace('"198.18.0.100/24"', '"2001:db8::100/64"')
    assert problems_of(v2v6) == [f"{FILE}: vrrp[0].virtual_ips: VRRPv2 carries IPv4 only; use version = 3 for IPv6"]


NOTHING = '[node]\nname = "n"\n'


@pytest.mark.timeout(10)
def test_lbproxy_needs_a_frontend_and_vipd_needs_something_to_run():
    assert problems_of(VRRP_ONLY_CONFIG, require_frontend=True) == [
        f"{FILE}: frontend: lbproxy needs at least one [[frontend]]"]
    assert parse(tomllib.loads(VRRP_ONLY_CONFIG), FILE, require_vrrp=True).frontends == ()
    assert problems_of(NOTHING, require_vrrp=True) == [f"{FILE}: vrrp: nothing to run: no [[vrrp]] and no [[frontend]]"]
    assert len(parse(tomllib.loads(GOOD), FILE, require_frontend=True, require_vrrp=True).frontends) == 1
    # Without a requirement, an empty node is a valid (if idle) config.
    assert parse(tomllib.loads(NOTHING), FILE).vrrp == ()


@pytest.mark.timeout(10)
def test_unreadable_and_malformed_files_are_one_line(tmp_path):
    missing = tmp_path / "missing.toml"
    with pytest.raises(ConfigError) as caught:
        load(missing)
    assert caught.value.problems == [f"{missing}: cannot read: No such file or directory"]
    syntax = write(tmp_path, "[[vrrp]\nname=")
    with pytest.raises(ConfigError) as caught:
        load(syntax)
    assert len(caught.value.problems) == 1 and caught.value.problems[0].startswith(f"{syntax}: TOML syntax: ")
    binary = tmp_path / "binary.toml"
    binary.write_bytes(b"name = '\xff'\n")
    with pytest.raises(ConfigError) as caught:
        load(binary)
    assert caught.value.problems == [f"{binary}: not UTF-8 text"]


@pytest.mark.timeout(10)
def test_split_host_port():
    assert split_host_port("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert split_host_port("api.example:6443") == ("api.example", 6443)
    for bad in ("nohost", ":80", "1.2.3.4:0", "[::1]80"):
        with pytest.raises(ValueError):
            split_host_port(bad)
