"""`[[election]]` against a real 3-member etcd and real `vipd run` candidates (vipd.lab.etcdlab):
one holder; no dual holder when it is killed, cut off from etcd or frozen; nobody without a quorum;
hand-overs (preemption, maintenance, stop) without a failed request."""
from __future__ import annotations

import base64
import json
import signal
import time

import pytest
from support import require_binary, wait_until

from vipd.lab import connclient
from vipd.lab.etcdlab import (
    CANDIDATES,
    ETCD,
    TTL,
    VIP,
    ElectionLab,
    start_client,
    stop_all,
)


@pytest.fixture
def cluster(lab, tmp_path):
    require_binary("etcd", "etcd-server")
    require_binary("etcdctl", "etcd-client")
    c = ElectionLab(lab, tmp_path / "election")
    for name in ETCD:
        c.start_etcd(name)
    assert wait_until(c.etcd_healthy, 20, "etcd cluster healthy")
    try:
        yield c
    finally:
        stop_all(c)


def leader_is(c: ElectionLab, name: str) -> bool:
    return c.leads(name)


@pytest.mark.timeout(150)
def test_one_holder_and_no_dual_holder_when_it_is_killed_cut_off_or_frozen(cluster):
    c = cluster
    c.start("c1", 200)
    c.start("c2", 100)
    c.start("c3", 50)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 leads"), c.logs()
    assert wait_until(lambda: all(c.election(n).get("holder") == "c1" for n in CANDIDATES), 10, "all see c1"), c.logs()
    follower = c.election("c2")
    assert (follower["state"], follower["reason"], follower["virtual_ips"]) == ("FOLLOWER", "held by c1", [f"{VIP}/24"])
    assert "api" in c.lbctl("c1", "status").stdout and "LEADER" in c.lbctl("c1", "status").stdout

    # SIGKILL: the kernel lifetime drops the dead holder's VIP before the lease can expire
    killed = time.time()
    c.lab.stop(c.vipd["c1"], signal.SIGKILL)
    assert wait_until(lambda: c.holders() == ["c2"], TTL + 2, "c2 holds after the kill"), c.logs()
    took = c.added_at("c2", killed) - killed
    assert c.removed_at("c1", killed) < c.added_at("c2", killed)
    assert took <= TTL + 2 and c.overlap(killed, time.time()) == 0.0
    print(f"SIGKILL: takeover {took:.2f}s, dead holder's VIP gone after {c.removed_at('c1', killed) - killed:.2f}s")

    # the higher priority comes back and takes over by hand-over
    c.start("c1", 200)
    assert wait_until(lambda: leader_is(c, "c1"), 15, "c1 preempts"), c.logs()
    assert wait_until(lambda: c.election("c2").get("state") == "FOLLOWER", 5, "c2 follows"), c.logs()

    # cut off from every etcd member: steps down (fence) before anyone else can win
    cut = time.time()
    c.cut_from_etcd("c1", True)
    try:
        assert wait_until(lambda: c.holders() == ["c2"], TTL + 3, "c2 holds after the cut"), c.logs()
        assert c.removed_at("c1", cut) < c.added_at("c2", cut)
        assert c.overlap(cut, time.time()) == 0.0
        print(f"cut off: holder stepped down after {c.removed_at('c1', cut) - cut:.2f}s, "
              f"successor after {c.added_at('c2', cut) - cut:.2f}s")
        faulted = c.election("c1")
        assert faulted["state"] == "FAULT" and faulted["reason"].startswith("etcd:"), faulted
    finally:
        c.cut_from_etcd("c1", False)
    assert wait_until(lambda: leader_is(c, "c1"), 15, "c1 back after the heal"), c.logs()

    # frozen holder: the kernel drops its VIP; the successor adds it only after that
    frozen = time.time()
    c.vipd["c1"].send_signal(signal.SIGSTOP)
    try:
        assert wait_until(lambda: c.holders() == ["c2"], TTL + 3, "c2 holds while c1 is frozen"), c.logs()
        assert c.removed_at("c1", frozen) < c.added_at("c2", frozen)
        assert c.overlap(frozen, time.time()) == 0.0
    finally:
        c.vipd["c1"].send_signal(signal.SIGCONT)
    assert wait_until(lambda: leader_is(c, "c1"), 15, "c1 back after SIGCONT"), c.logs()
    assert "Traceback" not in c.logs()


