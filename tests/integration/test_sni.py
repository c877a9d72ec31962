"""The sni mode end to end: real TLS clients (curl, openssl s_client, Python ssl) through passthrough.

Backends are real TLS servers with certificates from a trustme CA; the clients verify the
backend's certificate *through* Portway, which proves the stream was passed on undecrypted.
"""

from __future__ import annotations

import asyncio
import hashlib
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme

from tests.integration.backends import Backend, LoopThread
from tests.integration.harness import Portway, free_port, roundtrip, wait_until

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "clienthello"


def _https_backend(lt: LoopThread, ca: trustme.CA, names: list[str], label: bytes) -> Backend:
    """A TLS server for ``names`` that answers any HTTP request with ``label``."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        body = b"backend " + label + b"\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    return Backend(lt, handler, ssl_ctx=ctx)


def _http_backend(lt: LoopThread, label: bytes) -> Backend:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        body = b"backend " + label + b" " + hashlib.sha256(head).hexdigest().encode() + b"\n"
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    return Backend(lt, handler)


def _recorder(lt: LoopThread, seen: list[bytes]) -> Backend:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())

    return Backend(lt, handler)


def _config(port: int, backends: dict[str, int], routes: str) -> str:
    backend_tables = "\n".join(
        f'[[backend]]\nname = "{name}"\nservers = [{{ address = "127.0.0.1:{p}" }}]\n'
        for name, p in backends.items()
    )
    return f"""
workers = 1
[admin]
listen = "off"
[log]
access = "stdout"
format = "json"
level = "debug"

[[listener]]
name = "edge"
mode = "sni"
bind = "127.0.0.1:{port}"
sniff_timeout = "500ms"
{routes}

{backend_tables}
"""


@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


ROUTES = """
  [[listener.route]]
  name = "acme"
  alpn = ["acme-tls/1"]
  backend = "robot"

  [[listener.route]]
  match = "a.test"
  backend = "a"

  [[listener.route]]
  name = "wild"
  match = "*.b.test"
  backend = "b"

  [[listener.route]]
  name = "plain"
  match = "plain.test"
  backend = "plain"

  [[listener.route]]
  name = "idn"
  match = "~.*\\\\.example"
  backend = "rec"
