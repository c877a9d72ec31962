"""The interception CA: real files in tmp_path, real TLS handshakes over memory BIOs, openssl verify.

The clients here trust only the CA certificate, check the host name, and use
``VERIFY_X509_STRICT`` (the default from Python 3.13 on), so a leaf that passes is one
strict clients accept.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import stat
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portway.net.mitmca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    LEAF_DAYS,
    CAError,
    CertificateAuthority,
    _context_via_tempdir,
    _private_files,
)
from portway.net.tlsctx import CertError

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    return tmp_path / "ca"


@pytest.fixture
def ca(ca_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.create(ca_dir)


# --- TLS helpers ---------------------------------------------------------------------------------


def client_context(ca: CertificateAuthority, *, tls12: bool = False) -> ssl.SSLContext:
    """A client that trusts ONLY ``ca``'s certificate and checks the host name, strictly."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.load_verify_locations(cadata=ca.certificate_pem().decode("ascii"))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    if tls12:
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


class Handshake:
    """Both ends of one TLS handshake over memory BIOs, and every byte the server sent."""

    def __init__(self, server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, name: str) -> None:
        self.c_in, self.c_out, self.s_in, self.s_out = (ssl.MemoryBIO() for _ in range(4))
        self.client = client_ctx.wrap_bio(self.c_in, self.c_out, server_hostname=name)
        self.server = server_ctx.wrap_bio(self.s_in, self.s_out, server_side=True)
        self.server_bytes = b""

    def run(self) -> Handshake:
        done = {"client": False, "server": False}
        for _ in range(20):
            for side, obj in (("client", self.client), ("server", self.server)):
                if not done[side]:
                    try:
                        obj.do_handshake()
                        done[side] = True
                    except ssl.SSLWantReadError:
                        pass
            sent = self.s_out.read()
            self.server_bytes += sent
            self.c_in.write(sent)
            self.s_in.write(self.c_out.read())
            if all(done.values()):
                return self
        raise AssertionError("the handshake did not finish")


def certificates_sent(server_bytes: bytes) -> list[bytes]:
    """The DER certificates in the server's TLS 1.2 Certificate message (plaintext before 1.3)."""
    handshake = b""
    pos = 0
    while pos + 5 <= len(server_bytes):
        kind, length = server_bytes[pos], int.from_bytes(server_bytes[pos + 3 : pos + 5], "big")
        if kind == 22:  # handshake record
            handshake += server_bytes[pos + 5 : pos + 5 + length]
        pos += 5 + length
    pos = 0
    while pos + 4 <= len(handshake):
        msg_type, length = handshake[pos], int.from_bytes(handshake[pos + 1 : pos + 4], "big")
        body = handshake[pos + 4 : pos + 4 + length]
        if msg_type == 11:  # Certificate: a 3-byte list length, then 3-byte length + DER each
            certs, i = [], 3
            while i < len(body):
                n = int.from_bytes(body[i : i + 3], "big")
                certs.append(body[i + 3 : i + 3 + n])
                i += 3 + n
            return certs
        pos += 4 + length
    raise AssertionError("no Certificate message in the server's bytes")


def peer_leaf(handshake: Handshake) -> x509.Certificate:
    der = handshake.client.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


# --- create and load -----------------------------------------------------------------------------


def test_create_writes_the_key_0600_and_the_certificate_0644_and_load_reads_them_back(tmp_path: Path) -> None:
    directory = tmp_path / "home" / ".portway" / "ca"
    old_umask = os.umask(0)  # the modes must not depend on the umask, in either direction
    try:
        made = CertificateAuthority.create(directory)
    finally:
        os.umask(old_umask)
    assert mode(directory / CA_KEY_FILE) == 0o600
    assert mode(directory / CA_CERT_FILE) == 0o644
    for created in (directory, directory.parent, directory.parent.parent):
        assert mode(created) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == [CA_KEY_FILE, CA_CERT_FILE]  # no temp files

    loaded = CertificateAuthority.load(directory)
    assert loaded.certificate == made.certificate
    assert loaded.certificate_pem() == (directory / CA_CERT_FILE).read_bytes() == made.certificate_pem()
    assert loaded.fingerprint_sha256() == made.fingerprint_sha256()
    assert loaded.not_after == made.not_after
    assert loaded.cert_path == str(directory / CA_CERT_FILE)
    assert loaded.key_path == str(directory / CA_KEY_FILE)
    key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"


