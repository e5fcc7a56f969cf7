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
