import ipaddress
import logging
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vipd.vrrp.packet import (
    REASONS,
    Advert,
    Invalid,
    ReceiveChecks,
    RxErrors,
    accept,
    advert_interval_cs,
    decode,
    encode,
    password_bytes,
)

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "keepalived"
CAPTURES = sorted(p.name.removesuffix(".pcap") for p in VECTORS.glob("*.pcap")) or ["<none>"]

V4_SRC, V4_PEER, V4_GROUP = "198.18.0.11", "198.18.0.12", "224.0.0.18"
V6_SRC, V6_GROUP = "fe80::5c91:edff:fe1b:d5e2", "ff02::12"


def vrrp_packets(name):
    """(src, dst, ttl, VRRP bytes) for every VRRP packet of a capture."""
    rdpcap = pytest.importorskip("scapy.utils").rdpcap
    from scapy.layers.inet import IP
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import Ether  # noqa: F401  registers the Ethernet link type for rdpcap

    found = []
    for pkt in rdpcap(str(VECTORS / f"{name}.pcap")):
        if IP in pkt and pkt[IP].proto == 112:
            found.append((pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, bytes(pkt[IP].payload)))
        elif IPv6 in pkt and pkt[IPv6].nh == 112:
            found.append((pkt[IPv6].src, pkt[IPv6].dst, pkt[IPv6].hlim, bytes(pkt[IPv6].payload)))
    return found


def keepalived_conf(name):
    text = (VECTORS / f"{name}.keepalived.conf").read_text()

    def block(key):
        match = re.search(key + r"\s*\{([^}]*)\}", text)
        return match.group(1).split() if match else []

    password = re.search(r"auth_pass\s+(\S+)", text)
    return {
        "version": int(re.search(r"vrrp_version\s+(\d)", text).group(1)),
        "vrid": int(re.search(r"virtual_router_id\s+(\d+)", text).group(1)),
        "priority": int(re.search(r"\bpriority\s+(\d+)", text).group(1)),
        "interval_cs": round(float(re.search(r"advert_int\s+([\d.]+)", text).group(1)) * 100),
        "addresses": tuple(ipaddress.ip_interface(v).ip for v in block("virtual_ipaddress")),
        "unicast_peers": block("unicast_peer"),
        "password": password.group(1) if password else None,
    }


@pytest.fixture(params=CAPTURES)
def capture(request):
    if not VECTORS.is_dir():
        pytest.skip(f"keepalived test vectors not found at {VECTORS} (expected shared/ beside the repo)")
    return request.param, keepalived_conf(request.param), vrrp_packets(request.param)


def test_keepalived_captures_decode_match_conf_and_reencode_identically(capture):
    name, conf, packets = capture
    assert len(packets) >= 2, name
    auth = {}
    if conf["password"]:
        auth = {"auth_type": 1, "auth_data": password_bytes(conf["password"])}
    for index, (src, dst, ttl, payload) in enumerate(packets):
        advert = decode(payload, src=src, dst=dst, ttl=ttl)
        assert isinstance(advert, Advert), (name, index, advert)
        resigning = index == len(packets) - 1
        assert advert == Advert(conf["version"], conf["vrid"], 0 if resigning else conf["priority"],
                                conf["interval_cs"], conf["addresses"], **auth)
        assert dst in (conf["unicast_peers"] or [V4_GROUP, V6_GROUP])
        assert accept(advert, src=src, vrid=conf["vrid"], version=conf["version"],
                      interval_cs=conf["interval_cs"], **auth) is None
        assert encode(advert, src=src, dst=dst) == payload


def test_keepalived_v3_ipv4_checksums_use_the_pseudo_header_also_for_unicast():
    if not VECTORS.is_dir():
        pytest.skip(f"keepalived test vectors not found at {VECTORS} (expected shared/ beside the repo)")
    v3_ipv4 = [packet for name in CAPTURES for packet in vrrp_packets(name)
               if packet[3][0] >> 4 == 3 and ":" not in packet[0]]
    assert {dst for _, dst, _, _ in v3_ipv4} == {V4_GROUP, "198.18.0.13"}
    for src, dst, ttl, payload in v3_ipv4:
        advert = decode(payload, src=src, dst=dst, ttl=ttl)
        assert encode(advert, src=src, dst=dst, checksum_mode="pseudo_header") == payload
        assert encode(advert, src=src, dst=dst, checksum_mode="message_only") != payload


