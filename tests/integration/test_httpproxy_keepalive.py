"""Persistent connections through the forward proxy: many requests on one client connection,
pipelining answered in order, upstream connections reused, responses re-framed, hop-by-hop
fields removed both ways, 1xx/204/304/HEAD, WebSocket, and the deadlines on idle clients.

The origin is :class:`~tests.integration.backends.HttpOrigin` (keep-alive, Content-Length,
chunked and read-until-close answers); the clients are raw sockets read by the strict
:func:`~tests.integration.backends.read_response`, curl, ``http.client`` and ``websockets``.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from tests.integration.backends import (
    HttpOrigin,
    LoopThread,
    Response,
    http_proxy_config,
    origin_body,
    post_answer,
    read_response,
)
from tests.integration.harness import Portway, fd_count, free_port, sha256, wait_until

HOP_FIELDS = ("proxy-connection", "proxy-authorization", "keep-alive", "te", "x-named-hop")


class Proxy:
    """A running Portway http-proxy in front of one :class:`HttpOrigin`."""

    def __init__(self, pw: Portway, port: int, origin: HttpOrigin) -> None:
        self.pw = pw
        self.port = port
        self.origin = origin

    def url(self, target: str) -> str:
        """The absolute-form URL of ``target`` on the origin."""
        return f"http://127.0.0.1:{self.origin.port}{target}"

    def connect(self) -> Conn:
        return Conn(self.port)


class Conn:
    """A client connection and its buffered reader, closed together (a reader left open
    would keep the socket open too, and the proxy's side of it)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.f = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read(self, method: str = "GET") -> Response:
        """The next response, read strictly (:func:`read_response`)."""
        return read_response(self.f, method)

    def __enter__(self) -> Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()
        self.sock.close()


def start(tmp_path: Path, origin: HttpOrigin, listener: str = "") -> Proxy:
    port = free_port()
    conf = http_proxy_config(port, [f"127.0.0.1:{origin.port}"], listener=listener)
    return Proxy(Portway(tmp_path, conf).start(), port, origin)


@pytest.fixture
def proxy(tmp_path: Path, lt: LoopThread) -> Iterator[Proxy]:
    """The proxy; at the end, once the origin has closed the connections a pool may keep, the
    worker must hold no more descriptors than it did at the start."""
    p = start(tmp_path, HttpOrigin(lt))
    worker = p.pw.worker_pids()[0]
    baseline = fd_count(worker)
    try:
        yield p
        p.origin.disconnect()
        wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to the baseline")
    finally:
        p.pw.stop()


def request(
    url: str,
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
    body: bytes | None = None,
    *,
    chunked: bool = False,
) -> bytes:
    """An absolute-form HTTP/1.1 request (Host from the URL); a body by Content-Length or chunked."""
    host = url.split("/")[2]
    lines = [f"{method} {url} HTTP/1.1", f"Host: {host}", *(f"{k}: {v}" for k, v in headers)]
    data = b""
    if body is not None and chunked:
        lines.append("Transfer-Encoding: chunked")
        pieces = [body[i : i + 3000] for i in range(0, len(body), 3000)]
        data = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
    elif body is not None:
        lines.append(f"Content-Length: {len(body)}")
        data = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + data


def test_500_requests_on_one_connection_reuse_upstream(proxy: Proxy) -> None:
    """One client socket, 500 requests one after the other, every body checked; the origin
    accepts fewer connections than it serves requests (the proxy pools them)."""
    targets = [f"/{('cl', 'chunked')[i % 2]}/r{i}?size={(i * 7919) % 70000}" for i in range(500)]
    with proxy.connect() as c:
        for i, target in enumerate(targets):
            try:
                c.send(request(proxy.url(target)))
            except OSError as exc:
                raise AssertionError(f"request {i}: the proxy closed the connection ({exc})") from None
            r = c.read()
            assert r.status == 200, (i, r.status, r.body[:200])
            assert sha256(r.body) == sha256(origin_body(target)), f"request {i}: wrong body"
    assert [r.target for r in proxy.origin.requests] == targets
    assert proxy.origin.accepted < len(targets), f"{proxy.origin.accepted} origin connections"
    recs = proxy.pw.wait_access(lambda a: len(a) >= len(targets) and a, requests=True)
    assert len({r["id"] for r in recs}) == 1  # the proxy, too, saw one client connection
    assert not proxy.origin.errors


def test_pipelined_requests_are_answered_in_order(proxy: Proxy) -> None:
    """20 requests in one sendall: GETs answered with Content-Length and chunked, a HEAD, a 204
    and a 304, a POST with Content-Length and one chunked; answers come back in order, whole."""
    rng = random.Random(20)
    post_cl, post_chunked = rng.randbytes(10_000), rng.randbytes(50_000)
    plan: list[tuple[str, str, bytes | None, bool]] = []  # method, target, body, chunked
    for i in range(14):
        plan.append(
            ("GET", f"/{('cl', 'chunked')[i % 2]}/p{i}?size={rng.randrange(0, 200_000)}", None, False)
        )
    plan.insert(3, ("HEAD", "/cl/head?size=5000", None, False))
    plan.insert(6, ("POST", "/cl/post-cl", post_cl, False))
    plan.insert(9, ("GET", "/status/204", None, False))
    plan.insert(10, ("GET", "/status/304?size=77", None, False))
    plan.insert(12, ("POST", "/chunked/post-chunked", post_chunked, True))
    plan.append(("GET", "/cl/last?size=1", None, False))
    assert len(plan) == 20
    data = b"".join(request(proxy.url(t), m, body=b, chunked=ch) for m, t, b, ch in plan)
    with proxy.connect() as c:
        c.send(data)
        for i, (method, target, body, _) in enumerate(plan):
            r = c.read(method)
            if target.startswith("/status/"):
                assert (r.status, r.body) == (int(target[8:11]), b""), (i, target)
            elif method == "HEAD":
                assert r.status == 200 and r.body == b"" and r.framing == "none"
                assert r.values("content-length") == [str(len(origin_body(target)))]
            elif body is not None:
                assert r.body == post_answer(target, body), (i, r.body[:100])
            else:
                assert r.body.split(b"\n", 1)[0] == target.encode(), f"answer {i} is not for {target}"
                assert sha256(r.body) == sha256(origin_body(target)), (i, target)
    assert sorted(r.target for r in proxy.origin.requests) == sorted(t for _, t, _, _ in plan)


@pytest.mark.parametrize("kind", ["eof", "eof10"])
def test_read_until_close_answers_arrive_whole(proxy: Proxy, kind: str) -> None:
    """The origin answers with neither Content-Length nor chunked and closes (HTTP/1.1 or an
    HTTP/1.0 status line): an HTTP/1.1 client gets every byte, whatever framing the proxy chose."""
    target = f"/{kind}/big?size={3 << 20}"
    with proxy.connect() as c:
        c.send(request(proxy.url(target)))
        r = c.read()
    assert r.status == 200 and r.framing in ("length", "chunked", "eof")
    assert sha256(r.body) == sha256(origin_body(target))
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10)  # a real HTTP/1.1 client
    try:
        conn.request("GET", proxy.url(target))
        resp = conn.getresponse()
        assert resp.status == 200 and sha256(resp.read()) == sha256(origin_body(target))
    finally:
        conn.close()


