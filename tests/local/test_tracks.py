"""Tracks and notify scripts with real `sh -c` processes, and a VRRP instance driven by its tracks
(real state machine and scripts; the network side replaced by recorders)."""
import asyncio
import ipaddress
import socket
import time
from pathlib import Path

from vipd.vrrp import fsm, packet
from vipd.vrrp.addresses import Change
from vipd.vrrp.config import Notify, Track, VrrpConfig
from vipd.vrrp.instance import VrrpInstance, vip_lifetime
from vipd.vrrp.links import Address, InterfaceTable
from vipd.vrrp.notify import NotifyQueue
from vipd.vrrp.tracks import ScriptTrack, TrackSet, effective_priority


def run(coro, timeout: float = 30):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(predicate, timeout: float = 10, step: float = 0.02):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"   # an unreaped zombie is dead too


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def script_track(command: str, **kw) -> Track:
    kw.setdefault("interval", 0.1)
    kw.setdefault("timeout", 2.0)
    return Track("script", command, **kw)


# ---------------------------------------------------------------- priority arithmetic


def test_effective_priority_adds_failing_weights_and_clamps():
    assert effective_priority(150, []) == 150
    assert effective_priority(150, [-60]) == 90
    assert effective_priority(150, [-60, -20]) == 70
    assert effective_priority(100, [-60, -60]) == 1
    assert effective_priority(100, [-254]) == 1
    assert effective_priority(200, [100]) == 254
    assert effective_priority(254, [10]) == 254
    assert effective_priority(255, [-100]) == 255   # an address owner stays the owner


def test_trackset_priority_and_fault_from_weights():
    async def main():
        up = {"eth1": True, "eth2": True}
        changes = []
        tracks = TrackSet(
            [Track("interface", "eth1", weight=-30), Track("interface", "eth2", weight=0),
             Track("frontend", "api", weight=-60)],
            on_change=lambda: changes.append(1), link_up=up.get, serving={"api": True})
        before = asyncio.all_tasks()
        tracks.start()
        try:
            assert tracks.effective_priority(150) == 150 and tracks.fault_reasons() == set()
            up["eth1"] = False
            tracks.links_changed()
            assert tracks.effective_priority(150) == 120 and changes == [1]
            tracks.frontend_serving("web", False)
            assert changes == [1], "a verdict on another frontend changes nothing here"
            tracks.frontend_serving("api", False)
            assert tracks.effective_priority(150) == 60 and changes == [1, 1]
            up["eth2"] = False
            tracks.links_changed()
            assert tracks.fault_reasons() == {"track:interface:eth2"}
            assert tracks.effective_priority(150) == 60, "a weight-0 track faults, it does not count"
            up["eth2"] = True
            tracks.links_changed()
            assert tracks.fault_reasons() == set()
            names = {t["name"]: t for t in tracks.status()}
            assert names["interface:eth1"] == {"name": "interface:eth1", "ok": False, "weight": -30,
                                               "health": "0/1 DOWN"}
            assert names["frontend:api"]["ok"] is False
            tracks.frontend_serving("api", True)
            assert tracks.effective_priority(150) == 120
            # Interface and frontend tracks are told; nothing of theirs runs in the background.
            assert asyncio.all_tasks() == before
        finally:
            await tracks.stop()
    run(main())


def test_positive_weights_apply_while_ok_as_in_keepalived():
    async def main():
        up = {"eth1": True}
        tracks = TrackSet([Track("interface", "eth1", weight=20)], on_change=lambda: None,
                          link_up=up.get, serving={})
        tracks.start()
        try:
            assert tracks.effective_priority(100) == 120
            up["eth1"] = False
            tracks.links_changed()
            assert tracks.effective_priority(100) == 100 and tracks.fault_reasons() == set()
        finally:
            await tracks.stop()
    run(main())


def test_frontend_track_without_a_proxy_fails():
    tracks = TrackSet([Track("frontend", "api", weight=-10)], lambda: None, lambda name: True, None)
    assert tracks.effective_priority(100) == 90


def test_frontend_track_made_on_reload_starts_from_the_last_pushed_verdict():
    async def main():
        serving = {"api": False}
        changes = []
        tracks = TrackSet([], lambda: changes.append(1), lambda name: True, serving)
        serving["api"] = True                      # the owner of the table keeps it current
        await tracks.update([Track("frontend", "api", weight=-10), Track("frontend", "web", weight=-20)])
        status = {t["name"]: t["ok"] for t in tracks.status()}
        assert status == {"frontend:api": True, "frontend:web": False}, "an unknown frontend is not serving"
        assert tracks.effective_priority(100) == 80
    run(main())


