"""The http-proxy mode end to end: curl (-x, -p, --socks5, --socks5-hostname), wget, Python
``requests`` and ``httpx`` through a real ``portway`` process to real origins on loopback.

Loopback destinations are refused by default (as every client-chosen destination in a special
range is), so the listener here allows the test origins' exact addresses.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
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

PAYLOAD = os.urandom(3 << 20)


def _origin(lt: LoopThread, seen: list[bytes], ssl_ctx: ssl.SSLContext | None = None) -> Backend:
    """An HTTP/1.1 origin: ``/big`` answers PAYLOAD, ``/ws`` upgrades and echoes, anything else
    answers its request head's sha256; every head it receives is recorded in ``seen``."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head)
        fields = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in head.decode("latin-1").split("\r\n")[1:] if line)
        }
        if fields.get("expect", "").lower() == "100-continue":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # an interim answer the proxy must pass
            await writer.drain()
        body = await reader.readexactly(int(fields.get("content-length", "0")))
        method, target = head.split(b" ", 2)[:2]
        if target in (b"/204", b"/304"):
            writer.write(b'HTTP/1.1 %s Nothing\r\nETag: "x"\r\n\r\n' % target[1:])
            await writer.drain()
            return
        if method == b"HEAD":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(PAYLOAD))
            await writer.drain()
            return
        if target == b"/ws" and fields.get("upgrade", "").lower() == "websocket":
            writer.write(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            await writer.drain()
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            return
        payload = PAYLOAD if target == b"/big" else hashlib.sha256(head + body).hexdigest().encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload) + payload)
        await writer.drain()

    return Backend(lt, handler, ssl_ctx=ssl_ctx)


CONFIG = """
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[log]
access = "stdout"
format = "json"

[[listener]]
name = "proxy"
mode = "http-proxy"
bind = "127.0.0.1:{port}"
sniff_timeout = "1s"
allow = ["127.0.0.1:{http}", "127.0.0.1:{https}", "198.51.100.0/24"]   # never the internet
deny = ["*.blocked.test", "198.51.100.0/24"]
connect_ports = [443, {https}]
{extra}
"""


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def proxy(tmp_path: Path, lt: LoopThread, ca: trustme.CA) -> Any:
    seen: list[bytes] = []
    http = _origin(lt, seen)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
    https = _origin(lt, seen, ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    port, admin = free_port(), free_port()
    pw = Portway(
        tmp_path, CONFIG.format(port=port, admin=admin, http=http.port, https=https.port, extra="")
    ).start()
    worker = pw.worker_pids()[0]
    baseline = fd_count(worker)
    yield {
        "pw": pw,
        "port": port,
        "admin": admin,
        "http": http,
        "https": https,
        "seen": seen,
        "ca": str(ca_file),
    }
    wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to the baseline")
    pw.stop()


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=40)


def test_curl_http_connect_and_socks5(proxy: Any) -> None:
    port, http, https = proxy["port"], proxy["http"], proxy["https"]
    big = f"http://127.0.0.1:{http.port}/big"
    for args in (
        ["-x", f"http://127.0.0.1:{port}", big],  # absolute-form GET
        ["-x", f"http://127.0.0.1:{port}", "-p", big],  # CONNECT tunnel... to port http? refused below
    ):
        r = _curl(*args)
        if "-p" in args:
            assert r.returncode != 0  # http.port is not in connect_ports
            assert b"403" in r.stderr or b"CONNECT" in r.stderr
        else:
            assert r.returncode == 0, r.stderr
            assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(PAYLOAD).digest()
    r = _curl(
        "-x", f"http://127.0.0.1:{port}", "--cacert", proxy["ca"], f"https://localhost:{https.port}/big"
    )
    assert r.returncode == 0, r.stderr  # CONNECT, TLS end to end with the origin's certificate
    assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(PAYLOAD).digest()
    for flag, host in (("--socks5-hostname", "localhost"), ("--socks5", "127.0.0.1")):
        r = _curl(flag, f"127.0.0.1:{port}", f"http://{host}:{http.port}/big")
        assert r.returncode == 0, (flag, r.stderr)
        assert hashlib.sha256(r.stdout).digest() == hashlib.sha256(PAYLOAD).digest()
    r = _curl(
        "-x", f"http://127.0.0.1:{port}", "-p", "--cacert", proxy["ca"], f"https://localhost:{https.port}/x"
    )
    assert r.returncode == 0, r.stderr
    recs = proxy["pw"].wait_access(lambda a: len(a) >= 6 and a)
    assert recs[1]["reason"] == "refused_by_rule" and "connect_ports" in recs[1]["detail"]


