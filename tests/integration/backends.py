"""Real TCP backends for integration tests, served by an asyncio loop in a background thread.

Each backend records what it saw (connection count, per-connection hashes, the PROXY header it
received) in thread-safe structures the test reads after waiting for a condition.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import ssl
import threading
import urllib.parse
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


# -- HTTP/1.1: a keep-alive origin, a strict response reader, a forward-proxy config --------------
#
# Rule 1. HttpOrigin is the real thing a forward proxy talks to: many requests per connection,
#         Content-Length, chunked and read-until-close answers, interim 1xx, bodiless 204/304
#         and HEAD. What it answers is a pure function of the request (origin_body), so a client
#         checks a body without asking the origin.
# Rule 2. It records what it received, per connection, byte for byte (``raw``), and each request
#         whose body it read completely (``requests``): a test counts requests and searches the
#         raw bytes for anything that must never arrive (a smuggled request).
# Rule 3. read_response is strict where a lenient client would hide a proxy's framing bug: a
#         status line and fields ending in CRLF, one Content-Length of digits, never both framings,
#         chunk sizes in hex, CRLF after chunk data; a connection closed early is an error.

_ORIGIN_KINDS = ("cl", "chunked", "eof", "eof10", "status", "hop", "early")
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CHUNK_LINE = re.compile(
    rb'([0-9A-Fa-f]{1,16})((?:;[!#$%&\'*+\-.^_`|~0-9A-Za-z]+(?:=(?:[!#$%&\'*+\-.^_`|~0-9A-Za-z]+|"[^"\\\r\n]*"))?)*)'
)


def origin_body(target: str) -> bytes:
    """What :class:`HttpOrigin` answers to a GET of ``target`` (origin-form, as the origin sees
    it): the target and a newline, so the body names its request, then ``?size=N`` (default
    1000) pseudo-random bytes derived from the target."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)
    size = int(query.get("size", ["1000"])[0])
    return target.encode() + b"\n" + hashlib.shake_256(target.encode()).digest(size)


def post_answer(target: str, body: bytes) -> bytes:
    """What :class:`HttpOrigin` answers to a request with a body: the target and the body's sha256."""
    return target.encode() + b"\n" + hashlib.sha256(body).hexdigest().encode()


@dataclasses.dataclass(frozen=True)
class OriginRequest:
    """One request :class:`HttpOrigin` read completely (head and body)."""

    conn: int
    """Which connection (1 = the first accepted)."""
    head: bytes
    """The head as received, blank line included."""
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    """Field lines in order, names lower-cased."""
    body: bytes

    def values(self, name: str) -> list[str]:
        """Every value of field ``name`` (lower-case)."""
        return [v for n, v in self.headers if n == name]


