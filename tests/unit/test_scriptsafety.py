"""Script security (issue 8, point 4) decided on fake stat results: which owners and modes make a
script or the config file unsafe, along the whole path; #! lines; the script keys of the config;
the notify queue's bound and coalescing (no script ever runs here)."""
import asyncio
import stat
import tomllib
from types import SimpleNamespace

import pytest
from support import GOOD_CONFIG as GOOD

from vipd.config import ConfigError, parse
from vipd.control.metrics import families_from_status
from vipd.scriptsafety import (
    entry_problem,
    env_program,
    path_problem,
    shebang,
    with_parents,
)
from vipd.vrrp.config import (
    DEFAULT_NOTIFY_TIMEOUT,
    Notify,
    Track,
    distinct_names,
    script_label,
    script_line,
)
from vipd.vrrp.notify import MAX_WAITING, NotifyQueue
from vipd.vrrp.tracks import TrackSet

FILE = "F.toml"
ROOT, DAEMON, ALICE = 0, 61235, 61234   # a non-root daemon's own user; somebody else (both unnamed)
OWNERS = {ROOT, DAEMON}
DIR, REG = stat.S_IFDIR, stat.S_IFREG


def st(kind, mode, uid=ROOT, gid=0):
    return SimpleNamespace(st_mode=kind | mode, st_uid=uid, st_gid=gid)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("entry, reason", [
    (st(REG, 0o755), None),
    (st(REG, 0o700, uid=DAEMON), None),                 # the daemon's own user may own it
    (st(DIR, 0o755), None),
    (st(DIR, 0o775, gid=0), None),                      # root's group may write, as in keepalived
    (st(DIR, 0o1777), None),                            # /tmp: only an entry's owner may replace it
    (st(DIR, 0o1777, uid=DAEMON), None),
    (st(REG, 0o755, uid=ALICE), "owned by uid 61234, not root or uid 61235"),
    (st(DIR, 0o1777, uid=ALICE), "owned by uid 61234, not root or uid 61235"),
    (st(REG, 0o757), "writable by others (mode 0757)"),
    (st(REG, 0o1777), "writable by others (mode 1777)"),   # the sticky bit means nothing on a file
    (st(DIR, 0o777), "writable by others (mode 0777)"),
    (st(DIR, 0o2775, gid=54321), "writable by group gid 54321 (mode 2775)"),
    (st(REG, 0o775, uid=DAEMON, gid=54321), "writable by group gid 54321 (mode 0775)"),
])
def test_what_makes_one_entry_unsafe(entry, reason):
    assert entry_problem("/x", entry, OWNERS) == (f"/x is {reason}" if reason else None)


def test_the_chain_is_every_directory_up_to_the_root():
    assert with_parents("/usr/local/bin/check") == ["/usr/local/bin/check", "/usr/local/bin", "/usr/local",
                                                    "/usr", "/"]
    assert with_parents("/a//b/../c/") == ["/a/c", "/a", "/"]
    assert with_parents("/") == ["/"]


class FakeTree:
    """Paths -> stat results; anything else does not exist. `links` maps a path to its real path."""

    def __init__(self, entries, links=None):
        self.entries, self.links, self.asked = entries, links or {}, []

    def stat(self, path):
        self.asked.append(path)
        if path not in self.entries:
            raise FileNotFoundError(2, "No such file or directory")
        return self.entries[path]

    def resolve(self, path):
        return self.links.get(path, path)


SAFE_TREE = {"/": st(DIR, 0o755), "/etc": st(DIR, 0o755), "/etc/vipd": st(DIR, 0o750),
             "/etc/vipd/check": st(REG, 0o755), "/tmp": st(DIR, 0o1777), "/tmp/check": st(REG, 0o700),
             "/home": st(DIR, 0o755), "/home/alice": st(DIR, 0o755, uid=ALICE),
             "/home/alice/check": st(REG, 0o755)}


def problem(path, tree=SAFE_TREE, links=None, **changes):
    fake = FakeTree({**tree, **changes}, links)
    return path_problem(path, OWNERS, stat_of=fake.stat, resolve=fake.resolve), fake.asked


@pytest.mark.timeout(10)
def test_every_directory_up_to_the_root_is_checked():
    assert problem("/etc/vipd/check") == (None, ["/etc/vipd/check", "/etc/vipd", "/etc", "/"])
    assert problem("/etc/vipd/check", **{"/": st(DIR, 0o777)})[0] == "/ is writable by others (mode 0777)"
    assert problem("/etc/vipd/check", **{"/etc": st(DIR, 0o755, uid=ALICE)})[0] == \
        "/etc is owned by uid 61234, not root or uid 61235"
    assert problem("/etc/vipd/check", **{"/etc/vipd/check": st(REG, 0o775, gid=54321)})[0] == \
        "/etc/vipd/check is writable by group gid 54321 (mode 0775)"


@pytest.mark.timeout(10)
def test_a_sticky_directory_is_safe_only_for_files_root_owns():
    assert problem("/tmp/check")[0] is None
    assert problem("/tmp/check", **{"/tmp/check": st(REG, 0o700, uid=ALICE)})[0] == \
        "/tmp/check is owned by uid 61234, not root or uid 61235"


