"""`vipd` whose netlink monitor a test can break from outside (test only, never the product):

    python netlink_breaker.py FLAGDIR run -c CONFIG

While FLAGDIR/refuse exists, NetlinkMonitor._open fails with EMFILE. When FLAGDIR/break appears,
the monitor's live socket is broken (its descriptor now points at /dev/null, so the monitor's next
recv fails with ENOTSOCK) and the file is removed to say so.
"""
from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from vipd.cli import main
from vipd.vrrp import links

FLAGS = Path(sys.argv.pop(1))
REFUSE, BREAK = FLAGS / "refuse", FLAGS / "break"
_opened: list[socket.socket] = []       # the monitor's sockets, newest last
_real_open = links.NetlinkMonitor._open

# RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, with an empty ifinfomsg.
_DUMP_LINKS = struct.pack("IHHII", 32, 18, 0x301, 1, 0) + struct.pack("BxHiII", 0, 0, 0, 0, 0)


def _open(self: links.NetlinkMonitor) -> socket.socket:
    if REFUSE.exists():
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
    sock = _real_open(self)
    _opened.append(sock)
    return sock


def _break(sock: socket.socket) -> None:
    fd = sock.fileno()
    kept = socket.socket(fileno=os.dup(fd))
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, fd)
    os.close(devnull)
    # The monitor's select still waits on the socket itself: an answer queued there wakes it, and
    # its recv then reads the descriptor, which is no socket any more.
    with kept:
        kept.send(_DUMP_LINKS)


def _watch() -> None:
    while True:
        if BREAK.exists():
            live = [s for s in _opened if s.fileno() != -1]
            if live:
                _break(live[-1])
            else:
                print("netlink_breaker: no live netlink socket to break", file=sys.stderr, flush=True)
            BREAK.unlink()
        time.sleep(0.02)


links.NetlinkMonitor._open = _open
threading.Thread(target=_watch, name="netlink-breaker", daemon=True).start()
main()