def test_clients_that_ask_to_close_are_served_one_after_another(proxy: Proxy) -> None:
    """New connections one after another, some asking to close (``Connection: close``, or
    HTTP/1.0 without keep-alive): each is answered, and the proxy closes those that asked."""
    plan = [("1.1", "close"), ("1.1", ""), ("1.0", ""), ("1.0", ""), ("1.1", "close"), ("1.1", "close")]
    for i, (version, connection) in enumerate(plan):
        target = f"/cl/close{i}?size={i * 100}"
        fields = f"Connection: {connection}\r\n" if connection else ""
        with proxy.connect() as c:
            c.send(
                f"GET {proxy.url(target)} HTTP/{version}\r\nHost: 127.0.0.1:{proxy.origin.port}\r\n"
                f"{fields}\r\n".encode()
            )
            r = c.read()
            assert r.status == 200, (i, version, connection, r.status, r.body[:200])
            assert r.body == origin_body(target)
            if connection or version == "1.0":
                assert c.f.read() == b"", "the proxy did not close a connection that asked"


def test_hop_by_hop_request_fields_are_removed(proxy: Proxy) -> None:
    """What the client addresses to the proxy stays there; the origin sees Via."""
    headers = (
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authorization", "Basic YWxpY2U6d29uZGVybGFuZA=="),
        ("Keep-Alive", "timeout=30"),
        ("TE", "trailers"),
        ("Connection", "X-Named-Hop, keep-alive"),
        ("X-Named-Hop", "secret"),
        ("X-End-To-End", "kept"),
    )
    with proxy.connect() as c:
        c.send(request(proxy.url("/cl/hop-request"), headers=headers))
        r = c.read()
    assert sha256(r.body) == sha256(origin_body("/cl/hop-request"))
    (seen,) = proxy.origin.requests
    names = {name for name, _ in seen.headers}
    assert not names & set(HOP_FIELDS), seen.head
    assert {t.strip().lower() for v in seen.values("connection") for t in v.split(",")} <= {
        "close",
        "keep-alive",
    }
    assert seen.values("x-end-to-end") == ["kept"]
    assert any("portway" in v for v in seen.values("via")), seen.head