def test_keepalived_v2_sends_eight_zero_auth_bytes_without_authentication():
    advert = Advert(2, 51, 150, 100, ("198.18.0.100",))
    assert encode(advert, src=V4_SRC, dst=V4_GROUP) == bytes.fromhex("2133960100018253c61200640000000000000000")


def test_password_bytes_truncates_and_pads_like_keepalived():
    assert password_bytes("s3cret") == b"s3cret\0\0"
    assert password_bytes("longer-than-eight") == b"longer-t"
    assert password_bytes("") == bytes(8)


def test_advert_normalises_addresses_and_interval():
    advert = Advert(3, 1, 100, 250, ["198.18.0.1", ipaddress.ip_address("198.18.0.2")])
    assert advert.addresses == (ipaddress.IPv4Address("198.18.0.1"), ipaddress.IPv4Address("198.18.0.2"))
    assert advert.interval == 2.5


# --- round trips ---------------------------------------------------------------------------------------

ipv4_addresses = st.lists(st.integers(0, 2**32 - 1).map(ipaddress.IPv4Address), min_size=1, max_size=20)
ipv6_addresses = st.lists(st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address), min_size=1, max_size=15)
vrids, priorities = st.integers(1, 255), st.integers(0, 255)


@st.composite
def v2_adverts(draw):
    password = draw(st.one_of(st.none(), st.text(max_size=12)))
    auth = {} if password is None else {"auth_type": 1, "auth_data": password_bytes(password)}
    return Advert(2, draw(vrids), draw(priorities), 100 * draw(st.integers(1, 255)),
                  tuple(draw(ipv4_addresses)), **auth)


def v3_adverts(addresses):
    return st.builds(lambda *fields: Advert(3, *fields), vrids, priorities, st.integers(1, 4095),
                     addresses.map(tuple))


unicast_or_group_v4 = st.sampled_from([V4_GROUP, V4_PEER, "198.19.255.254"])


@given(v2_adverts(), unicast_or_group_v4)
def test_v2_round_trip(advert, dst):
    assert decode(encode(advert, src=V4_SRC, dst=dst), src=V4_SRC, dst=dst, ttl=255) == advert


@given(v3_adverts(ipv4_addresses), unicast_or_group_v4, st.sampled_from(["pseudo_header", "message_only"]))
def test_v3_ipv4_round_trip_both_checksum_forms(advert, dst, checksum_mode):
    data = encode(advert, src=V4_SRC, dst=dst, checksum_mode=checksum_mode)
    assert decode(data, src=V4_SRC, dst=dst, ttl=255) == advert


@given(v3_adverts(ipv6_addresses), st.sampled_from([V6_GROUP, "fe80::1"]),
       st.sampled_from(["pseudo_header", "message_only"]))
def test_v3_ipv6_round_trip_always_uses_pseudo_header(advert, dst, checksum_mode):
    data = encode(advert, src=V6_SRC, dst=dst, checksum_mode=checksum_mode)
    assert data == encode(advert, src=V6_SRC, dst=dst)
    assert decode(data, src=V6_SRC, dst=dst, ttl=255) == advert


def test_v3_ipv4_checksum_forms_differ_and_both_are_accepted():
    advert = Advert(3, 53, 150, 100, ("198.18.0.100",))
    pseudo = encode(advert, src=V4_SRC, dst=V4_GROUP)
    message_only = encode(advert, src=V4_SRC, dst=V4_GROUP, checksum_mode="message_only")
    assert pseudo != message_only
    assert decode(message_only, src=V4_SRC, dst=V4_GROUP, ttl=255) == advert
    # the pseudo-header form binds the packet to its addresses; the message-only form does not
    assert decode(pseudo, src=V4_PEER, dst=V4_GROUP, ttl=255).reason == "checksum"
    assert decode(message_only, src=V4_PEER, dst=V4_GROUP, ttl=255) == advert


# --- decode never raises --------------------------------------------------------------------------------

endpoints = st.sampled_from([(V4_SRC, V4_GROUP), (V4_SRC, V4_PEER), (V6_SRC, V6_GROUP), (V6_SRC, V4_GROUP)])
ttls = st.one_of(st.none(), st.integers(0, 255))


