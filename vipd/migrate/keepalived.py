"""keepalived.conf -> `[[vrrp]]` tables.

Reading follows keepalived 2.x: `!` and `#` comments, `"`/`'` quoting (quote characters removed,
adjacent text joined, backslash escapes), braces anywhere on a line, `include` (globs, relative to
the including file), `$NAME=value` definitions. keepalived's defaults that differ from vipd's
(VRRP version 2) are written out explicitly.
"""
from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
import shlex
from dataclasses import dataclass, field
from typing import Iterator

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

KEEPALIVED_DEFAULT_VERSION = 2
SAMPLE_ROUTER_ID = "LVS_DEVEL"     # in keepalived's sample config and most guides, on every node
INCLUDE_KEYWORDS = {"include", "includer", "includem", "includew", "includeb"}
_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}
_DEFINITION = re.compile(r"^\$([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")

NO_EQUIVALENT = "vipd has no equivalent"
WHY_TOP = {
    "vrrp_sync_group": "vipd has no sync groups; each [[vrrp]] instance elects on its own",
    "virtual_server": "an LVS virtual server; write a [[frontend]] (vipd proxies TCP itself)",
    "virtual_server_group": "an LVS virtual server group; vipd proxies TCP itself",
    "static_ipaddress": "static addresses belong to the system's network configuration",
    "static_routes": "static routes belong to the system's network configuration",
    "static_rules": "static rules belong to the system's network configuration",
    "vrrp_track_file": "vipd has no file tracks",
    "track_file": "vipd has no file tracks",
    "vrrp_track_process": "vipd has no process tracks; a script track (pidof NAME) does it",
    "bfd_instance": "vipd has no BFD",
    "garp_group": "vipd sends its gratuitous ARPs per instance (garp_repeat, garp_interval)",
}
WHY_INSTANCE = {
    "state": "vipd elects by priority; there is no configured start state",
    "track_file": "vipd has no file tracks",
    "track_process": "vipd has no process tracks; a script track (pidof NAME) does it",
    "track_bfd": "vipd has no BFD",
    "virtual_ipaddress_excluded": "vipd has no excluded addresses; add them to the system's network configuration",
    "virtual_routes": "vipd does not install routes",
    "virtual_rules": "vipd does not install rules",
    "use_vmac": "vipd does not create VMAC interfaces",
    "garp_master_delay": "vipd sends one burst of garp_repeat announcements on becoming master",
    "garp_master_refresh": "vipd sends announcements only on becoming master",
    "smtp_alert": "vipd sends no mail; use a notify script",
    "dont_track_primary": "vipd always tracks the instance's interface",
    "mcast_src_ip": "vipd sends adverts from the interface's primary address",
    "strict_mode": NO_EQUIVALENT,
}
GLOBAL_KEYS = {"router_id", "vrrp_version", "vrrp_garp_master_repeat", "vrrp_garp_interval",
               "vrrp_gna_interval", "default_interface"}
KEEPALIVED_SCRIPT_USER = "keepalived_script"
NO_SCRIPT_SECURITY = ("absent: keepalived runs scripts without ownership checks; vipd checks by default "
                      "(node.script_security) that scripts and its config file are root's and not "
                      "group/other-writable, and refuses unsafe ones (`node.script_security = false` "
                      "turns the checks off; not recommended)")


# --- reading ------------------------------------------------------------------------------------

def _tokens(text: str, origin: Origin) -> list[str]:
    """One line's words; `{` and `}` outside quotes are words of their own."""
    words: list[str] = []
    current: list[str] | None = None
    quote = ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == quote:
                quote = ""
            elif ch == "\\" and i + 1 < len(text):
                i += 1
                current.append(_ESCAPES.get(text[i], text[i]))
            else:
                current.append(ch)
        elif ch in "\"'":
            quote = ch
            current = current if current is not None else []
        elif ch in "!#":
            break
        elif ch == "{" and current and current[-1] == "$" and "}" in text[i:]:
            # An undefined ${NAME} stays one word, as keepalived leaves it.
            end = text.index("}", i)
            current.append(text[i:end + 1])
            i = end
        elif ch.isspace() or ch in "{}":
            if current is not None:
                words.append("".join(current))
                current = None
            if ch in "{}":
                words.append(ch)
        else:
            current = current if current is not None else []
            current.append(ch)
        i += 1
    if quote:
        raise InputError(f"{origin}: unterminated {quote} quote")
    if current is not None:
        words.append("".join(current))
    return words


