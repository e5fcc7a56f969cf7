"""Backup backends and slow start: which backends may take a connection (the tiers of
lbproxy.balance, and the checker's summary of them), and how a backend that came up ramps its
weight, in every algorithm, on a fake clock."""
from __future__ import annotations

import collections
import ipaddress
import logging
import tomllib

import pytest
from support import GOOD_CONFIG

from lbproxy.balance import (
    NOT_RAMPING,
    RAMP_SCALE,
    Balance,
    Candidate,
    Tier,
    make_balancer,
    ramp_weight,
    tier_of,
)
from lbproxy.config import BackendConfig, FrontendConfig, HealthConfig
from lbproxy.health import BackendState
from lbproxy.healthcheck import HealthChecker
from lbproxy.status import frontend_status
from vipd.config import ConfigError, parse

NONE_TRIED: frozenset[int] = frozenset()


def client_ips(count: int) -> list[str]:
    base = int(ipaddress.IPv4Address("198.18.0.0"))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(count)]


def picked(balancer, pool, count: int = 400) -> collections.Counter:
    return collections.Counter(balancer.pick(pool, NONE_TRIED, ip).index for ip in client_ips(count))


# ---------------------------------------------------------------- tiers


def test_tier_order_is_primaries_backups_then_the_down_ones():
    assert tier_of(BackendState.UP, False) is Tier.PRIMARY
    assert tier_of(BackendState.UP, True) is Tier.BACKUP
    assert tier_of(BackendState.DOWN, False) is Tier.DOWN_PRIMARY
    assert tier_of(BackendState.DOWN, True) is Tier.DOWN_BACKUP
    assert tier_of(BackendState.DRAIN, False) is None and tier_of(BackendState.DRAIN, True) is None


@pytest.mark.parametrize("algorithm", list(Balance))
def test_backups_take_connections_only_while_no_primary_is_up(algorithm):
    pool = [Candidate(0, 1, "up"), Candidate(1, 1, "up"),
            Candidate(2, 1, "up", backup=True), Candidate(3, 1, "up", backup=True)]
    balancer = make_balancer(algorithm, pool)
    assert set(picked(balancer, pool)) == {0, 1}
    pool[0].state = "down"
    assert set(picked(balancer, pool)) == {1}, "one primary up keeps the backups out"
    pool[1].state = "drain"            # drained primaries do not count as up
    assert set(picked(balancer, pool)) == {2, 3}, "the backups share the load"
    assert balancer.all_down is False
    pool[1].state = "up"               # back the moment one primary is up
    assert set(picked(balancer, pool)) == {1}
    # A primary that is up but full (or already tried) still keeps the backups out.
    pool[1].max_connections = pool[1].active = 1
    assert balancer.pick(pool, NONE_TRIED, "198.18.0.1") is None
    assert balancer.pick(pool, {1}, "198.18.0.1") is None
    assert balancer.all_down is False


@pytest.mark.parametrize("algorithm", list(Balance))
def test_with_nothing_up_down_primaries_come_before_down_backups(algorithm):
    pool = [Candidate(0, 1, "down"), Candidate(1, 1, "drain"),
            Candidate(2, 1, "down", backup=True), Candidate(3, 1, "up", backup=True)]
    balancer = make_balancer(algorithm, pool)
    assert set(picked(balancer, pool)) == {3}
    pool[3].state = "down"
    assert set(picked(balancer, pool)) == {0}
    assert balancer.all_down is True
    pool[0].state = "drain"
    assert set(picked(balancer, pool)) == {2, 3}
    assert balancer.pick(pool, {2, 3}, "198.18.0.1") is None


@pytest.mark.parametrize("algorithm", list(Balance))
def test_backups_share_the_load_by_their_weights(algorithm):
    pool = [Candidate(0, 5, "down"), Candidate(1, 3, "up", backup=True), Candidate(2, 1, "up", backup=True)]
    balancer = make_balancer(algorithm, pool)
    counts = picked(balancer, pool, 8000)
    assert set(counts) == {1, 2}
    assert abs(counts[1] / 8000 - 0.75) < 0.03, counts


