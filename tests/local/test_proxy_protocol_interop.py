"""PROXY protocol against the reference implementations: a client behind HAProxy (send-proxy-v2)
reaches lbproxy (accept_proxy_protocol), which passes the client on to nginx (listen ... proxy_protocol),
which answers with the client address it read. Then lbproxy's own v1 and v2 straight to nginx."""
from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time

import pytest
import uvloop
from support import free_port, require_binary, wait_until

from lbproxy.config import BackendConfig, FrontendConfig
from lbproxy.frontend import Frontend

pytestmark = pytest.mark.timeout(60)

CLIENT = "127.0.0.5"      # a loopback source of its own: distinct from every hop's address


@pytest.fixture
def nginx(tmp_path):
    require_binary("nginx")
    port = free_port()
    (tmp_path / "logs").mkdir()
    (tmp_path / "nginx.conf").write_text(f"""
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/logs/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {tmp_path}; proxy_temp_path {tmp_path}; fastcgi_temp_path {tmp_path};
    uwsgi_temp_path {tmp_path}; scgi_temp_path {tmp_path};
    server {{
        listen 127.0.0.1:{port} proxy_protocol;
        location / {{ return 200 "$proxy_protocol_addr $proxy_protocol_port\\n"; }}
    }}
}}
""")
    proc = subprocess.Popen(["nginx", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True, 10, "nginx")
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(10)


def start_haproxy(tmp_path, target: str) -> tuple[subprocess.Popen, int]:
    require_binary("haproxy")
    port = free_port()
    (tmp_path / "haproxy.cfg").write_text(f"""
global
    maxconn 64
defaults
    mode tcp
    timeout connect 2s
    timeout client 10s
    timeout server 10s
listen in
    bind 127.0.0.1:{port}
    server lbproxy {target} send-proxy-v2
""")
    proc = subprocess.Popen(["haproxy", "-db", "-f", str(tmp_path / "haproxy.cfg")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until(lambda: socket.create_connection(("127.0.0.1", port), 0.2).close() or True, 10, "haproxy")
    return proc, port


def get_from(host: str, port: int) -> tuple[str, int]:
    """GET / from CLIENT through `host`:`port`: the answer, and the client's own port."""
    with socket.socket() as sock:
        sock.settimeout(5)
        sock.bind((CLIENT, 0))
        sock.connect((host, port))
        sock.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks).decode(), sock.getsockname()[1]


def run_proxy(listen_port: int, backend: str, work, **settings) -> None:
    """Serve one lbproxy Frontend on 127.0.0.2:`listen_port` (in this thread's uvloop) around `work`."""
    host, port = backend.rsplit(":", 1)

    async def main():
        config = FrontendConfig(name="t", listen=f"127.0.0.2:{listen_port}", listen_host="127.0.0.2",
                                listen_port=listen_port, backends=(BackendConfig(backend, host, int(port)),),
                                **settings)
        frontend = Frontend(asyncio.get_running_loop(), config, 1, {}, lambda *failure: None)
        frontend.listen()
        try:
            return await asyncio.get_running_loop().run_in_executor(None, work)
        finally:
            frontend.stop_accepting()
            frontend.abort_all()
    return uvloop.run(asyncio.wait_for(main(), 40))


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_nginx_reads_the_client_address_lbproxy_sends(nginx, version):
    port = free_port()
    answer, client_port = run_proxy(port, nginx, lambda: get_from("127.0.0.2", port), proxy_protocol=version)
    assert answer.startswith("HTTP/1.1 200") and answer.endswith(f"\r\n\r\n{CLIENT} {client_port}\n"), answer


def test_a_client_behind_haproxy_reaches_nginx_by_its_own_address(nginx, tmp_path):
    port = free_port()
    haproxy, haproxy_port = start_haproxy(tmp_path, f"127.0.0.2:{port}")
    try:
        def work():
            time.sleep(0.1)
            return [get_from("127.0.0.1", haproxy_port) for _ in range(3)]
        results = run_proxy(port, nginx, work, proxy_protocol="v1", accept_proxy_protocol=True,
                            trusted_proxies=("127.0.0.1/32",))
    finally:
        haproxy.terminate()
        haproxy.wait(10)
    for answer, client_port in results:
        assert answer.startswith("HTTP/1.1 200") and answer.endswith(f"\r\n\r\n{CLIENT} {client_port}\n"), answer