@settings(max_examples=300)
@given(st.binary(max_size=300), endpoints, ttls)
def test_decode_never_raises_on_random_bytes(data, ends, ttl):
    assert isinstance(decode(data, src=ends[0], dst=ends[1], ttl=ttl), (Advert, Invalid))


@settings(max_examples=300)
@given(st.sampled_from([0x21, 0x31]), st.integers(0, 255), st.binary(max_size=80), endpoints, ttls)
def test_decode_never_raises_on_plausible_headers(version_type, count, rest, ends, ttl):
    data = bytes([version_type, 51, 100, count]) + rest
    assert isinstance(decode(data, src=ends[0], dst=ends[1], ttl=ttl), (Advert, Invalid))


# Every byte of the message is under the checksum (v3 adds the pseudo-header, v2 sums the message
# alone). Byte 0 (version and type) and byte 3 (the address count) are read before the checksum is
# checked, so their corruption is refused for what it breaks first; any other byte for the checksum.
CHECKSUM_FORMS = {
    "v3 IPv4 pseudo-header": (v3_adverts(ipv4_addresses), V4_SRC, V4_GROUP, "pseudo_header"),
    "v3 IPv4 message only": (v3_adverts(ipv4_addresses), V4_SRC, V4_GROUP, "message_only"),
    "v3 IPv6": (v3_adverts(ipv6_addresses), V6_SRC, V6_GROUP, "pseudo_header"),
    "v2": (v2_adverts(), V4_SRC, V4_GROUP, "pseudo_header"),
}
FIRST_FAILING_CHECK = {0: {"version", "type", "length", "family"}, 3: {"length"}}


@settings(max_examples=400)
@given(st.sampled_from(sorted(CHECKSUM_FORMS)), st.data())
def test_every_single_byte_corruption_is_refused(form, data):
    adverts, src, dst, checksum_mode = CHECKSUM_FORMS[form]
    packet = bytearray(encode(data.draw(adverts), src=src, dst=dst, checksum_mode=checksum_mode))
    index = data.draw(st.integers(0, len(packet) - 1))
    packet[index] ^= data.draw(st.integers(1, 255))
    result = decode(bytes(packet), src=src, dst=dst, ttl=255)
    assert isinstance(result, Invalid), (form, index, result)
    assert result.reason in FIRST_FAILING_CHECK.get(index, {"checksum"}), (form, index, result)


def ones_complement_sum(data):
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def test_no_single_byte_change_turns_one_v3_ipv4_checksum_form_into_the_other():
    """decode accepts either v3 IPv4 form, which differ by the pseudo-header's sum: the test above
    is exact only if no one-byte change (a difference d or 256 d, |d| < 256) makes that up."""
    one_byte_deltas = {(sign * d * shift) % 0xFFFF for d in range(1, 256) for shift in (1, 256) for sign in (1, -1)}
    for length in range(12, 8 + 4 * 20 + 1, 4):
        pseudo = (ipaddress.ip_address(V4_SRC).packed + ipaddress.ip_address(V4_GROUP).packed
                  + struct.pack("!BBH", 0, 112, length))
        assert ones_complement_sum(pseudo) % 0xFFFF not in one_byte_deltas, length


# --- every rejection reason ----------------------------------------------------------------------------

V3_ADVERT = Advert(3, 53, 150, 100, ("198.18.0.100", "198.18.0.101"))
V3_PACKET = encode(V3_ADVERT, src=V4_SRC, dst=V4_GROUP)
V2_ADVERT = Advert(2, 52, 150, 100, ("198.18.0.100",), 1, password_bytes("s3cret"))
V2_PACKET = encode(V2_ADVERT, src=V4_SRC, dst=V4_GROUP)


def reason(data, src=V4_SRC, dst=V4_GROUP, ttl=255):
    result = decode(data, src=src, dst=dst, ttl=ttl)
    assert isinstance(result, Invalid), result
    return result.reason


def rechecksum(message, pseudo_header=b""):
    """Give a hand-edited message a correct checksum, so that only the intended field is wrong."""
    zeroed = message[:6] + b"\0\0" + message[8:]
    covered = pseudo_header + zeroed
    total = sum(struct.unpack(f"!{len(covered) // 2}H", covered))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return zeroed[:6] + struct.pack("!H", ~total & 0xFFFF) + zeroed[8:]


