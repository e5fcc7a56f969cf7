"""lbctl: the operator's view of one vipd node, over its control socket."""
from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

from vipd.config import DEFAULT_CONTROL_SOCKET
from vipd.control.client import backend_path, request

STATUS_TIMEOUT = 10.0
# A reload re-creates changed VRRP instances and proxy workers; give it room.
RELOAD_TIMEOUT = 60.0
# Script tracks are whole command lines; the table shows their start, --json all of it.
TRACK_NAME_WIDTH = 40

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Inspect and steer the vipd daemon on this node.")


@app.callback()
def _options(
    ctx: typer.Context,
    socket_path: str = typer.Option(DEFAULT_CONTROL_SOCKET, "--socket", envvar="VIPD_SOCKET",
                                    metavar="PATH", help="vipd's control socket."),
) -> None:
    ctx.obj = socket_path


def fail(message: str) -> NoReturn:
    # Several problems (a refused reload lists one per config error) still make one line.
    one_line = "; ".join(part.strip() for part in message.splitlines() if part.strip())
    typer.echo(f"lbctl: {one_line}", err=True)
    raise typer.Exit(1)


def call(socket_path: str, method: str, path: str, timeout: float = STATUS_TIMEOUT) -> dict:
    """Ask the daemon; any failure becomes one line on stderr and exit 1."""
    try:
        status, body = request(socket_path, method, path, timeout)
    except PermissionError:
        fail(f"cannot reach vipd at {socket_path}: permission denied "
             f"(run as root or a member of the control group)")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        fail(f"cannot reach vipd at {socket_path}: {exc.strerror} (is vipd running?)")
    except TimeoutError:
        fail(f"vipd at {socket_path} did not answer within {timeout:g} s")
    except OSError as exc:
        fail(f"cannot reach vipd at {socket_path}: {exc.strerror or exc}")
    if status >= 400:
        fail(str(body.get("error") or f"vipd answered HTTP {status}"))
    return body


@app.command()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the status document as JSON."),
) -> None:
    """VRRP instances and frontends with their backends."""
    document = call(ctx.obj, "GET", "/v1/status")
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(render_status(document), nl=False)


@app.command()
def drain(ctx: typer.Context, frontend: str, backend: str) -> None:
    """Stop sending new connections to BACKEND (existing ones finish)."""
    answer = call(ctx.obj, "POST", backend_path(frontend, backend, "drain"))
    typer.echo(answer.get("message") or f"{frontend} {backend}: draining")


@app.command()
def enable(ctx: typer.Context, frontend: str, backend: str) -> None:
    """Take a drained BACKEND back into rotation."""
    answer = call(ctx.obj, "POST", backend_path(frontend, backend, "enable"))
    typer.echo(answer.get("message") or f"{frontend} {backend}: enabled")


@app.command()
def reload(ctx: typer.Context) -> None:
    """Apply the config file again (like SIGHUP); a bad file is refused."""
    answer = call(ctx.obj, "POST", "/v1/reload", RELOAD_TIMEOUT)
    typer.echo(answer.get("message") or "reloaded")


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value) or "-"
    return str(value)


def _entries(value: Any) -> list[dict]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _track(track: dict) -> str:
    name = _text(track.get("name"))
    if len(name) > TRACK_NAME_WIDTH:
        name = name[:TRACK_NAME_WIDTH - 3] + "..."
    weight = track.get("weight")
    verdict = "ok" if track.get("ok") else "FAIL"
    if isinstance(weight, int) and not isinstance(weight, bool):
        verdict += "(fault)" if weight == 0 else f"({weight:+d})"
    return f"{name} {verdict}"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]], right: set[int], indent: str = "") -> list[str]:
    """Columns as wide as their widest cell, numbers right-aligned, the last column free."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                 for i, cell in enumerate(row)]
        if len(row) - 1 not in right:
            cells[-1] = row[-1]
        lines.append(indent + "  ".join(cells).rstrip())
    return lines


def render_status(document: dict) -> str:
    lines = [f"node {_text(document.get('node'))}"]
    instances = _entries(document.get("vrrp"))
    if instances:
        rows = []
        for v in instances:
            name = _text(v.get("name")) + (f"/{v['vrid']}" if v.get("vrid") is not None else "")
            tracks = ", ".join(_track(t) for t in _entries(v.get("tracks")))
            rows.append((name, _text(v.get("state")), _text(v.get("priority")),
                         _text(v.get("effective_priority")), _text(v.get("master")),
                         _text(v.get("virtual_ips")), _text(v.get("since")), tracks or "-"))
        lines += table(("VRRP", "STATE", "PRIO", "EFF", "MASTER", "VIPS", "SINCE", "TRACKS"),
                       rows, right={2, 3})
    else:
        lines.append("VRRP      none on this node")
    for f in _entries(document.get("frontends")):
        head = (f"FRONTEND {_text(f.get('name'))}  listen {_text(f.get('listen'))}"
                f"  active {_text(f.get('active_connections'))}")
        if f.get("all_down"):
            head += "  ALL BACKENDS DOWN"
        lines.append(head)
        rows = [(_text(b.get("address")), _text(b.get("state")), _text(b.get("health")),
                 _text(b.get("active_connections")), _text(b.get("total_connections")),
                 _text(b.get("failed_connections")))
                for b in _entries(f.get("backends"))]
        lines += table(("BACKEND", "STATE", "HEALTH", "ACTIVE", "TOTAL", "FAILED"),
                       rows, right={3, 4, 5}, indent="  ")
    return "\n".join(lines) + "\n"


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
