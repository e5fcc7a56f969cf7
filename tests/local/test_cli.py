"""`vipd check|run` and `lbproxy check|run` as real processes: exit codes (2 for a refused config,
1 for a daemon that cannot start), one line per problem or warning on stderr, never a traceback,
never a secret; the help texts."""
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from support import GOOD_CONFIG, VRRP_ONLY_CONFIG, free_port, vipd_running, wait_until

from vipd import cli, proxycli

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "config").glob("*.toml"))
# GOOD_CONFIG with nothing this host could warn about (an interface every host has, one worker).
GOOD = GOOD_CONFIG.replace('interface = "eth0"', 'interface = "lo"').replace("workers = 2", "workers = 1")


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
    bad = write(tmp_path, "bad.toml", GOOD.replace("vrid = 51", "vrid = 300").replace("workers = 1", "workers = 'x'"))
    failed = vipd("check", "-c", str(bad))
    assert failed.returncode == 2 and failed.stdout == ""
    assert sorted(failed.stderr.splitlines()) == sorted([f"{bad}: vrrp[0].vrid: must be 1..255, got 300",
                                                         f"{bad}: node.workers: must be int, got 'x'"])
    missing = tmp_path / "missing.toml"
    result = vipd("check", "-c", str(missing))
    assert (result.returncode, result.stderr) == (2, f"{missing}: cannot read: No such file or directory\n")
    syntax = write(tmp_path, "syntax.toml", "[[vrrp]\nname=")
    result = vipd("check", "-c", str(syntax))
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
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
        2, "", f"{only_vrrp}: frontend: lbproxy needs at least one [[frontend]]\n")
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


MISSING_INTERFACE = "vipd-none0"      # no host has it
WARNING = (f"WARNING: vrrp[0].interface: no interface {MISSING_INTERFACE!r} on this host now; "
           "the instance stays in FAULT until it appears")


@pytest.mark.timeout(60)
def test_check_warnings_keep_exit_0_and_go_to_stderr(tmp_path):
    warned = write(tmp_path, "warned.toml", GOOD.replace('interface = "lo"', f'interface = "{MISSING_INTERFACE}"'))
    result = vipd("check", "-c", str(warned))
    assert (result.returncode, result.stdout, result.stderr) == (
        0, f"{warned}: ok (1 vrrp instance(s), 1 frontend(s))\n", f"{warned}: {WARNING}\n")
    result = lbproxy("check", "-c", str(warned))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{warned}: ok (1 frontend(s))\n",
                                                                 f"{warned}: {WARNING}\n")
    # Warnings beside problems: both shown, the problems refuse. (This host is asked only about a
    # file without problems; the file's own warnings come with its problems.)
    both = write(tmp_path, "both.toml", warned.read_text().replace("vrid = 51", "vrid = 0").replace(
        'listen = "0.0.0.0:6443"', 'listen = "0.0.0.0:6443"\n[frontend.health]\ninterval = 1\ntimeout = 2'))
    result = vipd("check", "-c", str(both))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [
        f"{both}: vrrp[0].vrid: must be 1..255, got 0",
        f"{both}: WARNING: frontend[0].health.timeout: 2 is longer than interval 1: a backend that does not answer "
        "is probed every 2s, not every 1s"]


@pytest.mark.timeout(60)
def test_check_teaches_keepalived_names_and_refuses_a_missing_script(tmp_path):
    text = GOOD.replace("vrid = 51", "virtual_router_id = 51").replace(
        'frontend = "api"', f'script = "{tmp_path}/no-such-check --flag"')
    path = write(tmp_path, "keepalived-ish.toml", text)
    result = vipd("check", "-c", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"{path}: vrrp[0].virtual_router_id: unknown key (keepalived's name; vipd calls it vrid)",
        f"{path}: vrrp[0].vrid: is required"]
    path.write_text(text.replace("virtual_router_id = 51", "vrid = 51"))
    result = vipd("check", "-c", str(path))
    assert (result.returncode, result.stderr) == (
        2, f"{path}: vrrp[0].track[0].script: {tmp_path}/no-such-check does not exist\n")
    # --file-only: the file alone, for a config written for another machine.
    result = vipd("check", "--file-only", "-c", str(path))
    assert (result.returncode, result.stderr) == (0, "")


SECRET = "Pw9zK!q2"


