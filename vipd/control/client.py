"""The control socket's client, standard library only: `lbctl` imports it and must start fast."""
from __future__ import annotations

import errno
import http.client
import json
import socket
from urllib.parse import quote

DEFAULT_CONTROL_SOCKET = "/run/vipd/control.sock"


def backend_path(frontend: str, backend: str, action: str) -> str:
    """The URL path of a drain/enable call; names are percent-encoded (IPv6 brackets, colons)."""
    return f"/v1/frontends/{quote(frontend, safe='')}/backends/{quote(backend, safe='')}/{action}"


def weight_path(frontend: str, backend: str, weight: str) -> str:
    """The URL path of `lbctl weight`; the daemon decides whether `weight` is one."""
    return backend_path(frontend, backend, f"weight/{quote(weight, safe='')}")


def maintenance_path(mode: str, owner: str | None = None) -> str:
    """The URL path of `lbctl maintenance on|off [INSTANCE]`."""
    return f"/v1/maintenance/{quote(mode, safe='')}" + (f"/{quote(owner, safe='')}" if owner else "")


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = socket_path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def request(socket_path: str, method: str, path: str, timeout: float = 10.0) -> tuple[int, dict]:
    """One call to the control socket -> (HTTP status, JSON body).

    Raises OSError when the socket cannot be reached (FileNotFoundError, PermissionError,
    ConnectionRefusedError, TimeoutError, ...). A body that is not a JSON object comes back
    as {"error": text}.
    """
    conn = _UnixHTTPConnection(socket_path, timeout)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        raw = response.read()
        status = response.status
    except http.client.HTTPException as exc:
        raise ConnectionError(errno.EPROTO, f"bad answer from the control socket: {exc!r}") from None
    finally:
        conn.close()
    try:
        body = json.loads(raw.decode("utf-8")) if raw else {}
    except (UnicodeDecodeError, ValueError):
        body = {"error": raw.decode("utf-8", "replace").strip()[:200] or f"HTTP {status}"}
    if not isinstance(body, dict):
        body = {"error": f"unexpected answer: {str(body)[:200]}"}
    return status, body


class Stream:
    """A streaming answer of newline-delimited JSON (GET /v1/events?follow=1). `status` and, for a
    refusal (>= 400), `error` come first; iterating yields one dict per line until the daemon ends
    the stream. Raises OSError like `request` when the socket cannot be reached."""

    def __init__(self, socket_path: str, path: str, timeout: float = 10.0) -> None:
        self._conn = _UnixHTTPConnection(socket_path, timeout)
        try:
            self._conn.request("GET", path)
            self._response = self._conn.getresponse()
        except http.client.HTTPException as exc:
            self._conn.close()
            raise ConnectionError(errno.EPROTO, f"bad answer from the control socket: {exc!r}") from None
        except BaseException:
            self._conn.close()
            raise
        self.status = self._response.status
        self.error: str | None = None
        if self.status >= 400:
            raw = self._response.read()
            self.close()
            try:
                self.error = str(json.loads(raw.decode("utf-8")).get("error"))
            except (UnicodeDecodeError, ValueError, AttributeError):
                self.error = raw.decode("utf-8", "replace").strip()[:200] or f"HTTP {self.status}"
        elif self._conn.sock is not None:
            self._conn.sock.settimeout(None)      # events come when they come

    def __iter__(self):
        if self.error is not None:
            return
        try:
            while True:
                try:
                    line = self._response.readline()
                except http.client.IncompleteRead:
                    return                        # the daemon went away mid-chunk
                if not line:
                    return
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict):
                    yield record
        finally:
            self.close()

    def close(self) -> None:
        self._conn.close()
