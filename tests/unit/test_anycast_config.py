"""`[[anycast]]`: names, /32 or /128 VIPs, a valid Linux device name, tracks as in [[vrrp.track]]
(weight 0 only), and their place among the other VIP owners and frontends."""
import ipaddress
import re
import tomllib
from pathlib import Path

import pytest

from lbproxy.host import Host
from vipd.anycast.config import DEFAULT_DEVICE, AnycastConfig, device_name
from vipd.anycast.core import AnycastState
from vipd.config import ConfigError, parse
from vipd.control.schema import SCHEMA, Anycast, described_keys
from vipd.vrrp.config import Track

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"
FILE = "F.toml"
FRONTEND = """
[[frontend]]
name = "api"
listen = "0.0.0.0:6443"
  [[frontend.backend]]
  address = "198.18.0.21:6443"
"""


def anycast(body: str) -> str:
    return FRONTEND + "\n[[anycast]]\n" + body


def problems_of(text: str, host: Host | None = None) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text), FILE, host=host)
    return caught.value.problems


def test_the_contract_example_parses():
    if not CONTRACT.exists():
        pytest.skip(f"contract not found at {CONTRACT}")
    additions = CONTRACT.read_text().split("## Additions", 1)[1]
    block = re.search(r"```toml\n(.*?)```", additions, re.S).group(1)
    section = block[block.index("[[anycast]]"):]
    cfg = parse(tomllib.loads(FRONTEND + section), FILE)
    assert cfg.anycast == (AnycastConfig("api-anycast", (ipaddress.ip_interface("198.18.1.100/32"),), "vipd0",
                                         (Track("frontend", "api", 0),)),)


def test_defaults_and_bare_addresses():
    cfg = parse(tomllib.loads(anycast('name = "a"\nvirtual_ips = ["198.18.1.1", "2001:db8::1"]')), FILE)
    a = cfg.anycast[0]
    assert (a.device, a.tracks) == (DEFAULT_DEVICE, ())
    assert [str(v) for v in a.virtual_ips] == ["198.18.1.1/32", "2001:db8::1/128"]


@pytest.mark.parametrize("vip, reason", [
    ("198.18.1.0/24", "must be /32: an anycast VIP is announced as one host route, got '198.18.1.0/24'"),
    ("2001:db8::/64", "must be /128: an anycast VIP is announced as one host route, got '2001:db8::/64'"),
    ("not-an-ip", "must be an address like 198.18.1.100/32, got 'not-an-ip'"),
    (7, "must be an address like 198.18.1.100/32, got 7"),
])
def test_a_vip_is_one_host_address(vip, reason):
    text = anycast(f'name = "a"\nvirtual_ips = [{vip!r}]'.replace("'", '"') if isinstance(vip, str)
                   else f'name = "a"\nvirtual_ips = [{vip}]')
    assert problems_of(text) == [f"{FILE}: anycast[0].virtual_ips[0]: {reason}"]


@pytest.mark.parametrize("name", ["vipd0", "a", "x" * 15, "anycast-1.v"])
def test_valid_device_names(name):
    assert device_name(name) is None


@pytest.mark.parametrize("name", ["", "x" * 16, "a/b", "a b", "a:1", ".", ".."])
def test_device_names_the_kernel_refuses(name):
    text = anycast(f'name = "a"\nvirtual_ips = ["198.18.1.1/32"]\ndevice = "{name}"')
    [problem] = problems_of(text)
    assert problem.startswith(f"{FILE}: anycast[0].device: must ")


def test_missing_keys_empty_list_and_unknown_keys():
    assert problems_of(anycast("virtual_ips = []\ninterface = \"eth0\"")) == [
        f"{FILE}: anycast[0].interface: unknown key",
        f"{FILE}: anycast[0].name: is required",
        f"{FILE}: anycast[0].virtual_ips: must list at least one address",
    ]