@pytest.mark.timeout(120)
def test_a_secret_never_appears_in_any_output(tmp_path):
    v2 = GOOD.replace("advert_interval = 0.05", "advert_interval = 1\nversion = 2")
    cases = {
        "too-long": v2.replace("version = 2", f'version = 2\nauth_pass = "{SECRET}{SECRET}"'),
        "v3": GOOD.replace("priority = 150", f'priority = 150\nauth_pass = "{SECRET}"'),
        "not-a-string": v2.replace("version = 2", f'version = 2\nauth_pass = ["{SECRET}"]'),
        "keepalived-block": v2.replace("version = 2", f'version = 2\nauthentication = {{ auth_pass = "{SECRET}" }}'),
    }
    for name, text in cases.items():
        path = write(tmp_path, f"{name}.toml", text.replace("vrid = 51", "vrid = 0"))
        for command, verb in ((vipd, "check"), (vipd, "run"), (lbproxy, "check"), (lbproxy, "run")):
            result = command(verb, "-c", str(path))
            assert result.returncode == 2, (name, verb, result.stderr)
            assert f"{path}: vrrp[0].vrid: must be 1..255, got 0" in result.stderr.splitlines()
            output = result.stdout + result.stderr
            assert SECRET not in output and SECRET[:4] not in output and "Traceback" not in output
    good = write(tmp_path, "good-v2.toml", v2.replace("version = 2", f'version = 2\nauth_pass = "{SECRET}"'))
    result = vipd("check", "-c", str(good))
    assert result.returncode == 0 and SECRET not in result.stdout + result.stderr



def proxy_only(tmp_path, port, control_socket=None, health=""):
    return (f'[node]\nname = "t"\ncontrol_socket = "{control_socket or tmp_path / "ctl.sock"}"\nworkers = 1\n\n'
            f'[[frontend]]\nname = "api"\nlisten = "127.0.0.1:{port}"\n{health}\n'
            f'  [[frontend.backend]]\n  address = "127.0.0.1:{free_port()}"\n')


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", [vipd, lbproxy], ids=["vipd", "lbproxy"])
def test_run_exit_codes_refused_2_cannot_start_1(tmp_path, command):
    refused = write(tmp_path, "refused.toml", proxy_only(tmp_path, free_port()).replace("workers = 1", "workers = 0"))
    result = command("run", "-c", str(refused))
    assert (result.returncode, result.stderr) == (2, f"{refused}: node.workers: must be 1..256, got 0\n")
    missing = tmp_path / "missing.toml"
    result = command("run", "-c", str(missing))
    assert (result.returncode, result.stderr) == (2, f"{missing}: cannot read: No such file or directory\n")
    # A good config whose control socket cannot be made (its directory is a file): cannot start.
    (tmp_path / "a-file").write_text("")
    stuck = write(tmp_path, "stuck.toml", proxy_only(tmp_path, free_port(), tmp_path / "a-file" / "ctl.sock"))
    assert vipd("check", "-c", str(stuck)).returncode == 0
    result = command("run", "-c", str(stuck))
    assert result.returncode == 1, result.stderr
    assert "cannot start control socket" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.timeout(120)
def test_run_logs_the_warnings_at_start_and_runs(tmp_path):
    path = write(tmp_path, "slow-health.toml", proxy_only(
        tmp_path, free_port(), health="[frontend.health]\ninterval = 1\ntimeout = 2\n"))
    warning = (f"{path}: WARNING: frontend[0].health.timeout: 2 is longer than interval 1: a backend that "
               "does not answer is probed every 2s, not every 1s")
    assert vipd("check", "-c", str(path)).stderr == warning + "\n"
    log = tmp_path / "run.log"
    with vipd_running(path, log):
        assert any(line.endswith(warning) and " WARNING " in line for line in log.read_text().splitlines())


@pytest.mark.timeout(120)
def test_reload_logs_the_new_configs_warnings_and_lbctl_prints_them(tmp_path):
    path = write(tmp_path, "vipd.toml", proxy_only(tmp_path, free_port()))
    log = tmp_path / "run.log"
    lbctl = [sys.executable, "-m", "vipd.control.lbctl", "--socket", str(tmp_path / "ctl.sock")]
    with vipd_running(path, log) as proc:
        quiet = subprocess.run([*lbctl, "reload"], capture_output=True, text=True, timeout=30)
        assert (quiet.returncode, quiet.stderr) == (0, ""), quiet
        path.write_text(proxy_only(tmp_path, free_port(), health="[frontend.health]\ninterval = 1\ntimeout = 2\n")
                        .replace('name = "t"\n', 'name = "t"\nscript_security = false\n'))
        warnings = vipd("check", "-c", str(path)).stderr.splitlines()
        assert len(warnings) == 2 and all(": WARNING: " in w for w in warnings), warnings
        loud = subprocess.run([*lbctl, "reload"], capture_output=True, text=True, timeout=30)
        assert loud.returncode == 0 and loud.stdout.startswith(f"reloaded {path}: "), loud
        assert loud.stderr.splitlines() == warnings
        logged = [line for line in log.read_text().splitlines() if " WARNING " in line]
        assert [w for w in warnings if any(line.endswith(w) for line in logged)] == warnings, log.read_text()
        assert len(logged) == 2, logged                  # each once, and none for the quiet reload
        proc.send_signal(signal.SIGHUP)                  # SIGHUP applies the same file: logged again
        wait_until(lambda: sum(" WARNING " in line for line in log.read_text().splitlines()) == 4, 30,
                   "the warnings logged again at SIGHUP")


