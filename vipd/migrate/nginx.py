"""nginx.conf's `stream { }` -> `[[frontend]]` tables.

Reading follows nginx: `;`-terminated directives, `{ }` blocks, `#` comments, `"`/`'` quoting with
backslash escapes, `include` (globs, relative to the main file's directory). Each stream `server`
becomes a frontend per `listen`; its `proxy_pass` upstream gives the backends.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from vipd.migrate.proxyconf import (
    BACKEND_WEIGHT_RANGE,
    MAX_RETRIES,
    FrontendDraft,
    backend_address,
    backend_table,
    listen_address,
    source,
)
from vipd.migrate.source import (
    MAX_INCLUDE_DEPTH,
    Directive,
    InputError,
    Notes,
    Origin,
    include_targets,
    read_text,
)
from vipd.migrate.toml import Table

_ESCAPES = {"t": "\t", "r": "\r", "n": "\n"}
_TIME = re.compile(r"(\d+)(ms|s|m|h|d|w|M|y)?")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000, "y": 31536000}
SOURCE_KEYS = ("$remote_addr", "$binary_remote_addr")
SKIPPED_PARAMS = {
    "resolve": "vipd resolves a backend name when it connects",
    "slow_start": "vipd has no slow start",
    "service": "vipd has no SRV lookups",
    "route": "vipd has no sticky routes",
}


# --- reading ------------------------------------------------------------------------------------

def _lex(text: str, path: str):
    """(word, line, special): special for `;`, `{`, `}` outside quotes."""
    i, line, n = 0, 1, len(text)
    while i < n:
        ch = text[i]
        if ch == "\n":
            line += 1
            i += 1
        elif ch.isspace():
            i += 1
        elif ch == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif ch in ";{}":
            yield ch, line, True
            i += 1
        elif ch in "\"'":
            start, word = line, []
            i += 1
            while i < n and text[i] != ch:
                if text[i] == "\\" and i + 1 < n and text[i + 1] in (ch, "\\", "t", "r", "n"):
                    i += 1
                    word.append(_ESCAPES.get(text[i], text[i]))
                else:
                    line += text[i] == "\n"
                    word.append(text[i])
                i += 1
            if i >= n:
                raise InputError(f"{path}:{start}: unterminated {ch} quote")
            i += 1
            yield "".join(word), start, False
        else:
            start = i
            while i < n and not text[i].isspace() and text[i] not in ";{}\"'":
                if text[i] == "$" and text[i + 1:i + 2] == "{":
                    end = text.find("}", i)
                    i = end + 1 if end > 0 else n
                    continue
                if text[i] == "\\" and i + 1 < n:
                    i += 1
                i += 1
            yield text[start:i], line, False


def _tree(path: str) -> list[Directive]:
    root: list[Directive] = []
    stack: list[tuple[list[Directive], Directive | None]] = [(root, None)]
    words: list[str] = []
    first = 0
    for word, line, special in _lex(read_text(path), path):
        origin = Origin(path, first or line)
        if not special:
            first = first or line
            words.append(word)
        elif word == ";":
            if not words:
                raise InputError(f"{path}:{line}: unexpected \";\"")
            stack[-1][0].append(Directive(words[0], words[1:], origin))
            words, first = [], 0
        elif word == "{":
            if not words:
                raise InputError(f"{path}:{line}: unexpected \"{{\"")
            opened = Directive(words[0], words[1:], origin, block=[])
            stack[-1][0].append(opened)
            stack.append((opened.block, opened))
            words, first = [], 0
        else:
            if words:
                raise InputError(f"{path}:{line}: unexpected \"}}\" after \"{' '.join(words)}\" (missing \";\"?)")
            if len(stack) == 1:
                raise InputError(f"{path}:{line}: unbalanced braces: \"}}\" closes nothing")
            stack.pop()
    if words:
        raise InputError(f"{path}:{first}: unexpected end of file, expecting \";\" or \"}}\"")
    if len(stack) > 1:
        opened = stack[-1][1]
        raise InputError(f"{opened.origin}: unbalanced braces: \"{opened.name} {{\" is never closed")
    return root


def _expand(tree: list[Directive], prefix: str, notes: Notes, depth: int = 0,
            in_stream: bool = False) -> list[Directive]:
    """Includes replaced by the directives they name, at the top and inside `stream` (the only
    places this translation reads; an include in `http` may only hold http directives)."""
    out: list[Directive] = []
    for d in tree:
        if d.name == "include" and d.block is None:
            if len(d.args) != 1:
                notes.skip(d.origin, d.text, "include needs exactly one file name")
                continue
            if depth >= MAX_INCLUDE_DEPTH:
                raise InputError(f"{d.origin}: includes nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")
            for target in include_targets(d.args[0], prefix):
                if not os.path.exists(target):
                    notes.skip(d.origin, d.text, f"{target}: no such file")
                    continue
                out += _expand(_tree(target), prefix, notes, depth + 1, in_stream)
        else:
            if d.block is not None and (in_stream or d.name == "stream"):
                d.block = _expand(d.block, prefix, notes, depth, in_stream=True)
            out.append(d)
    return out


def parse(path: str, notes: Notes) -> list[Directive]:
    """The file's directive tree, includes expanded; InputError when it cannot be read or parsed."""
    return _expand(_tree(path), os.path.dirname(path), notes)


