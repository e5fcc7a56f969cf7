"""The receive path against forged packets (issue 8, part 1): each forgery is refused for its reason,
cheap checks before the address list is decoded, a per-sender limit, an owner that never steps down
and a master that is no reflection amplifier."""
import ipaddress
import socket
import struct

import pytest

from vipd.vrrp import fsm, packet, sockets
from vipd.vrrp.config import parse_vrrp
from vipd.vrrp.fsm import AdvertReceived, SendAdvert, SendGratuitous, State, Timeout
from vipd.vrrp.packet import Advert, Invalid, ReceiveChecks, SourceLimiter, encode

OWN, PEER, OTHER, GROUP = "198.18.0.11", "198.18.0.12", "198.18.0.66", "224.0.0.18"
OWN6, PEER6, GROUP6 = "fe80::11", "fe80::12", "ff02::12"
VRID = 51


def forge(*, src=PEER, dst=GROUP, version=3, vrid=VRID, priority=200, count=None, interval=100,
          addresses=("198.18.0.100",), good_checksum=True):
    """A VRRP message as a forger would write it: any field, the count free of the address list."""
    packed = b"".join(ipaddress.ip_address(a).packed for a in addresses)
    count = len(addresses) if count is None else count
    if version == 3:
        message = struct.pack("!BBBBHH", 0x31, vrid, priority, count, interval, 0) + packed
        src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
        if src_ip.version == 4:
            pseudo = src_ip.packed + dst_ip.packed + struct.pack("!BBH", 0, 112, len(message))
        else:
            pseudo = src_ip.packed + dst_ip.packed + struct.pack("!I3xB", len(message), 112)
    else:
        message = struct.pack("!BBBBBBH", 0x21, vrid, priority, count, 0, interval // 100, 0) + packed + bytes(8)
        pseudo = b""
    checksum = packet._checksum(pseudo + message)
    if not good_checksum:
        checksum ^= 0x5A5A
    return message[:6] + struct.pack("!H", checksum) + message[8:]


MANY = tuple(f"198.18.{i // 250}.{i % 250 + 1}" for i in range(255))
MULTICAST = ReceiveChecks(vrid=VRID, version=3)
UNICAST = ReceiveChecks(vrid=VRID, version=3, peers=frozenset({ipaddress.ip_address(PEER)}))
UNICAST6 = ReceiveChecks(vrid=VRID, version=3, peers=frozenset({ipaddress.ip_address(PEER6)}))
V2 = ReceiveChecks(vrid=VRID, version=2, interval_cs=100)


FORGERIES = [
    # checks, data, src, dst, ttl, expected reason (None: accepted)
    ("the real advert, multicast", MULTICAST, forge(), PEER, GROUP, 255, None),
    ("the real advert, unicast", UNICAST, forge(dst=OWN), PEER, OWN, 255, None),
    ("the real advert, IPv6 unicast", UNICAST6, forge(src=PEER6, dst=OWN6, addresses=("2001:db8::1",)),
     PEER6, OWN6, 255, None),
    ("TTL 64 unicast to a multicast-mode master (the issue's VIP theft)", MULTICAST,
     forge(dst=OWN, priority=255), PEER, OWN, 64, "ttl"),
    ("TTL 64 unicast from the listed peer", UNICAST, forge(dst=OWN, priority=255), PEER, OWN, 64, "ttl"),
    ("TTL 254 unicast from the listed peer: one router away", UNICAST, forge(dst=OWN), PEER, OWN, 254, "ttl"),
    ("TTL 64 priority 0 unicast: the off-link takeover", MULTICAST, forge(dst=OWN, priority=0), PEER, OWN, 64, "ttl"),
    ("TTL 64 interval 40.95 s: the off-link stretch", MULTICAST, forge(interval=4095), PEER, GROUP, 64, "ttl"),
    ("TTL 64 multicast", MULTICAST, forge(), PEER, GROUP, 64, "ttl"),
    ("hop limit 64 IPv6 multicast", ReceiveChecks(vrid=VRID, version=3),
     forge(src=PEER6, dst=GROUP6, addresses=("2001:db8::1",)), PEER6, GROUP6, 64, "ttl"),
    ("TTL 255 unicast in multicast mode", MULTICAST, forge(dst=OWN), PEER, OWN, 255, "destination"),
    ("another multicast group", MULTICAST, forge(dst="224.0.0.5"), PEER, "224.0.0.5", 255, "destination"),
    ("multicast in unicast mode", UNICAST, forge(), PEER, GROUP, 255, "destination"),
    ("a non-peer in unicast mode", UNICAST, forge(src=OTHER, dst=OWN), OTHER, OWN, 255, "unknown_peer"),
    ("a non-peer's priority 0 in unicast mode", UNICAST, forge(src=OTHER, dst=OWN, priority=0), OTHER, OWN, 255,
     "unknown_peer"),
    ("our own address as source", MULTICAST, forge(src=OWN), OWN, GROUP, 255, "own"),
    ("v3 interval 0", MULTICAST, forge(interval=0), PEER, GROUP, 255, "interval"),
    ("v3 interval 0 with the reserved bits set", MULTICAST, forge(interval=0xF000), PEER, GROUP, 255, "interval"),
    ("v2 interval 0", V2, forge(version=2, interval=0), PEER, GROUP, 255, "interval"),
    ("v2 interval other than ours", V2, forge(version=2, interval=300), PEER, GROUP, 255, "interval"),
    ("count 3, one address present", MULTICAST, forge(count=3), PEER, GROUP, 255, "length"),
    ("count 0, one address present", MULTICAST, forge(count=0), PEER, GROUP, 255, "length"),
    ("another VRID", MULTICAST, forge(vrid=52), PEER, GROUP, 255, "vrid"),
    ("VRRPv2 to a v3 instance", MULTICAST, forge(version=2), PEER, GROUP, 255, "version"),
    ("bad checksum", MULTICAST, forge(good_checksum=False), PEER, GROUP, 255, "checksum"),
]


@pytest.mark.parametrize("checks, data, src, dst, ttl, expected", [f[1:] for f in FORGERIES],
                         ids=[f[0] for f in FORGERIES])
def test_forged_packet_is_refused_for_its_reason(checks, data, src, dst, ttl, expected):
    result = checks.check(data, src=src, dst=dst, ttl=ttl, own=OWN if "." in src else OWN6)
    if expected is None:
        assert isinstance(result, Advert), result
    else:
        assert isinstance(result, Invalid) and result.reason == expected, result


def test_unicast_ttl_relaxes_the_hop_check_for_routed_peers_only_down_to_its_value():
    routed = ReceiveChecks(vrid=VRID, version=3, peers=UNICAST.peers, unicast_ttl=253)
    data = forge(dst=OWN)
    assert isinstance(routed.check(data, src=PEER, dst=OWN, ttl=253, own=OWN), Advert)
    assert isinstance(routed.check(data, src=PEER, dst=OWN, ttl=255, own=OWN), Advert)
    assert routed.check(data, src=PEER, dst=OWN, ttl=252, own=OWN).reason == "ttl"
    # The knob is for unicast peers; multicast mode stays at exactly 255.
    relaxed_multicast = ReceiveChecks(vrid=VRID, version=3, unicast_ttl=1)
    assert relaxed_multicast.check(forge(), src=PEER, dst=GROUP, ttl=254, own=OWN).reason == "ttl"


@pytest.fixture
def decoded(monkeypatch):
    """Every address list the codec decodes, recorded."""
    calls = []
    real = packet._decode_addresses

    def spy(message, count, address_len):
        calls.append(count)
        return real(message, count, address_len)

    monkeypatch.setattr(packet, "_decode_addresses", spy)
    return calls


@pytest.mark.parametrize("what, data, src, dst, ttl, reason", [
    ("another VRID", forge(vrid=52, addresses=MANY), PEER, GROUP, 255, "vrid"),
    ("TTL 64", forge(addresses=MANY), PEER, GROUP, 64, "ttl"),
    ("unicast destination", forge(dst=OWN, addresses=MANY), PEER, OWN, 255, "destination"),
    ("bad checksum", forge(addresses=MANY, good_checksum=False), PEER, GROUP, 255, "checksum"),
    ("count 255 on one address", forge(count=255), PEER, GROUP, 255, "length"),
])
def test_big_forgeries_are_refused_before_their_addresses_are_decoded(decoded, what, data, src, dst, ttl, reason):
    assert MULTICAST.check(data, src=src, dst=dst, ttl=ttl, own=OWN).reason == reason
    assert decoded == [], what


def test_only_an_advert_that_passed_every_cheap_check_and_the_checksum_is_decoded(decoded):
    advert = MULTICAST.check(forge(addresses=MANY), src=PEER, dst=GROUP, ttl=255, own=OWN)
    assert isinstance(advert, Advert) and len(advert.addresses) == 255
    assert decoded == [255]


def test_screen_hands_finish_only_the_packets_worth_the_cost(decoded):
    screened = MULTICAST.screen(forge(addresses=MANY), src=PEER, dst=GROUP, ttl=255, own=OWN)
    assert isinstance(screened, packet.Screened) and decoded == []
    assert MULTICAST.finish(screened).priority == 200 and decoded == [255]


def test_decoded_addresses_are_address_objects_once():
    advert = MULTICAST.check(forge(addresses=("198.18.0.100", "198.18.0.101")), src=PEER, dst=GROUP, ttl=255)
    assert advert.addresses == tuple(map(ipaddress.IPv4Address, ("198.18.0.100", "198.18.0.101")))


# --- the per-sender limit -------------------------------------------------------------------------------

def test_the_fastest_honest_sender_is_never_limited():
    limiter = SourceLimiter()
    assert all(limiter.admit(PEER, n * 0.01) for n in range(100_00))  # 100 s of 0.01 s adverts


def test_a_flooding_sender_is_limited_while_the_real_peer_is_still_heard():
    limiter = SourceLimiter(rate=250, burst=50)
    admitted_flood = admitted_peer = 0
    for n in range(50_000):   # 5 s at 10 000 packets/s from one sender, the peer every 0.1 s
        now = n / 10_000
        admitted_flood += limiter.admit(OTHER, now)
        if n % 1000 == 0:
            admitted_peer += limiter.admit(PEER, now)
    assert admitted_peer == 50
    assert 50 + 250 * 5 - 2 <= admitted_flood <= 50 + 250 * 5 + 1


def test_the_limiter_tracks_a_bounded_number_of_senders_and_forgets_the_oldest_first():
    limiter = SourceLimiter(rate=1, burst=2, max_sources=3)
    assert limiter.admit(PEER, 0.0) and limiter.admit(PEER, 0.0) and not limiter.admit(PEER, 0.0)
    for n in range(1, 3):
        limiter.admit(f"198.18.1.{n}", 0.0)
    assert not limiter.admit(PEER, 0.0), "the peer is still tracked: 3 senders fit"
    for n in range(3, 10):
        limiter.admit(f"198.18.1.{n}", 0.0)
    assert len(limiter._buckets) == 3
    assert limiter.admit(PEER, 0.0), "forgotten senders start with a full bucket"


# --- the state machine ----------------------------------------------------------------------------------

def master(priority=200, interval=0.1, src=OWN):
    router = fsm.VrrpRouter(fsm.RouterParams(vrid=VRID, version=3, priority=priority, advert_interval=interval,
                                             primary_address=src))
    router.handle(fsm.Startup(), 0.0)
    if router.state is not State.MASTER:
        router.handle(Timeout(), router.next_deadline())
    assert router.state is State.MASTER
    return router


@pytest.mark.parametrize("advert", [
    AdvertReceived("198.18.0.250", 255, 0.1),          # a second "owner" with a higher address
    AdvertReceived("198.18.0.250", 255, 40.95),
    AdvertReceived("198.18.0.1", 255, 0.01),
])
def test_an_address_owner_never_steps_down_for_a_packet(advert):
    router = master(priority=255)
    now = router.next_deadline() - 0.01
    for n in range(50):
        actions = router.handle(advert, now + n * 0.001)
        assert not any(isinstance(a, (fsm.RemoveVips, fsm.StateChanged)) for a in actions), actions
    assert router.state is State.MASTER and router.master == OWN
    assert router.master_adver_interval == 0.1


def test_an_owner_lowered_by_its_tracks_is_no_owner_any_more():
    router = master(priority=255)
    router.handle(fsm.PriorityChanged(200), 0.05)
    actions = router.handle(AdvertReceived("198.18.0.250", 255, 0.1), 0.06)
    assert fsm.StateChanged(State.MASTER, State.BACKUP, "higher_priority_advert") in actions


@pytest.mark.parametrize("priority, answer", [(100, [SendAdvert(200), SendGratuitous()]), (0, [SendAdvert(200)])])
def test_a_master_answers_a_stream_of_lower_adverts_once_per_holdoff(priority, answer):
    router = master(priority=200, interval=0.1)
    start = router.next_deadline() - 0.05
    answers, regular = [], 0
    for n in range(3000):   # 3 s at 1000 lower adverts/s, timers served as they fall due
        now = start + n * 0.001
        deadline = router.next_deadline()
        if deadline <= now:
            regular += router.handle(Timeout(), deadline).count(SendAdvert(200))
        actions = router.handle(AdvertReceived(PEER, priority, 0.1), now)
        if actions:
            assert actions == answer
            answers.append(now)
    assert len(answers) == 3, answers
    assert all(b - a >= 1.0 for a, b in zip(answers, answers[1:]))
    assert router.state is State.MASTER
    # The regular schedule goes on: ~10 adverts/s, minus the three an answer stood in for.
    assert 26 <= regular <= 30, regular


def test_the_first_lower_advert_after_a_heal_is_answered_at_once():
    router = master(priority=200)
    now = router.next_deadline() - 0.05
    assert router.handle(AdvertReceived(PEER, 100, 0.1), now) == [SendAdvert(200), SendGratuitous()]
    assert router.next_deadline() == pytest.approx(now + 0.1)


def test_becoming_master_again_answers_at_once():
    router = master(priority=200)
    now = router.next_deadline() - 0.05
    router.handle(AdvertReceived(PEER, 100, 0.1), now)
    router.handle(AdvertReceived(PEER, 250, 0.1), now + 0.01)
    assert router.state is State.BACKUP
    router.handle(Timeout(), router.next_deadline())
    assert router.state is State.MASTER
    later = router.next_deadline() - 0.05
    assert router.handle(AdvertReceived(PEER, 100, 0.1), later) == [SendAdvert(200), SendGratuitous()]


# --- the knob -------------------------------------------------------------------------------------------

BASE = {"name": "api", "interface": "eth0", "vrid": VRID, "virtual_ips": ["198.18.0.100/24"]}


@pytest.mark.parametrize("table, expected", [
    (BASE, 255),
    ({**BASE, "unicast_peers": [PEER]}, 255),
    ({**BASE, "unicast_peers": [PEER], "unicast_ttl": 250}, 250),
    ({**BASE, "unicast_ttl": 250}, "vrrp.unicast_ttl: only applies with unicast_peers; multicast adverts "
                                   "always need TTL 255"),
    ({**BASE, "unicast_peers": [PEER], "unicast_ttl": 0}, "vrrp.unicast_ttl: must be 1..255"),
    ({**BASE, "unicast_peers": [PEER], "unicast_ttl": 256}, "vrrp.unicast_ttl: must be 1..255"),
])
def test_unicast_ttl_config(table, expected):
    problems = []
    config = parse_vrrp(problems, "vrrp", table)
    if isinstance(expected, int):
        assert problems == [] and config.unicast_ttl == expected
    else:
        assert config is None and len(problems) == 1 and expected in problems[0], problems


def test_encode_still_refuses_interval_0():
    with pytest.raises(ValueError):
        encode(Advert(3, VRID, 100, 0, ("198.18.0.100",)), src=PEER, dst=GROUP)


# --- the in-kernel VRID filter --------------------------------------------------------------------------

def run_bpf(program: bytes, frame: bytes) -> int:
    """The few classic BPF instructions vrid_filter uses, as the kernel runs them (an out-of-range
    load ends the program with 0: drop)."""
    insns = [struct.unpack("HBBI", program[i:i + 8]) for i in range(0, len(program), 8)]
    a = x = pc = 0
    while True:
        code, jt, jf, k = insns[pc]
        pc += 1
        if code == sockets._BPF_LDX_IP_HEADER_LEN:
            if k >= len(frame):
                return 0
            x = 4 * (frame[k] & 0x0F)
        elif code in (sockets._BPF_LD_BYTE_ABS, sockets._BPF_LD_BYTE_IND):
            offset = k + (x if code == sockets._BPF_LD_BYTE_IND else 0)
            if offset >= len(frame):
                return 0
            a = frame[offset]
        elif code == sockets._BPF_JEQ:
            pc += jt if a == k else jf
        elif code == sockets._BPF_RET:
            return k
        else:
            raise AssertionError(f"unexpected opcode {code:#x}")


def ipv4(payload: bytes, options: bytes = b"") -> bytes:
    header_len = 20 + len(options)
    return bytes([0x40 | header_len // 4]) + bytes(7) + bytes([255, 112]) + bytes(10) + options + payload


@pytest.mark.parametrize("vrids", [[51], [1, 51, 255], list(range(1, 256))])
def test_vrid_filter_passes_exactly_the_registered_vrids(vrids):
    v4, v6 = sockets.vrid_filter(socket.AF_INET, vrids), sockets.vrid_filter(socket.AF_INET6, vrids)
    for vrid in (1, 2, 50, 51, 52, 200, 255):
        message = forge(vrid=vrid)
        wanted = vrid in vrids
        assert bool(run_bpf(v4, ipv4(message))) == wanted
        assert bool(run_bpf(v4, ipv4(message, options=bytes(8)))) == wanted, "IHL is honoured"
        assert bool(run_bpf(v6, message)) == wanted
    assert run_bpf(v4, ipv4(b"\x31")) == 0 and run_bpf(v6, b"\x31") == 0, "too short for a VRID"