class _Wire:
    """Buffered reads from a StreamReader that keep a copy of every byte received."""

    def __init__(self, reader: asyncio.StreamReader, raw: bytearray) -> None:
        self.reader = reader
        self.raw = raw
        self.buf = bytearray()

    async def _fill(self) -> bool:
        data = await self.reader.read(1 << 16)
        self.raw += data
        self.buf += data
        return bool(data)

    async def until(self, sep: bytes, limit: int = 1 << 16) -> bytes | None:
        """Bytes up to and including ``sep``; None at a clean EOF before any byte."""
        while (at := self.buf.find(sep)) < 0:
            if len(self.buf) > limit:
                raise ValueError(f"no {sep!r} within {limit} bytes")
            if not await self._fill():
                if self.buf:
                    raise ValueError(f"EOF inside a message: {bytes(self.buf[:80])!r}")
                return None
        out = bytes(self.buf[: at + len(sep)])
        del self.buf[: at + len(sep)]
        return out

    async def exactly(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not await self._fill():
                raise ValueError(f"EOF after {len(self.buf)} of {n} body bytes")
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


def _fields(lines: list[bytes]) -> tuple[tuple[str, str], ...]:
    out = []
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.fullmatch(name) or re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", value):
            raise ValueError(f"bad field line {line!r}")
        out.append((name.decode().lower(), value.strip(b" \t").decode("latin-1")))
    return tuple(out)


def _tokens(headers: tuple[tuple[str, str], ...] | list[tuple[str, str]], name: str) -> set[str]:
    return {t.strip().lower() for n, v in headers if n == name for t in v.split(",") if t.strip()}


async def _read_chunked(wire: _Wire) -> bytes:
    body = bytearray()
    while True:
        line = await wire.until(b"\r\n", 4096)
        match = _CHUNK_LINE.fullmatch(line[:-2]) if line else None
        if match is None:
            raise ValueError(f"bad chunk-size line {line!r}")
        size = int(match[1], 16)
        if size == 0:
            while (trailer := await wire.until(b"\r\n")) not in (b"\r\n", None):
                _fields([trailer[:-2]])
            return bytes(body)
        body += await wire.exactly(size)
        if await wire.exactly(2) != b"\r\n":
            raise ValueError("chunk data not followed by CRLF")


class HttpOrigin:
    """An HTTP/1.1 origin on 127.0.0.1 (TLS with ``ssl_ctx``) that serves many requests per
    connection. The first path segment chooses the answer to a GET of ``/<kind>/...?size=N``:

    - ``cl`` (and any other path): :func:`origin_body` with ``Content-Length``;
    - ``chunked``: the same body, chunked;
    - ``eof`` / ``eof10``: the same body with no framing, ``HTTP/1.1`` / ``HTTP/1.0`` status
      line, then close (read-until-close);
    - ``status/204``, ``status/304``: no body (the 304 carries the ``Content-Length`` a GET
      would have, as RFC 9110 §8.6 allows);
    - ``hop``: ``Content-Length`` answer with hop-by-hop fields (``Connection: X-Origin-Hop,
      keep-alive``, ``Keep-Alive``, ``X-Origin-Hop``, ``Proxy-Connection``) beside
      ``X-Origin-Kept``;
    - ``early``: ``103 Early Hints`` first, then the ``cl`` answer;
    - with ``pages``, a path in it gets that HTML and any other path outside the kinds above ``404``.

    HEAD gets the GET's fields without the body; a request with a body gets :func:`post_answer`
    (chunked under ``/chunked/``); ``Expect: 100-continue`` gets ``100 Continue`` first. The
    connection stays open unless the request asks to close. A malformed request is recorded in
    ``errors`` and the connection closed without an answer.
    """

    def __init__(
        self, lt: LoopThread, *, ssl_ctx: ssl.SSLContext | None = None, pages: dict[str, bytes] | None = None
    ) -> None:
        self.pages = pages
        self.requests: list[OriginRequest] = []
        self.raw: list[bytearray] = []
        self.errors: list[str] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self.backend = Backend(lt, self._serve, ssl_ctx=ssl_ctx)
        self.port = self.backend.port

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return self.backend.accepted

    def received(self) -> bytes:
        """Every byte received on every connection, concatenated in accept order."""
        return b"".join(bytes(r) for r in list(self.raw))

    def disconnect(self) -> None:
        """Close every connection the origin holds, idle ones kept by a proxy's pool included."""

        async def _close() -> None:
            for writer in list(self._writers):
                writer.close()

        self.backend.lt.run(_close())

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raw = bytearray()
        self.raw.append(raw)
        conn = len(self.raw)
        wire = _Wire(reader, raw)
        self._writers.add(writer)
        try:
            while True:
                head = await wire.until(b"\r\n\r\n")
                if head is None:
                    return
                if not await self._one(conn, wire, head, writer):
                    return
        except ValueError as exc:
            self.errors.append(str(exc))
        finally:
            self._writers.discard(writer)

    async def _one(self, conn: int, wire: _Wire, head: bytes, writer: asyncio.StreamWriter) -> bool:
        lines = head[:-4].split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise ValueError(f"bad request line {lines[0]!r}")
        method, target, version = parts[0].decode(), parts[1].decode(), parts[2].decode()
        headers = _fields(lines[1:])
        lengths = [v for n, v in headers if n == "content-length"]
        chunked = "chunked" in _tokens(headers, "transfer-encoding")
        if (lengths and chunked) or len(set(lengths)) > 1 or not all(v.isdigit() for v in lengths):
            raise ValueError(f"ambiguous framing in {head!r}")
        has_body = chunked or (bool(lengths) and int(lengths[0]) > 0)
        if has_body and "100-continue" in _tokens(headers, "expect"):
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
        body = await _read_chunked(wire) if chunked else await wire.exactly(int(lengths[0]) if lengths else 0)
        self.requests.append(OriginRequest(conn, head, method, target, headers, body))
        close = "close" in _tokens(headers, "connection") or (
            version == "HTTP/1.0" and "keep-alive" not in _tokens(headers, "connection")
        )
        kind = target.split("/")[1].split("?")[0] if target.startswith("/") else ""
        fields = b""
        status = b"200 OK"
        answer = origin_body(target)
        if has_body or method in ("POST", "PUT"):
            answer = post_answer(target, body)
        elif self.pages is not None and kind not in _ORIGIN_KINDS:
            page = self.pages.get(target.split("?")[0])
            status, answer = (b"200 OK", page) if page is not None else (b"404 Not Found", b"not here\n")
            fields = b"Content-Type: text/html; charset=utf-8\r\n" if page is not None else b""
        if kind == "status":
            code = target.split("/")[2].split("?")[0].encode()
            extra = b'ETag: "x"\r\nContent-Length: %d\r\n' % len(answer) if code == b"304" else b""
            writer.write(b"HTTP/1.1 %s Nothing\r\n%s%s\r\n" % (code, extra, b"Connection: close\r\n" * close))
        elif kind in ("eof", "eof10"):
            line = b"HTTP/1.0 200 OK" if kind == "eof10" else b"HTTP/1.1 200 OK"
            writer.write(line + b"\r\nContent-Type: application/octet-stream\r\n\r\n")
            if method != "HEAD":
                writer.write(answer)
            close = True
        else:
            if kind == "hop":
                fields += (
                    b"Connection: X-Origin-Hop, keep-alive\r\nKeep-Alive: timeout=5, max=100\r\n"
                    b"X-Origin-Hop: secret\r\nProxy-Connection: keep-alive\r\nX-Origin-Kept: yes\r\n"
                )
            if kind == "early":
                writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n")
            if close:
                fields += b"Connection: close\r\n"
            if kind == "chunked":
                writer.write(b"HTTP/1.1 %s\r\n%sTransfer-Encoding: chunked\r\n\r\n" % (status, fields))
                if method != "HEAD":
                    for at in range(0, len(answer), 4000):
                        piece = answer[at : at + 4000]
                        writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    writer.write(b"0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 %s\r\n%sContent-Length: %d\r\n\r\n" % (status, fields, len(answer)))
                if method != "HEAD":
                    writer.write(answer)
        await writer.drain()
        return not close


@dataclasses.dataclass
class Response:
    """One HTTP response as :func:`read_response` read it."""

    version: str
    status: int
    headers: list[tuple[str, str]]
    """Field lines in order, names lower-cased."""
    body: bytes
    framing: str
    """``"length"``, ``"chunked"``, ``"eof"`` (read until close) or ``"none"`` (HEAD, 1xx, 204, 304)."""
    interim: list[Response] = dataclasses.field(default_factory=list)
    """The 1xx responses that came before this one."""

    def values(self, name: str) -> list[str]:
        """Every value of field ``name`` (lower-case)."""
        return [v for n, v in self.headers if n == name]

    def tokens(self, name: str) -> set[str]:
        """The comma-separated tokens of every ``name`` field, lower-cased."""
        return _tokens(self.headers, name)


def _line(f: Any, limit: int = 1 << 16) -> bytes:
    line: bytes = f.readline(limit + 1)
    if not line:
        raise AssertionError("connection closed where a response (or more of one) was due")
    if not line.endswith(b"\r\n") or b"\n" in line[:-2] or b"\r" in line[:-2]:
        raise AssertionError(f"response line does not end with CRLF: {line[:200]!r}")
    return line[:-2]


def _exactly(f: Any, n: int) -> bytes:
    data: bytes = f.read(n)
    if len(data) != n:
        raise AssertionError(f"connection closed after {len(data)} of {n} body bytes")
    return data


def read_response(f: Any, method: str = "GET") -> Response:
    """Read one response (and the 1xx before it) to a ``method`` request from the binary file
    ``f`` (``sock.makefile("rb")``), strictly (Rule 3); AssertionError says what is wrong."""
    interim: list[Response] = []
    while True:
        status_line = _line(f)
        match = re.fullmatch(rb"HTTP/(1\.[01]) ([1-5][0-9]{2}) [\x20-\x7e\x80-\xff]*", status_line)
        if match is None:
            raise AssertionError(f"bad status line {status_line[:200]!r}")
        lines = []
        while field := _line(f):
            lines.append(field)
        try:
            headers = list(_fields(lines))
        except ValueError as exc:
            raise AssertionError(str(exc)) from None
        status = int(match[2])
        if 100 <= status < 200 and status != 101:
            interim.append(Response(match[1].decode(), status, headers, b"", "none"))
            continue
        break
    response = Response(match[1].decode(), status, headers, b"", "none", interim)
    lengths = response.values("content-length")
    codings = response.values("transfer-encoding")
    if method == "HEAD" or status in (101, 204, 304) or (method == "CONNECT" and status // 100 == 2):
        return response
    if lengths and codings:
        raise AssertionError(f"response has both Content-Length and Transfer-Encoding: {headers}")
    if codings:
        if [t.strip().lower() for t in ",".join(codings).split(",")][-1] != "chunked":
            raise AssertionError(f"response Transfer-Encoding does not end with chunked: {codings}")
        body = bytearray()
        while True:
            size_line = _line(f, 4096)
            chunk = _CHUNK_LINE.fullmatch(size_line)
            if chunk is None:
                raise AssertionError(f"bad chunk-size line {size_line!r}")
            size = int(chunk[1], 16)
            if size == 0:
                while _line(f):
                    pass  # trailer fields
                break
            body += _exactly(f, size)
            if _exactly(f, 2) != b"\r\n":
                raise AssertionError("chunk data not followed by CRLF")
        response.body, response.framing = bytes(body), "chunked"
    elif lengths:
        if len(set(lengths)) != 1 or not lengths[0].isdigit():
            raise AssertionError(f"bad Content-Length {lengths}")
        response.body, response.framing = _exactly(f, int(lengths[0])), "length"
    else:
        response.body, response.framing = f.read(), "eof"
    return response


def http_proxy_config(
    port: int,
    allow: list[str],
    *,
    connect_ports: tuple[int, ...] = (443,),
    listener: str = "",
    top: str = "",
) -> str:
    """A config with one ``http-proxy`` listener on 127.0.0.1:``port``, ``sniff_timeout = "1s"``,
    allowing exactly ``allow`` (loopback destinations are refused unless listed), JSON access
    log on stdout; ``listener`` adds lines to the listener table, ``top`` before it."""
    return f"""
workers = 1
drain_timeout = "5s"
{top}
[admin]
listen = "off"
[log]
access = "stdout"
format = "json"

[[listener]]
name = "proxy"
mode = "http-proxy"
bind = "127.0.0.1:{port}"
sniff_timeout = "1s"
allow = {json.dumps(allow)}
connect_ports = {json.dumps(list(connect_ports))}
{listener}
"""
