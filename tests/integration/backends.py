"""Real TCP backends for integration tests, served by an asyncio loop in a background thread.

Each backend records what it saw (connection count, per-connection hashes, the PROXY header it
received) in thread-safe structures the test reads after waiting for a condition.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class LoopThread:
    """An asyncio event loop running in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[Any], timeout: float = 30.0) -> Any:
        """Run ``coro`` on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    def close(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Backend:
    """A TCP server on 127.0.0.1 (port 0 unless given) running ``handler`` per connection;
    with ``ssl_ctx`` it speaks TLS (the handler sees plaintext)."""

    def __init__(
        self,
        lt: LoopThread,
        handler: Handler,
        port: int = 0,
        host: str = "127.0.0.1",
        ssl_ctx: ssl.SSLContext | None = None,
    ) -> None:
        self.lt = lt
        self.handler = handler
        self.accepted = 0
        self.active = 0
        self.lock = threading.Lock()
        self.records: dict[bytes, dict[str, Any]] = {}
        self.ssl_ctx = ssl_ctx
        self.server: asyncio.base_events.Server = lt.run(self._start(host, port))
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _start(self, host: str, port: int) -> asyncio.base_events.Server:
        return await asyncio.start_server(self._wrap, host, port, reuse_address=True, ssl=self.ssl_ctx)

    async def _wrap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with self.lock:
            self.accepted += 1
            self.active += 1
        try:
            await self.handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            with self.lock:
                self.active -= 1
            writer.close()

    def close(self) -> None:
        """Stop listening (live connections are left alone)."""

        async def _close() -> None:
            self.server.close()

        self.lt.run(_close())


async def read_all(reader: asyncio.StreamReader, chunk: int = 1 << 16) -> tuple[int, str]:
    """Read to EOF; (byte count, sha256 hex)."""
    h = hashlib.sha256()
    n = 0
    while True:
        data = await reader.read(chunk)
        if not data:
            return n, h.hexdigest()
        h.update(data)
        n += len(data)


async def write_random(writer: asyncio.StreamWriter, size: int, chunk: int = 1 << 16) -> str:
    """Write ``size`` random bytes; their sha256 hex."""
    h = hashlib.sha256()
    left = size
    while left:
        data = os.urandom(min(chunk, left))
        h.update(data)
        writer.write(data)
        await writer.drain()
        left -= len(data)
    return h.hexdigest()


def exchange_handler(backend_ref: list[Backend], size: int) -> Handler:
    """Both ways at once: receive to EOF while sending ``size`` random bytes, then close.

    The first 16 bytes the client sends are its id; the backend records, per id, the hash
    of everything it received (id included) and of everything it sent.
    """

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ident = await reader.readexactly(16)
        h = hashlib.sha256(ident)

        async def receive() -> int:
            n = 16
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return n
                h.update(data)
                n += len(data)

        recv_task = asyncio.ensure_future(receive())
        sent_hash = await write_random(writer, size)
        writer.write_eof()
        received = await recv_task
        backend_ref[0].records[ident] = {"recv": h.hexdigest(), "recv_bytes": received, "sent": sent_hash}

    return handler


async def exchange_client(host: str, port: int, size: int) -> dict[str, Any]:
    """Client side of :func:`exchange_handler`: send ``size`` bytes (id first) while receiving."""
    reader, writer = await asyncio.open_connection(host, port)
    ident = os.urandom(16)
    h = hashlib.sha256(ident)
    writer.write(ident)

    async def send() -> None:
        left = size - 16
        while left > 0:
            data = os.urandom(min(1 << 16, left))
            h.update(data)
            writer.write(data)
            await writer.drain()
            left -= len(data)
        writer.write_eof()

    send_task = asyncio.ensure_future(send())
    n, recv_hash = await read_all(reader)
    await send_task
    writer.close()
    return {"id": ident, "sent": h.hexdigest(), "recv": recv_hash, "recv_bytes": n}


def echo_backend(lt: LoopThread) -> Backend:
    """A server that sends back everything it receives, then closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read())

    return Backend(lt, handler)


def greeter_backend(lt: LoopThread, name: bytes, *, echo: bool = False) -> Backend:
    """A server that greets with ``name`` and a newline, then echoes or just reads to EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(name + b"\n")
        await writer.drain()
        while data := await reader.read(65536):
            if echo:
                writer.write(data)
                await writer.drain()

    return Backend(lt, handler)
