"""``portway ca``: make and show the certificate authority of the forward proxy's TLS interception.

``init`` makes the CA (:meth:`portway.net.mitmca.CertificateAuthority.create`) and says how to
make clients trust it; ``show`` prints its certificate, PEM on stdout so it can be redirected
to a file, and what it is on stderr. Neither ever prints the private key.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import sys

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from portway.net.mitmca import (
    CA_CERT_FILE,
    CA_KEY_FILE,
    DEFAULT_DIRECTORY,
    CAError,
    CertificateAuthority,
    fingerprint_sha256,
    read_certificate,
)

CA_DESCRIPTION = """\
Manage the certificate authority (CA) the forward proxy signs certificates with
when it intercepts TLS: to read a CONNECT tunnel, the proxy ends the client's
TLS itself, with a certificate for the requested name made on the spot and
signed by this CA. Clients accept it only on machines told to trust the CA.

The CA is a directory with ca.pem (the certificate: public, give it to the
clients) and ca-key.pem (the private key, mode 0600: whoever holds it can
impersonate any website to every machine that trusts the CA).
"""

CA_EPILOG = f"""\
examples:
  portway ca init                          # a new CA in {DEFAULT_DIRECTORY}
  portway ca init --dir /etc/portway/ca    # elsewhere (created with mode 0700)
  portway ca show > portway-ca.crt         # the certificate, to hand to clients
"""

INIT_DESCRIPTION = f"""\
Make a new CA in DIR (default: {DEFAULT_DIRECTORY}, created with mode 0700):
an EC P-256 key in {CA_KEY_FILE} (mode 0600) and a certificate in {CA_CERT_FILE}
(mode 0644), valid for 825 days. Then print its fingerprint and how to make
clients trust it. An existing CA is kept unless --force is given.
"""

SHOW_DESCRIPTION = f"""\
Print the CA certificate ({CA_CERT_FILE} in DIR) as PEM on stdout, and its
subject, SHA-256 fingerprint and expiry on stderr. The private key is not read.
"""

SHOW_EPILOG = """\
examples:
  portway ca show > portway-ca.crt
  portway ca show --dir /etc/portway/ca | openssl x509 -noout -text
"""


def add_ca_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``portway ca init|show``."""
    raw = argparse.RawDescriptionHelpFormatter
    ca = sub.add_parser(
        "ca",
        help="make or show the CA for the forward proxy's TLS interception",
        description=CA_DESCRIPTION,
        epilog=CA_EPILOG,
        formatter_class=raw,
    )
    ca.set_defaults(ca_help=ca.print_help)
    actions = ca.add_subparsers(dest="ca_command", metavar="ACTION")

    init = actions.add_parser(
        "init",
        help="make a new CA and say how to trust it",
        description=INIT_DESCRIPTION,
        formatter_class=raw,
        allow_abbrev=False,
    )
    init.add_argument(
        "--dir",
        default=DEFAULT_DIRECTORY,
        metavar="DIR",
        help=f"the CA directory (default: {DEFAULT_DIRECTORY})",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace an existing CA (every client that trusts the old one must be given the new one)",
    )

    show = actions.add_parser(
        "show",
        help="print the CA certificate (PEM) on stdout",
        description=SHOW_DESCRIPTION,
        epilog=SHOW_EPILOG,
        formatter_class=raw,
        allow_abbrev=False,
    )
    show.add_argument(
        "--dir",
        default=DEFAULT_DIRECTORY,
        metavar="DIR",
        help=f"the CA directory (default: {DEFAULT_DIRECTORY})",
    )