def test_hop_by_hop_response_fields_are_removed(proxy: Proxy) -> None:
    """What the origin addresses to the proxy stays there; the client sees Via added."""
    with proxy.connect() as c:
        c.send(request(proxy.url("/hop/response?size=4321")))
        r = c.read()
    assert r.status == 200 and sha256(r.body) == sha256(origin_body("/hop/response?size=4321"))
    names = {name for name, _ in r.headers}
    assert not names & {"keep-alive", "x-origin-hop", "proxy-connection"}, r.headers
    assert r.tokens("connection") <= {"close", "keep-alive"}, r.headers
    assert r.values("x-origin-kept") == ["yes"]
    assert any("portway" in v for v in r.values("via")), r.headers


def _curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, timeout=40)


def test_expect_100_continue_with_curl(proxy: Proxy, tmp_path: Path) -> None:
    """curl uploads 2 MiB with ``Expect: 100-continue``; the origin's 100 reaches it (curl
    would otherwise wait 1 s and send anyway) and the body arrives intact."""
    body = tmp_path / "body.bin"
    body.write_bytes(os.urandom(2 << 20))
    r = _curl("-v", "-x", f"http://127.0.0.1:{proxy.port}", "--data-binary", f"@{body}", proxy.url("/cl/up"))
    assert r.returncode == 0, r.stderr
    assert b"> Expect: 100-continue" in r.stderr  # curl asked on its own, as it does for big bodies
    assert b"< HTTP/1.1 100 Continue" in r.stderr  # the interim answer was passed on
    assert r.stdout == post_answer("/cl/up", body.read_bytes())
    (seen,) = proxy.origin.requests
    assert seen.values("expect") == ["100-continue"] and sha256(seen.body) == sha256(body.read_bytes())


def test_interim_103_is_forwarded(proxy: Proxy) -> None:
    with proxy.connect() as c:
        c.send(request(proxy.url("/early/x?size=100")))
        r = c.read()
    assert [i.status for i in r.interim] == [103] and r.interim[0].values("link")
    assert r.status == 200 and r.body == origin_body("/early/x?size=100")


