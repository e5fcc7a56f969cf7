"""Long-lived flows through a VIP: `--flows` keep-alive TCP connections, each sending one HTTP GET
every `--interval` (started at a random phase) and reading the answer (the edge's backend name).

A flow breaks when its connection is reset or closed, or when an answer takes longer than
`--stall`; a broken flow is not reopened. Prints `ready N` once every flow has had its first
answer (N flows open), runs until SIGTERM, then writes one JSON document: every flow as
[edge of its first answer or null, monotonic time it broke or null, why].
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass

from vipd.lab import connclient

REQUEST = b"GET / HTTP/1.1\r\nHost: vip\r\n\r\n"


@dataclass
class Flow:
    edge: str | None = None
    broke_at: float | None = None
    why: str | None = None


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> str:
    """One request on the open connection; the answer's body."""
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    if not head.startswith(b"HTTP/1.1 200") or length is None:
        raise ConnectionError("bad answer " + repr(head.split(b"\r\n")[0]))
    return (await reader.readexactly(length)).decode(errors="replace").strip()


def reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "stall"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed"
    return (exc.strerror if isinstance(exc, OSError) and exc.strerror else None) or str(exc) or type(exc).__name__


async def run_flow(flow: Flow, host: str, port: int, interval: float, stall: float,
                   opened: asyncio.Semaphore, first: asyncio.Event, stop: asyncio.Event) -> None:
    writer = None
    try:
        async with opened:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), stall * 3)
            flow.edge = await asyncio.wait_for(ask(reader, writer), stall * 3)
        first.set()
        await asyncio.sleep(random.uniform(0, interval))
        while not stop.is_set():
            began = time.monotonic()
            answer = await asyncio.wait_for(ask(reader, writer), stall)
            if answer != flow.edge:
                raise ConnectionError(f"answered by {answer}")
            await asyncio.sleep(max(0.0, began + interval - time.monotonic()))
    except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        flow.broke_at, flow.why = time.monotonic(), reason(exc)
        first.set()
    finally:
        if writer is not None:
            writer.close()


async def run(host: str, port: int, flows: int, interval: float, stall: float) -> list[Flow]:
    stop = connclient.stop_on_signals()
    opened = asyncio.Semaphore(50)
    result = [Flow() for _ in range(flows)]
    firsts = [asyncio.Event() for _ in range(flows)]
    tasks = [asyncio.create_task(run_flow(f, host, port, interval, stall, opened, e, stop))
             for f, e in zip(result, firsts)]
    await asyncio.gather(*(e.wait() for e in firsts))
    print("ready", sum(f.edge is not None and f.broke_at is None for f in result), flush=True)
    await stop.wait()
    await asyncio.gather(*tasks)
    return result


def load(path: str) -> list[Flow]:
    with open(path) as f:
        return [Flow(*row) for row in json.load(f)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", required=True, help="host:port")
    parser.add_argument("--flows", type=int, default=300)
    parser.add_argument("--interval", type=float, default=0.1)
    parser.add_argument("--stall", type=float, default=1.5)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    flows = asyncio.run(run(*connclient.split_target(args.target), args.flows, args.interval, args.stall))
    with open(args.out, "w") as f:
        json.dump([[fl.edge, fl.broke_at, fl.why] for fl in flows], f)


if __name__ == "__main__":
    main()
