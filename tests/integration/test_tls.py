"""TLS termination end to end: real clients (curl, openssl s_client, Python ssl) against a real
``portway`` process that completes the handshake itself, with the certificate picked by the
server name, and forwards plaintext (or re-encrypts it to a TLS backend).

Portway's certificates come from one trustme CA ("edge CA"), the backends' from another
("backend CA"), so a client that verifies with the edge CA proves it talked to Portway.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.integration.backends import Backend, LoopThread
from tests.integration.harness import Portway, fd_count, free_port, wait_until
from tests.tlspeer import BioPeer


# -- backends ---------------------------------------------------------------------------------
async def _http_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: bytes) -> None:
    """One HTTP/1.1 request: answer a JSON summary of what arrived, or N random bytes for
    ``GET /bytes/N`` (with their sha256 in a header)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {
        k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)
    }
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    if target.startswith("/bytes/"):
        payload = os.urandom(int(target.removeprefix("/bytes/")))
        extra = f"X-Sha256: {hashlib.sha256(payload).hexdigest()}\r\n".encode()
    else:
        summary = {"backend": label.decode(), "host": headers.get("host"), "method": method}
        summary["body_sha256"] = hashlib.sha256(body).hexdigest()
        summary["body_len"] = len(body)
        payload = json.dumps(summary).encode()
        extra = b""
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n%s\r\n" % (len(payload), extra)
    )
    writer.write(payload)
    await writer.drain()


def _http_backend(lt: LoopThread, label: bytes, ssl_ctx: ssl.SSLContext | None = None) -> Backend:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _http_answer(reader, writer, label)

    return Backend(lt, handler, ssl_ctx=ssl_ctx)


def _echo_hash_backend(lt: LoopThread, ssl_ctx: ssl.SSLContext | None = None) -> Backend:
    """Reads to EOF, then answers the sha256 of what it read followed by 4 MiB of random
    bytes preceded by their sha256: both directions verifiable."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        h = hashlib.sha256()
        while chunk := await reader.read(1 << 16):
            h.update(chunk)
        down = os.urandom(4 << 20)
        writer.write(h.digest() + hashlib.sha256(down).digest() + down)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()

    return Backend(lt, handler, ssl_ctx=ssl_ctx)


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def edge_ca() -> trustme.CA:
    return trustme.CA(organization_name="edge CA")


@pytest.fixture(scope="module")
def backend_ca() -> trustme.CA:
    return trustme.CA(organization_name="backend CA")


def _write_cert(ca: trustme.CA, path: Path, *names: str) -> Path:
    ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(path))
    return path


def _ca_file(ca: trustme.CA, path: Path) -> str:
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, timeout=40
    )


EDGE = """
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[log]
access = "stdout"
format = "json"

[[listener]]
name = "edge"
mode = "sni"
bind = "127.0.0.1:{port}"
sniff_timeout = "1s"
certificates = ["site.pem", {{ cert = "wild.crt", key = "wild.key" }}]
offer_alpn = ["http/1.1"]

  [[listener.route]]
  name = "pass"
  match = "pass.test"
  backend = "origin"

  [[listener.route]]
  name = "h2"
  match = "h2.test"
  action = "terminate"
  offer_alpn = ["h2", "http/1.1"]
  backend = "app"

  [[listener.route]]
  name = "wild"
  match = "*.w.test"
  action = "terminate"
  backend = "app"

  [[listener.route]]
  name = "bulk"
  match = "bulk.test"
  action = "terminate"
  backend = "bulk"

  [[listener.route]]
  name = "regex"
  match = "~^api-[0-9]+\\\\.test$"
  action = "terminate"
  backend = "app"

  [[listener.route]]
  name = "fallback"
  action = "terminate"
  backend = "app"

[[backend]]
name = "origin"
servers = [{{ address = "127.0.0.1:{origin}" }}]

[[backend]]
name = "app"
servers = [{{ address = "127.0.0.1:{app}" }}]

