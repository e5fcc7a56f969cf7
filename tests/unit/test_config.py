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
from lbproxy.host import Host
from vipd.config import ConfigError, NodeConfig, load, parse
from vipd.vrrp.config import Track, VrrpConfig, script_program
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
        "script:check-something", "frontend:api", "interface:eth1"]
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


# --- `vipd check` that teaches (issue 10): unknown keys explained, secrets hidden, what can never
# work refused, what may be fine at run time warned about.

IN_VRRP, IN_TRACK, IN_FRONTEND, IN_BACKEND = "priority = 150", 'frontend = "api"', 'listen = "0.0.0.0:6443"', \
    'address = "198.18.0.21:6443"'
IN_NODE, IN_HEALTH, IN_NOTIFY = "workers = 2", "[frontend.health]", "[vrrp.notify]"


def with_line(anchor, line):
    """GOOD with `line` added after the line holding `anchor` (so it lands in that table); a
    table GOOD lacks is added, at the end of its parent table."""
    if anchor == IN_HEALTH:
        return GOOD.replace(IN_FRONTEND, f"{IN_FRONTEND}\n{IN_HEALTH}\n{line}", 1)
    if anchor == IN_NOTIFY:
        return GOOD.replace("\n[[frontend]]", f"\n{IN_NOTIFY}\n{line}\n\n[[frontend]]", 1)
    assert anchor in GOOD
    return GOOD.replace(anchor, f"{anchor}\n{line}", 1)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("anchor,line,expected", [
    (IN_VRRP, "virtual_router_id = 51", "vrrp[0].virtual_router_id: unknown key (keepalived's name; vipd calls it vrid)"),
    (IN_VRRP, "advert_int = 1", "vrrp[0].advert_int: unknown key (keepalived's name; vipd calls it advert_interval)"),
    (IN_VRRP, 'virtual_ipaddress = ["198.18.0.100/24"]',
     "vrrp[0].virtual_ipaddress: unknown key (keepalived's name; vipd calls it virtual_ips)"),
    (IN_VRRP, "nopreempt = true", "vrrp[0].nopreempt: unknown key (keepalived's name; vipd: preempt = false)"),
    (IN_VRRP, 'unicast_peer = ["198.18.0.12"]',
     "vrrp[0].unicast_peer: unknown key (keepalived's name; vipd calls it unicast_peers)"),
    (IN_VRRP, 'unicast_src_ip = "198.18.0.11"',
     "vrrp[0].unicast_src_ip: unknown key (keepalived's name; vipd calls it unicast_src)"),
    (IN_VRRP, 'state = "MASTER"',
     "vrrp[0].state: unknown key (keepalived's name; vipd elects the master by priority; remove it)"),
    (IN_VRRP, 'track_script = ["chk"]',
     "vrrp[0].track_script: unknown key (keepalived's name; vipd: a [[vrrp.track]] table with script = ...)"),
    (IN_VRRP, 'notify_master = "/bin/true"',
     "vrrp[0].notify_master: unknown key (keepalived's name; vipd: master = ... in [vrrp.notify])"),
    (IN_VRRP, "fall = 2", "vrrp[0].fall: unknown key (it belongs in a [[vrrp.track]] table)"),
    (IN_VRRP, "interval = 2",
     "vrrp[0].interval: unknown key (it belongs in a [[vrrp.track]] table; the adverts' interval is advert_interval)"),
    (IN_VRRP, "advert_intreval = 1", 'vrrp[0].advert_intreval: unknown key; did you mean "advert_interval"?'),
    (IN_VRRP, "prio = 1", 'vrrp[0].prio: unknown key; did you mean "priority"?'),
    (IN_VRRP, "colour = 1", "vrrp[0].colour: unknown key"),
    (IN_TRACK, "inteval = 2", 'vrrp[0].track[0].inteval: unknown key; did you mean "interval"?'),
    (IN_FRONTEND, 'server = "198.18.0.22:6443"',
     "frontend[0].server: unknown key (nginx's name; vipd: a [[frontend.backend]] table with address = ...)"),
    (IN_FRONTEND, 'upstream = "api"',
     "frontend[0].upstream: unknown key (nginx's name; vipd sends to this [[frontend]]'s [[frontend.backend]] tables)"),
    (IN_FRONTEND, 'proxy_pass = "api"',
     "frontend[0].proxy_pass: unknown key (nginx's name; vipd sends to this [[frontend]]'s [[frontend.backend]] tables)"),
    (IN_FRONTEND, "proxy_connect_timeout = 1",
     "frontend[0].proxy_connect_timeout: unknown key (nginx's name; vipd calls it connect_timeout)"),
    (IN_FRONTEND, "proxy_timeout = 60", "frontend[0].proxy_timeout: unknown key (nginx's name; vipd calls it idle_timeout)"),
    (IN_FRONTEND, "least_conn = true", "frontend[0].least_conn: unknown key (nginx's name; vipd: balance = \"least_conn\")"),
    (IN_FRONTEND, "max_fails = 3",
     "frontend[0].max_fails: unknown key (nginx's name; vipd checks backends actively: fall in [frontend.health])"),
    (IN_FRONTEND, 'bind = ":6443"', "frontend[0].bind: unknown key (HAProxy's name; vipd calls it listen)"),
    (IN_FRONTEND, "maxconn = 100", "frontend[0].maxconn: unknown key (HAProxy's name; vipd calls it max_connections)"),
    (IN_FRONTEND, "inter = 2", "frontend[0].inter: unknown key (HAProxy's name; vipd: interval in [frontend.health])"),
    (IN_FRONTEND, "rise = 2", "frontend[0].rise: unknown key (it belongs in [frontend.health])"),
    (IN_FRONTEND, "connect-timeout = 1", 'frontend[0].connect-timeout: unknown key; did you mean "connect_timeout"?'),
    (IN_HEALTH, "inter = 2", "frontend[0].health.inter: unknown key (HAProxy's name; vipd calls it interval)"),
    (IN_BACKEND, "max_fails = 3",
     "frontend[0].backend[0].max_fails: unknown key (nginx's name; vipd checks backends actively: fall in [frontend.health])"),
    (IN_BACKEND, "max_conns = 10", "frontend[0].backend[0].max_conns: unknown key (nginx's name; vipd calls it max_connections)"),
    (IN_NODE, 'router_id = "edge"', "node.router_id: unknown key (keepalived's name; vipd calls it name)"),
    (IN_NODE, "worker_processes = 2", "node.worker_processes: unknown key (nginx's name; vipd calls it workers)"),
])
def test_an_unknown_key_is_answered_with_the_name_vipd_uses(anchor, line, expected):
    assert problems_of(with_line(anchor, line)) == [f"{FILE}: {expected}"]


