"""Headless Chromium through the forward proxy: an HTTP page (absolute-form GET), an HTTPS page
through a CONNECT tunnel with the origin's own certificate, and an HTTPS page the proxy
intercepts with a certificate from Portway's CA.

Chromium on Linux takes its trust from the NSS database in ``$HOME/.pki/nssdb``: each test
runs it with a fresh HOME whose database trusts exactly one CA (``certutil`` from
libnss3-tools), and without ``--ignore-certificate-errors``, so a page loads only if the
certificate chain is the one the test expects. Chromium bypasses proxies for loopback unless
told ``--proxy-bypass-list=<-loopback>``.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import trustme

from tests.integration.backends import HttpOrigin, LoopThread, http_proxy_config
from tests.integration.harness import Portway, free_port


def chromium() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (make system-deps installs it)")
    return browser


def trusting_home(tmp: Path, ca_pem: Path) -> Path:
    """A HOME whose NSS database (what Chromium trusts) trusts ``ca_pem`` for TLS servers."""
    certutil = shutil.which("certutil")
    assert certutil, "certutil is missing: install libnss3-tools (make system-deps does)"
    home = tmp / "home"
    db = home / ".pki" / "nssdb"
    db.mkdir(parents=True)
    for args in (["-N", "--empty-password"], ["-A", "-n", "testca", "-t", "C,,", "-i", str(ca_pem)]):
        subprocess.run([certutil, "-d", f"sql:{db}", *args], check=True, capture_output=True, timeout=30)
    return home


def dump_dom(tmp: Path, proxy_port: int, url: str, home: Path) -> str:
    """The DOM of ``url`` after Chromium loaded it through the proxy."""
    profile = tmp / f"profile-{uuid.uuid4().hex[:8]}"
    done = subprocess.run(
        [
            chromium(),
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            f"--proxy-server=http://127.0.0.1:{proxy_port}",
            "--proxy-bypass-list=<-loopback>",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env={"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
    )
    return done.stdout


def page(token: str) -> bytes:
    return f"<!doctype html><html><body><p id=token>{token}</p></body></html>".encode()


def tls_origin(lt: LoopThread, ca: trustme.CA, pages: dict[str, bytes]) -> HttpOrigin:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(ctx)
    return HttpOrigin(lt, ssl_ctx=ctx, pages=pages)


def test_http_page(tmp_path: Path, lt: LoopThread) -> None:
    """An http:// page: Chromium sends an absolute-form GET; the origin's token shows in the
    DOM, and the origin saw the request come through the proxy (its Via)."""
    token = uuid.uuid4().hex
    origin = HttpOrigin(lt, pages={"/page": page(token)})
    port = free_port()
    pw = Portway(tmp_path, http_proxy_config(port, [f"127.0.0.1:{origin.port}"])).start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        dom = dump_dom(tmp_path, port, f"http://127.0.0.1:{origin.port}/page", home)
        assert f'<p id="token">{token}</p>' in dom, dom[:500]
        (seen,) = [r for r in origin.requests if r.target == "/page"]
        assert any("portway" in v for v in seen.values("via")), seen.head
        url = f"http://127.0.0.1:{origin.port}/page"
        pw.wait_access(lambda a: any(r["url"] == url and r["status"] == 200 for r in a), requests=True)
    finally:
        pw.stop()


def test_https_page_through_a_connect_tunnel(tmp_path: Path, lt: LoopThread) -> None:
    """An https:// page: Chromium opens a CONNECT tunnel and checks the origin's own
    certificate (issued by a CA only its NSS database trusts); the proxy does not touch the
    bytes, so the origin sees no Via."""
    token = uuid.uuid4().hex
    ca = trustme.CA()
    origin = tls_origin(lt, ca, {"/page": page(token)})
    ca_pem = tmp_path / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    port = free_port()
    conf = http_proxy_config(port, [f"127.0.0.1:{origin.port}"], connect_ports=(origin.port,))
    pw = Portway(tmp_path, conf).start()
    try:
        dom = dump_dom(
            tmp_path, port, f"https://localhost:{origin.port}/page", trusting_home(tmp_path, ca_pem)
        )
        assert f'<p id="token">{token}</p>' in dom, dom[:500]
        (seen,) = [r for r in origin.requests if r.target == "/page"]
        assert not seen.values("via"), seen.head  # a tunnel: the proxy never saw the request
        pw.wait_access(lambda a: any(r["sni"] == f"localhost:{origin.port}" for r in a))
    finally:
        pw.stop()


def test_intercepted_https_page(tmp_path: Path, lt: LoopThread) -> None:
    """``intercept = ["localhost"]``: the proxy ends Chromium's TLS with a certificate from
    Portway's CA (the only CA Chromium trusts here) and talks TLS to the origin itself
    (trusting the origin's CA by ``intercept_origin_ca``). A plain tunnel would show Chromium
    the origin's certificate, which it does not trust, and no token."""
    token = uuid.uuid4().hex
    origin_ca = trustme.CA()
    origin = tls_origin(lt, origin_ca, {"/page": page(token)})
    origin_ca_pem = tmp_path / "origin-ca.pem"
    origin_ca.cert_pem.write_to_path(str(origin_ca_pem))
    ca_dir = tmp_path / "portway-ca"
    subprocess.run(
        [sys.executable, "-m", "portway", "ca", "init", "--dir", str(ca_dir)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    port = free_port()
    conf = http_proxy_config(
        port,
        [f"127.0.0.1:{origin.port}"],
        connect_ports=(origin.port,),
        listener=(
            f'intercept = ["localhost"]\nintercept_ca = "{ca_dir}"\nintercept_origin_ca = "{origin_ca_pem}"'
        ),
    )
    pw = Portway(tmp_path, conf).start()
    try:
        home = trusting_home(tmp_path, ca_dir / "ca.pem")
        dom = dump_dom(tmp_path, port, f"https://localhost:{origin.port}/page", home)
        assert f'<p id="token">{token}</p>' in dom, dom[:500]
        (seen,) = [r for r in origin.requests if r.target == "/page"]
        assert any("portway" in v for v in seen.values("via")), seen.head  # the proxy read it
        url = f"https://localhost:{origin.port}/page"
        pw.wait_access(lambda a: any(r["url"] == url and r["intercepted"] for r in a), requests=True)
    finally:
        pw.stop()