# --- translating --------------------------------------------------------------------------------

def seconds(text: str) -> float | None:
    """nginx's time syntax (`30s`, `500ms`, `1m30s`, a bare number of seconds)."""
    if not text or not re.fullmatch(r"(?:\d+(?:ms|s|m|h|d|w|M|y)?)+", text):
        return None
    return float(sum(int(n) * _UNITS[unit or "s"] for n, unit in _TIME.findall(text)))


@dataclass
class Upstream:
    directive: Directive
    backends: list[Table] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    balance: tuple[str, str] | None = None
    max_fails: dict[int | None, list[Directive]] = field(default_factory=dict)
    used: bool = False


@dataclass
class Translation:
    node: Table
    frontends: list[FrontendDraft]


class _Translator:
    def __init__(self, notes: Notes) -> None:
        self.notes = notes
        self.node = Table()
        self.frontends: list[FrontendDraft] = []
        self.upstreams: dict[str, Upstream] = {}

    def skip(self, d: Directive, why: str) -> None:
        self.notes.skip(d.origin, d.text, why)

    def run(self, tree: list[Directive]) -> Translation:
        streams = [d for d in tree if d.name == "stream" and d.block is not None]
        for d in tree:
            if d.name == "stream" and d.block is not None:
                continue
            if d.name == "worker_processes" and d.args == ["auto"]:
                continue     # vipd's default is the CPU count too
            if d.name == "worker_processes" and len(d.args) == 1 and d.args[0].isdigit() \
                    and 1 <= int(d.args[0]) <= 256:
                self.node.set("workers", int(d.args[0]), source(d))
            elif d.name == "http":
                self.skip(d, "vipd is a TCP (L4) proxy; only the stream block is translated")
            else:
                self.skip(d, "outside stream; vipd translates nginx's stream (TCP) proxy only")
        for stream in streams:
            self.stream(stream)
        for name, upstream in self.upstreams.items():
            if not upstream.used:
                self.skip(upstream.directive, "no stream server proxies to it")
        return Translation(self.node, self.frontends)

    def stream(self, block: Directive) -> None:
        inherited: dict[str, Directive] = {}
        servers = []
        for d in block.children():
            if d.name == "upstream" and d.block is not None and len(d.args) == 1:
                if d.args[0] in self.upstreams:
                    self.skip(d, "a second upstream with this name")
                else:
                    self.upstreams[d.args[0]] = self.upstream(d)
            elif d.name == "server" and d.block is not None:
                servers.append(d)
            elif d.name in SERVER_KEYS:
                inherited[d.name] = d
            else:
                self.skip(d, "vipd has no equivalent")
        for d in servers:
            self.server(d, inherited)

    def upstream(self, block: Directive) -> Upstream:
        upstream = Upstream(block)
        for d in block.children():
            if d.name == "server" and d.args:
                self.upstream_server(upstream, d)
            elif d.name == "least_conn" and not d.args:
                upstream.balance = ("least_conn", source(d))
            elif d.name == "hash":
                if d.args and d.args[0] in SOURCE_KEYS and d.args[1:] in ([], ["consistent"]):
                    upstream.balance = ("source_hash", source(d))
                else:
                    self.skip(d, "vipd hashes on the client address only ($remote_addr)")
            elif d.name == "random":
                upstream.balance = ("random2", source(d))
                if d.args[:1] != ["two"] or d.args[1:] not in ([], ["least_conn"]):
                    self.notes.note(d.origin, d.text, "approximated: random2 (two random picks, the less "
                                    "loaded wins)")
            elif d.name == "zone":
                self.skip(d, "vipd's workers share backend state without a zone")
            else:
                self.skip(d, "vipd has no equivalent")
        return upstream

    def upstream_server(self, upstream: Upstream, d: Directive) -> None:
        try:
            address = backend_address(d.args[0])
        except ValueError as exc:
            self.skip(d, str(exc))
            return
        params: dict[str, str] = {}
        for word in d.args[1:]:
            key, _, value = word.partition("=")
            params[key] = value
        if "down" in params:
            self.skip(d, "marked down; left out")
            upstream.left_out.append(f"not translated: {source(d)} (down)")
            return
        weight = None
        if "weight" in params:
            low, high = BACKEND_WEIGHT_RANGE
            if params["weight"].isdigit() and low <= int(params["weight"]) <= high:
                weight = int(params["weight"])
            else:
                self.notes.skip(d.origin, f"server {d.args[0]} weight={params['weight']}",
                                f"vipd's weight is {low}..{high}; the default 1 applies")
        max_conns = None
        if "max_conns" in params:
            if params["max_conns"].isdigit():
                max_conns = int(params["max_conns"])
            else:
                self.notes.skip(d.origin, f"server {d.args[0]} max_conns={params['max_conns']}",
                                "must be a number")
        fails = params.get("max_fails")
        key = int(fails) if fails is not None and fails.isdigit() else None
        if fails is not None and key is None:
            self.notes.skip(d.origin, f"server {d.args[0]} max_fails={fails}", "must be a number")
        upstream.max_fails.setdefault(key, []).append(d)
        if "fail_timeout" in params:
            self.notes.skip(d.origin, f"server {d.args[0]} fail_timeout={params['fail_timeout']}",
                            "vipd takes a backend back after `rise` good probes, not after a fixed time")
        for param in params:
            if param in SKIPPED_PARAMS:
                self.notes.skip(d.origin, f"server {d.args[0]} {param}", SKIPPED_PARAMS[param])
            elif param not in ("weight", "max_conns", "max_fails", "fail_timeout", "backup"):
                self.notes.skip(d.origin, f"server {d.args[0]} {param}", "vipd has no equivalent")
        upstream.backends.append(backend_table(address, source(d), weight, max_conns, backup="backup" in params))

    def server(self, block: Directive, inherited: dict[str, Directive]) -> None:
        own: dict[str, Directive] = dict(inherited)
        listens: list[Directive] = []
        for d in block.children():
            if d.name == "listen":
                listens.append(d)
            elif d.name in SERVER_KEYS:
                own[d.name] = d
            else:
                self.skip(d, "vipd has no equivalent")
        target = own.get("proxy_pass")
        if target is None or len(target.args) != 1 or "$" in target.args[0]:
            self.skip(target or block, "needs `proxy_pass UPSTREAM` or `proxy_pass HOST:PORT` "
                      "(no variables)")
            return
        upstream = self.upstreams.get(target.args[0])
        if upstream is not None:
            upstream.used = True
            backends, left_out, name = upstream.backends, upstream.left_out, target.args[0]
        else:
            try:
                address = backend_address(target.args[0])
            except ValueError as exc:
                self.skip(target, f"no upstream {target.args[0]!r} and not HOST:PORT ({exc})")
                return
            backends, left_out, name = [backend_table(address, source(target))], [], None
        if not backends:
            self.skip(block, f"upstream {target.args[0]} has no server vipd can use")
            return
        settings = self.settings(own)
        if upstream is not None and upstream.balance:
            settings.set("balance", upstream.balance[0], upstream.balance[1])
        health = self.health(upstream)
        if not listens:
            self.skip(block, "has no listen")
        for d in listens:
            listen = self.listen(d)
            if listen is None:
                continue
            draft = FrontendDraft(name or f"stream-{listen.rpartition(':')[2]}", listen, d.origin, source(d),
                                  settings, health, backends, left_out,
                                  comments=[f"{source(block)} (stream server)"])
            self.frontends.append(draft)

    def listen(self, d: Directive) -> str | None:
        if not d.args:
            self.skip(d, "no address")
            return None
        text, options = d.args[0], d.args[1:]
        for option in ("udp", "ssl", "proxy_protocol"):
            if option in options:
                why = {"udp": "vipd proxies TCP only",
                       "ssl": "vipd passes TLS through and does not terminate it",
                       "proxy_protocol": "vipd does not read PROXY headers from clients"}[option]
                self.skip(d, why)
                return None
        if text.startswith("unix:"):
            self.skip(d, "vipd listens on TCP only")
            return None
        if text.isdigit():
            host, port = "0.0.0.0", text
        elif text.startswith("["):
            host, _, port = text.partition("]:")
            host += "]"
        else:
            host, _, port = text.rpartition(":")
        try:
            address = listen_address(host, port)
        except ValueError as exc:
            self.skip(d, str(exc))
            return None
        for option in options:
            self.notes.skip(d.origin, f"listen {text} {option}", "vipd has no equivalent")
        return address

    def settings(self, own: dict[str, Directive]) -> Table:
        settings = Table()
        for directive, key in (("proxy_connect_timeout", "connect_timeout"), ("proxy_timeout", "idle_timeout")):
            d = own.get(directive)
            if d is None:
                continue
            value = seconds(d.args[0]) if len(d.args) == 1 else None
            if value is None or value <= 0:
                self.skip(d, "must be a time > 0 (30s, 500ms, 1m)")
            else:
                settings.set(key, value, source(d))
        tries, next_upstream = own.get("proxy_next_upstream_tries"), own.get("proxy_next_upstream")
        if next_upstream is not None and next_upstream.args == ["off"]:
            settings.set("retries", 0, source(next_upstream))
        elif tries is not None:
            count = int(tries.args[0]) if len(tries.args) == 1 and tries.args[0].isdigit() else None
            if count is None or count > MAX_RETRIES + 1:
                self.skip(tries, f"must be 0..{MAX_RETRIES + 1}")
            elif count == 0:
                self.notes.skip(tries.origin, tries.text, "unlimited tries: vipd's retries default 2 applies")
            else:
                settings.set("retries", count - 1, source(tries))
        for name in ("proxy_protocol",):
            if name in own:
                self.skip(own[name], "vipd does not send PROXY headers")
        return settings

    def health(self, upstream: Upstream | None) -> Table:
        health = Table()
        health.set("type", "tcp", "nginx checks passively; vipd connects to each backend actively")
        if upstream is None:
            return health
        explicit = {k: v for k, v in upstream.max_fails.items() if k is not None}
        if len(explicit) == 1 and not upstream.max_fails.get(None):
            fails, directives = next(iter(explicit.items()))
            if 1 <= fails <= 1000:
                health.set("fall", fails, f"max_fails={fails} (approximated)")
                for d in directives:
                    self.notes.note(d.origin, f"server {d.args[0]} max_fails={fails}",
                                    f"approximated: vipd probes actively; [frontend.health] fall = {fails}")
                return health
        for fails, directives in explicit.items():
            for d in directives:
                self.notes.skip(d.origin, f"server {d.args[0]} max_fails={fails}",
                                "vipd counts failed probes per frontend (fall), not failed "
                                "connections per server" + ("; max_fails=0 has no equivalent" if fails == 0 else ""))
        return health


SERVER_KEYS = {"proxy_pass", "proxy_connect_timeout", "proxy_timeout", "proxy_next_upstream",
               "proxy_next_upstream_tries", "proxy_protocol"}


def translate(path: str, notes: Notes) -> Translation:
    return _Translator(notes).run(parse(path, notes))