@pytest.mark.timeout(120)
def test_without_an_etcd_quorum_nobody_holds_the_vip_and_status_says_why(cluster):
    c = cluster
    c.start("c1", 200)
    c.start("c2", 100)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 leads"), c.logs()
    lost = time.time()
    for name in ("e2", "e3"):
        c.lab.stop(c.etcd[name], signal.SIGKILL)
    assert wait_until(lambda: c.holders() == [] and all(c.election(n).get("state") == "FAULT" for n in ("c1", "c2")),
                      TTL + 4, "nobody holds"), c.logs()
    time.sleep(TTL)             # and it stays so
    assert c.holders() == [] and c.overlap(lost, time.time()) == 0.0
    for n in ("c1", "c2"):
        e = c.election(n)
        assert e["state"] == "FAULT" and e["reason"].startswith("etcd:") and e["holder"] is None, e
    for name in ("e2", "e3"):
        c.start_etcd(name, state="existing")
    assert wait_until(lambda: leader_is(c, "c1"), 30, "c1 leads again"), c.logs()
    assert "Traceback" not in c.logs()


@pytest.mark.timeout(120)
def test_preemption_and_maintenance_hand_over_without_a_failed_request(cluster):
    c = cluster
    c.start("c2", 100)
    assert wait_until(lambda: leader_is(c, "c2"), 20, "c2 leads"), c.logs()
    out = c.workdir / "client.json"
    client = start_client(c, out)
    time.sleep(1.0)
    started = time.time()
    c.start("c1", 200)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 preempts by hand-over"), c.logs()
    handed = time.time()
    # the planned overlap: the successor added the VIP before the old holder removed it
    assert c.added_at("c1", started) < c.removed_at("c2", started)
    time.sleep(0.5)
    on = c.lbctl("c1", "maintenance", "on", "api")
    assert on.returncode == 0, on.stderr
    assert wait_until(lambda: leader_is(c, "c2"), 10, "maintenance hands back to c2"), c.logs()
    assert json.loads((c.workdir / "c1.state" / "runtime.json").read_text())["maintenance"]["owners"] == ["api"]
    e = c.election("c1")
    assert (e["state"], e["maintenance"], e["holder"]) == ("FOLLOWER", True, "c2")
    time.sleep(TTL)            # priority 200 against 100: still not taking it back
    assert c.holders() == ["c2"]
    off = c.lbctl("c1", "maintenance", "off", "api")
    assert off.returncode == 0, off.stderr
    assert wait_until(lambda: leader_is(c, "c1"), 10, "back to c1"), c.logs()
    time.sleep(0.5)
    # a stopping holder hands over too
    assert c.lab.stop(c.vipd["c1"], signal.SIGTERM, timeout=20) == 0, c.log("c1")
    assert wait_until(lambda: leader_is(c, "c2"), 10, "c2 after c1 stopped"), c.logs()
    time.sleep(0.5)
    c.lab.stop(client, signal.SIGTERM, timeout=10)
    attempts = connclient.load(str(out))
    result = connclient.summarize(attempts)
    skew = time.time() - time.monotonic()
    print("not ok or slow:", [(round(a.start + skew - started, 3), round(a.duration, 3), a.detail)
                              for a in attempts if not a.ok or a.duration > 0.5][:10])
    print("VIP spans:", {n: [(round(a - started, 3), round(b - started, 3)) for a, b in spans]
                         for n, spans in c.intervals().items()})
    print("hand-overs under traffic:", result, f"preemption took {handed - started:.2f}s")
    assert result["requests"] > 300 and result["failed"] == 0, result
    assert "Traceback" not in c.logs()


VIP6 = "2001:db8::100"