def with_checksum(message, src=V4_SRC, dst=V4_GROUP):
    """rechecksum in the IPv4 pseudo-header form keepalived uses for v3."""
    pseudo = ipaddress.ip_address(src).packed + ipaddress.ip_address(dst).packed
    return rechecksum(message, pseudo + struct.pack("!BBH", 0, 112, len(message)))


def test_ttl_must_be_255_to_multicast():
    assert reason(V3_PACKET, ttl=254) == "ttl"
    v6 = encode(Advert(3, 55, 150, 100, ("2001:db8::100",)), src=V6_SRC, dst=V6_GROUP)
    assert reason(v6, src=V6_SRC, dst=V6_GROUP, ttl=254) == "ttl"


def test_ttl_is_not_checked_for_unicast_or_when_unknown():
    unicast = encode(V3_ADVERT, src=V4_SRC, dst=V4_PEER)
    assert decode(unicast, src=V4_SRC, dst=V4_PEER, ttl=64) == V3_ADVERT
    assert decode(V3_PACKET, src=V4_SRC, dst=V4_GROUP, ttl=None) == V3_ADVERT


def test_ttl_is_checked_before_anything_else():
    assert reason(b"\x41garbage", ttl=254) == "ttl"


def test_version_must_be_2_or_3():
    assert reason(bytes([0x41]) + V3_PACKET[1:]) == "version"
    assert reason(bytes([0x11]) + V3_PACKET[1:]) == "version"


def test_type_must_be_advertisement():
    assert reason(bytes([0x32]) + V3_PACKET[1:]) == "type"


def test_truncated_and_overlong_packets():
    assert reason(b"") == "length"
    assert reason(V3_PACKET[:7]) == "length"
    assert reason(V3_PACKET[:-1]) == "length"
    assert reason(V3_PACKET[:-4]) == "length"
    assert reason(V3_PACKET + b"\0\0\0\0") == "length"
    assert reason(V2_PACKET[:-8]) == "length"  # v2 without its authentication data trailer


def test_count_must_match_the_addresses_present():
    assert reason(with_checksum(V3_PACKET[:3] + b"\x03" + V3_PACKET[4:])) == "length"
    assert reason(with_checksum(V3_PACKET[:3] + b"\x01" + V3_PACKET[4:])) == "length"


def test_bad_checksum():
    corrupted = V3_PACKET[:7] + bytes([V3_PACKET[7] ^ 1]) + V3_PACKET[8:]
    assert reason(corrupted) == "checksum"
    assert reason(V3_PACKET, dst=V4_PEER) == "checksum"  # pseudo-header form for another destination
    v6 = encode(Advert(3, 55, 150, 100, ("2001:db8::100",)), src=V6_SRC, dst=V6_GROUP)
    assert reason(v6, src="fe80::1", dst=V6_GROUP) == "checksum"


def test_v2_checksum_is_over_the_message_only():
    pseudo_form = with_checksum(V2_PACKET)
    assert pseudo_form != V2_PACKET
    assert reason(pseudo_form) == "checksum"


def test_v3_ipv6_needs_the_pseudo_header_checksum():
    packet = encode(Advert(3, 55, 150, 100, ("2001:db8::100",)), src=V6_SRC, dst=V6_GROUP)
    message_only = rechecksum(packet)
    assert message_only != packet
    assert reason(message_only, src=V6_SRC, dst=V6_GROUP) == "checksum"


def test_ipv6_in_a_v2_packet():
    v2_over_ipv6 = V2_PACKET[:3] + b"\x01" + V2_PACKET[4:8] + bytes(16) + V2_PACKET[-8:]
    assert reason(v2_over_ipv6, src=V6_SRC, dst=V6_GROUP) == "family"
    # over IPv4 the same 16-byte address cannot be a single IPv4 address
    assert reason(v2_over_ipv6) == "length"
    with pytest.raises(ValueError, match="IPv4"):
        encode(Advert(2, 52, 150, 100, ("2001:db8::100",)), src=V6_SRC, dst=V6_GROUP)


