"""`vipd import` as a whole: its TOML writer, frontends from nginx and HAProxy side by side, the
command's output passing `vipd check`, and its exit codes."""
from __future__ import annotations

import subprocess
import sys
import tomllib

from migrate_support import INPUTS, translated, vipd_import

from vipd.migrate.toml import Table, render


def test_writer_round_trips_awkward_strings_and_comments():
    table = Table(comments=["a comment\nover two lines with a \x07 bell"])
    awkward = 'quote " backslash \\ tab \t newline \n nul \x00 del \x7f é ✓'
    table.set("script", awkward, "from line 3\nwith a newline")
    table.set("numbers", [1, 2.5, True])
    sub = Table()
    sub.set("x", 0.01)
    table.set("track", [sub, sub])
    text = render(["header"], {"vrrp": [table]})
    assert tomllib.loads(text) == {"vrrp": [{"script": awkward, "numbers": [1, 2.5, True],
                                             "track": [{"x": 0.01}, {"x": 0.01}]}]}
    assert "# over two lines with a ? bell" in text


def test_nginx_and_haproxy_on_the_same_port_keep_the_first(tmp_path):
    haproxy = tmp_path / "haproxy.cfg"
    haproxy.write_text("frontend kube_apiserver\n bind :6443\n default_backend b\n"
                       "frontend other\n bind :7443\n default_backend b\n"
                       "backend b\n server s1 198.18.0.21:6443 check\n")
    config, result = translated(nginx=INPUTS / "nginx-stream.conf", haproxy=haproxy)
    assert [(f.name, f.listen) for f in config.frontends] == [
        ("stream-9100", "0.0.0.0:9100"), ("kube_apiserver", "0.0.0.0:6443"), ("kube_apiserver-2", "[::]:6443"),
        ("etcd_clients", "198.18.0.100:2379"), ("other", "0.0.0.0:7443")]
    assert f"{haproxy}:2: listen 0.0.0.0:6443: not translated: already the listen address of frontend " \
           "'kube_apiserver'" in result.notes


def test_command_output_passes_vipd_check(tmp_path):
    done = vipd_import("--keepalived", str(INPUTS / "unicast-v2-keepalived.conf"),
                       "--nginx", str(INPUTS / "nginx-stream.conf"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    notes = done.stderr.splitlines()
    assert notes and all(line.startswith(str(INPUTS)) for line in notes)
    out = tmp_path / "vipd.toml"
    out.write_text(done.stdout)
    # --file-only: the scripts the keepalived.conf names live on its edges, not on this machine.
    check = subprocess.run([sys.executable, "-m", "vipd", "check", "--file-only", "-c", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == f"{out}: ok (2 vrrp instance(s), 4 frontend(s))"


def test_exit_codes_without_input_or_with_nothing_to_translate(tmp_path):
    done = vipd_import()
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "vipd import: give at least one of --keepalived, --nginx, --haproxy\n"
    empty = tmp_path / "haproxy.cfg"
    empty.write_text("global\n    daemon\n")
    done = vipd_import("--haproxy", str(empty))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines() == [
        f"{empty}:2: daemon: not translated: a process setting (global)",
        "vipd import: nothing to translate (no vrrp_instance, stream server or tcp frontend)"]
    done = vipd_import("--keepalived", str(tmp_path / "missing.conf"))
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"{tmp_path / 'missing.conf'}: cannot read: No such file or directory\n"
    binary = tmp_path / "keepalived.conf"
    binary.write_bytes(b"\x7fELF\x02\x01\x01\x00garbage")
    done = vipd_import("--keepalived", str(binary))
    assert (done.returncode, done.stderr) == (2, f"{binary}: not a text file\n")