def summaries_in_help(args):
    """{command: its summary as `--help` lists it, continuation lines joined}."""
    out = subprocess.run([sys.executable, "-m", *args, "--help"], capture_output=True, text=True, timeout=30,
                         env={**os.environ, "COLUMNS": "80"}).stdout
    rows: dict[str, str] = {}
    name = None
    for line in out.split("Commands:\n", 1)[1].splitlines():
        if match := re.match(r"  (\S+)\s+(.*)", line):
            name = match.group(1)
            rows[name] = match.group(2)
        elif line.strip() and name:
            rows[name] += " " + line.strip()
    return rows


def written_summaries(typer_app):
    """{command: the first paragraph of its docstring (or the sub-app's help), as in the source}."""
    written = {}
    for info in typer_app.registered_commands:
        name = info.name or info.callback.__name__
        written[name] = inspect.cleandoc(info.callback.__doc__).split("\n\n")[0].replace("\n", " ")
    for group in typer_app.registered_groups:
        written[group.name] = group.typer_instance.info.help
    return written


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,typer_app", [(["vipd"], cli.app), (["vipd.proxycli"], proxycli.app),
                                            (["vipd", "manifest"], cli.manifest_app)],
                         ids=["vipd", "lbproxy", "vipd manifest"])
def test_help_lists_each_command_with_its_whole_summary(args, typer_app):
    written = written_summaries(typer_app)
    assert len(written) >= 1 and all(isinstance(s, str) and s.endswith(".") for s in written.values()), written
    assert summaries_in_help(args) == written


EXIT_STATUS = {"run": "Exit status: 0 after SIGTERM or SIGINT, 1 when a part cannot start, 2 when the config "
                      "is refused",
               "check": "Exit status: 0 when the config is good, 2 when it is refused."}


@pytest.mark.timeout(60)
def test_help_documents_exit_codes_and_each_default_config():
    for args, default in ((["vipd"], "/etc/vipd/vipd.toml"), (["vipd.proxycli"], "/etc/vipd/lbproxy.toml")):
        for verb, status in EXIT_STATUS.items():
            out = subprocess.run([sys.executable, "-m", *args, verb, "--help"], capture_output=True, text=True,
                                 timeout=30, env={**os.environ, "COLUMNS": "100"}).stdout
            assert f"[default: {default}]" in out and status in " ".join(out.split()), out


@pytest.mark.timeout(120)
def test_a_deeply_nested_file_on_reload_is_refused_and_the_daemon_keeps_serving(tmp_path):
    """vipd 0.1 died of a RecursionError on reload (without resigning); now any file that fails to
    load is a one-line refusal, by lbctl reload and by SIGHUP alike."""
    port = free_port()
    path = write(tmp_path, "vipd.toml", proxy_only(tmp_path, port))
    nested = "x = " + "[" * 3000 + "]" * 3000 + "\n"
    checked = vipd("check", "--file-only", "-c", str(write(tmp_path, "nested.toml", nested)))
    assert (checked.returncode, checked.stderr) == (2, f"{tmp_path / 'nested.toml'}: nested too deeply\n")
    log = tmp_path / "run.log"
    lbctl = [sys.executable, "-m", "vipd.control.lbctl", "--socket", str(tmp_path / "ctl.sock")]
    with vipd_running(path, log) as proc:
        path.write_text(nested)
        reload = subprocess.run([*lbctl, "reload"], capture_output=True, text=True, timeout=30)
        assert reload.returncode == 1 and "nested too deeply" in reload.stderr, reload
        proc.send_signal(signal.SIGHUP)
        status = subprocess.run([*lbctl, "status", "--json"], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0 and proc.poll() is None, log.read_text()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass                                        # the old config's listener still accepts
    text = log.read_text()
    assert "Traceback" not in text and text.count("nested too deeply") >= 2
