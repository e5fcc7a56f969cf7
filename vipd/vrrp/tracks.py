"""What a VRRP instance tracks: check scripts, interfaces and this node's frontends.

Every result goes through `lbproxy.health.HealthCounter`. Interface and frontend tracks are told
of changes (netlink events; the proxy's `serving` verdicts, pushed); only scripts run on a
schedule. Weights apply as in keepalived, so migrated configs keep their meaning: a negative
weight is added while the track fails, a positive one while it succeeds; a failing weight-0
track puts the instance in FAULT.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import pwd
import shutil
import signal
import subprocess
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

from lbproxy.health import HealthCounter
from vipd import scriptcgroup
from vipd.scriptsafety import SCRIPT_PATH
from vipd.vrrp.config import Track as TrackConfig
from vipd.vrrp.packet import OWNER_PRIORITY

log = logging.getLogger("vipd.vrrp")

# Every run carries its own mark in its environment, which its descendants inherit: on timeout,
# those that left the process group (setsid, double fork) are found by it and killed too. One
# that also replaces its whole environment escapes this; where the host gives vipd a cgroup,
# each run also has a cgroup of its own (vipd.scriptcgroup), which nothing escapes.
RUN_MARK = "VIPD_SCRIPT_RUN"
_runs = itertools.count(1)


def effective_priority(priority: int, applied_weights: Iterable[int]) -> int:
    """Configured priority plus the weights that currently apply, kept in 1..254; an address
    owner (255) stays 255."""
    if priority == OWNER_PRIORITY:
        return OWNER_PRIORITY
    return max(1, min(254, priority + sum(applied_weights)))


def kill_process_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _marked(pid: int, needle: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as file:
            return needle in b"\0" + file.read()
    except OSError:
        return False


def _in_group(pid: int, group: int | None) -> bool:
    try:
        return group is not None and os.getpgid(pid) == group
    except OSError:
        return False


def kill_marked(mark: str, group: int | None = None, rounds: int = 5) -> int:
    """SIGKILL every process whose environment carries RUN_MARK=`mark`; how many were killed,
    not counting members of process group `group`. The environment is read again once a pidfd
    holds the process, so a recycled PID is never signalled."""
    needle = f"\0{RUN_MARK}={mark}\0".encode()
    killed: set[int] = set()
    for _ in range(rounds):         # one may fork while the others die: look until none is new
        before = len(killed)
        for name in os.listdir("/proc"):
            if not name.isdigit() or int(name) == os.getpid():
                continue
            pid = int(name)
            if not _marked(pid, needle):
                continue
            try:
                pidfd = os.pidfd_open(pid)
            except OSError:
                continue
            try:
                if _marked(pid, needle):        # still the same process: the pidfd pins it
                    if not _in_group(pid, group):
                        killed.add(pid)
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            except OSError:
                pass
            finally:
                os.close(pidfd)
        if len(killed) == before:
            break
    return len(killed)


def kill_run(pid: int, mark: str) -> int:
    """Kill a script run: its process group, then whatever of it left the group."""
    kill_process_group(pid)
    return kill_marked(mark, group=pid)


def run_as(user: str | None) -> dict[str, Any]:
    """subprocess arguments that make the child `user`, with that user's groups (initgroups)."""
    if user is None:
        return {}
    account = pwd.getpwnam(user)
    return {"user": account.pw_uid, "group": account.pw_gid,
            "extra_groups": os.getgrouplist(user, account.pw_gid)}


def _stop_run(pid: int, mark: str, cgroup: scriptcgroup.RunCgroup | None) -> str:
    """Kill a run that ran too long: its cgroup, then its process group and marked strays
    (all of the run when it has no cgroup; else what a failed move into it left out)."""
    contained = 0
    if cgroup is not None:
        contained = cgroup.kill()
        cgroup.finish(kill=True)
    strays = kill_run(pid, mark)
    if cgroup is not None:
        return f"killed its cgroup ({contained} process(es))" + (
            f" and {strays} process(es) of it outside the cgroup" if strays else "")
    return "killed its process group" + (f" and {strays} process(es) that had left it" if strays else "")


