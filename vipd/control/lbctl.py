"""lbctl: the operator's view of one vipd node, over its control socket."""
from __future__ import annotations

import contextlib
import enum
import json
import os
import sys
from typing import Any, NoReturn

import typer

from lbproxy.health import BackendState
from vipd.control.client import (
    DEFAULT_CONTROL_SOCKET,
    Stream,
    backend_path,
    maintenance_path,
    request,
    weight_path,
)
from vipd.control.schema import (
    DrainAnswer,
    EventsAnswer,
    MaintenanceAnswer,
    ReloadAnswer,
    StatusDocument,
    Track,
    WeightAnswer,
    check,
)
from vipd.events import Kind, render_line

STATUS_TIMEOUT = 10.0
# A reload re-creates changed VRRP instances and proxy workers; give it room.
RELOAD_TIMEOUT = 60.0
# Script tracks are whole command lines; the table shows their start, --json all of it.
TRACK_NAME_WIDTH = 40
BACKEND_STATE_MEANING = {
    BackendState.UP: "takes new connections",
    BackendState.DOWN: "failing its health checks: no new connections until they pass",
    BackendState.DRAIN: "no new connections; open ones finish",
}
OVERRIDE_MARK = "*"


class Switch(str, enum.Enum):
    ON = "on"
    OFF = "off"


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
    with unreachable_fails(socket_path, timeout):
        status, body = request(socket_path, method, path, timeout)
    if status >= 400:
        fail(str(body.get("error") or f"vipd answered HTTP {status}"))
    return body


@contextlib.contextmanager
def unreachable_fails(socket_path: str, timeout: float):
    try:
        yield
    except PermissionError:
        fail(f"cannot reach vipd at {socket_path}: permission denied "
             f"(run as root or a member of the control group)")
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        fail(f"cannot reach vipd at {socket_path}: {exc.strerror} (is vipd running?)")
    except TimeoutError:
        fail(f"vipd at {socket_path} did not answer within {timeout:g} s")
    except OSError as exc:
        fail(f"cannot reach vipd at {socket_path}: {exc.strerror or exc}")


def checked(answer: dict, document: type) -> Any:
    """What of the daemon's answer matches the schema; a mismatch (a vipd of another version?)
    is said in one line on stderr, and the rest is still shown."""
    result = check(answer, document)
    if result.problems:
        typer.echo(f"lbctl: vipd's answer does not match its schema, showing what does: "
                   f"{result.summary()}", err=True)
    return result.value if isinstance(result.value, dict) else {}


@app.command()
def status(
    ctx: typer.Context,
    as_json: bool = typer.Option(False, "--json", help="Print the status document as JSON."),
) -> None:
    """VRRP instances and frontends with their backends."""
    document = call(ctx.obj, "GET", "/v1/status")
    shown: StatusDocument = checked(document, StatusDocument)
    if as_json:
        typer.echo(json.dumps(document, indent=2))
    else:
        typer.echo(render_status(shown), nl=False)


def _drain_or_enable(socket_path: str, frontend: str, backend: str, action: str) -> None:
    answer: DrainAnswer = checked(call(socket_path, "POST", backend_path(frontend, backend, action)),
                                  DrainAnswer)
    state = answer.get("state")
    meaning = f"{state} ({BACKEND_STATE_MEANING[state]})" if state else f"{action}: done"
    typer.echo(f"{answer.get('frontend', frontend)} {answer.get('backend', backend)}: {meaning}")
    _warn(answer)


def _warn(answer: dict) -> None:
    if answer.get("warning"):
        typer.echo(f"lbctl: warning: {answer['warning']}", err=True)


@app.command()
def drain(ctx: typer.Context, frontend: str, backend: str) -> None:
    """Stop sending new connections to BACKEND (existing ones finish)."""
    _drain_or_enable(ctx.obj, frontend, backend, "drain")


@app.command()
def enable(ctx: typer.Context, frontend: str, backend: str) -> None:
    """Take a drained BACKEND back into rotation."""
    _drain_or_enable(ctx.obj, frontend, backend, "enable")