def test_the_ca_certificate_is_a_pathlen_0_ca_with_a_key_identifier(ca: CertificateAuthority) -> None:
    cert = ca.certificate
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Portway interception CA"
    assert cert.issuer == cert.subject
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.serial_number.bit_length() > 64  # random, not 1
    assert NOW - 2 * DAY < cert.not_valid_before_utc <= NOW - DAY + datetime.timedelta(minutes=5)
    assert abs(cert.not_valid_after_utc - (NOW + 825 * DAY)) < datetime.timedelta(minutes=5)
    assert ca.not_after == cert.not_valid_after_utc
    other = CertificateAuthority.create(ca.directory + "2", name="Lab CA", days=30)
    assert other.certificate.serial_number != cert.serial_number
    assert other.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Lab CA"
    assert abs(other.not_after - (NOW + 30 * DAY)) < datetime.timedelta(minutes=5)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_the_fingerprint_is_the_one_openssl_shows(ca: CertificateAuthority) -> None:
    r = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", ca.cert_path],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip().split("=", 1)[1] == ca.fingerprint_sha256()
    assert len(ca.fingerprint_sha256().split(":")) == 32


@pytest.mark.parametrize("present", [(CA_CERT_FILE, CA_KEY_FILE), (CA_CERT_FILE,), (CA_KEY_FILE,)])
def test_create_refuses_to_replace_a_ca_unless_forced(ca_dir: Path, present: tuple[str, ...]) -> None:
    first = CertificateAuthority.create(ca_dir)
    for name in {CA_CERT_FILE, CA_KEY_FILE} - set(present):
        (ca_dir / name).unlink()
    before = {p.name: p.read_bytes() for p in ca_dir.iterdir()}
    with pytest.raises(CAError) as info:
        CertificateAuthority.create(ca_dir)
    assert info.value.kind == "exists"
    for name in present:
        assert str(ca_dir / name) in str(info.value)
    assert "force" in str(info.value)
    assert {p.name: p.read_bytes() for p in ca_dir.iterdir()} == before  # untouched

    second = CertificateAuthority.create(ca_dir, force=True)
    assert second.fingerprint_sha256() != first.fingerprint_sha256()
    assert CertificateAuthority.load(ca_dir).certificate == second.certificate
    assert mode(ca_dir / CA_KEY_FILE) == 0o600 and mode(ca_dir / CA_CERT_FILE) == 0o644
    assert sorted(p.name for p in ca_dir.iterdir()) == [CA_KEY_FILE, CA_CERT_FILE]


def test_create_checks_its_arguments(ca_dir: Path) -> None:
    with pytest.raises(ValueError, match="days"):
        CertificateAuthority.create(ca_dir, days=0)
    with pytest.raises(ValueError, match="name"):
        CertificateAuthority.create(ca_dir, name=" ")
    assert not ca_dir.exists()


# --- load errors ---------------------------------------------------------------------------------


