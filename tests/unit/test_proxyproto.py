"""The PROXY protocol codec: spec examples, round trips, every prefix, bounds, and fuzzing."""
from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.proxyproto import (
    MAX_HEADER,
    NEED_MORE,
    V1_MAX,
    V2_SIGNATURE,
    Invalid,
    ProxyHeader,
    ProxyProtocol,
    decode,
    encode,
    encode_local,
)

V4 = (("198.18.0.7", 40000), ("198.18.0.100", 443))
V6 = (("2001:db8::7", 1), ("2001:db8::100", 65535))


def test_v1_is_the_text_line_of_the_spec():
    assert encode(ProxyProtocol.V1, *V4) == b"PROXY TCP4 198.18.0.7 198.18.0.100 40000 443\r\n"
    assert encode(ProxyProtocol.V1, *V6) == b"PROXY TCP6 2001:db8::7 2001:db8::100 1 65535\r\n"
    assert encode_local(ProxyProtocol.V1) == b"PROXY UNKNOWN\r\n"


def test_v2_is_the_binary_block_of_the_spec():
    header = encode(ProxyProtocol.V2, *V4)
    assert header[:12] == b"\x0d\x0a\x0d\x0a\x00\x0d\x0a\x51\x55\x49\x54\x0a"
    assert header[12:16] == b"\x21\x11\x00\x0c"                 # v2 PROXY, TCP over IPv4, 12 bytes
    assert header[16:] == bytes([198, 18, 0, 7, 198, 18, 0, 100]) + struct.pack("!HH", 40000, 443)
    six = encode(ProxyProtocol.V2, *V6)
    assert six[12:16] == b"\x21\x21\x00\x24" and len(six) == 16 + 36
    assert encode_local(ProxyProtocol.V2) == V2_SIGNATURE + b"\x20\x00\x00\x00"   # LOCAL, UNSPEC


@pytest.mark.parametrize("version", [ProxyProtocol.V1, ProxyProtocol.V2])
@pytest.mark.parametrize("endpoints", [V4, V6])
def test_round_trip_and_every_proper_prefix_needs_more(version, endpoints):
    header = encode(version, *endpoints)
    payload = b"GET / HTTP/1.1\r\n\r\n"
    assert decode(header + payload) == ProxyHeader(len(header), *endpoints)
    for cut in range(len(header)):
        assert decode(header[:cut]) is NEED_MORE, cut


def test_local_and_unknown_mean_the_connections_own_endpoints():
    assert decode(encode_local(ProxyProtocol.V2)) == ProxyHeader(16)
    assert decode(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\nrest") == ProxyHeader(35)
    # A v2 LOCAL header may still carry an address block: skipped, not used.
    local_with_block = V2_SIGNATURE + b"\x20\x11\x00\x0c" + bytes(12)
    assert decode(local_with_block) == ProxyHeader(28)


def test_v2_tlvs_after_the_addresses_are_skipped():
    tlv = b"\x04\x00\x03abc"                                      # PP2_TYPE_NOOP
    header = V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 12 + len(tlv)) + bytes([198, 18, 0, 7, 198, 18, 0, 100]) \
        + struct.pack("!HH", 1, 2) + tlv
    assert decode(header) == ProxyHeader(len(header), ("198.18.0.7", 1), ("198.18.0.100", 2))


