"""Runtime operator state on loopback: weights pushed from the supervisor to a real worker, and a
real `vipd run` whose drains and weights survive `lbctl reload` and a restart, shown as overrides."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import free_port, own_network, wait_until
from test_control import REPO

from lbproxy.config import BackendConfig, FrontendConfig, HealthConfig, ProxyConfig
from lbproxy.healthcheck import Override
from lbproxy.supervisor import ProxySupervisor
from vipd.control.client import request
from vipd.control.schema import StatusDocument, WeightAnswer, check
from vipd.runtime_state import STATE_FILE

pytestmark = pytest.mark.timeout(120)


class NamedBackend:
    """A loopback server that answers every connection with its name."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        async def serve(reader, writer):
            writer.write(self.name.encode())
            await writer.drain()
            writer.close()
        self.server = await asyncio.start_server(serve, "127.0.0.1", 0)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    def config(self) -> BackendConfig:
        host, port = self.address.split(":")
        return BackendConfig(self.address, host, int(port))


async def answers(port: int, count: int) -> dict[str, int]:
    await asyncio.sleep(0.2)         # the push to the worker is one way, without an answer
    seen: dict[str, int] = {}
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        name = (await asyncio.wait_for(reader.read(), 5)).decode()
        writer.close()
        seen[name] = seen.get(name, 0) + 1
    return seen


def test_runtime_weights_reach_the_worker_and_zero_takes_no_new_connections():
    async def scenario():
        one, two = NamedBackend("one"), NamedBackend("two")
        await one.start()
        await two.start()
        port = free_port()
        frontend = FrontendConfig(
            name="api", listen=f"127.0.0.1:{port}", listen_host="127.0.0.1", listen_port=port,
            backends=(one.config(), two.config()), balance="round_robin",
            health=HealthConfig(type="tcp", interval=0.2, timeout=0.5, rise=1, fall=3))
        # Started with `two` at weight 0, as after a restart: not one connection reaches it.
        supervisor = ProxySupervisor(ProxyConfig((frontend,), workers=1),
                                     overrides={"api": {two.address: Override(weight=0)}})
        await supervisor.start()
        try:
            backends = lambda: {b["address"]: b for b in supervisor.status()[0]["backends"]}
            assert backends()[two.address]["state"] == "drain"
            assert backends()[two.address]["overrides"] == {"weight": 0}
            assert await answers(port, 6) == {"one": 6}

            assert supervisor.set_weight("api", two.address, 3) == 3
            assert backends()[two.address]["state"] == "up" and backends()[two.address]["weight"] == 3
            assert await answers(port, 8) == {"one": 2, "two": 6}

            assert supervisor.set_weight("api", one.address, 0) == 0
            assert await answers(port, 4) == {"two": 4}

            # The configured weight (1) ends the override, as `reset` (None) does.
            assert supervisor.set_weight("api", one.address, 1) is None
            assert supervisor.set_weight("api", two.address, None) is None
            assert backends()[one.address]["overrides"] == backends()[two.address]["overrides"] == {}
            assert await answers(port, 4) == {"one": 2, "two": 2}
            with pytest.raises(KeyError):
                supervisor.set_weight("api", "127.0.0.1:1", 2)
        finally:
            await supervisor.stop_accepting()
            await supervisor.drain(0.5)
            for backend in (one, two):
                backend.server.close()

    asyncio.run(scenario())


