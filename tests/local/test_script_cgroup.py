"""Script runs in a cgroup each (vipd.scriptcgroup): a timeout kills all of a run, even what left
its process group AND replaced its environment; the groups are removed; a stopped daemon's are
reaped. Needs root and a writable cgroup2 hierarchy that is ours (see scriptcgroup.choose)."""
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import alive

from vipd import scriptcgroup
from vipd.scriptcgroup import Containment, ScriptCgroups, kill_each, remove_cgroup
from vipd.vrrp.tracks import run_command

CHOICE = scriptcgroup.choose(scriptcgroup.read_host()) if os.geteuid() == 0 else None
pytestmark = pytest.mark.skipif(
    CHOICE is None or CHOICE.containment is not Containment.CGROUP or CHOICE.leaf,
    reason="needs root and a cgroup2 tree root this test may write in: "
           + ("not root" if CHOICE is None else CHOICE.reason if CHOICE.containment is not Containment.CGROUP
              else "this process sits in a delegated cgroup the test must not split"))


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def wait_dead(pids, within: float = 5.0) -> list[int]:
    deadline = time.monotonic() + within
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if alive(p)]


def cgroup_of(pid: int) -> str:
    return scriptcgroup.own_cgroup(Path(f"/proc/{pid}/cgroup").read_text())


@pytest.fixture
def cgroups():
    cgroups = scriptcgroup.active()
    assert cgroups is not None, "setup() chose the process group although choose() offers a cgroup"
    return cgroups


def runs_of(cgroups: ScriptCgroups) -> set[str]:
    return {name for name in os.listdir(cgroups.owner) if name.startswith("run-")}


@pytest.mark.timeout(60)
def test_a_timeout_kills_a_double_forked_child_that_also_cleared_its_environment(tmp_path, cgroups):
    pidfile = tmp_path / "escapee"
    before = runs_of(cgroups)
    # A new session, an orphan (double fork) and no environment: no process group, no mark.
    line = f"setsid sh -c \"env -i sh -c 'sleep 300 & echo \\$! > {pidfile}'\"; sleep 300"
    started = time.monotonic()
    assert run(run_command(["/bin/sh", "-c", line], 1.0, "test")) is None
    assert time.monotonic() - started < 1.0 + 5.0
    pid = int(pidfile.read_text())
    assert wait_dead([pid]) == []
    assert runs_of(cgroups) == before, "the run's cgroup is left"


@pytest.mark.timeout(60)
def test_a_run_sits_in_its_own_cgroup_also_as_the_script_user(cgroups):
    shared = Path(tempfile.mkdtemp(prefix="vipd-script-cgroup-"))
    shared.chmod(0o777)
    try:
        for user in (None, "nobody"):
            out = shared / f"cgroup-{user}"
            assert run(run_command(["/bin/sh", "-c", f"cat /proc/self/cgroup > {out}"], 5, "test", user=user)) == 0
            path = scriptcgroup.own_cgroup(out.read_text())
            assert path is not None and path.startswith(cgroups.owner[len(CHOICE.base):].rstrip("/") + "/run-"), path
    finally:
        shutil.rmtree(shared)


@pytest.mark.timeout(60)
def test_a_stopped_track_takes_its_cgroup_with_it(tmp_path, cgroups):
    from vipd.vrrp.config import Track
    from vipd.vrrp.tracks import TrackSet
    pidfile = tmp_path / "escapee"
    before = runs_of(cgroups)

    async def main():
        tracks = TrackSet([Track("script", f"setsid env -i sh -c 'sleep 300 & echo $! > {pidfile}'; sleep 300",
                                 interval=60, timeout=30)], lambda: None, lambda name: True, None)
        tracks.start()
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await tracks.stop()
    run(main())
    assert wait_dead([int(pidfile.read_text())]) == []
    deadline = time.monotonic() + 5
    while runs_of(cgroups) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runs_of(cgroups) == before


@pytest.mark.timeout(60)
def test_what_a_finished_script_left_running_lives_on_and_its_cgroup_goes_after_it(tmp_path, cgroups):
    pidfile = tmp_path / "background"
    before = runs_of(cgroups)
    assert run(run_command(["/bin/sh", "-c", f"sleep 300 & echo $! > {pidfile}"], 5, "test")) == 0
    pid = int(pidfile.read_text())
    try:
        assert alive(pid), "a background child of a script that exited in time was killed"
        left = runs_of(cgroups) - before
        assert len(left) == 1 and cgroup_of(pid).endswith("/" + next(iter(left)))
    finally:
        os.kill(pid, 9)
    assert wait_dead([pid]) == []
    assert run(run_command(["/bin/true"], 5, "test")) == 0        # the next run sweeps the empty group
    assert runs_of(cgroups) == before