[[backend]]
name = "bulk"
servers = [{{ address = "127.0.0.1:{bulk}" }}]
"""


@pytest.fixture
def edge(tmp_path: Path, lt: LoopThread, edge_ca: trustme.CA, backend_ca: trustme.CA) -> Any:
    _write_cert(edge_ca, tmp_path / "site.pem", "site.test", "h2.test", "api-1.test", "bulk.test")
    wild = edge_ca.issue_cert("*.w.test")
    wild.cert_chain_pems[0].write_to_path(str(tmp_path / "wild.crt"))
    for pem in wild.cert_chain_pems[1:]:
        pem.write_to_path(str(tmp_path / "wild.crt"), append=True)
    wild.private_key_pem.write_to_path(str(tmp_path / "wild.key"))
    origin_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    backend_ca.issue_cert("pass.test").configure_cert(origin_ctx)
    origin = _http_backend(lt, b"origin", origin_ctx)
    app = _http_backend(lt, b"app")
    bulk = _echo_hash_backend(lt)
    port, admin = free_port(), free_port()
    conf = EDGE.format(port=port, admin=admin, origin=origin.port, app=app.port, bulk=bulk.port)
    pw = Portway(tmp_path, conf).start()
    worker = pw.worker_pids()[0]
    baseline = fd_count(worker)
    yield {
        "pw": pw,
        "port": port,
        "admin": admin,
        "origin": origin,
        "app": app,
        "bulk": bulk,
        "edge_ca": _ca_file(edge_ca, tmp_path / "edge-ca.pem"),
        "backend_ca": _ca_file(backend_ca, tmp_path / "backend-ca.pem"),
        "tmp": tmp_path,
    }
    # Whatever the test did (handshakes that failed, deadlines, bulk), no descriptor stays open.
    wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to the baseline")
    pw.stop()


def _get(edge: Any, name: str, ca: str, *extra: str) -> subprocess.CompletedProcess[str]:
    port = edge["port"]
    return _curl(
        "--http1.1",
        "--resolve",
        f"{name}:{port}:127.0.0.1",
        "--cacert",
        ca,
        *extra,
        f"https://{name}:{port}/",
    )


# -- tests ------------------------------------------------------------------------------------
def test_terminate_and_passthrough_share_a_listener(edge: Any) -> None:
    """Each name gets the right certificate: Portway's for terminated routes (exact, wildcard,
    default), the origin's own through the passthrough route."""
    r = _get(edge, "pass.test", edge["backend_ca"])
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backend"] == "origin"
    for name in ("h2.test", "x.w.test", "site.test"):
        r = _get(edge, name, edge["edge_ca"])
        assert r.returncode == 0, (name, r.stderr)  # verified against the edge CA, for that name
        summary = json.loads(r.stdout)
        assert summary["backend"] == "app" and summary["host"] == f"{name}:{edge['port']}"
    # A name no certificate covers falls to the default route and the default certificate,
    # which does not name it: curl completes the handshake, then refuses the name and closes.
    r = _get(edge, "other.test", edge["edge_ca"])
    assert r.returncode != 0 and "certificate" in r.stderr.lower()
    recs = edge["pw"].wait_access(lambda a: len(a) >= 5 and a)
    by_sni = {rec["sni"]: rec for rec in recs}
    assert by_sni["pass.test"]["route"] == "pass" and by_sni["pass.test"]["tls_version"] is None
    assert by_sni["x.w.test"]["route"] == "wild" and by_sni["x.w.test"]["tls_version"].startswith("TLSv1.")
    assert by_sni["site.test"]["route"] == "fallback"
    assert by_sni["other.test"]["route"] == "fallback"
    assert by_sni["other.test"]["reason"] == "client_closed", by_sni["other.test"]["detail"]


