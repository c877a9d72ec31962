"""Certificate selection by server name, with real handshakes through memory BIOs."""

from __future__ import annotations

import datetime
import re
import ssl
from pathlib import Path

import pytest
import trustme

from portway.net.tlsctx import CertError, CertStore, load


def _pem(ca: trustme.CA, tmp: Path, name: str, *names: str, **kw: object) -> str:
    cert = ca.issue_cert(*names, **kw)  # type: ignore[arg-type]
    path = tmp / f"{name}.pem"
    path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems) + cert.private_key_pem.bytes())
    return str(path)


def _handshake(store: CertStore, ca: trustme.CA, sni: str | None) -> tuple[list[str], str | None]:
    """A real TLS handshake in memory; (DNS names of the certificate the client got, ALPN)."""
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    server = store.context().wrap_bio(s_in, s_out, server_side=True)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_ctx.check_hostname = False
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=sni)
    done = {"c": False, "s": False}
    for _ in range(10):
        for key, side, inbox, outbox, peer_in in (
            ("c", client, c_in, c_out, s_in),
            ("s", server, s_in, s_out, c_in),
        ):
            if not done[key]:
                try:
                    side.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
            peer_in.write(outbox.read())
            del inbox
        if all(done.values()):
            break
    assert all(done.values()), "handshake did not finish"
    cert = client.getpeercert()
    names = [v for k, v in cert.get("subjectAltName", ()) if k == "DNS"]
    return names, client.selected_alpn_protocol()


def _key_start(data: bytes) -> int:
    return re.search(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----", data).start()  # type: ignore[union-attr]


def _certs(path: str) -> bytes:
    data = Path(path).read_bytes()
    return data[: _key_start(data)]


def _key(path: str) -> bytes:
    data = Path(path).read_bytes()
    return data[_key_start(data) :]


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def test_exact_then_wildcard_then_default(ca: trustme.CA, tmp_path: Path) -> None:
    store = CertStore(
        [
            load(_pem(ca, tmp_path, "default", "default.test")),
            load(_pem(ca, tmp_path, "app", "app.example.com")),
            load(_pem(ca, tmp_path, "wild", "*.example.com"), alpn=["h2"]),
        ]
    )
    assert _handshake(store, ca, "app.example.com") == (["app.example.com"], None)
    assert _handshake(store, ca, "other.example.com") == (["*.example.com"], "h2")  # ALPN per certificate
    assert _handshake(store, ca, "a.b.example.com")[0] == ["default.test"]  # one label only
    assert _handshake(store, ca, "example.com")[0] == ["default.test"]
    assert _handshake(store, ca, None)[0] == ["default.test"]  # no SNI at all
    assert _handshake(store, ca, "APP.Example.COM")[0] == ["app.example.com"]


def test_bad_files_say_what_is_wrong(ca: trustme.CA, tmp_path: Path) -> None:
    good = _pem(ca, tmp_path, "good", "a.test")
    other = _pem(ca, tmp_path, "other", "b.test")
    with pytest.raises(CertError, match="no such file"):
        load(str(tmp_path / "missing.pem"))
    cert_only = tmp_path / "cert-only.pem"
    cert_only.write_bytes(_certs(good))
    with pytest.raises(CertError, match=r"cert-only\.pem: needs a PEM certificate chain and its private key"):
        load(str(cert_only))
    mismatched = tmp_path / "mismatched.pem"
    mismatched.write_bytes(_certs(good) + _key(other))
    with pytest.raises(CertError, match="private key does not belong"):
        load(str(mismatched))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    with pytest.raises(CertError, match=r"garbage\.pem: not a PEM certificate"):
        load(str(garbage))


def test_expired_certificate_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    old = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    path = _pem(ca, tmp_path, "old", "old.test", not_before=old, not_after=old + datetime.timedelta(days=30))
    with pytest.raises(CertError, match="expired on 2020-01-31"):
        load(path)
