"""A proxy worker process: `lbproxy.worker.main` run by `python -I` (see supervisor.WORKER_BOOT)
with `--ipc-fd N`, spawned by the supervisor.

Before anything else it sheds what it does not need (lbproxy.privileges: all capabilities but
NET_BIND_SERVICE, root when `--user` is given, and its claim on memory under pressure). It runs
uvloop at nice +10, opens its own SO_REUSEPORT listener per frontend, and obeys only
its master: SIGTERM/SIGINT/SIGHUP are ignored (systemd or a terminal may signal the whole
group; the master decides the stop order), and end-of-file on the IPC channel means the master
is gone, so the worker drains and exits instead of serving on as an orphan.
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import socket
import sys
import time
import weakref

import uvloop

from lbproxy import ipc, logsetup, privileges
from lbproxy.accesslog import AccessLog
from lbproxy.frontend import Frontend

log = logging.getLogger("lbproxy.worker")

EXIT_LISTEN_FAILED = 3
EXIT_PRIVILEGES = 4
NICE = 10
MAX_FAILURES_REPORTED = 100


class Worker:
    def __init__(self, channel: ipc.Channel, name: str) -> None:
        self.channel = channel
        self.name = name
        self.frontends: dict[str, Frontend] = {}
        self.retiring: set[asyncio.Task] = set()
        self.workers = 1
        self._failures: dict[tuple[str, str], list] = {}
        self._flush_scheduled = False
        self._next_sweep = 0.0
        self.access_log = AccessLog()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._tick())
        try:
            while True:
                message = await self.channel.receive()
                if message is None:
                    log.warning("%s: the master is gone; draining and exiting", self.name)
                    await self.drain(None)
                    return 0
                op = message["op"]
                if op == "configure":
                    if not self.configure(message):
                        return EXIT_LISTEN_FAILED
                elif op == "state":
                    fe = self.frontends.get(message.get("frontend"))
                    if fe is not None:
                        fe.set_state(message["address"], message["state"], message.get("weight"),
                                     message.get("since"))
                elif op == "stop_accepting":
                    taken = self.stop_accepting()
                    self.channel.send({"op": "stopped_accepting", "taken": taken})
                elif op == "drain":
                    await self.drain(message.get("timeout"))
                    return 0
                else:
                    log.warning("%s: unknown IPC op %r", self.name, op)
        finally:
            ticker.cancel()
            self.send_stats()
            await self.channel.drain()
            self.channel.close()

    def configure(self, message: dict) -> bool:
        loop = asyncio.get_running_loop()
        self.workers = int(message.get("workers", 1))
        states: dict[str, dict[str, str]] = message.get("states", {})
        weights: dict[str, dict[str, int]] = message.get("weights", {})
        since: dict[str, dict[str, float]] = message.get("since", {})
        wanted = [ipc.frontend_from_dict(f) for f in message["frontends"]]
        for config in wanted:
            fe = self.frontends.get(config.name)
            fe_states = states.get(config.name, {})
            if fe is not None and fe.config.listen == config.listen:
                fe.configure(config, self.workers, fe_states, weights.get(config.name), since.get(config.name))
                continue
            if fe is not None:
                self._retire(fe)
            fe = Frontend(loop, config, self.workers, fe_states, self.report_failure, self.access_log,
                          weights.get(config.name), since.get(config.name))
            try:
                fe.listen()
            except OSError as exc:
                problem = f"frontend {config.name!r}: cannot listen on {config.listen}: {exc.strerror or exc}"
                log.error("%s: %s", self.name, problem)
                self.channel.send({"op": "error", "message": problem})
                return False
            self.frontends[config.name] = fe
        names = {c.name for c in wanted}
        for name in [n for n in self.frontends if n not in names]:
            self._retire(self.frontends.pop(name))
        self.channel.send({"op": "listening", "frontends": sorted(self.frontends)})
        return True

    def _retire(self, fe: Frontend) -> None:
        """A frontend left the config: stop taking connections, let the open ones finish."""
        fe.stop_accepting()

        async def finish() -> None:
            if not await fe.wait_idle(fe.config.drain_timeout):
                fe.abort_all()
        task = asyncio.get_running_loop().create_task(finish())
        self.retiring.add(task)
        task.add_done_callback(self.retiring.discard)

    def stop_accepting(self) -> int:
        return sum(fe.stop_accepting() for fe in self.frontends.values())

    async def drain(self, timeout: float | None) -> None:
        self.stop_accepting()
        waits = [fe.wait_idle(fe.config.drain_timeout if timeout is None else timeout)
                 for fe in self.frontends.values()]
        await asyncio.gather(*waits, *self.retiring)
        left = sum(len(fe.connections) for fe in self.frontends.values())
        if left:
            log.info("%s: drain timeout: closing %d connection(s)", self.name, left)
            for fe in self.frontends.values():
                fe.abort_all()
            for _ in range(100):
                if not any(fe.connections for fe in self.frontends.values()):
                    break
                await asyncio.sleep(0.01)

    # --- passive health and counters, towards the master

    def report_failure(self, frontend: str, address: str, reason: str) -> None:
        entry = self._failures.get((frontend, address))
        if entry is None:
            self._failures[(frontend, address)] = [1, reason]
        else:
            entry[0] += 1
            entry[1] = reason
        if not self._flush_scheduled:
            # Coalesces a burst (many clients failing on one dead backend) into one message.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_failures)

    def _flush_failures(self) -> None:
        self._flush_scheduled = False
        failures, self._failures = self._failures, {}
        for (frontend, address), (count, reason) in failures.items():
            self.channel.send({"op": "connect_failed", "frontend": frontend, "address": address,
                               "reason": reason, "count": min(count, MAX_FAILURES_REPORTED)})

    def send_stats(self) -> None:
        self.channel.send({"op": "stats", "frontends": {n: fe.stats() for n, fe in self.frontends.items()}})

    async def _tick(self) -> None:
        next_stats = 0.0
        while True:
            now = time.monotonic()
            frontends = list(self.frontends.values())
            for fe in frontends:
                fe.sweep_connecting(now)
            if now >= self._next_sweep:
                for fe in frontends:
                    fe.sweep_idle(now)
                self._next_sweep = now + min([1.0] + [_sweep_step(fe.config) for fe in frontends])
            if now >= next_stats:
                self.access_log.flush()
                self.send_stats()
                next_stats = now + ipc.STATS_INTERVAL
            step = min([0.25] + [fe.config.connect_timeout / 5 for fe in frontends])
            await asyncio.sleep(max(step, 0.01))


def _sweep_step(config) -> float:
    """A quarter of the frontend's shortest timeout: each one fires at most 25% late."""
    timeouts = [config.idle_timeout, config.half_close_timeout]
    if config.client_first_byte_timeout:
        timeouts.append(config.client_first_byte_timeout)
    return min(timeouts) / 4


