"""Fuzzing the receive path and the state machine at more than 100 000 inputs each (issue 8).

Hypothesis draws the shape of each case (mode, version, family, a valid base advert, the router's
parameters) and a seed; the seed's fast generator derives many inputs from it, so the count stays
high and the run short. The codec is held to an independent reading of RFC 5798 7.1 / RFC 3768 7.1
written here: it accepts exactly what that reading accepts, and what it accepts carries the bytes
sent. The state machine must never raise, never let a packet take an owner's address, never answer
a stream of adverts more than once per holdoff, and keep its VIP bookkeeping consistent.
"""
import ipaddress
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vipd.vrrp import fsm, packet
from vipd.vrrp.packet import Advert, Invalid, ReceiveChecks, encode, password_bytes

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CODEC_CASES, VARIANTS_PER_CASE = 2_100, 50      # 105 000 packets
FSM_CASES, EVENTS_PER_CASE = 700, 150            # 105 000 events

ADDRESSES = {4: {"own": "198.18.0.11", "peer": "198.18.0.12", "other": "198.18.0.66"},
             6: {"own": "fe80::11", "peer": "fe80::12", "other": "fe80::66"}}
GROUPS = {4: "224.0.0.18", 6: "ff02::12"}
OTHER_GROUPS = {4: "224.0.0.5", 6: "ff02::5"}


def _sum16(data: bytes) -> int:
    """RFC 1071 ones' complement sum, written out differently from the product's."""
    if len(data) % 2:
        data += b"\0"
    total = 0
    for i in range(0, len(data), 2):
        total += (data[i] << 8) | data[i + 1]
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _pseudo(src, dst, length):
    if src.version == 4:
        return src.packed + dst.packed + bytes([0, 112]) + length.to_bytes(2, "big")
    return src.packed + dst.packed + length.to_bytes(4, "big") + bytes([0, 0, 0, 112])


def rfc_accepts(data, *, src, dst, ttl, conf) -> bool:
    """RFC 5798 7.1 (and RFC 3768 7.1 for v2), as an operator of vipd configures it: TTL 255 (or
    at least unicast_ttl from listed unicast peers), the VRRP group as destination in multicast
    mode and a unicast one otherwise, never our own address, a non-zero interval."""
    src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    if conf["peers"]:
        if src_ip not in conf["peers"] or ttl < conf["unicast_ttl"] or dst_ip.is_multicast:
            return False
    elif ttl != 255 or dst != GROUPS[dst_ip.version]:
        return False
    if src == conf["own"] or src_ip.version != dst_ip.version or len(data) < 8:
        return False
    version, kind, vrid, count = data[0] >> 4, data[0] & 15, data[1], data[3]
    if version != conf["version"] or kind != 1 or vrid != conf["vrid"]:
        return False
    if version == 2 and src_ip.version == 6:
        return False
    width = 4 if src_ip.version == 4 else 16
    if len(data) != 8 + count * width + (8 if version == 2 else 0):
        return False
    if version == 3:
        if (data[4] & 0x0F) == 0 and data[5] == 0:
            return False
        pseudo_ok = _sum16(_pseudo(src_ip, dst_ip, len(data)) + data) == 0xFFFF
        bare_ok = src_ip.version == 4 and _sum16(data) == 0xFFFF
        return pseudo_ok or bare_ok
    if _sum16(data) != 0xFFFF or data[5] == 0 or data[5] * 100 != conf["interval_cs"]:
        return False
    if data[4] != conf["auth_type"]:
        return False
    return conf["auth_type"] == 0 or data[-8:] == conf["auth_data"]


def recompute_checksum(data, src, dst, version):
    message = data[:6] + b"\0\0" + data[8:]
    src_ip, dst_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    covered = (_pseudo(src_ip, dst_ip, len(message)) if version == 3 else b"") + message
    return message[:6] + struct.pack("!H", ~_sum16(covered) & 0xFFFF) + message[8:]


