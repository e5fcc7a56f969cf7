"""The event stream (vipd.events), the log formats (lbproxy.logsetup) and the access log's rate
limit (lbproxy.accesslog): pure, in-process."""
from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import tempfile

import pytest

from lbproxy import logsetup
from lbproxy.accesslog import AccessLog, Result, TokenBucket
from lbproxy.events import ProxyEvent
from vipd.control.schema import Event as EventSchema
from vipd.control.schema import EventsAnswer, check
from vipd.events import EventLog, Kind, Level, describe_proxy_event
from vipd.vrrp.config import Notify
from vipd.vrrp.notify import NotifyQueue


def emit_n(events: EventLog, n: int, kind: Kind = Kind.RELOAD) -> None:
    for i in range(n):
        events.emit(kind, "x", f"event {i}", {"i": i}, logged=True)


# --- the ring

def test_ring_keeps_the_newest_in_order_with_increasing_seq():
    events = EventLog(capacity=5)
    emit_n(events, 12)
    held = events.recent()
    assert [e.seq for e in held] == [8, 9, 10, 11, 12]
    assert [e.fields["i"] for e in held] == [7, 8, 9, 10, 11]
    assert events.last_seq == 12


def test_recent_after_and_limit():
    events = EventLog(capacity=10)
    emit_n(events, 8)
    assert [e.seq for e in events.recent(after_seq=5)] == [6, 7, 8]
    assert [e.seq for e in events.recent(2)] == [7, 8]
    assert [e.seq for e in events.recent(2, after_seq=3)] == [7, 8]
    assert [e.seq for e in events.recent(0)] == []
    assert events.recent(after_seq=8) == []


def test_records_match_the_schema_and_carry_utc_time():
    events = EventLog()
    event = events.emit(Kind.VRRP_STATE, "api", "vrrp api: BACKUP -> MASTER (master_down)",
                        {"old": "BACKUP", "new": "MASTER", "reason": "master_down", "priority": 150,
                         "master": None}, logged=True)
    record = event.to_dict()
    assert check(record, EventSchema, strict=True).problems == []
    assert check({"events": [record]}, EventsAnswer, strict=True).problems == []
    assert record["time"].endswith("Z") and record["time"][10] == "T" and len(record["time"]) == 24
    assert record["kind"] == "vrrp.state" and record["level"] == "info"
    assert json.loads(json.dumps(record)) == record


def test_proxy_kinds_are_event_kinds():
    assert {k.value for k in ProxyEvent} <= {k.value for k in Kind}
    subject, message, level = describe_proxy_event(ProxyEvent.BACKEND_STATE, {
        "frontend": "api", "backend": "198.18.0.21:6443", "old": "up", "new": "down",
        "reason": "HTTP 503", "health": "0/3 DOWN"})
    assert subject == "api/198.18.0.21:6443" and level is Level.WARNING
    assert "up -> down: HTTP 503" in message


def test_emit_logs_with_the_event_attached(caplog):
    events = EventLog()
    with caplog.at_level(logging.INFO):
        events.emit(Kind.RELOAD, "/etc/vipd/vipd.toml", "reload refused", {"ok": False}, level=Level.ERROR)
        events.emit(Kind.BACKEND_STATE, "api/b", "already logged by the proxy", logged=True)
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.getMessage() == "reload refused"
    assert record.event["kind"] == "config.reload" and record.event["fields"] == {"ok": False}


# --- followers

def test_a_follower_sees_every_event_after_subscribing_then_the_end():
    async def scenario():
        events = EventLog()
        emit_n(events, 3)
        follower = events.subscribe()
        emit_n(events, 2)
        events.close()
        return [e.seq async for e in follower]
    assert asyncio.run(scenario()) == [4, 5]


def test_a_follower_with_a_backlog_gets_the_held_events_first():
    async def scenario():
        events = EventLog()
        emit_n(events, 5)
        follower = events.subscribe(backlog=2)
        everything = events.subscribe(backlog=None, after_seq=3)
        emit_n(events, 1)
        events.close()
        return [e.seq async for e in follower], [e.seq async for e in everything]
    assert asyncio.run(scenario()) == ([4, 5, 6], [4, 5, 6])


def test_a_slow_follower_drops_and_counts_without_holding_up_the_emitter():
    async def scenario():
        events = EventLog(capacity=100, follower_queue=10)
        slow = events.subscribe()
        emit_n(events, 25)            # nobody reads: 10 fit, 15 are dropped
        assert slow.dropped == 15
        first = [await slow.get() for _ in range(10)]
        emit_n(events, 2)             # room again: the gap is reported where it was
        events.close()
        rest = [e async for e in slow]
        return first, rest
    first, rest = asyncio.run(scenario())
    assert [e.seq for e in first] == list(range(1, 11))
    gap, *after = rest
    assert gap.kind is Kind.DROPPED and gap.level is Level.WARNING
    assert gap.fields == {"count": 15, "first": 11, "last": 25} and gap.seq == 25
    assert [e.seq for e in after] == [26, 27]


