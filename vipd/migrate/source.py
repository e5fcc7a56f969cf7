"""What the three readers share: where a directive came from, the directive tree, the notes on
what was not translated, and reading files (with includes) into text or a one-line InputError."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

MAX_INCLUDE_DEPTH = 8


class InputError(Exception):
    """An input that cannot be read or parsed at all: one line, `FILE[:LINE]: reason`."""


@dataclass(frozen=True)
class Origin:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Directive:
    """`name args...;` or `name args... { block }` in any of the three syntaxes."""
    name: str
    args: list[str]
    origin: Origin
    block: list["Directive"] | None = None

    @property
    def text(self) -> str:
        """The directive as an operator would recognise it in a note."""
        return " ".join([self.name, *self.args])

    def children(self) -> list["Directive"]:
        return self.block or []


@dataclass
class Notes:
    """Lines for stderr, `FILE:LINE: directive: message`, each once, in file and line order."""
    found: list[tuple[Origin, str]] = field(default_factory=list)

    def skip(self, origin: Origin, directive: str, why: str) -> None:
        self.note(origin, directive, f"not translated: {why}")

    def note(self, origin: Origin, directive: str, message: str) -> None:
        # A `defaults` line read for every proxy after it is still one note.
        entry = (origin, f"{origin}: {directive}: {message}")
        if entry not in self.found:
            self.found.append(entry)

    @property
    def lines(self) -> list[str]:
        files = list(dict.fromkeys(origin.file for origin, _ in self.found))
        ordered = sorted(self.found, key=lambda entry: (files.index(entry[0].file), entry[0].line))
        return [line for _, line in ordered]


def read_text(path: str) -> str:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if b"\0" in raw:
        raise InputError(f"{path}: not a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 text (byte {exc.start})") from None


def include_targets(pattern: str, relative_to: str) -> list[str]:
    """The files an include names: a glob, relative to `relative_to`, in sorted order (as
    keepalived, nginx and glob(3) give them)."""
    path = pattern if os.path.isabs(pattern) else os.path.join(relative_to, pattern)
    if glob.has_magic(path):
        return sorted(p for p in glob.glob(path) if os.path.isfile(p))
    return [path]
