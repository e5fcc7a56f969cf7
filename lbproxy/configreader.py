"""Reading a TOML config into typed values while collecting every problem (not just the first)
as `key.path: what is wrong`, so a check can print them all, like `nginx -t`. An unknown key is
explained: the name another tool (keepalived, nginx, HAProxy) gives it, or a close spelling."""
from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import os
import re
import tomllib
from typing import Any, Callable, Mapping

# {table shape ("vrrp.track": `[[vrrp.track]]`, "" the top level): {unknown key: why it is unknown}}
Hints = Mapping[str, Mapping[str, str]]


class ConfigError(Exception):
    def __init__(self, problems: list[str], warnings: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems
        self.warnings = list(warnings)


class Findings(list):
    """What reading a config found. The list itself holds the problems (each one refuses the
    config), so parsers append to it like to any list; `warnings` holds what may be fine at run
    time (shown, never refusing); `hints` explains unknown keys."""

    def __init__(self, hints: Hints | None = None) -> None:
        super().__init__()
        self.warnings: list[str] = []
        self.hints: Hints = hints or {}


def renamed(tool: str, ours: str) -> str:
    return f"{tool}'s name; vipd calls it {ours}"


def foreign(tool: str, advice: str) -> str:
    return f"{tool}'s name; {advice}"


def belongs_in(table: str) -> str:
    return f"it belongs in {table}"


def table_shape(where: str) -> str:
    """'vrrp[0].track[1]' -> 'vrrp.track': the table as its TOML header names it."""
    return re.sub(r"\[\d+\]", "", where)


def unknown_key(key: str, known: tuple[str, ...], hints: Mapping[str, str]) -> str:
    spelled = key.replace("-", "_").lower()
    if spelled in hints:
        return f"unknown key ({hints[spelled]})"
    close = difflib.get_close_matches(spelled, known, n=1)
    return f'unknown key; did you mean "{close[0]}"?' if close else "unknown key"


def hidden(value: Any) -> str:
    """A secret as a message may show it: never its text."""
    return f"<hidden, {len(value.encode())} bytes>" if isinstance(value, str) else "<hidden>"


def split_host_port(text: str) -> tuple[str, int]:
    """'198.18.0.21:6443' or '[2001:db8::1]:6443' -> (host, port); ValueError with a reason."""
    if not isinstance(text, str) or ":" not in text:
        raise ValueError("must be HOST:PORT")
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError("must be [IPV6]:PORT")
        ipaddress.IPv6Address(host)
    else:
        host, _, port = text.rpartition(":")
        if ":" in host:
            raise ValueError("IPv6 addresses need brackets: [ADDR]:PORT")
        if not host:
            raise ValueError("missing host")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1..65535, got {port!r}")
    return host, int(port)


class Section:
    """Reads one TOML table, recording problems under its key path instead of raising."""

    def __init__(self, problems: list[str], where: str, table: Any, known: tuple[str, ...]) -> None:
        self.problems = problems
        self.where = where
        self.table = table if isinstance(table, dict) else {}
        if not isinstance(table, dict):
            self.error("", f"must be a table, got {type(table).__name__}")
        hints = getattr(problems, "hints", {}).get(table_shape(where), {})
        for key in self.table:
            if key not in known:
                self.error(key, unknown_key(key, known, hints))

    def path(self, key: str) -> str:
        if not key:
            return self.where
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path(key)}: {message}")

    def warn(self, key: str, message: str) -> None:
        self.problems.warnings.append(f"{self.path(key)}: {message}")

    def get(self, key: str, kind: type | tuple, default: Any = None, required: bool = False,
            check: Callable[[Any], str | None] | None = None, secret: bool = False) -> Any:
        """The value, or `default` after recording why it is not usable; a `secret` value never
        appears in a message."""
        shown = hidden if secret else show
        if key not in self.table:
            if required:
                self.error(key, "is required")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            try:
                value = float(value)
            except OverflowError:
                value = math.inf        # refused below as not finite
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.error(key, f"must be {names}, got {shown(value)}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.error(key, f"must be a finite number, got {value}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                if secret or ", got " not in problem:
                    problem = f"{problem.partition(', got ')[0]}, got {shown(value)}"
                self.error(key, problem)
                return default
        return value

    def tables(self, key: str) -> list[tuple[str, Any]]:
        value = self.table.get(key, [])
        if isinstance(value, dict):
            value = [value]
        if not isinstance(value, list):
            self.error(key, "must be an array of tables")
            return []
        return [(f"{self.path(key)}[{i}]", item) for i, item in enumerate(value)]


def show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def between(low: float, high: float, what: str = "") -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        if not low <= value <= high:
            return f"must be {what or f'{low}..{high}'}"
        return None
    return check


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be > 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must be >= 0"


def ip_address(value: str) -> str | None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "must be an IP address"
    return None


def host_port(value: str) -> str | None:
    try:
        split_host_port(value)
    except ValueError as exc:
        return str(exc)
    return None



def one_of(vocabulary: type[enum.StrEnum], aliases: Mapping[str, str] | None = None
           ) -> Callable[[Any], str | None]:
    """A check for a word of `vocabulary`; a refused word is answered with the member it most
    likely means: `aliases` (other tools' words for our members), else a close spelling."""
    values = [v.value for v in vocabulary]
    names = ", ".join(values)

    def check(value: Any) -> str | None:
        if value in values:
            return None
        spelled = value.replace("-", "_").lower()
        meant = (aliases or {}).get(spelled) or next(iter(difflib.get_close_matches(spelled, values, n=1)), None)
        return f"must be one of {names}, got {show(value)}" + (f'; did you mean "{meant}"?' if meant else "")
    return check



MAX_CONFIG_BYTES = 4 * 1024 * 1024


def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The file's tables; ConfigError with one line when it cannot be read or parsed, whatever
    the file holds (a config is also what a reload reads while the daemon serves)."""
    name = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"{name}: larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MiB; not a vipd config"])
    if b"\0" in raw:
        raise ConfigError([f"{name}: holds NUL bytes; not a text file"])
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: TOML syntax: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{name}: nested too deeply"]) from None
