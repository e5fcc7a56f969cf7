"""`vipd check|run` and `lbproxy check` as real processes: exit codes and one line per problem on stderr,
never a traceback."""
import subprocess
import sys
from pathlib import Path

import pytest
from support import GOOD_CONFIG as GOOD
from support import VRRP_ONLY_CONFIG

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.toml"))


def vipd(*args):
    return subprocess.run([sys.executable, "-m", "vipd", *args], capture_output=True, text=True, timeout=30)


def lbproxy(*args):
    return subprocess.run([sys.executable, "-m", "vipd.proxycli", *args], capture_output=True, text=True,
                          timeout=30)


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.timeout(60)
def test_vipd_check_exit_codes_and_one_line_errors(tmp_path):
    good = write(tmp_path, "good.toml", GOOD)
    ok = vipd("check", "-c", str(good))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: ok (1 vrrp instance(s), 1 frontend(s))\n", "")
    bad = write(tmp_path, "bad.toml", GOOD.replace("vrid = 51", "vrid = 300").replace("workers = 2", "workers = 'x'"))
    failed = vipd("check", "-c", str(bad))
    assert failed.returncode == 1 and failed.stdout == ""
    assert sorted(failed.stderr.splitlines()) == sorted([f"{bad}: vrrp[0].vrid: must be 1..255, got 300",
                                                         f"{bad}: node.workers: must be int, got 'x'"])
    missing = tmp_path / "missing.toml"
    result = vipd("check", "-c", str(missing))
    assert (result.returncode, result.stderr) == (1, f"{missing}: cannot read: No such file or directory\n")
    syntax = write(tmp_path, "syntax.toml", "[[vrrp]\nname=")
    result = vipd("check", "-c", str(syntax))
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1
    assert result.stderr.startswith(f"{syntax}: TOML syntax: ")


@pytest.mark.timeout(60)
def test_vipd_run_refuses_bad_config_without_traceback(tmp_path):
    bad = write(tmp_path, "bad.toml", GOOD.replace("vrid = 51", "vrid = 0"))
    result = vipd("run", "-c", str(bad))
    assert result.returncode == 2
    assert f"{bad}: vrrp[0].vrid: must be 1..255, got 0" in result.stderr.splitlines()
    assert "Traceback" not in result.stderr


@pytest.mark.timeout(60)
def test_lbproxy_check_needs_a_frontend(tmp_path):
    only_vrrp = write(tmp_path, "only-vrrp.toml", VRRP_ONLY_CONFIG)
    refused = lbproxy("check", "-c", str(only_vrrp))
    assert (refused.returncode, refused.stdout, refused.stderr) == (
        1, "", f"{only_vrrp}: frontend: lbproxy needs at least one [[frontend]]\n")
    # The same file is a good config for vipd, which runs its VRRP instance.
    assert vipd("check", "-c", str(only_vrrp)).returncode == 0
    good = write(tmp_path, "good.toml", GOOD)
    ok = lbproxy("check", "-c", str(good))
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{good}: ok (1 frontend(s))\n", "")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.name)
def test_shipped_examples_pass_vipd_and_lbproxy_check(example):
    for command in (vipd, lbproxy):
        result = command("check", "-c", str(example))
        assert result.returncode == 0 and result.stdout.startswith(f"{example}: ok ("), result.stderr


def test_the_shipped_examples_are_found():
    assert {p.name for p in EXAMPLES} >= {"minimal.toml", "kubernetes-apiserver.toml"}
