"""Server-side TLS contexts: certificates from PEM files, chosen by the client's server name.

Groundwork for TLS termination (the ``tls`` mode and ``action = "terminate"`` routes): a
:class:`CertStore` loads every certificate once, reads the names it is valid for from its
subjectAltName, and picks one per connection the way HAProxy's crt-list does:

Rule 1. An exact name wins, then a one-label wildcard (``*.example.com`` covers
        ``a.example.com``, not ``example.com`` and not ``a.b.example.com``), then the default
        certificate (the first one loaded, unless one is marked default).
Rule 2. Every context is TLS 1.2+ with the ``ssl`` module's modern defaults; ALPN protocols
        are set per context.
Rule 3. Problems are found at load time and reported as sentences naming the file (no key in
        it, not PEM, key does not match, expired), so ``portway check`` can show them.
"""

from __future__ import annotations

import datetime
import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.x509.oid import NameOID


class CertError(ValueError):
    """A certificate file cannot be used; the message names the file and what is wrong."""


@dataclass(frozen=True, slots=True)
class LoadedCert:
    """One certificate chain and key, with the names it serves and its context."""

    path: str
    names: tuple[str, ...]
    not_after: datetime.datetime
    context: ssl.SSLContext


def server_context(path: str, alpn: Sequence[str] = ()) -> ssl.SSLContext:
    """A TLS 1.2+ server context holding the chain and key in the PEM file ``path``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    try:
        ctx.load_cert_chain(path)
    except FileNotFoundError as exc:
        raise CertError(f"{path}: no such file") from exc
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        if "KEY_VALUES_MISMATCH" in reason:
            raise CertError(f"{path}: the private key does not belong to the certificate") from exc
        raise CertError(f"{path}: needs a PEM certificate chain and its private key ({reason})") from exc
    except OSError as exc:
        raise CertError(f"{path}: {exc.strerror}") from exc
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


def cert_names(path: str) -> tuple[tuple[str, ...], datetime.datetime]:
    """The DNS names (subjectAltName, else the CN) of the first certificate in ``path``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError as exc:
        raise CertError(f"{path}: no such file") from exc
    except OSError as exc:
        raise CertError(f"{path}: {exc.strerror}") from exc
    try:
        cert = x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertError(f"{path}: not a PEM certificate ({exc})") from exc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        names = tuple(n.lower() for n in san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = tuple(str(cn.value).lower() for cn in cns)
    return names, cert.not_valid_after_utc


def load(path: str, alpn: Sequence[str] = ()) -> LoadedCert:
    """Load one certificate file; :class:`CertError` says what is wrong with it."""
    names, not_after = cert_names(path)
    context = server_context(path, alpn)
    if not_after < datetime.datetime.now(datetime.UTC):
        raise CertError(f"{path}: the certificate expired on {not_after:%Y-%m-%d}")
    return LoadedCert(path, names, not_after, context)


class CertStore:
    """Certificates by name, and the SNI callback that switches a handshake to the right one."""

    __slots__ = ("_exact", "_wild", "certs", "default")

    def __init__(self, certs: Iterable[LoadedCert], default: LoadedCert | None = None) -> None:
        self.certs = tuple(certs)
        if not self.certs:
            raise CertError("no certificate to serve")
        self.default = default or self.certs[0]
        self._exact: dict[str, LoadedCert] = {}
        self._wild: dict[str, LoadedCert] = {}
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
