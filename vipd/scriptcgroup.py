"""A cgroup v2 group per script run, when the host gives vipd a cgroup of its own.

A script that leaves its process group (setsid, double fork) AND replaces its environment escapes
the process-group-and-mark kill of vipd/vrrp/tracks.py; it cannot leave a cgroup (moving out needs
write access above vipd's own cgroup). So, where vipd may write its own cgroup (systemd
`Delegate=yes`, or the root of a cgroup tree no manager owns: a container's namespace, a host
without systemd), each run gets `<own>/vipd-scripts/<daemon>/run-<n>` and a timeout kills the
whole group. Controllers are never enabled: the no-internal-processes rule stays out of play.

The run moves itself in before the script starts: the daemon opens the run's cgroup.procs and
hands it to the child as stdin; a /bin/sh wrapper writes "0" (itself) to it and execs the script
with stdin back on /dev/null. The kernel checks a migration against the credentials that OPENED
cgroup.procs, so a run as `script_user` moves too. (preexec_fn would do the same without the
exec, but the daemon has threads when it spawns: the netlink monitor, the default executor.)
"""
from __future__ import annotations

import atexit
import errno
import itertools
import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from enum import Enum
from typing import Sequence

log = logging.getLogger("vipd.scripts")

SCRIPTS_DIR = "vipd-scripts"
DAEMON_LEAF = "daemon"
RUN_PREFIX = "run-"
# stdin is the run's cgroup.procs (write-only); "0" means the writer itself.
MOVE_SELF = 'echo 0 >&0; exec "$@" </dev/null'
_OWNER = re.compile(r"(\d+)-(\d+)")


class Containment(Enum):
    CGROUP = "cgroup"
    PROCESS_GROUP = "process group"


# ---------------------------------------------------------------- pure: what the host offers

def cgroup2_mount(mounts: str) -> str | None:
    """Where the cgroup2 hierarchy is mounted, from /proc/self/mounts (octal escapes undone)."""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
    return None


def own_cgroup(proc_cgroup: str) -> str | None:
    """This process's cgroup2 path from /proc/self/cgroup (its "0::PATH" line)."""
    for line in proc_cgroup.splitlines():
        if line.startswith("0::/"):
            return line[3:]
    return None


@dataclass(frozen=True)
class Host:
    mount: str | None           # cgroup2 mount point
    own: str | None             # our cgroup, relative to the mount
    writable: bool              # mkdir and cgroup.procs in it allowed
    delegated: bool             # systemd marked it delegated (user.delegate / trusted.delegate xattr)


@dataclass(frozen=True)
class Choice:
    containment: Containment
    reason: str
    base: str | None = None     # our cgroup's directory
    leaf: bool = False          # move the daemon into base/daemon first


def choose(host: Host) -> Choice:
    """Cgroup containment only where the cgroup is ours: delegated to us, or the root of a tree
    (own cgroup "/": no manager runs here; a systemd host never leaves a service in its root).
    Below a cgroup that is not delegated, systemd owns the tree and we must not create groups."""
    if host.mount is None:
        return Choice(Containment.PROCESS_GROUP, "no cgroup2 hierarchy is mounted")
    if host.own is None:
        return Choice(Containment.PROCESS_GROUP, "/proc/self/cgroup names no cgroup2 group")
    base = os.path.normpath(host.mount + host.own)
    if not host.writable:
        return Choice(Containment.PROCESS_GROUP, f"{base} is not writable")
    if host.own == "/":
        return Choice(Containment.CGROUP, f"runs go below {base}/{SCRIPTS_DIR}", base)
    if not host.delegated:
        return Choice(Containment.PROCESS_GROUP, f"{base} is not delegated to vipd (systemd Delegate=yes)")
    # A delegated cgroup must be an inner node: systemd runs ExecReload=/ExecStopPost= in a
    # .control sub-cgroup of it, and the daemon moves down before it reports ready.
    return Choice(Containment.CGROUP, f"runs go below {base}/{SCRIPTS_DIR}; the daemon in {base}/{DAEMON_LEAF}",
                  base, leaf=True)


