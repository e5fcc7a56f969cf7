"""Notify scripts: run on VRRP transitions with the arguments NAME STATE PRIORITY; the generic
`notify` script (keepalived's form) with TYPE NAME STATE PRIORITY, e.g. `INSTANCE api MASTER 150`,
after the state's own script.

One queue and one runner task per instance, so the scripts run strictly in the order of the
transitions and never hold up the state machine. A job may wait for a future first (the VIP
change that realises the new state), so a master script sees the VIPs already in place.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from vipd.vrrp.config import Notify
from vipd.vrrp.tracks import cancel_and_wait, run_command

log = logging.getLogger("vipd.vrrp")

DEFAULT_TIMEOUT = 30.0
GENERIC_TYPE = "INSTANCE"     # keepalived's $1: INSTANCE or GROUP (vipd has no sync groups)


@dataclass
class NotifyJob:
    script: str
    state: str
    priority: int
    after: asyncio.Future | None = None
    generic: bool = False


class NotifyQueue:
    def __init__(self, name: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.name = name
        self.timeout = timeout
        self._queue: asyncio.Queue[NotifyJob] = asyncio.Queue()
        self._runner: asyncio.Task | None = None
        self.completed = 0

    def transition(self, notify: Notify, state: str, priority: int, after: asyncio.Future | None = None) -> None:
        """The scripts `notify` names for entering `state`: the state's own, then the generic one."""
        self.push(notify.for_state(state), state, priority, after)
        self.push(notify.generic, state, priority, after, generic=True)

    def push(self, script: str | None, state: str, priority: int, after: asyncio.Future | None = None,
             generic: bool = False) -> None:
        if not script:
            return
        self._queue.put_nowait(NotifyJob(script, state, priority, after, generic))
        if self._runner is None or self._runner.done():
            self._runner = asyncio.create_task(self._run(), name=f"notify {self.name}")

    def argv(self, job: NotifyJob) -> list[str]:
        # The script line may carry its own arguments; ours are appended after them.
        kind = [GENERIC_TYPE] if job.generic else []
        return ["/bin/sh", "-c", f'{job.script} "$@"', "vipd-notify", *kind, self.name, job.state, str(job.priority)]

    async def _run(self) -> None:
        while not self._queue.empty():
            job = self._queue.get_nowait()
            try:
                if job.after is not None:
                    try:
                        await asyncio.shield(job.after)
                    except Exception:
                        pass
                status = await run_command(self.argv(job), self.timeout,
                                           f"notify {self.name} {job.state}")
                if status not in (0, None):
                    log.warning("notify %s %s: %s exited %d", self.name, job.state, job.script, status)
            finally:
                self._queue.task_done()
                self.completed += 1

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued script has run; False when `timeout` passed first."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def close(self) -> None:
        if self._runner is not None:
            await cancel_and_wait(self._runner)
            self._runner = None