def test_mixed_families_between_src_and_dst():
    assert reason(V3_PACKET, src=V6_SRC, dst=V4_GROUP) == "family"


def test_wrong_vrid_is_another_routers_instance():
    assert accept(V3_ADVERT, src=V4_PEER, vrid=54, version=3) == Invalid("vrid", "VRID 53, ours is 54")


def test_version_mismatch_with_the_instance():
    assert accept(V3_ADVERT, src=V4_PEER, vrid=53, version=2).reason == "version"
    assert accept(V2_ADVERT, src=V4_PEER, vrid=52, version=3).reason == "version"


def test_wrong_password():
    ok = {"src": V4_PEER, "vrid": 52, "version": 2, "auth_type": 1}
    assert accept(V2_ADVERT, **ok, auth_data=password_bytes("s3cret")) is None
    assert accept(V2_ADVERT, **ok, auth_data=b"s3cret") is None
    result = accept(V2_ADVERT, **ok, auth_data=password_bytes("s3cre7"))
    assert result.reason == "auth" and "s3cre" not in result.detail


def test_auth_type_mismatch():
    assert accept(V2_ADVERT, src=V4_PEER, vrid=52, version=2).reason == "auth"
    unauthenticated = Advert(2, 52, 150, 100, ("198.18.0.100",))
    assert accept(unauthenticated, src=V4_PEER, vrid=52, version=2, auth_type=1,
                  auth_data=password_bytes("s3cret")).reason == "auth"


# What one instance (VRID 53, v3, our address V4_SRC, unicast peers V4_PEER and fe80::1) makes of an
# advert from each sender: its own copy and unlisted senders are refused before anything else.
INSTANCE = {"own": V4_SRC, "peers": frozenset(map(ipaddress.ip_address, [V4_PEER, "fe80::1"])),
            "vrid": 53, "version": 3}
V3_OTHER_VRID = Advert(3, 54, 150, 100, ("198.18.0.100",))


@pytest.mark.parametrize("advert, src, instance, expected", [
    (V3_ADVERT, V4_PEER, INSTANCE, None),
    (V3_ADVERT, ipaddress.ip_address(V4_PEER), INSTANCE, None),
    (V3_ADVERT, V4_SRC, INSTANCE, "own"),
    (V3_OTHER_VRID, V4_SRC, INSTANCE, "own"),
    (V3_ADVERT, "198.18.0.13", INSTANCE, "unknown_peer"),
    (V3_OTHER_VRID, "198.18.0.13", INSTANCE, "unknown_peer"),
    (V3_OTHER_VRID, V4_PEER, INSTANCE, "vrid"),
    (V2_ADVERT, V4_PEER, {**INSTANCE, "vrid": 52}, "version"),
    (V3_ADVERT, "fe80::1%eth0", INSTANCE, None),
    (V3_ADVERT, "fe80::2", INSTANCE, "unknown_peer"),
    (V3_ADVERT, "fe80::2%eth0", {**INSTANCE, "own": "fe80::2"}, "own"),
    (V3_ADVERT, "198.18.0.13", {**INSTANCE, "peers": frozenset()}, None),
    (V3_ADVERT, V4_SRC, {**INSTANCE, "own": None}, "unknown_peer"),
])
def test_receive_checks_by_sender(advert, src, instance, expected):
    result = accept(advert, src=src, **instance)
    assert (result and result.reason) == expected, result


def test_v2_ipsec_ah_is_refused():
    ah_packet = rechecksum(V2_PACKET[:4] + b"\x02" + V2_PACKET[5:])
    advert = decode(ah_packet, src=V4_SRC, dst=V4_GROUP, ttl=255)
    assert advert.auth_type == 2
    result = accept(advert, src=V4_PEER, vrid=52, version=2, auth_type=2)
    assert result.reason == "auth" and "AH" in result.detail
    assert accept(advert, src=V4_PEER, vrid=52, version=2).reason == "auth"
    with pytest.raises(ValueError, match="AH"):
        encode(advert, src=V4_SRC, dst=V4_GROUP)


def test_v2_interval_must_match():
    auth = {"src": V4_PEER, "auth_type": 1, "auth_data": password_bytes("s3cret")}
    assert accept(V2_ADVERT, vrid=52, version=2, interval_cs=100, **auth) is None
    assert accept(V2_ADVERT, vrid=52, version=2, interval_cs=200, **auth).reason == "interval"