@pytest.mark.timeout(10)
def test_a_keepalived_block_at_the_top_is_answered_with_its_table():
    assert problems_of("[vrrp_instance]\nstate = 'MASTER'\n" + GOOD) == [
        f"{FILE}: vrrp_instance: unknown key (keepalived's name; vipd calls it [[vrrp]])"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("written,meant", [
    ("leastconn", "least_conn"), ("roundrobin", "round_robin"), ("source", "source_hash"),
    ("hash", "source_hash"), ("random", "random2"), ("least-conn", "least_conn"), ("round_robbin", "round_robin")])
def test_another_tools_balance_word_is_answered_with_ours(written, meant):
    allowed = ", ".join(b.value for b in Balance)
    assert problems_of(with_line(IN_FRONTEND, f'balance = "{written}"')) == [
        f'{FILE}: frontend[0].balance: must be one of {allowed}, got {written!r}; did you mean "{meant}"?']


SECRET = "Zq7#pw!x"
V2 = GOOD.replace("advert_interval = 0.05", "advert_interval = 1\nversion = 2")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("text,expected", [
    (V2.replace("version = 2", f'version = 2\nauth_pass = "{SECRET}{SECRET}"'),
     "vrrp[0].auth_pass: must be 1..8 bytes, got <hidden, 16 bytes>"),
    (V2.replace("version = 2", f'version = 2\nauth_pass = ["{SECRET}"]'),
     "vrrp[0].auth_pass: must be str, got <hidden>"),
    (GOOD.replace("priority = 150", f'priority = 150\nauth_pass = "{SECRET}"'),
     "vrrp[0].auth_pass: VRRPv3 has no authentication (RFC 5798); remove it or use version = 2"),
    (V2.replace("version = 2", f'version = 2\nauthentication = {{ auth_type = "PASS", auth_pass = "{SECRET}" }}'),
     "vrrp[0].authentication: unknown key (keepalived's name; vipd: auth_pass = \"...\" with version = 2)"),
    (V2.replace("version = 2", f'version = 2\nauth_pas = "{SECRET}"'),
     'vrrp[0].auth_pas: unknown key; did you mean "auth_pass"?'),
])
def test_a_secret_never_appears_in_a_message(text, expected):
    problems = problems_of(text)
    assert problems == [f"{FILE}: {expected}"]
    assert not any(SECRET in p or SECRET[:4] in p for p in problems)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("old,new,expected", [
    ("priority = 150", 'priority = 150\nunicast_src = "2001:db8::11"\nunicast_peers = ["198.18.0.12"]',
     ["vrrp[0].unicast_src: 2001:db8::11 is IPv6 but virtual_ips are IPv4"]),
    ("priority = 150", 'priority = 150\nunicast_src = "198.18.0.11"\nunicast_peers = ["198.18.0.12", "198.18.0.11"]',
     ["vrrp[0].unicast_peers[1]: 198.18.0.11 is this node's own unicast_src; list the other nodes only"]),
    ("priority = 150", 'priority = 150\nunicast_src = "198.18.0.100"',
     ["vrrp[0].virtual_ips[0]: 198.18.0.100 is also unicast_src: a VIP moves between nodes, "
      "this node's own address must not"]),
    ("priority = 150", 'priority = 150\nunicast_peers = ["198.18.0.12", "198.18.0.100"]',
     ["vrrp[0].virtual_ips[0]: 198.18.0.100 is also unicast_peers[1]: a VIP moves between nodes, "
      "a peer's own address must not"]),
    ('frontend = "api"', 'script = "/bin/true"\n  interval = 2\n  timeout = 2',
     ["vrrp[0].track[0].timeout: must be below interval (2), got 2"]),
    ('frontend = "api"', 'script = "/bin/true"\n  interval = 1\n  timeout = 5',
     ["vrrp[0].track[0].timeout: must be below interval (1), got 5"]),
    ('frontend = "api"', 'script = "/bin/true"\n  timeout = 1',
     ["vrrp[0].track[0].timeout: must be below interval (1), got 1"]),
    ('frontend = "api"', 'script = "/bin/check\\u0000 --flag"', ["vrrp[0].track[0].script: must not contain a NUL byte"]),
    ('frontend = "api"', "script = \"/bin/check 'unclosed\"",
     ["vrrp[0].track[0].script: /bin/sh cannot split it into words (no closing quotation)"]),
])
def test_what_can_never_work_is_refused(old, new, expected):
    assert problems_of(GOOD.replace(old, new, 1)) == [f"{FILE}: {e}" for e in expected]


@pytest.mark.timeout(10)
def test_a_notify_line_that_sh_cannot_run_is_refused():
    assert problems_of(with_line(IN_NOTIFY, 'master = "/bin/on-master\\u0000"')) == [
        f"{FILE}: vrrp[0].notify.master: must not contain a NUL byte, got '/bin/on-master\\x00'"]
    assert problems_of(with_line(IN_NOTIFY, 'notify_master = "/bin/on-master"')) == [
        f"{FILE}: vrrp[0].notify.notify_master: unknown key (keepalived's name; vipd calls it master)"]


@pytest.mark.timeout(10)
def test_a_script_timeout_defaults_below_its_interval():
    track = parse(tomllib.loads(GOOD.replace('frontend = "api"', 'script = "/bin/true"\n  interval = 3')), FILE).vrrp[0].tracks[0]
    assert (track.interval, track.timeout) == (3.0, 1.5)
    default = parse(tomllib.loads(GOOD.replace('frontend = "api"', 'script = "/bin/true"')), FILE).vrrp[0].tracks[0]
    assert default == Track("script", "/bin/true", weight=-60)
    assert (default.interval, default.timeout) == (1.0, 0.5)


@pytest.mark.timeout(10)
def test_a_health_timeout_longer_than_its_interval_is_a_warning_not_a_problem():
    slow = GOOD.replace(IN_FRONTEND, f"{IN_FRONTEND}\n[frontend.health]\ninterval = 1\ntimeout = 3")
    cfg = parse(tomllib.loads(slow), FILE)
    assert cfg.frontends[0].health.timeout == 3.0
    assert cfg.warnings == (f"{FILE}: WARNING: frontend[0].health.timeout: 3 is longer than interval 1: a backend "
                            "that does not answer is probed every 3s, not every 1s",)
    assert parse(tomllib.loads(slow.replace("timeout = 3", "timeout = 1")), FILE).warnings == ()
    # A refused config still shows its warnings beside its problems.
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(slow.replace("vrid = 51", "vrid = 0")), FILE)
    assert caught.value.problems == [f"{FILE}: vrrp[0].vrid: must be 1..255, got 0"]
    assert caught.value.warnings == list(cfg.warnings)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("line,program", [
    ("/usr/local/bin/check --flag", "/usr/local/bin/check"),
    ("pidof nginx", "pidof"),
    ("LC_ALL=C FOO='a b' curl -fs http://x/", "curl"),
    ("'/opt/my checks/run' now", "/opt/my checks/run"),
    ("test -e /run/flag", None), ("[ -e /run/flag ]", None), ("exit 0", None), ("! pidof x", None),
    ("$CHECK --flag", None), ("`which check`", None), ("(cd /tmp && ./x)", None), ("# nothing", None),
])
def test_the_program_a_script_line_starts(line, program):
    assert script_program(line) == program


