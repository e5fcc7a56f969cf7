"""Listening sockets and the TCP options every proxied socket carries.

The client socket is accepted by hand (not by uvloop's server, which closes its listener on
EMFILE) and handed to uvloop as a bare descriptor.
"""
from __future__ import annotations

import logging
import socket

log = logging.getLogger("lbproxy.worker")

KEEPALIVE_IDLE = 60        # seconds before the first TCP keepalive probe
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 6
LISTEN_BACKLOG = 4096


def make_listener(host: str, port: int) -> socket.socket:
    """A non-blocking SO_REUSEPORT listener; accepted sockets inherit NODELAY and keepalive."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            # One listen address, one family, as nginx does: "[::]:443" does not take IPv4.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, getattr(socket, "IPV6_FREEBIND", 78), 1)
        else:
            # Lets a backup node listen on a virtual IP it does not hold yet.
            sock.setsockopt(socket.IPPROTO_IP, getattr(socket, "IP_FREEBIND", 15), 1)
        _set_tcp_options(sock)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _set_tcp_options(sock) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


class AcceptedSocket:
    """The part of a socket object uvloop's connect_accepted_socket uses. Building a real
    socket.socket around the accepted descriptor costs a getsockname() and two enum
    conversions per connection; libuv takes the descriptor over and closes it itself."""

    __slots__ = ("family", "_fd")
    type = socket.SOCK_STREAM

    def __init__(self, family: int, fd: int) -> None:
        self.family = family
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        pass


def set_keepalive(transport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock = socket.socket(sock.family, socket.SOCK_STREAM, 0, sock.fileno())
    except OSError:
        return                                   # already closed under us
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError:
        pass
    finally:
        sock.detach()