class _UntrackedTransports(weakref.WeakValueDictionary):
    """Takes the place of uvloop's registry of transports by descriptor (see untrack_transports):
    records nothing, and so never finds a transport behind a descriptor."""

    def __setitem__(self, fd: int, transport) -> None:
        pass

    def __getitem__(self, fd: int):
        raise KeyError(fd)


def untrack_transports(loop: asyncio.AbstractEventLoop) -> bool:
    """uvloop files every new transport in a WeakValueDictionary, in Python code, only so that
    add_reader() on a transport's descriptor can raise; that was 7 % of a worker's instructions
    per proxied connection. The worker never watches a transport's descriptor itself, so the
    registry is swapped for one that records nothing. False if this uvloop has no such registry."""
    registries = [o for o in gc.get_referents(loop) if type(o) is weakref.WeakValueDictionary]
    if len(registries) != 1 or len(registries[0]):
        return False
    registries[0].__class__ = _UntrackedTransports
    return True


async def _main(fd: int, name: str) -> int:
    untrack_transports(asyncio.get_running_loop())
    sock = socket.socket(fileno=fd)
    channel = await ipc.Channel.open(sock)
    return await Worker(channel, name).run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lbproxy.worker", description="lbproxy worker (spawned by the master)")
    parser.add_argument("--ipc-fd", type=int, required=True)
    parser.add_argument("--name", default="worker")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--log-format", default=logsetup.LogFormat.TEXT, choices=list(logsetup.LogFormat))
    parser.add_argument("--user", help="drop root to this user before serving")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # The master's format (vipd.daemon), with the worker's name.
    listener = logsetup.setup(args.log_level, args.log_format, worker=args.name)
    try:
        return _serve(args)
    finally:
        listener.stop()


def _serve(args: argparse.Namespace) -> int:
    try:
        os.nice(NICE)
    except OSError as exc:
        log.warning("%s: cannot lower priority: %s", args.name, exc)
    try:
        privileges.raise_oom_score()
    except OSError as exc:
        log.warning("%s: cannot raise the OOM score: %s", args.name, exc)
    try:
        for note in privileges.drop(args.user):
            log.warning("%s: %s", args.name, note)
    except (OSError, KeyError) as exc:
        log.error("%s: cannot drop privileges%s: %s", args.name,
                  f" to user {args.user!r}" if args.user else "", exc)
        return EXIT_PRIVILEGES
    # Connections are reference cycles (legs <-> connection) that die young; a larger first
    # generation keeps the collector from walking live transports every few hundred accepts.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    return uvloop.run(_main(args.ipc_fd, args.name))


if __name__ == "__main__":
    sys.exit(main())