def mutate(rng, base, family, version):
    """One forged variant of a valid packet: header fields, bytes, length, TTL, addresses."""
    names = ADDRESSES[family]
    data = bytearray(base)
    src, dst, ttl = names["peer"], GROUPS[family], 255
    for _ in range(rng.randint(0, 3)):
        what = rng.randrange(9)
        if what == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif what == 1 and len(data) >= 6:
            data[rng.choice((0, 1, 2, 3, 4, 5))] = rng.choice((0, 1, 0x21, 0x31, 0x32, 0x41, 51, 52, 255))
        elif what == 2:
            del data[rng.randrange(len(data) + 1):]
        elif what == 3:
            data += bytes(rng.choice((1, 4, 8, 16)))
        elif what == 4:
            ttl = rng.choice((0, 1, 63, 64, 128, 249, 250, 251, 254, 255))
        elif what == 5:
            dst = rng.choice((GROUPS[family], OTHER_GROUPS[family], names["own"], names["peer"]))
        elif what == 6:
            src = rng.choice((names["own"], names["peer"], names["other"]))
        elif what == 7 and len(data) >= 6:
            data[4], data[5] = rng.choice(((0, 0), (0xF0, 0), (0, 1), (0x0F, 0xFF), (0, 100), (0, 3)))
        elif what == 8 and len(data) > 3:
            data[3] = rng.choice((0, 1, 2, 255))
    data = bytes(data)
    if len(data) >= 8 and rng.random() < 0.6:
        data = recompute_checksum(data, src, dst, version)
    return data, src, dst, ttl


codec_cases = st.fixed_dictionaries({
    "family": st.sampled_from([4, 6]),
    "version": st.sampled_from([2, 3]),
    "mode": st.sampled_from(["multicast", "unicast", "routed"]),
    "vrid": st.sampled_from([1, 51, 255]),
    "priority": st.sampled_from([0, 1, 100, 254, 255]),
    "count": st.sampled_from([0, 1, 2, 16, 255]),
    "password": st.sampled_from([None, "s3cret"]),
    "seed": st.integers(0, 2**32 - 1),
})


@settings(max_examples=CODEC_CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=codec_cases)
def test_fuzz_receive_checks_accept_exactly_what_rfc_5798_accepts(case):
    family, version = case["family"], case["version"]
    if version == 2:
        family = 4
    names = ADDRESSES[family]
    peers = frozenset() if case["mode"] == "multicast" else frozenset({ipaddress.ip_address(names["peer"])})
    password = case["password"] if version == 2 else None
    conf = {"version": version, "vrid": case["vrid"], "peers": peers, "own": names["own"],
            "unicast_ttl": 250 if case["mode"] == "routed" else 255, "interval_cs": 100,
            "auth_type": 1 if password else 0, "auth_data": password_bytes(password) if password else b""}
    checks = ReceiveChecks(vrid=conf["vrid"], version=version, peers=peers, auth_type=conf["auth_type"],
                           auth_data=conf["auth_data"], interval_cs=100 if version == 2 else None,
                           unicast_ttl=conf["unicast_ttl"])
    prefix = "198.18.1." if family == 4 else "2001:db8::"
    base = encode(Advert(version, case["vrid"], case["priority"], 100,
                         tuple(f"{prefix}{i + 1}" for i in range(case["count"])),
                         conf["auth_type"], conf["auth_data"]),
                  src=names["peer"], dst=GROUPS[family])
    rng = random.Random(case["seed"])
    for _ in range(VARIANTS_PER_CASE):
        data, src, dst, ttl = mutate(rng, base, family, version)
        result = checks.check(data, src=src, dst=dst, ttl=ttl, own=names["own"])
        assert isinstance(result, (Advert, Invalid))
        expected = rfc_accepts(data, src=src, dst=dst, ttl=ttl, conf=conf)
        assert isinstance(result, Advert) == expected, (data.hex(), src, dst, ttl, result)
        if expected:
            assert (result.version, result.vrid, result.priority) == (data[0] >> 4, data[1], data[2])
            assert len(result.addresses) == data[3] and result.interval_cs > 0
        # The instance-free codec agrees on every packet it accepts.
        decoded = packet.decode(data, src=src, dst=dst, ttl=ttl)
        if expected:
            assert decoded == result


