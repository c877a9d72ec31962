"""TLS termination and origination in-process: :class:`Handshake` and :class:`TlsRelay` over
real loopback TCP sockets, with Python's ``ssl`` as the peer on the other end.

The test's TLS peers run in threads on blocking sockets; the proxy side runs on a uvloop loop
with the worker's poller and timer wheel, exactly as in a worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import ssl
from collections.abc import Callable, Iterator

import pytest
import trustme
import uvloop

from portway.net.poller import Poller
from portway.net.timers import TimerWheel
from portway.net.tlsrelay import Endpoint, Handshake, TlsRelay
from portway.session import Session
from portway.termination import Reason
from tests.tlspeer import BioPeer


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    yield s
    s.close()


def _tcp_pair(listener: socket.socket) -> tuple[socket.socket, socket.socket]:
    outside = socket.create_connection(listener.getsockname())
    inside, _ = listener.accept()
    inside.setblocking(False)
    return outside, inside


def _server_context(ca: trustme.CA, name: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(name).configure_cert(ctx)
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _client_context(ca: trustme.CA, version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ca.configure_trust(ctx)
    if version is not None:
        ctx.minimum_version = ctx.maximum_version = version
    return ctx


class Chain:
    """client (test) → [Handshake + TlsRelay] → server (test); TLS on the sides asked for."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        listener: socket.socket,
        *,
        accept_ctx: ssl.SSLContext | None,
        connect_ctx: ssl.SSLContext | None = None,
        server_name: str | None = None,
        handshake_timeout: float = 5.0,
    ) -> None:
        self.loop = loop
        self.client, self.proxy_client = _tcp_pair(listener)
        self.server, self.proxy_server = _tcp_pair(listener)
        self.poller = Poller(loop)
        self.wheel = TimerWheel(loop)
        self.session = Session(1, "test", ("127.0.0.1", 1), ("127.0.0.1", 2), loop.time())
        self.done: asyncio.Future[tuple[Reason, str]] = loop.create_future()
        self.accept_ctx = accept_ctx
        self.connect_ctx = connect_ctx
        self.server_name = server_name
        self.timeout = handshake_timeout
        self.relay: TlsRelay | None = None
        self.client_ep = (
            Endpoint.wrap(self.proxy_client, accept_ctx, server_side=True, server_hostname=None)
            if accept_ctx is not None
            else Endpoint(self.proxy_client)
        )
        self.server_ep = (
            Endpoint.wrap(self.proxy_server, connect_ctx, server_side=False, server_hostname=server_name)
            if connect_ctx is not None
            else Endpoint(self.proxy_server)
        )

    def start(self) -> None:
        if self.client_ep.tls is not None:
            self._handshake(self.client_ep, True, self._server_side)
        else:
            self._server_side()

    def _handshake(self, ep: Endpoint, client_side: bool, then: Callable[[], None]) -> None:
        Handshake(
            self.poller,
            self.wheel,
            ep,
            timeout=self.timeout,
            client_side=client_side,
            on_done=then,
            on_error=self._failed,
        ).start()

    def _server_side(self) -> None:
        if self.server_ep.tls is not None:
            self._handshake(self.server_ep, False, self._relay)
        else:
            self._relay()

    def _relay(self) -> None:
        self.relay = TlsRelay(
            self.poller, self.wheel, self.client_ep, self.server_ep, self.session, self._finish
        )
        self.relay.start()

    def _failed(self, reason: Reason, detail: str) -> None:
        self.poller.close(self.proxy_client)
        self.poller.close(self.proxy_server)
        self._finish(reason, detail)

    def _finish(self, reason: Reason, detail: str) -> None:
        if not self.done.done():
            self.done.set_result((reason, detail))


