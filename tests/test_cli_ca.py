"""``portway ca init|show`` as an operator runs them: a subprocess, real files."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509

from portway.net.mitmca import CA_CERT_FILE, CA_KEY_FILE, CertificateAuthority, fingerprint_sha256

ROOT = Path(__file__).resolve().parents[1]
FINGERPRINT = re.compile(r"SHA-256\s+((?:[0-9A-F]{2}:){31}[0-9A-F]{2})\n")


def portway(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m portway ARGS``; checks that no private key or traceback is printed."""
    env = dict(os.environ)
    if home is not None:
        env["HOME"] = str(home)
    r = subprocess.run(
        [sys.executable, "-m", "portway", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    out = r.stdout + r.stderr
    assert "PRIVATE KEY" not in out and "Traceback" not in out, out
    return r


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_the_ca_and_teaches_how_to_trust_it(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    r = portway("ca", "init", "--dir", str(directory))
    assert r.returncode == 0, r.stderr
    assert mode(directory) == 0o700
    assert mode(directory / CA_KEY_FILE) == 0o600
    assert mode(directory / CA_CERT_FILE) == 0o644

    ca = CertificateAuthority.load(directory)
    out = r.stdout
    assert f"made a new certificate authority in {directory}" in out
    assert str(directory / CA_CERT_FILE) in out and str(directory / CA_KEY_FILE) in out
    match = FINGERPRINT.search(out)
    assert match is not None and match.group(1) == ca.fingerprint_sha256()
    cert = directory / CA_CERT_FILE
    assert (
        f"sudo cp {cert} /usr/local/share/ca-certificates/portway-ca.crt && sudo update-ca-certificates"
        in out
    )
    assert f"certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n portway -i {cert}" in out
    assert f"curl --cacert {cert}" in out
    assert "REQUESTS_CA_BUNDLE=" in out
    assert "impersonate any website" in out


def test_init_defaults_to_a_private_directory_in_home(tmp_path: Path) -> None:
    r = portway("ca", "init", home=tmp_path)
    assert r.returncode == 0, r.stderr
    directory = tmp_path / ".portway" / "ca"
    assert mode(tmp_path / ".portway") == 0o700 and mode(directory) == 0o700
    assert str(directory) in r.stdout
    shown = portway("ca", "show", home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.encode() == (directory / CA_CERT_FILE).read_bytes()


def test_init_twice_refuses_without_force(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    assert portway("ca", "init", "--dir", str(directory)).returncode == 0
    before = {p.name: p.read_bytes() for p in directory.iterdir()}

    r = portway("ca", "init", "--dir", str(directory))
    assert r.returncode == 1 and r.stdout == ""
    assert f"error: {directory} already holds a CA (ca.pem, ca-key.pem); nothing was changed" in r.stderr
    assert f"portway ca init --force --dir {directory}" in r.stderr
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before

    r = portway("ca", "init", "--force", "--dir", str(directory))
    assert r.returncode == 0, r.stderr
    assert f"replaced the certificate authority in {directory}" in r.stdout
    assert "must be given this certificate instead" in r.stdout
    assert (directory / CA_CERT_FILE).read_bytes() != before[CA_CERT_FILE]
    assert (directory / CA_KEY_FILE).read_bytes() != before[CA_KEY_FILE]
    assert mode(directory / CA_KEY_FILE) == 0o600 and mode(directory / CA_CERT_FILE) == 0o644
    assert sorted(p.name for p in directory.iterdir()) == [CA_KEY_FILE, CA_CERT_FILE]


def test_show_prints_the_pem_on_stdout_and_what_it_is_on_stderr(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    assert portway("ca", "init", "--dir", str(directory)).returncode == 0
    r = portway("ca", "show", "--dir", str(directory))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("-----BEGIN CERTIFICATE-----\n")
    assert r.stdout.endswith("-----END CERTIFICATE-----\n")
    shown = x509.load_pem_x509_certificate(r.stdout.encode())
    assert shown == x509.load_pem_x509_certificate((directory / CA_CERT_FILE).read_bytes())
    assert "subject      CN=Portway interception CA, O=Portway" in r.stderr
    match = FINGERPRINT.search(r.stderr)
    assert match is not None and match.group(1) == fingerprint_sha256(shown)
    assert f"expires      {shown.not_valid_after_utc:%Y-%m-%d %H:%M} UTC" in r.stderr

    (directory / CA_KEY_FILE).chmod(0o644)  # show reads only the public certificate
    assert portway("ca", "show", "--dir", str(directory)).stdout == r.stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_show_output_is_what_openssl_reads(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    assert portway("ca", "init", "--dir", str(directory)).returncode == 0
    (tmp_path / "ca.crt").write_text(portway("ca", "show", "--dir", str(directory)).stdout)
    r = subprocess.run(
        ["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", str(tmp_path / "ca.crt")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert r.stdout.strip().split("=", 1)[1] == CertificateAuthority.load(directory).fingerprint_sha256()


def test_errors_are_sentences(tmp_path: Path) -> None:
    r = portway("ca", "show", "--dir", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr.startswith(f"error: {tmp_path / 'nope' / CA_CERT_FILE}: no such file")
    assert "portway ca init" in r.stderr

    (tmp_path / "file").write_text("x")
    r = portway("ca", "init", "--dir", str(tmp_path / "file" / "ca"))
    assert r.returncode == 1 and r.stderr.startswith("error: ")

    r = portway("ca")
    assert r.returncode == 2 and "init" in r.stdout and "show" in r.stdout


def test_help_lists_ca_init(tmp_path: Path) -> None:
    r = portway("--help")
    assert r.returncode == 0 and "portway ca init" in r.stdout
    r = portway("ca", "init", "--help")
    assert r.returncode == 0 and "--force" in r.stdout and "0600" in r.stdout