def process_start(stat: str) -> int | None:
    """Start time (clock ticks since boot) from /proc/PID/stat: with the PID it names one process."""
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def parse_owner(name: str) -> tuple[int, int] | None:
    """The daemon (PID, start time) a `vipd-scripts/<PID>-<start>` directory belongs to."""
    match = _OWNER.fullmatch(name)
    return (int(match.group(1)), int(match.group(2))) if match else None


# ---------------------------------------------------------------- shell: reading and writing cgroupfs

def _read(path: str) -> str | None:
    try:
        with open(path) as file:
            return file.read()
    except OSError:
        return None


def _start_of(pid: int) -> int | None:
    stat = _read(f"/proc/{pid}/stat")
    return None if stat is None else process_start(stat)


def _delegated(path: str) -> bool:
    for name in ("user.delegate", "trusted.delegate"):     # trusted.* needs CAP_SYS_ADMIN to read
        try:
            if os.getxattr(path, name) == b"1":
                return True
        except OSError:
            pass
    return False


def read_host() -> Host:
    mount = cgroup2_mount(_read("/proc/self/mounts") or "")
    own = own_cgroup(_read("/proc/self/cgroup") or "")
    if mount is None or own is None:
        return Host(mount, own, False, False)
    base = os.path.normpath(mount + own)
    writable = os.access(base, os.W_OK) and os.access(os.path.join(base, "cgroup.procs"), os.W_OK)
    return Host(mount, own, writable, _delegated(base))


def _pids(path: str) -> list[int]:
    return [int(line) for line in (_read(os.path.join(path, "cgroup.procs")) or "").split()]


def kill_cgroup(path: str) -> int:
    """SIGKILL every process in cgroup `path`; how many there were. cgroup.kill (Linux 5.14)
    also kills what forks meanwhile; before it, each PID is signalled through a pidfd once it is
    seen still in the group, so a recycled PID is never hit (callers repeat until empty)."""
    pids = _pids(path)
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as file:
            file.write("1")
    except FileNotFoundError:
        kill_each(path, pids)
    return len(pids)


def kill_each(path: str, pids: list[int]) -> None:
    """SIGKILL those of `pids` still in cgroup `path` (kernels without cgroup.kill). Each is
    pinned by a pidfd first, so the one read of the group afterwards names the same processes."""
    pidfds: dict[int, int] = {}
    try:
        for pid in pids:
            try:
                pidfds[pid] = os.pidfd_open(pid)
            except OSError:
                continue
        still = set(_pids(path))
        for pid, pidfd in pidfds.items():
            if pid in still:
                try:
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                except OSError:
                    pass
    finally:
        for pidfd in pidfds.values():
            os.close(pidfd)


def remove_cgroup(path: str, kill: bool, wait: float) -> bool:
    """rmdir `path`, first killing what is in it when `kill`; True once it is gone. Killed
    processes leave the group as they exit, so rmdir is retried for up to `wait` seconds."""
    deadline = time.monotonic() + wait
    while True:
        if kill:
            kill_cgroup(path)
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                return False
        time.sleep(0.01)


class RunCgroup:
    """One script run's cgroup; `procs` is its cgroup.procs, open for the child to write."""

    def __init__(self, path: str, procs: int, owner: ScriptCgroups) -> None:
        self.path = path
        self.procs = procs
        self._owner = owner

    def command(self, argv: Sequence[str]) -> list[str]:
        """argv wrapped so that it runs inside this cgroup (argv[0] must be a path)."""
        return ["/bin/sh", "-c", MOVE_SELF, "vipd-script", *argv]

    def spawned(self) -> None:
        """The child holds its own copy of cgroup.procs now; the daemon's is closed."""
        if self.procs >= 0:
            os.close(self.procs)
            self.procs = -1

    def kill(self) -> int:
        """Kill the run now (no waiting); how many processes it had."""
        return kill_cgroup(self.path)

    def finish(self, kill: bool) -> None:
        """Remove the cgroup after the run; `kill`: its processes too (a timeout, a stop).
        Without `kill`, what the script left running in the background keeps running, and its
        group is removed once that has ended."""
        self.spawned()
        if not remove_cgroup(self.path, kill=kill, wait=2.0 if kill else 0):
            self._owner.lingering.add(self.path)


