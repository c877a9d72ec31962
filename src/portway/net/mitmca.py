"""The local certificate authority behind the forward proxy's TLS interception.

To read a CONNECT tunnel for a chosen destination, the proxy ends the client's TLS itself
with a certificate for the name the client asked for, made on the spot and signed by a CA
that the client's machine has been told to trust. This module holds that CA:
:meth:`CertificateAuthority.create` makes one (``portway ca init``),
:meth:`CertificateAuthority.load` reads it back, and :meth:`CertificateAuthority.leaf_context`
hands out a server context for a name.

Rule 1. The CA is a directory with two PEM files: ``ca.pem`` (the certificate, mode 0644,
        public: it is what clients are given to trust) and ``ca-key.pem`` (the private key,
        mode 0600). Whoever reads the key can impersonate any site to every machine that
        trusts the CA, so the key is created 0600 from its first byte (``os.open`` with the
        mode, never a chmod afterwards), and :meth:`~CertificateAuthority.load` refuses a key
        that group or others can read, as ssh does.
Rule 2. Keys are EC P-256 (the CA's and the leaves'). Every intercepted handshake signs
        with the leaf key and every new leaf is signed with the CA key, while the client
        waits: a P-256 signature costs about 40 µs, an RSA-2048 one about 260 µs (and an
        RSA key takes ~30 ms to make). Certificates are smaller too, and every TLS 1.2+
        client accepts P-256. A CA brought along with an RSA or another EC key loads and
        signs as well.
Rule 3. One leaf key pair per :class:`CertificateAuthority`, made once and shared by every
        leaf it mints (mitmproxy does the same): a leaf costs one signature, not a key
        generation. Server contexts are kept per (server name, ALPN list) in a bounded LRU.
Rule 4. Python's ``ssl`` loads certificates and keys only from files. On Linux they go into
        anonymous memory files (``memfd_create``) that OpenSSL opens as ``/proc/self/fd/N``:
        nothing reaches a file system, and only this process (and root) can open them.
        Elsewhere they go to a fresh private directory (mode 0700, files 0600) removed as
        soon as the context has loaded them.
Rule 5. Problems are :class:`CAError` (a :class:`~portway.net.tlsctx.CertError`): one
        sentence naming the file at fault and what to do.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import ipaddress
import os
import re
import secrets
import shutil
import ssl
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from portway.net.tlsctx import CertError, server_context

__all__ = [
    "CACHE_SIZE",
    "CA_CERT_FILE",
    "CA_DAYS",
    "CA_KEY_FILE",
    "DEFAULT_DIRECTORY",
    "DEFAULT_NAME",
    "LEAF_DAYS",
    "CAError",
    "CertificateAuthority",
    "fingerprint_sha256",
    "read_certificate",
]

CA_CERT_FILE = "ca.pem"
"""The CA certificate's file name in the CA directory."""
CA_KEY_FILE = "ca-key.pem"
"""The CA private key's file name in the CA directory."""
DEFAULT_DIRECTORY = "~/.portway/ca"
"""Where ``portway ca init`` puts the CA unless told (``~`` is the user's home)."""
DEFAULT_NAME = "Portway interception CA"
"""The common name of a new CA: what trust stores list it as."""
CA_DAYS = 825
"""How long a new CA is valid, in days."""
LEAF_DAYS = 397
"""The longest validity of a minted leaf, in days (browsers refuse more than 398)."""
CACHE_SIZE = 1024
"""How many leaf contexts a :class:`CertificateAuthority` keeps (least recently used go first)."""

_SKEW = datetime.timedelta(days=1)  # certificates start this long before now: clients with slow clocks
_RENEW = datetime.timedelta(days=1)  # a cached leaf this close to its end is minted again
_DNS_LABEL = re.compile(r"(?!-)[a-z0-9_-]{1,63}(?<!-)")

IssuerKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
"""The CA key types this module signs with."""


