"""`[[election]]` over TLS with client certificates against a real etcd (--client-cert-auth): a candidate
with a certificate from the trusted CA leads; one without a certificate, or with one from another CA,
never does, and its status says in one line that the certificate is the problem."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from support import require_binary, wait_until

from vipd.lab.etcdlab import ETCD, ElectionLab, EtcdTls, stop_all

MEMBER = "e1"


def openssl(pki: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True, timeout=30)


def make_ca(pki: Path, name: str) -> None:
    openssl(pki, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "1", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def issue(pki: Path, ca: str, name: str, extensions: str) -> None:
    (pki / f"{name}.ext").write_text(extensions)
    openssl(pki, "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    openssl(pki, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "1", "-out", f"{name}.pem", "-extfile", f"{name}.ext")


def make_pki(pki: Path) -> EtcdTls:
    """A throw-away CA with a member and a client certificate, and a second CA (`rogue`) with a client
    certificate the member must refuse; every file 0600."""
    pki.mkdir(mode=0o700)
    client = "keyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"
    make_ca(pki, "ca")
    issue(pki, "ca", "member", f"subjectAltName=IP:{ETCD[MEMBER]},IP:127.0.0.1\n"
          "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n")
    issue(pki, "ca", "client", client)
    make_ca(pki, "rogue")
    issue(pki, "rogue", "rogue-client", client)
    for path in pki.iterdir():
        os.chmod(path, 0o600)
    return EtcdTls(pki / "ca.pem", pki / "member.pem", pki / "member.key", pki / "client.pem", pki / "client.key")


@pytest.mark.timeout(60)
def test_a_client_certificate_from_the_trusted_ca_leads_and_others_never_do(lab, tmp_path):
    require_binary("etcd", "etcd-server")
    require_binary("etcdctl", "etcd-client")
    require_binary("openssl", "openssl")
    pki = tmp_path / "pki"
    tls = make_pki(pki)
    assert {(p.stat().st_mode & 0o777, p.stat().st_uid) for p in pki.iterdir()} == {(0o600, 0)}
    c = ElectionLab(lab, tmp_path / "election", members=(MEMBER,), tls=tls)
    try:
        c.start_etcd(MEMBER)
        assert wait_until(c.etcd_healthy, 20, "etcd healthy over TLS"), (c.workdir / f"{MEMBER}.etcd.log").read_text()
        # the refused candidates have the higher priorities: were they let in, they would lead
        c.start("c1", 100, {"ca_file": tls.ca_file, "cert_file": tls.client_cert, "key_file": tls.client_key})
        c.start("c2", 200, {"ca_file": tls.ca_file})
        c.start("c3", 150, {"ca_file": tls.ca_file, "cert_file": pki / "rogue-client.pem",
                            "key_file": pki / "rogue-client.key"})
        assert wait_until(lambda: c.leads("c1"), 20, "c1 leads over TLS"), c.logs()
        time.sleep(c.ttl)       # and the others stay out
        assert c.leads("c1") and c.election("c1")["holder"] == "c1", c.logs()
        for name, why in (("c2", "TLS: etcd wants a client certificate"),
                          ("c3", "TLS: etcd refused our client certificate")):
            e = c.election(name)
            assert e["state"] == "FAULT" and e["holder"] is None, e
            assert e["reason"].startswith("etcd: no lease (") and why in e["reason"], e
            assert "\n" not in e["reason"] and "_ssl.c" not in e["reason"], e
            print(f"{name}: {e['reason']}")
        assert "Traceback" not in c.logs()
    finally:
        stop_all(c)