class FakeHost(Host):
    """A host with the given interfaces, addresses, CPUs and PATH programs; files are real."""

    def __init__(self, interfaces=("eth0", "lo"), addresses=(), cpus=4, programs=("pidof",)):
        self.interfaces, self.addresses, self.cpus, self.programs = set(interfaces), set(addresses), cpus, set(programs)

    def has_interface(self, name):
        return name in self.interfaces

    def holds_address(self, address, interface=None):
        return address in self.addresses

    def cpu_count(self):
        return self.cpus

    def which(self, program, path=None):
        return f"/usr/bin/{program}" if program in self.programs else None


def checked(text, host):
    return parse(tomllib.loads(text), FILE, host=host)


def host_problems(text, host):
    with pytest.raises(ConfigError) as caught:
        checked(text, host)
    return caught.value.problems


@pytest.fixture
def programs(tmp_path):
    runnable = tmp_path / "check"
    runnable.write_text("#!/bin/sh\nexit 0\n")
    runnable.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("exit 0\n")
    plain.chmod(0o644)
    return {"runnable": str(runnable), "plain": str(plain), "missing": str(tmp_path / "missing"),
            "directory": str(tmp_path)}


def script_track(line):
    return GOOD.replace('frontend = "api"', f"script = {line!r}", 1)