@pytest.mark.timeout(120)
def test_a_vip_the_kernel_refuses_is_a_fault_and_the_other_candidate_holds_it(cluster):
    c = cluster
    c.lab["c1"].sysctl("net.ipv6.conf.eth0.disable_ipv6", 1)      # the kernel refuses IPv6 addresses there
    c.start("c2", 100, vips=(f"{VIP6}/64",))
    assert wait_until(lambda: c.holders(VIP6) == ["c2"], 20, "c2 holds"), c.logs()
    c.start("c1", 200, vips=(f"{VIP6}/64",))

    def c1_faulted() -> bool:
        e = c.election("c1")
        return e.get("state") == "FAULT" and e.get("reason", "").startswith("vip_add:eth0 (cannot add")
    assert wait_until(c1_faulted, 20, "c1 in FAULT vip_add"), c.logs()
    assert c.election("c2")["state"] == "LEADER" and c.holders(VIP6) == ["c2"]
    assert c.election("c1")["holder"] == "c2"
    assert "FAULT" in c.lbctl("c1", "status").stdout
    done = c.lbctl("c1", "events", "--json")
    states = [r for r in map(json.loads, done.stdout.splitlines()) if r["kind"] == "election.state"]
    assert any(r["fields"]["new"] == "FAULT" and r["fields"]["reason"].startswith("vip_add:eth0") for r in states), \
        states
    # retries after its backoff do not take the VIP away from c2 for good
    time.sleep(2.0)
    assert c.holders(VIP6) == ["c2"] and c.election("c2")["state"] == "LEADER"

    c.lab["c1"].sysctl("net.ipv6.conf.eth0.disable_ipv6", 0)
    assert wait_until(lambda: c.election("c1").get("state") == "LEADER" and c.holders(VIP6) == ["c1"], 30,
                      "c1 takes over once the kernel takes the VIP"), c.logs()
    assert wait_until(lambda: c.election("c2").get("state") == "FOLLOWER", 5, "c2 follows"), c.logs()
    assert "Traceback" not in c.logs()


@pytest.mark.timeout(90)
def test_a_reload_that_changes_only_the_frontends_keeps_the_holder_holding(cluster):
    """A frontend's drain_timeout (the hand-over bridge's plan) changes: the holder keeps its
    lease and its VIP; a changed election (its priority) is the one that steps down."""
    c = cluster
    c.start("c1", 200)
    c.start("c2", 100)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 leads"), c.logs()
    before = c.election("c1")
    path = c.workdir / "c1.toml"
    path.write_text(path.read_text().replace("drain_timeout = 1.0", "drain_timeout = 2.5"))
    done = c.lbctl("c1", "reload")
    assert done.returncode == 0, done.stderr
    time.sleep(1.0)
    after = c.election("c1")
    assert (after["state"], after["transitions"], after["since"]) == ("LEADER", before["transitions"], before["since"])
    assert c.holders() == ["c1"]
    path.write_text(path.read_text().replace("priority = 200", "priority = 50"))
    assert c.lbctl("c1", "reload").returncode == 0
    assert wait_until(lambda: leader_is(c, "c2"), 10, "c2 leads once c1's election changed"), c.logs()


VIP2 = "198.18.0.101"


def etcd_record(c: ElectionLab, key: str) -> tuple[dict, int] | None:
    """The value written at `key` and the lease it lives under, read with etcdctl; None if absent."""
    done = c.lab["e1"].run(["etcdctl", "--endpoints", c.endpoints(), "get", key, "-w", "json"], timeout=10,
                           env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})
    kvs = json.loads(done.stdout).get("kvs") or []
    if not kvs:
        return None
    return json.loads(base64.b64decode(kvs[0]["value"])), int(kvs[0].get("lease", 0))


def reload_with(c: ElectionLab, name: str, old: str, new: str) -> None:
    path = c.workdir / f"{name}.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))
    done = c.lbctl(name, "reload")
    assert done.returncode == 0, done.stderr


KEY = "/vipd/elections/api"