@dataclass
class _Reader:
    notes: Notes
    definitions: dict[str, str] = field(default_factory=dict)

    def lines(self, path: str, depth: int = 0) -> Iterator[tuple[Origin, list[str]]]:
        if depth > MAX_INCLUDE_DEPTH:
            raise InputError(f"{path}: includes nested more than {MAX_INCLUDE_DEPTH} deep (a loop?)")
        for number, raw in enumerate(read_text(path).splitlines(), start=1):
            origin = Origin(path, number)
            line = raw.strip()
            definition = _DEFINITION.match(line)
            if definition:
                self.definitions[definition[1]] = self._substitute(definition[2])
                continue
            if line.startswith("@"):
                words = _tokens(line, origin)
                if "{" in words or "}" in words:
                    raise InputError(f"{origin}: conditional configuration ({words[0]}) on a block "
                                     "cannot be translated; expand it for this node first")
                if len(words) > 1:
                    self.notes.skip(origin, " ".join(words), "conditional configuration (keepalived -i); "
                                    "write this node's value by hand")
                continue
            words = _tokens(self._substitute(line), origin)
            if words and words[0] in INCLUDE_KEYWORDS:
                yield from self._include(origin, words, path, depth)
                continue
            if words:
                yield origin, words

    def _include(self, origin: Origin, words: list[str], path: str, depth: int):
        if len(words) != 2:
            self.notes.skip(origin, " ".join(words), "include needs exactly one file name")
            return
        for target in include_targets(words[1], os.path.dirname(path)):
            try:
                yield from self.lines(target, depth + 1)
            except InputError as exc:
                if os.path.exists(target) or depth >= MAX_INCLUDE_DEPTH:
                    raise
                self.notes.skip(origin, " ".join(words), str(exc))

    def _substitute(self, text: str) -> str:
        def value(match: re.Match) -> str:
            name = match[1] or match[2]
            return self.definitions.get(name, match[0])
        return _REFERENCE.sub(value, text)


def _tree(lines: Iterator[tuple[Origin, list[str]]]) -> list[Directive]:
    root: list[Directive] = []
    stack: list[tuple[list[Directive], Directive | None]] = [(root, None)]
    for origin, tokens in lines:
        words: list[str] = []

        def flush() -> None:
            if words:
                stack[-1][0].append(Directive(words[0], words[1:], origin))
                words.clear()

        for token in tokens:
            if token == "{":
                siblings = stack[-1][0]
                if words:
                    opened = Directive(words[0], words[1:], origin, block=[])
                    siblings.append(opened)
                    words.clear()
                elif siblings and siblings[-1].block is None:
                    opened = siblings[-1]
                    opened.block = []
                else:
                    raise InputError(f"{origin}: unbalanced braces: '{{' with no keyword before it")
                stack.append((opened.block, opened))
            elif token == "}":
                flush()
                if len(stack) == 1:
                    raise InputError(f"{origin}: unbalanced braces: '}}' closes nothing")
                stack.pop()
            else:
                words.append(token)
        flush()
    if len(stack) > 1:
        opened = stack[-1][1]
        raise InputError(f"{opened.origin}: unbalanced braces: '{opened.name} {{' is never closed")
    return root


def parse(path: str, notes: Notes) -> list[Directive]:
    """The file's directive tree, includes expanded; InputError when it cannot be read or parsed."""
    return _tree(_Reader(notes).lines(path))


# --- translating --------------------------------------------------------------------------------

@dataclass
class Script:
    """A vrrp_script as defined; `used` once some instance tracks it."""
    directive: Directive
    command: str | None = None
    interval: float | None = None
    timeout: float | None = None
    weight: int = 0
    reverse: bool = False
    rise: int | None = None
    fall: int | None = None
    used: bool = False


