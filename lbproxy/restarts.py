"""Trying again after a failure: a first delay doubling per failure up to a cap, starting over after
a success; and how a child process ended, in words."""
from __future__ import annotations

import signal
from dataclasses import dataclass, field


@dataclass
class Backoff:
    first: float
    most: float
    _next: float = field(init=False)

    def __post_init__(self) -> None:
        self._next = self.first

    def next(self) -> float:
        """The delay before this retry; the following one waits twice as long, up to the cap."""
        delay = self._next
        self._next = min(delay * 2, self.most)
        return delay

    def reset(self) -> None:
        self._next = self.first

    def after_run(self, ran: float, stable: float) -> float:
        """The delay before restarting something that failed after running `ran` seconds: one
        that ran `stable` seconds or more starts over from the first delay."""
        if ran >= stable:
            self.reset()
        return self.next()


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exit status unknown"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"
