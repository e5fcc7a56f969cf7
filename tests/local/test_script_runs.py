"""Script security with real files and processes (issue 8, point 4): `vipd check` / `vipd run`
refuse scripts and config files others could change, a reload with one is refused while the old
config serves; scripts run in /, with a clean environment, as node.script_user; a timed-out
script's strays are killed even when they left its process group; a broken script line never
kills its track; notify transitions that pile up are coalesced. Parts that change owners need
root and are skipped without it; the rest runs as any user (the daemon's own user is trusted)."""
import asyncio
import grp
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from support import alive, free_port, vipd_running

from vipd.vrrp.config import UNSAFE, Notify, Track
from vipd.vrrp.notify import NotifyQueue
from vipd.vrrp.tracks import RUN_MARK, ScriptTrack, TrackSet, run_command

AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="changes file owners: needs root")
CONFIG = """[node]
name = "t"
control_socket = "{dir}/ctl.sock"
workers = 1
{node}
[[vrrp]]
name = "api"
interface = "lo"
vrid = 51
virtual_ips = ["198.18.0.100/24"]

  [[vrrp.track]]
  script = "{script} --token s3cret"
  weight = -10
{notify}"""


def vipd(*args):
    return subprocess.run([sys.executable, "-m", "vipd", *args], capture_output=True, text=True, timeout=30)