@dataclass
class ScriptTrack:
    """A script track in the output, for the composer's local-proxy hint."""
    table: Table
    script: Script
    instance: Table


@dataclass
class Translation:
    node: Table
    instances: list[Table]
    script_tracks: list[ScriptTrack]


def _int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[+-]?\d+", text) else None


def _float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if value == value and abs(value) != float("inf") else None


def command_line(words: list[str]) -> str:
    """keepalived's script words (quotes already removed) as one /bin/sh command line."""
    if len(words) == 1:
        return words[0]
    return " ".join(w if w and re.fullmatch(r"[\w@%+=:,./$-]+", w) else shlex.quote(w) for w in words)


class _Translator:
    def __init__(self, notes: Notes) -> None:
        self.notes = notes
        self.node = Table()
        self.instances: list[Table] = []
        self.script_tracks: list[ScriptTrack] = []
        self.scripts: dict[str, Script] = {}
        self.version = KEEPALIVED_DEFAULT_VERSION
        self.version_comment: str | None = None
        self.garp_repeat: tuple[int, str] | None = None
        self.garp_interval: tuple[float, str] | None = None
        self.gna_interval: tuple[float, str] | None = None
        self.default_interface: tuple[str, str] | None = None
        self.script_security = False
        self.script_user_given = False

    def skip(self, d: Directive, why: str) -> None:
        # A password is never echoed, wherever it was written.
        self.notes.skip(d.origin, d.name if "pass" in d.name else d.text, why)

    @staticmethod
    def source(d: Directive) -> str:
        return f"{os.path.basename(d.origin.file)}:{d.origin.line} {d.text}"

    def run(self, tree: list[Directive], path: str) -> Translation:
        for d in tree:
            if d.name == "global_defs":
                self.global_defs(d)
            elif d.name == "vrrp_script":
                self.define_script(d)
        if not self.script_security:
            # Absent, it has no line: the note names global_defs, where it would go.
            where = next((d.origin for d in tree if d.name == "global_defs"), Origin(path, 1))
            self.notes.note(where, "enable_script_security", NO_SCRIPT_SECURITY)
        seen: dict[tuple, str] = {}
        for d in tree:
            if d.name in ("global_defs", "vrrp_script"):
                continue
            if d.name == "vrrp_instance":
                table = self.instance(d)
                if table is None:
                    continue
                name, key = table.get("name"), (table.get("interface"), table.get("vrid"), _family(table))
                if name in (t.get("name") for t in self.instances):
                    self.skip(d, f"a second vrrp_instance named {name}")
                elif key in seen:
                    self.skip(d, f"virtual_router_id {key[1]} on {key[0]} is already used by {seen[key]}")
                else:
                    seen[key] = name
                    self.instances.append(table)
            else:
                self.skip(d, WHY_TOP.get(d.name, "not a keepalived keyword vipd knows"))
        for name, script in self.scripts.items():
            if not script.used:
                self.skip(script.directive, "no vrrp_instance tracks it")
        if self.script_tracks or any("notify" in t.values for t in self.instances):
            self.implicit_script_user()
        return Translation(self.node, self.instances, self.script_tracks)

    # global_defs and vrrp_script

    def global_defs(self, block: Directive) -> None:
        for d in block.children():
            value = d.args[0] if len(d.args) == 1 else None
            if d.name == "enable_script_security" and not d.args and d.block is None:
                self.script_security = True      # vipd's default: nothing to write
            elif d.name == "script_user" and d.block is None:
                self.script_user(d)
            elif d.name not in GLOBAL_KEYS or d.block is not None:
                self.skip(d, NO_EQUIVALENT)
            elif value is None:
                self.skip(d, "expects one value")
            elif d.name == "router_id" and value == SAMPLE_ROUTER_ID:
                self.skip(d, "keepalived's sample value; vipd names the node after the host")
            elif d.name == "router_id":
                self.node.set("name", value, self.source(d))
            elif d.name == "vrrp_version":
                if value in ("2", "3"):
                    self.version, self.version_comment = int(value), self.source(d)
                else:
                    self.skip(d, "must be 2 or 3")
            elif d.name == "vrrp_garp_master_repeat":
                repeat = _int(value)
                if repeat is None or not 0 <= repeat <= 100:
                    self.skip(d, "vipd's garp_repeat is 0..100")
                else:
                    self.garp_repeat = (repeat, self.source(d))
            elif d.name in ("vrrp_garp_interval", "vrrp_gna_interval"):
                interval = _float(value)
                if interval is None or not 0 <= interval <= 10:
                    self.skip(d, "vipd's garp_interval is 0..10 seconds")
                elif d.name == "vrrp_garp_interval":
                    self.garp_interval = (interval, self.source(d))
                else:
                    self.gna_interval = (interval, self.source(d))
            elif d.name == "default_interface":
                self.default_interface = (value, self.source(d))

    def implicit_script_user(self) -> None:
        """Without script_user, keepalived runs scripts as keepalived_script when that user exists
        (else root, vipd's default): keep the scripts' user what it was."""
        if self.script_user_given:
            return
        try:
            pwd.getpwnam(KEEPALIVED_SCRIPT_USER)
        except KeyError:
            return
        self.node.set("script_user", KEEPALIVED_SCRIPT_USER,
                      f"keepalived's default script user: no script_user, and {KEEPALIVED_SCRIPT_USER} exists here")

    def script_user(self, d: Directive) -> None:
        self.script_user_given = True
        if len(d.args) not in (1, 2):
            self.skip(d, "expects `script_user USER [GROUP]`")
            return
        user = d.args[0]
        try:
            account = pwd.getpwnam(user)
        except KeyError:
            # vipd check refuses an unknown node.script_user, so the output would not load here.
            self.skip(d, f"no user {user} on this system; create it, then set node.script_user = \"{user}\"")
            return
        self.node.set("script_user", user, self.source(d))
        if len(d.args) == 2 and d.args[1] != _group_name(account.pw_gid):
            self.notes.note(d.origin, d.text, f"group {d.args[1]} not translated: vipd runs scripts as {user} "
                            f"with {user}'s own groups (primary group {_group_name(account.pw_gid)})")

    def define_script(self, d: Directive) -> None:
        if len(d.args) != 1 or d.block is None:
            self.skip(d, "expects `vrrp_script NAME { ... }`")
            return
        script = Script(d)
        timeout_line: Directive | None = None
        for item in d.children():
            value = item.args[0] if item.args else ""
            if item.name == "script" and item.args:
                script.command = command_line(item.args)
            elif item.name in ("interval", "timeout"):
                seconds = _float(value)
                if seconds is None or seconds <= 0 or len(item.args) != 1:
                    self.skip(item, "must be a number of seconds > 0")
                else:
                    setattr(script, item.name, seconds)
                    timeout_line = item if item.name == "timeout" else timeout_line
            elif item.name == "weight":
                weight = _int(value)
                if weight is None or not -254 <= weight <= 254 or len(item.args) > 2:
                    self.skip(item, "must be -254..254")
                else:
                    script.weight = weight
                    script.reverse = item.args[1:] == ["reverse"]
            elif item.name in ("rise", "fall"):
                count = _int(value)
                if count is None or not 1 <= count <= 1000 or len(item.args) != 1:
                    self.skip(item, "must be 1..1000")
                else:
                    setattr(script, item.name, count)
            elif item.name == "user":
                self.skip(item, "vipd runs every script as one user, node.script_user (global_defs script_user)")
            elif item.name == "init_fail":
                self.skip(item, "vipd counts a script as failing until `rise` runs succeed")
            else:
                self.skip(item, NO_EQUIVALENT)
        if script.command is None:
            self.skip(d, "has no `script`")
            return
        if timeout_line is not None and script.timeout >= (script.interval or 1.0):
            self.skip(timeout_line, "vipd needs a timeout below the interval; its default applies")
            script.timeout = None
        self.scripts[d.args[0]] = script

    # vrrp_instance

    def instance(self, d: Directive) -> Table | None:
        if len(d.args) != 1 or d.block is None:
            self.skip(d, "expects `vrrp_instance NAME { ... }`")
            return None
        name = d.args[0]
        last: dict[str, Directive] = {}
        for item in d.children():
            if item.name in WHY_INSTANCE:
                self.skip(item, WHY_INSTANCE[item.name])
            elif item.name.startswith("notify_") and item.name not in (
                    "notify_master", "notify_backup", "notify_fault", "notify_stop"):
                self.skip(item, "vipd runs notify scripts on master, backup, fault and stop")
            elif item.name in INSTANCE_KEYS:
                if item.name in last and item.block is not None:
                    self.skip(item, f"a second {item.name} block; the first one is used")
                    continue
                last[item.name] = item
            else:
                self.skip(item, NO_EQUIVALENT)

        table = Table(comments=[f"{self.source(d)}"])
        table.set("name", name)
        interface = last.get("interface")
        if interface is not None and len(interface.args) == 1:
            table.set("interface", interface.args[0], self.source(interface))
        elif interface is not None:
            self.skip(interface, "expects one interface name")
        elif self.default_interface:
            table.set("interface", self.default_interface[0], self.default_interface[1])
        vrid = last.get("virtual_router_id")
        if vrid is not None:
            number = _int(vrid.args[0]) if len(vrid.args) == 1 else None
            if number is None or not 1 <= number <= 255:
                self.skip(vrid, "must be 1..255")
            else:
                table.set("vrid", number, self.source(vrid))
        vips = self.virtual_ips(last.get("virtual_ipaddress"), table.get("interface"))
        family = vips[0].version if vips else None
        missing = [what for key, what in (("interface", "interface"), ("vrid", "virtual_router_id"))
                   if key not in table.values]
        if not vips:
            missing.append("virtual_ipaddress")
        if missing:
            self.skip(d, f"no usable {', '.join(missing)}")
            for item in d.children():
                if item.name == "track_script":
                    for ref in item.children():
                        if ref.name in self.scripts:
                            self.scripts[ref.name].used = True
            return None

        priority = last.get("priority")
        if priority is not None:
            number = _int(priority.args[0]) if len(priority.args) == 1 else None
            if number is None or not 1 <= number <= 255:
                self.skip(priority, "must be 1..255 (255 = address owner)")
            else:
                table.set("priority", number, self.source(priority))
        version, version_comment = self.version, self.version_comment
        explicit = last.get("version") or last.get("vrrp_version")
        if explicit is not None:
            if explicit.args in (["2"], ["3"]):
                version, version_comment = int(explicit.args[0]), self.source(explicit)
            else:
                self.skip(explicit, "must be 2 or 3")
        if version == 2 and family == 6:
            self.notes.note(d.origin, f"vrrp_instance {name}",
                            "IPv6 addresses need VRRP version 3 (keepalived also switches): version = 3")
            version, version_comment = 3, "IPv6 needs VRRPv3"
        table.set("version", version, version_comment or f"keepalived's default (vipd's is {3})")
        self.advert(table, last.get("advert_int"), version)
        table.set("virtual_ips", [str(v) for v in vips], self.source(last["virtual_ipaddress"]))
        if "nopreempt" in last:
            table.set("preempt", False, self.source(last["nopreempt"]))
        elif "preempt" in last:
            table.set("preempt", True, self.source(last["preempt"]))
        delay = last.get("preempt_delay")
        if delay is not None:
            seconds = _float(delay.args[0]) if len(delay.args) == 1 else None
            if seconds is None or not 0 <= seconds <= 3600:
                self.skip(delay, "must be 0..3600 seconds")
            else:
                table.set("preempt_delay", seconds, self.source(delay))
        self.unicast(table, last.get("unicast_src_ip"), last.get("unicast_peer"), family)
        self.garp(table, last, family)
        self.authentication(table, last.get("authentication"), version)
        tracks = self.tracks(table, last)
        if tracks:
            table.set("track", tracks)
        notify = Table()
        for state in ("master", "backup", "fault", "stop"):
            item = last.get(f"notify_{state}")
            if item is not None and item.args:
                notify.set(state, command_line(item.args), self.source(item))
            elif item is not None:
                self.skip(item, "names no script")
        generic = last.get("notify")
        if generic is not None and generic.args:
            notify.set("notify", command_line(generic.args), self.source(generic))
        elif generic is not None:
            self.skip(generic, "names no script")
        if notify.values:
            table.set("notify", notify)
        return table

    def advert(self, table: Table, item: Directive | None, version: int) -> None:
        if item is None:
            return
        seconds = _float(item.args[0]) if len(item.args) == 1 else None
        if seconds is None:
            self.skip(item, "must be a number of seconds")
        elif version == 2 and (seconds != int(seconds) or not 1 <= seconds <= 255):
            self.skip(item, "VRRPv2 adverts are whole seconds 1..255; vipd's default 1 applies")
        elif version == 3 and (abs(round(seconds * 100) - seconds * 100) > 1e-6
                               or not 0.01 <= seconds <= 40.95):
            self.skip(item, "VRRPv3 adverts are 0.01..40.95 s in 0.01 s steps; vipd's default 1 applies")
        else:
            table.set("advert_interval", float(seconds), self.source(item))

    def virtual_ips(self, block: Directive | None, interface: str | None) -> list:
        vips: list = []
        for item in block.children() if block else []:
            try:
                text = item.name
                vip = ipaddress.ip_interface(text if "/" in text else text + ("/128" if ":" in text else "/32"))
            except ValueError:
                self.skip(item, "not an IP address")
                continue
            options = item.args
            pairs = dict(zip(options[::2], options[1::2]))
            if pairs.get("dev") not in (None, interface):
                self.skip(item, f"vipd puts an instance's addresses on its own interface ({interface})")
                continue
            if vips and vip.version != vips[0].version:
                self.skip(item, "mixes IPv4 and IPv6; vipd needs one instance per family")
                continue
            for option in options[::2]:
                if option != "dev":
                    self.notes.skip(item.origin, f"{item.name} {option}", "vipd adds the address as it is")
            vips.append(vip)
        return vips

    def unicast(self, table: Table, src: Directive | None, peers: Directive | None, family: int | None) -> None:
        if src is not None:
            if len(src.args) != 1 or _address_family(src.args[0]) is None:
                self.skip(src, "must be an IP address")
            elif _address_family(src.args[0]) != family:
                self.skip(src, "not the family of the virtual addresses")
            else:
                table.set("unicast_src", src.args[0], self.source(src))
        addresses = []
        for item in peers.children() if peers else []:
            if _address_family(item.name) is None:
                self.skip(item, "must be an IP address")
            elif _address_family(item.name) != family:
                self.skip(item, "not the family of the virtual addresses")
            else:
                addresses.append(item.name)
                if item.args:
                    self.notes.skip(item.origin, f"{item.name} {' '.join(item.args)}",
                                    "vipd checks no TTL on unicast adverts")
        if addresses:
            table.set("unicast_peers", addresses, self.source(peers))

    def garp(self, table: Table, last: dict[str, Directive], family: int | None) -> None:
        repeat = last.get("garp_master_repeat")
        if repeat is not None:
            number = _int(repeat.args[0]) if len(repeat.args) == 1 else None
            if number is None or not 0 <= number <= 100:
                self.skip(repeat, "vipd's garp_repeat is 0..100")
            else:
                table.set("garp_repeat", number, self.source(repeat))
        elif self.garp_repeat:
            table.set("garp_repeat", *self.garp_repeat)
        own, other = ("garp_interval", "gna_interval") if family == 4 else ("gna_interval", "garp_interval")
        if other in last:
            self.skip(last[other], f"does not apply to IPv{family} addresses")
        interval = last.get(own)
        if interval is not None:
            seconds = _float(interval.args[0]) if len(interval.args) == 1 else None
            if seconds is None or not 0 <= seconds <= 10:
                self.skip(interval, "vipd's garp_interval is 0..10 seconds")
            else:
                table.set("garp_interval", seconds, self.source(interval))
        else:
            fallback = self.garp_interval if family == 4 else self.gna_interval
            if fallback:
                table.set("garp_interval", *fallback)

    def authentication(self, table: Table, block: Directive | None, version: int) -> None:
        if block is None:
            return
        words = [w for item in block.children() for w in (item.name, *item.args)]
        pairs = dict(zip(words[::2], words[1::2]))
        if len(words) % 2 or set(pairs) - {"auth_type", "auth_pass"}:
            self.skip(block, "expects auth_type and auth_pass")
            return
        kind, password = pairs.get("auth_type", "PASS").upper(), pairs.get("auth_pass")
        if version == 3:
            self.skip(block, "VRRPv3 has no authentication (keepalived ignores it too)")
        elif kind != "PASS":
            self.skip(block, f"auth_type {kind}: vipd supports PASS only")
        elif not password:
            self.skip(block, "no auth_pass")
        else:
            raw = password.encode()
            if len(raw) > 8:
                self.notes.note(block.origin, "authentication auth_pass",
                                "longer than 8 bytes: keepalived sends the first 8, so does vipd")
                raw = raw[:8]
            # The note never shows the secret; the comment names only where it came from.
            table.set("auth_pass", raw.decode(errors="ignore"),
                      f"{os.path.basename(block.origin.file)}:{block.origin.line} authentication PASS")

    def tracks(self, instance: Table, last: dict[str, Directive]) -> list[Table]:
        tracks: list[Table] = []
        for item in last["track_script"].children() if "track_script" in last else []:
            script = self.scripts.get(item.name)
            if script is None:
                self.skip(item, "no vrrp_script with this name")
                continue
            script.used = True
            weight, reverse = script.weight, script.reverse
            if item.args:
                number = _int(item.args[1]) if len(item.args) >= 2 and item.args[0] == "weight" else None
                if number is None or not -254 <= number <= 254 or len(item.args) > 3:
                    self.skip(item, "expects `NAME [weight -254..254 [reverse]]`")
                    continue
                weight, reverse = number, item.args[2:] == ["reverse"]
            if reverse:
                self.skip(item, "vipd has no reversed tracks")
                continue
            track = Table(comments=[f"vrrp_script {item.name} "
                                    f"({os.path.basename(script.directive.origin.file)}:{script.directive.origin.line})"])
            track.set("script", script.command)
            for key in ("interval", "timeout", "rise", "fall"):
                if getattr(script, key) is not None:
                    track.set(key, getattr(script, key))
            track.set("weight", weight, self.source(item) if item.args else None)
            tracks.append(track)
            self.script_tracks.append(ScriptTrack(track, script, instance))
        for item in last["track_interface"].children() if "track_interface" in last else []:
            weight = 0
            if item.args:
                number = _int(item.args[1]) if len(item.args) >= 2 and item.args[0] == "weight" else None
                if number is None or not -254 <= number <= 254 or len(item.args) > 3:
                    self.skip(item, "expects `IFNAME [weight -254..254]`")
                    continue
                if item.args[2:] == ["reverse"]:
                    self.skip(item, "vipd has no reversed tracks")
                    continue
                weight = number
            track = Table()
            track.set("interface", item.name, self.source(item))
            track.set("weight", weight)
            tracks.append(track)
        return tracks


INSTANCE_KEYS = {
    "interface", "virtual_router_id", "priority", "advert_int", "virtual_ipaddress", "version",
    "vrrp_version", "nopreempt", "preempt", "preempt_delay", "unicast_src_ip", "unicast_peer",
    "garp_master_repeat", "garp_interval", "gna_interval", "authentication", "track_script",
    "track_interface", "notify_master", "notify_backup", "notify_fault", "notify_stop", "notify",
}


def _address_family(text: str) -> int | None:
    try:
        return ipaddress.ip_address(text).version
    except ValueError:
        return None


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _family(table: Table) -> int:
    return 6 if ":" in table.get("virtual_ips", [""])[0] else 4


def translate(path: str, notes: Notes) -> Translation:
    return _Translator(notes).run(parse(path, notes), path)