def start_in(path: str, line: str) -> subprocess.Popen:
    """A shell that moves itself into cgroup `path` and then runs `line`."""
    return subprocess.Popen(["/bin/sh", "-c", f"echo 0 > {path}/cgroup.procs && exec sh -c '{line}'"],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@pytest.mark.timeout(60)
def test_the_groups_a_killed_daemon_left_are_killed_and_removed_and_live_ones_kept(cgroups):
    stale = os.path.join(cgroups.scripts, f"{os.getpid()}-1")       # our PID, another start time
    os.makedirs(os.path.join(stale, "run-7"))
    proc = start_in(os.path.join(stale, "run-7"), "sleep 300 & sleep 300")
    try:
        deadline = time.monotonic() + 5
        while len(scriptcgroup._pids(os.path.join(stale, "run-7"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        inside = scriptcgroup._pids(os.path.join(stale, "run-7"))
        assert len(inside) >= 2
        ours = set(os.listdir(cgroups.owner))
        assert cgroups.reap_stale() == 1
        assert not os.path.exists(stale)
        assert wait_dead(inside) == []
        assert os.path.isdir(cgroups.owner) and set(os.listdir(cgroups.owner)) == ours
    finally:
        proc.kill()
        proc.wait()
        remove_cgroup(os.path.join(stale, "run-7"), kill=True, wait=2)
        remove_cgroup(stale, kill=False, wait=0)


@pytest.mark.timeout(60)
def test_without_cgroup_kill_each_process_is_killed_until_the_group_is_empty(cgroups):
    path = os.path.join(cgroups.owner, "run-killeach")
    os.makedirs(path)
    proc = start_in(path, "while :; do sleep 300 & sleep 0.01; done")    # keeps forking
    try:
        deadline = time.monotonic() + 5
        while len(scriptcgroup._pids(path)) < 3 and time.monotonic() < deadline:
            time.sleep(0.02)
        deadline = time.monotonic() + 5
        while scriptcgroup._pids(path) and time.monotonic() < deadline:
            kill_each(path, scriptcgroup._pids(path))
            time.sleep(0.01)
        assert scriptcgroup._pids(path) == []
        assert remove_cgroup(path, kill=False, wait=2)
    finally:
        proc.kill()
        proc.wait()
        remove_cgroup(path, kill=True, wait=2)


@pytest.mark.timeout(60)
def test_without_a_cgroup_the_process_group_and_mark_still_kill_the_strays(tmp_path, monkeypatch):
    monkeypatch.setattr(scriptcgroup, "_active", None)
    monkeypatch.setattr(scriptcgroup, "_chosen", scriptcgroup.Choice(Containment.PROCESS_GROUP, "test"))
    own, orphan = tmp_path / "own", tmp_path / "orphan"
    line = f"setsid sleep 100 & echo $! > {own}; (setsid sleep 101 & echo $! > {orphan}); wait"
    assert run(run_command(["/bin/sh", "-c", line], 1.0, "test")) is None
    pids = [int(p.read_text()) for p in (own, orphan)]
    assert wait_dead(pids) == []


DELEGATED_CHILD = """
import asyncio, json, sys
from vipd import scriptcgroup
from vipd.vrrp.tracks import run_command
with open(sys.argv[1] + "/cgroup.procs", "w") as procs:       # as systemd starts a Delegate=yes unit
    procs.write("0")
choice = scriptcgroup.setup()
line = "setsid sh -c \\"env -i sh -c 'sleep 300 & echo \\\\$! > " + sys.argv[2] + "'\\"; sleep 300"
status = asyncio.run(run_command(["/bin/sh", "-c", line], 1.0, "test"))
print(json.dumps({"leaf": choice.leaf, "cgroup": open("/proc/self/cgroup").read(), "status": status}))
"""


@pytest.mark.timeout(60)
def test_in_a_delegated_cgroup_the_daemon_moves_into_a_leaf_and_runs_go_beside_it(tmp_path):
    """As under systemd with Delegate=yes: the daemon's cgroup carries the user.delegate mark."""
    unit = os.path.join(CHOICE.base, f"vipd-test-delegated-{os.getpid()}")
    os.mkdir(unit)
    pidfile = tmp_path / "escapee"
    try:
        os.setxattr(unit, "user.delegate", b"1")
        done = subprocess.run([sys.executable, "-c", DELEGATED_CHILD, unit, str(pidfile)], capture_output=True,
                              text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        own = unit[len(CHOICE.base):]
        assert seen["leaf"] and scriptcgroup.own_cgroup(seen["cgroup"]) == own + "/daemon"
        assert seen["status"] is None
        assert wait_dead([int(pidfile.read_text())]) == []
        scripts = os.path.join(unit, "vipd-scripts")
        # the child exited: its owner directory went with it, no run group is left
        assert [name for name in os.listdir(scripts) if os.path.isdir(os.path.join(scripts, name))] == []
    finally:
        for root, dirs, _ in os.walk(unit, topdown=False):
            for name in dirs:
                remove_cgroup(os.path.join(root, name), kill=True, wait=2)
        remove_cgroup(unit, kill=True, wait=2)