# --- the state machine ----------------------------------------------------------------------------------

OWN, HIGHER, LOWER = "198.18.0.11", "198.18.0.200", "198.18.0.2"

router_cases = st.fixed_dictionaries({
    "priority": st.sampled_from([1, 100, 200, 254, 255, 255]),
    "version": st.sampled_from([2, 3]),
    "interval": st.sampled_from([0.01, 0.1, 1.0]),
    "preempt": st.booleans(),
    "preempt_delay": st.sampled_from([0.0, 0.5]),
    "handover_timeout": st.sampled_from([0.0, 1.0]),
    "seed": st.integers(0, 2**32 - 1),
})


def random_event(rng, interval):
    roll = rng.random()
    if roll < 0.70:
        priority = rng.choice((0, 1, 99, 100, 101, 200, 254, 255, rng.randrange(256)))
        return fsm.AdvertReceived(rng.choice((HIGHER, LOWER)), priority,
                                  rng.choice((interval, 0.01, 1.0, 40.95)))
    if roll < 0.88:
        return fsm.Timeout()
    if roll < 0.94:
        return fsm.PriorityChanged(rng.choice((1, 100, 254, 255)))
    if roll < 0.97:
        return fsm.FaultRaised("eth0")
    if roll < 0.995:
        return fsm.FaultCleared()
    return fsm.Shutdown(handover=rng.random() < 0.5, drain=rng.random() < 0.5)


@settings(max_examples=FSM_CASES, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=router_cases)
def test_fuzz_state_machine_under_any_advert_stream(case):
    params = fsm.RouterParams(vrid=51, version=case["version"], priority=case["priority"],
                              advert_interval=case["interval"], primary_address=OWN, preempt=case["preempt"],
                              preempt_delay=case["preempt_delay"], handover_timeout=case["handover_timeout"])
    router = fsm.VrrpRouter(params)
    holdoff = max(params.answer_holdoff, params.advert_interval)
    rng = random.Random(case["seed"])
    book = {"holding": False, "quiet": False}
    answers: list[float] = []

    def handle(event, now):
        actions = router.handle(event, now)
        for action in actions:
            if isinstance(action, fsm.AddVips):
                assert not book["holding"]
                book["holding"] = True
            elif isinstance(action, (fsm.RemoveVips, fsm.HoldVipsQuietly)):
                assert book["holding"]
                book["holding"], book["quiet"] = False, isinstance(action, fsm.HoldVipsQuietly)
            elif isinstance(action, fsm.ReleaseVips):
                assert book["quiet"]
                book["quiet"] = False
            elif isinstance(action, fsm.StateChanged):
                answers.clear()
        assert book["holding"] == (router.state is fsm.State.MASTER)
        deadline = router.next_deadline()
        assert deadline is None or deadline > now
        return actions

    now = 0.0
    handle(fsm.Startup(), now)
    for _ in range(EVENTS_PER_CASE):
        event = random_event(rng, case["interval"])
        deadline = router.next_deadline()
        if isinstance(event, fsm.Timeout) and deadline is not None:
            now = max(now, deadline)
        else:
            now += rng.choice((0.0, 0.0001, 0.001, case["interval"] / 3, case["interval"]))
        if isinstance(event, fsm.AdvertReceived):
            handle(fsm.Timeout(), now)   # timers due now first: what follows is the advert's doing
            was_master = router.state is fsm.State.MASTER and not router.handing_over
            owner = was_master and router.effective_priority == 255
            actions = handle(event, now)
            if owner:
                assert router.state is fsm.State.MASTER, (event, actions)
            if was_master and router.state is fsm.State.MASTER and actions:
                answers.append(now)
                if len(answers) > 1:
                    assert answers[-1] - answers[-2] >= holdoff - 1e-9, (answers[-2:], actions)
        else:
            handle(event, now)
        if router.stopped:
            break
