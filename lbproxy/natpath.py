"""The nat frontends' owner: keeps vipd's nftables table (lbproxy.natrules renders it) in step with
the health checkers' verdicts, one `nft -f` transaction per change, and reads back what the kernel
counted. No worker process takes part: the kernel forwards the packets.

At stop the maps are emptied (new connections are reset) and the table stays while flows are open,
up to drain_timeout: the kernel translates an established flow's packets only while some nat
chain is hooked in, so removing the table at once would cut them.

Counters, read when the status is asked for and the last reading is older than POLL_INTERVAL
(reading conntrack walks its whole table: at thousands of new connections a second, mostly
TIME_WAIT entries, nobody should pay that on a timer): a backend's `total` is its nft counter (packets through its
DNAT rule, which sees only each connection's first packet: connections sent to it since vipd
started); its `active` the ESTABLISHED conntrack entries whose reply comes from it.
"""
from __future__ import annotations

import asyncio
import collections
import ipaddress
import json
import logging
from typing import Mapping, Sequence

from lbproxy.config import FrontendConfig
from lbproxy.natrules import (
    FAMILY,
    TABLE,
    Ruleset,
    Target,
    object_name,
    render,
    render_removal,
)
from lbproxy.sysctl import enable_forwarding

log = logging.getLogger("lbproxy")

NFT_TIMEOUT = 5.0          # seconds any nft or conntrack run may take
POLL_INTERVAL = 2.0        # seconds between retries of a failed table update, and counter readings at most
DRAIN_POLL = 0.2


class NatError(Exception):
    """The kernel path cannot be set up; one line for the operator."""


def established_by_reply_source(conntrack_output: str) -> collections.Counter:
    """`conntrack -L` lines -> {(reply source ip, reply source port): count}: the backend each flow
    was translated to answers from there."""
    counts: collections.Counter = collections.Counter()
    for line in conntrack_output.splitlines():
        fields = line.split()
        sources = [f[4:] for f in fields if f.startswith("src=")]
        ports = [f[6:] for f in fields if f.startswith("sport=")]
        if len(sources) >= 2 and len(ports) >= 2 and ports[1].isdigit():
            try:
                counts[(str(ipaddress.ip_address(sources[1])), int(ports[1]))] += 1
            except ValueError:
                continue
    return counts


def counter_packets(nft_json: str) -> dict[str, int]:
    """`nft -j list counters table ...` -> {counter name: packets}."""
    out = {}
    for item in json.loads(nft_json).get("nftables", []):
        counter = item.get("counter") if isinstance(item, dict) else None
        if isinstance(counter, dict) and "name" in counter:
            out[counter["name"]] = int(counter.get("packets", 0))
    return out


