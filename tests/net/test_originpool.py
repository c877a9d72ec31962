"""Tests for portway.net.originpool: idle origin connections, on real sockets and a real poller.

Connections are connected ``socket.socketpair()`` halves (the pool's side wrapped in an
:class:`Endpoint`), plus loopback TCP with a TLS 1.3 session for the TLS rule. The poller is a
real :class:`Poller` on a uvloop loop; the one subclass here only tells the test when a socket
is closed, so tests wait for that event (bounded by a deadline) and never sleep. Expiry is
checked two ways: with the pool's clock replaced (exact ages, no waiting), and for real, with a
small ``idle_timeout`` and the pool's own timer.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable, Iterator

import pytest
import trustme
import uvloop

from portway.net import originpool
from portway.net.originpool import OriginPool
from portway.net.poller import Poller
from portway.net.tlsrelay import Endpoint
from portway.proto.http1 import MessageReader
from tests.tlspeer import BioPeer

KEY = ("origin.test", 80, False)
OTHER = ("other.test", 80, False)
ADDR = ("192.0.2.1", 80)


class _Poller(Poller):
    """A real poller that also wakes the test whenever it closes a socket."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.closed = asyncio.Event()

    def close(self, sock: socket.socket) -> None:
        super().close(sock)
        self.closed.set()