class CAError(CertError):
    """The CA cannot be made, read or used; the message names the file and what to do.

    :attr:`kind` is one of :class:`~portway.net.tlsctx.CertError`'s (``"missing"``,
    ``"unreadable"``, ``"not_pem"``, ``"encrypted_key"``, ``"mismatch"``, ``"expired"``,
    ``"not_yet_valid"``, ``"invalid"``) or ``"exists"`` (:meth:`CertificateAuthority.create`
    would replace a CA), ``"insecure_key"`` (the key file is open to group or others) or
    ``"not_ca"`` (the certificate cannot sign others).
    """


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """The SHA-256 of ``certificate``'s DER as colon-separated upper-case hex, the form
    ``openssl x509 -fingerprint -sha256`` and browsers show, for comparing by eye."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def read_certificate(directory: str | os.PathLike[str]) -> x509.Certificate:
    """The CA certificate in ``directory`` (its ``ca.pem``), without touching the key.

    For showing or exporting the certificate (``portway ca show``), which needs no secret.

    Raises:
        CAError: ``ca.pem`` is missing, unreadable, not a PEM certificate, or not a CA's.
    """
    path = os.path.join(os.fspath(directory), CA_CERT_FILE)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise CAError(
            f"{path}: no such file (expected the CA certificate; make a CA with: "
            f"portway ca init --dir {os.fspath(directory)})",
            path=path,
            kind="missing",
        ) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CAError(
            f"{path}: cannot read the CA certificate ({reason})", path=path, kind="unreadable"
        ) from None
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CAError(f"{path}: not a PEM certificate", path=path, kind="not_pem") from None
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
        is_ca = constraints.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CAError(
            f"{path}: this certificate is not a CA's (no basicConstraints CA:TRUE), so it cannot sign others",
            path=path,
            kind="not_ca",
        )
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        pass  # RFC 5280 wants one, but OpenSSL (unless strict) accepts a CA without
    else:
        if not usage.key_cert_sign:
            raise CAError(
                f"{path}: this CA certificate's keyUsage leaves out keyCertSign, so it cannot sign others",
                path=path,
                kind="not_ca",
            )
    return certificate


@dataclass(slots=True)
class _Leaf:
    """One cached leaf: its server context and certificate, and when to mint it again."""

    context: ssl.SSLContext
    certificate: x509.Certificate
    renew_at: float
    """A ``time.time()`` after which the leaf is too close to its end to hand out."""


class CertificateAuthority:
    """A CA certificate and key that mint leaf certificates and their server contexts.

    Make one with :meth:`create` or :meth:`load`. :meth:`leaf_context` is safe to call from
    several threads.
    """

    __slots__ = (
        "__weakref__",
        "_aki",
        "_cache",
        "_cache_size",
        "_hash",
        "_key",
        "_key_fd",
        "_leaf_key",
        "_leaf_key_pem",
        "_leaf_public",
        "_lock",
        "_pem",
        "certificate",
        "directory",
    )

    def __init__(
        self,
        certificate: x509.Certificate,
        key: IssuerKey,
        *,
        directory: str,
        cache_size: int = CACHE_SIZE,
    ) -> None:
        """Use ``certificate`` and its ``key`` (checked by :meth:`load`, not here) to mint
        leaves, keeping up to ``cache_size`` leaf contexts. ``directory`` is where they live,
        for messages."""
        if cache_size < 1:
            raise ValueError(f"cache_size: expected at least 1, got {cache_size}")
        self.certificate = certificate
        """The CA certificate."""
        self.directory = directory
        """The CA directory (``ca.pem`` and ``ca-key.pem``)."""
        self._key = key
        self._hash = _signature_hash(key)
        self._pem = certificate.public_bytes(serialization.Encoding.PEM)
        try:
            ski = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        except x509.ExtensionNotFound:
            self._aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())  # Rule 3
        self._leaf_public = self._leaf_key.public_key()
        self._leaf_key_pem = self._leaf_key.private_bytes(  # "EC PRIVATE KEY": OpenSSL 3 decodes it faster
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        self._key_fd = _memory_file(self._leaf_key_pem, "portway-leaf-key")  # Rule 4; None: temp files
        if self._key_fd is not None:
            weakref.finalize(self, os.close, self._key_fd)
        self._cache: collections.OrderedDict[tuple[str, tuple[str, ...]], _Leaf] = collections.OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    # --- making and loading ------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        *,
        name: str = DEFAULT_NAME,
        days: int = CA_DAYS,
        force: bool = False,
        cache_size: int = CACHE_SIZE,
    ) -> CertificateAuthority:
        """Make a new CA in ``directory`` and return it.

        The directory (and any missing parent) is created with mode 0700. The CA has an EC
        P-256 key, a random serial, ``name`` as its common name, basicConstraints CA:TRUE
        with pathlen 0 (it signs leaves, never other CAs), keyUsage keyCertSign and cRLSign,
        and is valid from a day ago (for clients whose clocks lag) until ``days`` from now.
        ``ca-key.pem`` is written 0600 and ``ca.pem`` 0644, each complete under a temporary
        name first and then renamed into place.

        Raises:
            CAError: ``kind="exists"``: ``ca.pem`` or ``ca-key.pem`` is already there and
                ``force`` is false (clients trusting that CA would stop trusting the proxy);
                ``kind="unreadable"``: the directory or a file cannot be written.
            ValueError: ``days`` is below 1 or ``name`` is empty.
        """
        if days < 1:
            raise ValueError(f"days: expected at least 1, got {days}")
        if not name.strip():
            raise ValueError("name: expected a common name for the CA, got an empty one")
        root = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        cert_path, key_path = os.path.join(root, CA_CERT_FILE), os.path.join(root, CA_KEY_FILE)
        existing = [p for p in (cert_path, key_path) if os.path.lexists(p)]
        if existing and not force:
            raise CAError(
                f"{' and '.join(existing)} already exist{'s' * (len(existing) == 1)}: refusing to "
                "replace a CA (clients that trust it would stop trusting the proxy); "
                "replace it deliberately with force (portway ca init --force)",
                path=existing[0],
                kind="exists",
            )
        _make_private_directory(root)

        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, name.strip()),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Portway"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _SKEW)
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        staged: list[tuple[str, str]] = []
        try:  # both files complete before either replaces anything
            staged.append((_stage(key_path, key_pem, 0o600), key_path))
            staged.append(
                (_stage(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644), cert_path)
            )
            for temporary, final in staged:
                os.replace(temporary, final)
        except OSError as exc:
            for temporary, _ in staged:
                _unlink_quietly(temporary)
            reason = (exc.strerror or str(exc)).lower()
            raise CAError(
                f"{root}: cannot write the CA there ({reason})", path=root, kind="unreadable"
            ) from None
        _sync_directory(root)
        return cls(certificate, key, directory=root, cache_size=cache_size)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], *, cache_size: int = CACHE_SIZE) -> CertificateAuthority:
        """Read the CA in ``directory`` (``ca.pem`` and ``ca-key.pem``) and check it can sign.

        Raises:
            CAError: A file is missing or unreadable, not PEM, the certificate is not a CA's
                (``"not_ca"``), the key file is open to group or others (``"insecure_key"``;
                the message gives the ``chmod``), the key is encrypted or of a type that
                cannot sign certificates, the key does not belong to the certificate
                (``"mismatch"``), or the CA has expired or is not valid yet.
        """
        root = os.path.abspath(os.path.expanduser(os.fspath(directory)))
        certificate = read_certificate(root)
        cert_path, key_path = os.path.join(root, CA_CERT_FILE), os.path.join(root, CA_KEY_FILE)
        key = _read_key(key_path)
        public = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(*public) != certificate.public_key().public_bytes(*public):
            raise CAError(
                f"{key_path}: the private key does not belong to the CA certificate in {cert_path}",
                path=key_path,
                kind="mismatch",
            )
        now = datetime.datetime.now(datetime.UTC)
        if certificate.not_valid_after_utc <= now:
            raise CAError(
                f"{cert_path}: the CA expired on {certificate.not_valid_after_utc:%Y-%m-%d}; make a new one "
                f"with: portway ca init --force --dir {root} (and have clients trust the new certificate)",
                path=cert_path,
                kind="expired",
            )
        if certificate.not_valid_before_utc > now:
            raise CAError(
                f"{cert_path}: the CA is not valid before {certificate.not_valid_before_utc:%Y-%m-%d %H:%M} "
                "UTC (is this machine's clock right?)",
                path=cert_path,
                kind="not_yet_valid",
            )
        return cls(certificate, key, directory=root, cache_size=cache_size)

    # --- what it offers ----------------------------------------------------------------------

    @property
    def cert_path(self) -> str:
        """The CA certificate's file."""
        return os.path.join(self.directory, CA_CERT_FILE)

    @property
    def key_path(self) -> str:
        """The CA private key's file."""
        return os.path.join(self.directory, CA_KEY_FILE)

    @property
    def not_after(self) -> datetime.datetime:
        """When the CA certificate expires (UTC); no leaf outlives it."""
        return self.certificate.not_valid_after_utc

    def certificate_pem(self) -> bytes:
        """The CA certificate in PEM: what clients are given to trust."""
        return self._pem

    def fingerprint_sha256(self) -> str:
        """The CA certificate's SHA-256 fingerprint, colon-separated upper-case hex."""
        return fingerprint_sha256(self.certificate)

    def leaf_context(self, server_name: str, alpn: Sequence[str] = ()) -> ssl.SSLContext:
        """A server context (TLS 1.2+) presenting a certificate for ``server_name``, signed by this CA.

        ``server_name`` is a host name (it becomes a DNS subjectAltName; case and a trailing
        dot do not matter, an internationalised name is converted to its ASCII form) or an
        IP literal, bracketed or not (an IP subjectAltName). The context presents the leaf
        and the CA certificate, and selects from ``alpn`` (none if empty). The leaf is valid
        from a day ago for at most :data:`LEAF_DAYS` days, never past the CA's end, with
        extendedKeyUsage serverAuth and the CA's key identifier.

        Contexts are cached per (name, ALPN list): asking again returns the same object,
        until it is pushed out by :data:`CACHE_SIZE` newer ones or its leaf is a day from
        its end.

        Raises:
            ValueError: ``server_name`` is neither a host name nor an IP address.
            CAError: The CA has expired (``kind="expired"``).
        """
        return self._leaf(server_name, alpn).context

    def leaf_certificate(self, server_name: str, alpn: Sequence[str] = ()) -> x509.Certificate:
        """The leaf certificate :meth:`leaf_context` presents for ``(server_name, alpn)``
        (minting it if needed): for inspecting it, e.g. with ``openssl verify``."""
        return self._leaf(server_name, alpn).certificate

    # --- minting -----------------------------------------------------------------------------

    def _leaf(self, server_name: str, alpn: Sequence[str]) -> _Leaf:
        """The cached leaf for ``(server_name, alpn)``, minted when missing or near its end."""
        cache_key = (server_name, tuple(alpn))
        with self._lock:
            leaf = self._cache.get(cache_key)
            if leaf is not None and time.time() < leaf.renew_at:
                self._cache.move_to_end(cache_key)
                return leaf
            name, alt_name = _alt_name(server_name)
            normal_key = (name, cache_key[1])
            if normal_key != cache_key:  # "Example.COM." shares the leaf of "example.com"
                leaf = self._cache.get(normal_key)
                if leaf is None or time.time() >= leaf.renew_at:
                    leaf = self._mint(name, alt_name, normal_key[1])
                self._store(normal_key, leaf)
            else:
                leaf = self._mint(name, alt_name, cache_key[1])
            self._store(cache_key, leaf)
            return leaf

    def _store(self, cache_key: tuple[str, tuple[str, ...]], leaf: _Leaf) -> None:
        """Put ``leaf`` in the LRU as its newest entry, dropping the oldest beyond the size."""
        self._cache[cache_key] = leaf
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _mint(self, name: str, alt_name: x509.GeneralName, alpn: tuple[str, ...]) -> _Leaf:
        """Sign a new leaf for ``name`` and load it with the CA certificate into a context."""
        now = datetime.datetime.now(datetime.UTC)
        ca_end = self.certificate.not_valid_after_utc
        if ca_end <= now:
            raise CAError(
                f"{self.cert_path}: the CA expired on {ca_end:%Y-%m-%d}; make a new one with: "
                f"portway ca init --force --dir {self.directory}",
                path=self.cert_path,
                kind="expired",
            )
        start = max(now - _SKEW, self.certificate.not_valid_before_utc)
        end = min(start + datetime.timedelta(days=LEAF_DAYS), ca_end)
        # A common name is at most 64 characters; without one, RFC 5280 wants the SAN critical.
        short = len(name) <= 64
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)] if short else [])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.certificate.subject)
            .public_key(self._leaf_public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([alt_name]), critical=not short)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(self._aki, critical=False)
            .sign(self._key, self._hash)
        )
        chain = certificate.public_bytes(serialization.Encoding.PEM) + self._pem
        if self._key_fd is not None:
            context = _context_via_memory(chain, self._key_fd, alpn)
        else:
            context = _context_via_tempdir(chain, self._leaf_key_pem, alpn)
        renew = end - _RENEW
        renew_at = (renew if renew > now else end).timestamp()  # a leaf the CA cuts short: keep it
        return _Leaf(context, certificate, renew_at)


