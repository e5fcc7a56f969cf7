"""A real keepalived 2.2 beside vipd in the namespace lab: the reference the interop tests and the
benches run where they would run vipd."""
from __future__ import annotations

import subprocess
from pathlib import Path

from vipd.lab.netns import Host


def keepalived_config(*, router_id: str, vrid: int, priority: int, advert_interval: float,
                      virtual_ips: list[str], version: int = 3, interface: str = "eth0", preempt: bool = True,
                      auth_pass: str | None = None, unicast_src: str | None = None,
                      unicast_peers: list[str] = ()) -> str:
    """A keepalived.conf with one vrrp_instance, the same knobs as a `[[vrrp]]` table, so tests and
    benches can run keepalived where they would run vipd."""
    lines = ["global_defs {", f"  router_id {router_id}", f"  vrrp_version {version}", "}",
             "vrrp_instance VI_1 {", "  state BACKUP", f"  interface {interface}",
             f"  virtual_router_id {vrid}", f"  priority {priority}", f"  advert_int {advert_interval:g}"]
    if not preempt:
        lines.append("  nopreempt")
    if auth_pass is not None:
        lines += ["  authentication {", "    auth_type PASS", f"    auth_pass {auth_pass}", "  }"]
    if unicast_src is not None:
        lines.append(f"  unicast_src_ip {unicast_src}")
    if unicast_peers:
        lines += ["  unicast_peer {", *(f"    {peer}" for peer in unicast_peers), "  }"]
    lines += ["  virtual_ipaddress {", *(f"    {vip}" for vip in virtual_ips), "  }", "}", ""]
    return "\n".join(lines)


def start_keepalived(host: Host, workdir: Path, name: str, config_text: str) -> subprocess.Popen:
    """Real keepalived (VRRP only, foreground) in `host`'s namespace. Its pid files live in `workdir`,
    so several run side by side; its log is `workdir/NAME.keepalived.log`. It forks a VRRP child into
    the same process group: os.killpg(proc.pid, SIGKILL) kills both, SIGTERM to proc.pid resigns."""
    conf = workdir / f"{name}.keepalived.conf"
    conf.write_text(config_text)
    log = open(workdir / f"{name}.keepalived.log", "ab")
    proc = host.popen(["keepalived", "--dont-fork", "--log-console", "--log-detail", "--no-syslog", "--vrrp",
                       "--use-file", str(conf), "--pid", str(workdir / f"{name}.keepalived.pid"),
                       "--vrrp_pid", str(workdir / f"{name}.keepalived.vrrp.pid")],
                      stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc
