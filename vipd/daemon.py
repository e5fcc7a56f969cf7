"""`vipd run` / `lbproxy run`: one asyncio loop running VRRP, the proxy supervisor, the control
socket and metrics. Signal handlers only enqueue; one dispatcher applies commands in order
(gunicorn's arbiter), so a reload and a stop never interleave.

Nothing unexpected ends the daemon without resigning: an exception of vipd's or lbproxy's code that
escapes into the loop (a timer or reader callback, a task whose failure no one takes within
UNCLAIMED_GRACE, a failed VRRP action, the dispatcher itself) reaches `_on_loop_exception`, the one
place that turns it into a fatal stop: VRRP resigns at once (priority 0) and removes its VIPs, the
proxy stops accepting, and the process exits EXIT_FAILED. Libraries' own failures (a client's
connection in aiohttp) are only logged.
"""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from typing import Any

import lbproxy
import vipd
from lbproxy import logsetup
from vipd import config as configmod
from vipd import scriptcgroup
from vipd.events import EventLog, Kind, Level, describe_proxy_event
from vipd.owner import VipOwner
from vipd.runtime_state import Invalid, RuntimeState, StateFile, decode_weight
from vipd.sdnotify import SystemdNotifier

log = logging.getLogger("vipd")

STATUS_PAGE_EVENTS = 30
EXIT_FAILED = 1
FATAL_STOP_TIMEOUT = 10.0     # resigning and removing VIPs after a fatal error takes no longer
# A failed task's exception is taken by whoever awaits it within a few turns of the loop; one still
# untaken after this has no one to handle it.
UNCLAIMED_GRACE = 0.5
OUR_CODE = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (lbproxy, vipd))


class StartError(Exception):
    """A component could not start; the message is one line for the operator."""


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0] if text else type(exc).__name__