def _plain_recv_all(sock: socket.socket) -> bytes:
    sock.setblocking(True)
    sock.settimeout(20)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_terminate_both_ways_with_half_close(
    listener: socket.socket, ca: trustme.CA, version: ssl.TLSVersion
) -> None:
    """Client TLS → plaintext server: every byte both ways, half-close passed on both ways."""
    up = os.urandom(3 << 20)
    down = os.urandom(2 << 20)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(loop, listener, accept_ctx=_server_context(ca, "a.test"))
        chain.start()

        def client() -> bytes:
            peer = BioPeer(chain.client, _client_context(ca, version), server_side=False, name="a.test")
            peer.handshake()
            peer.send(up)
            peer.half_close()
            return peer.recv_all()

        def server() -> bytes:
            got = _plain_recv_all(chain.server)  # up to the client's EOF
            chain.server.sendall(down)
            chain.server.shutdown(socket.SHUT_WR)
            return got

        got_down, got_up = await asyncio.gather(
            loop.run_in_executor(None, client), loop.run_in_executor(None, server)
        )
        reason, _ = await asyncio.wait_for(chain.done, 10)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        assert reason is Reason.CLIENT_CLOSED
        assert chain.session.bytes_in == len(up)
        assert chain.session.bytes_out == len(down)
        assert (
            chain.client_ep.describe()[0]
            == {
                ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                ssl.TLSVersion.TLSv1_3: "TLSv1.3",
            }[version]
        )
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_server_closes_first_client_keeps_sending(listener: socket.socket, ca: trustme.CA) -> None:
    """The server's EOF becomes close_notify + FIN to the client, who may still send after it."""
    late = os.urandom(1 << 20)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(loop, listener, accept_ctx=_server_context(ca, "a.test"))
        chain.start()

        def client() -> bytes:
            peer = BioPeer(chain.client, _client_context(ca), server_side=False, name="a.test")
            peer.handshake()
            peer.send(b"hello")
            greeting = peer.recv_all()  # until the server's close reaches us as close_notify
            peer.send(late)
            peer.half_close()
            return greeting

        def server() -> bytes:
            chain.server.setblocking(True)
            chain.server.settimeout(20)
            first = chain.server.recv(5)
            chain.server.sendall(b"bye:" + first)
            chain.server.shutdown(socket.SHUT_WR)
            return _plain_recv_all(chain.server)

        greeting, rest = await asyncio.gather(
            loop.run_in_executor(None, client), loop.run_in_executor(None, server)
        )
        reason, _ = await asyncio.wait_for(chain.done, 10)
        assert greeting == b"bye:hello"
        assert hashlib.sha256(rest).digest() == hashlib.sha256(late).digest()
        assert reason is Reason.SERVER_CLOSED
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_request_in_the_same_flight_as_finished(listener: socket.socket, ca: trustme.CA) -> None:
    """Application data that arrives with the client's last handshake flight is not lost."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(loop, listener, accept_ctx=_server_context(ca, "a.test"))
        chain.start()

        def client() -> bytes:
            peer = BioPeer(
                chain.client, _client_context(ca, ssl.TLSVersion.TLSv1_3), server_side=False, name="a.test"
            )
            while True:  # hand-driven: write the request before sending the Finished flight
                try:
                    peer.tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    peer._send_out()
                    peer._feed()
            peer.tls.write(b"GET / HTTP/1.0\r\n\r\n")
            peer._send_out()  # Finished and the request leave in one send
            return peer.recv_exactly(4)

        def server() -> bytes:
            chain.server.setblocking(True)
            chain.server.settimeout(20)
            got = chain.server.recv(100)
            chain.server.sendall(b"done")
            return got

        answer, request = await asyncio.gather(
            loop.run_in_executor(None, client), loop.run_in_executor(None, server)
        )
        assert request == b"GET / HTTP/1.0\r\n\r\n"
        assert answer == b"done"
        assert chain.relay is not None
        chain.relay.end(Reason.SHUTDOWN)
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_originate_tls_to_server_with_verification(listener: socket.socket, ca: trustme.CA) -> None:
    """Plain client → TLS to the server, verified against the CA with SNI set."""
    up = os.urandom(1 << 20)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(
            loop, listener, accept_ctx=None, connect_ctx=_client_context(ca), server_name="api.internal"
        )
        chain.start()
        seen: list[str | None] = []
        server_ctx = _server_context(ca, "api.internal")
        server_ctx.sni_callback = lambda obj, name, ctx: seen.append(name)  # type: ignore[assignment,misc,return-value]

        def server() -> bytes:
            peer = BioPeer(chain.server, server_ctx, server_side=True, name=None)
            peer.handshake()
            got = peer.recv_all()
            peer.send(hashlib.sha256(got).digest())
            peer.half_close()
            return got

        def client() -> bytes:
            chain.client.sendall(up)
            chain.client.shutdown(socket.SHUT_WR)
            return _plain_recv_all(chain.client)

        got_up, digest = await asyncio.gather(
            loop.run_in_executor(None, server), loop.run_in_executor(None, client)
        )
        await asyncio.wait_for(chain.done, 10)
        assert got_up == up
        assert digest == hashlib.sha256(up).digest()
        assert seen == ["api.internal"]
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_server_certificate_for_another_name_is_refused(listener: socket.socket, ca: trustme.CA) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(
            loop, listener, accept_ctx=None, connect_ctx=_client_context(ca), server_name="api.internal"
        )
        chain.start()

        def server() -> None:
            peer = BioPeer(chain.server, _server_context(ca, "other.internal"), server_side=True, name=None)
            with pytest.raises((ssl.SSLError, OSError)):
                peer.handshake()

        await loop.run_in_executor(None, server)
        reason, detail = await asyncio.wait_for(chain.done, 10)
        assert reason is Reason.SERVER_TLS_FAILED
        assert "certificate verify failed" in detail and "api.internal" in detail
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_client_that_distrusts_the_certificate(listener: socket.socket, ca: trustme.CA) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(loop, listener, accept_ctx=_server_context(ca, "a.test"))
        chain.start()

        def client() -> None:
            peer = BioPeer(chain.client, _client_context(trustme.CA()), server_side=False, name="a.test")
            with pytest.raises(ssl.SSLCertVerificationError):
                peer.handshake()
            peer._send_out()  # the alert

        await loop.run_in_executor(None, client)
        reason, detail = await asyncio.wait_for(chain.done, 10)
        assert reason is Reason.TLS_HANDSHAKE_FAILED
        assert "unknown ca" in detail
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_handshake_deadline(listener: socket.socket, ca: trustme.CA) -> None:
    """A client that opens and says nothing more is ended at the handshake deadline."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(loop, listener, accept_ctx=_server_context(ca, "a.test"), handshake_timeout=0.3)
        t0 = loop.time()
        chain.start()
        reason, detail = await asyncio.wait_for(chain.done, 10)
        assert reason is Reason.SNIFF_TIMEOUT
        assert "TLS handshake not complete within 0.3s" in detail
        assert loop.time() - t0 >= 0.25
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_plain_client_talking_to_tls_port(listener: socket.socket, ca: trustme.CA) -> None:
    """Garbage instead of a handshake: a TLS failure with OpenSSL's reason, not a crash."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(loop, listener, accept_ctx=_server_context(ca, "a.test"))
        chain.start()
        chain.client.sendall(b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n")
        reason, detail = await asyncio.wait_for(chain.done, 10)
        assert reason is Reason.TLS_HANDSHAKE_FAILED
        assert detail
        chain.client.close()
        chain.server.close()

    uvloop.run(main())


def test_bytes_buffered_in_tls_are_relayed_after_backpressure(
    listener: socket.socket, ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a tiny high-water mark each read round stops with records still in OpenSSL's
    buffers; once the server takes everything, they must be read without waiting for the
    (empty) socket to signal. The client sends all first and then only waits."""
    from portway.net import tlsrelay

    monkeypatch.setattr(tlsrelay, "HIGH_WATER", 4096)
    up = os.urandom(2 << 20)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        chain = Chain(loop, listener, accept_ctx=_server_context(ca, "a.test"))
        chain.start()

        def client() -> bytes:
            peer = BioPeer(chain.client, _client_context(ca), server_side=False, name="a.test")
            peer.handshake()
            peer.send(up)
            return peer.recv_exactly(32)  # no half-close: only the data tells the server to answer

        def server() -> None:
            chain.server.setblocking(True)
            chain.server.settimeout(20)
            h = hashlib.sha256()
            got = 0
            while got < len(up):
                chunk = chain.server.recv(1 << 20)
                assert chunk, "the relay stopped with bytes left"
                h.update(chunk)
                got += len(chunk)
            chain.server.sendall(h.digest())

        digest, _ = await asyncio.gather(
            loop.run_in_executor(None, client), loop.run_in_executor(None, server)
        )
        assert digest == hashlib.sha256(up).digest()
        assert chain.relay is not None
        chain.relay.end(Reason.SHUTDOWN)
        chain.client.close()
        chain.server.close()

    uvloop.run(main())
