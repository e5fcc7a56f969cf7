"""haproxy.cfg's `mode tcp` proxies -> `[[frontend]]` tables.

Reading follows HAProxy: sections (`global`, `defaults`, `frontend`, `backend`, `listen`, ...)
of one-line directives, `#` comments, `"`/`'` quoting and backslash escapes. A proxy reads the
last `defaults` section before it. A frontend (or `listen`) becomes a vipd frontend per `bind`
address, with the servers of its `default_backend` (or its own).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from vipd.migrate.proxyconf import (
    MAX_RETRIES,
    FrontendDraft,
    backend_address,
    backend_table,
    listen_address,
    source,
)
from vipd.migrate.source import Directive, InputError, Notes, Origin, read_text
from vipd.migrate.toml import Table

SECTIONS = {"global", "defaults", "frontend", "backend", "listen", "userlist", "peers", "resolvers",
            "mailers", "program", "http-errors", "ring", "cache", "log-forward", "crt-store", "traces",
            "acme", "fcgi-app"}
PROXIES = ("frontend", "backend", "listen")
_TIME = re.compile(r"(\d+)(us|ms|s|m|h|d)?")
_UNITS = {"us": 1e-6, "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
WEIGHT_RANGE = (1, 256)
BALANCE = {"roundrobin": "round_robin", "static-rr": "round_robin", "leastconn": "least_conn",
           "source": "source_hash", "random": "random2"}
VALUE_OPTIONS = {
    "inter", "fastinter", "downinter", "rise", "fall", "weight", "port", "addr", "maxconn", "maxqueue",
    "minconn", "slowstart", "verify", "ca-file", "crl-file", "crt", "sni", "resolvers", "init-addr",
    "resolve-prefer", "resolve-net", "resolve-opts", "check-sni", "agent-port", "agent-inter",
    "agent-send", "agent-addr", "on-error", "on-marked-down", "on-marked-up", "error-limit", "observe",
    "cookie", "id", "proto", "alpn", "check-alpn", "check-proto", "pool-max-conn", "pool-purge-delay",
    "pool-low-conn", "source", "usesrc", "track", "redir", "namespace", "max-reuse", "tcp-ut", "ws",
    "guid", "hash-key", "ciphers", "ciphersuites", "curves", "sigalgs", "client-sigalgs", "ssl-min-ver",
    "ssl-max-ver", "proxy-v2-options", "log-proto", "shard", "npn", "check-reuse-pool",
}
SERVER_ONLY = {"disabled": "disabled in HAProxy",
               "ssl": "HAProxy encrypts to this server; vipd passes bytes through unchanged",
               "send-proxy": "vipd does not send PROXY headers",
               "send-proxy-v2": "vipd does not send PROXY headers",
               "send-proxy-v2-ssl": "vipd does not send PROXY headers",
               "send-proxy-v2-ssl-cn": "vipd does not send PROXY headers"}
HEALTH_OPTIONS = {"check", "inter", "rise", "fall", "port", "check-ssl", "verify", "no-check"}
HTTP_TIMEOUTS = {"http-request", "http-keep-alive", "queue", "tarpit"}
HTTP_OPTIONS = {"http-server-close", "forwardfor", "httpclose", "http-keep-alive", "http-pretend-keepalive",
                "http-buffer-request", "originalto", "http-use-htx", "http-no-delay", "http-ignore-probes",
                "http-restrict-req-hdr-names", "accept-invalid-http-request", "accept-invalid-http-response"}


# --- reading ------------------------------------------------------------------------------------

def _words(text: str, origin: Origin) -> list[str]:
    words: list[str] = []
    current: list[str] | None = None
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote == "'" and ch != "'":
            current.append(ch)
        elif ch == quote:
            quote = ""
        elif ch == "\\" and i + 1 < len(text):
            i += 1
            current = current if current is not None else []
            current.append(text[i])
        elif quote:
            current.append(ch)
        elif ch in "\"'":
            quote = ch
            current = current if current is not None else []
        elif ch == "#":
            break
        elif ch.isspace():
            if current is not None:
                words.append("".join(current))
                current = None
        else:
            current = current if current is not None else []
            current.append(ch)
        i += 1
    if quote:
        raise InputError(f"{origin}: unterminated {quote} quote")
    if current is not None:
        words.append("".join(current))
    return words


def parse(path: str, notes: Notes) -> list[Directive]:
    """The file's sections, each a Directive whose block holds its lines; InputError when it
    cannot be read or a directive stands outside any section."""
    sections: list[Directive] = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        origin = Origin(path, number)
        words = _words(line, origin)
        if not words:
            continue
        if words[0] in SECTIONS:
            sections.append(Directive(words[0], words[1:], origin, block=[]))
        elif not sections:
            raise InputError(f"{origin}: unknown keyword {words[0]!r} out of section")
        else:
            sections[-1].block.append(Directive(words[0], words[1:], origin))
    return sections


def seconds(text: str) -> float | None:
    """HAProxy's time syntax: a number in milliseconds, or with a unit (us, ms, s, m, h, d)."""
    match = _TIME.fullmatch(text)
    return float(int(match[1]) * _UNITS[match[2] or "ms"]) if match else None


