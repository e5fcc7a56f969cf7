"""VRRP advertisement codec: RFC 5798 (VRRPv3, IPv4 and IPv6) and RFC 3768 (VRRPv2), byte-compatible
with keepalived 2.2.7.

Only the VRRP message is built and parsed: the kernel writes the IP header, and the receive path hands
over the IP source, destination and TTL/hop limit it got from the socket.
"""
from __future__ import annotations

import enum
import functools
import ipaddress
import logging
import struct
import time
from dataclasses import dataclass
from typing import Callable, Collection

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REASONS = ("ttl", "version", "type", "length", "checksum", "vrid", "auth", "interval", "family",
           "own", "unknown_peer", "destination", "flood")
# Reasons that are normal on a shared segment, not a neighbour's fault: logged at DEBUG only.
_QUIET_REASONS = ("vrid", "own")

IPPROTO_VRRP = 112
VRRP_TTL = 255
ADVERTISEMENT = 1
HEADER_LEN = 8
AUTH_DATA_LEN = 8
AUTH_NONE, AUTH_SIMPLE_PASSWORD, AUTH_IPSEC_AH = 0, 1, 2
MAX_ADVER_INT_MASK = 0x0FFF  # the top 4 bits of the v3 interval word are "rsvd"
MAX_V2_INTERVAL_S = 255
OWNER_PRIORITY = 255   # the IP address owner (RFC 5798 5.2.4)
RESIGN_PRIORITY = 0    # a master stepping down (RFC 5798 5.2.4)
VRRP_GROUPS: dict[int, IPAddress] = {4: ipaddress.IPv4Address("224.0.0.18"), 6: ipaddress.IPv6Address("ff02::12")}

_V3_HEADER = struct.Struct("!BBBBHH")   # version|type, VRID, priority, count, rsvd|max adver int, checksum
_V2_HEADER = struct.Struct("!BBBBBBH")  # version|type, VRID, priority, count, auth type, adver int, checksum
_CHECKSUM_OFFSET = 6


class ChecksumMode(enum.StrEnum):
    """The v3 IPv4 checksum sent: keepalived's (with the IPv4 pseudo-header) or RFC 5798's text."""
    PSEUDO_HEADER = "pseudo_header"
    MESSAGE_ONLY = "message_only"


@dataclass(frozen=True)
class Advert:
    version: int
    vrid: int
    priority: int
    interval_cs: int
    addresses: tuple[IPAddress, ...]
    auth_type: int = AUTH_NONE
    auth_data: bytes = b""

    def __post_init__(self) -> None:
        # Callers may pass strings or a list; equality and hashing need a tuple of address objects.
        # Objects pass as they are: re-parsing 255 of them costs milliseconds on the receive path.
        object.__setattr__(self, "addresses", tuple(
            a if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address)) else ipaddress.ip_address(a)
            for a in self.addresses))

    @property
    def interval(self) -> float:
        return self.interval_cs / 100


@dataclass(frozen=True)
class Invalid:
    reason: str
    detail: str = ""

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"unknown reason {self.reason!r}; expected one of {REASONS}")