def executable(path: Path, text: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture
def tree(tmp_path):
    """tmp_path/etc/vipd.toml naming tmp_path/bin/check; all of it the test user's, 0755/0644."""
    bin_dir, etc = tmp_path / "bin", tmp_path / "etc"
    etc.mkdir()
    script = executable(bin_dir / "check", "#!/bin/sh\nexit 0\n")
    config = etc / "vipd.toml"

    def write(node="", notify="", script=script):
        config.write_text(CONFIG.format(dir=tmp_path, node=node, notify=notify, script=script))
        return str(config)
    return tmp_path, bin_dir, script, write


def refusal(config, line):
    result = vipd("check", "-c", config)
    assert (result.returncode, result.stderr) == (2, f"{config}: {line}\n"), result
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.timeout(120)
def test_vipd_check_refuses_a_script_others_could_change(tree):
    tmp_path, bin_dir, script, write = tree
    config = write()
    assert vipd("check", "-c", config).returncode == 0
    bin_dir.chmod(0o777)
    refusal(config, f"vrrp[0].track[0].script: {script}: unsafe: {bin_dir} is writable by others (mode 0777); {UNSAFE}")
    bin_dir.chmod(0o755)
    script.chmod(0o757)
    refusal(config, f"vrrp[0].track[0].script: {script}: unsafe: {script} is writable by others (mode 0757); {UNSAFE}")
    # Turned off: accepted, with the warning.
    result = vipd("check", "-c", write(node="script_security = false"))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (f"{config}: WARNING: node.script_security: false: scripts and the config file are "
                             "not checked; whoever can change them decides what vipd runs\n")
    # A symlink from a safe place to the unsafe file is no way around it.
    (tmp_path / "safe").mkdir()
    (tmp_path / "safe" / "link").symlink_to(script)
    refusal(write(script=tmp_path / "safe" / "link"),
            f"vrrp[0].track[0].script: {tmp_path / 'safe' / 'link'}: unsafe: {script} is writable by others "
            f"(mode 0757); {UNSAFE}")


@pytest.mark.timeout(120)
def test_vipd_check_refuses_a_notify_script_and_a_missing_interpreter(tree):
    tmp_path, bin_dir, script, write = tree
    notify = executable(tmp_path / "hooks" / "on-master", "#!/bin/sh\ntrue\n")
    (tmp_path / "hooks").chmod(0o1777)     # like /tmp, and the daemon's (the test's) own: safe
    config = write(notify=f'\n  [vrrp.notify]\n  master = "{notify}"\n')
    assert vipd("check", "-c", config).returncode == 0
    notify.chmod(0o757)
    refusal(config, f"vrrp[0].notify.master: {notify}: unsafe: {notify} is writable by others (mode 0757); {UNSAFE}")
    notify.chmod(0o755)
    executable(notify, "#!/usr/bin/no-such-interpreter -x\ntrue\n")
    refusal(config, f"vrrp[0].notify.master: {notify}: its interpreter /usr/bin/no-such-interpreter (#! line) "
                    "does not exist")
    executable(notify, "#!/usr/bin/env no-such-program-x\ntrue\n")
    refusal(config, f"vrrp[0].notify.master: {notify}: its #! line runs no-such-program-x, not found on the "
                    "scripts' PATH (/usr/sbin:/usr/bin:/sbin:/bin)")
    executable(notify, "#!/usr/bin/env sh\ntrue\n")
    assert vipd("check", "-c", config).returncode == 0


@AS_ROOT
@pytest.mark.timeout(120)
def test_vipd_check_refuses_files_of_another_user_or_group(tree):
    tmp_path, bin_dir, script, write = tree
    config = write()
    nobody, nogroup = pwd.getpwnam("nobody"), grp.getgrgid(pwd.getpwnam("nobody").pw_gid)
    os.chown(script, nobody.pw_uid, -1)
    refusal(config, f"vrrp[0].track[0].script: {script}: unsafe: {script} is owned by nobody, not root; {UNSAFE}")
    os.chown(script, 0, nobody.pw_gid)
    script.chmod(0o775)
    refusal(config, f"vrrp[0].track[0].script: {script}: unsafe: {script} is writable by group {nogroup.gr_name} "
                    f"(mode 0775); {UNSAFE}")
    os.chown(script, 0, 0)                 # root's group may write, as keepalived allows
    assert vipd("check", "-c", config).returncode == 0
    # /tmp-like: a sticky, world-writable directory of root's holding a root-owned script is safe.
    bin_dir.chmod(0o1777)
    assert vipd("check", "-c", config).returncode == 0
    os.chown(bin_dir, nobody.pw_uid, -1)
    refusal(config, f"vrrp[0].track[0].script: {script}: unsafe: {bin_dir} is owned by nobody, not root; {UNSAFE}")


@pytest.mark.timeout(120)
def test_vipd_check_and_run_refuse_a_config_file_others_could_change(tree):
    tmp_path, bin_dir, script, write = tree
    config = write()
    (tmp_path / "etc").chmod(0o777)
    line = (f"unsafe config file: {tmp_path / 'etc'} is writable by others (mode 0777); it and every directory "
            "above it must be writable by root only (or set node.script_security = false)")
    refusal(config, line)
    result = vipd("run", "-c", config)
    assert (result.returncode, result.stderr) == (2, f"{config}: {line}\n")
    # --file-only checks the file's meaning for another machine: not this host's permissions.
    assert vipd("check", "--file-only", "-c", config).returncode == 0


@pytest.mark.timeout(120)
def test_a_reload_of_a_config_file_others_could_change_is_refused_and_the_old_one_serves(tmp_path):
    port = free_port()
    config = tmp_path / "vipd.toml"
    config.write_text(f'[node]\nname = "t"\ncontrol_socket = "{tmp_path / "ctl.sock"}"\nworkers = 1\n\n'
                      f'[[frontend]]\nname = "api"\nlisten = "127.0.0.1:{port}"\n\n'
                      f'  [[frontend.backend]]\n  address = "127.0.0.1:{free_port()}"\n')
    log = tmp_path / "run.log"
    lbctl = [sys.executable, "-m", "vipd.control.lbctl", "--socket", str(tmp_path / "ctl.sock")]
    with vipd_running(config, log):
        config.chmod(0o666)
        reload = subprocess.run([*lbctl, "reload"], capture_output=True, text=True, timeout=30)
        assert reload.returncode == 1 and f"unsafe config file: {config} is writable by others" in reload.stderr
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass                                        # the old config's listener still accepts
        config.chmod(0o644)
        reload = subprocess.run([*lbctl, "reload"], capture_output=True, text=True, timeout=30)
        assert reload.returncode == 0, reload


# ---------------------------------------------------------------- how scripts run


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.mark.timeout(30)
def test_scripts_run_in_root_with_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("VIPD_TEST_INHERITED", "leak")
    out = tmp_path / "env"
    assert run(run_command(["/bin/sh", "-c", f"/usr/bin/env > {out}; pwd >> {out}"], 5, "test")) == 0
    *env, cwd = out.read_text().splitlines()
    seen = dict(line.split("=", 1) for line in env)
    assert cwd == "/"
    assert seen.pop("PATH") == "/usr/sbin:/usr/bin:/sbin:/bin" and seen.pop("LANG") == "C"
    assert seen.pop(RUN_MARK).startswith(f"{os.getpid()}.")
    assert set(seen) <= {"PWD", "SHLVL", "_"}, f"inherited: {seen}"       # what /bin/sh adds itself


@AS_ROOT
@pytest.mark.timeout(30)
def test_scripts_run_as_script_user_with_its_groups():
    shared = Path(tempfile.mkdtemp(prefix="vipd-script-user-"))     # not under pytest's 0700 root dirs
    shared.chmod(0o777)                                              # so nobody may write its answer
    out = shared / "id"
    try:
        assert run(run_command(["/bin/sh", "-c", f"id -u > {out}; id -g >> {out}; id -G >> {out}"], 5, "test",
                               user="nobody")) == 0
        uid, gid, groups = out.read_text().splitlines()
    finally:
        shutil.rmtree(shared)
    nobody = pwd.getpwnam("nobody")
    assert (int(uid), int(gid)) == (nobody.pw_uid, nobody.pw_gid)
    assert sorted(map(int, groups.split())) == sorted(set(os.getgrouplist("nobody", nobody.pw_gid)))


@pytest.mark.timeout(30)
def test_a_user_that_vanished_is_a_failed_run_not_a_crash():
    assert run(run_command(["/bin/true"], 5, "test", user="no-such-user-x")) is None


@pytest.mark.timeout(60)
def test_a_timeout_kills_the_strays_that_left_the_process_group(tmp_path):
    """`setsid` (a session of its own) and a double fork (orphaned, reparented) both leave the
    script's process group; killpg alone would miss them."""
    own, orphan, group = tmp_path / "own", tmp_path / "orphan", tmp_path / "group"
    line = (f"setsid sleep 100 & echo $! > {own}; (setsid sleep 101 & echo $! > {orphan}); "
            f"sleep 102 & echo $! > {group}; wait")
    started = time.monotonic()
    assert run(run_command(["/bin/sh", "-c", line], 1.0, "test")) is None
    assert time.monotonic() - started < 1.0 + 5.0
    pids = [int(p.read_text()) for p in (own, orphan, group)]
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [p for p in pids if alive(p)] == []


@pytest.mark.timeout(30)
def test_a_script_line_that_cannot_start_fails_its_track_and_the_track_lives_on():
    async def main():
        changes = []
        tracks = TrackSet([Track("script", "exit 0\0", weight=0, interval=0.05, timeout=0.04)],
                          lambda: changes.append(1), lambda name: True, None)
        tracks.start()
        try:
            await tracks.wait_first_results(5)
            track = tracks.tracks[0]
            assert isinstance(track, ScriptTrack) and not track.ok
            assert tracks.fault_reasons() == {"track:script:exit"}
            runs = track.runs
            await asyncio.sleep(0.3)
            assert track.runs > runs, "the track stopped running"
        finally:
            await tracks.stop()
    run(main())


@pytest.mark.timeout(60)
def test_piled_up_transitions_are_coalesced_and_the_last_state_runs_last(tmp_path):
    out = tmp_path / "notified"
    script = executable(tmp_path / "notify.sh", f'#!/bin/sh\nsleep 0.3\necho "$*" >> {out}\n')
    notify = Notify(master=str(script), backup=str(script), fault=str(script))

    async def main():
        queue = NotifyQueue("api")
        queue.transition(notify, "MASTER", 1)
        await asyncio.sleep(0.1)                        # MASTER 1 is running now
        for state, priority in [("BACKUP", 2), ("MASTER", 3), ("BACKUP", 4), ("FAULT", 5), ("BACKUP", 6)]:
            queue.transition(notify, state, priority)
        assert queue.waiting == ["MASTER", "FAULT", "BACKUP"]
        assert await queue.drain()
        await queue.close()
        assert (queue.completed, queue.superseded) == (4, 2)
    run(main())
    assert out.read_text().splitlines() == ["api MASTER 1", "api MASTER 3", "api FAULT 5", "api BACKUP 6"]


@pytest.mark.timeout(60)
def test_stopping_a_track_mid_run_kills_its_strays_too(tmp_path):
    stray = tmp_path / "stray"

    async def main():
        tracks = TrackSet([Track("script", f"setsid sleep 100 & echo $! > {stray}; sleep 100", interval=60,
                                 timeout=30)], lambda: None, lambda name: True, None)
        tracks.start()
        deadline = time.monotonic() + 10
        while not (stray.exists() and stray.read_text().strip()) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await tracks.stop()                 # a reload that drops the track, or the daemon stopping
    run(main())
    pid = int(stray.read_text())
    deadline = time.monotonic() + 5
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
