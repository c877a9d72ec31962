"""TLS contexts: server certificates from PEM files chosen by the client's server name, and
client contexts for TLS to backends.

A :class:`CertStore` holds the certificates of one listener, each loaded once with the
names it is valid for (its subjectAltName), and hands out a server context per connection:

Rule 1. An exact name wins, then a one-label wildcard (``*.example.com`` covers
        ``a.example.com``, not ``example.com`` and not ``a.b.example.com``), then the default
        certificate (the first one loaded, unless one is marked default).
Rule 2. Every server context is TLS 1.2+ (or 1.3+) with the ``ssl`` module's modern defaults,
        no compression and the server's cipher preference. ALPN protocols belong to a context,
        so :meth:`CertStore.context_for` keeps one context per (certificate, ALPN list),
        built the first time it is asked for.
Rule 3. Problems are found at load time and raised as :class:`CertError`: a sentence that
        names the file at fault (no such file, not PEM, no key, key does not match,
        expired), with a :attr:`CertError.kind` so the configuration loader can add what to do.
        ``portway check`` and a reload report them before anything is served.
"""

from __future__ import annotations

import datetime
import re
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

__all__ = [
    "MIN_VERSIONS",
    "CertError",
    "CertStore",
    "LoadedCert",
    "cert_names",
    "client_context",
    "load",
    "server_context",
]

MIN_VERSIONS: dict[str, ssl.TLSVersion] = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
"""The oldest TLS version accepted, by the name the configuration uses."""

_KEY_BLOCK = re.compile(
    rb"-----BEGIN (?:[A-Z]+ )?PRIVATE KEY-----.*?-----END (?:[A-Z]+ )?PRIVATE KEY-----", re.DOTALL
)


class CertError(ValueError):
    """A certificate, key or CA file cannot be used; the message names the file and what is wrong.

    :attr:`kind` classifies the problem: ``"missing"``, ``"unreadable"``, ``"not_pem"``,
    ``"no_key"``, ``"encrypted_key"``, ``"mismatch"``, ``"expired"``, ``"not_yet_valid"``
    or ``"invalid"``.
    """

    def __init__(self, message: str, *, path: str, kind: str = "invalid") -> None:
        """``message`` is the finished sentence; ``path`` is the file at fault."""
        super().__init__(message)
        self.path = path
        self.kind = kind


@dataclass(frozen=True, slots=True)
class LoadedCert:
    """One certificate chain and key, with the names it serves and its context."""

    path: str
    """The PEM certificate chain (leaf first)."""
    names: tuple[str, ...]
    """DNS names, lower-cased, from the subjectAltName (else the CN); may hold wildcards."""
    not_after: datetime.datetime
    """When the leaf certificate expires (UTC)."""
    context: ssl.SSLContext = field(compare=False)
    """A server context for this certificate with the ALPN protocols it was loaded with."""
    key: str | None = None
    """The PEM private key; ``None``: the key is in :attr:`path` too."""
    min_version: str = "1.2"
    """``"1.2"`` or ``"1.3"``: the oldest TLS version its contexts accept."""


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise CertError(f"{path}: no such file (expected {what})", path=path, kind="missing") from None
    except IsADirectoryError:
        raise CertError(f"{path}: is a directory, not {what}", path=path, kind="unreadable") from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CertError(f"{path}: cannot read {what} ({reason})", path=path, kind="unreadable") from None


def _not_pem(path: str, data: bytes, what: str, der_command: str) -> CertError:
    hint = ""
    if data[:1] == b"\x30":  # an ASN.1 SEQUENCE: DER
        hint = f"; it looks like DER, convert it with: {der_command.format(path=path)}"
    return CertError(f"{path}: not {what}{hint}", path=path, kind="not_pem")


def _leaf(path: str) -> x509.Certificate:
    data = _read(path, "a PEM certificate chain")
    try:
        return x509.load_pem_x509_certificates(data)[0]
    except ValueError:
        raise _not_pem(
            path, data, "a PEM certificate", "openssl x509 -inform der -in {path} -out {path}.pem"
        ) from None