class ScriptCgroups:
    """This daemon's script cgroups: `<base>/vipd-scripts/<PID>-<start>/run-<n>`. The owner
    directory tells a live daemon's groups from those a killed one left."""

    def __init__(self, base: str) -> None:
        self.scripts = os.path.join(base, SCRIPTS_DIR)
        pid = os.getpid()
        self.owner = os.path.join(self.scripts, f"{pid}-{_start_of(pid)}")
        self._runs = itertools.count(1)
        self.lingering: set[str] = set()
        self._failed = False

    def prepare(self) -> None:
        os.makedirs(self.owner, exist_ok=True)
        self.reap_stale()

    def reap_stale(self) -> int:
        """Kill and remove what daemons that are gone left behind; how many run groups."""
        removed = 0
        for name in os.listdir(self.scripts):
            owner = parse_owner(name)
            if owner is None or _start_of(owner[0]) == owner[1]:
                continue
            path = os.path.join(self.scripts, name)
            try:
                runs = os.listdir(path)
            except OSError:                     # another daemon starting reaped it first
                continue
            for run in runs:
                if run.startswith(RUN_PREFIX) and remove_cgroup(os.path.join(path, run), kill=True, wait=2.0):
                    removed += 1
            remove_cgroup(path, kill=False, wait=0)
        if removed:
            log.warning("removed %d script cgroup(s) a stopped vipd left (their processes killed)", removed)
        return removed

    def new_run(self) -> RunCgroup | None:
        """A new empty cgroup for one run; None (the run goes without) when it cannot be made."""
        for path in list(self.lingering):      # runs whose background children have since ended
            if remove_cgroup(path, kill=False, wait=0):
                self.lingering.discard(path)
        path = os.path.join(self.owner, f"{RUN_PREFIX}{next(self._runs)}")
        try:
            os.makedirs(path)
            return RunCgroup(path, os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC), self)
        except OSError as exc:
            (log.debug if self._failed else log.warning)(
                "cannot make a cgroup for a script run (%s): it runs in its process group only", exc)
            self._failed = True
            remove_cgroup(path, kill=False, wait=0)
            return None

    def close(self) -> None:
        for path in list(self.lingering):
            if remove_cgroup(path, kill=False, wait=0):
                self.lingering.discard(path)
        if not self.lingering:
            remove_cgroup(self.owner, kill=False, wait=0)


_active: ScriptCgroups | None = None
_chosen: Choice | None = None


def setup() -> Choice:
    """Decide once per process how script runs are contained, log it, and get the cgroups ready
    (the daemon calls this first at start, before it spawns anything)."""
    global _active, _chosen
    if _chosen is not None:
        return _chosen
    choice = choose(read_host())
    if choice.containment is Containment.CGROUP:
        assert choice.base is not None
        try:
            if choice.leaf:
                leaf = os.path.join(choice.base, DAEMON_LEAF)
                os.makedirs(leaf, exist_ok=True)
                with open(os.path.join(leaf, "cgroup.procs"), "w") as file:
                    file.write(str(os.getpid()))
            cgroups = ScriptCgroups(choice.base)
            cgroups.prepare()
            atexit.register(cgroups.close)
            _active = cgroups
        except OSError as exc:
            choice = Choice(Containment.PROCESS_GROUP, f"cannot use {choice.base}: {exc}")
    _chosen = choice
    log.info("script runs are contained by %s: %s", choice.containment.value, choice.reason)
    return choice


def active() -> ScriptCgroups | None:
    """The script cgroups to use, or None: process group and environment mark only."""
    setup()
    return _active
