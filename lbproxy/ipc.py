"""Master <-> worker messages: newline-delimited JSON over a socketpair passed to the worker.

Master to worker: configure (frontends + backend states, runtime weights and slow-start
origins), state (one backend's state, weight and slow-start origin), stop_accepting, drain.
Worker to master: listening, error, stats (every STATS_INTERVAL), connect_failed (passive
health), stopped_accepting. Everything is a small dict with an "op".

A slow-start origin ("since") is the master's time.monotonic(), or null when the backend is
not ramping up: CLOCK_MONOTONIC is one system-wide clock on Linux, the same in every process
(of one time namespace), so a worker compares it with its own reading as is.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket

from lbproxy.config import BackendConfig, FrontendConfig, HealthConfig

log = logging.getLogger("lbproxy.ipc")

STATS_INTERVAL = 0.5
LINE_LIMIT = 16 * 1024 * 1024


def frontend_to_dict(frontend: FrontendConfig) -> dict:
    return dataclasses.asdict(frontend)


def frontend_from_dict(data: dict) -> FrontendConfig:
    health = dict(data["health"])
    health["expect"] = tuple(health["expect"])
    return FrontendConfig(**{**data,
                             "backends": tuple(BackendConfig(**b) for b in data["backends"]),
                             "health": HealthConfig(**health)})


class Channel:
    """One end of the pipe. `send` never blocks (the transport buffers); `receive` returns
    None at end of file, which is how either side learns that the other one is gone."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.garbage = 0

    @classmethod
    async def open(cls, sock: socket.socket) -> "Channel":
        reader, writer = await asyncio.open_unix_connection(sock=sock, limit=LINE_LIMIT)
        return cls(reader, writer)

    def send(self, message: dict) -> None:
        if self._writer.is_closing():
            return
        self._writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    async def receive(self) -> dict | None:
        while True:
            try:
                line = await self._reader.readline()
            except ConnectionError:
                return None                      # the other side died; its exit says why
            except (ValueError, asyncio.LimitOverrunError) as exc:
                log.warning("dropping the IPC channel: %s", exc)
                return None
            if not line:
                return None
            try:
                message = json.loads(line)
            except ValueError:
                message = None
            if isinstance(message, dict) and isinstance(message.get("op"), str):
                return message
            self.garbage += 1
            log.warning("ignoring a malformed IPC message (%d so far)", self.garbage)

    async def drain(self) -> None:
        try:
            await self._writer.drain()
        except ConnectionError:
            pass

    def close(self) -> None:
        self._writer.close()