def test_continue_204_304_and_head_keep_the_connection(proxy: Proxy) -> None:
    """On one connection: a POST that waits for its 100, then 204, 304 (with the Content-Length
    a GET would have), HEAD, and a GET after them that must be framed right; curl with several
    URLs then reuses one proxy connection for all of them."""
    body = os.urandom(300_000)
    with proxy.connect() as c:
        head, _, data = request(
            proxy.url("/cl/continue"), "POST", (("Expect", "100-continue"),), body
        ).partition(b"\r\n\r\n")
        c.send(head + b"\r\n\r\n")
        first = c.f.readline()
        assert first.startswith(b"HTTP/1.1 100 "), first  # the body waits for it
        while c.f.readline() not in (b"\r\n", b""):
            pass  # its fields (a Via, say)
        c.send(data)
        r = c.read("POST")
        assert r.body == post_answer("/cl/continue", body)
        for method, target in (("GET", "/status/204"), ("GET", "/status/304?size=999"), ("HEAD", "/cl/h")):
            c.send(request(proxy.url(target), method))
            r = c.read(method)
            assert r.body == b"" and r.status == {"/status/204": 204, "/status/304?size=999": 304}.get(
                target, 200
            )
        c.send(request(proxy.url("/cl/after?size=12345")))
        r = c.read()
        assert r.status == 200 and r.body == origin_body("/cl/after?size=12345")
    urls = [proxy.url(t) for t in ("/status/204", "/status/304", "/cl/c1", "/chunked/c2")]
    done = _curl(
        "-x", f"http://127.0.0.1:{proxy.port}", "-w", "%{http_code}:%{num_connects} ",
        *[a for u in urls for a in ("-o", "/dev/null", u)],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [b"204:1", b"304:0", b"200:0", b"200:0"], done.stdout  # one connection


class AbsoluteFormConnection(ClientConnection):
    """A ``websockets`` client connection whose opening handshake names the whole URL, as a
    request to a forward proxy must (``GET http://host:port/path HTTP/1.1``)."""

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        connect_request = self.protocol.connect

        def absolute_form() -> Any:
            req = connect_request()
            req.path = f"http://{req.headers['Host']}{req.path}"
            return req

        self.protocol.connect = absolute_form  # type: ignore[method-assign]
        await super().handshake(*args, **kwargs)


@pytest.mark.parametrize("via", ["upgrade", "connect"])
def test_websocket_echo_through_the_proxy(tmp_path: Path, lt: LoopThread, via: str) -> None:
    """A ``websockets`` client talks to a ``websockets`` echo server through the proxy: by an
    absolute-form ``GET`` with ``Upgrade`` (plain HTTP), and by CONNECT (the library's own proxy
    support); 100 binary messages of random sizes up to 256 KiB come back whole."""

    async def echo(ws: ServerConnection) -> None:
        async for message in ws:
            await ws.send(message)

    async def start_server() -> Any:
        return await serve(echo, "127.0.0.1", 0, max_size=1 << 20)

    server = lt.run(start_server())
    ws_port = server.sockets[0].getsockname()[1]
    port = free_port()
    conf = http_proxy_config(port, [f"127.0.0.1:{ws_port}"], connect_ports=(ws_port,))
    pw = Portway(tmp_path, conf).start()

    async def client() -> int:
        uri = f"ws://127.0.0.1:{ws_port}/echo"
        if via == "upgrade":
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.setblocking(False)
            ws = connect(
                uri, sock=sock, proxy=None, create_connection=AbsoluteFormConnection, max_size=1 << 20
            )
        else:
            ws = connect(uri, proxy=f"http://127.0.0.1:{port}", max_size=1 << 20)
        rng = random.Random(via)
        total = 0
        async with ws as conn:
            for _ in range(100):
                message = rng.randbytes(rng.randint(1, 256 << 10))
                await conn.send(message)
                back = await asyncio.wait_for(conn.recv(), 10)
                assert isinstance(back, bytes) and sha256(back) == sha256(message)
                total += len(message)
        return total

    try:
        assert asyncio.run(client()) > 100 << 10
        recs = pw.wait_access(lambda a: a)
        assert recs[0]["sni"] == f"127.0.0.1:{ws_port}"  # it went through the proxy
    finally:
        pw.stop()

        async def close() -> None:
            server.close()
            await server.wait_closed()

        lt.run(close())


def test_half_a_head_is_closed_at_the_sniff_deadline(proxy: Proxy) -> None:
    """sniff_timeout is 1 s: a client that stops in the middle of its head gets a 408 or a
    plain close soon after, and the worker lets go of the socket (the fixture checks fds)."""
    with proxy.connect() as c:
        c.send(request(proxy.url("/cl/x"))[:30])
        started = time.monotonic()
        answer = b""
        while chunk := c.sock.recv(4096):  # a 10 s socket timeout bounds this
            answer += chunk
        took = time.monotonic() - started
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 0.5 < took < 5, f"closed after {took:.2f}s"
    assert proxy.origin.accepted == 0
    rec = proxy.pw.wait_access(lambda a: a)[0]
    assert rec["reason"] == "sniff_timeout", rec


def test_half_a_head_on_a_kept_alive_connection_is_closed_at_the_deadline(proxy: Proxy) -> None:
    """The same deadline holds for the next request on a kept-alive connection."""
    with proxy.connect() as c:
        c.send(request(proxy.url("/cl/first")))
        assert c.read().body == origin_body("/cl/first")
        c.send(request(proxy.url("/cl/second"))[:30])
        started = time.monotonic()
        answer = c.f.read()  # to EOF, bounded by the 10 s socket timeout
        took = time.monotonic() - started
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert 0.5 < took < 5, f"closed after {took:.2f}s"
    assert [r.target for r in proxy.origin.requests] == ["/cl/first"]


def test_idle_keepalive_connection_is_closed_after_idle_timeout(tmp_path: Path, lt: LoopThread) -> None:
    """idle_timeout is 1 s: after two requests on one connection, a silent client is closed
    about 1 s after its last answer, not at once (that would be no keep-alive) and not never."""
    p = start(tmp_path, HttpOrigin(lt), listener='idle_timeout = "1s"')
    try:
        worker = p.pw.worker_pids()[0]
        baseline = fd_count(worker)
        with p.connect() as c:
            for name in ("/cl/one", "/chunked/two"):
                c.send(request(p.url(name)))
                assert c.read().body == origin_body(name)
            answered = time.monotonic()
            rest = c.f.read()  # blocks until the proxy closes; the 10 s socket timeout bounds it
            took = time.monotonic() - answered
        assert rest == b"" or rest.startswith(b"HTTP/1.1 408 "), rest[:200]
        assert 0.8 < took < 4, f"closed {took:.2f}s after the last answer"
        p.origin.disconnect()
        wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to the baseline")
    finally:
        p.pw.stop()


def test_connect_tunnel_carries_keepalive_traffic(tmp_path: Path, lt: LoopThread) -> None:
    """Inside a CONNECT tunnel the proxy is out of the way: 50 keep-alive requests on one
    tunnel reach the origin on one connection."""
    origin = HttpOrigin(lt)
    port = free_port()
    conf = http_proxy_config(port, [f"127.0.0.1:{origin.port}"], connect_ports=(origin.port,))
    pw = Portway(tmp_path, conf).start()
    try:
        with Conn(port) as c:
            c.send(b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % ((origin.port,) * 2))
            assert c.read("CONNECT").status == 200
            for i in range(50):
                target = f"/{('cl', 'chunked')[i % 2]}/t{i}?size={i * 1000}"
                c.send(b"GET %s HTTP/1.1\r\nHost: origin\r\n\r\n" % target.encode())
                assert sha256(c.read().body) == sha256(origin_body(target)), target
        assert origin.accepted == 1 and len(origin.requests) == 50
    finally:
        pw.stop()