@pytest.mark.timeout(10)
def test_a_program_that_cannot_run_is_a_problem(programs):
    host = FakeHost()
    for line in (f"{programs['runnable']} --flag", "pidof nginx", "test -e /run/x", "$CHECK"):
        assert checked(script_track(line), host).vrrp[0].tracks[0].target == line
    for line, reason in [
        (programs["missing"], f"{programs['missing']} does not exist"),
        (f"{programs['plain']} --flag", f"{programs['plain']} is not executable (chmod +x)"),
        (programs["directory"], f"{programs['directory']} is a directory"),
        ("pidofx nginx", "pidofx: not a shell builtin and not found on the scripts' PATH "
                         "(/usr/sbin:/usr/bin:/sbin:/bin); give its absolute path"),
        ("./check.sh", "./check.sh: a relative path depends on the daemon's working directory; give an absolute path"),
    ]:
        assert host_problems(script_track(line), host) == [f"{FILE}: vrrp[0].track[0].script: {reason}"]
    notify = with_line(IN_NOTIFY, f"master = '{programs['runnable']}'\nfault = '{programs['missing']} now'")
    assert host_problems(notify, host) == [f"{FILE}: vrrp[0].notify.fault: {programs['missing']} does not exist"]
    # The file alone (vipd check --file-only, vipd import) does not look at this host.
    assert parse(tomllib.loads(notify), FILE).vrrp[0].notify.fault == f"{programs['missing']} now"