class Daemon:
    def __init__(self, path: str, with_vrrp: bool = True) -> None:
        self.path = path
        self.with_vrrp = with_vrrp
        self.config: configmod.Config | None = None
        self.vrrp: Any = None
        self.elections: Any = None
        self.anycast: Any = None
        self.proxy: Any = None
        self.control: Any = None
        self.metrics: Any = None
        self.notifier = SystemdNotifier()
        self.commands: asyncio.Queue | None = None
        # The operator's runtime overrides, as saved in node.state_dir; the components mirror them.
        self.runtime = RuntimeState()
        self.state_file: StateFile | None = None
        self.events = EventLog()
        self.fatal: BaseException | None = None

    def load(self) -> configmod.Config:
        loaded = configmod.load(self.path, require_vrrp=True, require_frontend=not self.with_vrrp)
        if not self.with_vrrp:
            loaded = dataclasses.replace(loaded, vrrp=(), elections=(), anycast=())
        return loaded

    # --- control handlers: each returns a dict; errors are ControlError(status, message)

    def status_document(self) -> dict:
        """A StatusDocument (vipd.control.schema); served only once a config is in force."""
        assert self.config is not None
        return {
            "node": self.config.node.name,
            "pid": os.getpid(),
            "config": self.path,
            "vrrp": self.vrrp.status() if self.vrrp else [],
            "frontends": self.proxy.status() if self.proxy else [],
            "elections": self.elections.status() if self.elections else [],
            "anycast": self.anycast.status() if self.anycast else [],
        }

    async def status(self) -> dict:
        return self.status_document()

    async def drain(self, frontend: str, backend: str) -> dict:
        return self._set_drain(frontend, backend, True)

    async def enable(self, frontend: str, backend: str) -> dict:
        return self._set_drain(frontend, backend, False)

    def _set_drain(self, frontend: str, backend: str, drained: bool) -> dict:
        """A DrainAnswer (vipd.control.schema)."""
        from vipd.control.server import ControlError
        if self.proxy is None:
            raise ControlError(404, f"no frontend {frontend!r}: this node runs no [[frontend]]")
        try:
            self.proxy.set_drain(frontend, backend, drained)
        except KeyError as exc:
            raise ControlError(404, exc.args[0] if exc.args else f"unknown {frontend}/{backend}") from None
        self.runtime.set_drain(frontend, backend, drained)
        # Enabled is not a state: the backend is up or down again, as its health says.
        answer = self._backend_answer(frontend, backend, ("state",), self._save_runtime())
        state = answer["state"]
        self.events.emit(Kind.BACKEND_DRAIN if drained else Kind.BACKEND_ENABLE, f"{frontend}/{backend}",
                         f"frontend {frontend} backend {backend}: {'draining' if drained else 'enabled'} "
                         f"(by lbctl), now {state}",
                         {"frontend": frontend, "backend": backend, "state": state, "by": "lbctl"}, logger=log)
        return answer

    def _backend_status(self, frontend: str, backend: str) -> dict:
        """The backend's entry of the status document; KeyError saying what is not there."""
        found = next((f for f in self.proxy.status() if f["name"] == frontend), None)
        if found is None:
            raise KeyError(f"no frontend {frontend!r}")
        for b in found["backends"]:
            if b["address"] == backend:
                return b
        raise KeyError(f"no backend {backend!r} in frontend {frontend!r}")

    def _backend_answer(self, frontend: str, backend: str, keys: tuple[str, ...], warning: str | None) -> dict:
        found = self._backend_status(frontend, backend)
        answer = {"frontend": frontend, "backend": backend, **{k: found[k] for k in keys}}
        return answer | ({"warning": warning} if warning else {})

    async def weight(self, frontend: str, backend: str, value: str) -> dict:
        """A WeightAnswer (vipd.control.schema): N in 0..256, or `reset`; the configured weight
        (or `reset`) removes the override."""
        from vipd.control.server import ControlError
        weight = decode_weight(value)
        if isinstance(weight, Invalid):
            raise ControlError(400, weight.reason)
        if self.proxy is None:
            raise ControlError(404, f"no frontend {frontend!r}: this node runs no [[frontend]]")
        try:
            old = self._backend_status(frontend, backend)["weight"]
            override = self.proxy.set_weight(frontend, backend, weight)
        except KeyError as exc:
            raise ControlError(404, exc.args[0]) from None
        self.runtime.set_weight(frontend, backend, override)
        answer = self._backend_answer(frontend, backend, ("weight", "state", "overrides"), self._save_runtime())
        self.events.emit(Kind.BACKEND_WEIGHT, f"{frontend}/{backend}",
                         f"frontend {frontend} backend {backend}: weight {old} -> {answer['weight']} "
                         f"({'runtime override' if override is not None else 'as configured'}, by lbctl)",
                         {"frontend": frontend, "backend": backend, "weight": answer["weight"], "old": old,
                          "by": "lbctl"}, logger=log)
        return answer

    def vip_owners(self) -> list[VipOwner]:
        owners: list[VipOwner] = list(self.vrrp.instances.values()) if self.vrrp is not None else []
        owners += list(self.elections.instances.values()) if self.elections is not None else []
        return owners + (list(self.anycast.owners.values()) if self.anycast is not None else [])

    async def maintenance(self, mode: str, owner: str | None = None) -> dict:
        """A MaintenanceAnswer (vipd.control.schema): every VIP owner, or the one named."""
        from vipd.control.server import ControlError
        if mode not in ("on", "off"):
            raise ControlError(404, f"maintenance is `on` or `off`, not {mode!r}")
        owners = self.vip_owners()
        names = [o.name for o in owners]
        if not owners:
            raise ControlError(404, "this node holds no VIPs: it runs no [[vrrp]], [[election]] or [[anycast]]")
        if owner is not None and owner not in names:
            raise ControlError(404, f"no VIP owner {owner!r} on this node (there is {', '.join(names)})")
        self.runtime.set_maintenance(mode == "on", owner, names)
        for o in owners:
            o.set_maintenance(self.runtime.in_maintenance(o.name))
        self.events.emit(Kind.MAINTENANCE, owner or "*",
                         f"maintenance {mode} for {owner or 'every VIP owner'} (by lbctl)",
                         {"on": mode == "on", "instance": owner, "by": "lbctl"}, logger=log)
        warning = self._save_runtime()
        answer = {"maintenance": mode == "on", "owners": [
            {"name": o.name, "kind": o.kind, "state": o.state, "maintenance": o.maintenance}
            for o in owners if owner in (None, o.name)]}
        return answer | ({"warning": warning} if warning else {})

    def _save_runtime(self) -> str | None:
        """None once saved; otherwise why not (logged too): the change holds until a restart."""
        assert self.state_file is not None
        try:
            self.state_file.save(self.runtime)
        except OSError as exc:
            reason = f"not saved to {self.state_file.path} ({exc.strerror or exc}): lost on restart"
            log.error("runtime state %s", reason)
            return reason
        return None

    def _adopt_runtime(self, cfg: configmod.Config) -> None:
        """Forget overrides of what `cfg` no longer has; follow a changed state_dir."""
        moved = self.state_file is not None and self.state_file.directory != cfg.node.state_dir
        if self.state_file is None or moved:
            self.state_file = StateFile(cfg.node.state_dir)
        owners = [o.name for o in (*cfg.vrrp, *cfg.elections, *cfg.anycast)]
        dropped = self.runtime.prune(owners if self.with_vrrp else None,
                                     {f.name: [b.address for b in f.backends] for f in cfg.frontends})
        for line in dropped:
            log.info("runtime override dropped: %s in %s", line, self.path)
        if dropped or moved:
            self._save_runtime()

    def _backend_overrides(self) -> dict:
        from lbproxy.healthcheck import Override
        r = self.runtime
        return {f: {b: Override(r.drained(f, b), r.weight(f, b)) for b in r.backends(f)}
                for f in set(r.drains) | set(r.weights)}

    async def reload(self) -> dict:
        """Control-socket reload, queued like SIGHUP so it never races another command; a
        ReloadAnswer (vipd.control.schema)."""
        from vipd.control.server import ControlError
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        assert self.commands is not None
        self.commands.put_nowait(("reload", done))
        result = await done
        if not result["ok"]:
            raise ControlError(400, "config refused, running config kept: " + "; ".join(result["errors"]))
        return result

    def _recent_events(self) -> list[dict]:
        return [event.to_dict() for event in self.events.recent(STATUS_PAGE_EVENTS)]

    # --- lifecycle

    def _frontend_serving(self, name: str, serving: bool) -> None:
        if self.vrrp is not None:
            self.vrrp.frontend_serving(name, serving)
        if self.elections is not None:
            self.elections.frontend_serving(name, serving)
        if self.anycast is not None:
            self.anycast.frontend_serving(name, serving)

    def _proxy_event(self, kind, fields: dict) -> None:
        subject, message, level = describe_proxy_event(kind, fields)
        self.events.emit(Kind(kind), subject, message, fields, level=level, logged=True)

    async def _start_proxy(self, cfg: configmod.Config) -> None:
        from lbproxy.supervisor import ProxySupervisor
        self.proxy = ProxySupervisor(cfg.proxy, on_serving=self._frontend_serving, on_event=self._proxy_event,
                                     overrides=self._backend_overrides())
        await self.proxy.start()

    async def _start_vrrp(self, cfg: configmod.Config) -> None:
        from vipd.vrrp.service import VrrpService
        # The proxy started first; from here on its verdicts arrive through _frontend_serving.
        self.vrrp = VrrpService(cfg.vrrp, _bridge_plan(cfg), serving=self.proxy.serving if self.proxy else None,
                                emit=self.events.emit, maintenance=self.runtime.in_maintenance)
        await self.vrrp.start()

    async def _start_elections(self, cfg: configmod.Config) -> None:
        from vipd.election.owner import ElectionService
        self.elections = ElectionService(cfg.elections, cfg.etcd, cfg.node.name, _bridge_plan(cfg),
                                         serving=self.proxy.serving if self.proxy else None,
                                         emit=self.events.emit, maintenance=self.runtime.in_maintenance)
        await self.elections.start()
    async def _start_anycast(self, cfg: configmod.Config) -> None:
        from vipd.anycast.service import AnycastService
        self.anycast = AnycastService(cfg.anycast, serving=self.proxy.serving if self.proxy else None,
                                      emit=self.events.emit, maintenance=self.runtime.in_maintenance)
        await self.anycast.start()

    async def _start_control(self, node: configmod.NodeConfig) -> None:
        from vipd.control.server import ControlServer
        self.control = ControlServer(node.control_socket, self, group=node.control_group, events=self.events)
        await self.control.start()

    async def _start_metrics(self, node: configmod.NodeConfig) -> None:
        if node.metrics_listen:
            from vipd.control.metrics import MetricsServer
            self.metrics = MetricsServer(node.metrics_listen, self.status_document,
                                         events=self._recent_events)
            await self.metrics.start()

    async def start(self, cfg: configmod.Config) -> None:
        if self.with_vrrp:      # lbproxy runs no scripts
            # First: a delegated cgroup is left for a leaf before any worker or script is spawned.
            scriptcgroup.setup()
        self.config = cfg
        self.state_file = StateFile(cfg.node.state_dir)
        self.runtime = self.state_file.load()
        self._adopt_runtime(cfg)
        # VRRP comes last: listeners are open and backend health is known before this node can
        # become master, and nothing slow (socket set-up) runs between its first timers.
        steps = []
        if cfg.frontends:
            steps.append(("proxy", self._start_proxy(cfg)))
        steps.append(("control socket", self._start_control(cfg.node)))
        steps.append(("metrics", self._start_metrics(cfg.node)))
        if cfg.vrrp:
            steps.append(("vrrp", self._start_vrrp(cfg)))
        if cfg.elections:
            steps.append(("elections", self._start_elections(cfg)))
        if cfg.anycast:
            steps.append(("anycast", self._start_anycast(cfg)))
        for what, step in steps:
            try:
                await step
            except Exception as exc:
                for _, pending in steps:
                    pending.close()
                log.debug("start of %s failed", what, exc_info=True)
                raise StartError(f"cannot start {what}: {describe(exc)}") from exc

    async def apply(self, new: configmod.Config) -> None:
        old = self.config
        assert old is not None
        if self.proxy is not None and new.frontends:
            await self.proxy.reload(new.proxy)
        elif self.proxy is not None:
            await self.proxy.stop_accepting()
            await self.proxy.drain()
            self.proxy = None
        elif new.frontends:
            await self._start_proxy(new)
        if self.vrrp is not None and new.vrrp:
            await self.vrrp.reload(new.vrrp, _bridge_plan(new))
        elif self.vrrp is not None:
            await self.vrrp.shutdown(handover=True)
            self.vrrp = None
        elif new.vrrp:
            await self._start_vrrp(new)
        if self.elections is not None and new.elections:
            await self.elections.reload(new.elections, new.etcd, _bridge_plan(new))
        elif self.elections is not None:
            await self.elections.shutdown()
            self.elections = None
        elif new.elections:
            await self._start_elections(new)
        if self.anycast is not None:
            await self.anycast.reload(new.anycast)
        elif new.anycast:
            await self._start_anycast(new)
        if (old.node.control_socket, old.node.control_group) != (new.node.control_socket, new.node.control_group):
            await self.control.stop()
            await self._start_control(new.node)
        if old.node.metrics_listen != new.node.metrics_listen:
            if self.metrics is not None:
                await self.metrics.stop()
                self.metrics = None
            await self._start_metrics(new.node)
        self.config = new
        self._adopt_runtime(new)

    async def handle_reload(self) -> dict:
        self.notifier.reloading()
        try:
            new = self.load()
        except configmod.ConfigError as exc:
            for problem in exc.problems:
                log.error("reload refused: %s", problem)
            self._reload_event(False, f"reload of {self.path} refused: the running config stays in force",
                               errors=exc.problems)
            self.notifier.ready(self.summary())
            return {"ok": False, "errors": exc.problems}
        try:
            await self.apply(new)
        except Exception as exc:
            log.debug("reload failure", exc_info=True)
            self._reload_event(False, f"reload of {self.path} failed part-way: {describe(exc)}",
                               errors=[describe(exc)])
            self.notifier.ready(self.summary())
            return {"ok": False, "errors": [describe(exc)]}
        for warning in new.warnings:      # as at start: the operator sees them whichever way it was applied
            log.warning("%s", warning)
        self._reload_event(True, f"reloaded {self.path}: {self.summary()}", summary=self.summary())
        self.notifier.ready(self.summary())
        return {"ok": True, "config": self.path, "summary": self.summary(), "warnings": list(new.warnings)}

    def _reload_event(self, ok: bool, message: str, **fields) -> None:
        self.events.emit(Kind.RELOAD, self.path, message,
                         {"ok": ok, "config": self.path, **fields},
                         level=Level.INFO if ok else Level.ERROR, logger=log)

    async def stop(self) -> None:
        self.notifier.stopping()
        self.events.emit(Kind.DAEMON_STOP, self.path, "stopping: resigning VRRP and elections, withdrawing "
                         "anycast, then draining connections", {"pid": os.getpid()}, logger=log)
        keep_vips = self.proxy is not None
        # Hand over and withdraw before the listeners close: connections routed here meanwhile are
        # still served. An election's successor has the VIPs first; ours stay, quiet, while the proxy drains.
        await asyncio.gather(
            self.vrrp.shutdown(handover=True, keep_vips=keep_vips) if self.vrrp is not None else asyncio.sleep(0),
            self.elections.shutdown(keep_vips=keep_vips) if self.elections is not None else asyncio.sleep(0),
            self.anycast.withdraw() if self.anycast is not None else asyncio.sleep(0))
        if self.proxy is not None:
            await self.proxy.stop_accepting()
            await self.proxy.drain()
        if self.vrrp is not None:
            await self.vrrp.release()
        if self.elections is not None:
            await self.elections.release()
        if self.anycast is not None:
            await self.anycast.close()
        self.events.close()    # followers get the last events, then the end of their stream
        if self.control is not None:
            await self.control.stop()
        if self.metrics is not None:
            await self.metrics.stop()

    def summary(self) -> str:
        cfg = self.config
        if cfg is None:
            return "starting"
        elections = f", {len(cfg.elections)} election(s)" if cfg.elections else ""
        anycast = f", {len(cfg.anycast)} anycast" if cfg.anycast else ""
        return f"{len(cfg.vrrp)} vrrp instance(s), {len(cfg.frontends)} frontend(s){elections}{anycast}"

    async def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval
        while interval:
            self.notifier.watchdog()
            await asyncio.sleep(interval)

    def _on_loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        """The loop's exception handler: an exception our code did not handle is fatal; a
        transport's (one client's connection) and a library's are logged as asyncio would."""
        exc = context.get("exception")
        if (exc is None or "transport" in context or "protocol" in context
                or isinstance(exc, asyncio.CancelledError) or not _from_our_code(context)):
            loop.default_exception_handler(context)
            return
        self._fail(str(context.get("message") or "unhandled exception"), exc)

    def _task_factory(self, loop: asyncio.AbstractEventLoop, coro, **kwargs) -> asyncio.Task:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        # `_log_traceback` is asyncio's own mark of an exception no one has taken yet (it logs
        # "Task exception was never retrieved" from it, but only once the task is collected).
        if getattr(task, "_log_traceback", False):
            task.get_loop().call_later(UNCLAIMED_GRACE, self._claim, task)

    def _claim(self, task: asyncio.Task) -> None:
        if getattr(task, "_log_traceback", False):
            exc = task.exception()
            self._on_loop_exception(task.get_loop(), {"message": f"task {task.get_name()} failed",
                                                      "exception": exc, "task": task})

    def _fail(self, what: str, exc: BaseException) -> None:
        if self.fatal is not None or self.commands is None:
            return
        self.fatal = exc
        frame = _innermost(exc)
        log.error("fatal: %s: %s: %s%s; resigning VRRP, removing VIPs and exiting", what, type(exc).__name__,
                  describe(exc), f" (at {frame})" if frame else "")
        # Once, for the bug report; the line above is what the operator acts on.
        log.error("traceback of the fatal error", exc_info=exc)
        self.commands.put_nowait(("fatal", None))

    async def _fatal_stop(self) -> None:
        """Resign and remove the VIPs first and fast; the rest is best effort."""
        self.notifier.stopping()
        steps = []
        if self.vrrp is not None:
            steps.append(("resigning VRRP", self.vrrp.shutdown(handover=False)))
        if self.proxy is not None:
            steps.append(("closing the listeners", self.proxy.stop_accepting()))
        if self.control is not None:
            steps.append(("closing the control socket", self.control.stop()))
        if self.metrics is not None:
            steps.append(("closing the metrics listener", self.metrics.stop()))
        for what, step in steps:
            try:
                await asyncio.wait_for(step, FATAL_STOP_TIMEOUT)
            except (Exception, asyncio.CancelledError) as exc:
                log.error("after the fatal error: %s failed: %s", what, describe(exc))
        self.events.close()

    async def run(self, cfg: configmod.Config) -> int:
        loop = asyncio.get_running_loop()
        self.commands = asyncio.Queue()
        loop.set_exception_handler(self._on_loop_exception)
        loop.set_task_factory(self._task_factory)
        for signum, command in ((signal.SIGHUP, "reload"), (signal.SIGTERM, "stop"), (signal.SIGINT, "stop")):
            loop.add_signal_handler(signum, self.commands.put_nowait, (command, None))
        try:
            await self.start(cfg)
        except StartError as exc:
            log.error("%s", exc)
            await self.stop()
            return EXIT_FAILED
        watchdog = asyncio.create_task(self._watchdog(), name="systemd watchdog")
        self.notifier.ready(self.summary())
        self.events.emit(Kind.DAEMON_START, self.path, f"running {self.path} (pid {os.getpid()}): {self.summary()}",
                         {"pid": os.getpid(), "config": self.path, "summary": self.summary()}, logger=log)
        try:
            await self._dispatch()
        except Exception as exc:
            self._fail("the command dispatcher", exc)
        for signum in (signal.SIGHUP, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        if self.fatal is not None:
            watchdog.cancel()
            await self._fatal_stop()
            return EXIT_FAILED
        await self.stop()
        watchdog.cancel()
        log.info("stopped")
        return EXIT_FAILED if self.fatal is not None else 0

    async def _dispatch(self) -> None:
        while True:
            command, reply = await self.commands.get()
            if command == "reload":
                result = await self.handle_reload()
                if reply is not None and not reply.done():
                    reply.set_result(result)
            elif command in ("stop", "fatal"):
                return


def _from_our_code(context: dict) -> bool:
    """Whether the failing task or callback is vipd's or lbproxy's (so are failures reported
    without either: a VRRP action's)."""
    task = context.get("task") or context.get("future")
    if task is not None:
        code = getattr(getattr(task, "get_coro", lambda: None)(), "cr_code", None)
        return code is not None and code.co_filename.startswith(OUR_CODE)
    handle = context.get("handle")
    if handle is not None:
        callback = getattr(handle, "_callback", None)
        code = getattr(getattr(callback, "__func__", callback), "__code__", None)
        return code is not None and code.co_filename.startswith(OUR_CODE)
    return True


def _innermost(exc: BaseException) -> str | None:
    """`file:line in function` where the exception was raised."""
    tb = exc.__traceback__
    if tb is None:
        return None
    while tb.tb_next is not None:
        tb = tb.tb_next
    code = tb.tb_frame.f_code
    return f"{os.path.basename(code.co_filename)}:{tb.tb_lineno} in {code.co_name}"


def _bridge_plan(cfg: configmod.Config):
    """A planned failover hands connections in flight back to the old master while it drains."""
    from lbproxy.config import FrontendMode
    from vipd.vrrp.handover import BridgePlan
    nat = {f.listen_port for f in cfg.frontends if f.mode == FrontendMode.NAT}
    return BridgePlan(ports=tuple(sorted({f.listen_port for f in cfg.frontends} - nat)), nat_ports=tuple(sorted(nat)),
                      seconds=max((f.drain_timeout for f in cfg.frontends), default=0.0) + 1.0)


def run_daemon(path: str, with_vrrp: bool = True) -> int:
    """Load, validate and run until SIGTERM; the process exit code."""
    daemon = Daemon(path, with_vrrp)
    try:
        cfg = daemon.load()
    except configmod.ConfigError as exc:
        for line in exc.problems + exc.warnings:
            print(line, file=sys.stderr)
        return configmod.EXIT_REFUSED
    listener = logsetup.setup(cfg.node.log_level, cfg.node.log_format)
    for warning in cfg.warnings:
        log.warning("%s", warning)
    try:
        return asyncio.run(daemon.run(cfg))
    except KeyboardInterrupt:
        return 130
    finally:
        listener.stop()