def test_request_is_rewritten_for_the_origin(proxy: Any) -> None:
    port, http, seen = proxy["port"], proxy["http"], proxy["seen"]
    r = _curl(
        "-x",
        f"http://127.0.0.1:{port}",
        "-H",
        "Proxy-Connection: keep-alive",
        "-H",
        "X-Kept: yes",
        "-H",
        "Connection: X-Drop",
        "-H",
        "X-Drop: secret",
        "--data-binary",
        "body bytes",
        f"http://127.0.0.1:{http.port}/form?q=1",
    )
    assert r.returncode == 0, r.stderr
    head = seen[-1].decode("latin-1").lower()
    assert head.startswith("post /form?q=1 http/1.1\r\n")  # origin-form target
    assert "x-kept: yes" in head and "via: 1.1 portway" in head
    # hop-by-hop fields, and what Connection named
    assert "proxy-connection" not in head and "connection:" not in head and "x-drop" not in head
    assert r.stdout.decode() == hashlib.sha256(seen[-1] + b"body bytes").hexdigest()  # body intact


def test_expect_continue_head_and_bodiless_answers(proxy: Any, tmp_path: Path) -> None:
    port, http = proxy["port"], proxy["http"]
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(2 << 20))
    r = _curl(
        "-x",
        f"http://127.0.0.1:{port}",
        "-H",
        "Expect: 100-continue",
        "--data-binary",
        f"@{body}",
        f"http://127.0.0.1:{http.port}/upload",
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.decode() == hashlib.sha256(proxy["seen"][-1] + body.read_bytes()).hexdigest()
    r = _curl("-x", f"http://127.0.0.1:{port}", "-I", f"http://127.0.0.1:{http.port}/big")
    assert r.returncode == 0 and b"content-length: %d" % len(PAYLOAD) in r.stdout.lower()
    for status in (204, 304):
        r = _curl(
            "-x",
            f"http://127.0.0.1:{port}",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            f"http://127.0.0.1:{http.port}/{status}",
        )
        assert r.returncode == 0 and r.stdout == str(status).encode(), r.stderr


def test_python_clients_and_wget(proxy: Any, tmp_path: Path) -> None:
    port, http, https = proxy["port"], proxy["http"], proxy["https"]
    requests = pytest.importorskip("requests")
    httpx = pytest.importorskip("httpx")
    proxies = {"http": f"http://127.0.0.1:{port}", "https": f"http://127.0.0.1:{port}"}
    r = requests.get(f"http://127.0.0.1:{http.port}/big", proxies=proxies, timeout=20)
    assert r.status_code == 200 and r.content == PAYLOAD
    r = requests.get(f"https://localhost:{https.port}/big", proxies=proxies, verify=proxy["ca"], timeout=20)
    assert r.status_code == 200 and r.content == PAYLOAD
    with httpx.Client(
        proxy=f"http://127.0.0.1:{port}", verify=ssl.create_default_context(cafile=proxy["ca"]), timeout=20
    ) as client:
        assert client.get(f"https://localhost:{https.port}/big").content == PAYLOAD
        assert client.get(f"http://127.0.0.1:{http.port}/big").content == PAYLOAD
    out = tmp_path / "wget.bin"
    env = {**os.environ, "http_proxy": f"http://127.0.0.1:{port}"}
    done = subprocess.run(
        ["wget", "-q", "-O", str(out), f"http://127.0.0.1:{http.port}/big"], env=env, timeout=40, check=False
    )
    assert done.returncode == 0 and out.read_bytes() == PAYLOAD


def test_websocket_upgrade_over_plain_http(proxy: Any) -> None:
    port, http = proxy["port"], proxy["http"]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            f"GET http://127.0.0.1:{http.port}/ws HTTP/1.1\r\nHost: 127.0.0.1:{http.port}\r\n"
            "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode()
        )
        f = s.makefile("rb")
        assert f.readline().startswith(b"HTTP/1.1 101 ")
        while f.readline() not in (b"\r\n", b""):
            pass
        for i in range(50):
            s.sendall(b"frame %d" % i)
            assert s.recv(100) == b"frame %d" % i
    head = proxy["seen"][-1].decode().lower()
    assert "upgrade: websocket" in head and "connection: upgrade" in head