# ---------------------------------------------------------------- the checker's summary


P1, P2, BK = "127.0.0.1:8081", "127.0.0.1:8082", "127.0.0.1:8089"


def frontend(*backends: BackendConfig, slow_start: float = 0.0) -> FrontendConfig:
    return FrontendConfig(name="api", listen="127.0.0.1:6443", listen_host="127.0.0.1", listen_port=6443,
                          backends=backends, health=HealthConfig(rise=2, fall=2), slow_start=slow_start)


def backend(address: str, weight: int = 1, backup: bool = False) -> BackendConfig:
    return BackendConfig(address, "127.0.0.1", int(address.rsplit(":", 1)[1]), weight, 0, backup)


def fail(checker: HealthChecker, address: str, times: int = 2) -> None:
    for _ in range(times):
        checker.report_connect_failure(address, "connection refused")


def recover(checker: HealthChecker, address: str) -> None:
    bh = checker.backends[address]
    for _ in range(bh.counter.rise):
        checker._record(bh, True, "connected")


def test_only_backups_up_is_serving_on_backups_not_all_down(caplog):
    caplog.set_level(logging.INFO)
    seen = []
    checker = HealthChecker(frontend(backend(P1), backend(P2), backend(BK, backup=True)),
                            lambda *event: seen.append((event[1], event[2], checker.all_down, checker.using_backups)))
    assert (checker.all_down, checker.using_backups) == (False, False)
    fail(checker, P1)
    checker.drain(P2)
    assert seen == [(P1, "down", False, False), (P2, "drain", False, True)]
    fail(checker, BK)
    assert (checker.all_down, checker.using_backups) == (True, False)
    recover(checker, BK)
    assert (checker.all_down, checker.using_backups) == (False, True)
    checker.enable(P2)
    assert (checker.all_down, checker.using_backups) == (False, False)
    messages = [r.getMessage() for r in caplog.records if r.name == "lbproxy.health"]
    assert messages.count("frontend api: no primary backend is up; the backups take new connections") == 2
    assert messages.count("frontend api: a primary backend is up again; the backups stand by") == 1


def test_a_frontend_of_backups_only_serves_from_them():
    checker = HealthChecker(frontend(backend(BK, backup=True)), lambda *event: None)
    assert (checker.all_down, checker.using_backups) == (False, True)


def test_status_shows_backup_and_using_backups():
    config = frontend(backend(P1), backend(BK, backup=True))
    checker = HealthChecker(config, lambda *event: None)
    fail(checker, P1)
    doc = frontend_status(config, {}, checker.status(), checker.all_down, True, 1, checker.using_backups)
    assert [(b["address"], b["backup"], b["state"]) for b in doc["backends"]] == [
        (P1, False, "down"), (BK, True, "up")]
    assert (doc["using_backups"], doc["all_down"], doc["serving"]) == (True, False, True)


# ---------------------------------------------------------------- the ramp


@pytest.mark.parametrize("weight", [1, 3, 256])
def test_ramp_is_linear_from_almost_nothing_to_the_full_weight(weight):
    full = weight * RAMP_SCALE
    assert ramp_weight(weight, 0.0, 10.0) == 1
    assert ramp_weight(weight, -5.0, 10.0) == 1, "a clock read just before `since` is the start"
    assert ramp_weight(weight, 2.5, 10.0) == full // 4
    assert ramp_weight(weight, 5.0, 10.0) == full // 2
    assert ramp_weight(weight, 9.9, 10.0) == round(full * 0.99)
    assert ramp_weight(weight, 10.0, 10.0) == full
    assert ramp_weight(weight, 1e6, 10.0) == full
    assert ramp_weight(weight, 0.0, 0.0) == full, "slow start off"
    assert ramp_weight(weight, float("inf"), 10.0) == full, "up from the start: never ramps"
    steps = [ramp_weight(weight, t / 10, 10.0) for t in range(101)]
    assert steps[:2] == [1, max(1, round(full / 100))]
    assert all(a < b for a, b in zip(steps[1:], steps[2:])), "rises at every step"
    assert all(abs(w - full * t / 100) <= 0.5 for t, w in enumerate(steps[1:], start=1)), "on the line"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# (seconds since B came up, of a 10 s slow start) -> B's share against an equal, settled A.