@pytest.mark.parametrize("data, reason", [
    (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP4 198.18.0.7 198.18.0.100 40000\r\n", "expected PROXY"),
    (b"PROXY TCP5 198.18.0.7 198.18.0.100 1 2\r\n", "unsupported protocol"),
    (b"PROXY TCP4 2001:db8::1 198.18.0.100 1 2\r\n", "not a TCP4 address"),
    (b"PROXY TCP6 198.18.0.7 2001:db8::1 1 2\r\n", "not a TCP6 address"),
    (b"PROXY TCP4 198.18.0.07 198.18.0.100 1 2\r\n", "bad address"),
    (b"PROXY TCP4 198.18.0.7 198.18.0.100 65536 2\r\n", "bad port"),
    (b"PROXY TCP4 198.18.0.7 198.18.0.100 01 2\r\n", "bad port"),
    (b"PROXY TCP4 198.18.0.7 198.18.0.100 1 2\n", "not ended by CRLF"),
    (b"PROXY " + b"x" * (V1_MAX - 6), "longer than 107"),
    (V2_SIGNATURE + b"\x11\x11\x00\x0c", "unsupported version 1"),
    (V2_SIGNATURE + b"\x22\x11\x00\x0c", "unknown command 2"),
    (V2_SIGNATURE + b"\x21\x31\x00\xd8" + bytes(216), "unsupported address family/protocol 0x31"),
    (V2_SIGNATURE + b"\x21\x12\x00\x0c" + bytes(12), "unsupported address family/protocol 0x12"),
    (V2_SIGNATURE + b"\x21\x21\x00\x0c" + bytes(12), "12 bytes, 36 needed"),
    (V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", MAX_HEADER), "over the 4096-byte limit"),
    (b"\r\n\r\nX", "not a PROXY protocol header"),
])
def test_refusals_say_why(data, reason):
    result = decode(data)
    assert isinstance(result, Invalid) and reason in result.reason, result


def test_a_107_byte_v1_line_is_the_longest_accepted():
    address = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    widest = f"PROXY TCP6 {address} {address} 65535 65535\r\n".encode()
    assert decode(widest) == ProxyHeader(len(widest), (address, 65535), (address, 65535))
    longest = b"PROXY UNKNOWN " + b"x" * (V1_MAX - 16) + b"\r\n"
    assert len(longest) == V1_MAX and decode(longest) == ProxyHeader(V1_MAX)
    assert isinstance(decode(longest[:-2] + b"x\r\n"), Invalid)


def test_mismatched_families_encode_as_local():
    assert encode(ProxyProtocol.V1, V4[0], V6[1]) == b"PROXY UNKNOWN\r\n"


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=300))
def test_decoding_arbitrary_bytes_never_raises_and_stays_bounded(data):
    result = decode(data)
    assert result is NEED_MORE or isinstance(result, (Invalid, ProxyHeader))
    if isinstance(result, ProxyHeader):
        assert 15 <= result.length <= min(len(data), MAX_HEADER)
    if result is NEED_MORE:
        assert len(data) < MAX_HEADER


@settings(max_examples=2000, deadline=None)
@given(st.sampled_from([b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN", V2_SIGNATURE + b"\x21\x11",
                        V2_SIGNATURE + b"\x21\x21", V2_SIGNATURE + b"\x20\x00"]),
       st.binary(max_size=120))
def test_decoding_mutated_headers_never_raises(prefix, tail):
    result = decode(prefix + tail)
    assert result is NEED_MORE or isinstance(result, (Invalid, ProxyHeader))
    if isinstance(result, ProxyHeader) and result.source is not None:
        assert result.length <= len(prefix + tail)
        assert 0 <= result.source[1] <= 65535 and 0 <= result.destination[1] <= 65535


@settings(max_examples=500, deadline=None)
@given(st.ip_addresses(v=4), st.ip_addresses(v=4), st.integers(0, 65535), st.integers(0, 65535),
       st.sampled_from([ProxyProtocol.V1, ProxyProtocol.V2]))
def test_any_ipv4_pair_round_trips(src, dst, sport, dport, version):
    header = encode(version, (str(src), sport), (str(dst), dport))
    assert decode(header + b"x") == ProxyHeader(len(header), (str(src), sport), (str(dst), dport))


@settings(max_examples=500, deadline=None)
@given(st.ip_addresses(v=6), st.ip_addresses(v=6), st.integers(0, 65535), st.integers(0, 65535),
       st.sampled_from([ProxyProtocol.V1, ProxyProtocol.V2]))
def test_any_ipv6_pair_round_trips(src, dst, sport, dport, version):
    header = encode(version, (str(src), sport), (str(dst), dport))
    assert decode(header) == ProxyHeader(len(header), (str(src), sport), (str(dst), dport))