@pytest.mark.timeout(10)
def test_a_root_owned_file_under_someone_elses_directory_is_unsafe():
    # alice may rename /home/alice/check away and put her own in its place.
    assert problem("/home/alice/check")[0] == "/home/alice is owned by uid 61234, not root or uid 61235"


@pytest.mark.timeout(10)
def test_a_symlink_is_checked_as_written_and_as_resolved():
    # /etc/vipd/check -> /home/alice/check: the link's own directory is safe, its target's is not.
    reason, asked = problem("/etc/vipd/check", links={"/etc/vipd/check": "/home/alice/check"})
    assert reason == "/home/alice is owned by uid 61234, not root or uid 61235"
    assert asked == ["/home/alice/check", "/home/alice"]
    # /home/alice/link -> /etc/vipd/check: the link's own directory decides what runs too.
    reason, asked = problem("/home/alice/link", links={"/home/alice/link": "/etc/vipd/check"})
    assert reason == "/home/alice is owned by uid 61234, not root or uid 61235"
    assert asked == ["/etc/vipd/check", "/etc/vipd", "/etc", "/", "/home/alice"]
    assert problem("/etc/vipd/check", links={"/etc/vipd/check": "/tmp/check"})[0] is None


@pytest.mark.timeout(10)
def test_what_cannot_be_checked_is_unsafe():
    assert problem("/etc/gone/check")[0] == "/etc/gone/check cannot be checked: No such file or directory"


@pytest.mark.timeout(10)
@pytest.mark.parametrize("head, named", [
    (b"#!/bin/sh\nexit 0\n", ("/bin/sh", None)),
    (b"#! /bin/bash -e \n", ("/bin/bash", "-e")),
    (b"#!/usr/bin/env -S python3 -u\n", ("/usr/bin/env", "-S python3 -u")),
    (b"#!/usr/bin/python3\t-I\n", ("/usr/bin/python3", "-I")),
    (b"#!\n", ("", None)),
    (b"#!", ("", None)),
    (b"\x7fELF\x02\x01", None),
    (b"echo no interpreter line\n", None),
    (b"", None),
])
def test_the_interpreter_a_shebang_names(head, named):
    assert shebang(head) == named


@pytest.mark.timeout(10)
@pytest.mark.parametrize("argument, program", [
    ("python3", "python3"), ("-S python3 -u", "python3"), ("-i PATH=/x sh", "sh"), ("-S", None), (None, None),
])
def test_the_program_env_starts(argument, program):
    assert env_program(argument) == program


# ---------------------------------------------------------------- the config's script keys


@pytest.mark.timeout(10)
@pytest.mark.parametrize("line, label", [
    ("/usr/local/bin/check --token s3cret", "check"),
    ("LC_ALL=C curl -fs http://user:pw@x/", "curl"),
    ("'/opt/my checks/run' now", "run"),
    ("test ! -e /run/flag", "test"),
    ("$CHECK --flag", "$CHECK"),
])
def test_a_script_track_is_named_by_its_program_never_its_arguments(line, label):
    assert script_label(line) == label
    assert Track("script", line).name == f"script:{label}"


@pytest.mark.timeout(10)
def test_tracks_sharing_a_name_are_numbered():
    tracks = distinct_names([Track("script", "/bin/check a"), Track("interface", "eth1"),
                             Track("script", "/usr/bin/check b"), Track("script", "/sbin/check c")])
    assert [t.name for t in tracks] == ["script:check", "interface:eth1", "script:check#2", "script:check#3"]
    text = GOOD.replace('frontend = "api"', 'script = "/bin/true --x"', 1).replace(
        "\n[[frontend]]", '\n  [[vrrp.track]]\n  script = "/usr/bin/true --y"\n\n[[frontend]]', 1)
    assert [t.name for t in parse(tomllib.loads(text), FILE).vrrp[0].tracks] == ["script:true", "script:true#2"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("line, reason", [
    ("", "is empty: no command to run"),
    ("   ", "is empty: no command to run"),
    ("# only a comment", "is empty: no command to run"),
    ("/bin/check\0", "must not contain a NUL byte"),
])
def test_an_empty_or_nul_script_line_is_refused(line, reason):
    assert script_line(line) == reason


def problems_of(text):
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(text), FILE)
    return caught.value.problems


def in_notify(lines):
    return GOOD.replace("\n[[frontend]]", f"\n[vrrp.notify]\n{lines}\n\n[[frontend]]", 1)


