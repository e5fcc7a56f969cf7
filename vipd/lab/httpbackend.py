"""A small HTTP/1.1 backend for the lab (demo, tests, benches): answers every GET with its name.

`/healthz` answers 200 unless the file given by --unhealthy-if exists (then 503), so a test can
fail a backend's health check without killing it.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import signal


class HttpBackend(asyncio.Protocol):
    def __init__(self, name: str, unhealthy_flag: str | None) -> None:
        self.name = name.encode()
        self.unhealthy_flag = unhealthy_flag
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.respond(head)
            if self.transport is None or self.transport.is_closing():
                return

    def respond(self, head: bytes) -> None:
        request_line, *headers = head.split(b"\r\n")
        parts = request_line.split()
        path = parts[1] if len(parts) > 1 else b"/"
        lowered = [h.lower() for h in headers]
        close = b"connection: close" in lowered or request_line.endswith(b"HTTP/1.0")
        status, body = b"200 OK", self.name + b"\n"
        if path == b"/healthz" and self.unhealthy_flag and os.path.exists(self.unhealthy_flag):
            status, body = b"503 Service Unavailable", b"unhealthy\n"
        response = (b"HTTP/1.1 " + status + b"\r\nContent-Type: text/plain\r\nContent-Length: "
                    + str(len(body)).encode() + (b"\r\nConnection: close" if close else b"")
                    + b"\r\n\r\n" + body)
        assert self.transport is not None
        self.transport.write(response)
        if close:
            self.transport.close()


async def serve(host: str, port: int, name: str, unhealthy_flag: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpBackend(name, unhealthy_flag), host, port,
                                      reuse_address=True, backlog=1024)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="0.0.0.0:8080")
    parser.add_argument("--name", default="backend")
    parser.add_argument("--unhealthy-if", default=None)
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    asyncio.run(serve(host.strip("[]"), int(port), args.name, args.unhealthy_if))


if __name__ == "__main__":
    main()
