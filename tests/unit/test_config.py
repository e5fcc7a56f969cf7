"""Config validation: every problem named with file, key path and reason; `vipd check` exit codes."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

from lbproxy.configreader import split_host_port
from vipd.config import ConfigError, load, parse

CONTRACT = Path(__file__).resolve().parents[3] / "shared" / "CONTRACT.md"

GOOD = """
[node]
name = "edge-1"
control_socket = "/tmp/vipd-test.sock"
workers = 2

[[vrrp]]
name = "api"
interface = "eth0"
vrid = 51
priority = 150
advert_interval = 0.05
virtual_ips = ["198.18.0.100/24"]

  [[vrrp.track]]
  frontend = "api"
  weight = -60

[[frontend]]
name = "api"
listen = "0.0.0.0:6443"

  [[frontend.backend]]
  address = "198.18.0.21:6443"
"""


def write(tmp_path, text):
    path = tmp_path / "vipd.toml"
    path.write_text(text)
    return path


def problems_of(tmp_path, text):
    with pytest.raises(ConfigError) as caught:
        load(write(tmp_path, text))
    return caught.value.problems


@pytest.mark.timeout(10)
def test_contract_example_is_valid():
    if not CONTRACT.exists():
        pytest.skip(f"contract not found at {CONTRACT}")
    example = re.search(r"```toml\n(.*?)```", CONTRACT.read_text(), re.S).group(1)
    cfg = parse(__import__("tomllib").loads(example), "contract")
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
    assert cfg.vrrp[0].preempt is True and cfg.vrrp[0].garp_repeat == 3
    assert cfg.frontends[0].idle_timeout >= 600
    assert cfg.frontend("api").listen_port == 6443


@pytest.mark.timeout(10)
@pytest.mark.parametrize("old,new,expected", [
    ("priority = 150", "priority = 0", "vrrp[0].priority: must be 1..254 (255 = address owner), got 0"),
    ("vrid = 51", "vrid = 256", "vrrp[0].vrid: must be 1..255, got 256"),
    ("vrid = 51", 'vrid = "51"', "vrrp[0].vrid: must be int, got '51'"),
    ("advert_interval = 0.05", "advert_interval = 0.005", "vrrp[0].advert_interval: VRRPv3 needs 0.01 s steps"),
    ("advert_interval = 0.05", "advert_interval = 41", "vrrp[0].advert_interval: VRRPv3 needs 0.01 s steps"),
    ("advert_interval = 0.05", "advert_interval = 0.05\nversion = 2", "vrrp[0].advert_interval: VRRPv2 needs whole seconds"),
    ('virtual_ips = ["198.18.0.100/24"]', 'virtual_ips = ["198.18.0.300/24"]', "vrrp[0].virtual_ips[0]: must be an address"),
    ('virtual_ips = ["198.18.0.100/24"]', 'virtual_ips = ["198.18.0.100/24", "2001:db8::100/64"]', "vrrp[0].virtual_ips: mixes IPv4 and IPv6"),
    ('virtual_ips = ["198.18.0.100/24"]', 'virtual_ips = []', "vrrp[0].virtual_ips: must list at least one address"),
    ("priority = 150", "priority = 150\nprio = 1", "vrrp[0].prio: unknown key"),
    ('frontend = "api"', 'frontend = "web"', "vrrp[0].track[0].frontend: no [[frontend]] named 'web'"),
    ('frontend = "api"\n  weight = -60', 'frontend = "api"\n  weight = -600', "vrrp[0].track[0].weight: must be -254..254"),
    ('listen = "0.0.0.0:6443"', 'listen = "0.0.0.0:99999"', "frontend[0].listen: port must be 1..65535"),
    ('listen = "0.0.0.0:6443"', 'listen = "0.0.0.0:6443"\nbalance = "fastest"', "frontend[0].balance: must be one of"),
    ('address = "198.18.0.21:6443"', 'address = "2001:db8::1:6443"', "frontend[0].backend[0].address: IPv6 addresses need brackets"),
    ("workers = 2", "workers = 0", "node.workers: must be 1..256, got 0"),
    ("workers = 2", "workers = true", "node.workers: must be int, got True"),
])
def test_each_problem_names_file_key_and_reason(tmp_path, old, new, expected):
    assert old in GOOD
    problems = problems_of(tmp_path, GOOD.replace(old, new, 1))
    path = str(tmp_path / "vipd.toml")
    assert any(p.startswith(f"{path}: {expected}") for p in problems), problems


@pytest.mark.timeout(10)
def test_all_problems_reported_at_once(tmp_path):
    text = GOOD.replace("vrid = 51", "vrid = 0").replace("priority = 150", "priority = 999").replace(
        "workers = 2", "workers = -1")
    problems = problems_of(tmp_path, text)
    assert len(problems) == 3, problems


@pytest.mark.timeout(10)
def test_cross_checks(tmp_path):
    text = GOOD + GOOD[GOOD.index("[[vrrp]]"):]
    problems = problems_of(tmp_path, text)
    joined = "\n".join(problems)
    assert "vrrp[1].name: duplicate instance name 'api'" in joined
    assert "frontend[1].name: duplicate frontend name 'api'" in joined


@pytest.mark.timeout(10)
def test_v2_rules(tmp_path):
    v2 = GOOD.replace("advert_interval = 0.05", 'advert_interval = 1\nversion = 2\nauth_pass = "s3cret"')
    assert load(write(tmp_path, v2)).vrrp[0].auth_pass == "s3cret"
    v3auth = GOOD.replace("advert_interval = 0.05", 'advert_interval = 1\nauth_pass = "s3cret"')
    assert any("auth_pass: VRRPv3 has no authentication" in p for p in problems_of(tmp_path, v3auth))
    v2v6 = v2.replace('"198.18.0.100/24"', '"2001:db8::100/64"')
    assert any("VRRPv2 carries IPv4 only" in p for p in problems_of(tmp_path, v2v6))


@pytest.mark.timeout(10)
def test_split_host_port():
    assert split_host_port("[2001:db8::1]:443") == ("2001:db8::1", 443)
    assert split_host_port("api.example:6443") == ("api.example", 6443)
    for bad in ("nohost", ":80", "1.2.3.4:0", "[::1]80"):
        with pytest.raises(ValueError):
            split_host_port(bad)


def vipd(*args):
    return subprocess.run([sys.executable, "-m", "vipd", *args], capture_output=True, text=True, timeout=30)


@pytest.mark.timeout(60)
def test_vipd_check_exit_codes_and_one_line_errors(tmp_path):
    good = write(tmp_path, GOOD)
    ok = vipd("check", "-c", str(good))
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("vrid = 51", "vrid = 300").replace("workers = 2", "workers = 'x'"))
    failed = vipd("check", "-c", str(bad))
    assert failed.returncode != 0
    lines = failed.stderr.strip().splitlines()
    assert sorted(lines) == sorted([f"{bad}: vrrp[0].vrid: must be 1..255, got 300",
                                    f"{bad}: node.workers: must be int, got 'x'"])
    for broken, needle in ((tmp_path / "missing.toml", "cannot read"), (bad, "")):
        result = vipd("check", "-c", str(broken))
        assert result.returncode != 0 and "Traceback" not in result.stderr and needle in result.stderr
    syntax = tmp_path / "syntax.toml"
    syntax.write_text("[[vrrp]\nname=")
    result = vipd("check", "-c", str(syntax))
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1
    assert "TOML syntax" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_vipd_run_refuses_bad_config_without_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace("vrid = 51", "vrid = 0"))
    result = vipd("run", "-c", str(bad))
    assert result.returncode == 2 and "vrrp[0].vrid" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", sorted((Path(__file__).resolve().parents[2] / "config").glob("*.toml")),
                         ids=lambda p: p.name)
def test_shipped_examples_pass_vipd_check(example):
    result = vipd("check", "-c", str(example))
    assert result.returncode == 0, result.stderr
