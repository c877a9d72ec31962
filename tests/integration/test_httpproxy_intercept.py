"""TLS interception in the http-proxy mode, end to end with real clients (curl, requests, httpx).

The origin is a TLS server on loopback with a trustme certificate for ``localhost``; Portway
trusts that CA for origins (``intercept_origin_ca``) and presents leaves from its own CA (made
with ``portway ca init``). A client that trusts only Portway's CA can therefore complete its
handshake only if the proxy really intercepted; one that trusts only the origin's CA, only if
the proxy tunnelled untouched. Every body is checked by sha256, the origin's view of each
request (what the proxy sent inside TLS) is recorded, and so is the HAR file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import trustme

from tests.integration.backends import Backend, LoopThread
from tests.integration.harness import Portway, fd_count, free_port, wait_until

PAYLOAD = os.urandom(1 << 20)


def _tls_origin(lt: LoopThread, ctx: ssl.SSLContext, seen: list[tuple[int, bytes]]) -> Backend:
    """A keep-alive HTTPS origin: ``/big`` answers PAYLOAD, anything else the sha256 of the
    request head it received; ``seen`` gets (connection number, head) for every request."""
    conns = [0]

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conns[0] += 1
        me = conns[0]
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            seen.append((me, head))
            target = head.split(b" ", 2)[1]
            body = PAYLOAD if target == b"/big" else hashlib.sha256(head).hexdigest().encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    return Backend(lt, handler, ssl_ctx=ctx)


CONFIG = """
workers = 1
[admin]
listen = "off"
[log]
access = "stdout"
format = "json"

