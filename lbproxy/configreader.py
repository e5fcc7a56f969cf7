"""Reading a TOML config into typed values while collecting every problem (not just the first)
as `key.path: what is wrong`, so a check can print them all, like `nginx -t`."""
from __future__ import annotations

import enum
import ipaddress
import math
import os
import tomllib
from pathlib import Path
from typing import Any, Callable


class ConfigError(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


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
        for key in self.table:
            if key not in known:
                self.error(key, "unknown key")

    def path(self, key: str) -> str:
        if not key:
            return self.where
        return f"{self.where}.{key}" if self.where else key

    def error(self, key: str, message: str) -> None:
        self.problems.append(f"{self.path(key)}: {message}")

    def get(self, key: str, kind: type | tuple, default: Any = None, required: bool = False,
            check: Callable[[Any], str | None] | None = None) -> Any:
        if key not in self.table:
            if required:
                self.error(key, "is required")
            return default
        value = self.table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if isinstance(value, bool) and bool not in kinds:
            ok = False
        else:
            ok = isinstance(value, kinds)
        if not ok:
            names = " or ".join(k.__name__ for k in kinds)
            self.error(key, f"must be {names}, got {show(value)}")
            return default
        if isinstance(value, float) and not math.isfinite(value):
            self.error(key, f"must be a finite number, got {value}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(key, problem if ", got " in problem else f"{problem}, got {show(value)}")
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



def one_of(vocabulary: type[enum.StrEnum]) -> Callable[[Any], str | None]:
    names = ", ".join(v.value for v in vocabulary)
    return lambda v: None if v in vocabulary._value2member_map_ else f"must be one of {names}"



def read_toml(path: str | os.PathLike) -> dict[str, Any]:
    """The file's tables; ConfigError with one line when it cannot be read or parsed."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{name}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{name}: TOML syntax: {exc}"]) from None
