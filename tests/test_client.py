"""``portway.client`` against a tiny gateway on loopback that speaks the wire protocol.

:class:`FakeGateway` stands in for Portway's ``gateway`` mode: it reads the token line, then runs
a scripted handler (answer a status, echo, stay silent, ...). It runs its own event loop in a
thread, so the blocking client, asyncio clients and subprocesses can all use it alike. The
end-to-end tests against the real gateway mode live with the integration tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import pickle
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from types import TracebackType

import pytest

from portway import client
from portway.client import STATUS_MEANINGS, GatewayError, GatewayTimeoutError
from portway.errors import PortwayError

TOKEN = b"v2.test-token-AAAA"

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, "Connection"], Awaitable[None]]


class Connection:
    """What the fake gateway saw on one connection."""

    def __init__(self) -> None:
        self.line: bytes | None = None
        """The token line without its newline (``None`` until it arrived)."""
        self.received = hashlib.sha256()
        """SHA-256 of everything after the line that the handler read."""
        self.received_bytes = b""
        """The first bytes after the line the handler read (up to 1 MiB), for small checks."""
        self.count = 0
        """How many bytes after the line the handler read."""
        self.done = threading.Event()
        """Set when the handler has finished."""

    def note(self, data: bytes) -> None:
        """Account for ``data`` read from the client after the line."""
        self.received.update(data)
        self.count += len(data)
        if len(self.received_bytes) < 1 << 20:
            self.received_bytes += data


class FakeGateway:
    """A gateway on ``127.0.0.1:<free port>`` that runs ``handler`` after reading the token line."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: list[Connection] = []
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    def __enter__(self) -> FakeGateway:
        self._thread.start()
        self._server = self._call(asyncio.start_server(self._serve, "127.0.0.1", 0))
        self.address = ("127.0.0.1", int(self._server.sockets[0].getsockname()[1]))
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def _call(self, coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)  # type: ignore[arg-type]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = Connection()
        self.connections.append(conn)
        try:
            line = await reader.readuntil(b"\n")
            conn.line = line[:-1]
            await self.handler(reader, writer, conn)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            conn.done.set()

    def wait_connections(self, n: int, timeout: float = 10.0) -> list[Connection]:
        """Wait until ``n`` connections have finished; return them."""
        deadline = time.monotonic() + timeout
        while len(self.connections) < n:
            assert time.monotonic() < deadline, f"expected {n} connections, saw {len(self.connections)}"
            time.sleep(0.005)
        for conn in self.connections[:n]:
            assert conn.done.wait(max(0.0, deadline - time.monotonic())), "a gateway connection did not end"
        return self.connections[:n]


# --- handlers --------------------------------------------------------------------------------


def answer(reply: bytes, then: bytes = b"") -> Handler:
    """Send ``reply`` (and ``then`` in the same write), then close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> None:
        writer.write(reply + then)
        await writer.drain()

    return handler


def echo(banner: bytes = b"", *, before_status: int = 0) -> Handler:
    """Read ``before_status`` bytes, answer 200 + ``banner``, echo until EOF, then half-close."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> None:
        if before_status:
            early = await reader.readexactly(before_status)
            conn.note(early)
            writer.write(b"200" + banner + early)
        else:
            writer.write(b"200" + banner)
        while data := await reader.read(65536):
            conn.note(data)
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    return handler