RAMP_POINTS = [(0.0, 1 / 101), (1.0, 0.1 / 1.1), (2.5, 0.25 / 1.25), (5.0, 0.5 / 1.5),
               (7.5, 0.75 / 1.75), (10.0, 0.5), (30.0, 0.5)]


@pytest.mark.parametrize("algorithm", list(Balance))
def test_a_recovered_backend_ramps_up_in_every_algorithm(algorithm):
    clock = FakeClock()
    pool = [Candidate(0, 1, "up"), Candidate(1, 1, "up", since=clock.now)]
    balancer = make_balancer(algorithm, pool, slow_start=10.0, clock=clock)
    start = clock.now
    # Deterministic algorithms hit the share to a pick; random2 and source_hash by sampling
    # (binomial sd at most 0.0056 over 8000 picks).
    tolerance = 0.004 if algorithm in ("round_robin", "least_conn") else 0.02
    for elapsed, share in RAMP_POINTS:
        clock.now = start + elapsed
        counts = picked(balancer, pool, 8000)
        assert abs(counts[1] / 8000 - share) <= tolerance, (elapsed, counts)


@pytest.mark.parametrize("algorithm", ["least_conn", "random2"])
def test_load_aware_algorithms_fill_a_ramping_backend_in_proportion(algorithm):
    clock = FakeClock()
    pool = [Candidate(0, 2, "up"), Candidate(1, 2, "up", since=clock.now - 2.5)]  # 25 % of 10 s
    balancer = make_balancer(algorithm, pool, slow_start=10.0, clock=clock)
    for _ in range(1000):
        balancer.pick(pool, NONE_TRIED, "198.18.0.1").active += 1
    # Held connections: B carries a quarter of A's load (least_conn to the connection).
    ratio = pool[1].active / pool[0].active
    assert abs(ratio - 0.25) < (0.01 if algorithm == "least_conn" else 0.05), ratio


def test_source_hash_ramp_only_moves_clients_onto_the_recovering_backend():
    clock = FakeClock()
    pool = [Candidate(0, 1, "up"), Candidate(1, 1, "up"), Candidate(2, 1, "up", since=clock.now)]
    balancer = make_balancer("source_hash", pool, slow_start=10.0, clock=clock)
    ips = client_ips(6000)
    start = clock.now
    before = None
    for elapsed in (0.0, 2.5, 5.0, 10.0):
        clock.now = start + elapsed
        now = {ip: balancer.pick(pool, NONE_TRIED, ip).index for ip in ips}
        if before is not None:
            moved = [ip for ip in ips if now[ip] != before[ip]]
            assert moved and all(now[ip] == 2 for ip in moved)
        before = now
    settled = make_balancer("source_hash", [Candidate(i, 1, "up") for i in range(3)])
    assert before == {ip: settled.pick(pool, NONE_TRIED, ip).index for ip in ips}


def test_backends_up_from_the_start_never_ramp():
    clock = FakeClock()
    pool = [Candidate(0, 1, "up"), Candidate(1, 3, "up", since=NOT_RAMPING)]
    balancer = make_balancer("round_robin", pool, slow_start=3600.0, clock=clock)
    assert picked(balancer, pool, 400) == {0: 100, 1: 300}


