"""`[etcd]` and `[[election]]`: defaults, every refusal named by key path, the host checks."""
import ipaddress
import re
import tomllib
from pathlib import Path

import pytest

from lbproxy.host import Host
from vipd.config import ConfigError, parse
from vipd.election.config import ElectionConfig, EtcdConfig
from vipd.vrrp.config import Track

FILE = "F.toml"
CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"

BASE = """
[node]
name = "edge-1"

[etcd]
endpoints = ["http://198.18.0.11:2379", "http://198.18.0.12:2379"]
"""

ONE = BASE + """
[[election]]
name = "api"
interface = "eth0"
virtual_ips = ["198.18.0.100/24"]
"""


def problems_of(text, **kw):
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text), FILE, **kw)
    return caught.value.problems


class NoHost(Host):
    def has_interface(self, name):
        return name == "eth0"


def test_defaults_and_the_key_derived_from_the_name():
    cfg = parse(tomllib.loads(ONE), FILE, require_vrrp=True)
    assert cfg.etcd == EtcdConfig(("http://198.18.0.11:2379", "http://198.18.0.12:2379"), lease_ttl=5.0)
    assert cfg.elections == (ElectionConfig("api", "eth0", (ipaddress.ip_interface("198.18.0.100/24"),),
                                            "/vipd/elections/api", 100, ()),)


def test_tracks_take_the_vrrp_forms():
    cfg = parse(tomllib.loads(ONE + """
  [[election.track]]
  frontend = "api"
  weight = 0
  [[election.track]]
  interface = "eth1"
  weight = -10
[[frontend]]
name = "api"
listen = "0.0.0.0:6443"
  [[frontend.backend]]
  address = "198.18.0.21:6443"
"""), FILE)
    assert cfg.elections[0].tracks == (Track("frontend", "api", 0), Track("interface", "eth1", -10))


@pytest.mark.parametrize(("change", "problem"), [
    ('endpoints = ["198.18.0.11:2379"]', "etcd.endpoints[0]: '198.18.0.11:2379': the scheme must be http or https"),
    ('endpoints = ["http://198.18.0.11"]', "etcd.endpoints[0]: 'http://198.18.0.11': needs a host and a port"),
    ('endpoints = ["http://198.18.0.11:2379/v3"]', "etcd.endpoints[0]: 'http://198.18.0.11:2379/v3': only scheme"),
    ("endpoints = []", "etcd.endpoints: must list at least one etcd member"),
    ("lease_ttl = 1", "etcd.lease_ttl: must be 2..60 seconds, got 1.0"),
    ("lease_ttl = 61.0", "etcd.lease_ttl: must be 2..60 seconds, got 61.0"),
    ('ca_file = "ca.crt"', "etcd.ca_file: must be an absolute path, got 'ca.crt'"),
    ('cert_file = "/etc/c.crt"', "etcd.key_file: cert_file and key_file go together"),
    ("lease-ttl = 5", 'etcd.lease-ttl: unknown key; did you mean "lease_ttl"?'),
])
def test_etcd_refusals(change, problem):
    text = ONE.replace('endpoints = ["http://198.18.0.11:2379", "http://198.18.0.12:2379"]',
                       change if change.startswith("endpoints") else
                       'endpoints = ["http://198.18.0.11:2379"]\n' + change)
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith(f"{FILE}: {problem}")


@pytest.mark.parametrize(("extra", "problem"), [
    ("priority = 0", "election[0].priority: must be 1..255, got 0"),
    ('key = "vipd/x"', "election[0].key: must be an absolute key like /vipd/elections/api, got 'vipd/x'"),
    ("vrid = 3", "election[0].vrid: unknown key"),
])
def test_election_refusals(extra, problem):
    assert problems_of(ONE + extra + "\n") == [f"{FILE}: {problem}"]


def test_an_election_needs_an_etcd_table_and_unique_names_and_keys():
    body = ONE.split("[[election]]", 1)[1]
    assert problems_of("[[election]]" + body) == [
        f"{FILE}: election: [[election]] needs an [etcd] table naming the cluster that elects"]
    twice = ONE + "[[election]]" + body.replace('"198.18.0.100/24"', '"198.18.0.101/24"')
    assert problems_of(twice) == [
        f"{FILE}: election[1].name: duplicate election name 'api' (also election[0])",
        f"{FILE}: election[1].key: '/vipd/elections/api' overlaps election[0].key"]
    nested = twice.replace('name = "api"\ninterface = "eth0"\nvirtual_ips = ["198.18.0.101/24"]',
                           'name = "b"\ninterface = "eth0"\nvirtual_ips = ["198.18.0.101/24"]\n'
                           'key = "/vipd/elections/api/b"')
    assert problems_of(nested) == [f"{FILE}: election[1].key: '/vipd/elections/api/b' overlaps election[0].key"]


def test_a_vip_has_one_owner_and_a_track_names_a_known_frontend():
    text = ONE + """
  [[election.track]]
  frontend = "nope"
[[vrrp]]
name = "v"
interface = "eth0"
vrid = 5
virtual_ips = ["198.18.0.100/24"]
"""
    assert problems_of(text) == [
        f"{FILE}: election[0].track[0].frontend: no [[frontend]] named 'nope'",
        f"{FILE}: election[0].virtual_ips: 198.18.0.100 is also a [[vrrp]] VIP; one owner per VIP"]


def test_on_the_host_tls_files_must_be_readable_and_a_missing_interface_warns(tmp_path):
    key = tmp_path / "client.key"
    key.write_text("k")
    text = ONE.replace('"http://198.18.0.11:2379", "http://198.18.0.12:2379"', '"https://198.18.0.11:2379"') \
        .replace("[[election]]", f'cert_file = "{tmp_path}/missing.crt"\nkey_file = "{key}"\n\n[[election]]') \
        .replace('"eth0"', '"eth9"')
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text), FILE, host=NoHost())
    assert caught.value.problems == [f"{FILE}: etcd.cert_file: {tmp_path}/missing.crt: no such file"]
    assert caught.value.warnings == [
        f"{FILE}: WARNING: election[0].interface: no interface 'eth9' on this host now; "
        "the election stays in FAULT until it appears"]


def test_the_contract_additions_example_parses():
    if not CONTRACT.exists():
        pytest.skip(f"contract not found at {CONTRACT}")
    blocks = re.findall(r"```toml\n(.*?)```", CONTRACT.read_text(), re.S)
    additions = next(b for b in blocks if "[[election]]" in b)
    data = tomllib.loads(additions)
    example = {"etcd": data["etcd"], "election": data["election"]}
    example["election"][0].pop("track")
    cfg = parse(example, "contract")
    assert cfg.etcd.lease_ttl == 5.0 and cfg.etcd.tls
    assert cfg.etcd.key_file == "/etc/kubernetes/pki/etcd/healthcheck-client.key"
    assert (cfg.elections[0].key, cfg.elections[0].priority) == ("/vipd/elections/api-etcd", 100)