@pytest.mark.timeout(10)
def test_what_may_be_fine_at_run_time_is_a_warning():
    text = (GOOD.replace('interface = "eth0"', 'interface = "eth9"')
            .replace("priority = 150", 'priority = 150\nunicast_src = "198.18.0.11"\nunicast_peers = ["198.18.0.12"]')
            .replace('frontend = "api"', 'interface = "eth7"')
            .replace('listen = "0.0.0.0:6443"', 'listen = "198.18.0.55:6443"')
            .replace("workers = 2", "workers = 3"))
    cfg = checked(text, FakeHost(cpus=2))
    assert cfg.warnings == tuple(f"{FILE}: WARNING: {w}" for w in [
        "vrrp[0].interface: no interface 'eth9' on this host now; the instance stays in FAULT until it appears",
        "vrrp[0].unicast_src: 198.18.0.11 is not an address of this host now; the adverts are sent from it",
        "vrrp[0].track[0].interface: no interface 'eth7' on this host now; the track fails until it appears",
        "frontend[0].listen: 198.18.0.55 is not an address of this host now; the listener binds it anyway "
        "and serves once it is there (a VIP of another daemon?)",
        "node.workers: 3 workers for 2 CPUs; more processes than CPUs only add switching"])
    assert checked(text, FakeHost(interfaces=("eth9", "eth7"), addresses=("198.18.0.11", "198.18.0.55"),
                                  cpus=3)).warnings == ()
    # Without the host, the same file has nothing to warn about.
    assert parse(tomllib.loads(text), FILE).warnings == ()


@pytest.mark.timeout(10)
@pytest.mark.parametrize("listen", ["198.18.0.100:6443", "0.0.0.0:6443", "[::]:6443", "api.example:6443"])
def test_a_listen_address_that_is_our_vip_or_any_address_is_not_warned_about(listen):
    text = GOOD.replace('listen = "0.0.0.0:6443"', f'listen = "{listen}"')
    assert checked(text, FakeHost()).warnings == ()


@pytest.mark.timeout(10)
def test_a_refused_config_names_its_host_problems_and_warnings_together(programs):
    text = script_track(programs["missing"]).replace('interface = "eth0"', 'interface = "eth9"')
    with pytest.raises(ConfigError) as caught:
        checked(text, FakeHost())
    assert caught.value.problems == [f"{FILE}: vrrp[0].track[0].script: {programs['missing']} does not exist"]
    assert caught.value.warnings == [f"{FILE}: WARNING: vrrp[0].interface: no interface 'eth9' on this host now; "
                                     "the instance stays in FAULT until it appears"]


@pytest.mark.parametrize("content, reason", [
    ("x = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
    ("[node]\nname = \"a\0b\"\n", "holds NUL bytes; not a text file"),
    ("# padding\n" * 500_000, "larger than 4 MiB; not a vipd config"),
    ("\xff\xfe garbage", "not UTF-8 text"),
])
def test_a_hostile_file_is_one_line_refusal(tmp_path, content, reason):
    """Deep nesting, binary, huge or garbage files: one ConfigError line, never another exception
    (a reload with such a file must leave the running config serving)."""
    path = tmp_path / "hostile.toml"
    path.write_bytes(content.encode("latin-1") if content.startswith("\xff") else content.encode())
    with pytest.raises(ConfigError) as caught:
        load(path, host=None)
    assert caught.value.problems == [f"{path}: {reason}"]