@pytest.mark.timeout(10)
def test_notify_lines_timeout_and_empty_scripts():
    notify = parse(tomllib.loads(in_notify('master = "/bin/true"\ntimeout = 5')), FILE).vrrp[0].notify
    assert (notify.master, notify.timeout, notify.user) == ("/bin/true", 5.0, None)
    assert parse(tomllib.loads(in_notify('master = "/bin/true"')), FILE).vrrp[0].notify.timeout == DEFAULT_NOTIFY_TIMEOUT
    assert problems_of(in_notify('master = ""')) == [f"{FILE}: vrrp[0].notify.master: is empty: no command to run, got ''"]
    assert problems_of(in_notify("timeout = 0")) == [f"{FILE}: vrrp[0].notify.timeout: must be 0.1..3600 seconds, got 0.0"]
    assert problems_of(GOOD.replace("priority = 150", "priority = 150\nnotify_timeout = 5")) == [
        f"{FILE}: vrrp[0].notify_timeout: unknown key (vipd: timeout = ... in [vrrp.notify])"]
    assert problems_of(GOOD.replace('frontend = "api"', 'script = "  "', 1)) == [
        f"{FILE}: vrrp[0].track[0].script: must not be empty, got '  '"]


@pytest.mark.timeout(10)
def test_script_user_reaches_every_script_and_must_exist():
    text = in_notify('master = "/bin/true"').replace("workers = 2", 'workers = 2\nscript_user = "nobody"').replace(
        'frontend = "api"', 'script = "/bin/true"', 1)
    cfg = parse(tomllib.loads(text), FILE)
    assert cfg.node.script_user == "nobody"
    assert cfg.vrrp[0].notify.user == "nobody" and cfg.vrrp[0].tracks[0].user == "nobody"
    assert problems_of(GOOD.replace("workers = 2", 'workers = 2\nscript_user = "no-such-user-x"')) == [
        f"{FILE}: node.script_user: no such user on this system, got 'no-such-user-x'"]


@pytest.mark.timeout(10)
def test_script_security_is_on_unless_turned_off_and_off_is_a_warning():
    assert parse(tomllib.loads(GOOD), FILE).node.script_security is True
    off = parse(tomllib.loads(GOOD.replace("workers = 2", "workers = 2\nscript_security = false")), FILE)
    assert off.node.script_security is False
    assert off.warnings == (f"{FILE}: WARNING: node.script_security: false: scripts and the config file are not "
                            "checked; whoever can change them decides what vipd runs",)
    assert problems_of(GOOD.replace("workers = 2", 'workers = 2\nscript_security = "no"')) == [
        f"{FILE}: node.script_security: must be bool, got 'no'"]


# ---------------------------------------------------------------- the notify queue's bound


def queued(transitions, notify=Notify(master="/bin/m", backup="/bin/b", fault="/bin/f", stop="/bin/s",
                                      generic="/bin/n")):
    """The waiting (state, priority) pairs after `transitions`, all arriving before any script runs."""
    async def scenario():
        queue = NotifyQueue("api")
        for state, priority in transitions:
            queue.transition(notify, state, priority)
        waiting = [(t.state, t.priority) for t in queue._waiting]
        await queue.close()
        return waiting, queue.superseded, queue.completed
    return asyncio.run(scenario())


@pytest.mark.timeout(10)
def test_a_state_entered_again_supersedes_its_waiting_scripts():
    flapping = [("BACKUP", 1), ("MASTER", 2), ("BACKUP", 3), ("MASTER", 4), ("BACKUP", 5), ("FAULT", 6),
                ("BACKUP", 7)]
    assert queued(flapping) == ([("MASTER", 4), ("FAULT", 6), ("BACKUP", 7)], 4, 0)


@pytest.mark.timeout(10)
def test_the_queue_never_grows_past_its_bound_and_the_last_state_is_kept():
    many = [(state, i) for i in range(100) for state in ("INIT", "BACKUP", "MASTER", "FAULT", "STOP")]
    waiting, superseded, _ = queued(many)
    assert len(waiting) == MAX_WAITING and superseded == len(many) - MAX_WAITING
    assert waiting == [("BACKUP", 99), ("MASTER", 99), ("FAULT", 99), ("STOP", 99)]


@pytest.mark.timeout(10)
def test_a_state_with_no_script_queues_nothing():
    assert queued([("MASTER", 1), ("BACKUP", 2)], Notify(master="/bin/m")) == ([("MASTER", 1)], 0, 0)


# ---------------------------------------------------------------- what status and metrics show


@pytest.mark.timeout(10)
def test_metrics_and_status_never_show_a_script_command_line():
    secret_line = "/usr/local/bin/check --token s3cret"
    text = GOOD.replace('frontend = "api"', f'script = "{secret_line}"', 1)
    config = parse(tomllib.loads(text), FILE).vrrp[0]
    tracks = TrackSet(config.tracks, lambda: None, lambda name: True, None)
    shown = tracks.status()
    assert [t["name"] for t in shown] == ["script:check"]
    document = {"node": "edge-1", "vrrp": [{"name": "api", "state": "BACKUP", "tracks": shown,
                                            "fault_reasons": [f"track:{t['name']}" for t in shown]}]}
    samples = [(family.name, sample.labels) for family in families_from_status(document)
               for sample in family.samples]
    assert ("vipd_vrrp_track_ok", {"instance": "api", "track": "script:check"}) in samples
    assert "s3cret" not in repr(samples) and "s3cret" not in repr(shown)
