"""Faults only the daemon sees, escalated to FAULT and back: a VIP the kernel refuses (a real
`vipd run`), and a raw VRRP socket lost under a running instance (the service in a process of its
own in the namespace, whose socket the test breaks from inside)."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vipd.lab import edges
from vipd.lab.edges import toml_value
from vipd.lab.netns import Lab

pytestmark = [pytest.mark.netns, pytest.mark.slow]

VIP6 = "2001:db8::100"


def wait_for(predicate, timeout: float = 15.0):
    return edges.wait_for(predicate, timeout, 0.05)


def status(socket: Path) -> dict | None:
    done = subprocess.run([sys.executable, "-m", "vipd.control.lbctl", "--socket", str(socket), "status", "--json"],
                          capture_output=True, text=True, timeout=20)
    return json.loads(done.stdout)["vrrp"][0] if done.returncode == 0 else None


def transitions(log: Path, to: str) -> list[str]:
    return re.findall(rf"-> {to} \(([^)]*)\)", log.read_text(errors="replace"))


@pytest.mark.timeout(90)
def test_a_vip_the_kernel_refuses_is_a_fault_until_adding_it_works_again(lab: Lab, tmp_path: Path) -> None:
    host = lab.add_host("a", ["198.18.0.11/24", "2001:db8::11/64"])
    # IPv6 off on the interface: the kernel refuses any IPv6 address there ("IPv6 is disabled on
    # this device"), while the link stays up and unicast_src gives the router its primary address.
    host.sysctl("net.ipv6.conf.eth0.disable_ipv6", 1)
    socket, log, config = tmp_path / "a.sock", tmp_path / "a.log", tmp_path / "a.toml"
    vrrp = {"name": "api", "interface": "eth0", "vrid": 51, "priority": 100, "advert_interval": 0.05,
            "virtual_ips": [f"{VIP6}/64"], "unicast_src": "2001:db8::11", "unicast_peers": ["2001:db8::12"]}
    config.write_text("\n".join(["[node]", 'name = "a"', f'control_socket = "{socket}"', "", "[[vrrp]]",
                                 *(f"{k} = {toml_value(v)}" for k, v in vrrp.items()), ""]))
    with open(log, "ab") as out:
        proc = host.popen([sys.executable, "-m", "vipd", "run", "-c", str(config)], stdout=out,
                          stderr=subprocess.STDOUT)
    try:
        # Alone, it becomes master, the VIP is refused: FAULT, with the kernel's reason.
        assert wait_for(lambda: transitions(log, "FAULT")), log.read_text()
        assert transitions(log, "MASTER")[0] == "master_down_timer"
        assert transitions(log, "FAULT")[0] == "fault:vip_add:eth0"
        seen = wait_for(lambda: (s := status(socket)) and s["state"] == "FAULT" and s)
        assert seen, log.read_text()
        assert seen["fault_reasons"] == ["vip_add:eth0"]
        assert seen["fault_reason"].startswith(f"cannot add {VIP6}/64 on eth0: ")
        assert seen["fault_reason"].endswith(": Permission denied"), seen["fault_reason"]
        # It tries again with backoff, and stays out of MASTER while the kernel still refuses.
        assert wait_for(lambda: len(transitions(log, "FAULT")) >= 2, 10), log.read_text()
        assert not host.has_address(VIP6)
        host.sysctl("net.ipv6.conf.eth0.disable_ipv6", 0)
        host.run(["ip", "addr", "add", "2001:db8::11/64", "dev", "eth0", "nodad"], check=False)
        assert wait_for(lambda: host.has_address(VIP6), 40), log.read_text()
        after = wait_for(lambda: (s := status(socket)) and s["state"] == "MASTER" and s)
        assert after and after["fault_reasons"] == [] and after["fault_reason"] is None, log.read_text()
        assert transitions(log, "BACKUP")[-1] == "fault_cleared"
        # And it stays master: the backoff is reset, nothing is refused any more.
        time.sleep(1.0)
        assert status(socket)["state"] == "MASTER"
        assert "Traceback" not in log.read_text()
    finally:
        lab.stop(proc, timeout=15)


def _socket_script() -> str:
    return textwrap.dedent("""
        import asyncio, json, socket, sys, types
        from vipd import config as configmod
        from vipd.vrrp import sockets
        from vipd.vrrp.service import VrrpService

        def say(**what):
            print(json.dumps(what), flush=True)

        async def until(predicate, timeout):
            loop = asyncio.get_running_loop()
            end = loop.time() + timeout
            while not predicate():
                if loop.time() > end:
                    return False
                await asyncio.sleep(0.02)
            return True

        async def main():
            cfg = configmod.load(sys.argv[1])
            service = VrrpService(cfg.vrrp)
            await service.start()
            instance = service.instances["api"]
            ok = await until(lambda: instance.state == "MASTER", 10)
            say(step="master", ok=ok, transitions=instance.transitions)
            channel = instance.channel
            # 1. The socket is closed under the channel: the next advert finds it lost, a new one
            # is opened at once, and the instance never leaves MASTER.
            sent = instance.adverts_sent
            channel._sock.close()
            ok = await until(lambda: instance.adverts_sent > sent + 3, 5)
            say(step="reopened", ok=ok, state=instance.state, transitions=instance.transitions,
                open=channel.is_open, fault=channel.fault)
            # 2. Lost and it cannot be reopened (raw sockets refused): FAULT with the reason,
            # retried with backoff; once sockets can be opened again, back to MASTER.
            def refuse(family=-1, kind=-1, proto=-1, *args):
                if kind == socket.SOCK_RAW and proto == sockets.IPPROTO_VRRP:
                    raise PermissionError(1, "Operation not permitted")
                return socket.socket(family, kind, proto, *args)
            shim = types.ModuleType("socket")
            shim.__dict__.update(socket.__dict__)
            shim.socket = refuse
            sockets.socket = shim
            channel._sock.close()
            ok = await until(lambda: instance.state == "FAULT", 5)
            say(step="fault", ok=ok, status=instance.status())
            await asyncio.sleep(1.0)
            still = instance.state
            sockets.socket = socket
            ok = await until(lambda: instance.state == "MASTER", 15)
            say(step="recovered", ok=ok, still=still, status=instance.status(), open=channel.is_open)
            await service.shutdown(handover=False)

        asyncio.run(main())
    """)


@pytest.mark.timeout(90)
def test_a_lost_raw_socket_is_reopened_and_a_socket_that_cannot_be_is_a_fault(lab: Lab, tmp_path: Path) -> None:
    host = lab.add_host("a", ["198.18.0.11/24"])
    config = tmp_path / "a.toml"
    vrrp = {"name": "api", "interface": "eth0", "vrid": 51, "priority": 100, "advert_interval": 0.05,
            "virtual_ips": ["198.18.0.100/24"]}
    config.write_text("\n".join(["[node]", 'name = "a"', f'control_socket = "{tmp_path / "a.sock"}"', "",
                                 "[[vrrp]]", *(f"{k} = {toml_value(v)}" for k, v in vrrp.items()), ""]))
    script = tmp_path / "lose_socket.py"
    script.write_text(_socket_script())
    done = host.run([sys.executable, str(script), str(config)], timeout=60, check=False)
    steps = {s["step"]: s for s in map(json.loads, done.stdout.splitlines())}
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert steps["master"]["ok"]
    reopened = steps["reopened"]
    assert reopened["ok"] and reopened["state"] == "MASTER" and reopened["open"] and reopened["fault"] is None
    assert reopened["transitions"] == steps["master"]["transitions"], "a socket reopened at once is no fault"
    assert "VRRP socket lost" in done.stderr
    fault = steps["fault"]
    assert fault["ok"] and fault["status"]["fault_reasons"] == ["socket:eth0"], fault
    assert fault["status"]["fault_reason"].startswith("VRRP socket on eth0 lost: cannot open a raw VRRP socket")
    recovered = steps["recovered"]
    assert recovered["still"] == "FAULT", "no socket, no way out of FAULT"
    assert recovered["ok"] and recovered["open"] and recovered["status"]["fault_reasons"] == [], recovered
    assert "VRRP socket reopened" in done.stderr
