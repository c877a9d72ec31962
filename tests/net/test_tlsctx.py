"""Certificate selection by server name, with real handshakes through memory BIOs."""

from __future__ import annotations

import datetime
import re
import ssl
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from portway.net.tlsctx import CertError, CertStore, client_context, load


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


# ---------------------------------------------------------------------------
# Contexts per (certificate, ALPN), separate key files, minimum version, client contexts.
# ---------------------------------------------------------------------------


def _pump(server: ssl.SSLObject, client: ssl.SSLObject, bios: tuple[ssl.MemoryBIO, ...]) -> None:
    """Run a handshake between two SSLObjects over memory BIOs until both finish (or one raises)."""
    s_in, s_out, c_in, c_out = bios
    done = {"c": False, "s": False}
    for _ in range(10):
        for key, side in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    side.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        if all(done.values()):
            return
    raise AssertionError("handshake did not finish")


def _connect(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, sni: str | None
) -> tuple[ssl.SSLObject, ssl.SSLObject]:
    """A real handshake in memory; (server side, client side)."""
    bios = (ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO())
    server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
    client = client_ctx.wrap_bio(bios[2], bios[3], server_hostname=sni)
    _pump(server, client, bios)
    return server, client


def _client(ca: trustme.CA, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def test_context_for_selects_by_name_and_offers_exactly_the_alpn_given(
    ca: trustme.CA, tmp_path: Path
) -> None:
    store = CertStore(
        [
            load(_pem(ca, tmp_path, "default", "default.test")),
            load(_pem(ca, tmp_path, "wild", "*.example.com"), alpn=["h2"]),
        ]
    )
    client = _client(ca, ["h2", "http/1.1"])
    h1 = store.context_for("a.example.com", ("http/1.1",))
    _, side = _connect(h1, client, "a.example.com")
    assert side.selected_alpn_protocol() == "http/1.1"  # not the h2 the certificate was loaded with
    assert [v for k, v in side.getpeercert()["subjectAltName"] if k == "DNS"] == ["*.example.com"]
    _, side = _connect(store.context_for("a.example.com", ()), client, "a.example.com")
    assert side.selected_alpn_protocol() is None
    _, side = _connect(store.context_for(None, ("h2", "http/1.1")), _client(ca, ["http/1.1", "h2"]), None)
    assert side.selected_alpn_protocol() == "h2"  # the server's order decides
    assert [v for k, v in side.getpeercert()["subjectAltName"] if k == "DNS"] == ["default.test"]


def test_context_for_builds_each_context_once(ca: trustme.CA, tmp_path: Path) -> None:
    store = CertStore([load(_pem(ca, tmp_path, "a", "a.test")), load(_pem(ca, tmp_path, "b", "b.test"))])
    first = store.context_for("a.test", ("h2",))
    assert store.context_for("A.TEST", ("h2",)) is first
    assert store.context_for("unknown.test", ("h2",)) is first  # the default is a.test
    assert store.context_for("a.test", ("http/1.1",)) is not first
    assert store.context_for("b.test", ("h2",)) is not first
    assert first is not store.default.context


def test_separate_key_file(ca: trustme.CA, tmp_path: Path) -> None:
    pem = _pem(ca, tmp_path, "site", "site.test")
    (tmp_path / "site.crt").write_bytes(_certs(pem))
    (tmp_path / "site.key").write_bytes(_key(pem))
    cert = load(str(tmp_path / "site.crt"), str(tmp_path / "site.key"))
    assert (cert.key, cert.names) == (str(tmp_path / "site.key"), ("site.test",))
    store = CertStore([cert])
    _, side = _connect(store.context_for("site.test", ()), _client(ca), "site.test")
    assert side.version() in ("TLSv1.2", "TLSv1.3")

    with pytest.raises(CertError, match=r"missing\.key: no such file \(expected a PEM private key\)") as info:
        load(str(tmp_path / "site.crt"), str(tmp_path / "missing.key"))
    assert (info.value.kind, info.value.path) == ("missing", str(tmp_path / "missing.key"))
    other = _pem(ca, tmp_path, "other", "other.test")
    (tmp_path / "other.key").write_bytes(_key(other))
    with pytest.raises(CertError, match=r"other\.key: the private key does not belong to the certificate in"):
        load(str(tmp_path / "site.crt"), str(tmp_path / "other.key"))
    with pytest.raises(CertError, match=r"site\.crt: not a PEM private key"):
        load(str(tmp_path / "site.crt"), str(tmp_path / "site.crt"))


def test_encrypted_key_and_der_certificate_are_explained(ca: trustme.CA, tmp_path: Path) -> None:
    pem = _pem(ca, tmp_path, "site", "site.test")
    key = serialization.load_pem_private_key(_key(pem), password=None)
    (tmp_path / "locked.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    (tmp_path / "site.crt").write_bytes(_certs(pem))
    with pytest.raises(CertError, match="encrypted with a passphrase") as info:
        load(str(tmp_path / "site.crt"), str(tmp_path / "locked.key"))
    assert info.value.kind == "encrypted_key"
    der = tmp_path / "site.der"
    der.write_bytes(x509.load_pem_x509_certificate(_certs(pem)).public_bytes(serialization.Encoding.DER))
    with pytest.raises(CertError, match=r"site\.der: not a PEM certificate; it looks like DER, convert it"):
        load(str(der))


def test_min_version_1_3(ca: trustme.CA, tmp_path: Path) -> None:
    cert = load(_pem(ca, tmp_path, "site", "site.test"), min_version="1.3")
    assert cert.min_version == "1.3"
    assert cert.context.minimum_version is ssl.TLSVersion.TLSv1_3
    server_ctx = CertStore([cert]).context_for("site.test", ())
    assert server_ctx.minimum_version is ssl.TLSVersion.TLSv1_3
    old_client = _client(ca)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _connect(server_ctx, old_client, "site.test")
    _, side = _connect(server_ctx, _client(ca), "site.test")
    assert side.version() == "TLSv1.3"
    assert load(_pem(ca, tmp_path, "v12", "v12.test")).context.minimum_version is ssl.TLSVersion.TLSv1_2


def test_client_context_verifies_against_the_ca_file(ca: trustme.CA, tmp_path: Path) -> None:
    server = CertStore([load(_pem(ca, tmp_path, "api", "api.internal"))]).context_for(None, ())
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = client_context(str(tmp_path / "ca.pem"), verify=True)
    assert client.minimum_version is ssl.TLSVersion.TLSv1_2
    _, side = _connect(server, client, "api.internal")
    assert side.getpeercert()["subjectAltName"] == (("DNS", "api.internal"),)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        _connect(server, client, "other.internal")

    stranger = trustme.CA()
    stranger.cert_pem.write_to_path(str(tmp_path / "stranger.pem"))
    with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer certificate"):
        _connect(server, client_context(str(tmp_path / "stranger.pem")), "api.internal")
    with pytest.raises(ssl.SSLCertVerificationError):
        _connect(server, client_context(None), "api.internal")  # the system's CAs do not know trustme

    unchecked = client_context(str(tmp_path / "stranger.pem"), verify=False)
    assert (unchecked.check_hostname, unchecked.verify_mode) == (False, ssl.CERT_NONE)
    _, side = _connect(server, unchecked, "whatever.test")
    assert side.version() is not None


def test_client_context_names_a_bad_ca_file(tmp_path: Path) -> None:
    with pytest.raises(CertError, match=r"nothing\.pem: no such file") as info:
        client_context(str(tmp_path / "nothing.pem"))
    assert info.value.kind == "missing"
    (tmp_path / "junk.pem").write_text("junk")
    with pytest.raises(CertError, match=r"junk\.pem: not a PEM file of CA certificates") as info:
        client_context(str(tmp_path / "junk.pem"))
    assert info.value.kind == "not_pem"