# ---------------------------------------------------------------- script tracks


def test_script_exit_status_decides(tmp_path):
    async def main():
        ok = ScriptTrack(script_track("exit 0"), lambda: None)
        bad = ScriptTrack(script_track("echo nope >&2; exit 3"), lambda: None)
        missing = ScriptTrack(script_track(str(tmp_path / "no-such-script")), lambda: None)
        assert await ok.run_once() is True
        assert await bad.run_once() is False and bad.last_status == 3
        assert await missing.run_once() is False and missing.last_status == 127
    run(main())


def test_script_rise_and_fall(tmp_path):
    flag = tmp_path / "down"
    log = tmp_path / "runs"

    async def main():
        changes = []
        tracks = TrackSet([script_track(f"echo run >> {log}; test ! -e {flag}", weight=-50, rise=3, fall=2)],
                          lambda: changes.append(tracks.effective_priority(100)), lambda n: True, None)
        tracks.start()
        try:
            await tracks.wait_first_results(5)
            assert tracks.effective_priority(100) == 100
            runs = lambda: len(log.read_text().splitlines())
            flag.touch()
            start = runs()
            await until(lambda: tracks.effective_priority(100) == 50)
            assert runs() - start >= 2, "fall = 2 failures in a row"
            assert changes == [50]
            flag.unlink()
            start = runs()
            await until(lambda: tracks.effective_priority(100) == 100)
            assert runs() - start >= 3, "rise = 3 successes in a row"
            assert changes == [50, 100]
        finally:
            await tracks.stop()
    run(main())


def test_first_result_counts_at_once(tmp_path):
    async def main():
        tracks = TrackSet([script_track("exit 1", weight=-20, rise=5, fall=5)], lambda: None, lambda n: True, None)
        tracks.start()
        try:
            await tracks.wait_first_results(5)
            assert tracks.effective_priority(100) == 80
        finally:
            await tracks.stop()
    run(main())


def test_timeout_kills_the_whole_process_group(tmp_path):
    pids = tmp_path / "pids"

    async def main():
        track = ScriptTrack(script_track(
            f"sleep 100 & echo $! >> {pids}; (sleep 100; true) & echo $! >> {pids}; echo $$ >> {pids}; wait",
            timeout=0.5), lambda: None)
        started = time.monotonic()
        assert await track.run_once() is False
        assert track.last_status is None
        took = time.monotonic() - started
        assert 0.5 <= took < 0.5 + 1.0, f"a 0.5s timeout took {took:.2f}s"
    run(main())
    children = [int(p) for p in pids.read_text().split()]
    assert len(children) == 3
    group = children[-1]                         # the script's shell leads its own session
    deadline = time.monotonic() + 1.0
    while group_members(group) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert group_members(group) == [], "processes of a timed-out script's group survived"
    assert not [p for p in children if alive(p)]


def test_runs_never_overlap(tmp_path):
    lock, log = tmp_path / "lock", tmp_path / "log"
    command = (f"if [ -e {lock} ]; then echo overlap >> {log}; fi; touch {lock}; sleep 0.25; "
               f"rm -f {lock}; echo done >> {log}")

    async def main():
        tracks = TrackSet([script_track(command, interval=0.05, timeout=5, weight=-1)], lambda: None,
                          lambda n: True, None)
        tracks.start()
        try:
            await until(lambda: log.exists() and log.read_text().count("done") >= 4, timeout=15)
        finally:
            await tracks.stop()
    run(main())
    assert "overlap" not in log.read_text()


def test_reload_keeps_unchanged_tracks(tmp_path):
    async def main():
        same = script_track("exit 1", weight=-10)
        tracks = TrackSet([same, Track("interface", "eth1", weight=-5)], lambda: None, lambda n: False, None)
        tracks.start()
        try:
            await tracks.wait_first_results(5)
            kept = tracks.tracks[0]
            assert tracks.effective_priority(100) == 85
            await tracks.update([same, script_track("exit 0", weight=-40)])
            assert tracks.tracks[0] is kept, "an unchanged track keeps its state and schedule"
            await tracks.wait_first_results(5)
            assert tracks.effective_priority(100) == 90
            assert [t.config.target for t in tracks.tracks] == ["exit 1", "exit 0"]
        finally:
            await tracks.stop()
    run(main())


# ---------------------------------------------------------------- notify