def test_v3_interval_is_learned_not_checked():
    assert accept(V3_ADVERT, src=V4_PEER, vrid=53, version=3, interval_cs=10) is None


@pytest.mark.parametrize("seconds, version, expected", [
    (0.01, 3, 1), (1.0, 3, 100), (0.07, 3, 7), (40.95, 3, 4095), (1.0, 2, 100), (255, 2, 25500),
    (0.005, 3, "VRRPv3 needs 0.01 s steps from 0.01 to 40.95, got 0.005"),
    (0, 3, "VRRPv3 needs 0.01 s steps"), (41, 3, "VRRPv3 needs 0.01 s steps"),
    (1.5, 2, "VRRPv2 needs whole seconds 1..255, got 1.5"), (256, 2, "VRRPv2 needs whole seconds"),
    (0.05, 2, "VRRPv2 needs whole seconds"),
])
def test_advert_interval_converts_only_what_the_wire_carries_exactly(seconds, version, expected):
    if isinstance(expected, int):
        assert advert_interval_cs(seconds, version) == expected
    else:
        with pytest.raises(ValueError, match=re.escape(expected)):
            advert_interval_cs(seconds, version)


def test_v3_reserved_interval_bits_are_ignored():
    with_rsvd = with_checksum(V3_PACKET[:4] + bytes([0xF0 | V3_PACKET[4]]) + V3_PACKET[5:])
    assert decode(with_rsvd, src=V4_SRC, dst=V4_GROUP, ttl=255) == V3_ADVERT


def test_checks_run_in_rfc_order():
    checks = {"src": V4_PEER, "vrid": 52, "version": 2, "auth_type": 1, "auth_data": b"wrong", "interval_cs": 300}
    assert accept(V2_ADVERT, **{**checks, "own": V4_PEER, "peers": {ipaddress.ip_address(V4_SRC)}}).reason == "own"
    assert accept(V2_ADVERT, **{**checks, "peers": {ipaddress.ip_address(V4_SRC)}, "vrid": 1}).reason \
        == "unknown_peer"
    assert accept(V2_ADVERT, **{**checks, "vrid": 1}).reason == "vrid"
    assert accept(V2_ADVERT, **{**checks, "version": 3}).reason == "version"
    assert accept(V2_ADVERT, **checks).reason == "auth"
    assert reason(bytes([0x42]) + V3_PACKET[1:]) == "version"
    assert reason(bytes([0x32]) + V3_PACKET[1:-1]) == "type"
    assert reason(V3_PACKET[:-1] + b"\xff\xff") == "length"


def test_every_reason_is_reachable():
    covered = {
        reason(V3_PACKET, ttl=0), reason(b"\x41" + V3_PACKET[1:]), reason(b"\x32" + V3_PACKET[1:]),
        reason(V3_PACKET[:-1]), reason(V3_PACKET[:7] + b"\0" + V3_PACKET[8:]),
        reason(V2_PACKET, src=V6_SRC, dst=V6_GROUP),
        accept(V3_ADVERT, src=V4_PEER, vrid=1, version=3).reason,
        accept(V2_ADVERT, src=V4_PEER, vrid=52, version=2).reason,
        accept(V2_ADVERT, src=V4_PEER, vrid=52, version=2, auth_type=1, auth_data=b"s3cret", interval_cs=500).reason,
        accept(V3_ADVERT, src=V4_SRC, own=V4_SRC, vrid=53, version=3).reason,
        accept(V3_ADVERT, src=V4_SRC, peers={ipaddress.ip_address(V4_PEER)}, vrid=53, version=3).reason,
        ReceiveChecks(vrid=53, version=3).check(V3_PACKET, src=V4_SRC, dst=V4_PEER, ttl=255).reason,
    }
    # "flood" is the instance's per-sender limit (SourceLimiter), tested in test_rxchecks.py.
    assert covered | {"flood"} == set(REASONS)


def test_invalid_rejects_unknown_reasons():
    with pytest.raises(ValueError):
        Invalid("bogus")


# --- encode refuses what cannot go on the wire ---------------------------------------------------------