# --- helpers -----------------------------------------------------------------------------------


def _signature_hash(key: IssuerKey) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    """The digest to sign with: as strong as the key (SHA-384 for P-384, SHA-512 for P-521)."""
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size > 384:
            return hashes.SHA512()
        if key.curve.key_size > 256:
            return hashes.SHA384()
    return hashes.SHA256()


def _alt_name(server_name: str) -> tuple[str, x509.GeneralName]:
    """The normalised name and the subjectAltName entry a leaf for ``server_name`` carries."""
    text = server_name.strip()
    literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        return address.compressed, x509.IPAddress(address)
    name = text.lower().removesuffix(".")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(
                f"{server_name!r}: not a valid internationalised host name, so no certificate can be made "
                "for it"
            ) from None
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            f"{server_name!r}: not a host name or IP address, so no certificate can be made for it"
        )
    return name, x509.DNSName(name)


def _memory_file(data: bytes, label: str) -> int | None:
    """An anonymous memory file holding ``data`` that OpenSSL can open as ``/proc/self/fd/N``,
    or ``None`` where there are none (not Linux, or no ``/proc``)."""
    create = getattr(os, "memfd_create", None)
    if create is None:
        return None
    fd: int = create(label, os.MFD_CLOEXEC)
    try:
        os.write(fd, data)
        if not os.path.exists(f"/proc/self/fd/{fd}"):
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd


