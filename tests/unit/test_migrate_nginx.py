"""`vipd import --nginx`: nginx `stream` servers and upstreams become [[frontend]] tables."""
from __future__ import annotations

import pytest
from migrate_support import INPUTS, notes_about, translated, vipd_import

from vipd.migrate import InputError, translate
from vipd.migrate.nginx import seconds

STREAM = INPUTS / "nginx-stream.conf"


def test_stream_config_with_weights_least_conn_backup_and_includes():
    config, result = translated(nginx=STREAM)
    assert config.node.workers == 2
    by_listen = {f.listen: f for f in config.frontends}
    assert list(by_listen) == ["0.0.0.0:9100", "0.0.0.0:6443", "[::]:6443", "198.18.0.100:2379"]
    metrics = by_listen["0.0.0.0:9100"]                  # from the file included inside stream
    assert (metrics.name, metrics.connect_timeout) == ("stream-9100", 0.5)
    assert [b.address for b in metrics.backends] == ["198.18.0.41:9100"]

    api, api6 = by_listen["0.0.0.0:6443"], by_listen["[::]:6443"]
    assert (api.name, api6.name) == ("kube_apiserver", "kube_apiserver-2")
    for f in (api, api6):
        assert f.balance == "least_conn"
        assert (f.connect_timeout, f.idle_timeout, f.retries) == (2.0, 600.0, 2)
        assert [(b.address, b.weight, b.max_connections, b.backup) for b in f.backends] == [
            ("198.18.0.21:6443", 3, 0, False), ("198.18.0.22:6443", 2, 0, False),
            ("198.18.0.23:6443", 1, 500, False), ("198.18.0.29:6443", 1, 0, True)]
        assert (f.health.type, f.health.fall) == ("tcp", 2)
    etcd = by_listen["198.18.0.100:2379"]
    assert (etcd.name, etcd.balance) == ("etcd_clients", "source_hash")
    assert [b.address for b in etcd.backends] == ["198.18.0.31:2379"]

    f = str(STREAM)
    for expected in (
        f"{f}:1: user www-data: not translated: outside stream; vipd translates nginx's stream (TCP) proxy only",
        f"{f}:17: server 198.18.0.21:6443 max_fails=2: approximated: vipd probes actively; "
        "[frontend.health] fall = 2",
        f"{f}:17: server 198.18.0.21:6443 fail_timeout=10s: not translated: vipd takes a backend back after "
        "`rise` good probes, not after a fixed time",
        f"{f}:23: server unix:/run/etcd.sock: not translated: vipd connects to TCP backends only",
        f"{f}:36: proxy_protocol on: not translated: vipd does not send PROXY headers",
        f"{f}:40: listen 53 udp: not translated: vipd proxies TCP only",
        f"{f}:45: http: not translated: vipd is a TCP (L4) proxy; only the stream block is translated",
    ):
        assert expected in result.notes
    # Nothing inside the http block is read or listed: one line says it is not translated.
    assert not notes_about(result, ":46:") and not notes_about(result, "mime.types")
    assert not [n for n in notes_about(result, ":20:") if "backup" in n]   # it is vipd's backend.backup
    assert "backup = true" in result.toml


def write(tmp_path, text: str):
    path = tmp_path / "nginx.conf"
    path.write_text(text)
    return path


def test_values_vipd_cannot_take_are_named(tmp_path):
    path = write(tmp_path, """\
stream {
    upstream pool {
        random;
        server 198.18.0.21:80 weight=5000 max_fails=3;
        server 198.18.0.22:80 max_fails=1;
        server backend.example.org:80 resolve;
    }
    server { listen localhost:80; proxy_pass pool; }
    server { listen 8080; proxy_pass pool; proxy_next_upstream off; proxy_timeout 0; }
    server { listen 8081; proxy_pass $upstream; }
    server { listen 8082; proxy_pass nowhere; }
}
""")
    config, result = translated(nginx=path)
    (f,) = config.frontends
    assert (f.listen, f.name, f.balance, f.retries, f.idle_timeout) == ("0.0.0.0:8080", "pool", "random2", 0, 600.0)
    assert [(b.address, b.weight) for b in f.backends] == [
        ("198.18.0.21:80", 1), ("198.18.0.22:80", 1), ("backend.example.org:80", 1)]
    assert f.health.fall == 3        # vipd's default: the servers disagree on max_fails
    p = str(path)
    assert result.notes == [
        f"{p}:3: random: approximated: random2 (two random picks, the less loaded wins)",
        f"{p}:4: server 198.18.0.21:80 weight=5000: not translated: vipd's weight is 1..1000; the default 1 applies",
        f"{p}:4: server 198.18.0.21:80 max_fails=3: not translated: vipd counts failed probes per frontend "
        "(fall), not failed connections per server",
        f"{p}:5: server 198.18.0.22:80 max_fails=1: not translated: vipd counts failed probes per frontend "
        "(fall), not failed connections per server",
        f"{p}:6: server backend.example.org:80 resolve: not translated: vipd resolves a backend name when it connects",
        f"{p}:8: listen localhost:80: not translated: vipd listens on an IP address, not a name",
        f"{p}:9: proxy_timeout 0: not translated: must be a time > 0 (30s, 500ms, 1m)",
        f"{p}:10: proxy_pass $upstream: not translated: needs `proxy_pass UPSTREAM` or `proxy_pass HOST:PORT` "
        "(no variables)",
        f"{p}:11: proxy_pass nowhere: not translated: no upstream 'nowhere' and not HOST:PORT (must be HOST:PORT)",
    ]


@pytest.mark.parametrize("text, error", [
    ("stream {\n  server { listen 1; proxy_pass a:1 }\n}\n", ':2: unexpected "}" after "proxy_pass a:1" (missing ";"?)'),
    ("stream {\n  server {\n", ':2: unbalanced braces: "server {" is never closed'),
    ("events { }\n}\n", ':2: unbalanced braces: "}" closes nothing'),
    ("user nginx\n", ':1: unexpected end of file, expecting ";" or "}"'),
    ("log_format x 'abc;\n", ":1: unterminated ' quote"),
])
def test_unparseable_nginx_is_one_line_and_exit_2(tmp_path, text, error):
    path = write(tmp_path, text)
    with pytest.raises(InputError) as raised:
        translate(nginx_path=str(path))
    assert str(raised.value) == f"{path}{error}"
    done = vipd_import("--nginx", str(path))
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"{path}{error}\n")


def test_nginx_time_syntax():
    assert [seconds(t) for t in ("10", "2s", "500ms", "1m30s", "1h", "")] == [10.0, 2.0, 0.5, 90.0, 3600.0, None]
    assert seconds("5x") is None and seconds("-1s") is None