@pytest.mark.parametrize("advert, src, dst, match", [
    (Advert(3, 0, 100, 100, ("198.18.0.1",)), V4_SRC, V4_GROUP, "vrid"),
    (Advert(3, 1, 256, 100, ("198.18.0.1",)), V4_SRC, V4_GROUP, "priority"),
    (Advert(3, 1, 100, 4096, ("198.18.0.1",)), V4_SRC, V4_GROUP, "0.01 s steps from 0.01 to 40.95, got 40.96"),
    (Advert(2, 1, 100, 150, ("198.18.0.1",)), V4_SRC, V4_GROUP, "whole seconds 1..255, got 1.5"),
    (Advert(3, 1, 100, 100, ("198.18.0.1",), 1, b"x"), V4_SRC, V4_GROUP, "authentication"),
    (Advert(2, 1, 100, 100, ("198.18.0.1",), 1, b"123456789"), V4_SRC, V4_GROUP, "auth_data"),
    (Advert(2, 1, 100, 100, ("198.18.0.1",), 0, b"x"), V4_SRC, V4_GROUP, "auth_data"),
    (Advert(3, 1, 100, 100, ("198.18.0.1", "2001:db8::1")), V4_SRC, V4_GROUP, "one family"),
    (Advert(3, 1, 100, 100, ("2001:db8::1",)), V4_SRC, V4_GROUP, "IPv6"),
    (Advert(4, 1, 100, 100, ("198.18.0.1",)), V4_SRC, V4_GROUP, "version"),
])
def test_encode_refuses(advert, src, dst, match):
    with pytest.raises(ValueError, match=match):
        encode(advert, src=src, dst=dst)


def test_encode_refuses_unknown_checksum_mode():
    with pytest.raises(ValueError, match="ChecksumMode"):
        encode(V3_ADVERT, src=V4_SRC, dst=V4_GROUP, checksum_mode="none")


# --- RxErrors ------------------------------------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_rx_errors_counts_and_rate_limits_per_reason(caplog):
    clock = FakeClock()
    errors = RxErrors("api", clock=clock)
    bad_checksum = Invalid("checksum", "checksum 0x1234")
    with caplog.at_level(logging.DEBUG, logger="vipd.vrrp"):
        for _ in range(5):
            errors.record(bad_checksum, "198.18.0.12")
        errors.record(Invalid("ttl"), "198.18.0.12")  # another reason has its own budget
        clock.now += 0.99
        errors.record(bad_checksum, "198.18.0.12")
        clock.now += 0.02
        errors.record(bad_checksum, "198.18.0.12")
        clock.now += 5
        errors.record(bad_checksum, "198.18.0.12")

    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "api: dropped VRRP packet from 198.18.0.12: checksum (checksum 0x1234)",
        "api: dropped VRRP packet from 198.18.0.12: ttl",
        "api: dropped VRRP packet from 198.18.0.12: checksum (checksum 0x1234); 5 more checksum drops suppressed",
        "api: dropped VRRP packet from 198.18.0.12: checksum (checksum 0x1234)",
    ]
    assert all(r.levelno == logging.WARNING for r in caplog.records)
    assert errors.counts == {**dict.fromkeys(REASONS, 0), "checksum": 8, "ttl": 1}


def test_rx_errors_logs_other_vrids_and_our_own_copies_quietly(caplog):
    errors = RxErrors(clock=FakeClock())
    with caplog.at_level(logging.DEBUG, logger="vipd.vrrp"):
        errors.record(Invalid("vrid", "VRID 7, ours is 51"), "198.18.0.13")
        errors.record(Invalid("own"), "198.18.0.11")
        errors.record(Invalid("unknown_peer"), "198.18.0.13")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.DEBUG, logging.WARNING]
    assert (errors.counts["vrid"], errors.counts["own"], errors.counts["unknown_peer"]) == (1, 1, 1)


def test_rx_errors_never_raises():
    def broken_clock():
        raise RuntimeError("clock gone")

    errors = RxErrors(clock=broken_clock)
    errors.record(Invalid("auth"), "198.18.0.12")
    errors.record(None, "198.18.0.12")
    assert errors.counts["auth"] == 1
    counts = errors.counts
    counts["auth"] = 99
    assert errors.counts["auth"] == 1