def _context_via_memory(chain: bytes, key_fd: int, alpn: tuple[str, ...]) -> ssl.SSLContext:
    """A server context loading ``chain`` from a new memory file and the key from ``key_fd``."""
    chain_fd = _memory_file(chain, "portway-leaf-chain")
    if chain_fd is None:  # /proc went away since the key's file was made: unusual, not fatal
        key = os.pread(key_fd, os.fstat(key_fd).st_size, 0)
        return _context_via_tempdir(chain, key, alpn)
    try:
        return server_context(f"/proc/self/fd/{chain_fd}", f"/proc/self/fd/{key_fd}", alpn)
    finally:
        os.close(chain_fd)


def _context_via_tempdir(
    chain: bytes, key: bytes, alpn: tuple[str, ...], parent: str | None = None
) -> ssl.SSLContext:
    """A server context loading ``chain`` and ``key`` through :func:`_private_files`."""
    with _private_files(chain, key, parent) as (chain_path, key_path):
        return server_context(chain_path, key_path, alpn)


@contextlib.contextmanager
def _private_files(chain: bytes, key: bytes, parent: str | None = None) -> Iterator[tuple[str, str]]:
    """The paths of ``chain`` and ``key`` written to files (0600) in a new directory (0700) under
    ``parent`` (default: the system's temporary directory), all removed on leaving."""
    directory = tempfile.mkdtemp(prefix="portway-leaf-", dir=parent)  # mode 0700
    try:
        paths = os.path.join(directory, "chain.pem"), os.path.join(directory, "key.pem")
        for path, data in zip(paths, (chain, key), strict=True):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        yield paths
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _read_key(path: str) -> IssuerKey:
    """The CA private key in ``path``, refused when group or others can open the file (Rule 1)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise CAError(
            f"{path}: no such file (expected the CA private key)", path=path, kind="missing"
        ) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CAError(
            f"{path}: cannot read the CA private key ({reason})", path=path, kind="unreadable"
        ) from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise CAError(
                f"{path}: the CA private key is open to group or others (mode {mode:04o}), and whoever "
                "reads it can impersonate any site to the machines that trust this CA; "
                f"refusing to use it. Fix with: chmod 600 {path}",
                path=path,
                kind="insecure_key",
            )
        data = f.read()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CAError(
            f"{path}: the CA private key is encrypted with a passphrase, which Portway cannot ask for; "
            f"decrypt it with: openssl pkey -in {path} -out {path}.plain, then chmod 600 it and move it back",
            path=path,
            kind="encrypted_key",
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise CAError(f"{path}: not a PEM private key", path=path, kind="not_pem") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAError(
            f"{path}: a {type(key).__name__.removeprefix('_')} key cannot sign certificates that "
            "TLS clients accept; use an EC or RSA CA (portway ca init makes one)",
            path=path,
            kind="invalid",
        )
    return key


def _make_private_directory(path: str) -> None:
    """Create ``path`` and any missing parent with mode 0700 (existing ones are left as they are)."""
    missing: list[str] = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)  # the umask may have taken bits away; never added any
        except FileExistsError:
            if not os.path.isdir(directory):
                raise CAError(
                    f"{directory}: exists and is not a directory", path=directory, kind="unreadable"
                ) from None
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise CAError(
                f"{directory}: cannot create it ({reason})", path=directory, kind="unreadable"
            ) from None


def _stage(final: str, data: bytes, mode: int) -> str:
    """Write ``data`` to a new file next to ``final`` created with ``mode`` (never wider); its name."""
    directory, base = os.path.split(final)
    temporary = os.path.join(directory, f".{base}.{secrets.token_hex(4)}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # exactly ``mode``: the umask may have narrowed it
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(temporary)
        raise
    os.close(fd)
    return temporary


def _unlink_quietly(path: str) -> None:
    """Remove ``path`` if it is there."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _sync_directory(path: str) -> None:
    """Make the renames in ``path`` durable (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