def _check_key(cert: str, key: str | None) -> None:
    """The private key exists and is a PEM key without a passphrase (matching is left to OpenSSL)."""
    path = key if key is not None else cert
    data = _read(path, "a PEM private key")
    if key is None:
        match = _KEY_BLOCK.search(data)
        if match is None:
            raise CertError(
                f"{cert}: needs a PEM certificate chain and its private key, and holds no private key",
                path=cert,
                kind="no_key",
            )
        data = match.group(0)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertError(
            f"{path}: the private key is encrypted with a passphrase, which Portway cannot ask for; "
            f"decrypt it with: openssl pkey -in {path} -out {path}.plain",
            path=path,
            kind="encrypted_key",
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:
        if key is not None and _KEY_BLOCK.search(data) is None:
            raise _not_pem(
                path, data, "a PEM private key", "openssl pkey -inform der -in {path} -out {path}.pem"
            ) from None
        raise CertError(f"{path}: the private key cannot be read ({exc})", path=path) from None


def server_context(
    cert: str, key: str | None = None, alpn: Sequence[str] = (), min_version: str = "1.2"
) -> ssl.SSLContext:
    """A server context holding the chain in ``cert`` and the key in ``key`` (``None``: in ``cert``).

    TLS ``min_version`` or later (``"1.2"`` or ``"1.3"``), no compression, the server's cipher
    preference, and ``alpn`` as the ALPN protocols it selects from (none if empty).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = MIN_VERSIONS[min_version]
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        missing = exc.filename or (key if key is not None else cert)
        raise CertError(f"{missing}: no such file", path=missing, kind="missing") from None
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason:
            if key is not None:
                message = f"{key}: the private key does not belong to the certificate in {cert}"
            else:
                message = f"{cert}: the private key does not belong to the certificate"
            raise CertError(message, path=key or cert, kind="mismatch") from None
        raise CertError(
            f"{cert}: needs a PEM certificate chain and its private key ({reason})", path=cert
        ) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CertError(f"{cert}: {reason}", path=cert, kind="unreadable") from None
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def cert_names(path: str) -> tuple[tuple[str, ...], datetime.datetime]:
    """The DNS names (subjectAltName, else the CN) of the first certificate in ``path``, and
    when it expires."""
    cert = _leaf(path)
    return _names(cert), cert.not_valid_after_utc


def _names(cert: x509.Certificate) -> tuple[str, ...]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = tuple(str(cn.value).lower() for cn in cns)
    return names


def load(cert: str, key: str | None = None, alpn: Sequence[str] = (), min_version: str = "1.2") -> LoadedCert:
    """Load one certificate chain and its private key, and check that they can be served.

    Args:
        cert: The PEM certificate chain, leaf first.
        key: The PEM private key; ``None`` when it follows the chain in ``cert``.
        alpn: ALPN protocols of the context built here (:meth:`CertStore.context_for` makes
            others as needed).
        min_version: ``"1.2"`` or ``"1.3"``.

    Raises:
        CertError: A file is missing or unreadable, not PEM, holds no key or an encrypted
            one, the key does not belong to the certificate, or the certificate is expired
            or not valid yet. The message names the file at fault.
    """
    leaf = _leaf(cert)
    names, not_after = _names(leaf), leaf.not_valid_after_utc
    _check_key(cert, key)
    context = server_context(cert, key, alpn, min_version)
    now = datetime.datetime.now(datetime.UTC)
    if not_after < now:
        raise CertError(f"{cert}: the certificate expired on {not_after:%Y-%m-%d}", path=cert, kind="expired")
    not_before = leaf.not_valid_before_utc
    if not_before > now:
        raise CertError(
            f"{cert}: the certificate is not valid before {not_before:%Y-%m-%d %H:%M} UTC",
            path=cert,
            kind="not_yet_valid",
        )
    return LoadedCert(cert, names, not_after, context, key, min_version)


def client_context(ca: str | None = None, verify: bool = True) -> ssl.SSLContext:
    """A client context for TLS to a backend: TLS 1.2+, no compression.

    With ``verify`` (the default) the server's chain is checked against the PEM CA file
    ``ca`` (``None``: the system's trust store) and its name against the name the caller
    passes as ``server_hostname``. Without it nothing is checked and no CA is loaded.

    Raises:
        CertError: ``ca`` is missing, unreadable or holds no PEM certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    if ca is None:
        ctx.load_default_certs()
        return ctx
    data = _read(ca, "a PEM file of CA certificates")
    try:
        ctx.load_verify_locations(cafile=ca)
    except ssl.SSLError:
        raise _not_pem(
            ca, data, "a PEM file of CA certificates", "openssl x509 -inform der -in {path} -out {path}.pem"
        ) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise CertError(f"{ca}: cannot read it ({reason})", path=ca, kind="unreadable") from None
    return ctx


class CertStore:
    """Certificates by name, the server context for a connection, and the SNI callback that
    switches a handshake to the right certificate."""

    __slots__ = ("_contexts", "_exact", "_wild", "certs", "default")

    def __init__(self, certs: Iterable[LoadedCert], default: LoadedCert | None = None) -> None:
        """Index ``certs`` by name; the first is the default unless ``default`` is given."""
        self.certs = tuple(certs)
        if not self.certs:
            raise CertError("no certificate to serve", path="")
        self.default = default or self.certs[0]
        self._exact: dict[str, LoadedCert] = {}
        self._wild: dict[str, LoadedCert] = {}
        self._contexts: dict[tuple[int, tuple[str, ...]], ssl.SSLContext] = {}
        for cert in self.certs:  # the first certificate that names a host keeps it
            for name in cert.names:
                if name.startswith("*."):
                    self._wild.setdefault(name[2:], cert)
                else:
                    self._exact.setdefault(name, cert)

    def select(self, server_name: str | None) -> LoadedCert:
        """Rule 1: exact, then one-label wildcard, then the default certificate."""
        if server_name:
            name = server_name.lower()
            cert = self._exact.get(name)
            if cert is not None:
                return cert
            _, dot, parent = name.partition(".")
            if dot:
                cert = self._wild.get(parent)
                if cert is not None:
                    return cert
        return self.default

    def prepare(self, alpns: Iterable[tuple[str, ...]]) -> None:
        """Build the context of every certificate for each ALPN offer in ``alpns`` now, so
        that connections never read certificate files (a file replaced on disk takes effect
        at the next reload, not in the middle of one)."""
        for alpn in alpns:
            for cert in self.certs:
                key = (id(cert), alpn)
                if key not in self._contexts:
                    self._contexts[key] = server_context(cert.path, cert.key, alpn, cert.min_version)

    def context_for(self, server_name: str | None, alpn: tuple[str, ...]) -> ssl.SSLContext:
        """The server context for a client that asked for ``server_name``, offering exactly
        the ALPN protocols ``alpn`` (none if empty).

        One context per (certificate, ``alpn``), built by :meth:`prepare` or else on first
        use from the certificate's files, and then reused. Raises :class:`CertError` if the
        files no longer load.
        """
        cert = self.select(server_name)
        cache_key = (id(cert), alpn)
        ctx = self._contexts.get(cache_key)
        if ctx is None:
            ctx = server_context(cert.path, cert.key, alpn, cert.min_version)
            self._contexts[cache_key] = ctx
        return ctx

    def context(self) -> ssl.SSLContext:
        """The context to start handshakes with: it switches to the chosen certificate."""
        ctx = self.default.context
        ctx.sni_callback = self._on_sni
        return ctx

    def _on_sni(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, ctx: ssl.SSLContext
    ) -> None:
        chosen = self.select(server_name).context
        if chosen is not ctx:
            chosen.sni_callback = self._on_sni
            sslobj.context = chosen
