"""Notify scripts: run on VRRP transitions with the arguments NAME STATE PRIORITY; the generic
`notify` script (keepalived's form) with TYPE NAME STATE PRIORITY, e.g. `INSTANCE api MASTER 150`,
after the state's own script.

One queue and one runner task per instance, so the scripts run strictly in the order of the
transitions and never hold up the state machine. A transition may wait for a future first (the VIP
change that realises the new state), so a master script sees the VIPs already in place.

The queue is bounded: a transition still waiting when the instance enters the same state again is
superseded (it moves to the back, with the new priority), so while transitions come faster than
the scripts run, each state's scripts wait at most once, the latest state's run last, and at most
MAX_WAITING transitions (two scripts each) wait behind the one running.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass

from vipd.vrrp.config import Notify, script_label
from vipd.vrrp.tracks import cancel_and_wait, run_command

log = logging.getLogger("vipd.vrrp")

GENERIC_TYPE = "INSTANCE"     # keepalived's $1: INSTANCE or GROUP (vipd has no sync groups)
MAX_WAITING = 4               # transitions; the states (INIT, BACKUP, MASTER, FAULT, STOP) bound it too


@dataclass(frozen=True)
class NotifyJob:
    script: str
    generic: bool


@dataclass
class Transition:
    state: str
    priority: int
    jobs: tuple[NotifyJob, ...]
    timeout: float
    user: str | None
    after: asyncio.Future | None = None


class NotifyQueue:
    def __init__(self, name: str) -> None:
        self.name = name
        self._waiting: deque[Transition] = deque()
        self._running: Transition | None = None
        self._runner: asyncio.Task | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.completed = 0        # scripts run (or given up on)
        self.superseded = 0       # transitions whose scripts never ran: a later one replaced them

    def transition(self, notify: Notify, state: str, priority: int, after: asyncio.Future | None = None) -> None:
        """Queue the scripts `notify` names for entering `state`: the state's own, then the generic one."""
        jobs = tuple(NotifyJob(script, generic) for script, generic in
                     ((notify.for_state(state), False), (notify.generic, True)) if script)
        if not jobs:
            return
        kept = deque(t for t in self._waiting if t.state != state)
        while len(kept) >= MAX_WAITING:
            kept.popleft()
        dropped = len(self._waiting) - len(kept)
        if dropped:
            self.superseded += dropped
            log.info("notify %s: %d waiting transition(s) superseded by %s", self.name, dropped, state)
        kept.append(Transition(state, priority, jobs, notify.timeout, notify.user, after))
        self._waiting = kept
        self._idle.clear()
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"notify {self.name}")

    @property
    def waiting(self) -> list[str]:
        """The states whose scripts wait, oldest first."""
        return [t.state for t in self._waiting]

    def argv(self, job: NotifyJob, transition: Transition) -> list[str]:
        # The script line may carry its own arguments; ours are appended after them.
        kind = [GENERIC_TYPE] if job.generic else []
        return ["/bin/sh", "-c", f'{job.script} "$@"', "vipd-notify", *kind, self.name, transition.state,
                str(transition.priority)]

    async def _run(self) -> None:
        try:
            while self._waiting:
                transition = self._running = self._waiting.popleft()
                if transition.after is not None:
                    try:
                        await asyncio.shield(transition.after)
                    except Exception:
                        pass
                for job in transition.jobs:
                    status = await run_command(self.argv(job, transition), transition.timeout,
                                               f"notify {self.name} {transition.state}", transition.user)
                    if status not in (0, None):
                        log.warning("notify %s %s: %s exited %d", self.name, transition.state,
                                    script_label(job.script), status)
                    self.completed += 1
                self._running = None
        finally:
            self._running = None
            if not self._waiting:
                self._idle.set()

    def _worst_case(self) -> float:
        queued = ([self._running] if self._running else []) + list(self._waiting)
        return sum(len(t.jobs) * t.timeout for t in queued) + 1.0

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait until every queued script has run; False when `timeout` (default: long enough for
        every queued script to reach its own timeout) passed first."""
        try:
            await asyncio.wait_for(self._idle.wait(), self._worst_case() if timeout is None else timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        self._waiting.clear()
        if self._runner is not None:
            await cancel_and_wait(self._runner)
            self._runner = None
        self._idle.set()
