"""Logging for the daemon and its proxy workers: text or JSON lines on stderr, with the syslog
priority prefix journald reads (sd-daemon(3): `<3>` error ... `<7>` debug) when stderr is the
journal, and a queue in front of the stream so a slow stderr never holds up an event loop.

Records may carry structured data as extras: `event` (the daemon's event record) and `access`
(one proxied connection); the JSON format prints them as objects of their own.
"""
from __future__ import annotations

import datetime
import enum
import json
import logging
import logging.handlers
import os
import queue
import sys
from typing import TextIO

QUEUE_LIMIT = 10_000
STRUCTURED = ("event", "access")
# sd-daemon(3) / syslog(3) priorities.
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


class LogFormat(enum.StrEnum):
    TEXT = "text"
    JSON = "json"


def syslog_priority(levelno: int) -> int:
    return next((priority for level, priority in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


def stderr_is_journal(stream: TextIO | None = None) -> bool:
    """True when stderr is the journal's stream that systemd announced in JOURNAL_STREAM (`DEV:INODE`);
    a child whose stderr was redirected elsewhere inherits the variable but not the stream."""
    announced = os.environ.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in announced.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class TextFormatter(logging.Formatter):
    def __init__(self, journal: bool, name_suffix: str = "") -> None:
        # The journal stamps every line itself.
        stamp = "" if journal else "%(asctime)s "
        super().__init__(f"{stamp}%(levelname)s %(name)s{name_suffix}: %(message)s")
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        return prefixed(super().format(record), record.levelno, self.journal)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the structured extras."""

    def __init__(self, journal: bool, worker: str | None = None) -> None:
        super().__init__()
        self.journal = journal
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        line = {"time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
                .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "level": record.levelname.lower(), "logger": record.name, "message": message}
        if self.worker:
            line["worker"] = self.worker
        for key in STRUCTURED:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        return prefixed(json.dumps(line, default=str, separators=(",", ":")), record.levelno, self.journal)


def prefixed(text: str, levelno: int, journal: bool) -> str:
    if not journal:
        return text
    # Every line of a multi-line message (a traceback) gets the prefix, or journald files the
    # continuation lines at the default priority.
    tag = f"<{syslog_priority(levelno)}>"
    return "\n".join(tag + line for line in text.split("\n"))


class DroppingQueueHandler(logging.handlers.QueueHandler):
    """Never blocks: when the writer thread is that far behind, records are counted and dropped."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        super().__init__(queue.Queue(limit))
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        dropped = self.dropped
        if dropped:
            # `record` is prepared: its message is final text, without arguments.
            record.msg = record.message = f"{record.msg} ({dropped} earlier log line(s) dropped: stderr too slow)"
        try:
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1
            return
        self.dropped -= dropped


def make_formatter(log_format: str, journal: bool, worker: str | None = None) -> logging.Formatter:
    if LogFormat(log_format) is LogFormat.JSON:
        return JsonFormatter(journal, worker)
    return TextFormatter(journal, f"[{worker}]" if worker else "")


def setup(level: str = "info", log_format: str = "text", worker: str | None = None,
          stream: TextIO | None = None) -> logging.handlers.QueueListener:
    """Route every log record through a queue to a writer thread; the caller stops the returned
    listener on exit (that flushes the queue)."""
    out = stream or sys.stderr
    writer = logging.StreamHandler(out)
    writer.setFormatter(make_formatter(log_format, stderr_is_journal(out), worker))
    handler = DroppingQueueHandler()
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    listener = logging.handlers.QueueListener(handler.queue, writer, respect_handler_level=False)
    listener.start()
    return listener
