"""What a worker gives up when it starts: every capability but binding low ports, root (when a
`worker_user` is configured), new privileges through exec, and its claim on memory under pressure.

A worker only accepts, connects and copies bytes. It binds its listeners after this runs, so it
keeps CAP_NET_BIND_SERVICE (ports below 1024; IP_FREEBIND needs nothing); NET_ADMIN and NET_RAW,
which the VRRP side of the daemon needs, never reach the code that parses client traffic.
"""
from __future__ import annotations

import ctypes
import errno
import os
import pwd
from dataclasses import dataclass

CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_SETPCAP = 8
LAST_CAP_FALLBACK = 40
WORKER_CAPS = frozenset({CAP_NET_BIND_SERVICE})
# A worker is what an out-of-memory kill should pick: its slot is respawned at once and the other
# workers keep serving, while the daemon (VRRP) runs at a negative OOMScoreAdjust from its unit.
WORKER_OOM_SCORE_ADJ = 500

_PR_SET_KEEPCAPS = 8
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_CAP_VERSION_3 = 0x20080522


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


@dataclass(frozen=True)
class CapSets:
    effective: int
    permitted: int
    inheritable: int


def worker_sets(current: CapSets) -> CapSets:
    """The worker's sets: what it holds of WORKER_CAPS, nothing else; never more than it had."""
    keep = sum(1 << cap for cap in WORKER_CAPS)
    permitted = current.permitted & keep
    return CapSets(effective=permitted, permitted=permitted, inheritable=0)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def get_caps(libc: ctypes.CDLL | None = None) -> CapSets:
    libc = libc or _libc()
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    _check(libc.capget(ctypes.byref(header), data), "capget")
    join = lambda field: getattr(data[0], field) | getattr(data[1], field) << 32
    return CapSets(join("effective"), join("permitted"), join("inheritable"))


def set_caps(sets: CapSets, libc: ctypes.CDLL | None = None) -> None:
    libc = libc or _libc()
    header, data = _Header(_CAP_VERSION_3, 0), (_Data * 2)()
    for i in range(2):
        data[i].effective = sets.effective >> 32 * i & 0xFFFFFFFF
        data[i].permitted = sets.permitted >> 32 * i & 0xFFFFFFFF
        data[i].inheritable = sets.inheritable >> 32 * i & 0xFFFFFFFF
    _check(libc.capset(ctypes.byref(header), data), "capset")


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return LAST_CAP_FALLBACK


def raise_oom_score() -> None:
    """Raising one's own score needs no privilege; done before a uid change makes /proc/self root's."""
    with open("/proc/self/oom_score_adj", "w") as f:
        f.write(str(WORKER_OOM_SCORE_ADJ))


def drop(user: str | None) -> list[str]:
    """Shed everything the worker does not need; what could not be done, as messages to log.

    The bounding set shrinks only where CAP_SETPCAP allows (root outside systemd); under the
    shipped units it lacks CAP_SETPCAP, and no_new_privs makes the bounding set moot there."""
    libc = _libc()
    notes = []
    if get_caps(libc).effective & (1 << CAP_SETPCAP):
        for cap in range(_last_cap() + 1):
            if cap not in WORKER_CAPS and libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                if ctypes.get_errno() != errno.EINVAL:
                    notes.append(f"cannot drop capability {cap} from the bounding set: "
                                 f"{os.strerror(ctypes.get_errno())}")
                    break
    if user is not None:
        entry = pwd.getpwnam(user)
        # Keeps the permitted set across setuid, so NET_BIND_SERVICE survives for the listeners.
        _check(libc.prctl(_PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
        os.setgroups([])
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        _check(libc.prctl(_PR_SET_KEEPCAPS, 0, 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")
    set_caps(worker_sets(get_caps(libc)), libc)
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)    # EINVAL on old kernels: none then
    _check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    return notes
