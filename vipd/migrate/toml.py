"""The translated config as TOML text: tables of keys in the order set, each key and table with
an optional comment saying where it came from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Scalar = str | int | float | bool


@dataclass
class Table:
    values: dict[str, Any] = field(default_factory=dict)
    key_comments: dict[str, str] = field(default_factory=dict)
    comments: list[str] = field(default_factory=list)     # lines above the table header

    def set(self, key: str, value: Any, comment: str | None = None) -> None:
        self.values[key] = value
        if comment:
            self.key_comments[key] = comment
        else:
            self.key_comments.pop(key, None)

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def plain(self) -> dict[str, Any]:
        """The table as tomllib would read it back."""
        out: dict[str, Any] = {}
        for key, value in self.values.items():
            if isinstance(value, Table):
                out[key] = value.plain()
            elif _is_table_array(value):
                out[key] = [t.plain() for t in value]
            else:
                out[key] = value
        return out


def _is_table_array(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Table) for v in value)


def value_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _string(text: str) -> str:
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _clean(text: str) -> str:
    # TOML comments may not hold control characters other than tab.
    return "".join(ch if ch == "\t" or (ord(ch) >= 0x20 and ord(ch) != 0x7F) else "?" for ch in text)


def _comment_lines(lines: list[str], indent: str) -> list[str]:
    return [f"{indent}# {_clean(line)}".rstrip() for text in lines for line in text.split("\n")]


def render(header: list[str], top: dict[str, Table | list[Table]]) -> str:
    """`top` maps each top-level key (node, vrrp, frontend) to a table or an array of tables."""
    lines = _comment_lines(header, "")
    for key, value in top.items():
        tables = value if isinstance(value, list) else [value]
        for table in tables:
            _render_table(lines, key, table, array=isinstance(value, list), depth=0)
    return "\n".join(lines).rstrip() + "\n"


def _render_table(lines: list[str], path: str, table: Table, *, array: bool, depth: int) -> None:
    indent = "  " * depth
    lines.append("")
    lines += _comment_lines(table.comments, indent)
    lines.append(f"{indent}[[{path}]]" if array else f"{indent}[{path}]")
    scalars = {k: v for k, v in table.values.items() if not isinstance(v, Table) and not _is_table_array(v)}
    width = max((len(f"{k} = {value_text(v)}") for k, v in scalars.items() if k in table.key_comments),
                default=0)
    for key, value in scalars.items():
        line = f"{indent}{key} = {value_text(value)}"
        if key in table.key_comments:
            comment = _clean(table.key_comments[key].replace("\n", " "))
            line = f"{line:<{len(indent) + width}}  # {comment}"
        lines.append(line)
    for key, value in table.values.items():
        if isinstance(value, Table):
            _render_table(lines, f"{path}.{key}", value, array=False, depth=depth + 1)
        elif _is_table_array(value):
            for sub in value:
                _render_table(lines, f"{path}.{key}", sub, array=True, depth=depth + 1)