# ignore_unknown_options: a negative N reaches the daemon, which says it is out of range.
@app.command(context_settings={"ignore_unknown_options": True})
def weight(ctx: typer.Context, frontend: str, backend: str,
           n: str = typer.Argument(..., metavar="N", help="0..256 (0: no new connections), or `reset`")) -> None:
    """Set BACKEND's weight at runtime (kept across reloads and restarts); its configured weight or `reset` ends that."""
    answer: WeightAnswer = checked(call(ctx.obj, "POST", weight_path(frontend, backend, n)), WeightAnswer)
    overridden = "weight" in answer.get("overrides", {})
    line = (f"{answer.get('frontend', frontend)} {answer.get('backend', backend)}: weight "
            f"{_text(answer.get('weight'))} ({'runtime override' if overridden else 'as configured'})")
    if answer.get("state") == BackendState.DRAIN:
        line += f", {BackendState.DRAIN} ({BACKEND_STATE_MEANING[BackendState.DRAIN]})"
    typer.echo(line)
    _warn(answer)


@app.command()
def maintenance(ctx: typer.Context, switch: Switch = typer.Argument(..., metavar="on|off"),
                instance: str | None = typer.Argument(None, help="One VRRP instance; default: all.")) -> None:
    """Take this node's VIPs out of service (a master hands over first) or back. Kept across restarts."""
    answer: MaintenanceAnswer = checked(call(ctx.obj, "POST", maintenance_path(switch.value, instance)),
                                        MaintenanceAnswer)
    for owner in answer.get("owners", []):
        state = _text(owner.get("state"))
        doing = " (handing the VIPs over)" if owner.get("maintenance") and state in ("MASTER", "LEADER") else ""
        typer.echo(f"{_text(owner.get('name'))}: maintenance {'on' if owner.get('maintenance') else 'off'}, "
                   f"{state}{doing}")
    _warn(answer)


@app.command()
def reload(ctx: typer.Context) -> None:
    """Apply the config file again (like SIGHUP); a bad file is refused."""
    answer: ReloadAnswer = checked(call(ctx.obj, "POST", "/v1/reload", RELOAD_TIMEOUT), ReloadAnswer)
    config, summary = answer.get("config"), answer.get("summary")
    typer.echo("reloaded" + (f" {config}" if config else "") + (f": {summary}" if summary else ""))
    for warning in answer.get("warnings", []):
        typer.echo(warning, err=True)


@app.command()
def events(
    ctx: typer.Context,
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events as they happen."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    last: int = typer.Option(None, "--last", "-n", min=0, metavar="N", help="Only the newest N held events."),
) -> None:
    """The node's event stream: transitions with reasons, health changes, drains, reloads."""
    query = f"?limit={last}" if last is not None else ""
    show = (lambda r: json.dumps(r, separators=(",", ":"))) if as_json else render_line
    try:
        if not follow:
            answer: EventsAnswer = checked(call(ctx.obj, "GET", "/v1/events" + query), EventsAnswer)
            for record in answer.get("events", []):
                typer.echo(show(record))
            return
        with unreachable_fails(ctx.obj, STATUS_TIMEOUT):
            stream = Stream(ctx.obj, "/v1/events?follow=1" + query.replace("?", "&"), STATUS_TIMEOUT)
        if stream.error is not None:
            fail(stream.error)
        last_kind = None
        with unreachable_fails(ctx.obj, STATUS_TIMEOUT):
            for record in stream:
                last_kind = record.get("kind")
                typer.echo(show(record))
                sys.stdout.flush()
    except KeyboardInterrupt:
        raise typer.Exit(0)
    except BrokenPipeError:
        # The reader of our output left (`| head`): nothing more to say to anyone.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0)
    fail("vipd stopped; the event stream ended" if last_kind == Kind.DAEMON_STOP
         else "the event stream ended (vipd stopped or restarted its control socket)")


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ",".join(_text(v) for v in value) or "-"
    return str(value)


def _track(track: Track) -> str:
    name = _text(track.get("name"))
    if len(name) > TRACK_NAME_WIDTH:
        name = name[:TRACK_NAME_WIDTH - 3] + "..."
    # What the track does to the instance now: a failing weight-0 track is a FAULT, a failing
    # negative weight and a passing positive weight change the priority.
    weight, ok = track.get("weight"), bool(track.get("ok"))
    verdict = "ok" if ok else "FAIL"
    if not ok and weight == 0:
        verdict += " -> FAULT"
    elif isinstance(weight, int) and weight and (weight > 0) == ok:
        verdict += f" {weight:+d}"
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


