"""One vipd config from the three translations: frontends named and listening once each, the
local-proxy hint on keepalived scripts, and the result checked with vipd's own parser."""
from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass

from lbproxy.configreader import ConfigError
from vipd.config import parse
from vipd.migrate import haproxy, keepalived, nginx
from vipd.migrate.keepalived import ScriptTrack
from vipd.migrate.proxyconf import FrontendDraft
from vipd.migrate.source import Notes
from vipd.migrate.toml import Table, render

MAX_SCRIPT_BYTES = 65536
_PROCESS_CHECK = re.compile(r"\b(?:killall\s+-0|pidof|pgrep|pkill\s+-0|systemctl\s+(?:--quiet\s+)?is-active"
                            r"|service)\b[^\n;|&]*?\b(haproxy|nginx)\b")
_CONNECT_TOOL = re.compile(r"\b(?:curl|wget|nc|ncat|socat)\b|/dev/tcp/")
_LOCAL_HOSTS = r"localhost|127(?:\.\d{1,3}){3}|\[::1\]|0\.0\.0\.0"
_PORT = r"[:/](\d+|\$\{?\w+\}?)"


@dataclass
class Result:
    toml: str | None          # None: nothing could be translated
    notes: list[str]          # stderr lines, one per thing not translated (or approximated)
    problems: list[str]       # what `vipd check` says about the output: empty unless vipd import has a bug


def translate(keepalived_path: str | None = None, nginx_path: str | None = None,
              haproxy_path: str | None = None) -> Result:
    """InputError (one line) when an input cannot be read or parsed."""
    notes = Notes()
    node = Table()
    instances: list[Table] = []
    script_tracks: list[ScriptTrack] = []
    drafts: list[tuple[str, FrontendDraft]] = []
    if keepalived_path:
        k = keepalived.translate(keepalived_path, notes)
        node, instances, script_tracks = k.node, k.instances, k.script_tracks
    for program, module, path in (("nginx", nginx, nginx_path), ("haproxy", haproxy, haproxy_path)):
        if path:
            t = module.translate(path, notes)
            drafts += [(program, d) for d in t.frontends]
            for key, value in t.node.values.items():
                if key not in node.values:
                    node.set(key, value, t.node.key_comments.get(key))
    frontends = _unique(drafts, notes)
    for track in script_tracks:
        _suggest_frontend_track(track, frontends, notes)
    if not instances and not frontends:
        return Result(None, notes.lines, [])
    sources = [os.path.basename(p) for p in (keepalived_path, nginx_path, haproxy_path) if p]
    top: dict[str, Table | list[Table]] = {}
    if node.values:
        top["node"] = node
    if instances:
        top["vrrp"] = instances
    if frontends:
        top["frontend"] = [d.table() for _, d in frontends]
    text = render([f"Translated by `vipd import` from {', '.join(sources)}.",
                   "Each value's comment says where it came from; what was not translated went to stderr."],
                  top)
    return Result(text, notes.lines, _check(text))


def _unique(drafts: list[tuple[str, FrontendDraft]], notes: Notes) -> list[tuple[str, FrontendDraft]]:
    kept: list[tuple[str, FrontendDraft]] = []
    listens: dict[str, str] = {}
    for program, draft in drafts:
        if draft.listen in listens:
            notes.skip(draft.origin, f"listen {draft.listen}",
                       f"already the listen address of frontend {listens[draft.listen]!r}")
            continue
        names = {d.name for _, d in kept}
        base, n = draft.name, 2
        while draft.name in names:
            draft.name, n = f"{base}-{n}", n + 1
        listens[draft.listen] = draft.name
        kept.append((program, draft))
    return kept


def _script_text(command: str) -> str:
    """The command line, plus the script file it runs when that is a small readable text file."""
    first = command.split()[0] if command.split() else ""
    if os.path.isabs(first) and os.path.isfile(first):
        try:
            with open(first, "rb") as handle:
                content = handle.read(MAX_SCRIPT_BYTES)
            if b"\0" not in content:
                return command + "\n" + content.decode("utf-8", errors="replace")
        except OSError:
            pass
    return command


def _checked_frontend(text: str, frontends: list[tuple[str, FrontendDraft]],
                      vips: list[str]) -> str | None:
    """The frontend a keepalived check script probes, if it checks the local proxy."""
    process = _PROCESS_CHECK.search(text)
    if process:
        named = [d.name for program, d in frontends if program == process[1]]
        if named:
            return named[0]
    if not _CONNECT_TOOL.search(text):
        return None
    extra = "".join(f"|{re.escape(v)}" for v in vips)
    ports = re.findall(f"(?:{_LOCAL_HOSTS}{extra}){_PORT}", text)
    for port in ports:
        for _, d in frontends:
            if port.isdigit() and d.listen.rpartition(":")[2] == port:
                return d.name
    if ports and len(frontends) == 1 and not all(p.isdigit() for p in ports):
        return frontends[0][1].name
    return None


def _suggest_frontend_track(track: ScriptTrack, frontends: list[tuple[str, FrontendDraft]],
                            notes: Notes) -> None:
    vips = [v.split("/")[0] for v in track.instance.get("virtual_ips", [])]
    name = _checked_frontend(_script_text(track.script.command or ""), frontends, vips)
    if name is None:
        return
    script = track.script.directive
    track.table.comments += [
        "This script checks the local proxy. vipd's built-in track does that without a script",
        f'(ok while frontend "{name}" has a healthy backend); to use it, replace `script` and its timing with:',
        f'  frontend = "{name}"',
    ]
    notes.note(script.origin, f"vrrp_script {script.args[0]}",
               f'checks the local proxy: vipd\'s built-in track can replace it: [[vrrp.track]] frontend = "{name}" '
               "(suggested in a comment in the output)")


def _check(text: str) -> list[str]:
    try:
        parse(tomllib.loads(text), "<vipd import>", require_vrrp=True)
    except ConfigError as exc:
        return exc.problems
    except tomllib.TOMLDecodeError as exc:
        return [f"<vipd import>: TOML syntax: {exc}"]
    return []
