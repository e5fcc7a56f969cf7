"""etcd v3 through its JSON gateway (POST /v3/...), with aiohttp; works on etcd 3.4 and 3.5.

Why not a client library: `aetcd` (the asyncio one) needs grpcio and protobuf, a large native
dependency for five calls, and a keepalive over a gRPC stream hides when each renewal was sent,
which the fence needs. Over the gateway one POST is one renewal, stamped before it goes out.

Proto3 JSON: keys and values are base64, int64 fields are strings, zero values are left out
(a failed txn has no `succeeded`, a keepalive of a dead lease no `TTL`).
"""
from __future__ import annotations

import asyncio
import base64
import json
import ssl
from dataclasses import dataclass
from typing import AsyncIterator

import aiohttp

from vipd.election.config import EtcdConfig


class EtcdError(Exception):
    """One line saying what failed; `gone` when etcd said the lease does not exist."""

    def __init__(self, message: str, gone: bool = False) -> None:
        super().__init__(message)
        self.gone = gone


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")


def prefix_end(key: str) -> str:
    """The range_end that covers every key starting with `key`."""
    raw = bytearray(key.encode())
    raw[-1] += 1
    return base64.b64encode(bytes(raw)).decode()


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: str
    lease: int
    create_revision: int


def _kv(raw: dict) -> KeyValue:
    return KeyValue(unb64(raw.get("key", "")), unb64(raw.get("value", "")), int(raw.get("lease", 0)),
                    int(raw.get("create_revision", 0)))


def ssl_context(config: EtcdConfig) -> ssl.SSLContext | None:
    if not config.tls:
        return None
    context = ssl.create_default_context(cafile=config.ca_file)
    if config.cert_file and config.key_file:
        context.load_cert_chain(config.cert_file, config.key_file)
    return context


def failure(exc: BaseException, client_cert: bool) -> str:
    """One line for a failed request; for TLS, whose certificate is the problem and which key to check."""
    if isinstance(exc, TimeoutError):
        return type(exc).__name__
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        exc = exc.certificate_error
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: etcd's certificate is not trusted ({cause.verify_message}); check etcd.ca_file"
    if not isinstance(cause, ssl.SSLError):
        return str(exc)
    reason = cause.reason or str(cause)
    if "ALERT" in reason and "CERTIFICATE" in reason:
        if client_cert:
            return f"TLS: etcd refused our client certificate ({reason}); is etcd.cert_file from a CA etcd trusts?"
        return f"TLS: etcd wants a client certificate ({reason}); set etcd.cert_file and etcd.key_file"
    return f"TLS: {reason}"


class EtcdClient:
    """Calls go to one endpoint at a time; a failed call moves to the next one."""

    def __init__(self, config: EtcdConfig, timeout: float) -> None:
        self.endpoints = list(config.endpoints)
        self.timeout = timeout
        self._current = 0
        self._ssl = ssl_context(config)
        self._client_cert = bool(config.cert_file)
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._ssl or False))
        return self._session

    @property
    def endpoint(self) -> str:
        return self.endpoints[self._current % len(self.endpoints)]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, path: str, body: dict) -> dict:
        url = self.endpoint.rstrip("/") + path
        try:
            async with asyncio.timeout(self.timeout):
                async with self._http().post(url, json=body) as response:
                    text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            self._current += 1
            raise EtcdError(f"{url}: {failure(exc, self._client_cert)}") from None
        line = text.strip().splitlines()[0] if text.strip() else "{}"
        try:
            answer = json.loads(line)
        except ValueError:
            self._current += 1
            raise EtcdError(f"{url}: HTTP {response.status}, not JSON") from None
        if "result" in answer and isinstance(answer["result"], dict):
            answer = answer["result"]
        error = answer.get("error")
        if error:
            message = error.get("message") if isinstance(error, dict) else answer.get("message", error)
            gone = "lease not found" in str(message)
            if not gone:
                self._current += 1
            raise EtcdError(f"{self.endpoint}: {message}", gone=gone)
        if response.status != 200:
            self._current += 1
            raise EtcdError(f"{url}: HTTP {response.status}")
        return answer

    async def grant(self, ttl: float) -> tuple[int, float]:
        answer = await self.call("/v3/lease/grant", {"TTL": int(round(ttl))})
        return int(answer["ID"]), float(answer["TTL"])

    async def renew(self, lease: int) -> float:
        """The TTL etcd renewed the lease for; EtcdError(gone=True) when it no longer exists."""
        answer = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        if "TTL" not in answer or int(answer["TTL"]) <= 0:
            raise EtcdError("lease expired or revoked", gone=True)
        return float(answer["TTL"])

    async def revoke(self, lease: int) -> None:
        try:
            await self.call("/v3/lease/revoke", {"ID": str(lease)})
        except EtcdError as exc:
            if not exc.gone:
                raise

    async def prefix(self, key: str) -> list[KeyValue]:
        """`key` and every key below `key/`, read linearizably."""
        answer = await self.call("/v3/kv/range", {"key": b64(key), "range_end": prefix_end(key)})
        return [kv for kv in map(_kv, answer.get("kvs", [])) if kv.key == key or kv.key.startswith(key + "/")]

    async def txn(self, compare: list, success: list, failure: list | None = None) -> bool:
        answer = await self.call("/v3/kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(answer.get("succeeded"))

    async def watch(self, key: str) -> AsyncIterator[None]:
        """One item per change under `key` (and `key` itself) until the stream ends; an accelerator
        only: what the keys hold is read with `prefix`. Fails fast on a member without quorum."""
        url = self.endpoint.rstrip("/") + "/v3/watch"
        body = {"create_request": {"key": b64(key), "range_end": prefix_end(key)}}
        try:
            async with self._http().post(url, json=body, timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.timeout),
                                         headers={"Grpc-Metadata-hasleader": "true"}) as response:
                async for line in response.content:
                    if not line.strip():
                        continue
                    message = json.loads(line)
                    if "error" in message:
                        raise EtcdError(f"{self.endpoint}: watch: {message['error'].get('message', message['error'])}")
                    if message.get("result", {}).get("events") or message.get("result", {}).get("created"):
                        yield None
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            self._current += 1
            raise EtcdError(f"{url}: {failure(exc, self._client_cert)}") from None
        self._current += 1