def test_alpn_offered_per_route_and_logged(edge: Any) -> None:
    ctx = ssl.create_default_context(cafile=edge["edge_ca"])
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    for name, expected in (("h2.test", "h2"), ("x.w.test", "http/1.1")):
        raw = socket.create_connection(("127.0.0.1", edge["port"]), timeout=10)
        with ctx.wrap_socket(raw, server_hostname=name) as tls:
            assert tls.selected_alpn_protocol() == expected
            assert tls.version() == "TLSv1.3"
    recs = edge["pw"].wait_access(lambda a: len(a) >= 2 and a)
    assert [(r["sni"], r["alpn"], r["tls_version"]) for r in recs] == [
        ("h2.test", "h2", "TLSv1.3"),
        ("x.w.test", "http/1.1", "TLSv1.3"),
    ]
    _status, body = edge["pw"].admin_get(edge["admin"], "/metrics")
    text = body.decode()
    assert 'portway_tls_handshakes_total{alpn="h2",listener="edge",version="TLSv1.3"} 1.0' in text


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_against_a_terminated_route(edge: Any, version: str) -> None:
    r = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{edge['port']}",
            "-servername",
            "api-1.test",
            version,
            "-CAfile",
            edge["edge_ca"],
            "-verify_hostname",
            "api-1.test",
            "-verify_return_error",
            "-brief",
            "-ign_eof",
        ],
        input=b"GET / HTTP/1.1\r\nHost: api-1.test\r\n\r\n",
        capture_output=True,
        timeout=30,
    )
    err = r.stderr.decode(errors="replace")
    assert "Verification: OK" in err, err
    assert ("TLSv1.2" if version == "-tls1_2" else "TLSv1.3") in err
    body = r.stdout.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body) == {  # the regex route's backend got the request intact
        "backend": "app",
        "host": "api-1.test",
        "method": "GET",
        "body_sha256": hashlib.sha256(b"").hexdigest(),
        "body_len": 0,
    }
    rec = edge["pw"].wait_access(lambda a: a)[0]
    assert rec["route"] == "regex" and rec["tls_version"] == (
        "TLSv1.2" if version == "-tls1_2" else "TLSv1.3"
    )


def test_bulk_both_ways_through_termination(edge: Any) -> None:
    """8 MiB up (then close_notify + FIN), 4 MiB down; sha256 checked at both ends."""
    up = os.urandom(8 << 20)
    ctx = ssl.create_default_context(cafile=edge["edge_ca"])
    peer = BioPeer(
        socket.create_connection(("127.0.0.1", edge["port"])), ctx, server_side=False, name="bulk.test"
    )
    peer.handshake()
    peer.send(up)  # the backend answers only after EOF, so sending can run first, in full
    peer.half_close()
    got = peer.recv_all()
    peer.sock.close()
    assert got[:32] == hashlib.sha256(up).digest()
    assert got[32:64] == hashlib.sha256(got[64:]).digest()
    assert len(got) == 64 + (4 << 20)
    rec = edge["pw"].wait_access(lambda a: a)[0]
    assert rec["bytes_in"] == len(up) and rec["bytes_out"] == len(got)
    assert rec["reason"] == "client_closed"


def test_curl_upload_and_download(edge: Any, tmp_path: Path) -> None:
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(3 << 20))
    r = _get(edge, "h2.test", edge["edge_ca"], "--http1.1", "--data-binary", f"@{body}")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["body_sha256"] == hashlib.sha256(body.read_bytes()).hexdigest()
    out = tmp_path / "down.bin"
    port = edge["port"]
    r = _curl(
        "--http1.1",
        "--resolve",
        f"h2.test:{port}:127.0.0.1",
        "--cacert",
        edge["edge_ca"],
        "-D",
        "-",
        "-o",
        str(out),
        f"https://h2.test:{port}/bytes/5000000",
    )
    assert r.returncode == 0, r.stderr
    assert f"x-sha256: {hashlib.sha256(out.read_bytes()).hexdigest()}" in r.stdout.lower()