@pytest.mark.timeout(120)
def test_a_reload_changes_priority_and_vips_in_place_and_restarts_for_another_key(cluster):
    """Priority and VIPs of a running election change in place: the holder keeps its lease, its
    key, its VIP, `since` and its transition count while it stays the best; lowered below another
    candidate it hands over as preemption does (no failed request); another key restarts it."""
    c = cluster
    c.start("c1", 200)
    c.start("c2", 100)
    assert wait_until(lambda: leader_is(c, "c1"), 20, "c1 leads"), c.logs()
    assert wait_until(lambda: etcd_record(c, f"{KEY}/candidates/c2"), 5, "c2 registered"), c.logs()
    before, (held, lease) = c.election("c1"), etcd_record(c, KEY)
    assert held["node"] == "c1"
    kept = time.time()

    # (1) still the best after the change: everything stays, the published candidacy follows
    reload_with(c, "c1", "priority = 200", "priority = 150")
    assert wait_until(lambda: (etcd_record(c, f"{KEY}/candidates/c1") or ({}, 0))[0].get("priority") == 150, 5,
                      "c1's candidacy says 150"), c.logs()
    assert etcd_record(c, f"{KEY}/candidates/c1")[1] == lease
    # a VIP added and taken away again by reloads: on the holder and gone, the first one untouched
    reload_with(c, "c1", f'virtual_ips = ["{VIP}/24"]', f'virtual_ips = ["{VIP}/24", "{VIP2}/24"]')
    assert wait_until(lambda: c.holders(VIP2) == ["c1"], 5, "c1 adds the new VIP"), c.logs()
    reload_with(c, "c1", f'virtual_ips = ["{VIP}/24", "{VIP2}/24"]', f'virtual_ips = ["{VIP}/24"]')
    assert wait_until(lambda: c.holders(VIP2) == [], 5, "c1 removes the dropped VIP"), c.logs()
    time.sleep(1.0)
    after = c.election("c1")
    assert (after["state"], after["priority"], after["effective_priority"]) == ("LEADER", 150, 150), after
    assert (after["since"], after["transitions"]) == (before["since"], before["transitions"])
    assert etcd_record(c, KEY)[1] == lease and c.holders() == ["c1"]
    assert [a < kept for a, b in c.intervals()["c1"] if b >= kept] == [True]     # the VIP never left c1
    assert c.election("c2")["state"] == "FOLLOWER"

    # (2) lowered below c2: the normal hand-over, successor first, not one failed request
    out = c.workdir / "client.json"
    client = start_client(c, out, duration=30.0)
    time.sleep(1.0)
    lowered = time.time()
    reload_with(c, "c1", "priority = 150", "priority = 50")
    assert wait_until(lambda: leader_is(c, "c2"), 10, "c2 leads once c1 is lowered"), c.logs()
    assert c.added_at("c2", lowered) < c.removed_at("c1", lowered)
    assert etcd_record(c, KEY)[0]["node"] == "c2"
    demoted = c.election("c1")
    assert (demoted["state"], demoted["holder"], demoted["transitions"]) == ("FOLLOWER", "c2",
                                                                            before["transitions"] + 1), demoted
    assert etcd_record(c, f"{KEY}/candidates/c1")[1] == lease       # still c1's first session
    time.sleep(0.5)
    c.lab.stop(client, signal.SIGTERM, timeout=10)
    result = connclient.summarize(connclient.load(str(out)))
    assert result["requests"] > 100 and result["failed"] == 0, result

    # (3) another key is another election (here for another VIP): c2 hands the old one over and
    # starts afresh on the new key, under a new lease
    _, c2_lease = etcd_record(c, KEY)
    moved = time.time()
    path = c.workdir / "c2.toml"
    path.write_text(path.read_text().replace("priority = 100", f'priority = 100\nkey = "{KEY}-b"')
                    .replace(f'"{VIP}/24"', f'"{VIP2}/24"'))
    assert c.lbctl("c2", "reload").returncode == 0
    assert wait_until(lambda: leader_is(c, "c1"), 10, "c1 takes the old key over"), c.logs()
    assert c.added_at("c1", moved) < c.removed_at("c2", moved)
    assert wait_until(lambda: (etcd_record(c, f"{KEY}-b") or ({}, 0))[0].get("node") == "c2", 10,
                      "c2 holds the new key"), c.logs()
    assert wait_until(lambda: c.holders(VIP2) == ["c2"], 5, "c2 holds the new VIP"), c.logs()
    restarted = c.election("c2")
    assert (restarted["key"], restarted["state"], restarted["virtual_ips"]) == (f"{KEY}-b", "LEADER", [f"{VIP2}/24"])
    assert etcd_record(c, f"{KEY}-b")[1] != c2_lease                 # a new session
    assert etcd_record(c, f"{KEY}/candidates/c2") is None
    assert "Traceback" not in c.logs()
