"""The proxy's master side: worker processes and their generations, reloads, drains, and the
health checkers whose verdicts it pushes out.

Runs inside the daemon's event loop (vipd.daemon). Health is decided here, once, by one
HealthChecker per frontend: each backend's state goes to every worker, and each frontend's
`serving` (listening, and a backend up) to `on_serving` whenever it changes. Nothing asks back.
Workers push counters every half second and report failed connects as passive health failures.

Workers are spawned (`python -I`, in `/`, so neither the environment nor the working directory
decides what they import), never forked from the running loop, one per slot of a *generation*.
A crashed worker is replaced in its slot, at once after a long life and with exponential backoff
when it keeps dying young; so is a hung one, killed when it sends nothing (its stats come every
STATS_INTERVAL) for HEARTBEAT_TIMEOUT. A reload that only touches backends (or
timeouts, balance, limits) is pushed to the running workers; one that changes listeners or the
worker count boots a new generation next to the old one (SO_REUSEPORT) and only then tells the
old one to stop accepting and drain.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import sys
import time
from typing import Callable, Mapping

import lbproxy
from lbproxy import ipc
from lbproxy.config import FrontendConfig, FrontendMode, ProxyConfig
from lbproxy.events import OnEvent, ProxyEvent
from lbproxy.health import BackendState
from lbproxy.healthcheck import HealthChecker, Override
from lbproxy.natpath import NatDataPath, NatError
from lbproxy.restarts import Backoff, describe_exit
from lbproxy.status import TrafficTotals, frontend_status
from lbproxy.sysctl import enable_request_migration

log = logging.getLogger("lbproxy")

BOOT_TIMEOUT = 20.0          # a new generation must listen within this
STABLE_AFTER = 10.0          # a worker that lived this long is restarted at once when it dies
RESTART_BACKOFF = (0.5, 30.0)
ACK_TIMEOUT = 5.0
EXIT_GRACE = 10.0            # beyond the drain timeout, before a worker is killed
HEARTBEAT_TIMEOUT = 5.0      # silence after which a worker counts as hung (it reports every 0.5 s)
HEARTBEAT_CHECK = 0.5
# The worker's entry point: imports this very lbproxy (argv[1]), also from a source tree that is
# not installed, although -I keeps PYTHONPATH and the working directory off sys.path.
WORKER_BOOT = "import sys; sys.path.insert(0, sys.argv.pop(1)); from lbproxy.worker import main; sys.exit(main())"

OnServing = Callable[[str, bool], None]    # (frontend name, serving), on every change


class ProxyError(Exception):
    """The proxy cannot do what was asked (listen, boot workers); one line for the operator."""


class _Worker:
    def __init__(self, generation: "_Generation", slot: int) -> None:
        self.generation = generation
        self.slot = slot
        self.name = f"g{generation.number}w{slot}"
        self.proc: asyncio.subprocess.Process | None = None
        self.channel: ipc.Channel | None = None
        self.started = time.monotonic()
        loop = asyncio.get_running_loop()
        self.listening: asyncio.Future = loop.create_future()
        # Only a booting generation awaits this; a replacement's failure is logged by _watch.
        self.listening.add_done_callback(lambda f: f.cancelled() or f.exception())
        self.stopped_accepting: asyncio.Future = loop.create_future()
        self.exited: asyncio.Future = loop.create_future()
        self.accepting = False
        self.expected_exit = False
        self.error: str | None = None
        self.stats: dict = {}
        self.heard = 0.0             # when the worker last sent anything; 0: not yet

    def send(self, message: dict) -> None:
        if self.channel is not None:
            self.channel.send(message)


class _Generation:
    def __init__(self, number: int, config: ProxyConfig) -> None:
        self.number = number
        self.config = config
        self.workers: dict[int, _Worker] = {}
        self.backoffs: dict[int, Backoff] = {}      # per slot, while its worker keeps dying young
        self.respawns: dict[int, asyncio.TimerHandle] = {}

    def cancel_respawns(self) -> None:
        for handle in self.respawns.values():
            handle.cancel()
        self.respawns.clear()


class ProxySupervisor:
    def __init__(self, config: ProxyConfig, on_serving: OnServing | None = None,
                 on_event: OnEvent | None = None,
                 overrides: Mapping[str, Mapping[str, Override]] | None = None) -> None:
        self.config = config
        self.on_serving = on_serving
        self.on_event = on_event
        self._all_down: dict[str, bool] = {}   # each frontend's all_down, as last told on_event
        self._states: dict[tuple[str, str], str] = {}   # each backend's state, as last heard
        # The operator's runtime overrides to start with (frontend -> backend address -> Override).
        self.initial_overrides = overrides or {}
        self.serving: dict[str, bool] = {}   # each frontend's verdict, as last pushed
        self.checkers: dict[str, HealthChecker] = {}
        self.current: _Generation | None = None
        self.workers: set[_Worker] = set()
        self.accepting = False           # listening, as far as the operator is concerned
        self._listeners_closed = False   # stop_accepting() was called: nothing may listen again
        self._stopping = False
        self._generations = 0
        self.totals = TrafficTotals()
        self._tasks: set[asyncio.Task] = set()
        self._heartbeat: asyncio.Task | None = None
        self.nat: NatDataPath | None = None      # owner of the nat frontends' nftables table

    # --- lifecycle

    async def start(self) -> None:
        """Health checks running, workers spawned and listening; ProxyError if they cannot."""
        enable_request_migration()
        for frontend in self.config.frontends:
            await self._add_checker(frontend)
        generation = self._new_generation(self.config)
        try:
            await self._sync_nat(self.config)
            await self._boot(generation)
        except BaseException:
            if self.nat is not None:
                await self.nat.stop()
            await self._stop_checkers(list(self.checkers))
            raise
        self.current = generation
        self.accepting = True
        self._heartbeat = asyncio.get_running_loop().create_task(self._watch_heartbeats())
        log.info("proxy: %d frontend(s) listening in %d worker(s)", len(generation.config.frontends),
                 len(generation.workers))
        self._update_serving()

    async def reload(self, config: ProxyConfig) -> None:
        old = self.config
        if config.worker_user != old.worker_user:
            # Listeners of one SO_REUSEPORT group must belong to one user: the old generation's
            # would refuse the new one's. A restart applies it.
            log.warning("proxy: node.worker_user changes take effect at the next restart")
            config = dataclasses.replace(config, worker_user=old.worker_user)
        listeners = lambda c: ({(f.name, f.listen) for f in c.frontends}, c.workers)
        for frontend in config.frontends:
            if frontend.name in self.checkers:
                self.checkers[frontend.name].update(frontend)
            else:
                await self._add_checker(frontend)
        removed = [name for name in self.checkers if config.frontend(name) is None]
        await self._sync_nat(config)
        if listeners(in_workers(old)) == listeners(in_workers(config)) and self.current is not None:
            self.config = config
            self.current.config = in_workers(config)
            message = self._configure_message(self.current.config)
            for worker in self.current.workers.values():
                worker.send(message)
            log.info("proxy: reloaded in place (backends and settings only)")
        else:
            generation = self._new_generation(config)
            try:
                await self._boot(generation)
            except BaseException:
                for frontend in old.frontends:
                    if frontend.name in self.checkers:
                        self.checkers[frontend.name].update(frontend)
                await self._stop_checkers([n for n in self.checkers if old.frontend(n) is None])
                raise
            previous, self.current, self.config = self.current, generation, config
            log.info("proxy: generation %d listening; generation %d stops accepting and drains",
                     generation.number, previous.number if previous else 0)
            if previous is not None:
                self._spawn_task(self._retire(previous, None))
            self._update_serving()
        await self._stop_checkers(removed)
        self._states = {key: state for key, state in self._states.items()
                        if key[0] in self.checkers and key[1] in self.checkers[key[0]].backends}
        self._update_serving()

    async def stop_accepting(self) -> None:
        """Listeners closed in every worker; open connections keep flowing."""
        self.accepting = False
        self._listeners_closed = True
        self._update_serving()
        for generation in self._generations_alive():
            generation.cancel_respawns()
        if self.nat is not None:
            try:
                await self.nat.stop_accepting()
            except NatError as exc:
                log.error("proxy: nat frontends: %s", exc)
        workers = [w for w in self.workers if w.accepting]
        for worker in workers:
            worker.send({"op": "stop_accepting"})
        await self._wait([w.stopped_accepting for w in workers], ACK_TIMEOUT)

    async def drain(self, timeout: float | None = None) -> None:
        """Let connections finish (up to `timeout` or each frontend's drain_timeout), then stop
        the workers and the health checks."""
        self._stopping = True
        self.accepting = False
        self._listeners_closed = True
        self._update_serving()
        for generation in self._generations_alive():
            generation.cancel_respawns()
        nat_drained = self._spawn_task(self.nat.drain(timeout)) if self.nat is not None else None
        workers = list(self.workers)
        for worker in workers:
            worker.expected_exit = True
            worker.accepting = False
            worker.send({"op": "drain", "timeout": timeout})
        await self._wait_exits(workers, timeout)
        if nat_drained is not None:
            await nat_drained
            self.nat = None
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._stop_checkers(list(self.checkers))

    # --- operator actions and status

    def set_drain(self, frontend: str, address: str, drained: bool) -> None:
        checker = self.checkers.get(frontend)
        if checker is None:
            raise KeyError(f"no frontend {frontend!r}")
        if address not in checker.backends:
            raise KeyError(f"no backend {address!r} in frontend {frontend!r}")
        if drained:
            checker.drain(address)
        else:
            checker.enable(address)

    def set_weight(self, frontend: str, address: str, weight: int | None) -> int | None:
        """A runtime weight (None or the configured one: back to the config); the override in force."""
        checker = self.checkers.get(frontend)
        if checker is None:
            raise KeyError(f"no frontend {frontend!r}")
        if address not in checker.backends:
            raise KeyError(f"no backend {address!r} in frontend {frontend!r}")
        return checker.set_weight(address, weight)

    def status(self) -> list[dict]:
        counters = self.totals.frontends(w.stats for w in self.workers)
        out = []
        for frontend in self.config.frontends:
            checker = self.checkers.get(frontend.name)
            nat = self.nat is not None and frontend.name in self.nat
            out.append(frontend_status(
                frontend, self.nat.stats(frontend) if nat else counters.get(frontend.name, {}),
                health=checker.status() if checker else [],
                all_down=checker.all_down if checker else True,
                serving=self.serving.get(frontend.name, False),
                workers=sum(1 for w in self.workers if w.accepting and frontend.name in w.stats),
                using_backups=checker.using_backups if checker else False))
        return out

    # --- workers

    def _new_generation(self, config: ProxyConfig) -> _Generation:
        self._generations += 1
        return _Generation(self._generations, in_workers(config))

    async def _sync_nat(self, config: ProxyConfig) -> None:
        """The nat frontends' table made to match `config` (created, updated, or removed)."""
        nat = [f for f in config.frontends if f.mode == FrontendMode.NAT]
        try:
            if self.nat is None and nat:
                owner = NatDataPath(nat, self.checkers)
                await owner.start()
                self.nat = owner
                log.info("proxy: %d nat frontend(s) forwarded by the kernel (nftables table inet vipd_nat)", len(nat))
            elif self.nat is not None and nat:
                await self.nat.update(nat)
            elif self.nat is not None:
                await self.nat.stop()
                self.nat = None
        except NatError as exc:
            raise ProxyError(str(exc)) from None

    def _generations_alive(self) -> set[_Generation]:
        alive = {w.generation for w in self.workers}
        if self.current is not None:
            alive.add(self.current)
        return alive

    async def _boot(self, generation: _Generation) -> None:
        workers = [await self._spawn(generation, slot) for slot in range(generation.config.workers)]
        try:
            await asyncio.wait_for(asyncio.gather(*(w.listening for w in workers)), BOOT_TIMEOUT)
        except asyncio.TimeoutError:
            await self._kill(workers)
            raise ProxyError(f"proxy workers did not start listening within {BOOT_TIMEOUT:g}s") from None
        except BaseException:
            await self._kill(workers, grace=ACK_TIMEOUT)      # a worker that cannot listen exits by itself
            raise

    async def _spawn(self, generation: _Generation, slot: int) -> _Worker:
        worker = _Worker(generation, slot)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        root = os.path.dirname(os.path.dirname(os.path.abspath(lbproxy.__file__)))
        config = generation.config
        argv = [sys.executable, "-I", "-c", WORKER_BOOT, root, "--ipc-fd", str(child.fileno()),
                "--name", worker.name, "--log-level", config.log_level, "--log-format", config.log_format]
        if config.worker_user:
            argv += ["--user", config.worker_user]
        try:
            worker.proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=(child.fileno(),), stdin=asyncio.subprocess.DEVNULL, cwd="/")
        except OSError as exc:
            parent.close()
            raise ProxyError(f"cannot start a proxy worker: {exc.strerror or exc}") from None
        finally:
            child.close()
        worker.channel = await ipc.Channel.open(parent)
        worker.send(self._configure_message(generation.config))
        generation.workers[slot] = worker
        self.workers.add(worker)
        self._spawn_task(self._read(worker))
        self._spawn_task(self._watch(worker))
        log.debug("proxy: started worker %s (pid %d)", worker.name, worker.proc.pid)
        return worker

    def _configure_message(self, config: ProxyConfig) -> dict:
        states = {name: {a: bh.state for a, bh in checker.backends.items()}
                  for name, checker in self.checkers.items()}
        weights = {name: {a: bh.weight for a, bh in checker.backends.items() if bh.weight_override is not None}
                   for name, checker in self.checkers.items()}
        since = {name: {a: bh.up_since for a, bh in checker.backends.items() if bh.up_since is not None}
                 for name, checker in self.checkers.items()}
        return {"op": "configure", "workers": config.workers, "states": states, "weights": weights,
                "since": since, "frontends": [ipc.frontend_to_dict(f) for f in config.frontends]}

    async def _read(self, worker: _Worker) -> None:
        while True:
            message = await worker.channel.receive()
            if message is None:
                return
            worker.heard = time.monotonic()
            op = message["op"]
            if op == "stats":
                frontends = message.get("frontends")
                if isinstance(frontends, dict):
                    worker.stats = frontends
            elif op == "connect_failed":
                checker = self.checkers.get(message.get("frontend"))
                if checker is not None:
                    for _ in range(max(1, min(int(message.get("count", 1)), 100))):
                        checker.report_connect_failure(str(message.get("address")), str(message.get("reason")))
            elif op == "listening":
                worker.accepting = not self._listeners_closed
                if not worker.listening.done():
                    worker.listening.set_result(True)
                self._update_serving()
            elif op == "stopped_accepting":
                worker.accepting = False
                if not worker.stopped_accepting.done():
                    worker.stopped_accepting.set_result(message.get("taken", 0))
            elif op == "error":
                worker.error = str(message.get("message"))
                if not worker.listening.done():
                    worker.listening.set_exception(ProxyError(worker.error))

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        ran = time.monotonic() - worker.started
        self.workers.discard(worker)
        worker.accepting = False
        worker.channel.close()
        self.totals.retire(worker.stats)
        worker.stats = {}
        how = describe_exit(code)
        if not worker.listening.done():
            worker.listening.set_exception(ProxyError(worker.error or f"proxy worker ended while starting ({how})"))
        for future in (worker.stopped_accepting, worker.exited):
            if not future.done():
                future.set_result(code)
        generation = worker.generation
        if generation.workers.get(worker.slot) is worker:
            del generation.workers[worker.slot]
        if worker.expected_exit or self._stopping:
            log.debug("proxy: worker %s (pid %d) ended: %s", worker.name, worker.proc.pid, how)
        elif generation is self.current and not self._listeners_closed:
            if ran >= STABLE_AFTER or worker.slot not in generation.backoffs:
                generation.backoffs[worker.slot] = Backoff(*RESTART_BACKOFF)
                delay = 0.0
            else:
                delay = generation.backoffs[worker.slot].next()
            log.error("proxy: worker %s (pid %d) ended (%s) after %.1fs; restarting it in %.1fs",
                      worker.name, worker.proc.pid, how, ran, delay)
            self._event(ProxyEvent.WORKER_RESTART, {"worker": worker.name, "pid": worker.proc.pid, "exit": how,
                                                    "ran_seconds": round(ran, 3), "restart_in": delay})
            loop = asyncio.get_running_loop()
            generation.respawns[worker.slot] = loop.call_later(
                delay, lambda: self._spawn_task(self._respawn(generation, worker.slot)))
        self._update_serving()

    async def _watch_heartbeats(self) -> None:
        """Kill workers that went silent; _watch then respawns them as after a crash."""
        last = time.monotonic()
        while True:
            await asyncio.sleep(HEARTBEAT_CHECK)
            now = time.monotonic()
            stalled, last = now - last > 4 * HEARTBEAT_CHECK, now
            for worker in list(self.workers):
                if stalled:
                    # This loop itself was held up: what the workers sent is still unread.
                    worker.heard = worker.heard and now
                    continue
                silent = now - (worker.heard or worker.started)
                if silent > (HEARTBEAT_TIMEOUT if worker.heard else BOOT_TIMEOUT) and worker.proc.returncode is None:
                    log.error("proxy: worker %s (pid %d) sent nothing for %.1fs; killing it",
                              worker.name, worker.proc.pid, silent)
                    worker.heard = now               # one kill per silence
                    try:
                        worker.proc.kill()
                    except ProcessLookupError:
                        pass

    async def _respawn(self, generation: _Generation, slot: int) -> None:
        generation.respawns.pop(slot, None)
        if generation is not self.current or self._listeners_closed or slot in generation.workers:
            return
        try:
            await self._spawn(generation, slot)
        except ProxyError as exc:
            log.error("proxy: %s", exc)

    async def _retire(self, generation: _Generation, timeout: float | None) -> None:
        """An old generation: stop accepting (queued connections are served), drain, exit."""
        generation.cancel_respawns()
        workers = list(generation.workers.values())
        for worker in workers:
            worker.expected_exit = True
            worker.accepting = False
            worker.send({"op": "drain", "timeout": timeout})
        await self._wait_exits(workers, timeout, generation.config)

    async def _wait_exits(self, workers: list[_Worker], timeout: float | None,
                          config: ProxyConfig | None = None) -> None:
        config = config or self.config
        longest = timeout if timeout is not None else max([f.drain_timeout for f in config.frontends] or [0.0])
        if not await self._wait([w.exited for w in workers], longest + EXIT_GRACE):
            await self._kill([w for w in workers if not w.exited.done()])

    async def _kill(self, workers: list[_Worker], grace: float = 0.0) -> None:
        for worker in workers:
            worker.expected_exit = True
        if grace:
            await self._wait([w.exited for w in workers], grace)
        for worker in workers:
            if worker.proc is not None and worker.proc.returncode is None:
                log.warning("proxy: killing worker %s (pid %d)", worker.name, worker.proc.pid)
                try:
                    worker.proc.kill()
                except ProcessLookupError:
                    pass
        await self._wait([w.exited for w in workers], ACK_TIMEOUT)

    @staticmethod
    async def _wait(futures: list[asyncio.Future], timeout: float) -> bool:
        if not futures:
            return True
        done, pending = await asyncio.wait(futures, timeout=timeout)
        return not pending

    def _spawn_task(self, coro) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- health

    async def _add_checker(self, frontend: FrontendConfig) -> None:
        checker = HealthChecker(frontend, self._health_changed, dict(self.initial_overrides.get(frontend.name, {})))
        self.checkers[frontend.name] = checker
        await checker.start()

    async def _stop_checkers(self, names: list[str]) -> None:
        for name in names:
            checker = self.checkers.pop(name, None)
            if checker is not None:
                await checker.stop()

    def _health_changed(self, frontend: str, address: str, state: str) -> None:
        # State, weight and slow-start origin in one message: a worker never balances over a
        # weight-0 backend as up, nor over a recovered one at full weight.
        bh = self.checkers[frontend].backends[address]
        message = {"op": "state", "frontend": frontend, "address": address, "state": state,
                   "weight": bh.weight, "since": bh.up_since}
        for worker in self.workers:
            worker.send(message)
        if self.nat is not None and frontend in self.nat:
            self.nat.changed()
        self._report_health(frontend, address, state)
        self._update_serving()

    def _report_health(self, frontend: str, address: str, state: str) -> None:
        """Health verdicts as events; drains and enables are the operator's, who reports them."""
        checker = self.checkers.get(frontend)
        if checker is None:
            return
        bh = checker.backends.get(address)
        old = self._states.get((frontend, address), BackendState.UP)   # backends start up
        self._states[(frontend, address)] = state
        if bh is not None and old != state and BackendState.DRAIN not in (old, state):
            self._event(ProxyEvent.BACKEND_STATE, {
                "frontend": frontend, "backend": address, "old": str(old), "new": str(state),
                "reason": bh.last_error if state == BackendState.DOWN else None,
                "health": bh.counter.describe()})
        if self._all_down.get(frontend, False) != checker.all_down:
            self._all_down[frontend] = checker.all_down
            self._event(ProxyEvent.FRONTEND_ALL_DOWN, {"frontend": frontend, "all_down": checker.all_down})

    def _event(self, kind: ProxyEvent, fields: dict) -> None:
        if self.on_event is not None:
            try:
                self.on_event(kind, fields)
            except Exception:
                log.exception("proxy: on_event callback failed")

    def _update_serving(self) -> None:
        """Decide each frontend's `serving` (listening in a worker of the current generation and
        a backend up) and push the ones that changed."""
        listening = (self.accepting and self.current is not None
                     and any(w.accepting for w in self.current.workers.values()))
        nat_listening = self.accepting and self.nat is not None and self.nat.installed
        names = [f.name for f in self.config.frontends]
        for name in names + [n for n in self.serving if n not in names]:
            checker = self.checkers.get(name)
            here = nat_listening if self.nat is not None and name in self.nat else listening
            serving = here and checker is not None and not checker.all_down
            if self.serving.get(name, False) == serving:     # not known yet: not serving
                continue
            self.serving[name] = serving
            if self.on_serving is not None:
                try:
                    self.on_serving(name, serving)
                except Exception:
                    log.exception("proxy: on_serving callback failed")


def in_workers(config: ProxyConfig) -> ProxyConfig:
    """What the worker processes serve: the proxy-mode frontends; no worker at all without one."""
    frontends = tuple(f for f in config.frontends if f.mode == FrontendMode.PROXY)
    return dataclasses.replace(config, frontends=frontends, workers=config.workers if frontends else 0)