# --- reading a proxy's lines --------------------------------------------------------------------

@dataclass
class Proxy:
    section: Directive
    mode: Directive | None = None
    binds: list[Directive] = field(default_factory=list)
    default_backend: Directive | None = None
    timeouts: dict[str, Directive] = field(default_factory=dict)
    retries: Directive | None = None
    balance: Directive | None = None
    check: Directive | None = None          # the last option httpchk / ssl-hello-chk / tcp-check
    httpchk: Directive | None = None
    expect: Directive | None = None
    send: Directive | None = None
    default_server: list[Directive] = field(default_factory=list)
    servers: list[Directive] = field(default_factory=list)
    used: bool = False

    @property
    def name(self) -> str:
        return self.section.args[0] if self.section.args else ""

    @property
    def kind(self) -> str:
        return self.section.name

    @property
    def is_tcp(self) -> bool:
        return self.mode is None or self.mode.args == ["tcp"]


class _Translator:
    def __init__(self, notes: Notes) -> None:
        self.notes = notes
        self.node = Table()
        self.frontends: list[FrontendDraft] = []

    def skip(self, d: Directive, why: str) -> None:
        self.notes.skip(d.origin, d.text, why)

    def read(self, section: Directive, defaults: Directive | None) -> Proxy:
        proxy = Proxy(section)
        for d in [*(defaults.children() if defaults else []), *section.children()]:
            self.read_line(proxy, d)
        return proxy

    def read_line(self, p: Proxy, d: Directive) -> None:
        sub = d.args[0] if d.args else ""
        if d.name == "mode":
            p.mode = d
        elif d.name == "bind":
            p.binds.append(d)
        elif d.name == "default_backend":
            p.default_backend = d
        elif d.name == "use_backend":
            self.skip(d, "conditions are not translated; only default_backend is")
        elif d.name == "timeout" and sub in ("connect", "client", "server", "check", "tunnel"):
            p.timeouts[sub] = d
        elif d.name == "timeout" and sub in HTTP_TIMEOUTS:
            self.skip(d, "an HTTP-mode timeout; vipd is a TCP (L4) proxy")
        elif d.name == "retries":
            p.retries = d
        elif d.name == "balance":
            p.balance = d
        elif d.name == "option" and sub in ("httpchk", "ssl-hello-chk", "tcp-check"):
            p.check = d
            if sub == "httpchk":
                p.httpchk = d
        elif d.name == "option" and sub in HTTP_OPTIONS:
            self.skip(d, "an HTTP-mode option; vipd is a TCP (L4) proxy")
        elif d.name == "option" and sub == "redispatch":
            self.skip(d, "vipd always retries a failed connect on another backend")
        elif d.name == "http-check" and sub == "expect":
            p.expect = d
        elif d.name == "http-check" and sub == "send":
            p.send = d
        elif d.name == "default-server":
            p.default_server.append(d)
        elif d.name == "server":
            p.servers.append(d)
        elif d.name in ("option", "no") and sub in ("tcplog", "httplog", "dontlognull", "log-health-checks") \
                or d.name == "log":
            self.skip(d, "vipd logs to the journal (node.log_level)")
        else:
            self.skip(d, "vipd has no equivalent")

    # --- translating ----------------------------------------------------------------------------

    def run(self, sections: list[Directive]) -> "Translation":
        defaults: Directive | None = None
        named: dict[str, Directive] = {}
        proxies: list[Proxy] = []
        used_defaults: set[Origin] = set()
        for s in sections:
            if s.name == "defaults":
                base = named.get(s.args[2]) if s.args[1:2] == ["from"] and len(s.args) == 3 else None
                if base is not None:
                    s = Directive(s.name, s.args, s.origin, block=[*base.children(), *s.children()])
                defaults = s
                if s.args:
                    named[s.args[0]] = s
            elif s.name in PROXIES:
                chosen = defaults
                if s.args[1:2] == ["from"] and len(s.args) == 3:
                    chosen = named.get(s.args[2])
                    if chosen is None:
                        self.skip(s, f"no defaults section named {s.args[2]}")
                        continue
                if not s.args:
                    self.skip(s, "has no name")
                    continue
                if chosen is not None:
                    used_defaults.add(chosen.origin)
                proxies.append(self.read(s, chosen))
            elif s.name == "global":
                for d in s.children():
                    self.skip(d, "a process setting (global)")
            else:
                self.skip(s, f"a {s.name} section; vipd has no equivalent")
        for s in sections:
            if s.name == "defaults" and s.origin not in used_defaults and s.children():
                self.skip(s, "no proxy follows it")
        backends = {p.name: p for p in proxies if p.kind in ("backend", "listen")}
        for p in proxies:
            if p.kind in ("frontend", "listen"):
                self.frontend(p, backends)
        for p in proxies:
            if p.kind == "backend" and not p.used:
                self.skip(p.section, "no translated frontend uses it")
        return Translation(self.node, self.frontends)

    def frontend(self, f: Proxy, backends: dict[str, Proxy]) -> None:
        if not f.is_tcp:
            self.skip(f.section, f"{f.mode.text}: vipd is a TCP (L4) proxy")
            return
        if f.default_backend is not None:
            b = backends.get(f.default_backend.args[0]) if len(f.default_backend.args) == 1 else None
            if b is None:
                self.skip(f.default_backend, "no backend with this name")
                return
        elif f.kind == "listen":
            b = f
        else:
            self.skip(f.section, "has no default_backend")
            return
        b.used = True
        if not b.is_tcp:
            self.skip(b.section, f"{b.mode.text}: vipd is a TCP (L4) proxy")
            return
        servers, left_out, health = self.servers(b)
        if not servers:
            self.skip(f.section, f"backend {b.name} has no server vipd can use")
            return
        settings = self.settings(f, b)
        listens = [(d, address) for d in f.binds for address in self.bind(d)]
        if not listens:
            self.skip(f.section, "has no bind address vipd can use")
        for d, address in listens:
            self.frontends.append(FrontendDraft(
                f.name, address, d.origin, source(d), settings, health, servers, left_out,
                comments=[f"{source(f.section)}" + (f" -> {source(b.section)}" if b is not f else "")]))

    def bind(self, d: Directive) -> list[str]:
        if not d.args:
            self.skip(d, "no address")
            return []
        options = d.args[1:]
        for option, why in (("ssl", "vipd passes TLS through and does not terminate it"),
                            ("crt", "vipd passes TLS through and does not terminate it"),
                            ("accept-proxy", "vipd does not read PROXY headers from clients")):
            if option in options:
                self.skip(d, why)
                return []
        addresses = []
        for text in d.args[0].split(","):
            plain = text.removeprefix("ipv4@").removeprefix("ipv6@")
            host, _, port = plain.rpartition(":")
            if "@" in plain or plain.startswith("/") or not _:
                self.notes.skip(d.origin, f"bind {text}", "vipd listens on TCP addresses only")
                continue
            try:
                address = listen_address(host, port)
            except ValueError as exc:
                self.notes.skip(d.origin, f"bind {text}", str(exc))
                continue
            if host == "::" and "v6only" not in options:
                self.notes.note(d.origin, f"bind {text}", "vipd's [::] listener takes IPv6 only; add a "
                                "0.0.0.0 frontend for IPv4 clients")
            addresses.append(address)
        for option in options:
            if option not in ("v6only", "v4v6"):
                self.notes.skip(d.origin, f"bind {d.args[0]} {option}", "vipd has no equivalent")
        return addresses

    def settings(self, f: Proxy, b: Proxy) -> Table:
        settings = Table()
        if b.balance is not None:
            algorithm = b.balance.args[0] if b.balance.args else ""
            name = BALANCE.get(algorithm.split("(")[0])
            if name is None:
                self.skip(b.balance, "vipd balances round_robin, least_conn, random2 or source_hash")
            else:
                settings.set("balance", name, source(b.balance))
                if algorithm in ("static-rr", ) or algorithm.startswith("random"):
                    self.notes.note(b.balance.origin, b.balance.text, f"approximated: balance = {name!r}")
        self.slow_start(b, settings)
        connect = self.timeout(b, "connect")
        if connect is not None:
            settings.set("connect_timeout", connect, source(b.timeouts["connect"]))
        idle = [(value, side.timeouts[kind]) for side, kind in ((b, "tunnel"), (f, "tunnel"))
                if (value := self.timeout(side, kind)) is not None][:1]
        if not idle:
            idle = sorted(((value, side.timeouts[kind]) for side, kind in ((f, "client"), (b, "server"))
                           if (value := self.timeout(side, kind)) is not None), key=lambda pair: pair[0])[:1]
        if idle:
            settings.set("idle_timeout", idle[0][0], source(idle[0][1]))
        if b.retries is not None:
            count = int(b.retries.args[0]) if b.retries.args and b.retries.args[0].isdigit() else None
            if count is None or count > MAX_RETRIES:
                self.skip(b.retries, f"vipd's retries is 0..{MAX_RETRIES}")
            else:
                settings.set("retries", count, source(b.retries))
        return settings

    def slow_start(self, b: Proxy, settings: Table) -> None:
        """HAProxy's per-server `slowstart` -> the frontend's one `slow_start`."""
        defaults = _options([w for d in b.default_server for w in d.args])
        servers = [(d, {**defaults, **_options(d.args[2:])}) for d in b.servers if len(d.args) >= 2]
        given = [(d, options["slowstart"]) for d, options in servers if "slowstart" in options]
        if not given:
            return
        first, text = given[0]
        value = seconds(text)
        if value is None or value > 3600:
            self.notes.skip(first.origin, f"server {first.args[0]} slowstart {text}", "must be a time up to 1h")
            return
        settings.set("slow_start", value, f"{source(first)} (slowstart)")
        if len(given) < len(servers) or len({t for _, t in given}) > 1:
            self.notes.note(first.origin, f"server {first.args[0]} slowstart", "servers differ; vipd has one "
                            "slow_start per frontend: the first server's is used")

    def timeout(self, p: Proxy, kind: str) -> float | None:
        d = p.timeouts.get(kind)
        if d is None:
            return None
        value = seconds(d.args[1]) if len(d.args) == 2 else None
        if not value:
            self.skip(d, "must be a time > 0 (5s, 500ms, 1m; a bare number is milliseconds)")
            return None
        return value

    def servers(self, b: Proxy) -> tuple[list[Table], list[str], Table]:
        defaults = _options([w for d in b.default_server for w in d.args])
        tables: list[Table] = []
        left_out: list[str] = []
        checked: list[tuple[Directive, dict[str, str]]] = []
        unchecked: list[Directive] = []
        for d in b.servers:
            if len(d.args) < 2:
                self.skip(d, "expects `server NAME ADDRESS:PORT [options]`")
                continue
            options = {**defaults, **_options(d.args[2:])}
            reason = next((why for flag, why in SERVER_ONLY.items() if flag in options), None)
            if reason is not None:
                self.skip(d, f"{reason}; left out")
                left_out.append(f"not translated: {source(d)}")
                continue
            try:
                address = backend_address(d.args[1])
            except ValueError as exc:
                self.skip(d, f"{exc} (HAProxy takes the port from the frontend when there is none)")
                continue
            weight = None
            if "weight" in options:
                low, high = WEIGHT_RANGE
                text = options["weight"]
                if text.isdigit() and low <= int(text) <= high:
                    weight = int(text)
                else:
                    self.skip(d, f"weight {text}: must be {low}..{high} (weight 0 takes no traffic); left out")
                    left_out.append(f"not translated: {source(d)}")
                    continue
            maxconn = options.get("maxconn")
            if maxconn is not None and not maxconn.isdigit():
                self.notes.skip(d.origin, f"server {d.args[0]} maxconn {maxconn}", "must be a number")
                maxconn = None
            for option in options:
                if option not in HEALTH_OPTIONS and option not in ("weight", "maxconn", "backup", "slowstart"):
                    self.notes.skip(d.origin, f"server {d.args[0]} {option}", "vipd has no equivalent")
            if "check" in options and "no-check" not in options:
                checked.append((d, options))
            else:
                unchecked.append(d)
            tables.append(backend_table(address, source(d), weight, int(maxconn) if maxconn else None,
                                        backup="backup" in options))
        return tables, left_out, self.health(b, checked, unchecked)

    def health(self, b: Proxy, checked: list[tuple[Directive, dict[str, str]]],
               unchecked: list[Directive]) -> Table:
        health = Table()
        if not checked:
            health.set("type", "tcp", "no server has `check`: HAProxy never marks them down; vipd "
                       "probes every backend")
            if unchecked:
                self.notes.note(b.section.origin, b.section.text, "no server has `check`: vipd probes "
                                "every backend anyway ([frontend.health] type = \"tcp\")")
            return health
        for d in unchecked:
            self.notes.note(d.origin, f"server {d.args[0]}", "has no `check`: vipd probes it like the others")
        first, options = checked[0]
        tls = "check-ssl" in options or (b.check is not None and b.check.args[:1] == ["ssl-hello-chk"]
                                          and b.httpchk is not None)
        if b.httpchk is not None and b.check is not None and b.check.args[0] in ("httpchk", "ssl-hello-chk"):
            self.http_check(b, health, tls)
        else:
            if b.check is not None and b.check.args[0] == "ssl-hello-chk":
                self.notes.note(b.check.origin, b.check.text, "approximated: vipd's tcp check connects "
                                "without a TLS hello")
            elif b.check is not None and b.check.args[0] == "tcp-check":
                self.notes.note(b.check.origin, b.check.text, "translated as type = \"tcp\" (connect)")
            health.set("type", "tcp", source(b.check) if b.check else f"{source(first)} (check)")
        for key in ("inter", "rise", "fall", "port"):
            if len({o.get(key) for _, o in checked}) > 1:
                self.notes.note(first.origin, f"server {first.args[0]} {key}", "servers differ; vipd has one "
                                "health setting per frontend: the first checked server's is used")
        for key, check in (("inter", None), ("rise", (1, 1000)), ("fall", (1, 1000))):
            text = options.get(key)
            if text is None:
                continue
            if key == "inter":
                value = seconds(text)
                if not value:
                    self.notes.skip(first.origin, f"server {first.args[0]} inter {text}", "must be a time > 0")
                else:
                    health.set("interval", value, f"{source(first)} (inter)")
            elif text.isdigit() and check[0] <= int(text) <= check[1]:
                health.set(key, int(text), f"{source(first)} ({key})")
            else:
                self.notes.skip(first.origin, f"server {first.args[0]} {key} {text}", "must be 1..1000")
        check_timeout = self.timeout(b, "check")
        if check_timeout is not None:
            if check_timeout < health.get("interval", 2.0):
                health.set("timeout", check_timeout, source(b.timeouts["check"]))
            else:
                self.skip(b.timeouts["check"], "vipd needs a check timeout below the interval")
        port = options.get("port")
        if port is not None:
            if port.isdigit() and 1 <= int(port) <= 65535:
                health.set("port", int(port), f"{source(first)} (port)")
            else:
                self.notes.skip(first.origin, f"server {first.args[0]} port {port}", "must be 1..65535")
        if options.get("verify") == "required":
            self.notes.skip(first.origin, f"server {first.args[0]} verify required",
                            "vipd's https check does not verify certificates (tls_verify = false)")
        return health

    def http_check(self, b: Proxy, health: Table, tls: bool) -> None:
        args = b.httpchk.args[1:]
        method, path = ("OPTIONS", "/") if not args else (("OPTIONS", args[0]) if len(args) == 1 else args[:2])
        if b.send is not None:
            pairs = dict(zip(b.send.args[1::2], b.send.args[2::2]))
            method, path = pairs.get("meth", method), pairs.get("uri", path)
        kind = "https" if tls else "http"
        health.set("type", kind, source(b.httpchk))
        if tls and b.check.args[0] == "ssl-hello-chk":
            self.notes.note(b.check.origin, b.check.text, f"approximated: with option httpchk, vipd checks "
                            f"{method} {path} over TLS (type = \"https\")")
        if method.upper() not in ("GET", "HEAD"):
            self.notes.note(b.httpchk.origin, b.httpchk.text, f"approximated: vipd sends GET, not {method}")
        if path.startswith("/"):
            health.set("path", path)
        else:
            self.skip(b.httpchk, "the check URI must start with /")
        if b.expect is None:
            self.notes.note(b.httpchk.origin, b.httpchk.text, "HAProxy accepts any 2xx or 3xx; vipd "
                            "expects 200 unless told otherwise")
            return
        words = b.expect.args[1:]
        if len(words) == 2 and words[0] == "status" and re.fullmatch(r"\d{3}(,\d{3})*", words[1]) \
                and all(100 <= int(c) <= 599 for c in words[1].split(",")):
            health.set("expect", [int(c) for c in words[1].split(",")], source(b.expect))
        else:
            self.skip(b.expect, "vipd expects a list of status codes (http-check expect status N)")


def _options(words: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    i = 0
    while i < len(words):
        word = words[i]
        if word in VALUE_OPTIONS and i + 1 < len(words):
            options[word] = words[i + 1]
            i += 2
        else:
            options[word] = ""
            i += 1
    return options


@dataclass
class Translation:
    node: Table
    frontends: list[FrontendDraft]


def translate(path: str, notes: Notes) -> Translation:
    return _Translator(notes).run(parse(path, notes))
