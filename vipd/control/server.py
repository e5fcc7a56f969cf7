"""The control socket's server: a small JSON-over-HTTP API on a unix socket, inside the daemon's
asyncio loop (aiohttp, imported only when a server starts)."""
from __future__ import annotations

import asyncio
import errno
import grp
import inspect
import json
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vipd.events import EventLog, Subscription

log = logging.getLogger("vipd.control")

SOCKET_MODE = 0o660
DIRECTORY_MODE = 0o755
# sockaddr_un.sun_path is 108 bytes including the terminating NUL.
MAX_SOCKET_PATH = 107
# On stop, how long followers stuck writing to a reader that does not read get before they are cut.
FOLLOWER_GRACE = 1.0


class ControlError(Exception):
    """Raised by a handler; becomes `{"error": message}` with this HTTP status."""

    def __init__(self, http_status: int, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.message = message


async def serve_app(app, sock: socket.socket, shutdown_timeout: float = 60.0, **handler_options):
    """Serve an aiohttp app on a bound socket; the runner, or nothing left open on failure.
    `handler_options` go to aiohttp's request handler (keepalive_timeout, ...)."""
    from aiohttp import web

    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout,
                           **handler_options)
    try:
        await runner.setup()
        await web.SockSite(runner, sock).start()
    except BaseException:
        await runner.cleanup()
        sock.close()
        raise
    return runner


