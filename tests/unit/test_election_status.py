"""An election in the status document as lbctl's table and the Prometheus metrics show it."""
from vipd.control.lbctl import render_status
from vipd.control.metrics import families_from_status

DOCUMENT = {
    "node": "cp-2", "vrrp": [], "frontends": [],
    "elections": [{"name": "api", "state": "FOLLOWER", "holder": "cp-1", "virtual_ips": ["198.18.0.100/24"],
                   "maintenance": True, "since": "2026-11-30T00:00:00Z", "reason": "maintenance",
                   "priority": 100, "effective_priority": 100, "fence_remaining": 1.5,
                   "keepalive_failures": 2, "transitions": 3}],
}


def test_lbctl_shows_an_election_row():
    lines = render_status(DOCUMENT).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("ELECTION"))
    assert lines[header].split() == ["ELECTION", "STATE", "HOLDER", "PRIO", "VIPS", "SINCE", "REASON"]
    assert lines[header + 1].split() == ["api", "FOLLOWER", "(maint)", "cp-1", "100", "198.18.0.100/24",
                                         "2026-11-30T00:00:00Z", "maintenance"]


def test_metrics_tell_leader_state_and_fence():
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in families_from_status(DOCUMENT) for s in family.samples}
    assert samples[("vipd_election_leader", (("name", "api"),))] == 0
    assert samples[("vipd_election_state", (("name", "api"), ("state", "FOLLOWER")))] == 1
    assert samples[("vipd_election_state", (("name", "api"), ("state", "LEADER")))] == 0
    assert samples[("vipd_election_fence_remaining_seconds", (("name", "api"),))] == 1.5
    assert samples[("vipd_election_keepalive_failures_total", (("name", "api"),))] == 2
    assert samples[("vipd_status_problems", ())] == 0