class LiveNode:
    """`vipd run` with one [[frontend]] (its own network namespace when root, as in test_control)."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.sock = str(run_dir / "control.sock")
        self.state_dir = run_dir / "state"
        self.config = run_dir / "vipd.toml"
        self.metrics = f"127.0.0.1:{free_port()}"
        self.dead = f"127.0.0.1:{free_port()}"
        self.gone = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen | None = None

    def write(self, with_gone: bool = True) -> None:
        # The healthy backend is the daemon's own metrics listener (its loopback may be its own).
        backends = [self.metrics, self.dead] + ([self.gone] if with_gone else [])
        self.config.write_text("\n".join([
            "[node]", 'name = "local-1"', f'control_socket = "{self.sock}"',
            f'metrics_listen = "{self.metrics}"', "workers = 1", f'state_dir = "{self.state_dir}"',
            "[[frontend]]", 'name = "api"', f'listen = "127.0.0.1:{free_port()}"',
            "  [frontend.health]", '  type = "tcp"', "  interval = 0.2", "  timeout = 0.5",
            "  rise = 1", "  fall = 1",
            *[line for b in backends for line in ("  [[frontend.backend]]", f'  address = "{b}"', "  weight = 2")],
            ""]))

    def start(self) -> None:
        log = open(self.run_dir / "vipd.log", "ab")
        self.proc = subprocess.Popen(own_network([sys.executable, "-m", "vipd", "run", "-c", str(self.config)]),
                                     cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        try:
            wait_until(lambda: self.status() and self.backends()[self.dead]["state"] != "up", 30, "the daemon")
        except AssertionError:
            raise AssertionError(self.log()) from None

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            assert self.proc.wait(30) == 0, self.log()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        return (self.run_dir / "vipd.log").read_text(errors="replace")

    def status(self) -> dict | None:
        code, body = request(self.sock, "GET", "/v1/status", 10.0)
        return body if code == 200 else None

    def backends(self) -> dict[str, dict]:
        return {b["address"]: b for b in self.status()["frontends"][0]["backends"]}

    def overrides(self) -> dict[str, dict]:
        return {a: b["overrides"] for a, b in self.backends().items() if b["overrides"]}

    def lbctl(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", self.sock, *args],
                              cwd=REPO, capture_output=True, text=True, timeout=30)

    def saved(self) -> dict:
        return json.loads((self.state_dir / STATE_FILE).read_text())


@pytest.fixture
def node():
    run_dir = Path(tempfile.mkdtemp(prefix="vipd-opstate-", dir="/tmp"))
    built = LiveNode(run_dir)
    try:
        yield built
    finally:
        if built.proc is not None and built.proc.poll() is None:
            built.proc.kill()
            built.proc.wait()
        subprocess.run(["rm", "-rf", str(run_dir)], check=False)


def test_drains_and_weights_survive_reload_and_restart_and_show_as_overrides(node):
    node.write()
    node.start()
    try:
        assert not node.state_dir.exists()           # nothing changed yet: nothing written
        weighted = node.lbctl("weight", "api", node.metrics, "3")
        assert weighted.returncode == 0, weighted.stderr
        assert weighted.stdout == f"api {node.metrics}: weight 3 (runtime override)\n"
        assert node.lbctl("drain", "api", node.dead).returncode == 0
        assert node.lbctl("weight", "api", node.gone, "0").stdout == (
            f"api {node.gone}: weight 0 (runtime override), drain (no new connections; open ones finish)\n")
        expected = {node.metrics: {"weight": 3}, node.dead: {"drain": True}, node.gone: {"weight": 0}}
        assert node.overrides() == expected
        assert oct(node.state_dir.stat().st_mode & 0o777) == "0o750"
        assert node.saved()["drains"] == {"api": [node.dead]}
        assert node.saved()["weights"] == {"api": {node.metrics: 3, node.gone: 0}}
        assert check(node.status(), StatusDocument, strict=True).problems == []

        table = node.lbctl("status").stdout.splitlines()
        row = lambda address: next(line.split() for line in table if line.strip().startswith(address))
        assert row(node.metrics)[:3] == [node.metrics, "up", "3*"]
        assert row(node.dead)[:3] == [node.dead, "drain*", "2"]
        assert row(node.gone)[:3] == [node.gone, "drain", "0*"]
        assert table[-1].startswith("* runtime override")

        for bad, reason in (("257", "weight 257 is out of range 0..256"), ("-1", "weight -1 is out of range 0..256"),
                            ("x", "weight must be an integer 0..256 or 'reset', not 'x'")):
            refused = node.lbctl("weight", "api", node.metrics, bad)
            assert (refused.returncode, refused.stdout, refused.stderr) == (1, "", f"lbctl: {reason}\n"), bad
        unknown = node.lbctl("weight", "api", "127.0.0.1:1", "2")
        assert unknown.returncode == 1 and unknown.stderr.count("\n") == 1 and "127.0.0.1:1" in unknown.stderr
        no_vips = node.lbctl("maintenance", "on")
        assert no_vips.returncode == 1 and no_vips.stderr == (
            "lbctl: this node holds no VIPs: it runs no [[vrrp]], [[election]] or [[anycast]]\n")

        reloaded = node.lbctl("reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert node.overrides() == expected

        node.stop()
        node.start()
        assert node.overrides() == expected
        assert node.backends()[node.metrics]["weight"] == 3 and node.backends()[node.dead]["state"] == "drain"

        # Changed back: the configured weight and `reset` end a weight, enable ends a drain. (The
        # restarted daemon's checks of its own metrics listener may still be rising.)
        wait_until(lambda: node.backends()[node.metrics]["state"] == "up", 15, "the metrics backend up")
        answer = request(node.sock, "POST", f"/v1/frontends/api/backends/{node.metrics}/weight/2", 10.0)[1]
        assert check(answer, WeightAnswer, strict=True).problems == []
        assert answer == {"frontend": "api", "backend": node.metrics, "weight": 2, "state": "up", "overrides": {}}
        assert node.lbctl("weight", "api", node.gone, "reset").stdout == f"api {node.gone}: weight 2 (as configured)\n"
        # A removed backend's override is dropped on reload, with a line in the log.
        node.write(with_gone=False)
        assert node.lbctl("weight", "api", node.gone, "5").returncode == 0
        assert node.lbctl("reload").returncode == 0
        assert f"runtime override dropped: weight of api {node.gone}: no such backend" in node.log()
        assert node.saved()["weights"] == {}
        assert node.lbctl("enable", "api", node.dead).returncode == 0
        assert node.overrides() == {}
        assert node.saved() == {"version": 1, "maintenance": {"all": False, "owners": []}, "drains": {}, "weights": {}}
        assert "WEIGHT" in node.lbctl("status").stdout and "*" not in node.lbctl("status").stdout
    finally:
        if node.proc.poll() is None:
            node.stop()
    assert "Traceback" not in node.log()


def test_a_corrupt_state_file_is_a_warning_and_no_overrides(node):
    node.write()
    node.state_dir.mkdir()
    (node.state_dir / STATE_FILE).write_text('{"version": 1, "drains": {"api": ["127.0')
    node.start()
    try:
        assert node.overrides() == {}
        warnings = [line for line in node.log().splitlines() if "runtime state" in line]
        assert len(warnings) == 1 and "WARNING" in warnings[0] and "not JSON" in warnings[0], warnings
        # The next change replaces the damaged file with a whole one.
        assert node.lbctl("drain", "api", node.dead).returncode == 0
        assert node.saved()["drains"] == {"api": [node.dead]}
    finally:
        node.stop()


def test_an_unwritable_state_dir_keeps_the_change_and_says_it_is_not_saved(node):
    if os.geteuid() == 0:
        node.state_dir.parent.joinpath("blocker").write_text("")
        node.state_dir = node.state_dir.parent / "blocker" / "state"     # a file in the way: even root fails
    else:
        node.state_dir.mkdir(mode=0o500)
    node.write()
    node.start()
    try:
        drained = node.lbctl("drain", "api", node.dead)
        assert drained.returncode == 0
        assert drained.stdout.startswith(f"api {node.dead}: drain")
        assert drained.stderr.startswith("lbctl: warning: not saved to ") and drained.stderr.endswith(
            ": lost on restart\n") and drained.stderr.count("\n") == 1
        assert node.overrides() == {node.dead: {"drain": True}}
    finally:
        node.stop()