def render_status(document: StatusDocument) -> str:
    """The table of a document as `schema.check` leaves it: every field present has its type,
    but any may be missing."""
    lines = [f"node {_text(document.get('node'))}"]
    overridden = False
    instances = document.get("vrrp", [])
    if instances:
        rows = []
        for v in instances:
            name = _text(v.get("name")) + (f"/{v['vrid']}" if "vrid" in v else "")
            tracks = ", ".join(_track(t) for t in v.get("tracks", []))
            state = _text(v.get("state")) + (" (maint)" if v.get("maintenance") else "")
            rows.append((name, state, _text(v.get("priority")),
                         _text(v.get("effective_priority")), _text(v.get("master")),
                         _text(v.get("virtual_ips")), _text(v.get("since")), tracks or "-"))
        lines += table(("VRRP", "STATE", "PRIO", "EFF", "MASTER", "VIPS", "SINCE", "TRACKS"),
                       rows, right={2, 3})
    else:
        lines.append("VRRP      none on this node")
    elections = document.get("elections", [])
    if elections:
        rows = [(_text(e.get("name")), _text(e.get("state")) + (" (maint)" if e.get("maintenance") else ""),
                 _text(e.get("holder")), _text(e.get("effective_priority", e.get("priority"))),
                 _text(e.get("virtual_ips")), _text(e.get("since")), _text(e.get("reason")))
                for e in elections]
        lines += table(("ELECTION", "STATE", "HOLDER", "PRIO", "VIPS", "SINCE", "REASON"), rows, right={3})
    announced = document.get("anycast", [])
    if announced:
        rows = [(_text(a.get("name")), _text(a.get("state")) + (" (maint)" if a.get("maintenance") else ""),
                 _text(a.get("device")), _text(a.get("virtual_ips")), _text(a.get("since")),
                 _text(a.get("reason")),
                 ", ".join(f"{_text(t.get('name'))} {'ok' if t.get('ok') else 'FAIL'}"
                           for t in a.get("tracks", [])) or "-")
                for a in announced]
        lines += table(("ANYCAST", "STATE", "DEVICE", "VIPS", "SINCE", "REASON", "TRACKS"), rows, right=set())
    for f in document.get("frontends", []):
        head = (f"FRONTEND {_text(f.get('name'))}  listen {_text(f.get('listen'))}"
                f"  active {_text(f.get('active_connections'))}")
        if f.get("refused"):
            head += f"  refused {f['refused']}"
        if f.get("all_down"):
            head += "  ALL BACKENDS DOWN"
        elif f.get("using_backups"):
            head += "  ON BACKUPS (no primary up)"
        lines.append(head)
        backends = f.get("backends", [])
        # A WEIGHT column when the daemon tells weights; `3*` marks a runtime override.
        weights = any("weight" in b for b in backends)
        rows = [(_text(b.get("address")) + (" (backup)" if b.get("backup") else ""),
                 _text(b.get("state")) + (OVERRIDE_MARK if b.get("overrides", {}).get("drain") else ""),
                 *((_weight(b),) if weights else ()), _text(b.get("health")),
                 _text(b.get("active_connections")), _text(b.get("total_connections")),
                 _text(b.get("failed_connections")), _text(b.get("last_error")))
                for b in backends]
        header = ("BACKEND", "STATE", *(("WEIGHT",) if weights else ()), "HEALTH", "ACTIVE", "TOTAL", "FAILED",
                  "LAST ERROR")
        lines += table(header, rows, right={2, 4, 5, 6} if weights else {3, 4, 5}, indent="  ")
        overridden |= any(b.get("overrides") for b in backends)
    if overridden:
        lines.append(f"{OVERRIDE_MARK} runtime override (lbctl drain/weight), kept across reloads and restarts")
    return "\n".join(lines) + "\n"


def _weight(backend: dict) -> str:
    shown = _text(backend.get("weight")) + (OVERRIDE_MARK if "weight" in backend.get("overrides", {}) else "")
    weight, effective = backend.get("weight"), backend.get("effective_weight")
    if weight and effective is not None and effective < weight:
        # Slow start: how far up the ramp the backend is.
        shown += f" ({100 * effective / weight:.0f}%)"
    return shown


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
