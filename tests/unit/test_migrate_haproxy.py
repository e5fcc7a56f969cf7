"""`vipd import --haproxy`: HAProxy `mode tcp` frontends, backends and listens become [[frontend]]
tables; the kubeadm HA guide's haproxy.cfg and keepalived.conf together."""
from __future__ import annotations

import pytest
from migrate_support import INPUTS, notes_about, translated, vipd_import

from vipd.migrate import InputError, translate
from vipd.migrate.haproxy import seconds

KUBEADM_HAPROXY = INPUTS / "kubeadm-haproxy.cfg"
KUBEADM_KEEPALIVED = INPUTS / "kubeadm-keepalived.conf"


def test_kubeadm_guide_haproxy_cfg():
    config, result = translated(haproxy=KUBEADM_HAPROXY)
    (f,) = config.frontends
    assert (f.name, f.listen, f.balance) == ("apiserver", "0.0.0.0:8443", "round_robin")
    assert (f.connect_timeout, f.idle_timeout, f.retries) == (5.0, 20.0, 1)
    assert [b.address for b in f.backends] == ["192.168.10.11:6443", "192.168.10.12:6443", "192.168.10.13:6443"]
    # httpchk + ssl-hello-chk: the apiserver's /healthz over TLS.
    assert (f.health.type, f.health.path, f.health.expect) == ("https", "/healthz", (200,))
    h = str(KUBEADM_HAPROXY)
    for expected in (
        f"{h}:8: log /dev/log local0: not translated: a process setting (global)",
        f"{h}:21: option http-server-close: not translated: an HTTP-mode option; vipd is a TCP (L4) proxy",
        f"{h}:25: timeout http-request 10s: not translated: an HTTP-mode timeout; vipd is a TCP (L4) proxy",
        f"{h}:31: timeout check 10s: not translated: vipd needs a check timeout below the interval",
        f"{h}:49: option ssl-hello-chk: approximated: with option httpchk, vipd checks GET /healthz over TLS "
        '(type = "https")',
    ):
        assert expected in result.notes
    # The defaults section is read by both proxies after it, and still named once per line.
    assert len(notes_about(result, ":21: ")) == 1


def test_kubeadm_guide_pair_suggests_the_built_in_frontend_track(tmp_path):
    check = tmp_path / "check_apiserver.sh"
    check.write_text((INPUTS / "kubeadm-check_apiserver.sh").read_text())
    keepalived = tmp_path / "keepalived.conf"
    keepalived.write_text(KUBEADM_KEEPALIVED.read_text().replace("/etc/keepalived/check_apiserver.sh", str(check)))
    config, result = translated(keepalived=keepalived, haproxy=KUBEADM_HAPROXY)
    assert [v.name for v in config.vrrp] == ["VI_1"] and [f.name for f in config.frontends] == ["apiserver"]
    assert config.vrrp[0].tracks[0].target == str(check)        # kept: the suggestion is a comment
    assert '#   frontend = "apiserver"' in result.toml
    assert notes_about(result, f"{keepalived}:8: vrrp_script check_apiserver: checks the local proxy: "
                               'vipd\'s built-in track can replace it: [[vrrp.track]] frontend = "apiserver"')
    # Without the script file there is nothing to recognise: no suggestion.
    _, plain = translated(keepalived=KUBEADM_KEEPALIVED, haproxy=KUBEADM_HAPROXY)
    assert "frontend = " not in "".join(line for line in plain.toml.splitlines() if line.lstrip().startswith("#"))
    assert not notes_about(plain, "checks the local proxy")


def write(tmp_path, text: str):
    path = tmp_path / "haproxy.cfg"
    path.write_text(text)
    return path


def test_listen_binds_servers_and_options(tmp_path):
    path = write(tmp_path, """\
defaults
    timeout connect 3000
    timeout client 1m
    timeout server 30s

frontend web
    mode http
    bind :80
    default_backend app

frontend db
    bind 198.18.0.100:5432,198.18.0.101:5432
    use_backend replicas if { src 10.0.0.0/8 }
    default_backend app

backend app
    balance leastconn
    default-server inter 3s fall 2 rise 3
    server a 198.18.0.21:5432 check weight 10 maxconn 100
    server b 198.18.0.22:5432 check port 9000 slowstart 30s
    server c 198.18.0.23:5432 check backup
    server d 198.18.0.24:5432 weight 0
    server e 198.18.0.25 check

listen mqtt
    bind :::1883
    balance source
    server m1 [2001:db8::21]:1883
""")
    config, result = translated(haproxy=path)
    db, db2, mqtt = config.frontends
    assert (db.name, db.listen, db2.name, db2.listen) == ("db", "198.18.0.100:5432", "db-2", "198.18.0.101:5432")
    assert (db.balance, db.connect_timeout, db.idle_timeout) == ("least_conn", 3.0, 30.0)
    assert (db.slow_start, mqtt.slow_start) == (30.0, 0.0)
    assert [(b.address, b.weight, b.max_connections, b.backup) for b in db.backends] == [
        ("198.18.0.21:5432", 10, 100, False), ("198.18.0.22:5432", 1, 0, False),
        ("198.18.0.23:5432", 1, 0, True)]
    assert (db.health.type, db.health.interval, db.health.rise, db.health.fall) == ("tcp", 3.0, 3, 2)
    assert (mqtt.name, mqtt.listen, mqtt.balance) == ("mqtt", "[::]:1883", "source_hash")
    assert [b.address for b in mqtt.backends] == ["[2001:db8::21]:1883"]
    p = str(path)
    assert result.notes[:2] == [
        f"{p}:6: frontend web: not translated: mode http: vipd is a TCP (L4) proxy",
        f"{p}:13: use_backend replicas if {{ src 10.0.0.0/8 }}: not translated: conditions are not translated; "
        "only default_backend is",
    ]
    for expected in (
        f"{p}:20: server b slowstart: servers differ; vipd has one slow_start per frontend: the first "
        "server's is used",
        f"{p}:22: server d 198.18.0.24:5432 weight 0: not translated: weight 0: must be 1..256 "
        "(weight 0 takes no traffic); left out",
        f"{p}:23: server e 198.18.0.25 check: not translated: must be HOST:PORT (HAProxy takes the port from "
        "the frontend when there is none)",
        f"{p}:25: listen mqtt: no server has `check`: vipd probes every backend anyway "
        '([frontend.health] type = "tcp")',
        f"{p}:26: bind :::1883: vipd's [::] listener takes IPv6 only; add a 0.0.0.0 frontend for IPv4 clients",
    ):
        assert expected in result.notes
    assert not notes_about(result, ":21:")           # `backup` is vipd's backend.backup
    # The check port belongs to server b only; vipd's one health setting follows the first server.
    assert db.health.port is None
    assert f"{p}:19: server a port: servers differ; vipd has one health setting per frontend: the first " \
        "checked server's is used" in result.notes


@pytest.mark.parametrize("text, error", [
    ("hello world\n", ":1: unknown keyword 'hello' out of section"),
    ('frontend a\n  bind "*:80\n', ':2: unterminated " quote'),
])
def test_unparseable_haproxy_is_one_line_and_exit_2(tmp_path, text, error):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as raised:
        translate(haproxy_path=str(path))
    assert str(raised.value) == f"{path}{error}"
    done = vipd_import("--haproxy", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"{path}{error}\n")


def test_haproxy_time_syntax():
    assert [seconds(t) for t in ("2000", "2s", "500ms", "1m", "250us")] == [2.0, 2.0, 0.5, 60.0, 0.00025]
    assert seconds("1m30s") is None and seconds("fast") is None
