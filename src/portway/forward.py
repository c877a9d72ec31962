"""A local forwarder: a port on this machine that leads, through a Portway gateway, to one backend.

``portway connect`` runs it, so that programs that know nothing of gateway tokens (ssh, psql,
a browser) can reach a backend behind a gateway::

    local program --> 127.0.0.1:N (this forwarder) --token line--> gateway --> backend

For every connection accepted on the local port the forwarder opens its own connection to the
gateway with :func:`portway.client.open_connection` and the same token, then relays bytes both
ways until both directions are done.

Rules the relay keeps:

1. *Half-close passes through.* EOF from one side becomes ``write_eof`` (``shutdown(SHUT_WR)``)
   on the other; the opposite direction keeps flowing until its own EOF. Protocols that signal
   "end of request" by closing their sending side work through the forwarder.
2. *Backpressure.* Reads are at most :data:`CHUNK` bytes, and a direction reads again only once
   the other side has drained what it was given, so memory stays bounded whatever the rates.
3. *A refusal is one log line.* When the gateway refuses (or cannot be reached), the local
   connection is closed and one WARNING line says why, with the status's meaning.
4. *Errors end both directions.* A reset on either side closes both connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from portway.client import GatewayError, open_connection
from portway.config.units import format_hostport

__all__ = ["CHUNK", "serve_forwarder"]

log = logging.getLogger("portway.forward")

CHUNK = 64 * 1024
"""The largest read from either side, in bytes (and the streams' buffer limit)."""

#: How long shutting down waits for live connections to notice they were cancelled.
_CLOSE_GRACE = 2.0


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, copied: list[int]) -> None:
    """Copy ``src`` to ``dst`` until EOF, then half-close ``dst``; ``copied[0]`` counts the bytes."""
    while True:
        data = await src.read(CHUNK)
        if not data:
            break
        dst.write(data)
        copied[0] += len(data)
        await dst.drain()
    if dst.can_write_eof() and not dst.is_closing():
        dst.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close ``writer``'s connection and wait until it is closed (errors do not matter now)."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _peer(writer: asyncio.StreamWriter) -> str:
    """The remote address of ``writer``'s socket as ``host:port`` (``"?"`` when unknown)."""
    name = writer.get_extra_info("peername")
    if isinstance(name, tuple) and len(name) >= 2:
        return format_hostport(str(name[0]), int(name[1]))
    return "?"


def _human(n: int) -> str:
    """A byte count the way the access log writes it: ``83B``, ``2.9KiB``, ``64.0MiB``."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n}B" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1024
    raise AssertionError("unreachable")


async def _relay(
    local_reader: asyncio.StreamReader,
    local_writer: asyncio.StreamWriter,
    gateway: tuple[str, int],
    token: bytes,
    connect_timeout: float,
) -> None:
    """Serve one local connection: open a gateway connection, relay both ways, close both."""
    peer = _peer(local_writer)
    started = time.monotonic()
    try:
        remote_reader, remote_writer = await open_connection(
            gateway[0], gateway[1], token, timeout=connect_timeout, limit=CHUNK
        )
    except GatewayError as exc:  # a refusal, a timeout: the message says it all
        log.warning("%s: closed: %s", peer, exc)
        await _close(local_writer)
        return
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        log.warning("%s: closed: cannot reach gateway %s: %s", peer, format_hostport(*gateway), reason)
        await _close(local_writer)
        return

    sent, received = [0], [0]
    up = asyncio.ensure_future(_pipe(local_reader, remote_writer, sent))
    down = asyncio.ensure_future(_pipe(remote_reader, local_writer, received))
    outcome = "done"
    try:
        # The first failure ends both directions; a clean EOF lets the other one run on.
        done, _ = await asyncio.wait({up, down}, return_when=asyncio.FIRST_EXCEPTION)
        errors = [error for error in (t.exception() for t in done) if error is not None]
        if errors:
            outcome = f"ended by an error ({errors[0] or type(errors[0]).__name__})"
    finally:
        for task in (up, down):
            task.cancel()
        for writer in (remote_writer, local_writer):
            writer.close()
        await asyncio.gather(up, down, return_exceptions=True)
        for writer in (remote_writer, local_writer):
            with contextlib.suppress(OSError):
                await writer.wait_closed()
    log.info(
        "%s: %s after %.1fs, %s up, %s down",
        peer,
        outcome,
        time.monotonic() - started,
        _human(sent[0]),
        _human(received[0]),
    )


async def serve_forwarder(
    gateway: tuple[str, int],
    token: bytes,
    listen: tuple[str, int],
    *,
    connect_timeout: float,
    on_ready: Callable[[tuple[str, int]], None] | None = None,
) -> None:
    """Accept connections on ``listen`` and forward each one through ``gateway`` with ``token``.

    Runs until cancelled; cancelling stops accepting and closes every live connection (each is
    given a moment to finish closing).

    Args:
        gateway: ``(host, port)`` of the Portway gateway listener.
        token: The token line without its line ending (as ``portway token encrypt`` prints it).
        listen: ``(host, port)`` to listen on; port 0 picks a free port (``on_ready`` tells
            which).
        connect_timeout: Seconds allowed for each gateway handshake (connect, token, status).
        on_ready: Called once with the ``(host, port)`` actually bound, when connections are
            being accepted.

    Raises:
        OSError: ``listen`` cannot be bound (in use, not a local address).
        ValueError: ``token`` cannot be a token line (it contains CR or LF, or is empty).
    """
    if not token or b"\n" in token or b"\r" in token:
        raise ValueError("the gateway token must be one non-empty line without CR or LF")
    connections: set[asyncio.Task[None]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        connections.add(task)
        try:
            await _relay(reader, writer, gateway, token, connect_timeout)
        except Exception:  # one connection's bug must not stop the forwarder
            log.exception("%s: unexpected error; the connection was closed", _peer(writer))
            writer.close()
        finally:
            connections.discard(task)

    server = await asyncio.start_server(handle, listen[0], listen[1], limit=CHUNK)
    try:
        name = server.sockets[0].getsockname()
        if on_ready is not None:
            on_ready((str(name[0]), int(name[1])))
        await server.serve_forever()
    finally:
        server.close()
        for task in list(connections):
            task.cancel()
        if connections:
            await asyncio.wait(list(connections), timeout=_CLOSE_GRACE)