[[listener]]
name = "proxy"
mode = "http-proxy"
bind = "127.0.0.1:{port}"
sniff_timeout = "2s"
allow = ["127.0.0.1:{origin}"]
connect_ports = [{origin}]
intercept = ["localhost"]
intercept_ca = "{ca_dir}"
{extra}
"""


@pytest.fixture
def setup(tmp_path: Path, lt: LoopThread) -> Any:
    origin_ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    origin_ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    seen: list[tuple[int, bytes]] = []
    origin = _tls_origin(lt, ctx, seen)
    origin_pem = tmp_path / "origin-ca.pem"
    origin_ca.cert_pem.write_to_path(str(origin_pem))
    ca_dir = tmp_path / "ca"
    subprocess.run(
        [sys.executable, "-m", "portway", "ca", "init", "--dir", str(ca_dir)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    yield {
        "tmp": tmp_path,
        "origin": origin,
        "seen": seen,
        "origin_pem": str(origin_pem),
        "ca_dir": str(ca_dir),
        "portway_pem": str(ca_dir / "ca.pem"),
    }
    origin.close()


def _start(setup: Any, extra: str) -> tuple[Portway, int]:
    port = free_port()
    conf = CONFIG.format(port=port, origin=setup["origin"].port, ca_dir=setup["ca_dir"], extra=extra)
    return Portway(setup["tmp"], conf).start(), port


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=40)


def test_curl_requests_and_httpx_through_interception(setup: Any) -> None:
    har = setup["tmp"] / "capture.har"
    pw, port = _start(setup, f'intercept_origin_ca = "{setup["origin_pem"]}"\nhar = "{har}"')
    try:
        worker = pw.worker_pids()[0]
        baseline = fd_count(worker)
        base = f"https://localhost:{setup['origin'].port}"
        proxy = f"http://127.0.0.1:{port}"
        # Two requests on one client connection: only Portway's CA is trusted by the client.
        r = _curl("-x", proxy, "--cacert", setup["portway_pem"], f"{base}/big", f"{base}/a?b=1", "-o", "-")
        assert r.returncode == 0, r.stderr
        assert r.stdout[: len(PAYLOAD)] == PAYLOAD
        heads = [h for _, h in setup["seen"]]
        assert heads[-1].startswith(b"GET /a?b=1 HTTP/1.1\r\n")
        assert r.stdout[len(PAYLOAD) :].decode() == hashlib.sha256(heads[-1]).hexdigest()
        assert b"via: 1.1 portway" in heads[-1].lower()  # it went through the proxy's HTTP engine
        assert len({conn for conn, _ in setup["seen"]}) == 1  # one origin connection, reused
        # The same client trusting only the origin's CA must fail: the certificate it sees is Portway's.
        r = _curl("-x", proxy, "--cacert", setup["origin_pem"], f"{base}/x")
        assert r.returncode == 60, r.stderr  # curl: peer certificate cannot be authenticated
        s = requests.Session()  # one keep-alive tunnel for the three requests
        for i in range(3):
            resp = s.get(
                f"{base}/requests/{i}", proxies={"https": proxy}, verify=setup["portway_pem"], timeout=20
            )
            assert resp.status_code == 200
            assert resp.text == hashlib.sha256(setup["seen"][-1][1]).hexdigest()
        trust = ssl.create_default_context(cafile=setup["portway_pem"])
        with httpx.Client(proxy=proxy, verify=trust, timeout=20) as client:
            resp = client.get(f"{base}/big")
            assert (
                resp.status_code == 200
                and hashlib.sha256(resp.content).digest() == hashlib.sha256(PAYLOAD).digest()
            )
        recs = pw.wait_access(lambda a: len(a) >= 6 and a, requests=True)
        assert all(rec["intercepted"] for rec in recs)
        assert [rec["url"] for rec in recs[:2]] == [f"{base}/big", f"{base}/a?b=1"]
        assert recs[0]["status"] == 200 and recs[0]["resp_bytes"] == len(PAYLOAD)

        def har_entries() -> list[dict[str, Any]] | None:
            try:
                doc = json.loads(har.read_text())
            except (OSError, ValueError):
                return None
            entries: list[dict[str, Any]] = doc["log"]["entries"]
            return entries if len(entries) >= 6 else None

        entries = wait_until(har_entries, what="six entries in the HAR file")
        assert entries[1]["request"]["url"] == f"{base}/a?b=1"
        assert {"name": "b", "value": "1"} in entries[1]["request"]["queryString"]
        assert entries[0]["response"]["content"]["size"] == len(PAYLOAD)
        assert oct(har.stat().st_mode & 0o777) == "0o600"
        refused = pw.wait_access(lambda a: [x for x in a if x["reason"] == "tls_handshake_failed"])
        assert "unknown_ca" in refused[0]["detail"]
        wait_until(
            lambda: any("refused the certificate" in line for line in pw.log), what="a refusal log line"
        )
        del s
        wait_until(lambda: fd_count(worker) <= baseline + 1, what="worker fds back (one pooled origin)")
    finally:
        pw.stop()


def test_origin_that_fails_verification_is_a_502(setup: Any) -> None:
    pw, port = _start(setup, "")  # the origin's CA is not trusted for origins
    try:
        r = _curl(
            "-x",
            f"http://127.0.0.1:{port}",
            "--cacert",
            setup["portway_pem"],
            "-w",
            "\n%{http_code}",
            f"https://localhost:{setup['origin'].port}/x",
        )
        assert r.returncode == 0, r.stderr
        body, _, code = r.stdout.rpartition(b"\n")
        assert code == b"502"
        assert b"certificate verify failed" in body
        assert setup["seen"] == []  # nothing was sent over the unverified connection
    finally:
        pw.stop()


def test_pinning_passthrough_tunnels_the_host_next_time(setup: Any) -> None:
    pw, port = _start(setup, f'intercept_origin_ca = "{setup["origin_pem"]}"\npinning = "passthrough"')
    try:
        proxy = f"http://127.0.0.1:{port}"
        url = f"https://localhost:{setup['origin'].port}/pinned"
        r = _curl("-x", proxy, "--cacert", setup["origin_pem"], url)  # a client that "pins" the origin
        assert r.returncode == 60
        wait_until(
            lambda: any("now pass through" in line for line in pw.log), what="the passthrough log line"
        )
        r = _curl("-x", proxy, "--cacert", setup["origin_pem"], url)
        assert r.returncode == 0, r.stderr  # tunnelled untouched: the origin's own certificate
        assert r.stdout.decode() == hashlib.sha256(setup["seen"][-1][1]).hexdigest()
        assert b"via:" not in setup["seen"][-1][1].lower()  # not through the HTTP engine
    finally:
        pw.stop()


def test_hosts_not_listed_are_tunnelled(setup: Any) -> None:
    pw, port = _start(setup, f'intercept_origin_ca = "{setup["origin_pem"]}"')
    try:
        r = _curl(
            "-x",
            f"http://127.0.0.1:{port}",
            "--cacert",
            setup["origin_pem"],
            f"https://127.0.0.1:{setup['origin'].port}/direct",
        )
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode() == hashlib.sha256(setup["seen"][-1][1]).hexdigest()
        assert b"via:" not in setup["seen"][-1][1].lower()
    finally:
        pw.stop()