def test_tracks_are_vrrp_tracks_with_weight_0_and_known_frontends():
    text = anycast('name = "a"\nvirtual_ips = ["198.18.1.1/32"]\n'
                   '[[anycast.track]]\nfrontend = "web"\n'
                   '[[anycast.track]]\ninterface = "eth1"\nweight = -10\n'
                   '[[anycast.track]]\nscript = "true"\ninterval = 2.0\n')
    assert problems_of(text) == [
        f"{FILE}: anycast[0].track[1].weight: an anycast VIP has no priority: a failing track withdraws it; "
        "leave weight out (0), got -10"]
    text = text.replace("weight = -10\n", "")
    assert problems_of(text) == [f"{FILE}: anycast[0].track[0].frontend: no [[frontend]] named 'web'"]
    cfg = parse(tomllib.loads(text.replace('"web"', '"api"')), FILE)
    assert [(t.name, t.interval) for t in cfg.anycast[0].tracks] == [
        ("frontend:api", 1.0), ("interface:eth1", 1.0), ("script:true", 2.0)]


def test_owner_names_and_vips_are_unique_across_owners():
    text = (anycast('name = "api"\nvirtual_ips = ["198.18.1.1/32", "198.18.1.1"]'))
    assert problems_of(text) == [f"{FILE}: anycast[0].virtual_ips[1]: 198.18.1.1/32 is listed twice"]
    text = ('[[vrrp]]\nname = "api"\ninterface = "eth0"\nvrid = 1\nvirtual_ips = ["198.18.1.1/24"]\n'
            + anycast('name = "api"\nvirtual_ips = ["198.18.1.1/32"]\n')
            + '[[anycast]]\nname = "b"\nvirtual_ips = ["198.18.1.1/32"]\n')
    assert problems_of(text) == [
        f"{FILE}: anycast[0].name: 'api' already names vrrp[0]; VIP owners need distinct names",
        f"{FILE}: anycast[1].virtual_ips[0]: 198.18.1.1 is also in anycast[0]",
        f"{FILE}: vrrp[0].virtual_ips[0]: 198.18.1.1 is also announced by anycast[0]",
    ]


def test_anycast_alone_is_something_to_run():
    cfg = parse(tomllib.loads('[[anycast]]\nname = "a"\nvirtual_ips = ["198.18.1.1/32"]'), FILE, require_vrrp=True)
    assert [a.name for a in cfg.anycast] == ["a"] and cfg.vrrp == () and cfg.frontends == ()


class FakeHost(Host):
    def __init__(self, interfaces=("eth0", "lo")):
        self.interfaces = set(interfaces)

    def has_interface(self, name):
        return name in self.interfaces

    def holds_address(self, address, interface=None):
        return False

    def cpu_count(self):
        return 4

    def which(self, program, path=None):
        return None


def test_host_checks_warn_about_an_existing_device_and_check_track_scripts():
    text = anycast('name = "a"\nvirtual_ips = ["198.18.1.1/32"]\n[[anycast.track]]\ninterface = "eth7"\n')
    cfg = parse(tomllib.loads(text), FILE, host=FakeHost(("eth0", "lo", "vipd0")))
    assert cfg.warnings == (
        f"{FILE}: WARNING: anycast[0].track[0].interface: no interface 'eth7' on this host now; "
        "the track fails until it appears",
        f"{FILE}: WARNING: anycast: device 'vipd0' exists on this host now; vipd creates it and cannot "
        "while another process (another vipd?) holds it",
    )
    text = anycast('name = "a"\nvirtual_ips = ["198.18.1.1/32"]\n[[anycast.track]]\nscript = "nosuch --x"\n')
    assert problems_of(text, FakeHost()) == [
        f"{FILE}: anycast[0].track[0].script: nosuch: not a shell builtin and not found on the scripts' "
        "PATH (/usr/sbin:/usr/bin:/sbin:/bin); give its absolute path"]


def test_the_status_entry_has_the_contract_fields_and_the_one_state_vocabulary():
    definition = SCHEMA["$defs"]["Anycast"]
    assert set(definition["required"]) == {"name", "state", "virtual_ips", "device", "maintenance", "since"}
    assert definition["properties"]["state"]["enum"] == [s.value for s in AnycastState] == ["ANNOUNCED", "WITHDRAWN"]
    assert described_keys(Anycast) == {"name", "state", "virtual_ips", "device", "maintenance", "since",
                                       "reason", "transitions", "tracks"}
