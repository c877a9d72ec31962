"""The relay and the poller in-process, over real loopback TCP sockets.

These drive :class:`portway.net.relay.Relay` directly on a uvloop loop: bytes and their order
end to end (prefix first), half-close, pipes returned to the pool, and a bug inside one
connection's callback ending that connection only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from collections.abc import Iterator

import pytest
import uvloop

from portway.net.pipes import BufferPool, PipePool
from portway.net.poller import Poller
from portway.net.relay import Relay
from portway.net.timers import TimerWheel
from portway.session import Session
from portway.termination import Reason


def _tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    """A connected (outside, inside) pair of TCP sockets on loopback."""
    outside = socket.create_connection(listener.getsockname())
    inside, _ = listener.accept()
    inside.setblocking(False)
    return outside, inside


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s
    s.close()


class Harness:
    """A client ↔ [relay] ↔ server chain; the test talks to ``client`` and ``server``."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        *,
        mode: str,
        to_server: bytes = b"",
    ) -> None:
        self.client, proxy_client = _tcp_pair(listener)
        self.server, proxy_server = _tcp_pair(listener)
        for s in (self.client, self.server):
            s.setblocking(False)
        self.session = Session(1, "test", ("127.0.0.1", 1), ("127.0.0.1", 2), loop.time())
        self.done: asyncio.Future[tuple[Reason, str]] = loop.create_future()
        self.poller = Poller(loop)
        self.pipes = PipePool(size=1 << 16)
        self.relay = Relay(
            self.poller,
            TimerWheel(loop),
            proxy_client,
            proxy_server,
            self.session,
            self._on_done,
            mode=mode,
            pipes=self.pipes,
            buffers=BufferPool(),
            to_server=to_server,
        )
        self.proxy_fds = (proxy_client.fileno(), proxy_server.fileno())

    def _on_done(self, reason: Reason, detail: str) -> None:
        self.done.set_result((reason, detail))


async def _send_all(loop: asyncio.AbstractEventLoop, sock: socket.socket, data: bytes, eof: bool) -> None:
    await loop.sock_sendall(sock, data)
    if eof:
        sock.shutdown(socket.SHUT_WR)


async def _recv_all(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    chunks = []
    while chunk := await loop.sock_recv(sock, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


class _FaultySession(Session):
    """A session whose byte counter raises: a stand-in for a bug in a relay callback."""

    __slots__ = ()

    @property  # type: ignore[override]
    def bytes_in(self) -> int:
        return 0

    @bytes_in.setter
    def bytes_in(self, value: int) -> None:
        if value:
            raise RuntimeError("injected fault")


def _run(coro_fn: object) -> None:
    uvloop.run(coro_fn())  # type: ignore[operator]


@pytest.mark.parametrize("mode", ["splice", "copy", "auto"])
def test_both_ways_with_prefix_first(listener: socket.socket, mode: str) -> None:
    up = os.urandom(3 << 20)
    down = os.urandom(2 << 20)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = Harness(loop, listener, mode=mode, to_server=b"PREFIX:")
        h.relay.start()
        got_server, got_client, *_ = await asyncio.gather(
            _recv_all(loop, h.server),
            _recv_all(loop, h.client),
            _send_all(loop, h.client, up, eof=True),
            _send_all(loop, h.server, down, eof=True),
        )
        reason, _ = await h.done
        assert hashlib.sha256(got_server).digest() == hashlib.sha256(b"PREFIX:" + up).digest()
        assert hashlib.sha256(got_client).digest() == hashlib.sha256(down).digest()
        assert reason in (Reason.CLIENT_CLOSED, Reason.SERVER_CLOSED)
        assert h.session.bytes_in == len(up) and h.session.bytes_out == len(down)
        assert h.poller.watched == 0
        if mode == "copy":
            assert h.pipes.created == 0
        else:  # "auto" moved to splice: megabytes fill the copy buffer at once
            assert h.pipes.created >= 1
            assert h.pipes.idle == h.pipes.created  # every pipe came back to the pool
            h.pipes.trim()
            h.pipes.trim()
            assert h.pipes.idle == 0
        for fd in h.proxy_fds:
            with pytest.raises(OSError):
                os.fstat(fd)  # both proxy-side sockets are closed

    _run(main)


@pytest.mark.parametrize("mode", ["splice", "copy", "auto"])
def test_half_close_keeps_the_other_direction(listener: socket.socket, mode: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = Harness(loop, listener, mode=mode)
        h.relay.start()
        await _send_all(loop, h.client, b"request", eof=True)
        assert await _recv_all(loop, h.server) == b"request"  # EOF reached the server
        late = os.urandom(1 << 20)
        await _send_all(loop, h.server, late, eof=True)
        assert await _recv_all(loop, h.client) == late
        reason, _ = await h.done
        assert reason is Reason.CLIENT_CLOSED  # the client's EOF came first

    _run(main)


def test_idle_timeout_blames_the_silent_side(listener: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = Harness(loop, listener, mode="splice")
        h.relay.idle_timeout = 0.2
        h.relay.start()
        await _send_all(loop, h.client, b"question", eof=False)  # the server never answers
        reason, detail = await asyncio.wait_for(h.done, 5)
        assert reason is Reason.SERVER_IDLE_TIMEOUT
        assert "0.2s" in detail

    _run(main)


def test_a_bug_in_one_connection_ends_only_that_one(listener: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        bad = Harness(loop, listener, mode="splice")
        good = Harness(loop, listener, mode="splice")
        bad.relay.session = bad.session = _FaultySession(2, "test", ("127.0.0.1", 1), ("127.0.0.1", 2), 0.0)
        bad.relay.start()
        good.relay.start()
        await _send_all(loop, bad.client, b"x", eof=False)
        reason, detail = await asyncio.wait_for(bad.done, 5)
        assert reason is Reason.INTERNAL_ERROR and "injected fault" in detail
        assert await _recv_all(loop, bad.client) == b""  # closed, not left hanging
        await _send_all(loop, good.client, b"still fine", eof=True)
        assert await _recv_all(loop, good.server) == b"still fine"

    _run(main)


def test_reset_by_server_ends_with_server_closed(listener: socket.socket) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        h = Harness(loop, listener, mode="splice")
        h.relay.start()
        await _send_all(loop, h.client, b"hello", eof=False)
        h.server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        h.server.close()  # RST
        reason, detail = await asyncio.wait_for(h.done, 5)
        assert reason is Reason.SERVER_CLOSED
        assert detail  # says what happened, e.g. "Connection reset by peer"

    _run(main)


def test_idle_check_blames_the_side_silent_longer() -> None:
    from portway.net.relay import idle_check

    assert idle_check(10.0, 12.0, 5.0, 15.0) == (2.0, Reason.CLIENT_IDLE_TIMEOUT)  # moved 3 s ago: re-arm
    assert idle_check(10.0, 12.0, 5.0, 17.5) == (0.0, Reason.CLIENT_IDLE_TIMEOUT)
    assert idle_check(12.0, 10.0, 5.0, 17.5) == (0.0, Reason.SERVER_IDLE_TIMEOUT)
