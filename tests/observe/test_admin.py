"""The admin HTTP server, driven over real loopback sockets."""

from __future__ import annotations

import asyncio
import logging
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from portway.observe.admin import HEAD_LIMIT, AdminServer

Test = Callable[[AdminServer, int], Awaitable[None]]


class Stubs:
    """Content callables whose behaviour a test can change."""

    def __init__(self) -> None:
        self.healthy = (True, "")
        self.fail_stats = False
        self.block_metrics = False
        self.calls = 0
        self.entered = asyncio.Event()

    async def metrics(self) -> bytes:
        self.calls += 1
        self.entered.set()
        if self.block_metrics:
            await asyncio.Event().wait()
        return b"portway_workers 2.0\n"

    async def stats(self) -> bytes:
        self.calls += 1
        if self.fail_stats:
            raise RuntimeError("boom")
        return b'{"listeners": {}}\n'

    async def health(self) -> tuple[bool, str]:
        return self.healthy


def run(test: Callable[[Stubs, int], Awaitable[None]], **kwargs: Any) -> Stubs:
    """Start a server on 127.0.0.1:0, run the test against its port, then close it."""
    stubs = Stubs()

    async def main() -> None:
        server = AdminServer(
            "127.0.0.1", 0, metrics=stubs.metrics, stats=stubs.stats, health=stubs.health, **kwargs
        )
        host, port = await server.start()
        assert host == "127.0.0.1" and port > 0
        try:
            await asyncio.wait_for(test(stubs, port), 10)
        finally:
            await server.close()

    asyncio.run(main())
    return stubs


async def raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send raw bytes, read the whole response (the server closes), and split it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    assert lines[0].startswith("HTTP/1.1 ")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    return status, headers, body


async def get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    return await raw(port, f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())


def test_metrics_stats_health_dashboard() -> None:
    async def t(stubs: Stubs, port: int) -> None:
        status, headers, body = await get(port, "/metrics")
        assert status == 200
        assert headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert headers["content-length"] == str(len(body))
        assert headers["connection"] == "close"
        assert body == b"portway_workers 2.0\n"

        status, headers, body = await get(port, "/stats?pretty=1")
        assert (status, headers["content-type"], body) == (200, "application/json", b'{"listeners": {}}\n')

        status, _, body = await get(port, "/healthz")
        assert (status, body) == (200, b"ok\n")
        stubs.healthy = (False, "no workers running")
        status, _, body = await get(port, "/healthz")
        assert (status, body) == (503, b"no workers running\n")

        status, headers, body = await get(port, "/")
        assert status == 200
        assert headers["content-type"].startswith("text/html")
        assert b"fetch(" in body and b"stats" in body
        assert b"http://" not in body and b"https://" not in body  # no external assets

    run(t)


def test_head_has_no_body() -> None:
    async def t(stubs: Stubs, port: int) -> None:
        status, headers, body = await get(port, "/metrics", "HEAD")
        assert status == 200
        assert headers["content-length"] == str(len(b"portway_workers 2.0\n"))
        assert body == b""

    run(t)


def test_real_http_client() -> None:
    async def t(stubs: Stubs, port: int) -> None:
        def fetch(path: str) -> tuple[int, str, bytes]:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                    return r.status, r.headers["Content-Type"], r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.headers["Content-Type"], e.read()

        assert await asyncio.to_thread(fetch, "/metrics") == (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            b"portway_workers 2.0\n",
        )
        status, _, _ = await asyncio.to_thread(fetch, "/missing")
        assert status == 404

    run(t)


def test_not_found_and_method_not_allowed() -> None:
    async def t(stubs: Stubs, port: int) -> None:
        status, _, _ = await get(port, "/nope")
        assert status == 404
        status, headers, _ = await get(port, "/metrics", "POST")
        assert status == 405
        assert headers["allow"] == "GET, HEAD"
        assert stubs.calls == 0
        # A body the server never reads must not turn the close into a reset.
        body = b"x" * 50_000
        status, _, _ = await raw(port, b"POST /stats HTTP/1.1\r\nContent-Length: 50000\r\n\r\n" + body)
        assert status == 405

    run(t)


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /metrics\r\n\r\n", 400),
        (b"GET  /metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET metrics HTTP/1.1\r\n\r\n", 400),
        (b"GET /metrics HTTP/2.0\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\nHost: x", 400),  # then EOF: incomplete head
        (b"GET /healthz HTTP/1.0\n\n", 200),  # bare LF line endings are accepted
        (b"GET http://localhost:9090/healthz HTTP/1.1\r\n\r\n", 200),  # absolute form
    ],
)
def test_malformed_requests(request_bytes: bytes, expected: int) -> None:
    async def t(stubs: Stubs, port: int) -> None:
        if request_bytes.endswith(b"\n"):
            status, _, _ = await raw(port, request_bytes)
        else:  # send, then half-close so the server sees EOF mid-head
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request_bytes)
            writer.write_eof()
            data = await reader.read()
            writer.close()
            status = int(data.split(b" ")[1])
        assert status == expected

    run(t)


def test_oversized_head() -> None:
    async def t(stubs: Stubs, port: int) -> None:
        big = b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (4 * HEAD_LIMIT) + b"\r\n\r\n"
        status, _, body = await raw(port, big)
        assert status == 431
        assert str(HEAD_LIMIT).encode() in body
        # A head just under the limit is fine.
        pad = HEAD_LIMIT - len(b"GET /metrics HTTP/1.1\r\nX-Pad: \r\n\r\n")
        status, _, _ = await raw(port, b"GET /metrics HTTP/1.1\r\nX-Pad: " + b"p" * pad + b"\r\n\r\n")
        assert status == 200

    run(t)


def test_read_deadline_gives_408() -> None:
    async def t(stubs: Stubs, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n")  # and never finish the head
        data = await reader.read()
        writer.close()
        assert data.startswith(b"HTTP/1.1 408 ")
        # A client that connects and says nothing also gets 408, not a stuck connection.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert (await reader.read()).startswith(b"HTTP/1.1 408 ")
        writer.close()

    run(t, read_timeout=0.2)


def test_handler_error_gives_500_and_server_survives(caplog: pytest.LogCaptureFixture) -> None:
    async def t(stubs: Stubs, port: int) -> None:
        stubs.fail_stats = True
        status, _, body = await get(port, "/stats")
        assert status == 500
        assert b"boom" not in body  # details go to the log, not to the client
        stubs.fail_stats = False
        status, _, _ = await get(port, "/stats")
        assert status == 200

    with caplog.at_level(logging.ERROR, logger="portway.admin"):
        run(t)
    errors = [r for r in caplog.records if r.name == "portway.admin" and r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and "boom" in str(errors[0].exc_info[1])


def test_slow_handler_gives_503() -> None:
    async def t(stubs: Stubs, port: int) -> None:
        stubs.block_metrics = True
        status, _, _ = await get(port, "/metrics")
        assert status == 503
        status, _, _ = await get(port, "/healthz")
        assert status == 200

    run(t, handler_timeout=0.2)


def test_close_stops_serving_and_aborts_pending_requests() -> None:
    async def main() -> None:
        stubs = Stubs()
        stubs.block_metrics = True
        server = AdminServer("127.0.0.1", 0, metrics=stubs.metrics, stats=stubs.stats, health=stubs.health)
        _, port = await server.start()
        # A request stuck in its handler must not hold close() up.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\n\r\n")
        await asyncio.wait_for(stubs.entered.wait(), 5)
        await asyncio.wait_for(server.close(), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        await server.close()  # idempotent

    asyncio.run(main())