def silent() -> Handler:
    """Read the line and never answer (until the client gives up)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection) -> None:
        await reader.read()

    return handler


# --- the asyncio client -----------------------------------------------------------------------


def run(coro: Awaitable[object]) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_200_keeps_the_backend_bytes_that_follow_the_status_in_the_same_segment() -> None:
    banner = b"SSH-2.0-OpenSSH_9.6\r\n"
    with FakeGateway(echo(banner)) as gw:

        async def go() -> None:
            reader, writer = await client.open_connection(*gw.address, TOKEN)
            assert await reader.readexactly(len(banner)) == banner
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()

        run(go())
        (conn,) = gw.wait_connections(1)
        assert conn.line == TOKEN


def test_a_megabyte_sent_right_behind_the_status_arrives_whole() -> None:
    payload = hashlib.sha256(b"seed").digest() * (1 << 15)  # 1 MiB
    with FakeGateway(answer(b"200", payload)) as gw:

        async def go() -> bytes:
            reader, writer = await client.open_connection(*gw.address, TOKEN)
            data = await reader.read()  # until the gateway closes
            writer.close()
            return data

        assert run(go()) == payload


def test_a_str_token_is_sent_as_one_ascii_line() -> None:
    with FakeGateway(echo()) as gw:

        async def go() -> None:
            _, writer = await client.open_connection(*gw.address, TOKEN.decode())
            writer.close()

        run(go())
        assert gw.wait_connections(1)[0].line == TOKEN


@pytest.mark.parametrize("status", [400, 401, 403, 502, 504])
def test_each_refusal_raises_gateway_error_with_its_status_and_meaning(status: int) -> None:
    with FakeGateway(answer(str(status).encode())) as gw, pytest.raises(GatewayError) as caught:
        run(client.open_connection(*gw.address, TOKEN))
    error = caught.value
    assert error.status == status
    assert f"answered {status}: {STATUS_MEANINGS[status]}" in str(error)
    assert f"127.0.0.1:{gw.address[1]}" in str(error)
    assert isinstance(error, ConnectionError) and isinstance(error, PortwayError)


def test_401_says_invalid_expired_or_another_gateway() -> None:
    with FakeGateway(answer(b"401")) as gw, pytest.raises(GatewayError) as caught:
        run(client.open_connection(*gw.address, TOKEN))
    assert "401: the gateway refused the token (invalid, expired or for another gateway)" in str(caught.value)


@pytest.mark.parametrize("reply", [b"", b"2", b"20"])
def test_a_close_before_a_whole_status_is_status_0(reply: bytes) -> None:
    with FakeGateway(answer(reply)) as gw, pytest.raises(GatewayError) as caught:
        run(client.open_connection(*gw.address, TOKEN))
    assert caught.value.status == 0
    assert "closed the connection without answering a status" in str(caught.value)


def test_a_reply_that_is_not_a_status_is_refused() -> None:
    with (
        FakeGateway(answer(b"HTTP/1.1 400 Bad Request\r\n\r\n")) as gw,
        pytest.raises(GatewayError) as caught,
    ):
        run(client.open_connection(*gw.address, TOKEN))
    assert caught.value.status == 0
    assert "b'HTT', which is not a gateway status" in str(caught.value)


def test_an_unknown_three_digit_status_keeps_its_code() -> None:
    with FakeGateway(answer(b"299")) as gw, pytest.raises(GatewayError) as caught:
        run(client.open_connection(*gw.address, TOKEN))
    assert caught.value.status == 299
    assert "299, a status this client does not know" in str(caught.value)


def test_a_silent_gateway_times_out() -> None:
    with FakeGateway(silent()) as gw:
        started = time.monotonic()
        with pytest.raises(GatewayTimeoutError) as caught:
            run(client.open_connection(*gw.address, TOKEN, timeout=0.3))
        assert time.monotonic() - started < 3
    assert caught.value.status == 0
    assert isinstance(caught.value, TimeoutError) and isinstance(caught.value, GatewayError)
    assert "within 0.3s" in str(caught.value)


def test_early_data_is_sent_before_the_status_and_arrives_first() -> None:
    with FakeGateway(echo(before_status=5)) as gw:

        async def go() -> bytes:
            # The handler reads the 5 early bytes *before* it answers 200: without them the
            # client would time out waiting for the status.
            reader, writer = await client.open_connection(*gw.address, TOKEN, early_data=b"hello", timeout=5)
            writer.write(b" world")
            writer.write_eof()
            data = await reader.read()
            writer.close()
            return data

        assert run(go()) == b"hello world"
        assert gw.wait_connections(1)[0].received_bytes == b"hello world"


@pytest.mark.parametrize("token", [b"abc\ndef", b"abc\r", "abc\n", b"", "t\u00f6ken"])
def test_a_token_that_cannot_be_a_line_is_a_value_error_before_connecting(token: bytes | str) -> None:
    with FakeGateway(echo()) as gw:
        with pytest.raises(ValueError):
            run(client.open_connection(*gw.address, token))
        with pytest.raises(ValueError):
            client.connect(*gw.address, token)
        # Had the bad tokens connected, those connections would come before this one.
        client.connect(*gw.address, TOKEN).close()
        conns = gw.wait_connections(1)
        assert len(gw.connections) == 1 and conns[0].line == TOKEN


def test_an_unreachable_gateway_is_the_os_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(ConnectionRefusedError):
            run(client.open_connection("127.0.0.1", port, TOKEN))
        with pytest.raises(ConnectionRefusedError):
            client.connect("127.0.0.1", port, TOKEN)


def test_gateway_error_pickles_with_its_status() -> None:
    error = GatewayError(403, "gateway x:1 answered 403: ...")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is GatewayError and again.status == 403 and str(again) == str(error)
    assert again.meaning == STATUS_MEANINGS[403]


# --- the blocking client ----------------------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"EOF after {len(data)} of {n} bytes"
        data += chunk
    return data


def test_blocking_connect_keeps_the_bytes_behind_the_status_and_is_blocking() -> None:
    banner = b"220 smtp.example.test ESMTP\r\n"
    with FakeGateway(echo(banner)) as gw:
        with client.connect(*gw.address, TOKEN) as sock:
            assert sock.gettimeout() is None
            assert _recv_exactly(sock, len(banner)) == banner
            sock.sendall(b"EHLO me\r\n")
            assert _recv_exactly(sock, 9) == b"EHLO me\r\n"
        assert gw.wait_connections(1)[0].line == TOKEN


@pytest.mark.parametrize("status", [400, 401, 403, 502, 504])
def test_blocking_connect_raises_each_refusal(status: int) -> None:
    with FakeGateway(answer(str(status).encode())) as gw, pytest.raises(GatewayError) as caught:
        client.connect(*gw.address, TOKEN)
    assert caught.value.status == status
    assert STATUS_MEANINGS[status] in str(caught.value)


@pytest.mark.parametrize(("reply", "status"), [(b"", 0), (b"20", 0), (b"HTTP", 0), (b"299", 299)])
def test_blocking_connect_eof_and_malformed_replies(reply: bytes, status: int) -> None:
    with FakeGateway(answer(reply)) as gw, pytest.raises(GatewayError) as caught:
        client.connect(*gw.address, TOKEN)
    assert caught.value.status == status


def test_blocking_connect_times_out() -> None:
    with FakeGateway(silent()) as gw:
        started = time.monotonic()
        with pytest.raises(GatewayTimeoutError) as caught:
            client.connect(*gw.address, TOKEN, timeout=0.3)
        assert time.monotonic() - started < 3
    assert caught.value.status == 0


def test_blocking_connect_sends_early_data_before_the_status() -> None:
    with FakeGateway(echo(before_status=3)) as gw, client.connect(*gw.address, TOKEN, early_data=b"abc") as s:
        assert _recv_exactly(s, 3) == b"abc"
        s.sendall(b"def")
        assert _recv_exactly(s, 3) == b"def"
        s.shutdown(socket.SHUT_WR)
        assert s.recv(10) == b""