def notify_script(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "notified"
    script = tmp_path / "notify.sh"
    # Jobs sleep 0, 0.2 or 0.1 s by their last argument, so running them concurrently would reorder lines.
    script.write_text(f'#!/bin/sh\neval "last=\\${{$#}}"\nsleep "0.$(( (30 - last) % 3 ))"\n'
                      f'echo "$*" >> {out}\n')
    script.chmod(0o755)
    return script, out


def test_notify_runs_in_order_with_args(tmp_path):
    script, out = notify_script(tmp_path)

    line = f"{script} extra"
    notify = Notify(master=line, backup=line, fault=line)
    states = ("MASTER", "BACKUP", "FAULT")

    async def main():
        queue = NotifyQueue("api")
        for i in range(9):
            queue.transition(notify, states[i % 3], i)
            await until(lambda: queue.completed == i + 1, timeout=5)
        queue.transition(notify, "STOP", 99)   # no script configured for that state: nothing runs
        assert await queue.drain(30)
        await queue.close()
        assert queue.superseded == 0
    run(main(), timeout=40)
    lines = out.read_text().splitlines()
    assert lines == [f"extra api {states[i % 3]} {i}" for i in range(9)]


def test_notify_waits_for_the_vip_change(tmp_path):
    script, out = notify_script(tmp_path)

    async def main():
        queue = NotifyQueue("api")
        vips_added = asyncio.get_running_loop().create_future()
        notify = Notify(master=str(script), backup=str(script))
        queue.transition(notify, "MASTER", 150, after=vips_added)
        queue.transition(notify, "BACKUP", 150)
        await asyncio.sleep(0.5)
        assert not out.exists(), "the master script ran before the VIPs were in place"
        vips_added.set_result(None)
        assert await queue.drain(20)
        await queue.close()
    run(main())
    assert out.read_text().splitlines() == ["api MASTER 150", "api BACKUP 150"]


def test_notify_timeout_kills_and_moves_on(tmp_path):
    out = tmp_path / "out"

    async def main():
        queue = NotifyQueue("api")
        notify = Notify(master=f"sleep 100; echo late >> {out}; true", backup=f'echo "$2" >> {out}; true',
                        timeout=0.3)
        queue.transition(notify, "MASTER", 1)
        queue.transition(notify, "BACKUP", 1)
        assert await queue.drain(20)
        await queue.close()
    run(main())
    assert out.read_text().split() == ["BACKUP"]


# ---------------------------------------------------------------- an instance driven by its tracks


class RecordingChannel:
    def __init__(self):
        self.sent: list[packet.Advert] = []
        self.fault = None
        self.watchers = []

    def send(self, payload, src, dst):
        advert = packet.decode(payload, src=src, dst=dst, ttl=255)
        assert isinstance(advert, packet.Advert), advert
        self.sent.append(advert)
        return True

    def poll(self, until=None):
        return True


class RecordingChannels:
    def __init__(self):
        self.channel = RecordingChannel()
        self.receivers = {}

    def register(self, ifname, family, vrid, receiver):
        self.receivers[vrid] = receiver
        return self.channel

    def unregister(self, ifname, family, vrid):
        self.receivers.pop(vrid, None)


class RecordingAddresses:
    def __init__(self):
        self.held: set[str] = set()
        self.calls: list[tuple] = []

    def _done(self):
        future = asyncio.get_running_loop().create_future()
        future.set_result(Change())
        return future

    def add(self, ifname, vips, lifetime=None):
        vips = [str(v) for v in vips]
        self.calls.append(("add", vips, lifetime))
        self.held.update(vips)
        return self._done()

    def remove(self, ifname, vips):
        vips = [str(v) for v in vips]
        self.calls.append(("remove", vips))
        self.held.difference_update(vips)
        return self._done()


def lab_interfaces() -> InterfaceTable:
    table = InterfaceTable()
    table.apply(("snapshot", [(2, "eth0", True, "02:00:00:00:00:11")],
                 [(2, Address(socket.AF_INET, "198.18.0.11", 24))]))
    return table


def test_instance_follows_its_tracks(tmp_path):
    weak, dead = tmp_path / "weak", tmp_path / "dead"
    notified = tmp_path / "notified"
    config = VrrpConfig(
        name="api", interface="eth0", vrid=51, virtual_ips=(ipaddress.ip_interface("198.18.0.100/24"),),
        priority=200, advert_interval=0.05, garp_repeat=0,
        tracks=(script_track(f"test ! -e {weak}", weight=-50, interval=0.05),
                script_track(f"test ! -e {dead}", weight=0, interval=0.05)),
        notify=Notify(master=f'echo "$@" >> {notified}; true', backup=f'echo "$@" >> {notified}; true',
                      fault=f'echo "$@" >> {notified}; true', stop=f'echo "$@" >> {notified}; true'))

    async def main():
        channels, addresses = RecordingChannels(), RecordingAddresses()
        instance = VrrpInstance(config, interfaces=lab_interfaces(), channels=channels, addresses=addresses)
        await instance.start()
        sent = channels.channel.sent
        try:
            await until(lambda: instance.router.state is fsm.State.MASTER)
            assert addresses.held == {"198.18.0.100/24"}
            assert sent[-1].priority == 200 and sent[-1].addresses == (ipaddress.ip_address("198.18.0.100"),)
            assert instance.status()["master"] == "198.18.0.11"

            weak.touch()
            await until(lambda: instance.status()["effective_priority"] == 150)
            await until(lambda: sent[-1].priority == 150)
            assert instance.router.state is fsm.State.MASTER

            dead.touch()
            await until(lambda: instance.router.state is fsm.State.FAULT)
            assert addresses.held == set()
            status = instance.status()
            assert status["state"] == "FAULT" and status["master"] is None
            assert status["fault_reasons"] == ["track:script:test"]
            assert [a.priority for a in sent[-1:]] == [0], "a master that faults resigns"
            quiet = len(sent)
            await asyncio.sleep(0.3)
            assert len(sent) == quiet, "no adverts in FAULT"

            weak.unlink()
            await until(lambda: instance.status()["effective_priority"] == 200)
            assert instance.router.state is fsm.State.FAULT
            dead.unlink()
            await until(lambda: instance.router.state is fsm.State.MASTER)
            assert instance.status()["effective_priority"] == 200
            assert addresses.held == {"198.18.0.100/24"}

            # an advert from a higher-priority master moves us to BACKUP and the VIP away
            peer = packet.encode(packet.Advert(3, 51, 250, 5, ("198.18.0.100",)), src="198.18.0.12",
                                 dst="224.0.0.18")
            channels.receivers[51](peer, "198.18.0.12", "224.0.0.18", 255)
            assert instance.router.state is fsm.State.BACKUP and addresses.held == set()
            assert instance.status()["master"] == "198.18.0.12"
            channels.receivers[51](peer[:-1], "198.18.0.12", "224.0.0.18", 255)
            channels.receivers[51](peer, "198.18.0.12", "224.0.0.18", 64)
            assert instance.status()["invalid"] == {"length": 1, "ttl": 1}
            assert instance.status()["adverts_received"] == 1
        finally:
            await instance.stop(handover=False)
        assert addresses.held == set()
        assert 51 not in channels.receivers
    run(main())
    assert notified.read_text().splitlines() == [
        "api BACKUP 200", "api MASTER 200", "api FAULT 150", "api BACKUP 200", "api MASTER 200",
        "api BACKUP 200", "api STOP 200"]


def test_a_master_renews_its_vips_about_once_a_second_and_steps_down_after_a_stall_past_their_lifetime():
    """Self-fencing (issue 8) in the instance: at 20 adverts a second the VIPs' lifetime is renewed
    about once a second, not per advert; a loop stalled past the lifetime (the kernel dropped the
    VIPs, a backup took over) makes the master step down, not reclaim them."""
    config = VrrpConfig(name="api", interface="eth0", vrid=51, virtual_ips=(ipaddress.ip_interface("198.18.0.100/24"),),
                        priority=200, advert_interval=0.05, garp_repeat=0)
    lifetime = vip_lifetime(config.advert_interval)

    async def main():
        channels, addresses = RecordingChannels(), RecordingAddresses()
        instance = VrrpInstance(config, interfaces=lab_interfaces(), channels=channels, addresses=addresses)
        await instance.start()
        try:
            await until(lambda: instance.router.state is fsm.State.MASTER)
            became_master = time.monotonic()
            await asyncio.sleep(3.3)
            adds = [c for c in addresses.calls if c[0] == "add"]
            adverts = len(channels.channel.sent)
            elapsed = time.monotonic() - became_master
            assert adverts >= 40 and all(c == ("add", ["198.18.0.100/24"], lifetime) for c in adds)
            assert int(elapsed) <= len(adds) <= int(elapsed) + 2, (len(adds), elapsed)
            sent_before = len(channels.channel.sent)
            time.sleep(lifetime + 0.2)                  # the loop itself stalls
            await until(lambda: instance.router.state is fsm.State.BACKUP)
            assert addresses.held == set() and addresses.calls[-1][0] == "remove"
            # No advert went out for the stalled stretch: the new master must not be made to step down.
            assert len(channels.channel.sent) == sent_before
        finally:
            await instance.stop(handover=False)
    run(main())