def _interval_problem(interval_cs: int, version: int, shown: float) -> str | None:
    if version == 3 and not 1 <= interval_cs <= MAX_ADVER_INT_MASK:
        return f"VRRPv3 needs 0.01 s steps from 0.01 to {MAX_ADVER_INT_MASK / 100:g}, got {shown:g}"
    if version == 2 and (interval_cs % 100 or not 1 <= interval_cs // 100 <= MAX_V2_INTERVAL_S):
        return f"VRRPv2 needs whole seconds 1..{MAX_V2_INTERVAL_S}, got {shown:g}"
    return None


def advert_interval_cs(seconds: float, version: int) -> int:
    """A configured advert interval in the wire's centiseconds. ValueError (saying the rule) unless
    VRRPv`version` carries it exactly: v3 in 0.01 s steps up to 40.95 s, v2 in whole seconds to 255."""
    if not 0 < seconds <= 1000:      # far beyond both versions' limits; keeps the arithmetic finite
        raise ValueError(_interval_problem(-1, version, seconds))
    centis = round(seconds * 100)
    off_grid = abs(centis - seconds * 100) > 1e-6
    problem = _interval_problem(-1 if off_grid else centis, version, seconds)
    if problem is not None:
        raise ValueError(problem)
    return centis


def password_bytes(pw: str) -> bytes:
    """keepalived's auth_pass as it goes on the wire: at most 8 bytes, zero padded."""
    return pw.encode()[:AUTH_DATA_LEN].ljust(AUTH_DATA_LEN, b"\0")


def _ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _checksum(data: bytes) -> int:
    return ~_ones_complement_sum(data) & 0xFFFF


def _pseudo_header(src: IPAddress, dst: IPAddress, length: int) -> bytes:
    if src.version == 4:
        return src.packed + dst.packed + struct.pack("!BBH", 0, IPPROTO_VRRP, length)
    return src.packed + dst.packed + struct.pack("!I3xB", length, IPPROTO_VRRP)


def _with_checksum(message: bytes, checksum: int) -> bytes:
    return message[:_CHECKSUM_OFFSET] + struct.pack("!H", checksum) + message[_CHECKSUM_OFFSET + 2:]


def encode(advert: Advert, *, src: str, dst: str, checksum_mode: ChecksumMode = ChecksumMode.PSEUDO_HEADER) -> bytes:
    """The VRRP message for `advert` sent from src to dst. Raises ValueError for an advert that
    cannot go on the wire.

    v3 over IPv4 has two checksum forms in the field: "pseudo_header" (what keepalived sends, covering
    the IPv4 pseudo-header as for IPv6) and "message_only". v2 always sums the message alone, v3 over
    IPv6 always includes the IPv6 pseudo-header; checksum_mode does not change those.
    """
    checksum_mode = ChecksumMode(checksum_mode)
    src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    families = {a.version for a in advert.addresses} or {src_ip.version}
    if len(families) > 1:
        raise ValueError("an advert carries addresses of one family only")
    family = families.pop()
    if src_ip.version != family or dst_ip.version != family:
        raise ValueError(f"IPv{family} addresses need IPv{family} src and dst, got {src} -> {dst}")
    if not 1 <= advert.vrid <= 255:
        raise ValueError(f"vrid {advert.vrid} outside 1..255")
    if not 0 <= advert.priority <= 255:
        raise ValueError(f"priority {advert.priority} outside 0..255")
    if len(advert.addresses) > 255:
        raise ValueError(f"{len(advert.addresses)} addresses; the count field holds at most 255")
    addresses = b"".join(a.packed for a in advert.addresses)

    if advert.version == 3:
        if advert.auth_type != AUTH_NONE or advert.auth_data:
            raise ValueError("VRRPv3 has no authentication (RFC 5798 removed it)")
        if problem := _interval_problem(advert.interval_cs, 3, advert.interval):
            raise ValueError(problem)
        message = _V3_HEADER.pack(0x30 | ADVERTISEMENT, advert.vrid, advert.priority, len(advert.addresses),
                                  advert.interval_cs, 0) + addresses
        if family == 6 or checksum_mode is ChecksumMode.PSEUDO_HEADER:
            return _with_checksum(message, _checksum(_pseudo_header(src_ip, dst_ip, len(message)) + message))
        return _with_checksum(message, _checksum(message))

    if advert.version == 2:
        if family != 4:
            raise ValueError("VRRPv2 (RFC 3768) carries IPv4 addresses only")
        if problem := _interval_problem(advert.interval_cs, 2, advert.interval):
            raise ValueError(problem)
        if advert.auth_type == AUTH_IPSEC_AH:
            raise ValueError("IPsec AH authentication (auth type 2) is not supported")
        if advert.auth_type not in (AUTH_NONE, AUTH_SIMPLE_PASSWORD):
            raise ValueError(f"unknown v2 auth type {advert.auth_type}")
        if len(advert.auth_data) > AUTH_DATA_LEN:
            raise ValueError(f"auth_data is {len(advert.auth_data)} bytes; the field holds {AUTH_DATA_LEN}")
        if advert.auth_type == AUTH_NONE and advert.auth_data.strip(b"\0"):
            raise ValueError("auth_data given without authentication (auth_type 0)")
        message = (_V2_HEADER.pack(0x20 | ADVERTISEMENT, advert.vrid, advert.priority, len(advert.addresses),
                                   advert.auth_type, advert.interval_cs // 100, 0)
                   + addresses + advert.auth_data.ljust(AUTH_DATA_LEN, b"\0"))
        return _with_checksum(message, _checksum(message))

    raise ValueError(f"VRRP version {advert.version}; expected 2 or 3")


@dataclass(frozen=True)
class Screened:
    """A message that passed the header checks: what the costly checks still need."""
    message: bytes
    src: IPAddress
    dst: IPAddress
    version: int
    count: int


def _screen(data: bytes, src_ip: IPAddress, dst_ip: IPAddress) -> Screened | Invalid:
    """The header checks: constant work whatever the packet holds (no checksum, no addresses)."""
    if not data:
        return Invalid("length", "empty packet")
    version, vrrp_type = data[0] >> 4, data[0] & 0x0F
    if version not in (2, 3):
        return Invalid("version", f"version {version}, expected 2 or 3")
    if vrrp_type != ADVERTISEMENT:
        return Invalid("type", f"type {vrrp_type}, only 1 (advertisement) exists")
    if src_ip.version != dst_ip.version:
        return Invalid("family", f"src {src_ip} and dst {dst_ip} differ in family")
    if version == 2 and src_ip.version == 6:
        return Invalid("family", "VRRPv2 (RFC 3768) carries IPv4 only, got it over IPv6")
    if len(data) < HEADER_LEN:
        return Invalid("length", f"{len(data)} bytes, shorter than the {HEADER_LEN}-byte header")
    count = data[3]
    expected_len = HEADER_LEN + count * _address_len(src_ip) + (AUTH_DATA_LEN if version == 2 else 0)
    if len(data) != expected_len:
        return Invalid("length", f"{len(data)} bytes, but VRRPv{version} with {count} "
                                 f"IPv{src_ip.version} address(es) is {expected_len}")
    # An interval of 0 would make a backup's master-down timer expire at once (v3) or never match (v2).
    if (struct.unpack_from("!H", data, 4)[0] & MAX_ADVER_INT_MASK if version == 3 else data[5]) == 0:
        return Invalid("interval", "advert interval 0")
    return Screened(bytes(data), src_ip, dst_ip, version, count)


def _address_len(ip: IPAddress) -> int:
    return 4 if ip.version == 4 else 16


def _checksum_problem(s: Screened) -> Invalid | None:
    forms = {"message_only": s.message}
    if s.version == 3:
        forms = {"pseudo_header": _pseudo_header(s.src, s.dst, len(s.message)) + s.message}
        if s.src.version == 4:
            forms["message_only"] = s.message
    # Summing over the checksum field itself gives 0xFFFF when it is right, whichever zero it used.
    if any(_ones_complement_sum(covered) == 0xFFFF for covered in forms.values()):
        return None
    # Said briefly: a flood of bad checksums builds this detail for every packet.
    received = struct.unpack_from("!H", s.message, _CHECKSUM_OFFSET)[0]
    return Invalid("checksum", f"checksum 0x{received:04x} matches no {' or '.join(forms)} sum")


def _decode_addresses(message: bytes, count: int, address_len: int) -> tuple[IPAddress, ...]:
    kind = ipaddress.IPv4Address if address_len == 4 else ipaddress.IPv6Address
    return tuple(kind(message[offset:offset + address_len])
                 for offset in range(HEADER_LEN, HEADER_LEN + count * address_len, address_len))


def _finish(s: Screened) -> Advert | Invalid:
    """The costly part: checksum, then the address list."""
    if problem := _checksum_problem(s):
        return problem
    message = s.message
    addresses = _decode_addresses(message, s.count, _address_len(s.src))
    if s.version == 3:
        _, vrid, priority, _, interval_word, _ = _V3_HEADER.unpack_from(message)
        return Advert(3, vrid, priority, interval_word & MAX_ADVER_INT_MASK, addresses)
    _, vrid, priority, _, auth_type, adver_int, _ = _V2_HEADER.unpack_from(message)
    # RFC 3768: with no authentication the field is ignored on reception.
    auth_data = message[-AUTH_DATA_LEN:] if auth_type != AUTH_NONE else b""
    return Advert(2, vrid, priority, adver_int * 100, addresses, auth_type, auth_data)


def decode(data: bytes, *, src: str, dst: str, ttl: int | None) -> Advert | Invalid:
    """Parse a received VRRP message and run the receive checks that need no instance, in the order of
    RFC 5798 7.1 / RFC 3768 7.1. Never raises on any `data`.

    Only a multicast destination implies the TTL here (255); an instance's mode decides it for unicast
    (ReceiveChecks). ttl None means the socket did not report it, so that check is skipped.
    """
    src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if ttl is not None and dst_ip.is_multicast and ttl != VRRP_TTL:
        return Invalid("ttl", f"TTL/hop limit {ttl} to {dst_ip}, must be {VRRP_TTL}: sent from off-link?")
    screened = _screen(data, src_ip, dst_ip)
    return screened if isinstance(screened, Invalid) else _finish(screened)


@functools.lru_cache(maxsize=1024)
def _address(text: str | IPAddress) -> IPAddress:
    # An IPv6 zone ("%eth0") names the link, not the sender: one address, with or without it.
    return ipaddress.ip_address(text.split("%", 1)[0] if isinstance(text, str) else text)


def _sender_problem(sender: IPAddress, own: str | IPAddress | None, peers: Collection[IPAddress]) -> Invalid | None:
    if own is not None and sender == _address(own):
        return Invalid("own", f"{sender} is our own address")
    if peers and sender not in peers:
        return Invalid("unknown_peer", f"{sender} is not in unicast_peers")
    return None


def _instance_problem(advert_vrid: int, advert_version: int, vrid: int, version: int) -> Invalid | None:
    if advert_vrid != vrid:
        return Invalid("vrid", f"VRID {advert_vrid}, ours is {vrid}")
    if advert_version != version:
        return Invalid("version", f"VRRPv{advert_version} advert for a VRRPv{version} instance")
    return None


def _v2_problem(advert: Advert, auth_type: int, auth_data: bytes, interval_cs: int | None) -> Invalid | None:
    if AUTH_IPSEC_AH in (advert.auth_type, auth_type):
        return Invalid("auth", "IPsec AH authentication (auth type 2) is not supported")
    if advert.auth_type != auth_type:
        return Invalid("auth", f"auth type {advert.auth_type}, configured {auth_type}")
    if auth_type == AUTH_SIMPLE_PASSWORD and advert.auth_data != auth_data.ljust(AUTH_DATA_LEN, b"\0"):
        return Invalid("auth", "password mismatch")
    if interval_cs is not None and advert.interval_cs != interval_cs:
        return Invalid("interval", f"advert interval {advert.interval:g} s, configured {interval_cs / 100:g} s")
    return None


def accept(advert: Advert, *, src: str | IPAddress, own: str | IPAddress | None = None,
           peers: Collection[IPAddress] = (), vrid: int, version: int, auth_type: int = AUTH_NONE,
           auth_data: bytes = b"", interval_cs: int | None = None) -> Invalid | None:
    """The receive checks against one configured instance, cheapest first, then in RFC order; None
    when the advert from `src` is for it.

    own is our primary address (a copy of our own advert is no news); peers, when not empty, are the
    only senders heard (unicast_peers, parsed once by the caller). auth_data is the configured
    password as password_bytes() gives it. v3 intervals are never checked: a backup learns the
    master's (RFC 5798 6.4.2).
    """
    problem = (_sender_problem(_address(src), own, peers)
               or _instance_problem(advert.vrid, advert.version, vrid, version))
    if problem is not None or version != 2:
        return problem
    return _v2_problem(advert, auth_type, auth_data, interval_cs)


@dataclass(frozen=True)
class ReceiveChecks:
    """Every receive check of one instance (RFC 5798 7.1 / RFC 3768 7.1), its config parsed once.

    `screen` runs the checks of constant cost: sender, TTL/hop limit, destination, header, VRID; only
    what passes them reaches `finish` (checksum, address list, v2 authentication), so a flood of large
    or foreign adverts costs a few header reads each. peers empty means multicast mode: TTL 255 and
    the VRRP group as destination. In unicast mode the sender must be a peer, the destination unicast,
    and the TTL at least unicast_ttl (255 unless relaxed for routed peers).
    """
    vrid: int
    version: int
    peers: frozenset[IPAddress] = frozenset()
    auth_type: int = AUTH_NONE
    auth_data: bytes = b""
    interval_cs: int | None = None
    unicast_ttl: int = VRRP_TTL

    def screen(self, data: bytes, *, src: str | IPAddress, dst: str | IPAddress, ttl: int | None,
               own: str | IPAddress | None = None) -> Screened | Invalid:
        try:
            src_ip, dst_ip = _address(src), _address(dst)
        except ValueError:
            return Invalid("family", f"unreadable addresses {src!r} -> {dst!r}")
        if problem := _sender_problem(src_ip, own, self.peers):
            return problem
        if self.peers:
            if ttl is not None and ttl < self.unicast_ttl:
                return Invalid("ttl", f"TTL/hop limit {ttl} from peer {src_ip}, must be at least "
                                      f"{self.unicast_ttl}: sent from further away?")
            if dst_ip.is_multicast:
                return Invalid("destination", f"multicast {dst_ip} in unicast mode")
        else:
            if ttl is not None and ttl != VRRP_TTL:
                return Invalid("ttl", f"TTL/hop limit {ttl}, must be {VRRP_TTL}: sent from off-link?")
            if dst_ip != VRRP_GROUPS[dst_ip.version]:
                return Invalid("destination", f"{dst_ip} is not the VRRP group in multicast mode")
        screened = _screen(data, src_ip, dst_ip)
        if isinstance(screened, Invalid):
            return screened
        return _instance_problem(screened.message[1], screened.version, self.vrid, self.version) or screened

    def finish(self, screened: Screened) -> Advert | Invalid:
        advert = _finish(screened)
        if isinstance(advert, Invalid) or self.version != 2:
            return advert
        return _v2_problem(advert, self.auth_type, self.auth_data, self.interval_cs) or advert

    def check(self, data: bytes, *, src: str | IPAddress, dst: str | IPAddress, ttl: int | None,
              own: str | IPAddress | None = None) -> Advert | Invalid:
        screened = self.screen(data, src=src, dst=dst, ttl=ttl, own=own)
        return screened if isinstance(screened, Invalid) else self.finish(screened)


class SourceLimiter:
    """A token bucket per sender, so one flooding source is dropped before the costly checks while
    the others are still heard. The fastest honest sender (0.01 s adverts) stays far below `rate`.
    Clock-free: the caller passes each packet's arrival time. At most `max_sources` are tracked; the
    oldest is forgotten first, which only ever gives a sender a full bucket again.
    """

    def __init__(self, rate: float = 250.0, burst: float = 50.0, max_sources: int = 512) -> None:
        self.rate, self.burst, self.max_sources = rate, burst, max_sources
        self._buckets: dict[object, tuple[float, float]] = {}

    def admit(self, source: object, now: float) -> bool:
        tokens, then = self._buckets.pop(source, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        admitted = tokens >= 1.0
        if len(self._buckets) >= self.max_sources:
            del self._buckets[next(iter(self._buckets))]
        self._buckets[source] = (tokens - 1.0 if admitted else tokens, now)
        return admitted


class RxErrors:
    """Counts dropped adverts per reason and logs them at most once per `min_interval` per reason, so a
    misconfigured or hostile neighbour cannot flood the log. Adverts for other VRIDs and copies of our own
    are normal on a shared segment and are logged at DEBUG only.
    """

    def __init__(self, label: str = "", *, logger: logging.Logger | None = None,
                 clock: Callable[[], float] = time.monotonic, min_interval: float = 1.0) -> None:
        self.label = label
        self._logger = logger or logging.getLogger("vipd.vrrp")
        self._clock = clock
        self._min_interval = min_interval
        self._counts = dict.fromkeys(REASONS, 0)
        self._last_logged: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    @property
    def counts(self) -> dict[str, int]:
        return dict(self._counts)

    def record(self, invalid: Invalid, src: object) -> None:
        try:
            reason = invalid.reason
            self._counts[reason] = self._counts.get(reason, 0) + 1
            now = self._clock()
            last = self._last_logged.get(reason)
            if last is not None and now - last < self._min_interval:
                self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
                return
            self._last_logged[reason] = now
            suppressed = self._suppressed.pop(reason, 0)
            self._logger.log(
                logging.DEBUG if reason in _QUIET_REASONS else logging.WARNING,
                "%sdropped VRRP packet from %s: %s%s%s",
                f"{self.label}: " if self.label else "", src, reason,
                f" ({invalid.detail})" if invalid.detail else "",
                f"; {suppressed} more {reason} drops suppressed" if suppressed else "",
            )
        except Exception:  # bookkeeping must never take down the receive loop that calls it
            pass
