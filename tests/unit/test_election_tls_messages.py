"""The one-line reasons a failed TLS handshake with etcd gives (vipd.election.etcd.failure)."""
from __future__ import annotations

import ssl

import aiohttp

from vipd.election.etcd import failure


def ssl_error(cls: type[ssl.SSLError], reason: str, **extra: str) -> ssl.SSLError:
    error = cls(1, f"[SSL: {reason}] ({reason.lower()})")
    error.reason = reason
    for key, value in extra.items():
        setattr(error, key, value)
    return error


def wrapped(cause: BaseException) -> aiohttp.ClientOSError:
    try:
        raise aiohttp.ClientOSError(*cause.args) from cause
    except aiohttp.ClientOSError as exc:
        return exc


def test_a_refused_client_certificate_says_whose_certificate_and_which_key_to_check():
    alert = ssl_error(ssl.SSLError, "SSLV3_ALERT_BAD_CERTIFICATE")
    assert failure(wrapped(alert), client_cert=True) == ("TLS: etcd refused our client certificate "
                                                         "(SSLV3_ALERT_BAD_CERTIFICATE); is etcd.cert_file from a CA etcd trusts?")
    assert failure(wrapped(alert), client_cert=False) == ("TLS: etcd wants a client certificate "
                                                          "(SSLV3_ALERT_BAD_CERTIFICATE); set etcd.cert_file and etcd.key_file")


def test_an_untrusted_server_certificate_points_at_ca_file():
    error = ssl_error(ssl.SSLCertVerificationError, "CERTIFICATE_VERIFY_FAILED",
                      verify_message="unable to get local issuer certificate")
    assert failure(wrapped(error), client_cert=True) == ("TLS: etcd's certificate is not trusted "
                                                         "(unable to get local issuer certificate); check etcd.ca_file")


def test_other_failures_keep_their_text():
    assert failure(wrapped(ssl_error(ssl.SSLError, "WRONG_VERSION_NUMBER")), client_cert=False) == "TLS: WRONG_VERSION_NUMBER"
    assert failure(aiohttp.ClientOSError(111, "Connect call failed"), client_cert=False) == "[Errno 111] Connect call failed"
    assert failure(TimeoutError(), client_cert=False) == "TimeoutError"