"""


@pytest.fixture
def edge(tmp_path: Path, lt: LoopThread, ca: trustme.CA) -> dict[str, object]:
    a = _https_backend(lt, ca, ["a.test"], b"a")
    b = _https_backend(lt, ca, ["*.b.test"], b"b")
    robot = _https_backend(lt, ca, ["a.test"], b"robot")
    plain = _http_backend(lt, b"plain")
    seen: list[bytes] = []
    rec = _recorder(lt, seen)
    port = free_port()
    backends = {"a": a.port, "b": b.port, "robot": robot.port, "plain": plain.port, "rec": rec.port}
    pw = Portway(tmp_path, _config(port, backends, ROUTES)).start()
    yield {"pw": pw, "port": port, "a": a, "b": b, "robot": robot, "plain": plain, "rec": rec, "seen": seen}
    pw.stop()


def _curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, text=True, timeout=30
    )


def test_curl_reaches_each_backend_with_its_own_certificate(edge: dict[str, object], ca_file: str) -> None:
    port = edge["port"]
    for name, label in (("a.test", "a"), ("x.b.test", "b")):
        r = _curl("--resolve", f"{name}:{port}:127.0.0.1", "--cacert", ca_file, f"https://{name}:{port}/")
        assert r.returncode == 0, r.stderr  # the backend's certificate verified through the proxy
        assert r.stdout == f"backend {label}\n"
    pw = edge["pw"]
    records = pw.wait_access(lambda a: len(a) >= 2 and a)  # type: ignore[attr-defined]
    assert [(r["sni"], r["route"], r["backend"]) for r in records] == [
        ("a.test", "route[1]", "a"),
        ("x.b.test", "wild", "b"),
    ]


@pytest.mark.parametrize("version", ["-tls1_2", "-tls1_3"])
def test_openssl_s_client_tls12_and_tls13(edge: dict[str, object], ca_file: str, version: str) -> None:
    r = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{edge['port']}",
            "-servername",
            "a.test",
            version,
            "-CAfile",
            ca_file,
            "-verify_hostname",
            "a.test",
            "-verify_return_error",
            "-brief",
            "-ign_eof",
        ],
        input="GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "Verification: OK" in r.stderr, r.stderr
    assert ("TLSv1.2" if version == "-tls1_2" else "TLSv1.3") in r.stderr
    assert "backend a" in r.stdout


def test_python_ssl_and_alpn_route(edge: dict[str, object], ca_file: str) -> None:
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["acme-tls/1"])
    raw = socket.create_connection(("127.0.0.1", edge["port"]), timeout=10)  # type: ignore[arg-type]
    with ctx.wrap_socket(raw, server_hostname="a.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        assert tls.recv(4096).endswith(b"backend robot\n")  # the ALPN route came first


def test_unknown_name_gets_an_alert_and_no_backend_connection(edge: dict[str, object], ca_file: str) -> None:
    before = {k: edge[k].accepted for k in ("a", "b", "robot", "plain", "rec")}  # type: ignore[attr-defined]
    r = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{edge['port']}", "-servername", "c.test", "-brief"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert "unrecognized name" in r.stderr or "alert number 112" in r.stderr, r.stderr
    rec = edge["pw"].wait_access(lambda a: a)[0]  # type: ignore[attr-defined]
    assert rec["reason"] == "refused_by_rule" and rec["sni"] == "c.test"
    assert {k: edge[k].accepted for k in before} == before  # type: ignore[attr-defined]


def test_plain_http_routed_by_host(edge: dict[str, object]) -> None:
    port = edge["port"]
    r = _curl("--resolve", f"plain.test:{port}:127.0.0.1", f"http://plain.test:{port}/from-curl")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("backend plain ")  # curl's own request, routed by its Host
    edge["pw"].wait_access(lambda a: a)  # type: ignore[attr-defined]
    edge["pw"].access.clear()  # type: ignore[attr-defined]
    head = b"GET /x HTTP/1.1\r\nHost: plain.test\r\nUser-Agent: t\r\n\r\n"
    _, back = roundtrip(port, head)  # type: ignore[arg-type]
    assert back.endswith(
        b"backend plain " + hashlib.sha256(head).hexdigest().encode() + b"\n"
    )  # head replayed whole
    _, back = roundtrip(port, b"GET / HTTP/1.1\r\nHost: nope.test\r\n\r\n")  # type: ignore[arg-type]
    assert back.startswith(b"HTTP/1.1 404 ")
    _, back = roundtrip(port, b"GET / HTTP/1.1\r\n\r\n")  # type: ignore[arg-type]
    assert back.startswith(b"HTTP/1.1 400 ")
    reasons = edge["pw"].wait_access(lambda a: len(a) >= 3 and [r["reason"] for r in a])  # type: ignore[attr-defined]
    assert reasons[1:] == ["refused_by_rule", "protocol_error"]


def test_large_multi_record_hello_is_routed_and_replayed_whole(edge: dict[str, object]) -> None:
    hello = bytes.fromhex((FIXTURES / "hand-built-split.hex").read_text().split()[0])
    with socket.create_connection(("127.0.0.1", edge["port"]), timeout=10) as s:  # type: ignore[arg-type]
        for i in range(0, len(hello), 100):  # in many small segments
            s.sendall(hello[i : i + 100])
        s.shutdown(socket.SHUT_WR)
        s.recv(1)
    seen = edge["seen"]
    wait_until(lambda: seen, what="recorder got the hello")  # type: ignore[arg-type]
    assert hashlib.sha256(seen[0]).digest() == hashlib.sha256(hello).digest()  # type: ignore[index]


def test_garbage_and_silence(edge: dict[str, object]) -> None:
    port = edge["port"]
    _, back = roundtrip(port, b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")  # type: ignore[arg-type]
    assert back[:2] == b"\x15\x03"  # a TLS alert record
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:  # type: ignore[arg-type]
        s.sendall(b"\x16\x03\x01\x02\x00\x01")  # half a ClientHello, then nothing
        assert s.recv(10) == b""  # closed at the sniff deadline
    reasons = edge["pw"].wait_access(lambda a: len(a) >= 2 and [r["reason"] for r in a])  # type: ignore[attr-defined]
    assert reasons == ["protocol_error", "sniff_timeout"]
    # Nothing at all: the kernel holds it (TCP_DEFER_ACCEPT) for about a second, then Portway
    # takes it and closes it at the sniff deadline (500 ms here).
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:  # type: ignore[arg-type]
        t0 = time.monotonic()
        assert s.recv(10) == b""
        assert time.monotonic() - t0 >= 0.45
    rec = edge["pw"].wait_access(lambda a: len(a) >= 3 and a)[2]  # type: ignore[attr-defined]
    assert rec["reason"] == "sniff_timeout" and rec["bytes_in"] == 0 and "got nothing" in rec["detail"]


def test_dial_by_name_refuses_loopback_without_a_network_entry(tmp_path: Path, lt: LoopThread) -> None:
    target = _http_backend(lt, b"t")
    port = free_port()
    routes = f"""
  [[listener.route]]
  match = "localhost"
  dial = "{{sni}}:{target.port}"
  allow = ["localhost"]
"""
    pw = Portway(tmp_path, _config(port, {}, routes)).start()
    try:
        _, back = roundtrip(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert back.startswith(b"HTTP/1.1 403 ")
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "refused_by_rule" and "loopback" in rec["detail"]
        assert target.accepted == 0
    finally:
        pw.stop()
    pw = Portway(tmp_path, _config(port, {}, routes.replace('["localhost"]', '["127.0.0.1", "::1"]'))).start()
    try:
        _, back = roundtrip(port, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert b"backend t" in back
    finally:
        pw.stop()


def test_proxy_header_then_hello_and_route_reload(
    tmp_path: Path, lt: LoopThread, ca: trustme.CA, ca_file: str
) -> None:
    a = _https_backend(lt, ca, ["a.test"], b"a")
    a2 = _https_backend(lt, ca, ["a.test"], b"a2")
    port = free_port()
    routes = '\n  [[listener.route]]\n  match = "a.test"\n  backend = "a"\n'
    proxy = 'proxy_protocol = { accept = "required", trusted = ["127.0.0.1"] }'
    conf = _config(port, {"a": a.port, "a2": a2.port}, routes).replace('sniff_timeout = "500ms"', proxy)
    pw = Portway(tmp_path, conf).start()
    try:
        ctx = ssl.create_default_context(cafile=ca_file)

        def fetch() -> bytes:
            raw = socket.create_connection(("127.0.0.1", port), timeout=10)
            raw.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.1 5555 443\r\n")  # a load balancer in front
            with ctx.wrap_socket(raw, server_hostname="a.test") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
                return tls.recv(4096)

        assert fetch().endswith(b"backend a\n")
        rec = pw.wait_access(lambda x: x)[0]
        assert rec["client"] == "198.51.100.7:5555" and rec["sni"] == "a.test"
        pw.path.write_text(conf.replace('backend = "a"\n', 'backend = "a2"\n'))
        n = len(pw.log)
        pw.signal(signal.SIGHUP)
        pw.wait_for(r"reloaded .*generation 2", start=n)
        assert fetch().endswith(b"backend a2\n")  # new connections follow the new routes
    finally:
        pw.stop()
