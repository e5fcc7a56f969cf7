"""Whether a file vipd runs or reads (a track or notify script, its #! interpreter, the config
file) can be changed by anyone but root: keepalived's `enable_script_security` rules.

A file is safe when it and every directory above it, up to /, belong to root (or to the daemon's
own user) and neither others nor a group other than root's may write them. A sticky directory such
as /tmp may be writable by others: there only an entry's owner may rename or remove it, so a
root-owned file in it stays root's (keepalived decides the same way). Symlinks are followed, and
both the path as written and the file it resolves to are checked, directory by directory.
"""
from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from typing import Callable, Collection, Protocol

# The only PATH scripts see (vipd.vrrp.tracks runs them with nothing else inherited); a bare
# program name in a script line is looked up here, at check time as at run time.
SCRIPT_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SHEBANG_BYTES = 256         # what Linux reads of a #! line (BINPRM_BUF_SIZE)
SHEBANG_LINE = re.compile(r"[ \t]*([^ \t]*)[ \t]*(.*)", re.DOTALL)


class StatResult(Protocol):
    st_mode: int
    st_uid: int
    st_gid: int


def trusted_owners() -> frozenset[int]:
    """Root and the user the daemon runs as."""
    return frozenset({0, os.geteuid()})


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return f"gid {gid}"


def entry_problem(path: str, st: StatResult, owners: Collection[int]) -> str | None:
    """Why this entry (the file or a directory above it) lets someone else change what runs, or
    None. Decided on the stat fields alone."""
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid not in owners:
        allowed = " or ".join(_user(uid) for uid in sorted(owners))
        return f"{path} is owned by {_user(st.st_uid)}, not {allowed}"
    if stat.S_ISDIR(st.st_mode) and mode & stat.S_ISVTX:
        return None
    if mode & stat.S_IWOTH:
        return f"{path} is writable by others (mode {mode:04o})"
    if mode & stat.S_IWGRP and st.st_gid != 0:
        return f"{path} is writable by group {_group(st.st_gid)} (mode {mode:04o})"
    return None


def with_parents(path: str) -> list[str]:
    """`path` (absolute, normalised) and every directory above it, up to /."""
    chain = [os.path.normpath(path)]
    while (parent := os.path.dirname(chain[-1])) != chain[-1]:
        chain.append(parent)
    return chain


def path_problem(path: str, owners: Collection[int] | None = None,
                 stat_of: Callable[[str], StatResult] = os.stat,
                 resolve: Callable[[str], str] = os.path.realpath) -> str | None:
    """Why `path` is not safe (the first unsafe entry and why), or None."""
    owners = trusted_owners() if owners is None else owners
    absolute = os.path.abspath(path)
    # The file a symlink leads to, its directories, then the directories the link itself is in.
    entries = dict.fromkeys(with_parents(resolve(absolute)) + with_parents(absolute)[1:])
    for entry in entries:
        try:
            st = stat_of(entry)
        except OSError as exc:
            return f"{entry} cannot be checked: {exc.strerror or exc}"
        if problem := entry_problem(entry, st, owners):
            return problem
    return None


def shebang(head: bytes) -> tuple[str, str | None] | None:
    """The interpreter and its one optional argument that a file's first bytes name, as Linux
    reads a #! line; None when there is no #! line. The interpreter is "" when the line is blank."""
    if not head.startswith(b"#!"):
        return None
    line = head[2:SHEBANG_BYTES].split(b"\n", 1)[0].decode(errors="surrogateescape")
    interpreter, argument = SHEBANG_LINE.fullmatch(line).groups()
    return interpreter, argument.rstrip(" \t") or None


def env_program(argument: str | None) -> str | None:
    """The program `#!/usr/bin/env ARGUMENT` starts (options and NAME=VALUE skipped), or None."""
    for word in (argument or "").split():
        if not word.startswith("-") and "=" not in word:
            return word
    return None


def read_head(path: str) -> bytes | None:
    """A file's first bytes, or None when it cannot be read."""
    try:
        with open(path, "rb") as file:
            return file.read(SHEBANG_BYTES)
    except OSError:
        return None