def test_a_gap_at_the_end_is_reported_before_the_stream_ends():
    async def scenario():
        events = EventLog(follower_queue=3)
        follower = events.subscribe()
        emit_n(events, 5)
        events.close()
        return [(e.kind, e.seq) async for e in follower]
    assert asyncio.run(scenario()) == [(Kind.RELOAD, 1), (Kind.RELOAD, 2), (Kind.RELOAD, 3), (Kind.DROPPED, 5)]


def test_a_waiting_follower_wakes_on_emit_and_a_closed_one_is_forgotten():
    async def scenario():
        events = EventLog()
        follower = events.subscribe()
        waiting = asyncio.ensure_future(follower.get())
        await asyncio.sleep(0)
        assert not waiting.done()
        emit_n(events, 1)
        got = await asyncio.wait_for(waiting, 1)
        follower.close()
        assert events.followers == 0
        emit_n(events, 1)
        return got.seq, await follower.get()
    assert asyncio.run(scenario()) == (1, None)


# --- log formats

def _format(log_format: str, journal: bool, level: int, message: str, **extra) -> str:
    record = logging.LogRecord("vipd.vrrp", level, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return logsetup.make_formatter(log_format, journal).format(record)


@pytest.mark.parametrize("level,priority", [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4),
                                            (logging.ERROR, 3), (logging.CRITICAL, 2)])
def test_journal_lines_carry_the_syslog_priority(level, priority):
    line = _format("text", True, level, "hello")
    assert line == f"<{priority}>{logging.getLevelName(level)} vipd.vrrp: hello"
    assert _format("json", True, level, "hello").startswith(f"<{priority}>{{")
    assert not _format("text", False, level, "hello").startswith("<")


def test_every_line_of_a_multi_line_message_is_prefixed():
    assert _format("text", True, logging.ERROR, "one\ntwo").split("\n") == [
        "<3>ERROR vipd.vrrp: one", "<3>two"]


def test_json_lines_carry_time_level_logger_message_and_the_event():
    event = {"seq": 3, "kind": "vrrp.state", "fields": {"new": "MASTER"}}
    line = _format("json", False, logging.WARNING, "vrrp api: BACKUP -> MASTER", event=event)
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed.pop("time").endswith("Z")
    assert parsed == {"level": "warning", "logger": "vipd.vrrp", "message": "vrrp api: BACKUP -> MASTER",
                      "event": event}
    plain = json.loads(_format("json", False, logging.INFO, "no event"))
    assert "event" not in plain and "access" not in plain


def test_journal_is_recognised_by_the_stream_systemd_announced(monkeypatch):
    with tempfile.TemporaryFile() as mine, tempfile.TemporaryFile() as other:
        st = os.fstat(mine.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.stderr_is_journal(mine)
        assert not logsetup.stderr_is_journal(other)
        monkeypatch.setenv("JOURNAL_STREAM", "garbage")
        assert not logsetup.stderr_is_journal(mine)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not logsetup.stderr_is_journal(mine)


def test_the_queue_handler_never_blocks_and_says_what_it_dropped():
    handler = logsetup.DroppingQueueHandler(limit=2)
    for i in range(5):
        handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, f"line {i}", None, None))
    assert handler.dropped == 3
    kept = [handler.queue.get_nowait().getMessage() for _ in range(2)]
    assert kept == ["line 0", "line 1"]
    handler.emit(logging.LogRecord("x", logging.INFO, __file__, 1, "line 5", None, None))
    assert handler.queue.get_nowait().getMessage() == "line 5 (3 earlier log line(s) dropped: stderr too slow)"
    assert handler.dropped == 0


def test_setup_writes_through_the_listener_thread():
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    listener = logsetup.setup("info", "json", worker="g1w0", stream=out)
    try:
        logging.getLogger("lbproxy.access").info("a line", extra={"access": {"result": "ok"}})
        logging.getLogger("lbproxy").debug("below the level")
    finally:
        listener.stop()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
    (line,) = out.getvalue().splitlines()
    parsed = json.loads(line)
    assert parsed["worker"] == "g1w0" and parsed["access"] == {"result": "ok"} and parsed["message"] == "a line"


# --- the access log's rate limit