async def run(argv: Sequence[str], stdin: str | None = None) -> str:
    """stdout of a command that must succeed within NFT_TIMEOUT; NatError with its complaint."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    except OSError as exc:
        raise NatError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin is not None else None),
                                          NFT_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise NatError(f"{argv[0]} did not finish within {NFT_TIMEOUT:g}s") from None
    if proc.returncode != 0:
        complaint = " / ".join(err.decode(errors="replace").strip().splitlines()[:3])
        raise NatError(f"{' '.join(argv[:3])} failed: {complaint or f'exit code {proc.returncode}'}")
    return out.decode(errors="replace")


class NatDataPath:
    def __init__(self, frontends: Sequence[FrontendConfig], checkers: Mapping) -> None:
        self.frontends = list(frontends)
        self.checkers = checkers           # frontend name -> HealthChecker (the supervisor's)
        self.accepting = True
        self.installed = False
        self._ruleset: Ruleset | None = None
        self._pending = False               # a change not yet in the kernel (retried)
        self._changed = asyncio.Event()
        self._packets: dict[str, int] = {}
        self._established: dict[int, collections.Counter] = {}    # per listen port
        self._task: asyncio.Task | None = None
        self._reading: asyncio.Task | None = None
        self._read_at = -POLL_INTERVAL
        self._applying = asyncio.Lock()     # one nft transaction at a time, each from the latest state

    def __contains__(self, name: str) -> bool:
        return any(f.name == name for f in self.frontends)

    def targets(self, frontend: FrontendConfig) -> list[Target]:
        checker = self.checkers.get(frontend.name)
        out = []
        for b in frontend.backends:
            bh = checker.backends.get(b.address) if checker else None
            out.append(Target(b.address, str(ipaddress.ip_address(b.host)), b.port,
                              bh.weight if bh else b.weight, bh.state if bh else "up", b.backup))
        return out

    # --- lifecycle

    async def start(self) -> None:
        self._enable_forwarding()
        await self._apply()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def update(self, frontends: Sequence[FrontendConfig]) -> None:
        self.frontends = list(frontends)
        self._enable_forwarding()
        await self._apply()

    def changed(self) -> None:
        """A backend's state or weight changed: the table follows at once (changes coalesce)."""
        self._changed.set()

    async def stop_accepting(self) -> None:
        """Every map emptied: new connections are reset, established ones keep flowing."""
        self.accepting = False
        await self._apply()

    async def drain(self, timeout: float | None = None) -> None:
        """New connections reset; wait for the open flows (up to `timeout`, else the longest
        drain_timeout), then remove the table."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else max(f.drain_timeout for f in self.frontends))
        self._stop_task()
        try:
            if self.accepting:
                await self.stop_accepting()
            while loop.time() < deadline:
                await self._poll()
                if not any(self._counts(f)["active"] for f in self.frontends):
                    break
                await asyncio.sleep(DRAIN_POLL)
        except NatError as exc:
            log.error("proxy: nat frontends: %s", exc)
        await self.stop()

    def _stop_task(self) -> None:
        for task in (self._task, self._reading):
            if task is not None:
                task.cancel()

    async def stop(self) -> None:
        self._stop_task()
        await asyncio.gather(*(t for t in (self._task, self._reading) if t is not None), return_exceptions=True)
        try:
            await run(["nft", "-f", "-"], render_removal())
            log.info("proxy: removed nftables table of the nat frontends")
        except NatError as exc:
            log.error("proxy: %s", exc)
        self.installed = False

    # --- the kernel

    def _enable_forwarding(self) -> None:
        for frontend in self.frontends:
            if not enable_forwarding(ipaddress.ip_address(frontend.listen_host).version, frontend.name):
                raise NatError(f"nat frontend {frontend.name} needs packet forwarding, which cannot be enabled")

    async def _apply(self) -> None:
        async with self._applying:
            ruleset = render([(f, self.targets(f)) for f in self.frontends], self.accepting, self._ruleset)
            try:
                await run(["nft", "-f", "-"], ruleset.text)
            except NatError:
                self._pending = True
                raise
            self._ruleset = ruleset
            self._pending = False
            self.installed = True

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._changed.wait(), POLL_INTERVAL)
            except asyncio.TimeoutError:
                pass
            if self._changed.is_set() or self._pending:
                self._changed.clear()
                try:
                    await self._apply()
                except NatError as exc:
                    log.error("proxy: nat frontends: %s; the previous table stays in force, retrying", exc)

    def _refresh_counters(self) -> None:
        """Start a counter reading when the last one is stale; the status shows the last one."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._read_at < POLL_INTERVAL or (self._reading and not self._reading.done()):
            return
        self._read_at = loop.time()

        async def read() -> None:
            try:
                await self._poll()
            except (NatError, ValueError) as exc:
                log.debug("proxy: nat counters: %s", exc)
        self._reading = loop.create_task(read())

    async def _poll(self) -> None:
        self._packets = counter_packets(await run(["nft", "-j", "list", "counters", "table", FAMILY, TABLE]))
        self._established = {port: established_by_reply_source(await run(
            ["conntrack", "-L", "-p", "tcp", "--state", "ESTABLISHED", "--orig-port-dst", str(port)]))
            for port in {f.listen_port for f in self.frontends}}

    # --- status

    def stats(self, frontend: FrontendConfig) -> dict:
        """The frontend's counters in the shape the workers report (lbproxy.status), as last read."""
        if self.installed:
            self._refresh_counters()
        return self._counts(frontend)

    def _counts(self, frontend: FrontendConfig) -> dict:
        backends = {}
        established = self._established.get(frontend.listen_port, {})
        for t in self.targets(frontend):
            backends[t.address] = {"active": established.get((t.host, t.port), 0),
                                   "total": self._packets.get(object_name("b", frontend.name, t.address), 0)}
        return {"active": sum(b["active"] for b in backends.values()),
                "accepted": sum(b["total"] for b in backends.values()),
                "refused": self._packets.get(object_name("r", frontend.name), 0),
                "backends": backends}