def ca_command(args: argparse.Namespace) -> int:
    """Run ``portway ca ACTION``; the exit status."""
    if args.ca_command is None:
        args.ca_help()
        return 2
    directory = os.path.abspath(os.path.expanduser(args.dir))
    try:
        if args.ca_command == "init":
            return _init(directory, force=args.force)
        return _show(directory)
    except CAError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _init(directory: str, *, force: bool) -> int:
    """``portway ca init``: make the CA, then print where it is and how to trust it."""
    existed = os.path.lexists(os.path.join(directory, CA_CERT_FILE))
    try:
        ca = CertificateAuthority.create(directory, force=force)
    except CAError as exc:
        if exc.kind != "exists":
            raise
        present = [n for n in (CA_CERT_FILE, CA_KEY_FILE) if os.path.lexists(os.path.join(directory, n))]
        print(
            f"error: {directory} already holds a CA ({', '.join(present)}); nothing was changed.\n"
            "Replacing it makes every client that trusts it distrust the proxy until given the new "
            f"certificate; to do that anyway: portway ca init --force --dir {shlex.quote(directory)}",
            file=sys.stderr,
        )
        return 1
    cert = shlex.quote(ca.cert_path)
    print(f"{'replaced the' if existed else 'made a new'} certificate authority in {directory}")
    print(f"  certificate  {ca.cert_path}  (public: give it to the clients that should trust the proxy)")
    print(f"  private key  {ca.key_path}  (mode 0600: keep it secret, never copy it to clients)")
    print(f"  subject      {_subject(ca.certificate)}")
    print(f"  SHA-256      {ca.fingerprint_sha256()}")
    print(f"  expires      {ca.not_after:%Y-%m-%d %H:%M} UTC")
    if existed:
        print("\nClients that trusted the old CA must be given this certificate instead.")
    print(
        f"""
To trust it on a client (only where the proxy should be able to read TLS traffic):
  Debian/Ubuntu, system-wide (curl, wget, apt, most programs):
    sudo cp {cert} /usr/local/share/ca-certificates/portway-ca.crt && sudo update-ca-certificates
  Chromium and Chrome on Linux (NSS database; Firefox keeps one per profile, under
  ~/.mozilla/firefox/, or trusts the system store with security.enterprise_roots.enabled):
    certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n portway -i {cert}
  curl, one command (replaces curl's CA store for that command):
    curl --cacert {cert} https://...
  Python requests (a bundle with the other CAs too, after the Debian/Ubuntu step):
    export REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt   # or ={cert} for this CA alone
  Node.js:
    export NODE_EXTRA_CA_CERTS={cert}

warning: anyone who holds {ca.key_path} can impersonate any website to every
machine that trusts this CA. Keep the key on the proxy host, readable only by
the proxy's user, and remove the CA from clients that no longer need it.""",
    )
    return 0


def _show(directory: str) -> int:
    """``portway ca show``: the certificate's PEM on stdout, what it is on stderr."""
    certificate = read_certificate(directory)
    _describe(certificate, os.path.join(directory, CA_CERT_FILE))
    try:
        sys.stdout.buffer.write(certificate.public_bytes(serialization.Encoding.PEM))
        sys.stdout.flush()
    except BrokenPipeError:  # `portway ca show | head -1`: the reader has seen enough
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _describe(certificate: x509.Certificate, path: str) -> None:
    """Subject, fingerprint and validity of ``certificate`` on stderr (stdout holds the PEM)."""
    print(f"certificate  {path}", file=sys.stderr)
    print(f"subject      {_subject(certificate)}", file=sys.stderr)
    print(f"SHA-256      {fingerprint_sha256(certificate)}", file=sys.stderr)
    print(f"expires      {certificate.not_valid_after_utc:%Y-%m-%d %H:%M} UTC", file=sys.stderr)
    if certificate.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        print(
            f"warning: this CA has expired; make a new one with: portway ca init --force --dir "
            f"{shlex.quote(os.path.dirname(path))}",
            file=sys.stderr,
        )


def _subject(certificate: x509.Certificate) -> str:
    """The subject as ``CN=..., O=...``, in the certificate's own order (RFC 4514 reverses it)."""
    return ", ".join(f"{a.rfc4514_attribute_name}={a.value!s}" for a in certificate.subject)