async def run_command(argv: Sequence[str], timeout: float, what: str, user: str | None = None) -> int | None:
    """Run argv as `user` (None: as the daemon) in a session (and, where the host allows, a
    cgroup) of its own, in /, with a clean environment; return its exit status, or None when it
    could not start or ran past `timeout` (then all of it is killed: its cgroup, its process
    group and any descendant that left the group)."""
    mark = f"{os.getpid()}.{next(_runs)}"
    cgroups = scriptcgroup.active()
    cgroup = None
    try:
        command, stdin = list(argv), subprocess.DEVNULL
        if cgroups is not None:
            # The wrapper execs the script by path: one that cannot be found fails here, as
            # it does when spawned directly (a relative path is one from the run's cwd, /).
            name = os.path.join("/", command[0]) if "/" in command[0] else command[0]
            program = shutil.which(name, path=SCRIPT_PATH)
            if program is None:
                raise FileNotFoundError(2, "No such file or directory", command[0])
            cgroup = cgroups.new_run()
            if cgroup is not None:
                command, stdin = cgroup.command([program, *command[1:]]), cgroup.procs
        proc = await asyncio.create_subprocess_exec(
            *command, stdin=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, cwd="/", env={"PATH": SCRIPT_PATH, "LANG": "C", RUN_MARK: mark},
            **run_as(user))
    except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        if cgroup is not None:
            cgroup.finish(kill=False)
        log.warning("%s: cannot start: %s", what, getattr(exc, "strerror", None) or exc)
        return None
    except asyncio.CancelledError:
        if cgroup is not None:      # whatever started in it is ended; the group goes with the next run
            cgroup.kill()
            cgroup.finish(kill=False)
        raise
    if cgroup is not None:
        cgroup.spawned()
    try:
        # asyncio.timeout, not wait_for: 3.11's wait_for can lose a cancellation that arrives
        # just as the process ends, and then a stopping track would run on.
        async with asyncio.timeout(timeout):
            status = await proc.wait()
    except TimeoutError:
        # /proc and cgroupfs are read in a thread: a busy host must not delay the adverts.
        killed = await asyncio.to_thread(_stop_run, proc.pid, mark, cgroup)
        log.warning("%s: timed out after %gs; %s", what, timeout, killed)
        await proc.wait()
        return None
    except asyncio.CancelledError:
        # The cgroup and the group at once; the rest from a thread, not awaited: a cancelled
        # task cannot wait.
        if cgroup is not None:
            cgroup.kill()
        kill_process_group(proc.pid)
        asyncio.get_running_loop().run_in_executor(None, _stop_run, proc.pid, mark, cgroup)
        raise
    if cgroup is not None:
        cgroup.finish(kill=False)
    return status


async def cancel_and_wait(task: asyncio.Task, timeout: float = 5.0) -> None:
    """Cancel `task` and wait until it has ended, without swallowing a cancellation of the caller."""
    for _ in range(10):
        if task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=timeout / 10)
    if not task.done():
        log.error("%s did not stop within %gs", task.get_name(), timeout)


class Track:
    """One tracked thing; `ok` is its counter's verdict."""

    def __init__(self, config: TrackConfig, rise: int = 1, fall: int = 1) -> None:
        self.config = config
        self.counter = HealthCounter(rise, fall, up=True)
        self.reported = False

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def weight(self) -> int:
        return self.config.weight

    @property
    def ok(self) -> bool:
        return self.counter.up

    def record(self, ok: bool) -> bool:
        """Feed one result; True when ok changed. The first result is taken as it is, later ones
        need rise/fall in a row."""
        if not self.reported:
            self.reported = True
            was = self.counter.up
            self.counter.force(ok)
            changed = was != ok
        else:
            changed = self.counter.record(ok)
        if changed:
            log.warning("track %s is now %s (%s)", self.name, "OK" if self.ok else "FAILING",
                        self.counter.describe())
        return changed

    def status(self) -> dict:
        return {"name": self.name, "ok": self.ok, "weight": self.weight,
                "health": self.counter.describe()}