async def until(poller: _Poller, condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Run the loop until ``condition()`` holds, re-checking after each socket the poller closes."""
    deadline = time.monotonic() + timeout
    while not condition():
        poller.closed.clear()
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("condition not reached in time")
        await asyncio.wait_for(poller.closed.wait(), left)


class Pairs:
    """Connected socket pairs: the pool's side as an Endpoint, the origin's side as a socket."""

    def __init__(self) -> None:
        self.socks: list[socket.socket] = []

    def new(self) -> tuple[Endpoint, socket.socket]:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        self.socks += [ours, theirs]
        return Endpoint(ours), theirs

    def close(self) -> None:
        for s in self.socks:
            s.close()


@pytest.fixture
def pairs() -> Iterator[Pairs]:
    p = Pairs()
    yield p
    p.close()


def closed(ep: Endpoint) -> bool:
    return ep.sock.fileno() == -1


def run(main: Callable[[], object]) -> None:
    uvloop.run(main())  # type: ignore[arg-type]


class Clock:
    """A stand-in for the pool's ``time`` module: ``monotonic()`` returns ``now``."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(originpool, "time", types.SimpleNamespace(monotonic=c.monotonic))
    return c


# -- take / put ---------------------------------------------------------------------------------
def test_take_returns_the_most_recent_for_the_key_and_token(pairs: Pairs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller)
        token = object()
        a, _ = pairs.new()
        b, _ = pairs.new()
        c, _ = pairs.new()
        ra, rb = MessageReader(response=True), MessageReader(response=True)
        pool.put(KEY, a, ADDR, token, ra)
        pool.put(KEY, b, ("192.0.2.2", 80), token, rb)
        pool.put(OTHER, c, ADDR, token, MessageReader(response=True))
        assert len(pool) == 3 and poller.watched == 3
        first = pool.take(KEY, token)
        assert first is not None and first.ep is b and first.addr == ("192.0.2.2", 80)
        assert first.reader is rb and first.token is token  # the connection's own reader
        second = pool.take(KEY, token)
        assert second is not None and second.ep is a and second.addr == ADDR and second.reader is ra
        assert pool.take(KEY, token) is None
        assert pool.take(("origin.test", 80, True), token) is None  # tls is part of the key
        third = pool.take(OTHER, token)
        assert third is not None and third.ep is c
        assert len(pool) == 0
        assert not any(closed(ep) for ep in (a, b, c))  # handed out, not closed
        pool.close()
        poller.shutdown()

    run(main)


def test_a_connection_checked_under_another_token_is_closed_not_reused(pairs: Pairs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller)
        old, new = object(), object()
        a, _ = pairs.new()
        pool.put(KEY, a, ADDR, old, MessageReader(response=True))
        assert pool.take(KEY, new) is None
        assert closed(a) and len(pool) == 0 and poller.watched == 0
        assert pool.take(KEY, old) is None  # gone for good
        # the newest under the old token is closed on the way to an older one under the new
        b, _ = pairs.new()
        c, _ = pairs.new()
        pool.put(KEY, b, ADDR, new, MessageReader(response=True))
        pool.put(KEY, c, ADDR, old, MessageReader(response=True))
        got = pool.take(KEY, new)
        assert got is not None and got.ep is b
        assert closed(c) and not closed(b)
        pool.close()
        poller.shutdown()

    run(main)


def test_max_per_origin_closes_the_oldest(pairs: Pairs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller, max_per_origin=2)
        token = object()
        a, _ = pairs.new()
        b, _ = pairs.new()
        c, _ = pairs.new()
        d, _ = pairs.new()
        pool.put(KEY, a, ADDR, token, MessageReader(response=True))
        pool.put(KEY, b, ADDR, token, MessageReader(response=True))
        pool.put(OTHER, d, ADDR, token, MessageReader(response=True))  # another origin's count is its own
        pool.put(KEY, c, ADDR, token, MessageReader(response=True))
        assert closed(a)
        assert not any(closed(ep) for ep in (b, c, d))
        assert len(pool) == 3 and poller.watched == 3
        got = [pool.take(KEY, token), pool.take(KEY, token), pool.take(KEY, token)]
        assert [i.ep if i else None for i in got] == [c, b, None]
        pool.close()
        poller.shutdown()

    run(main)


# -- the origin closes, or speaks ---------------------------------------------------------------
def test_origin_closing_an_idle_connection_drops_it(pairs: Pairs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller)
        token = object()
        a, a_origin = pairs.new()
        b, _ = pairs.new()
        pool.put(KEY, a, ADDR, token, MessageReader(response=True))
        pool.put(KEY, b, ADDR, token, MessageReader(response=True))
        a_origin.close()
        await until(poller, lambda: closed(a))
        assert not closed(b)
        assert len(pool) == 1 and poller.watched == 1
        got = pool.take(KEY, token)
        assert got is not None and got.ep is b
        assert pool.take(KEY, token) is None
        pool.close()
        poller.shutdown()

    run(main)


def test_origin_half_closing_or_speaking_unasked_drops_it(pairs: Pairs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller)
        token = object()
        a, a_origin = pairs.new()
        b, b_origin = pairs.new()
        c, _ = pairs.new()
        pool.put(KEY, a, ADDR, token, MessageReader(response=True))
        pool.put(OTHER, b, ADDR, token, MessageReader(response=True))
        pool.put(OTHER, c, ADDR, token, MessageReader(response=True))
        a_origin.shutdown(socket.SHUT_WR)  # FIN, the socket itself still open
        b_origin.send(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        await until(poller, lambda: closed(a) and closed(b))
        assert not closed(c) and len(pool) == 1
        assert pool.take(KEY, token) is None
        got = pool.take(OTHER, token)
        assert got is not None and got.ep is c
        pool.close()
        poller.shutdown()

    run(main)


# -- expiry -------------------------------------------------------------------------------------
def test_sweep_closes_only_expired_connections(pairs: Pairs, clock: Clock) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller, idle_timeout=30.0)
        token = object()
        a, _ = pairs.new()
        b, _ = pairs.new()
        c, _ = pairs.new()
        pool.put(KEY, a, ADDR, token, MessageReader(response=True))
        clock.now += 20
        pool.put(KEY, b, ADDR, token, MessageReader(response=True))
        pool.put(OTHER, c, ADDR, token, MessageReader(response=True))
        clock.now += 9.9
        pool.sweep()
        assert not any(closed(ep) for ep in (a, b, c))
        clock.now += 0.2  # a: 30.1 s idle; b and c: 10.1 s
        pool.sweep()
        assert closed(a) and not closed(b) and not closed(c)
        assert len(pool) == 2 and poller.watched == 2
        clock.now += 20
        pool.sweep()
        assert closed(b) and closed(c) and len(pool) == 0 and poller.watched == 0
        pool.close()
        poller.shutdown()

    run(main)


def test_take_does_not_return_an_expired_connection(pairs: Pairs, clock: Clock) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller, idle_timeout=30.0)
        token = object()
        a, _ = pairs.new()
        b, _ = pairs.new()
        pool.put(KEY, a, ADDR, token, MessageReader(response=True))
        clock.now += 29.0
        pool.put(KEY, b, ADDR, token, MessageReader(response=True))
        got = pool.take(KEY, token)
        assert got is not None and got.ep is b  # the fresh one
        pool.put(KEY, b, ADDR, token, MessageReader(response=True))
        clock.now += 29.5  # a: 58.5 s, b: 29.5 s
        got = pool.take(KEY, token)
        assert got is not None and got.ep is b
        clock.now += 1.0
        assert pool.take(KEY, token) is None  # a is expired: closed, not returned
        assert closed(a) and len(pool) == 0
        pool.close()
        poller.shutdown()

    run(main)


