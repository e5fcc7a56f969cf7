"""The control socket and lbctl: a real ControlServer, real lbctl processes over the unix socket."""
from __future__ import annotations

import asyncio
import copy
import grp
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from support import free_port, own_network, wait_until

from vipd.control import schema
from vipd.control.client import backend_path, request
from vipd.control.metrics import families_from_status
from vipd.control.schema import (
    DrainAnswer,
    ErrorAnswer,
    ReloadAnswer,
    StatusDocument,
    check,
)
from vipd.control.server import ControlError, ControlServer

REPO = Path(__file__).resolve().parents[2]
LBCTL_TIMEOUT = 30.0

DOCUMENT = {
    "node": "edge-1",
    "vrrp": [
        {"name": "api", "state": "MASTER", "vrid": 51, "interface": "eth0", "version": 3,
         "priority": 150, "effective_priority": 150, "virtual_ips": ["198.18.0.100/24"],
         "master": "198.18.0.11", "since": "2026-11-26T23:00:00Z",
         "tracks": [{"name": "frontend:api", "ok": True, "weight": -60}],
         "adverts_sent": 12, "adverts_received": 0, "invalid": {}, "transitions": 2},
        {"name": "api6", "state": "BACKUP", "vrid": 52, "interface": "eth0", "version": 3,
         "priority": 100, "effective_priority": 40, "virtual_ips": ["2001:db8::100/64"],
         "master": None, "since": "2026-11-26T23:00:05Z",
         "tracks": [{"name": "script:/usr/local/bin/check", "ok": False, "weight": -60}]},
    ],
    "frontends": [
        {"name": "api", "listen": "0.0.0.0:6443", "active_connections": 3, "all_down": False,
         "refused": 2,
         "backends": [
             {"address": "198.18.0.21:6443", "state": "up", "active_connections": 1,
              "total_connections": 10, "failed_connections": 0, "health": "3/3 UP", "last_error": None},
             {"address": "198.18.0.22:6443", "state": "down", "active_connections": 0,
              "total_connections": 7, "failed_connections": 4, "health": "0/2 DOWN",
              "last_error": "HTTP 503"},
             {"address": "[2001:db8::23]:6443", "state": "drain", "active_connections": 2,
              "total_connections": 5, "failed_connections": 0, "health": "3/3 UP"},
         ]},
    ],
}


class FakeNode:
    """Handlers shaped like the daemon's, recording what lbctl asked for."""

    def __init__(self) -> None:
        self.document = copy.deepcopy(DOCUMENT)
        self.calls: list[tuple] = []

    async def status(self) -> dict:
        self.calls.append(("status",))
        return self.document

    def _backend(self, frontend: str, backend: str) -> dict:
        for f in self.document["frontends"]:
            if f["name"] == frontend:
                for b in f["backends"]:
                    if b["address"] == backend:
                        return b
                raise ControlError(404, f"no backend {backend!r} in frontend {frontend!r}")
        raise ControlError(404, f"no frontend {frontend!r}")

    async def drain(self, frontend: str, backend: str) -> dict:
        self._backend(frontend, backend)["state"] = "drain"
        self.calls.append(("drain", frontend, backend))
        return {"frontend": frontend, "backend": backend, "state": "drain"}

    async def enable(self, frontend: str, backend: str) -> dict:
        self._backend(frontend, backend)["state"] = "up"
        self.calls.append(("enable", frontend, backend))
        return {"frontend": frontend, "backend": backend, "state": "up"}

    async def reload(self) -> dict:
        # What Daemon.handle_reload answers; test_a_live_daemon_answers_by_the_schema holds the
        # real answer to the same keys.
        self.calls.append(("reload",))
        return {"ok": True, "config": "/etc/vipd/vipd.toml", "summary": "1 vrrp instance(s), 1 frontend(s)",
                "warnings": []}


