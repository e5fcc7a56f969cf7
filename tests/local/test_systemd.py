"""The shipped units: `systemd-analyze verify` passes with the commands as this install put them, the
settings the daemon relies on are there (read from the parsed unit), and each unit's ExecStartPre
check refuses what its ExecStart could not run."""
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support import GOOD_CONFIG, VRRP_ONLY_CONFIG

from lbproxy.config import FrontendConfig
from lbproxy.privileges import WORKER_OOM_SCORE_ADJ
from vipd.config import DEFAULT_CONTROL_SOCKET

UNITS = Path(__file__).resolve().parents[2] / "systemd"
BINDIR = Path(sys.executable).parent
# What differs between the two units: the program, its config, and what it may do on the network.
UNIT = {
    "vipd.service": {"program": "vipd", "config": "/etc/vipd/vipd.toml",
                     "ambient": {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_NET_BIND_SERVICE"},
                     "families": {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK", "AF_PACKET"}},
    "lbproxy.service": {"program": "lbproxy", "config": "/etc/vipd/lbproxy.toml",
                        "ambient": {"CAP_NET_BIND_SERVICE"},
                        "families": {"AF_UNIX", "AF_INET", "AF_INET6"}},
}


def read_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"{path.name}: not a unit line: {raw!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(unit, section, key):
    values = unit[section].get(key, [])
    assert len(values) == 1, f"[{section}] {key}: {values}"
    return values[0]


def require_console_scripts():
    for script in ("vipd", "lbproxy"):
        if not (BINDIR / script).exists():
            pytest.skip(f"needs the {script} console script in {BINDIR} (pip install .)")


def installed(command: str) -> list[str]:
    """A unit's command line with /usr/local/bin/ pointing at this install."""
    argv = shlex.split(command)
    assert argv[0].startswith("/usr/local/bin/"), argv
    return [str(BINDIR / Path(argv[0]).name), *argv[1:]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(UNIT))
def test_unit_verifies(tmp_path, name):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (Debian package systemd)")
    require_console_scripts()
    text = (UNITS / name).read_text().replace("/usr/local/bin/", f"{BINDIR}/")
    (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=50)
    relevant = [line for line in done.stderr.splitlines() if name in line or "Unknown" in line]
    assert done.returncode == 0 and not relevant, done.stderr


@pytest.mark.timeout(10)
@pytest.mark.parametrize("name", sorted(UNIT))
def test_unit_settings_the_daemon_relies_on(name):
    unit, want = read_unit(UNITS / name), UNIT[name]
    program, config = f"/usr/local/bin/{want['program']}", want["config"]
    assert one(unit, "Unit", "ConditionPathExists") == config
    assert one(unit, "Service", "ExecStartPre") == f"{program} check -c {config}"
    assert one(unit, "Service", "ExecStart") == f"{program} run -c {config}"
    # The daemon sends READY=1 and WATCHDOG=1 itself, reloads on SIGHUP and drains its workers on SIGTERM.
    assert one(unit, "Service", "Type") == "notify" and one(unit, "Service", "NotifyAccess") == "main"
    assert one(unit, "Service", "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(unit, "Service", "KillMode") == "mixed" and one(unit, "Service", "KillSignal") == "SIGTERM"
    assert int(one(unit, "Service", "WatchdogSec")) > 0
    assert one(unit, "Service", "Restart") == "on-failure"
    assert int(one(unit, "Service", "TimeoutStopSec")) > FrontendConfig.drain_timeout, \
        "systemd must not kill a drain that runs to the default drain_timeout"
    # The control socket's default directory is the one systemd creates and lets it write.
    run_dir = str(Path(DEFAULT_CONTROL_SOCKET).parent)
    assert "/run/" + one(unit, "Service", "RuntimeDirectory") == run_dir
    writable = one(unit, "Service", "ReadWritePaths").split()
    assert writable[0] == run_dir
    # Beyond it only the unit's own cgroup, and only when delegated: script runs get cgroups below it.
    assert all(path.startswith("-/sys/fs/cgroup/") and path.endswith("/system.slice/%n") for path in writable[1:])
    assert bool(writable[1:]) == (unit["Service"].get("Delegate") == ["yes"])
    assert one(unit, "Service", "ProtectControlGroups") == "yes"
    ambient = set(one(unit, "Service", "AmbientCapabilities").split())
    assert ambient == want["ambient"]
    assert ambient <= set(one(unit, "Service", "CapabilityBoundingSet").split())
    assert one(unit, "Service", "NoNewPrivileges") == "yes"
    assert set(one(unit, "Service", "RestrictAddressFamilies").split()) == want["families"]
    # An OOM kill takes a worker (which raises its own score), never the daemon, and the unit
    # lives on while the supervisor respawns the worker.
    assert int(one(unit, "Service", "OOMScoreAdjust")) < 0 < WORKER_OOM_SCORE_ADJ
    assert one(unit, "Service", "OOMPolicy") == "continue"
    assert one(unit, "Service", "MemoryMax").rstrip("%").isdigit()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", sorted(UNIT))
def test_exec_start_pre_checks_what_exec_start_needs(tmp_path, name):
    require_console_scripts()
    unit, config = read_unit(UNITS / name), UNIT[name]["config"]
    check = installed(one(unit, "Service", "ExecStartPre"))

    def run_check(text):
        path = tmp_path / "node.toml"
        path.write_text(text)
        argv = [str(path) if arg == config else arg for arg in check]
        return path, subprocess.run(argv, capture_output=True, text=True, timeout=30)

    path, good = run_check(GOOD_CONFIG)
    assert good.returncode == 0 and good.stdout.startswith(f"{path}: ok ("), good.stderr
    path, bad = run_check(GOOD_CONFIG.replace("vrid = 51", "vrid = 0"))
    assert (bad.returncode, bad.stderr) == (2, f"{path}: vrrp[0].vrid: must be 1..255, got 0\n")
    path, only_vrrp = run_check(VRRP_ONLY_CONFIG)
    if name == "lbproxy.service":
        assert (only_vrrp.returncode, only_vrrp.stderr) == (
            2, f"{path}: frontend: lbproxy needs at least one [[frontend]]\n")
    else:
        assert only_vrrp.returncode == 0, only_vrrp.stderr


@pytest.mark.timeout(10)
def test_vipd_unit_resigns_after_a_crash_and_reaches_only_the_tun_device():
    unit = read_unit(UNITS / "vipd.service")
    # systemd sets $SERVICE_RESULT for ExecStopPost; `--only-if-failed` reads it.
    assert one(unit, "Service", "ExecStopPost") == "/usr/local/bin/vipd resign --only-if-failed -c /etc/vipd/vipd.toml"
    # BGP anycast opens /dev/net/tun, which PrivateDevices=yes would hide.
    assert one(unit, "Service", "PrivateDevices") == "no"
    assert one(unit, "Service", "DevicePolicy") == "closed"
    assert one(unit, "Service", "DeviceAllow") == "/dev/net/tun rw"


@pytest.mark.timeout(60)
def test_vipd_resign_does_nothing_after_a_clean_stop_and_says_what_it_did_otherwise(tmp_path):
    require_console_scripts()
    unit = read_unit(UNITS / "vipd.service")
    argv = installed(one(unit, "Service", "ExecStopPost"))
    config = tmp_path / "vipd.toml"
    argv[argv.index("/etc/vipd/vipd.toml")] = str(config)
    base = {k: v for k, v in os.environ.items() if k != "SERVICE_RESULT"}
    # A clean stop: the daemon resigned itself; not even the config is read.
    clean = subprocess.run(argv, capture_output=True, text=True, timeout=30, env={**base, "SERVICE_RESULT": "success"})
    assert (clean.returncode, clean.stdout, clean.stderr) == (0, "", "")
    crashed = {**base, "SERVICE_RESULT": "signal"}
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=crashed)
    assert refused.returncode == 2 and str(config) in refused.stderr
    config.write_text(VRRP_ONLY_CONFIG.replace('interface = "eth0"', 'interface = "vipd-none0"'))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=crashed)
    assert (done.returncode, done.stdout, done.stderr) == (0, "vrrp api: no interface vipd-none0: nothing to do\n", "")