def test_the_pools_timer_sweeps_expired_connections(pairs: Pairs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller, idle_timeout=0.1)
        token = object()
        a, _ = pairs.new()
        start = time.monotonic()
        pool.put(KEY, a, ADDR, token, MessageReader(response=True))
        await until(poller, lambda: closed(a))
        assert time.monotonic() - start >= 0.1  # not before it expired
        assert len(pool) == 0 and poller.watched == 0
        # the timer is armed again for the next one
        b, _ = pairs.new()
        pool.put(OTHER, b, ADDR, token, MessageReader(response=True))
        await until(poller, lambda: closed(b))
        pool.close()
        poller.shutdown()

    run(main)


def test_close_closes_everything_and_stops_the_timer(pairs: Pairs) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller, idle_timeout=0.1)
        token = object()
        eps = [pairs.new()[0] for _ in range(5)]
        for i, ep in enumerate(eps):
            pool.put((f"o{i % 2}.test", 80, bool(i % 3)), ep, ADDR, token, MessageReader(response=True))
        assert poller.watched == 5
        pool.close()
        assert all(closed(ep) for ep in eps)
        assert len(pool) == 0 and poller.watched == 0
        assert pool.take(("o0.test", 80, False), token) is None
        # still usable after a close: a new connection is kept, and swept by a new timer
        again, _ = pairs.new()
        pool.put(KEY, again, ADDR, token, MessageReader(response=True))
        assert not closed(again) and len(pool) == 1
        await until(poller, lambda: closed(again))
        pool.close()
        poller.shutdown()

    run(main)


# -- TLS ----------------------------------------------------------------------------------------
@pytest.fixture
def ca() -> trustme.CA:
    return trustme.CA()


def _tls_pair(ca: trustme.CA) -> tuple[Endpoint, BioPeer, socket.socket]:
    """A TLS 1.3 session over loopback TCP: (the pool's client Endpoint, the origin, its socket).

    The origin sends its session tickets right after the handshake: records with no
    application data that reach the idle connection afterwards."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    ours = socket.create_connection(listener.getsockname())
    theirs, _ = listener.accept()
    listener.close()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("origin.test").configure_cert(server_ctx)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(client_ctx)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    origin = BioPeer(theirs, server_ctx, server_side=True, name=None)
    server = threading.Thread(target=origin.handshake)
    server.start()
    ep = Endpoint.wrap(ours, client_ctx, server_side=False, server_hostname="origin.test")
    assert ep.tls is not None and ep.inbio is not None and ep.outbio is not None
    ours.settimeout(10)
    while True:
        try:
            ep.tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            if ep.outbio.pending:
                ours.sendall(ep.outbio.read())
            ep.inbio.write(ours.recv(65536))
    if ep.outbio.pending:
        ours.sendall(ep.outbio.read())
    server.join(10)
    assert not server.is_alive()
    ours.setblocking(False)
    return ep, origin, theirs


def test_tls_session_tickets_keep_an_idle_connection_and_close_notify_drops_it(ca: trustme.CA) -> None:
    ep, origin, theirs = _tls_pair(ca)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        poller = _Poller(loop)
        pool = OriginPool(loop, poller)
        token = object()
        pool.put(("origin.test", 443, True), ep, ADDR, token, MessageReader(response=True))
        # the tickets make the socket readable; once they are read nothing is left to read
        readable = asyncio.Event()
        probe = socket.socket(fileno=socket.dup(ep.fd))
        loop.add_reader(probe.fileno(), readable.set)
        await asyncio.wait_for(readable.wait(), 5)
        loop.remove_reader(probe.fileno())
        # ...and the pool's reader ran on them without dropping the connection: prove it by
        # running the loop until a closing connection next to it is dropped
        other, other_origin = socket.socketpair()
        other.setblocking(False)
        other_ep = Endpoint(other)
        pool.put(OTHER, other_ep, ADDR, token, MessageReader(response=True))
        other_origin.close()
        await until(poller, lambda: closed(other_ep))
        assert not closed(ep) and len(pool) == 1
        assert ep.tls is not None and ep.tls.session is not None
        assert ep.tls.session.has_ticket  # the pool's reader did read them
        # close_notify (and FIN) from the origin: dropped
        origin.half_close()
        await until(poller, lambda: closed(ep))
        assert len(pool) == 0 and poller.watched == 0
        probe.close()
        pool.close()
        poller.shutdown()

    try:
        run(main)
    finally:
        theirs.close()
        if not closed(ep):
            ep.sock.close()