class SchemaChecked:
    """Wraps handlers: every answer they give is checked against the schema, strictly."""

    ANSWERS = {"status": StatusDocument, "drain": DrainAnswer, "enable": DrainAnswer,
               "reload": ReloadAnswer}

    def __init__(self, handlers) -> None:
        self.handlers = handlers
        self.problems: list[str] = []

    def __getattr__(self, name: str):
        async def answer(*args):
            result = await getattr(self.handlers, name)(*args)
            self.problems += [f"{name}: {p}" for p in check(result, self.ANSWERS[name], strict=True).problems]
            return result
        return answer


class BrokenNode(FakeNode):
    async def status(self) -> dict:
        raise RuntimeError("component exploded")

    async def reload(self) -> dict:
        raise ControlError(422, "config refused:\n/etc/vipd/vipd.toml: vrrp[0].vrid: must be 1..255\n"
                                "/etc/vipd/vipd.toml: frontend[0].listen: is required")


async def lbctl(socket_path: str | None, *args: str, as_nobody: bool = False,
                env: dict | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "vipd.control.lbctl"]
    if socket_path is not None:
        argv += ["--socket", socket_path]
    argv += list(args)
    if as_nobody:
        argv = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, env=full_env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), LBCTL_TIMEOUT)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lbctl: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def run_dir():
    # Traversable by everyone (pytest's own tmp_path sits under a 0700 directory), so a refusal
    # seen by `nobody` can only come from the socket's mode.
    path = Path(tempfile.mkdtemp(prefix="vipd-control-", dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def serve(path: Path, handlers, scenario, group: str | None = None) -> None:
    checked = SchemaChecked(handlers)

    async def main() -> None:
        server = ControlServer(str(path), checked, group=group)
        await server.start()
        try:
            await scenario()
        finally:
            await server.stop()
    asyncio.run(main())
    assert checked.problems == []


@pytest.mark.timeout(120)
def test_status_table_and_json(run_dir: Path) -> None:
    path = run_dir / "run" / "vipd" / "control.sock"
    node = FakeNode()

    async def scenario() -> None:
        table = await lbctl(str(path), "status")
        assert table.returncode == 0, table.stderr
        text = table.stdout
        assert text.splitlines()[0] == "node edge-1"
        api = next(line for line in text.splitlines() if line.startswith("api/51 "))
        for field in ("MASTER", "150", "198.18.0.11", "198.18.0.100/24", "2026-11-26T23:00:00Z",
                      "frontend:api ok"):
            assert field in api
        api6 = next(line for line in text.splitlines() if line.startswith("api6/52 "))
        for field in ("BACKUP", "100", "40", "2001:db8::100/64", "script:/usr/local/bin/check FAIL -60"):
            assert field in api6
        assert "FRONTEND api  listen 0.0.0.0:6443  active 3  refused 2\n" in text
        b21 = next(line for line in text.splitlines() if "198.18.0.21:6443" in line)
        assert b21.split() == ["198.18.0.21:6443", "up", "3/3", "UP", "1", "10", "0", "-"]
        b22 = next(line for line in text.splitlines() if "198.18.0.22:6443" in line)
        assert b22.split() == ["198.18.0.22:6443", "down", "0/2", "DOWN", "0", "7", "4", "HTTP", "503"]
        b23 = next(line for line in text.splitlines() if "[2001:db8::23]:6443" in line)
        assert b23.split() == ["[2001:db8::23]:6443", "drain", "3/3", "UP", "2", "5", "0", "-"]
        header = next(line for line in text.splitlines() if line.startswith("VRRP"))
        # Fixed-width columns: every instance's STATE cell starts under the header's.
        column = header.index("STATE")
        assert api[column:].startswith("MASTER") and api6[column:].startswith("BACKUP")

        assert table.stderr == ""

        as_json = await lbctl(str(path), "status", "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout) == DOCUMENT and as_json.stderr == ""

    serve(path, node, scenario)
    assert node.calls == [("status",), ("status",)]
    assert not path.exists(), "stop() removes the socket file"


@pytest.mark.timeout(120)
def test_drain_enable_reload_call_the_handlers(run_dir: Path) -> None:
    path = run_dir / "control.sock"
    node = FakeNode()

    async def scenario() -> None:
        drained = await lbctl(str(path), "drain", "api", "198.18.0.21:6443")
        assert drained.returncode == 0, drained.stderr
        assert drained.stdout == "api 198.18.0.21:6443: drain (no new connections; open ones finish)\n"
        drained6 = await lbctl(str(path), "drain", "api", "[2001:db8::23]:6443")
        assert drained6.returncode == 0, drained6.stderr
        enabled = await lbctl(str(path), "enable", "api", "198.18.0.21:6443")
        assert enabled.returncode == 0, enabled.stderr
        assert enabled.stdout == "api 198.18.0.21:6443: up (takes new connections)\n"
        reloaded = await lbctl(str(path), "reload")
        assert reloaded.returncode == 0, reloaded.stderr
        assert reloaded.stdout == "reloaded /etc/vipd/vipd.toml: 1 vrrp instance(s), 1 frontend(s)\n"
        assert "" == drained.stderr == enabled.stderr == reloaded.stderr
        # The default socket comes from VIPD_SOCKET when --socket is not given.
        via_env = await lbctl(None, "status", "--json", env={"VIPD_SOCKET": str(path)})
        assert via_env.returncode == 0, via_env.stderr
        assert json.loads(via_env.stdout)["frontends"][0]["backends"][0]["state"] == "up"

    serve(path, node, scenario)
    assert node.calls == [
        ("drain", "api", "198.18.0.21:6443"),
        ("drain", "api", "[2001:db8::23]:6443"),
        ("enable", "api", "198.18.0.21:6443"),
        ("reload",),
        ("status",),
    ]


@pytest.mark.timeout(120)
def test_unknown_frontend_or_backend_is_one_line_and_exit_1(run_dir: Path) -> None:
    path = run_dir / "control.sock"
    node = FakeNode()

    async def scenario() -> None:
        no_frontend = await lbctl(str(path), "drain", "nope", "198.18.0.21:6443")
        assert_one_line_error(no_frontend, "no frontend 'nope'")
        no_backend = await lbctl(str(path), "enable", "api", "198.18.0.99:6443")
        assert_one_line_error(no_backend, "no backend '198.18.0.99:6443' in frontend 'api'")

    serve(path, node, scenario)
    assert node.calls == []


@pytest.mark.timeout(120)
def test_daemon_errors_stay_one_line(run_dir: Path) -> None:
    path = run_dir / "control.sock"

    async def scenario() -> None:
        crashed = await lbctl(str(path), "status")
        assert_one_line_error(crashed, "internal error", "component exploded")
        refused = await lbctl(str(path), "reload")
        assert_one_line_error(refused, "config refused", "vrrp[0].vrid", "frontend[0].listen")
        status, body = await asyncio.to_thread(request, str(path), "GET", "/v1/nothing-here", 5.0)
        assert status == 404 and "unknown path" in body["error"]
        status, no_method = await asyncio.to_thread(request, str(path), "GET", "/v1/reload", 5.0)
        assert status == 405
        status, crash = await asyncio.to_thread(request, str(path), "GET", "/v1/status", 5.0)
        assert status == 500
        for answer in (body, no_method, crash):
            assert check(answer, ErrorAnswer, strict=True).problems == []

    serve(path, BrokenNode(), scenario)


@pytest.mark.timeout(60)
def test_missing_socket_is_one_line_and_exit_1(run_dir: Path) -> None:
    path = run_dir / "absent" / "control.sock"
    result = asyncio.run(lbctl(str(path), "status"))
    assert_one_line_error(result, f"cannot reach vipd at {path}: No such file or directory (is vipd running?)")


@pytest.mark.timeout(60)
def test_stale_socket_is_refused_then_replaced(run_dir: Path) -> None:
    path = run_dir / "control.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    assert stat.S_ISSOCK(path.stat().st_mode)

    result = asyncio.run(lbctl(str(path), "status"))
    assert_one_line_error(result, "Connection refused", "(is vipd running?)")

    async def scenario() -> None:
        alive = await lbctl(str(path), "status", "--json")
        assert alive.returncode == 0, alive.stderr
        assert json.loads(alive.stdout)["node"] == "edge-1"

    serve(path, FakeNode(), scenario)


@pytest.mark.timeout(60)
def test_refuses_to_take_over_a_live_socket_or_a_regular_file(run_dir: Path) -> None:
    live = run_dir / "live.sock"
    plain = run_dir / "plain.sock"
    plain.write_text("not a socket")

    async def scenario() -> None:
        with pytest.raises(OSError, match="another process"):
            await ControlServer(str(live), FakeNode()).start()
        with pytest.raises(OSError, match="not a socket"):
            await ControlServer(str(plain), FakeNode()).start()
        status, body = await asyncio.to_thread(request, str(live), "GET", "/v1/status", 5.0)
        assert status == 200 and body["node"] == "edge-1"

    serve(live, FakeNode(), scenario)
    assert plain.read_text() == "not a socket"


@pytest.mark.timeout(60)
def test_socket_mode_and_group(run_dir: Path) -> None:
    path = run_dir / "sub" / "control.sock"
    group = grp.getgrgid(65534).gr_name if _gid_exists(65534) else None

    async def scenario() -> None:
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_uid == os.geteuid()
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o755
        if group is not None:
            assert st.st_gid == 65534

    serve(path, FakeNode(), scenario, group=group)


@pytest.mark.timeout(60)
def test_missing_group_leaves_the_socket_owner_only_but_serving(run_dir: Path, caplog) -> None:
    path = run_dir / "control.sock"

    async def scenario() -> None:
        st = path.stat()
        assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == os.getegid()
        status, body = await asyncio.to_thread(request, str(path), "GET", "/v1/status", 5.0)
        assert status == 200 and body["node"] == "edge-1"

    with caplog.at_level("WARNING", logger="vipd.control"):
        serve(path, FakeNode(), scenario, group="vipd-no-such-group-xyz")
    assert "vipd-no-such-group-xyz" in caplog.text and "root-only" in caplog.text


def _gid_exists(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def _require_nobody() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run lbctl as another user")
    if shutil.which("setpriv") is None:
        pytest.skip("needs `setpriv` (Debian package util-linux)")
    probe = subprocess.run(
        ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
         sys.executable, "-c", "import vipd.control.lbctl"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip(f"user nobody cannot run {sys.executable} with vipd importable")


@pytest.mark.timeout(120)
def test_permission_denied_for_others_allowed_for_the_group(run_dir: Path) -> None:
    _require_nobody()
    closed = run_dir / "closed.sock"
    shared = run_dir / "shared.sock"

    async def scenario() -> None:
        async def with_group() -> None:
            allowed = await lbctl(str(shared), "status", "--json", as_nobody=True)
            assert allowed.returncode == 0, allowed.stderr
            assert json.loads(allowed.stdout) == DOCUMENT

        server = ControlServer(str(shared), FakeNode(), group="nogroup")
        await server.start()
        try:
            await with_group()
        finally:
            await server.stop()
        denied = await lbctl(str(closed), "status", as_nobody=True)
        assert_one_line_error(
            denied, f"cannot reach vipd at {closed}: permission denied "
                    "(run as root or a member of the control group)")

    serve(closed, FakeNode(), scenario)


@pytest.mark.timeout(60)
def test_lbctl_does_not_import_aiohttp() -> None:
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, vipd.control.lbctl; print('aiohttp' in sys.modules)"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    assert probe.stdout.strip() == "False"


def test_table_tolerates_a_sparse_document() -> None:
    from vipd.control.lbctl import render_status

    sparse = {"node": "edge-2", "vrrp": [{"name": "x", "tracks": "garbage"}],
              "frontends": [{"name": "web", "backends": [{"address": "198.18.0.30:80"}],
                             "all_down": True}, "junk"]}
    text = render_status(check(sparse).value)
    lines = text.splitlines()
    assert lines[0] == "node edge-2"
    assert lines[2].split()[0] == "x" and "-" in lines[2].split()
    assert "FRONTEND web" in text and "ALL BACKENDS DOWN" in text
    assert "198.18.0.30:80" in text
    long_track = {"name": "script:/usr/local/bin/check-something --with --many --flags", "ok": True,
                  "weight": 0}
    shown = render_status({"vrrp": [{"name": "y", "tracks": [long_track]}]}).splitlines()[2]
    assert shown.endswith("script:/usr/local/bin/check-something... ok")
    failing = dict(long_track, ok=False)
    shown = render_status({"vrrp": [{"name": "y", "tracks": [failing]}]}).splitlines()[2]
    assert shown.endswith("script:/usr/local/bin/check-something... FAIL -> FAULT")
    for weight, ok, verdict in ((-60, True, "ok"), (-60, False, "FAIL -60"), (20, True, "ok +20"),
                                (20, False, "FAIL")):
        track = {"name": "frontend:api", "ok": ok, "weight": weight}
        shown = render_status({"vrrp": [{"name": "y", "tracks": [track]}]}).splitlines()[2]
        assert shown.endswith(f"frontend:api {verdict}"), shown
    assert render_status({}).splitlines() == ["node -", "VRRP      none on this node"]


@pytest.mark.timeout(60)
def test_serves_under_uvloop(run_dir: Path) -> None:
    uvloop = pytest.importorskip("uvloop", reason="needs uvloop (the daemon's event loop)")
    path = run_dir / "control.sock"
    node = FakeNode()

    async def main() -> None:
        server = ControlServer(str(path), node)
        await server.start()
        try:
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            drained = await lbctl(str(path), "drain", "api", "198.18.0.22:6443")
            assert drained.returncode == 0, drained.stderr
        finally:
            await server.stop()

    uvloop.run(main())
    assert node.calls == [("drain", "api", "198.18.0.22:6443")]
    assert not path.exists()


class SkewedNode(FakeNode):
    """A daemon whose document does not match lbctl's schema (another version, or a bug)."""

    def __init__(self) -> None:
        super().__init__()
        self.document["vrrp"][0]["state"] = "LEADER"
        self.document["vrrp"][1]["vrid"] = "fifty-two"
        self.document["frontends"][0]["backends"][1]["state"] = "enabled"


@pytest.mark.timeout(120)
def test_lbctl_shows_what_matches_and_says_what_does_not(run_dir: Path) -> None:
    path = run_dir / "control.sock"
    node = SkewedNode()

    async def scenario() -> None:
        table = await lbctl(str(path), "status")
        assert table.returncode == 0 and "Traceback" not in table.stderr
        assert table.stderr.splitlines() == [
            "lbctl: vipd's answer does not match its schema, showing what does: "
            "vrrp[0].state: 'LEADER' is not one of INIT, BACKUP, MASTER, FAULT (and 2 more)"]
        lines = table.stdout.splitlines()
        api = next(line for line in lines if line.startswith("api/51 "))
        assert api.split()[1:4] == ["-", "150", "150"]
        assert next(line for line in lines if line.startswith("api6 ")).split()[1] == "BACKUP"
        b22 = next(line for line in lines if "198.18.0.22:6443" in line)
        assert b22.split() == ["198.18.0.22:6443", "-", "0/2", "DOWN", "0", "7", "4", "HTTP", "503"]

        as_json = await lbctl(str(path), "status", "--json")
        assert as_json.returncode == 0
        assert json.loads(as_json.stdout) == node.document, "--json prints the document as it came"
        assert as_json.stderr == table.stderr

    async def serve_unchecked() -> None:
        server = ControlServer(str(path), node)
        await server.start()
        try:
            await scenario()
        finally:
            await server.stop()
    asyncio.run(serve_unchecked())





@pytest.mark.timeout(120)
def test_a_live_daemon_answers_by_the_schema(run_dir: Path) -> None:
    """`vipd run` with one [[frontend]] on loopback: every answer matches the schema strictly and
    carries every field the schema describes; lbctl and the metrics read it without a problem
    (the metrics built in this process from the document: the daemon's loopback may be its own)."""
    sock = run_dir / "control.sock"
    metrics = f"127.0.0.1:{free_port()}"
    dead = f"127.0.0.1:{free_port()}"
    config = run_dir / "vipd.toml"
    # The backend that passes its TCP checks is the daemon's own metrics listener.
    config.write_text("\n".join([
        "[node]", 'name = "local-1"', f'control_socket = "{sock}"', f'metrics_listen = "{metrics}"',
        "workers = 1", f'state_dir = "{run_dir / "state"}"',
        "[[frontend]]", 'name = "api"', f'listen = "127.0.0.1:{free_port()}"',
        "  [frontend.health]", '  type = "tcp"', "  interval = 0.2", "  timeout = 0.5",
        "  rise = 1", "  fall = 1",
        "  [[frontend.backend]]", f'  address = "{metrics}"',
        "  [[frontend.backend]]", f'  address = "{dead}"', ""]))
    log = open(run_dir / "vipd.log", "wb")
    daemon = subprocess.Popen(own_network([sys.executable, "-m", "vipd", "run", "-c", str(config)]),
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def ask(method: str, url: str) -> tuple[int, dict]:
        return request(str(sock), method, url, 10.0)

    def states() -> dict | None:
        status, body = ask("GET", "/v1/status")
        found = {b["address"]: b["state"] for b in body["frontends"][0]["backends"]}
        return found if found == {metrics: "up", dead: "down"} else None

    try:
        try:
            wait_until(states, 30, "one backend up, one down")
        except AssertionError:
            raise AssertionError((run_dir / "vipd.log").read_text()) from None

        status, document = ask("GET", "/v1/status")
        assert status == 200
        assert check(document, StatusDocument, strict=True).problems == []
        assert set(document) == schema.described_keys(StatusDocument)
        assert document["vrrp"] == [] and document["node"] == "local-1"
        (frontend,) = document["frontends"]
        assert set(frontend) == schema.described_keys(schema.Frontend)
        for backend in frontend["backends"]:
            assert set(backend) == schema.described_keys(schema.Backend)
        down = next(b for b in frontend["backends"] if b["address"] == dead)
        assert down["last_error"] == "connection refused" and down["check_failures"] >= 1

        table = subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", str(sock), "status"],
                               cwd=REPO, capture_output=True, text=True, timeout=30)
        assert table.returncode == 0 and table.stderr == "", table.stderr
        assert next(line for line in table.stdout.splitlines() if dead in line).endswith("connection refused")

        scraped = {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
                   for family in families_from_status(document) for sample in family.samples}
        assert scraped[("vipd_status_problems", ())] == 0
        assert scraped[("vipd_backend_check_failures_total", (("backend", dead), ("frontend", "api")))] >= 1

        answers = [ask("POST", backend_path("api", metrics, "drain")),
                   ask("POST", backend_path("api", metrics, "enable")),
                   ask("POST", backend_path("api", dead, "enable"))]
        assert [(code, a["state"]) for code, a in answers] == [(200, "drain"), (200, "up"), (200, "down")]
        for _, answer in answers:
            assert check(answer, DrainAnswer, strict=True).problems == []

        status, reloaded = ask("POST", "/v1/reload")
        assert status == 200 and check(reloaded, ReloadAnswer, strict=True).problems == []
        assert reloaded == {"ok": True, "config": str(config), "summary": "0 vrrp instance(s), 1 frontend(s)",
                            "warnings": [f"{config}: WARNING: frontend[0].health.timeout: 0.5 is longer than "
                                         "interval 0.2: a backend that does not answer is probed every 0.5s, "
                                         "not every 0.2s"]}
        faked = asyncio.run(FakeNode().reload())
        assert set(faked) == set(reloaded), "the fake answers what the daemon answers"

        for method, url in (("POST", backend_path("api", "198.18.0.99:1", "drain")),
                            ("GET", "/v1/nothing")):
            status, refused = ask(method, url)
            assert status == 404 and check(refused, ErrorAnswer, strict=True).problems == []

    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(30)
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
    assert daemon.returncode == 0, (run_dir / "vipd.log").read_text()