class ScriptTrack(Track):
    """Runs its script every `interval` (never two runs at once), killing it after `timeout`."""

    def __init__(self, config: TrackConfig, on_change: Callable[[], None]) -> None:
        super().__init__(config, config.rise, config.fall)
        self._on_change = on_change
        self._task: asyncio.Task | None = None
        self.first_result = asyncio.Event()
        self.runs = 0
        self.last_status: int | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name=f"track {self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def run_once(self) -> bool:
        status = await run_command(["/bin/sh", "-c", self.config.target], self.config.timeout,
                                   f"track {self.name}", self.config.user)
        self.runs += 1
        self.last_status = status
        return status == 0

    async def _loop(self) -> None:
        while True:
            started = time.monotonic()
            try:
                ok = await self.run_once()
            except Exception as exc:
                # Whatever goes wrong with one run is a failed check, never a dead track that
                # keeps its last verdict forever.
                log.error("track %s: run failed: %s: %s", self.name, type(exc).__name__, exc)
                ok = False
            changed = self.record(ok)
            self.first_result.set()
            if changed:
                self._on_change()
            await asyncio.sleep(max(0.0, started + self.config.interval - time.monotonic()))


class TrackSet:
    """An instance's tracks; calls `on_change` whenever one of them flips.

    `serving` is the frontends' serving verdicts as last pushed (absent: not serving); a frontend
    track made later (start, reload) starts from it, and `frontend_serving` brings each push."""

    def __init__(self, configs: Sequence[TrackConfig], on_change: Callable[[], None],
                 link_up: Callable[[str], bool], serving: Mapping[str, bool] | None) -> None:
        self._on_change = on_change
        self._link_up = link_up
        self._serving = serving if serving is not None else {}
        self.tracks: list[Track] = []
        self._started = False
        self._set(configs, keep=[])

    def _make(self, config: TrackConfig) -> Track:
        if config.kind == "script":
            return ScriptTrack(config, self._on_change)
        track = Track(config)
        if config.kind == "interface":
            track.record(self._link_up(config.target))
        else:
            track.record(self._serving.get(config.target, False))
        return track

    def _set(self, configs: Sequence[TrackConfig], keep: list[Track]) -> list[Track]:
        """Build the track list for `configs`, reusing tracks from `keep` with identical config."""
        available = list(keep)
        tracks = []
        for config in configs:
            reused = next((t for t in available if t.config == config), None)
            if reused is not None:
                available.remove(reused)
                tracks.append(reused)
            else:
                tracks.append(self._make(config))
        self.tracks = tracks
        return available

    def start(self) -> None:
        self._started = True
        for track in self.tracks:
            if isinstance(track, ScriptTrack):
                track.start()

    async def wait_first_results(self, timeout: float) -> None:
        waits = [t.first_result.wait() for t in self.tracks if isinstance(t, ScriptTrack)]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout)
            except asyncio.TimeoutError:
                pass

    @property
    def first_result_timeout(self) -> float:
        return max((t.config.timeout for t in self.tracks if t.config.kind == "script"), default=0.0) + 1.0

    async def update(self, configs: Sequence[TrackConfig]) -> None:
        """Apply reloaded track configs; unchanged tracks keep their state and their schedule."""
        removed = self._set(configs, keep=self.tracks)
        for track in removed:
            if isinstance(track, ScriptTrack):
                await track.stop()
        if self._started:
            for track in self.tracks:
                if isinstance(track, ScriptTrack):
                    track.start()
        self._on_change()

    async def stop(self) -> None:
        self._started = False
        for track in self.tracks:
            if isinstance(track, ScriptTrack):
                await track.stop()

    def _record(self, results: dict[Track, bool]) -> None:
        changed = False
        for track, ok in results.items():
            changed |= track.record(ok)
        if changed:
            self._on_change()

    def frontend_serving(self, name: str, serving: bool) -> None:
        """The proxy's verdict on frontend `name` changed (the caller's `serving` table already
        holds it)."""
        self._record({t: serving for t in self.tracks
                      if t.config.kind == "frontend" and t.config.target == name})

    def links_changed(self) -> None:
        self._record({t: self._link_up(t.config.target) for t in self.tracks
                      if t.config.kind == "interface"})

    def effective_priority(self, priority: int) -> int:
        return effective_priority(priority, (t.weight for t in self.tracks
                                             if (t.weight < 0 and not t.ok) or (t.weight > 0 and t.ok)))

    def fault_reasons(self) -> set[str]:
        return {f"track:{t.name}" for t in self.tracks if not t.ok and t.weight == 0}

    def status(self) -> list[dict]:
        return [t.status() for t in self.tracks]
