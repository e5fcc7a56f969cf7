"""`vipd import` end to end: a keepalived.conf and an nginx stream config written for the lab are
translated, the output runs under `vipd run` on a lab edge, the VIP comes up there, a real
keepalived running the original keepalived.conf on the other edge accepts it as master (VRRPv2 with
PASS authentication), and requests through the VIP reach the backends."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from support import require_binary

from vipd.lab.edges import BACKEND_PORT, VIP, build, wait_for
from vipd.lab.keepalived import start_keepalived

pytestmark = [pytest.mark.netns, pytest.mark.slow]

PORT = 6443

KEEPALIVED_CONF = """\
! written for the lab as an operator would for two edges; only state and priority differ per node
global_defs {{
    router_id {router_id}
}}
vrrp_script chk_nginx {{
    script "pidof nginx"
    interval 1
    weight -20
}}
vrrp_instance VI_1 {{
    state {state}
    interface eth0
    virtual_router_id 61
    priority {priority}
    advert_int 1
    authentication {{
        auth_type PASS
        auth_pass lab-pass
    }}
    virtual_ipaddress {{
        {vip}/24 dev eth0
    }}
    track_script {{
        chk_nginx
    }}
    notify_master "/bin/sh -c 'echo master >> {notified}'"
}}
"""

NGINX_CONF = """\
worker_processes 1;
events {{ worker_connections 1024; }}
stream {{
    upstream app {{
        least_conn;
        server {be1}:{port} max_fails=2 fail_timeout=5s;
        server {be2}:{port} weight=2 max_fails=2 fail_timeout=5s;
    }}
    server {{
        listen {listen};
        proxy_pass app;
        proxy_connect_timeout 1s;
    }}
}}
"""


def http_get(host, url: str) -> str:
    return host.run([sys.executable, "-c", "import urllib.request,sys;sys.stdout.write(urllib.request.urlopen("
                     f"{url!r},timeout=3).read().decode())"], timeout=10).stdout.strip()


@pytest.mark.timeout(60)
def test_imported_config_runs_and_interoperates_with_keepalived(lab, tmp_path):
    require_binary("keepalived")
    built = build(lab, tmp_path / "lab", edges=2, backends=2)
    workdir = built.workdir
    notified = workdir / "notified"
    conf = dict(vip=VIP, notified=notified)
    (workdir / "edge1-keepalived.conf").write_text(
        KEEPALIVED_CONF.format(router_id="edge-1", state="MASTER", priority=150, **conf))
    (workdir / "nginx.conf").write_text(NGINX_CONF.format(
        be1=built.backends[0].ipv4, be2=built.backends[1].ipv4, port=BACKEND_PORT, listen=PORT))

    done = subprocess.run([sys.executable, "-m", "vipd", "import", "--keepalived", str(workdir / "edge1-keepalived.conf"),
                           "--nginx", str(workdir / "nginx.conf")], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert f"{workdir / 'edge1-keepalived.conf'}:11: state MASTER: not translated" in done.stderr
    assert '#   frontend = "app"' in done.stdout          # pidof nginx checks the proxy vipd now is
    assert done.stdout.count("[node]\n") == 1 and "workers = 1" in done.stdout     # from worker_processes
    config = done.stdout.replace("[node]\n", f'[node]\ncontrol_socket = "{built.socket(0)}"\n', 1)
    (workdir / "edge1.toml").write_text(config)

    built.start_edge(0)
    keepalived = None
    try:
        assert wait_for(lambda: built.holders() == [0] and built.state(0) == "MASTER", 20), built.log(0)
        status = built.status(0)
        (vrrp,) = status["vrrp"]
        assert (vrrp["name"], vrrp["vrid"], vrrp["version"], vrrp["virtual_ips"]) == ("VI_1", 61, 2, [f"{VIP}/24"])
        assert [(f["name"], f["listen"]) for f in status["frontends"]] == [("app", f"0.0.0.0:{PORT}")]
        assert wait_for(lambda: notified.exists() and notified.read_text() == "master\n", 5)

        # keepalived on the other edge, with the original file, takes vipd's VRRPv2 adverts (password
        # included) as its master's: it stays BACKUP past its master-down interval (3 x 1 s + skew).
        keepalived = start_keepalived(built.edges[1], workdir, "edge2", KEEPALIVED_CONF.format(
            router_id="edge-2", state="BACKUP", priority=100, **conf))
        ka_log = workdir / "edge2.keepalived.log"
        assert wait_for(lambda: "Entering BACKUP STATE" in ka_log.read_text(errors="replace"), 10)

        answers = [http_get(built.client, f"http://{VIP}:{PORT}/") for _ in range(6)]
        assert set(answers) == {"be-1", "be-2"}, answers

        time.sleep(4.0)
        assert "MASTER STATE" not in ka_log.read_text(errors="replace"), ka_log.read_text(errors="replace")
        assert built.holders() == [0] and notified.read_text() == "master\n"
        assert "Traceback" not in built.log(0)
    finally:
        if keepalived is not None:
            lab.stop(keepalived, signal.SIGTERM, timeout=5)
        built.stop_edge(0, signal.SIGKILL, timeout=5)