def write_ca(
    directory: Path,
    *,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
    not_before: datetime.datetime = NOW - DAY,
    not_after: datetime.datetime = NOW + 30 * DAY,
    is_ca: bool = True,
    key_cert_sign: bool = True,
    ski: bool = True,
) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
    """A CA made with ``cryptography`` directly (not by the code under test), key mode 0600."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hand-made CA")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, key_cert_sign, key_cert_sign, False, False),
            critical=True,
        )
    )
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    directory.mkdir(mode=0o700, exist_ok=True)
    (directory / CA_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = directory / CA_KEY_FILE
    key_path.touch(mode=0o600)
    key_path.chmod(0o600)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return key


def load_error(directory: Path) -> CAError:
    with pytest.raises(CAError) as info:
        CertificateAuthority.load(directory)
    assert isinstance(info.value, CertError)  # one except clause catches every certificate problem
    return info.value


def test_load_names_the_missing_file(ca_dir: Path) -> None:
    error = load_error(ca_dir)
    assert error.kind == "missing" and error.path == str(ca_dir / CA_CERT_FILE)
    assert str(ca_dir / CA_CERT_FILE) in str(error) and "portway ca init" in str(error)

    CertificateAuthority.create(ca_dir)
    (ca_dir / CA_KEY_FILE).unlink()
    error = load_error(ca_dir)
    assert error.kind == "missing" and str(ca_dir / CA_KEY_FILE) in str(error)


def test_load_refuses_a_key_of_another_ca(tmp_path: Path) -> None:
    CertificateAuthority.create(tmp_path / "a")
    CertificateAuthority.create(tmp_path / "b")
    shutil.copyfile(tmp_path / "b" / CA_KEY_FILE, tmp_path / "a" / CA_KEY_FILE)  # keeps a's mode 0600
    error = load_error(tmp_path / "a")
    assert error.kind == "mismatch"
    assert str(tmp_path / "a" / CA_KEY_FILE) in str(error) and "does not belong" in str(error)


@pytest.mark.parametrize("loose", [0o640, 0o604, 0o644, 0o620])
def test_load_refuses_a_key_open_to_group_or_others(ca_dir: Path, loose: int) -> None:
    CertificateAuthority.create(ca_dir)
    key_path = ca_dir / CA_KEY_FILE
    key_path.chmod(loose)
    error = load_error(ca_dir)
    assert error.kind == "insecure_key" and error.path == str(key_path)
    assert f"mode {loose:04o}" in str(error)
    assert f"chmod 600 {key_path}" in str(error)
    key_path.chmod(0o400)  # read-only for the owner is fine
    CertificateAuthority.load(ca_dir)


def test_load_refuses_an_expired_ca(ca_dir: Path) -> None:
    write_ca(ca_dir, not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    error = load_error(ca_dir)
    assert error.kind == "expired" and error.path == str(ca_dir / CA_CERT_FILE)
    assert f"expired on {(NOW - DAY):%Y-%m-%d}" in str(error) and "portway ca init --force" in str(error)


def test_load_refuses_a_ca_not_valid_yet(ca_dir: Path) -> None:
    write_ca(ca_dir, not_before=NOW + 2 * DAY, not_after=NOW + 30 * DAY)
    error = load_error(ca_dir)
    assert error.kind == "not_yet_valid" and "clock" in str(error)


def test_load_refuses_a_certificate_that_is_not_a_ca(ca_dir: Path) -> None:
    write_ca(ca_dir, is_ca=False)
    error = load_error(ca_dir)
    assert error.kind == "not_ca" and str(ca_dir / CA_CERT_FILE) in str(error)
    write_ca(ca_dir, key_cert_sign=False)
    error = load_error(ca_dir)
    assert error.kind == "not_ca" and "keyCertSign" in str(error)


def test_load_explains_bad_files(ca_dir: Path) -> None:
    key = write_ca(ca_dir)
    (ca_dir / CA_KEY_FILE).write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    error = load_error(ca_dir)
    assert error.kind == "encrypted_key" and "openssl pkey" in str(error)

    (ca_dir / CA_KEY_FILE).write_bytes(b"not a key\n")
    assert load_error(ca_dir).kind == "not_pem"
    (ca_dir / CA_CERT_FILE).write_bytes(b"not a certificate\n")
    error = load_error(ca_dir)
    assert error.kind == "not_pem" and str(ca_dir / CA_CERT_FILE) in str(error)


def test_an_rsa_ca_brought_along_loads_and_signs(ca_dir: Path) -> None:
    write_ca(ca_dir, key=rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ca = CertificateAuthority.load(ca_dir)
    shake = Handshake(ca.leaf_context("rsa.example"), client_context(ca), "rsa.example").run()
    assert peer_leaf(shake).signature_algorithm_oid == x509.SignatureAlgorithmOID.RSA_WITH_SHA256


def test_a_ca_without_a_key_identifier_still_gives_leaves_one(ca_dir: Path) -> None:
    key = write_ca(ca_dir, ski=False)
    ca = CertificateAuthority.load(ca_dir)
    aki = ca.leaf_certificate("x.example").extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)
    assert aki.value.key_identifier == x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest


# --- leaves --------------------------------------------------------------------------------------


def test_a_leaf_for_a_dns_name_passes_a_strict_client_for_that_name_only(ca: CertificateAuthority) -> None:
    ctx = ca.leaf_context("www.example.com")
    shake = Handshake(ctx, client_context(ca), "www.example.com").run()
    assert shake.client.getpeercert()["subjectAltName"] == (("DNS", "www.example.com"),)
    assert shake.client.version() in ("TLSv1.3", "TLSv1.2")

    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        Handshake(ctx, client_context(ca), "other.example.com").run()


@pytest.mark.parametrize(
    ("server_name", "hostname", "wrong"),
    [("127.0.0.1", "127.0.0.1", "127.0.0.2"), ("::1", "::1", "::2"), ("[2001:db8::1]", "2001:db8::1", "::1")],
)
def test_a_leaf_for_an_ip_literal_has_an_ip_san(
    ca: CertificateAuthority, server_name: str, hostname: str, wrong: str
) -> None:
    ctx = ca.leaf_context(server_name)
    leaf = peer_leaf(Handshake(ctx, client_context(ca), hostname).run())
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(hostname)]
    assert san.get_values_for_type(x509.DNSName) == []
    with pytest.raises(ssl.SSLCertVerificationError, match="IP address mismatch"):
        Handshake(ctx, client_context(ca), wrong).run()


def test_the_leaf_is_a_server_certificate_from_this_ca(ca: CertificateAuthority) -> None:
    leaf = ca.leaf_certificate("api.example.com")
    assert leaf.issuer == ca.certificate.subject
    leaf.verify_directly_issued_by(ca.certificate)
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "api.example.com"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    assert leaf.not_valid_before_utc >= ca.certificate.not_valid_before_utc
    assert leaf.not_valid_before_utc <= NOW - DAY + datetime.timedelta(minutes=5)
    assert leaf.not_valid_after_utc - leaf.not_valid_before_utc == LEAF_DAYS * DAY
    other = ca.leaf_certificate("www.example.com")
    assert other.serial_number != leaf.serial_number
    assert other.public_key() == leaf.public_key()  # one leaf key per CA, reused


def test_no_leaf_outlives_the_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.create(tmp_path / "short", days=10)
    assert ca.leaf_certificate("x.example").not_valid_after_utc == ca.not_after


def test_a_long_name_gets_no_common_name_and_a_critical_san(ca: CertificateAuthority) -> None:
    name = ".".join(["a" * 60, "b" * 60, "example", "com"])
    ctx = ca.leaf_context(name)
    leaf = peer_leaf(Handshake(ctx, client_context(ca), name).run())
    assert len(leaf.subject) == 0
    assert leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).critical


def test_names_are_normalised_and_bad_ones_refused(ca: CertificateAuthority) -> None:
    ctx = ca.leaf_context("www.example.com")
    assert ca.leaf_context("WWW.Example.COM.") is ctx
    assert ca.leaf_context("::1") is ca.leaf_context("[::1]") is ca.leaf_context("0:0::1")
    idn = ca.leaf_certificate("bücher.example")
    san = idn.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.example"]
    for bad in [
        "",
        "bad name.example",
        "a..b",
        "-x.example",
        "x-.example",
        "a" * 64 + ".example",
        "*.example",
    ]:
        with pytest.raises(ValueError, match="no certificate can be made"):
            ca.leaf_context(bad)


def test_alpn_is_offered_and_selected(ca: CertificateAuthority) -> None:
    client = client_context(ca)
    client.set_alpn_protocols(["http/1.1", "h2"])
    shake = Handshake(ca.leaf_context("h2.example", ("h2", "http/1.1")), client, "h2.example").run()
    assert shake.server.selected_alpn_protocol() == "h2"
    assert shake.client.selected_alpn_protocol() == "h2"
    shake = Handshake(ca.leaf_context("h2.example", ["http/1.1"]), client, "h2.example").run()
    assert shake.client.selected_alpn_protocol() == "http/1.1"
    shake = Handshake(ca.leaf_context("h2.example"), client, "h2.example").run()
    assert shake.client.selected_alpn_protocol() is None


def test_the_chain_presented_is_leaf_then_ca(ca: CertificateAuthority) -> None:
    ctx = ca.leaf_context("chain.example")
    shake = Handshake(ctx, client_context(ca, tls12=True), "chain.example").run()
    assert shake.client.version() == "TLSv1.2"
    der = serialization.Encoding.DER
    assert certificates_sent(shake.server_bytes) == [
        ca.leaf_certificate("chain.example").public_bytes(der),
        ca.certificate.public_bytes(der),
    ]


def test_contexts_are_cached_per_name_and_alpn_in_a_bounded_lru(ca_dir: Path) -> None:
    CertificateAuthority.create(ca_dir)
    ca = CertificateAuthority.load(ca_dir, cache_size=3)
    a = ca.leaf_context("a.example")
    assert ca.leaf_context("a.example") is a
    assert ca.leaf_context("a.example", ["h2"]) is not a
    assert ca.leaf_context("a.example", ("h2",)) is ca.leaf_context("a.example", ["h2"])
    b = ca.leaf_context("b.example")
    assert ca.leaf_context("a.example") is a  # a is now the most recent
    ca.leaf_context("c.example")  # pushes out the least recently used: a+h2
    ca.leaf_context("d.example")  # pushes out b
    assert ca.leaf_context("a.example") is a
    assert ca.leaf_context("b.example") is not b


def test_concurrent_callers_get_one_context(ca: CertificateAuthority) -> None:
    results: list[ssl.SSLContext] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        results.append(ca.leaf_context("threads.example"))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and all(r is results[0] for r in results)


def test_an_expired_ca_mints_nothing(tmp_path: Path) -> None:
    key = write_ca(tmp_path / "old", not_before=NOW - 400 * DAY, not_after=NOW - DAY)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate((tmp_path / "old" / CA_CERT_FILE).read_bytes())
    ca = CertificateAuthority(cert, key, directory=str(tmp_path / "old"))
    with pytest.raises(CAError, match="expired") as info:
        ca.leaf_context("x.example")
    assert info.value.kind == "expired"


# --- key material stays out of file systems -------------------------------------------------------


def test_minting_writes_no_file(
    ca: CertificateAuthority, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    fresh = CertificateAuthority.load(ca.directory)
    for i in range(5):
        fresh.leaf_context(f"n{i}.example")
    assert list(spool.iterdir()) == []


def test_the_temporary_directory_fallback_is_private_and_removed(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    chain = (
        ca.leaf_certificate("fallback.example").public_bytes(serialization.Encoding.PEM)
        + ca.certificate_pem()
    )
    with _private_files(chain, b"KEY", parent=str(spool)) as (chain_path, key_path):
        assert mode(Path(chain_path).parent) == 0o700
        assert mode(Path(chain_path)) == mode(Path(key_path)) == 0o600
        assert Path(key_path).read_bytes() == b"KEY"
    assert list(spool.iterdir()) == []

    ctx = _context_via_tempdir(chain, ca._leaf_key_pem, ("h2",), parent=str(spool))
    assert list(spool.iterdir()) == []
    shake = Handshake(ctx, client_context(ca), "fallback.example").run()
    assert shake.client.getpeercert()["subjectAltName"] == (("DNS", "fallback.example"),)


# --- openssl agrees ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize(
    ("name", "check"), [("verify.example.com", "-verify_hostname"), ("192.0.2.7", "-verify_ip")]
)
def test_openssl_verifies_the_served_leaf_against_the_ca(
    ca: CertificateAuthority, tmp_path: Path, name: str, check: str
) -> None:
    shake = Handshake(ca.leaf_context(name), client_context(ca), name).run()
    leaf_pem = tmp_path / "leaf.pem"
    leaf_pem.write_bytes(peer_leaf(shake).public_bytes(serialization.Encoding.PEM))

    def verify(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = ["openssl", "verify", "-x509_strict", "-purpose", "sslserver", "-CAfile", ca.cert_path]
        return subprocess.run([*argv, *extra, str(leaf_pem)], capture_output=True, text=True, timeout=30)

    r = verify(check, name)
    assert r.returncode == 0 and r.stdout.strip() == f"{leaf_pem}: OK", r.stdout + r.stderr
    r = verify(check, "192.0.2.8" if check == "-verify_ip" else "other.example.com")
    assert r.returncode != 0
    other = CertificateAuthority.create(tmp_path / "other")
    r = subprocess.run(
        ["openssl", "verify", "-CAfile", other.cert_path, str(leaf_pem)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0  # signed by ca, not by other
