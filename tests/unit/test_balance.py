import collections
import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lbproxy.balance import Balance, Candidate, make_balancer

NONE_TRIED: frozenset[int] = frozenset()


def pool_of(weights, states=None, active=None, max_connections=None):
    n = len(weights)
    states = states or ["up"] * n
    active = active or [0] * n
    max_connections = max_connections or [0] * n
    return [Candidate(i, weights[i], states[i], active[i], max_connections[i]) for i in range(n)]


def client_ips(count):
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(count)]


def shares(counts, total):
    return {k: v / total for k, v in counts.items()}


def test_round_robin_is_nginx_smooth_weighted_sequence():
    pool = pool_of([5, 1, 1])
    balancer = make_balancer("round_robin", pool)
    picks = "".join("abc"[balancer.pick(pool, NONE_TRIED, "198.18.0.1").index] for _ in range(14))
    assert picks == "aabacaa" * 2


def test_round_robin_skips_unusable_backends_without_losing_rotation():
    pool = pool_of([1, 1, 1], states=["up", "drain", "up"])
    balancer = make_balancer("round_robin", pool)
    picks = [balancer.pick(pool, NONE_TRIED, "198.18.0.1").index for _ in range(6)]
    assert picks == [0, 2, 0, 2, 0, 2]


@pytest.mark.parametrize("algorithm", list(Balance))
def test_every_algorithm_respects_weights_without_load(algorithm):
    weights = [3, 2, 1]
    pool = pool_of(weights)
    balancer = make_balancer(algorithm, pool)
    total = 12_000
    counts = collections.Counter(
        balancer.pick(pool, NONE_TRIED, ip).index for ip in client_ips(total))
    got = shares(counts, total)
    for index, weight in enumerate(weights):
        expected = weight / sum(weights)
        assert abs(got[index] - expected) < 0.03, (algorithm, got)


@pytest.mark.parametrize("algorithm", ["least_conn", "random2"])
def test_load_aware_algorithms_fill_backends_in_weight_proportion(algorithm):
    weights = [4, 2, 1, 1]
    pool = pool_of(weights)
    balancer = make_balancer(algorithm, pool)
    for _ in range(800):
        balancer.pick(pool, NONE_TRIED, "198.18.0.1").active += 1
    per_weight = [c.active / c.weight for c in pool]
    if algorithm == "least_conn":
        assert max(per_weight) - min(per_weight) <= 1
    else:
        assert max(per_weight) / min(per_weight) < 1.25, per_weight


def test_least_conn_follows_load():
    pool = pool_of([1, 1, 1], active=[10, 2, 5])
    balancer = make_balancer("least_conn", pool)
    assert balancer.pick(pool, NONE_TRIED, "198.18.0.1").index == 1
    pool[1].active = 20
    assert balancer.pick(pool, NONE_TRIED, "198.18.0.1").index == 2
    # Weighted: 10/5 == 2/1, so both stay in play and 5/1 never is.
    weighted = pool_of([5, 1, 1], active=[10, 2, 5])
    balancer = make_balancer("least_conn", weighted)
    picked = {balancer.pick(weighted, NONE_TRIED, "198.18.0.1").index for _ in range(12)}
    assert picked == {0, 1}


def test_least_conn_breaks_ties_round_robin():
    pool = pool_of([1, 1, 1], active=[3, 3, 3])
    balancer = make_balancer("least_conn", pool)
    picks = [balancer.pick(pool, NONE_TRIED, "198.18.0.1").index for _ in range(6)]
    assert sorted(picks[:3]) == [0, 1, 2] and picks[3:] == picks[:3]


def test_random2_prefers_less_loaded():
    pool = pool_of([1, 1, 1], active=[0, 50, 100])
    balancer = make_balancer("random2", pool)
    counts = collections.Counter(
        balancer.pick(pool, NONE_TRIED, "198.18.0.1").index for _ in range(3000))
    assert counts[2] == 0               # the most loaded loses every pair it is drawn into
    assert counts[0] > counts[1]
    # Two distinct draws out of three: 2/3 of the pairs hold it (sd 0.009; draws with replacement: 5/9).
    assert 0.62 < counts[0] / 3000 < 0.72


def test_source_hash_is_sticky_and_deterministic_across_instances():
    pool = pool_of([1, 1, 1, 1, 1])
    first = make_balancer("source_hash", pool)
    second = make_balancer("source_hash", pool)
    ips = client_ips(200) + ["2001:db8::1", "2001:db8::2", "2001:db8::abcd"]
    for ip in ips:
        chosen = first.pick(pool, NONE_TRIED, ip).index
        assert all(first.pick(pool, NONE_TRIED, ip).index == chosen for _ in range(3))
        assert second.pick(pool, NONE_TRIED, ip).index == chosen


def test_source_hash_agrees_between_processes():
    """Workers are separate processes: the mapping must not depend on Python's hash seed."""
    ips = client_ips(50)
    pool = pool_of([1, 2, 1, 3])
    balancer = make_balancer("source_hash", pool)
    here = [balancer.pick(pool, NONE_TRIED, ip).index for ip in ips]
    script = (
        "import json, sys\n"
        "from lbproxy.balance import Candidate, make_balancer\n"
        "pool = [Candidate(i, w, 'up') for i, w in enumerate([1, 2, 1, 3])]\n"
        "b = make_balancer('source_hash', pool)\n"
        "print(json.dumps([b.pick(pool, frozenset(), ip).index for ip in json.loads(sys.argv[1])]))\n")
    for seed in ("1", "2"):
        done = subprocess.run([sys.executable, "-c", script, json.dumps(ips)], capture_output=True,
                              text=True, timeout=60, env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"},
                              cwd=Path(__file__).resolve().parents[2])
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == here