def test_refusals_and_bad_input_on_a_terminating_listener(edge: Any) -> None:
    port = edge["port"]
    before = edge["app"].accepted
    # A client that does not trust the certificate: handshake fails, the backend sees nothing.
    ctx = ssl.create_default_context(cafile=edge["backend_ca"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with pytest.raises(ssl.SSLCertVerificationError):
        ctx.wrap_socket(raw, server_hostname="h2.test")
    raw.close()
    # Half a ClientHello, then silence: closed at the sniff deadline.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x16\x03\x01\x02\x00\x01")
        assert s.recv(10) == b""
    # A complete ClientHello, then silence in the middle of the handshake: closed at the deadline.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        inbio, outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ssl.create_default_context().wrap_bio(inbio, outbio, server_hostname="h2.test")
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        s.sendall(outbio.read())
        while s.recv(65536):  # the server's flight, then EOF at the deadline
            pass
    reasons = edge["pw"].wait_access(lambda a: len(a) >= 3 and [r["reason"] for r in a])
    assert reasons == ["tls_handshake_failed", "sniff_timeout", "sniff_timeout"]
    assert edge["app"].accepted == before
    _status, body = edge["pw"].admin_get(edge["admin"], "/metrics")
    assert 'portway_terminations_total{listener="edge",reason="tls_handshake_failed"} 1.0' in body.decode()


# -- the tls mode, TLS to backends, reload ----------------------------------------------------
TLS_MODE = """
workers = 1
[admin]
listen = "off"
[log]
access = "stdout"
format = "json"

[[listener]]
name = "front"
mode = "tls"
bind = "127.0.0.1:{port}"
certificates = ["site.pem"]
backend = "secure"

[[backend]]
name = "secure"
servers = [{{ address = "127.0.0.1:{secure}" }}]
tls = {{ ca = "backend-ca.pem", server_name = "{server_name}" }}
"""


def test_tls_mode_reencrypts_to_a_verified_backend(
    tmp_path: Path, lt: LoopThread, edge_ca: trustme.CA, backend_ca: trustme.CA
) -> None:
    _write_cert(edge_ca, tmp_path / "site.pem", "front.test")
    edge_ca_file = _ca_file(edge_ca, tmp_path / "edge-ca.pem")
    _ca_file(backend_ca, tmp_path / "backend-ca.pem")
    backend_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    backend_ca.issue_cert("api.internal").configure_cert(backend_ctx)
    seen_names: list[str | None] = []
    backend_ctx.sni_callback = lambda obj, name, ctx: seen_names.append(name)  # type: ignore[assignment,misc,return-value]
    secure = _http_backend(lt, b"secure", backend_ctx)
    port = free_port()
    pw = Portway(tmp_path, TLS_MODE.format(port=port, secure=secure.port, server_name="api.internal")).start()
    try:
        body = tmp_path / "body.bin"
        body.write_bytes(os.urandom(1 << 20))
        r = _curl(
            "--resolve",
            f"front.test:{port}:127.0.0.1",
            "--cacert",
            edge_ca_file,
            "--data-binary",
            f"@{body}",
            f"https://front.test:{port}/",
        )
        assert r.returncode == 0, r.stderr
        summary = json.loads(r.stdout)
        assert summary["backend"] == "secure"
        assert summary["body_sha256"] == hashlib.sha256(body.read_bytes()).hexdigest()
        assert seen_names == ["api.internal"]  # SNI set towards the backend
        # Plain HTTP on a TLS-only port: a short 400, not a silent close.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: front.test\r\n\r\n")
            answer = s.recv(4096)
        assert answer.startswith(b"HTTP/1.1 400 ") and b"TLS" in answer
        recs = pw.wait_access(lambda a: len(a) >= 2 and a)
        assert recs[0]["route"] == "default" and recs[0]["backend"] == "secure"
        assert recs[1]["reason"] == "protocol_error"
    finally:
        pw.stop()
    # The same backend under a name its certificate does not carry: refused, logged.
    pw = Portway(
        tmp_path, TLS_MODE.format(port=port, secure=secure.port, server_name="wrong.internal")
    ).start()
    try:
        r = _curl(
            "--resolve",
            f"front.test:{port}:127.0.0.1",
            "--cacert",
            edge_ca_file,
            f"https://front.test:{port}/",
        )
        assert r.returncode != 0
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "server_tls_failed" and "wrong.internal" in rec["detail"]
    finally:
        pw.stop()


def _served_cert(port: int, name: str) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def _pem_to_der(path: Path) -> bytes:
    """The first certificate of a PEM file (which may hold the key first)."""
    text = path.read_text()
    begin = text.index("-----BEGIN CERTIFICATE-----")
    end = text.index("-----END CERTIFICATE-----", begin) + len("-----END CERTIFICATE-----")
    return ssl.PEM_cert_to_DER_cert(text[begin:end] + "\n")


def test_certificates_reload_on_sighup_without_dropping_connections(
    tmp_path: Path, lt: LoopThread, edge_ca: trustme.CA
) -> None:
    site = _write_cert(edge_ca, tmp_path / "site.pem", "front.test")
    _ca_file(edge_ca, tmp_path / "backend-ca.pem")
    echo = _echo_hash_backend(lt)
    port = free_port()
    conf = TLS_MODE.format(port=port, secure=echo.port, server_name="x").split("tls = {")[0]
    pw = Portway(tmp_path, conf).start()
    try:
        first = _pem_to_der(site)
        assert _served_cert(port, "front.test") == first
        # A terminated connection streams across the reload.
        ctx = ssl.create_default_context(cafile=_ca_file(edge_ca, tmp_path / "edge-ca.pem"))
        peer = BioPeer(
            socket.create_connection(("127.0.0.1", port)), ctx, server_side=False, name="front.test"
        )
        peer.handshake()
        up = os.urandom(4 << 20)
        peer.send(up[: 2 << 20])
        worker = pw.worker_pids()[0]
        baseline = fd_count(worker)
        # New certificate in place, then SIGHUP.
        _write_cert(edge_ca, tmp_path / "site.pem", "front.test")
        second = _pem_to_der(site)
        assert second != first
        n = len(pw.log)
        pw.signal(signal.SIGHUP)
        pw.wait_for(r"reloaded .*generation 2", start=n)
        assert _served_cert(port, "front.test") == second  # new connections: new certificate
        peer.send(up[2 << 20 :])
        peer.half_close()
        got = peer.recv_all()
        peer.sock.close()
        assert got[:32] == hashlib.sha256(up).digest()  # nothing lost across the reload
        assert got[32:64] == hashlib.sha256(got[64:]).digest()
        # A broken certificate file: the reload is refused, the old certificate stays.
        (tmp_path / "site.pem").write_text("not a certificate\n")
        n = len(pw.log)
        pw.signal(signal.SIGHUP)
        line = pw.wait_for(r"site\.pem", start=n)
        assert "certificates[0]" in line or "site.pem" in line
        assert _served_cert(port, "front.test") == second
        wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to baseline")
    finally:
        pw.stop()


def test_check_reports_a_bad_certificate(tmp_path: Path, edge_ca: trustme.CA) -> None:
    (tmp_path / "site.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    conf = TLS_MODE.format(port=free_port(), secure=1, server_name="x").split("tls = {")[0]
    path = tmp_path / "portway.toml"
    path.write_text(conf)
    r = subprocess.run(
        [sys.executable, "-m", "portway", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode != 0
    assert "listener.front.certificates[0]" in r.stderr + r.stdout
    assert "site.pem" in r.stderr + r.stdout


def test_terminated_route_sends_a_proxy_header_and_enforces_the_minimum_version(
    tmp_path: Path, lt: LoopThread, edge_ca: trustme.CA
) -> None:
    """The PROXY header goes to the backend before the plaintext; a client below
    tls_min_version fails the handshake and is logged so."""
    _write_cert(edge_ca, tmp_path / "site.pem", "front.test")
    ca = _ca_file(edge_ca, tmp_path / "edge-ca.pem")
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())

    rec = Backend(lt, record)
    port = free_port()
    conf = f"""
workers = 1
[admin]
listen = "off"
[log]
access = "stdout"
format = "json"

[[listener]]
name = "front"
mode = "tls"
bind = "127.0.0.1:{port}"
certificates = ["site.pem"]
tls_min_version = "1.3"
backend = "rec"

[[backend]]
name = "rec"
servers = [{{ address = "127.0.0.1:{rec.port}" }}]
send_proxy_protocol = "v1"
"""
    pw = Portway(tmp_path, conf).start()
    try:
        ctx = ssl.create_default_context(cafile=ca)
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="front.test") as tls:
            tls.sendall(b"secret request")
            local = tls.getsockname()
        wait_until(lambda: seen, what="the backend got the connection")
        assert seen[0] == f"PROXY TCP4 127.0.0.1 127.0.0.1 {local[1]} {port}\r\n".encode() + b"secret request"
        old = ssl.create_default_context(cafile=ca)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="front.test")
        raw.close()
        recs = pw.wait_access(lambda a: len(a) >= 2 and a)
        assert recs[0]["tls_version"] == "TLSv1.3" and recs[0]["bytes_in"] == len(b"secret request")
        assert recs[1]["reason"] == "tls_handshake_failed"
        assert (
            recs[1]["detail"]
            == "no TLS version both sides accept (see tls_min_version) (unsupported protocol)"
        )
        assert rec.accepted == 1
    finally:
        pw.stop()