def test_checker_ramps_from_recovery_enable_and_reload_but_not_from_start(monkeypatch):
    now = [500.0]
    monkeypatch.setattr("lbproxy.healthcheck.time.monotonic", lambda: now[0])
    checker = HealthChecker(frontend(backend(P1, weight=4), backend(P2, weight=4), slow_start=8.0),
                            lambda *event: None)
    assert all(bh.up_since is None for bh in checker.backends.values())
    fail(checker, P1)
    assert checker.backends[P1].up_since is None
    now[0] = 510.0
    recover(checker, P1)
    assert checker.backends[P1].up_since == 510.0
    checker.drain(P2)
    checker.enable(P2)
    assert checker.backends[P2].up_since == 510.0
    now[0] = 512.0
    by_address = {b["address"]: b for b in checker.status()}
    assert (by_address[P1]["effective_weight"], by_address[P1]["slow_start_remaining"]) == (1.0, 6.0)
    now[0] = 518.0
    by_address = {b["address"]: b for b in checker.status()}
    assert (by_address[P1]["effective_weight"], by_address[P1]["slow_start_remaining"]) == (4.0, 0.0)
    # A weight change is no recovery; weight 0 -> n is (the backend was out: state drain).
    checker.set_weight(P1, 2)
    assert checker.backends[P1].up_since == 510.0
    checker.set_weight(P1, 0)
    assert checker.backends[P1].up_since is None
    now[0] = 520.0
    checker.set_weight(P1, None)
    assert checker.backends[P1].up_since == 520.0
    checker.update(frontend(backend(P1, weight=4), backend(P2, weight=4), backend(BK), slow_start=8.0))
    assert checker.backends[BK].up_since == 520.0 and checker.backends[P2].up_since == 510.0


# ---------------------------------------------------------------- config


def config_with(frontend_lines: str = "", backend_lines: str = "") -> str:
    text = GOOD_CONFIG.replace('listen = "0.0.0.0:6443"\n', f'listen = "0.0.0.0:6443"\n{frontend_lines}\n')
    return text + backend_lines + "\n"


def test_backup_and_slow_start_parse_with_defaults_off():
    plain = parse(tomllib.loads(config_with()), "F.toml").frontends[0]
    assert plain.slow_start == 0.0 and plain.backends[0].backup is False
    cfg = parse(tomllib.loads(config_with("slow_start = 30", "  backup = true")), "F.toml").frontends[0]
    assert cfg.slow_start == 30.0 and cfg.backends[0].backup is True


@pytest.mark.parametrize("frontend_lines, backend_lines, problem", [
    ("slow_start = -1", "", "F.toml: frontend[0].slow_start: must be 0..3600 seconds, got -1.0"),
    ('slow_start = "30s"', "", "F.toml: frontend[0].slow_start: must be float, got '30s'"),
    ("", '  backup = "yes"', "F.toml: frontend[0].backend[0].backup: must be bool, got 'yes'"),
    ("", '  slowstart = 30', "F.toml: frontend[0].backend[0].slowstart: unknown key (HAProxy's name; "
                             "vipd: slow_start in the [[frontend]])"),
])
def test_bad_backup_and_slow_start_are_refused(frontend_lines, backend_lines, problem):
    with pytest.raises(ConfigError) as caught:
        parse(tomllib.loads(config_with(frontend_lines, backend_lines)), "F.toml")
    assert problem in caught.value.problems


def test_lbctl_table_marks_backups_the_backup_mode_and_the_ramp():
    from vipd.control.lbctl import render_status

    def row(address, weight, effective, backup=False):
        return {"address": address, "state": "up", "weight": weight, "effective_weight": effective,
                "backup": backup, "active_connections": 0, "total_connections": 0, "failed_connections": 0}
    document = {"node": "edge-1", "vrrp": [], "frontends": [{
        "name": "api", "listen": "0.0.0.0:6443", "active_connections": 0, "using_backups": True,
        "backends": [row("198.18.0.21:6443", 4, 1.0), row("198.18.0.29:6443", 1, 1.0, backup=True)]}]}
    lines = render_status(document).splitlines()
    assert lines[2].endswith("ON BACKUPS (no primary up)")
    assert lines[4].split()[:3] == ["198.18.0.21:6443", "up", "4"] and "(25%)" in lines[4]
    assert lines[5].split()[:4] == ["198.18.0.29:6443", "(backup)", "up", "1"] and "%" not in lines[5]