@pytest.mark.parametrize(
    ("request_bytes", "status", "why"),
    [
        (
            b"POST http://@/ HTTP/1.1\r\nHost: @\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            b"Transfer-Encoding can't be present with Content-Length",
        ),
        (
            b"POST http://@/ HTTP/1.1\r\nHost: @\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            400,
            b"Content-Length",
        ),
        (
            b"POST http://@/ HTTP/1.1\r\nHost: @\r\nContent-Length: 4, 4x\r\n\r\n",
            400,
            b"Content-Length",
        ),
        (
            b"POST http://@/ HTTP/1.1\r\nHost: @\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            400,
            b"Transfer-Encoding",
        ),
        (
            b"POST http://@/ HTTP/1.1\r\nHost: @\r\nTransfer-Encoding: xchunked\r\n\r\n",
            400,
            b"Transfer-Encoding",
        ),
        (b"POST http://@/ HTTP/1.1\r\nHost: @\r\nTransfer-Encoding:\x0bchunked\r\n\r\n", 400, b""),
        (
            b"POST http://@/ HTTP/1.0\r\nHost: @\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
            b"HTTP/1.0 request",
        ),
        (b"GET http://@/ HTTP/1.1\nHost: @\n\n", 400, b"LF"),  # bare LF
        (b"GET http://@/ HTTP/1.1\r\nHost: @\r\nX-A: a\r\n b\r\n\r\n", 400, b""),  # obs-fold
        (b"GET http://@/ HTTP/1.1\r\nHost: @\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n", 431, b""),
        (b"GET / HTTP/1.1\r\nHost: @\r\n\r\n", 400, b"absolute URI"),  # origin-form
        (b"GET https://@/ HTTP/1.1\r\nHost: @\r\n\r\n", 400, b"CONNECT"),
    ],
)
def test_smuggling_and_bad_heads_get_an_http_answer(
    proxy: Any, request_bytes: bytes, status: int, why: bytes
) -> None:
    data = request_bytes.replace(b"@", f"127.0.0.1:{proxy['http'].port}".encode())
    with socket.create_connection(("127.0.0.1", proxy["port"]), timeout=10) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the answer may come, and the close, before all of an over-long head is sent
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert why in answer
    assert proxy["http"].accepted == 0  # nothing reached the origin


def test_rules_and_silence(proxy: Any) -> None:
    port = proxy["port"]
    r = _curl(
        "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:9/"
    )
    assert r.stdout == b"403"  # loopback, not listed
    r = _curl(
        "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", "http://localhost:9/"
    )
    assert r.stdout == b"403"  # also through a DNS name
    r = _curl(
        "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", "http://169.254.169.254/"
    )
    assert r.stdout == b"403"  # cloud metadata
    r = _curl(
        "-x", f"http://127.0.0.1:{port}", "-o", "/dev/null", "-w", "%{http_code}", "http://198.51.100.7/"
    )
    assert r.stdout == b"403"  # deny list
    r = _curl("--socks5-hostname", f"127.0.0.1:{port}", "http://localhost:9/")
    assert r.returncode != 0 and b"(2)" in r.stderr  # SOCKS5 reply 0x02: not allowed by ruleset
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET http://127.0.0.1/ HTTP/1.1\r\nHo")  # half a head, then nothing
        answer = b""
        while chunk := s.recv(4096):  # answered 408 at the deadline, then closed
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    recs = proxy["pw"].wait_access(lambda a: len(a) >= 6 and a)
    assert [r["reason"] for r in recs] == ["refused_by_rule"] * 5 + ["sniff_timeout"]


def test_authentication(tmp_path: Path, lt: LoopThread) -> None:
    seen: list[bytes] = []
    http = _origin(lt, seen)
    users = tmp_path / "users"
    subprocess.run(
        [sys.executable, "-m", "portway", "user", "add", str(users), "alice", "--cost", "4"],
        input=b"wonderland\n",
        check=True,
        capture_output=True,
        timeout=30,
    )
    port = free_port()
    conf = CONFIG.format(
        port=port, admin=free_port(), http=http.port, https=1, extra=f'users_file = "{users}"'
    ).replace('bind = "127.0.0.1', 'bind = "0.0.0.0')  # with users, a public bind is fine
    pw = Portway(tmp_path, conf).start()
    try:
        url = f"http://127.0.0.1:{http.port}/x"
        r = _curl("-x", f"http://127.0.0.1:{port}", "-D", "-", "-o", "/dev/null", url)
        assert b"407" in r.stdout.split(b"\r\n")[0]
        assert b'proxy-authenticate: basic realm="portway"' in r.stdout.lower()
        r = _curl(
            "-x",
            f"http://127.0.0.1:{port}",
            "-U",
            "alice:wrong",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        )
        assert r.stdout == b"407"
        for _ in range(2):  # the second login is served from the verification cache
            r = _curl("-x", f"http://127.0.0.1:{port}", "-U", "alice:wonderland", url)
            assert r.returncode == 0 and len(r.stdout) == 64
        assert b"proxy-authorization" not in seen[-1].lower()  # never passed to the origin
        r = _curl(
            "--socks5-hostname",
            f"127.0.0.1:{port}",
            "-U",
            "alice:wonderland",
            url.replace("127.0.0.1", "localhost"),
        )
        assert r.returncode == 0, r.stderr
        r = _curl("--socks5-hostname", f"127.0.0.1:{port}", "-U", "alice:nope", url)
        assert r.returncode != 0
        r = _curl("--socks5-hostname", f"127.0.0.1:{port}", url)  # no credentials offered
        assert r.returncode != 0
        recs = pw.wait_access(lambda a: len(a) >= 7 and a)
        assert recs[3]["route"] == "alice"  # the user is in the access log
    finally:
        pw.stop()