class ControlServer:
    """Serves `handlers` (async status(), drain(f, b), enable(f, b), reload(), weight(f, b, n),
    maintenance(mode, owner=None)) and `events` (the node's EventLog, GET /v1/events) on a unix socket."""

    def __init__(self, path: str, handlers: Any, group: str | None = None,
                 events: "EventLog | None" = None) -> None:
        self.path = path
        self.handlers = handlers
        self.group = group
        self.events = events
        self._followers: dict["Subscription", tuple[asyncio.Task, Any]] = {}   # -> (handler, request)
        self._runner = None
        self._inode: tuple[int, int] | None = None

    async def start(self) -> None:
        from aiohttp import web

        sock = self._bind()
        app = web.Application(middlewares=[web.middleware(_errors_as_json)])
        app.router.add_get("/v1/status", self._status)
        app.router.add_post("/v1/frontends/{frontend}/backends/{backend}/drain", self._drain)
        app.router.add_post("/v1/frontends/{frontend}/backends/{backend}/enable", self._enable)
        app.router.add_post("/v1/reload", self._reload)
        app.router.add_get("/v1/events", self._events)
        app.router.add_post("/v1/frontends/{frontend}/backends/{backend}/weight/{weight}", self._weight)
        app.router.add_post("/v1/maintenance/{mode}", self._maintenance)
        app.router.add_post("/v1/maintenance/{mode}/{owner}", self._maintenance)
        try:
            self._runner = await serve_app(app, sock)
        except BaseException:
            self._unlink_own_socket()
            raise
        log.info("control socket listening on %s", self.path)

    async def stop(self) -> None:
        await self._end_followers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._unlink_own_socket()

    def _bind(self) -> socket.socket:
        if len(os.fsencode(self.path)) > MAX_SOCKET_PATH:
            raise OSError(errno.ENAMETOOLONG,
                          f"control socket path is longer than {MAX_SOCKET_PATH} bytes", self.path)
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
            os.chmod(directory, DIRECTORY_MODE)
        self._remove_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            # Permissions are set between bind() and listen(): until listen() every connect is
            # refused, so nobody can slip in through the umask's default mode.
            os.chmod(self.path, SOCKET_MODE)
            self._apply_group()
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        sock.setblocking(False)
        return sock

    def _remove_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise OSError(errno.EEXIST, "exists and is not a socket; refusing to replace it", self.path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(1.0)
        try:
            probe.connect(self.path)
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", self.path)
            os.unlink(self.path)
            return
        finally:
            probe.close()
        raise OSError(errno.EADDRINUSE, "another process is serving this control socket", self.path)

    def _apply_group(self) -> None:
        if not self.group:
            return
        try:
            gid = grp.getgrnam(self.group).gr_gid
        except KeyError:
            log.warning("control group %r does not exist; control socket %s is root-only",
                        self.group, self.path)
            return
        try:
            os.chown(self.path, -1, gid)
        except OSError as exc:
            log.warning("cannot give control socket %s to group %r (%s); it is owner-only",
                        self.path, self.group, exc.strerror or exc)

    def _unlink_own_socket(self) -> None:
        """Remove the socket file only if it is still the one we bound (not a successor's)."""
        if self._inode is None:
            return
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        self._inode = None

    async def _call(self, name: str, *args: str):
        from aiohttp import web

        result = getattr(self.handlers, name)(*args)
        if inspect.isawaitable(result):
            result = await result
        return web.json_response(result if result is not None else {})

    async def _status(self, request):
        return await self._call("status")

    async def _drain(self, request):
        return await self._call("drain", request.match_info["frontend"], request.match_info["backend"])

    async def _enable(self, request):
        return await self._call("enable", request.match_info["frontend"], request.match_info["backend"])

    async def _reload(self, request):
        return await self._call("reload")

    async def _weight(self, request):
        m = request.match_info
        return await self._call("weight", m["frontend"], m["backend"], m["weight"])

    async def _maintenance(self, request):
        m = request.match_info
        return await self._call("maintenance", m["mode"], *([m["owner"]] if "owner" in m else []))

    async def _events(self, request):
        """?after=SEQ: only events after that one; ?limit=N: the newest N of those; ?follow=1: a
        stream of newline-delimited JSON, those first, then every new event, until the daemon stops."""
        from aiohttp import web

        if self.events is None:
            raise ControlError(404, "this node keeps no event stream")
        after = _count_param(request, "after", 0)
        limit = _count_param(request, "limit", None)
        follow = request.query.get("follow", "0")
        if follow not in ("0", "1", "true", "false"):
            raise ControlError(400, f"follow must be 0 or 1, got {follow!r}")
        if follow in ("0", "false"):
            return web.json_response({"events": [e.to_dict() for e in self.events.recent(limit, after)]})
        subscription = self.events.subscribe(backlog=limit, after_seq=after)
        self._followers[subscription] = (asyncio.current_task(), request)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            async for event in subscription:
                await response.write(json.dumps(event.to_dict(), separators=(",", ":")).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass    # the reader left, or did not read and was cut off at stop
        finally:
            subscription.close()
            self._followers.pop(subscription, None)
        return response

    async def _end_followers(self) -> None:
        followers, self._followers = dict(self._followers), {}
        for subscription in followers:
            subscription.close()
        if not followers:
            return
        tasks = {task: request for task, request in followers.values()}
        _, stuck = await asyncio.wait(tasks, timeout=FOLLOWER_GRACE)
        for task in stuck:
            if tasks[task].transport is not None:
                tasks[task].transport.abort()     # its pending write fails; the handler ends
        if stuck:
            _, still = await asyncio.wait(stuck, timeout=FOLLOWER_GRACE)
            for task in still:
                task.cancel()


def _count_param(request, name: str, default: int | None) -> int | None:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isdigit():
        raise ControlError(400, f"{name} must be a whole number >= 0, got {text!r}")
    return int(text)


async def _errors_as_json(request, handler):
    from aiohttp import web

    try:
        return await handler(request)
    except ControlError as exc:
        return web.json_response({"error": exc.message}, status=exc.http_status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = {404: "unknown path", 405: "method not allowed"}.get(exc.status, exc.reason)
        return web.json_response(
            {"error": f"{reason}: {request.method} {request.path}"}, status=exc.status)
    except Exception as exc:
        log.exception("control request %s %s failed", request.method, request.path)
        return web.json_response(
            {"error": f"internal error: {type(exc).__name__}: {exc}"}, status=500)