def test_source_hash_moves_only_the_failed_backends_clients():
    pool = pool_of([1, 1, 1, 1, 1])
    balancer = make_balancer("source_hash", pool)
    ips = client_ips(10_000)
    before = {ip: balancer.pick(pool, NONE_TRIED, ip).index for ip in ips}
    pool[2].state = "down"
    after = {ip: balancer.pick(pool, NONE_TRIED, ip).index for ip in ips}
    moved = [ip for ip in ips if before[ip] != after[ip]]
    assert all(before[ip] == 2 for ip in moved)
    assert all(after[ip] != 2 for ip in ips)
    assert 0.16 < len(moved) / len(ips) < 0.24
    # The failed backend's clients spread over the survivors instead of piling onto one.
    spread = collections.Counter(after[ip] for ip in moved)
    assert set(spread) == {0, 1, 3, 4}
    assert max(spread.values()) < 2 * min(spread.values())
    pool[2].state = "up"
    assert {ip: balancer.pick(pool, NONE_TRIED, ip).index for ip in ips} == before


def test_source_hash_walks_on_when_the_hashed_backend_is_tried_or_full():
    pool = pool_of([1, 1, 1, 1], max_connections=[5, 5, 5, 5])
    balancer = make_balancer("source_hash", pool)
    ip = "198.18.7.7"
    first = balancer.pick(pool, NONE_TRIED, ip).index
    second = balancer.pick(pool, {first}, ip).index
    assert second != first
    pool[first].active = 5
    assert balancer.pick(pool, NONE_TRIED, ip).index == second
    third = balancer.pick(pool, {first, second}, ip).index
    assert third not in (first, second)


@pytest.mark.parametrize("algorithm", list(Balance))
def test_skips_drain_full_and_tried(algorithm):
    pool = pool_of([1, 1, 1, 1], states=["drain", "up", "up", "up"],
                   active=[0, 0, 7, 0], max_connections=[0, 0, 7, 0])
    balancer = make_balancer(algorithm, pool)
    for ip in client_ips(300):
        assert balancer.pick(pool, {1}, ip).index == 3
    assert balancer.pick(pool, {1, 3}, "198.18.0.1") is None
    assert balancer.all_down is False


@pytest.mark.parametrize("algorithm", list(Balance))
def test_falls_back_to_down_backends_only_when_none_is_up(algorithm):
    pool = pool_of([1, 1, 1], states=["down", "up", "down"])
    balancer = make_balancer(algorithm, pool)
    for ip in client_ips(100):
        assert balancer.pick(pool, NONE_TRIED, ip).index == 1
        assert balancer.all_down is False
    pool[1].state = "down"
    picked = {balancer.pick(pool, NONE_TRIED, ip).index for ip in client_ips(300)}
    assert balancer.all_down is True
    assert picked == {0, 1, 2}
    # A drained backend stays out even in the fallback.
    pool[1].state = "drain"
    assert {balancer.pick(pool, NONE_TRIED, ip).index for ip in client_ips(300)} == {0, 2}
    assert balancer.pick(pool, {0, 2}, "198.18.0.1") is None
    assert balancer.all_down is True
    # One up backend that is unusable right now does not send traffic to the down ones.
    pool[1].state = "up"
    pool[1].max_connections = pool[1].active = 1
    assert balancer.pick(pool, NONE_TRIED, "198.18.0.1") is None
    assert balancer.all_down is False


@pytest.mark.parametrize("algorithm", list(Balance))
def test_nothing_left_returns_none(algorithm):
    pool = pool_of([1, 2, 3], states=["drain", "up", "down"])
    balancer = make_balancer(algorithm, pool)
    assert balancer.pick(pool, {1, 2}, "198.18.0.1") is None
    assert balancer.pick([], NONE_TRIED, "198.18.0.1") is None
    drained = pool_of([1, 1], states=["drain", "drain"])
    assert make_balancer(algorithm, drained).pick(drained, NONE_TRIED, "198.18.0.1") is None


def test_every_algorithm_has_its_balancer():
    for algorithm in Balance:
        assert make_balancer(algorithm, pool_of([1])).algorithm == algorithm


def test_unknown_algorithm_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown balance algorithm 'fastest'"):
        make_balancer("fastest", pool_of([1]))


candidate_specs = st.lists(
    st.tuples(st.integers(1, 1000), st.sampled_from(["up", "down", "drain"]),
              st.integers(0, 20), st.integers(0, 20), st.booleans()),
    min_size=0, max_size=12)


@settings(max_examples=300, deadline=None)
@given(algorithm=st.sampled_from(list(Balance)), rounds=st.lists(
    st.tuples(candidate_specs, st.sets(st.integers(0, 11)), st.ip_addresses().map(str)),
    min_size=1, max_size=5))
def test_property_picks_only_usable_and_always_finds_one(algorithm, rounds):
    balancer = make_balancer(algorithm, [Candidate(i, 1, "up") for i in range(12)])
    # The tiers spelled out: up primaries, up backups, down primaries, down backups.
    rank = {("up", False): 0, ("up", True): 1, ("down", False): 2, ("down", True): 3}
    for specs, tried, ip in rounds:
        pool = [Candidate(i, w, s, a, m, b) for i, (w, s, a, m, b) in enumerate(specs)]
        usable = [c for c in pool if c.state != "drain" and c.index not in tried
                  and not (c.max_connections and c.active >= c.max_connections)]
        best = min((rank[c.state, c.backup] for c in pool if c.state != "drain"), default=4)
        usable_tier = [c for c in usable if rank[c.state, c.backup] == best]
        chosen = balancer.pick(pool, frozenset(tried), ip)
        assert balancer.all_down is (best >= 2)
        if usable_tier:
            assert chosen is not None
            assert chosen in usable_tier
        else:
            assert chosen is None