def test_an_open_proxy_is_refused(tmp_path: Path) -> None:
    conf = CONFIG.format(port=free_port(), admin=free_port(), http=1, https=2, extra="").replace(
        'bind = "127.0.0.1', 'bind = "0.0.0.0'
    )
    path = tmp_path / "portway.toml"
    path.write_text(conf)
    r = subprocess.run(
        [sys.executable, "-m", "portway", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert "listener.proxy.bind" in r.stderr and "refusing to run an open proxy" in r.stderr


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_one_gib_through_http_and_connect_with_flat_memory(tmp_path: Path, lt: LoopThread) -> None:
    """1 GiB down through a plain-HTTP request and through a CONNECT tunnel: the bytes arrive
    whole (sha256) and the worker's memory does not grow with them."""
    block = os.urandom(1 << 20)
    size = 1 << 30

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % size)
        for _ in range(size // len(block)):
            writer.write(block)
            await writer.drain()

    origin = Backend(lt, serve)
    port = free_port()
    conf = CONFIG.format(port=port, admin=free_port(), http=origin.port, https=origin.port, extra="")
    pw = Portway(tmp_path, conf).start()
    try:
        worker = pw.worker_pids()[0]
        expected = hashlib.sha256()
        for _ in range(size // len(block)):
            expected.update(block)
        for connect in (False, True):
            before = _rss_kib(worker)
            peak = before
            with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
                if connect:
                    s.sendall(
                        b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                        % (origin.port, origin.port)
                    )
                    assert s.recv(len(b"HTTP/1.1 200 Connection established\r\n\r\n")).startswith(
                        b"HTTP/1.1 200"
                    )
                    s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                else:
                    s.sendall(b"GET http://127.0.0.1:%d/big HTTP/1.1\r\nHost: x\r\n\r\n" % origin.port)
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(1)
                h = hashlib.sha256()
                got = 0
                buf = bytearray(1 << 20)
                while got < size:
                    n = s.recv_into(buf)
                    assert n, f"closed after {got} bytes"
                    h.update(memoryview(buf)[:n])
                    got += n
                    if got % (64 << 20) < n:
                        peak = max(peak, _rss_kib(worker))
            assert h.digest() == expected.digest()
            assert peak - before < 16 * 1024, f"worker RSS grew by {(peak - before) // 1024} MiB"
    finally:
        pw.stop()


def test_headless_chromium_through_the_proxy(proxy: Any, tmp_path: Path) -> None:
    """Chromium loads an HTTP page (absolute-form GET) and an HTTPS page (CONNECT) through the
    proxy; loopback must be forced through it (``<-loopback>``), as Chromium bypasses it by default."""
    browser = next((b for b in ("chromium", "chromium-browser") if __import__("shutil").which(b)), None)
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it)")
    port, http, https = proxy["port"], proxy["http"], proxy["https"]
    for url in (f"http://127.0.0.1:{http.port}/page", f"https://localhost:{https.port}/page"):
        before = len(proxy["seen"])
        r = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--ignore-certificate-errors",
                f"--user-data-dir={tmp_path / 'profile'}",
                f"--proxy-server=http://127.0.0.1:{port}",
                "--proxy-bypass-list=<-loopback>",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        pages = [head for head in proxy["seen"][before:] if head.startswith(b"GET /page ")]
        assert len(pages) == 1, proxy["seen"][before:]  # the origin got Chromium's request...
        assert hashlib.sha256(pages[0]).hexdigest() in r.stdout  # ...and Chromium shows its answer
    wanted = {f"127.0.0.1:{http.port}", f"localhost:{https.port}"}
    proxy["pw"].wait_access(lambda a: wanted <= {rec["sni"] for rec in a})  # one request, one tunnel
