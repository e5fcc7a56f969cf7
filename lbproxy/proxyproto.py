"""The PROXY protocol (HAProxy's proxy-protocol.txt), versions 1 and 2, for TCP over IPv4 and IPv6:
encoding the header sent to backends, and decoding the one an upstream balancer sends us.

`decode` is a validator over the bytes received so far: a ProxyHeader (with how many bytes it
took), NEED_MORE while they are a proper prefix of a header, or an Invalid with the reason. It
never raises and never asks for more than MAX_HEADER bytes. LOCAL (v2) and UNKNOWN (v1) say
"the connection's own endpoints apply", which is also what health checks send.
"""
from __future__ import annotations

import enum
import ipaddress
import socket
import struct
from dataclasses import dataclass


class ProxyProtocol(enum.StrEnum):
    OFF = "off"
    V1 = "v1"
    V2 = "v2"


V1_PREFIX = b"PROXY "
V1_MAX = 107                              # the spec's bound, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16
# The spec lets the address block and TLVs reach 64 KiB; nothing we accept from needs more than
# addresses plus a few TLVs, and the header is read before the client is known to be sane.
MAX_HEADER = 4096
_V2_LOCAL, _V2_PROXY = 0x20, 0x21
_V2_TCP4, _V2_TCP6, _V2_UNSPEC = 0x11, 0x21, 0x00
_ADDRESS_LENGTHS = {_V2_TCP4: 12, _V2_TCP6: 36}

Endpoint = tuple[str, int]


@dataclass(frozen=True)
class ProxyHeader:
    length: int                            # bytes the header took on the wire
    source: Endpoint | None = None         # None: LOCAL / UNKNOWN, use the connection's own
    destination: Endpoint | None = None


@dataclass(frozen=True)
class Invalid:
    reason: str


class _NeedMore:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_MORE"


NEED_MORE = _NeedMore()
Decoded = ProxyHeader | Invalid | _NeedMore


def decode(data: bytes) -> Decoded:
    if data[:1] == V2_SIGNATURE[:1]:
        return _decode_v2(data)
    if data[:1] == V1_PREFIX[:1] or not data:
        return _decode_v1(data)
    return Invalid("not a PROXY protocol header")


def _decode_v1(data: bytes) -> Decoded:
    head = data[:V1_MAX]
    if not head.startswith(V1_PREFIX[:len(head)]) or (len(head) >= len(V1_PREFIX) and not head.startswith(V1_PREFIX)):
        return Invalid("not a PROXY protocol header")
    end = head.find(b"\r\n")
    if end < 0:
        if b"\n" in head or b"\r" in head[:-1]:
            return Invalid("v1: line not ended by CRLF")
        return NEED_MORE if len(head) < V1_MAX else Invalid(f"v1: longer than {V1_MAX} bytes")
    try:
        line = head[:end].decode("ascii")
    except UnicodeDecodeError:
        return Invalid("v1: not ASCII")
    fields = line.split(" ")
    length = end + 2
    if len(fields) >= 2 and fields[1] == "UNKNOWN":
        return ProxyHeader(length)
    if len(fields) != 6:
        return Invalid("v1: expected PROXY TCP4|TCP6 SRC DST SPORT DPORT")
    _, family, src, dst, sport, dport = fields
    version = {"TCP4": 4, "TCP6": 6}.get(family)
    if version is None:
        return Invalid(f"v1: unsupported protocol {family[:8]!r}")
    source, destination = _v1_endpoint(src, sport, version), _v1_endpoint(dst, dport, version)
    if isinstance(source, Invalid):
        return source
    if isinstance(destination, Invalid):
        return destination
    return ProxyHeader(length, source, destination)


def _v1_endpoint(address: str, port: str, version: int) -> Endpoint | Invalid:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return Invalid(f"v1: bad address {address[:40]!r}")
    if ip.version != version or "%" in address:
        return Invalid(f"v1: {address[:40]} is not a TCP{version} address")
    if not (port.isdigit() and port.isascii() and len(port) <= 5 and (port == "0" or port[0] != "0")
            and int(port) <= 65535):
        return Invalid(f"v1: bad port {port[:8]!r}")
    return str(ip), int(port)


def _decode_v2(data: bytes) -> Decoded:
    signature = data[:len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        return Invalid("not a PROXY protocol header")
    if len(data) > 12 and data[12] >> 4 != 2:
        return Invalid(f"v2: unsupported version {data[12] >> 4}")
    if len(data) > 12 and data[12] not in (_V2_LOCAL, _V2_PROXY):
        return Invalid(f"v2: unknown command {data[12] & 0xF}")
    if len(data) < V2_FIXED:
        return NEED_MORE
    command, family = data[12], data[13]
    length = V2_FIXED + struct.unpack_from("!H", data, 14)[0]
    if length > MAX_HEADER:
        return Invalid(f"v2: header of {length} bytes is over the {MAX_HEADER}-byte limit")
    if len(data) < length:
        return NEED_MORE
    if command == _V2_LOCAL:
        return ProxyHeader(length)
    if family == _V2_UNSPEC:
        return ProxyHeader(length)
    needed = _ADDRESS_LENGTHS.get(family)
    if needed is None:
        return Invalid(f"v2: unsupported address family/protocol 0x{family:02x}")
    if length - V2_FIXED < needed:
        return Invalid(f"v2: address block of {length - V2_FIXED} bytes, {needed} needed")
    layout = "!4s4sHH" if family == _V2_TCP4 else "!16s16sHH"
    src, dst, sport, dport = struct.unpack_from(layout, data, V2_FIXED)
    # ipaddress's text, as v1 gives it: the same client reads the same either way.
    return ProxyHeader(length, (str(ipaddress.ip_address(src)), sport), (str(ipaddress.ip_address(dst)), dport))


def encode(version: ProxyProtocol, source: Endpoint | None, destination: Endpoint | None) -> bytes:
    """The header for a connection from `source` to `destination`; LOCAL / UNKNOWN when either
    is None or their families differ."""
    six = source is not None and ":" in source[0]
    if source is None or destination is None or six != (":" in destination[0]):
        return b"PROXY UNKNOWN\r\n" if version == ProxyProtocol.V1 else V2_SIGNATURE + b"\x20\x00\x00\x00"
    if version == ProxyProtocol.V1:
        return (f"PROXY {'TCP6' if six else 'TCP4'} {source[0]} {destination[0]} "
                f"{source[1]} {destination[1]}\r\n").encode()
    if six:
        return (V2_SIGNATURE + b"\x21\x21\x00\x24" + socket.inet_pton(socket.AF_INET6, source[0])
                + socket.inet_pton(socket.AF_INET6, destination[0]) + struct.pack("!HH", source[1], destination[1]))
    return (V2_SIGNATURE + b"\x21\x11\x00\x0c" + socket.inet_pton(socket.AF_INET, source[0])
            + socket.inet_pton(socket.AF_INET, destination[0]) + struct.pack("!HH", source[1], destination[1]))


def encode_local(version: ProxyProtocol) -> bytes:
    """What a health check sends: v2 LOCAL, v1 UNKNOWN (the spec's "the proxy's own connection")."""
    return encode(version, None, None)