class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket_refills_at_its_rate_up_to_its_burst():
    clock = Clock()
    bucket = TokenBucket(rate=10, burst=5, clock=clock)
    assert [bucket.take() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.25                      # 2.5 tokens
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    clock.now += 100
    assert sum(bucket.take() for _ in range(20)) == 5


def test_access_log_is_rate_limited_and_reports_what_it_suppressed(caplog):
    clock = Clock()
    access = AccessLog(rate=100, burst=100, clock=clock)
    with caplog.at_level(logging.INFO, logger="lbproxy.access"):
        for i in range(250):
            access.closed("api", f"198.18.0.5:{1000 + i}", "198.18.0.21:6443", Result.OK, 10, 20, 0.5)
        assert len(caplog.records) == 100 and access.suppressed == 150
        access.flush()                    # no token yet: nothing said
        assert len(caplog.records) == 100
        clock.now += 1.0
        access.closed("api", "198.18.0.5:9", None, Result.CONNECT_FAILED, 0, 0, 2.0)
    said = [r.getMessage() for r in caplog.records[100:]]
    assert said == ["access log: 150 line(s) suppressed (over 100 lines/s)",
                    "api 198.18.0.5:9 -> - connect_failed in=0 out=0 2.000s"]
    first = caplog.records[0]
    assert first.getMessage() == "api 198.18.0.5:1000 -> 198.18.0.21:6443 ok in=10 out=20 0.500s"
    assert first.access == {"frontend": "api", "client": "198.18.0.5:1000", "backend": "198.18.0.21:6443",
                            "result": "ok", "bytes_in": 10, "bytes_out": 20, "duration": 0.5}


def test_access_log_flush_reports_a_suppressed_tail(caplog):
    clock = Clock()
    access = AccessLog(rate=1, burst=1, clock=clock)
    with caplog.at_level(logging.INFO, logger="lbproxy.access"):
        for _ in range(4):
            access.closed("api", "198.18.0.5:1", "b", Result.RESET, 0, 0, 0.0)
        clock.now += 1.0
        access.flush()
    assert [r.getMessage() for r in caplog.records][-1] == "access log: 3 line(s) suppressed (over 1 lines/s)"
    assert access.suppressed == 0


# --- the generic notify script

def test_generic_notify_runs_after_the_state_script_with_the_type_first():
    notify = Notify(master="/bin/on-master", generic="/bin/notify --flag")

    async def scenario():
        queue = NotifyQueue("api")
        queue.transition(notify, "MASTER", 150)
        queue.transition(notify, "BACKUP", 100)
        queued = list(queue._waiting)
        await queue.close()              # before the runner ever started: nothing ran
        return queue, queued
    queue, (master, backup) = asyncio.run(scenario())
    assert [(j.script, j.generic) for j in master.jobs] == [("/bin/on-master", False), ("/bin/notify --flag", True)]
    assert [(j.script, j.generic) for j in backup.jobs] == [("/bin/notify --flag", True)]
    assert queue.argv(master.jobs[1], master)[3:] == ["vipd-notify", "INSTANCE", "api", "MASTER", "150"]
    assert queue.argv(master.jobs[0], master)[3:] == ["vipd-notify", "api", "MASTER", "150"]
    assert queue.argv(backup.jobs[0], backup)[3:] == ["vipd-notify", "INSTANCE", "api", "BACKUP", "100"]
    assert queue.completed == 0


# --- the keys

def test_log_format_access_log_and_generic_notify_keys():
    import tomllib

    from support import GOOD_CONFIG

    from vipd.config import ConfigError, parse

    data = tomllib.loads(GOOD_CONFIG)
    default = parse(data)
    assert default.node.log_format == "text" and default.frontends[0].access_log is False
    assert default.vrrp[0].notify.generic is None
    data["node"]["log_format"] = "json"
    data["frontend"][0]["access_log"] = True
    data["vrrp"][0]["notify"] = {"notify": "/usr/local/bin/notify", "master": "/usr/local/bin/on-master"}
    loaded = parse(data)
    assert loaded.node.log_format == "json" and loaded.proxy.log_format == "json"
    assert loaded.frontends[0].access_log is True
    assert loaded.vrrp[0].notify.generic == "/usr/local/bin/notify"
    assert loaded.vrrp[0].notify.for_state("MASTER") == "/usr/local/bin/on-master"
    data["node"]["log_format"] = "syslog"
    data["frontend"][0]["access_log"] = "yes"
    with pytest.raises(ConfigError) as refused:
        parse(data, "vipd.toml")
    assert refused.value.problems == [
        "vipd.toml: node.log_format: must be one of text, json, got 'syslog'",
        "vipd.toml: frontend[0].access_log: must be bool, got 'yes'"]
