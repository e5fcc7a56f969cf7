"""What a client sees through a failover: a new TCP connection (one HTTP GET) every `interval`.

Attempts start on a fixed schedule whether or not earlier ones finished, so one request stuck in
a SYN retransmit does not hide the others. Runs until --duration, --count or SIGTERM, then writes
one JSON document: every attempt as [start, duration, ok, detail] on the monotonic clock.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass


@dataclass
class Attempt:
    start: float
    duration: float
    ok: bool
    detail: str          # the backend's answer, or the error


async def one_request(host: str, port: int, timeout: float) -> Attempt:
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        try:
            writer.write(b"GET / HTTP/1.1\r\nHost: vip\r\nConnection: close\r\n\r\n")
            response = await asyncio.wait_for(reader.read(-1), timeout - (time.monotonic() - start))
        finally:
            writer.close()
        head, _, body = response.partition(b"\r\n\r\n")
        ok = head.startswith(b"HTTP/1.1 200")
        detail = body.decode(errors="replace").strip() if ok else (head.split(b"\r\n")[0].decode() or "empty reply")
    except asyncio.TimeoutError:
        ok, detail = False, "timeout"
    except OSError as exc:
        ok, detail = False, exc.strerror or type(exc).__name__
    return Attempt(start, time.monotonic() - start, ok, detail)


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM or SIGINT sets: the client stops and writes what it saw."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


def split_target(target: str) -> tuple[str, int]:
    """HOST:PORT, the host of an IPv6 address in brackets or not."""
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


async def run(host: str, port: int, interval: float, duration: float, count: int, timeout: float) -> list[Attempt]:
    stop = stop_on_signals()
    tasks: list[asyncio.Task] = []
    began = time.monotonic()
    while not stop.is_set() and len(tasks) < count and time.monotonic() - began < duration:
        tasks.append(asyncio.create_task(one_request(host, port, timeout)))
        next_start = began + len(tasks) * interval
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, next_start - time.monotonic()))
        except asyncio.TimeoutError:
            pass
    return list(await asyncio.gather(*tasks))


def summarize(attempts: list[Attempt], since: float | None = None, until: float | None = None,
              slow: float = 0.5) -> dict:
    """Failed and slow requests, and the longest time between two successful replies."""
    chosen = [a for a in attempts if (since is None or a.start >= since) and (until is None or a.start < until)]
    finished_ok = sorted(a.start + a.duration for a in chosen if a.ok)
    gaps = [b - a for a, b in zip(finished_ok, finished_ok[1:])]
    return {
        "requests": len(chosen),
        "failed": sum(not a.ok for a in chosen),
        "slow": sum(a.ok and a.duration > slow for a in chosen),
        "longest_gap": max(gaps, default=0.0),
        "max_latency": max((a.duration for a in chosen), default=0.0),
        "errors": sorted({a.detail for a in chosen if not a.ok}),
    }


def load(path: str) -> list[Attempt]:
    with open(path) as f:
        return [Attempt(*row) for row in json.load(f)["attempts"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="HOST:PORT")
    parser.add_argument("--interval", type=float, default=0.01)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--out", default="-")
    args = parser.parse_args()
    attempts = asyncio.run(run(*split_target(args.target), args.interval, args.duration, args.count, args.timeout))
    document = json.dumps({"attempts": [[a.start, a.duration, a.ok, a.detail] for a in attempts]})
    if args.out == "-":
        sys.stdout.write(document)
    else:
        with open(args.out, "w") as f:
            f.write(document)


if __name__ == "__main__":
    main()
