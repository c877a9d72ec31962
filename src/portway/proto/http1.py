"""HTTP/1.x messages as a stream of events, parsed by llhttp (through httptools): sans-IO.

A :class:`MessageReader` takes the bytes of one direction of a connection, in pieces of any
size, and returns what they completed, in order::

    (HEAD, Head)      a request or response head
    (BODY, bytes)     body bytes, with any chunked framing already removed
    (END, None)       the message is complete (its body, and its trailers, are done)
    (UPGRADE, bytes)  the stream stops being HTTP here (CONNECT, or an upgrade) and these
                      bytes, read after the head, belong to the new protocol

Pipelined messages come out one after the other from one :meth:`MessageReader.feed`. The
proxy re-frames bodies itself (it writes the ``Content-Length`` or chunked framing it
chooses), so no byte of the peer's framing is passed on unchecked: that is where request
smuggling lives, and llhttp is strict about it. It refuses, and :class:`HttpError` reports:
``Content-Length`` with ``Transfer-Encoding``, duplicate or malformed ``Content-Length``, a
request ``Transfer-Encoding`` that does not end with ``chunked``, bad chunk sizes, bare LF,
obsolete line folding, and invalid characters in names and values. Heads are limited in size
and in number of fields here (llhttp has no limit of its own).

llhttp cannot be told that a response answers a ``HEAD`` (its body is then absent whatever
``Content-Length`` says): :meth:`MessageReader.expect_no_body` makes the reader cut the next
response after its head.
"""

from __future__ import annotations

import httptools

__all__ = [
    "BODY",
    "END",
    "HEAD",
    "LAST_CHUNK",
    "UPGRADE",
    "Head",
    "HttpError",
    "MessageReader",
    "chunk",
]

HEAD = 0
BODY = 1
END = 2
UPGRADE = 3

Event = tuple[int, object]

#: The end of a chunked body (no trailers: they are hop-by-hop for this proxy).
LAST_CHUNK = b"0\r\n\r\n"

#: Default limits on one head: its bytes (request line and fields) and its number of fields.
MAX_HEAD = 65536
MAX_FIELDS = 128


#: Free readers kept for reuse, per kind (request: False, response: True).
FREE_LIMIT = 256
_FREE: dict[bool, list[MessageReader]] = {False: [], True: []}


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body."""
    return b"%x\r\n%b\r\n" % (len(data), data)


class HttpError(Exception):
    """The peer broke HTTP/1.1; ``status`` is the answer a server would give (400, 431...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Head:
    """A request or response head as received, field names with the case they were sent in.

    ``length`` is the ``Content-Length`` (``None`` when absent), ``chunked`` whether the body
    is chunked; a response with neither (and a status that allows a body) runs until the
    connection closes. ``keep_alive`` is llhttp's reading of the version and ``Connection``.
    """

    __slots__ = (
        "chunked",
        "connection",
        "fields",
        "keep_alive",
        "length",
        "method",
        "reason",
        "status",
        "target",
        "upgrade",
        "version",
    )

    def __init__(self) -> None:
        self.method = ""
        self.target = b""
        self.status = 0
        self.reason = b""
        self.version = "1.1"
        self.fields: list[tuple[bytes, bytes]] = []
        self.length: int | None = None
        self.chunked = False
        self.keep_alive = True
        self.upgrade = False
        #: The lower-case tokens of the ``Connection`` fields (empty without one): the
        #: hop-by-hop fields they name are removed by a proxy.
        self.connection: frozenset[bytes] = frozenset()

    def get(self, name: bytes) -> bytes | None:
        """The first value of field ``name`` (lower-case), or None."""
        for field, value in self.fields:
            if field.lower() == name:
                return value
        return None

    @property
    def has_body(self) -> bool:
        """Whether a body follows this head by its framing (for requests)."""
        return self.chunked or bool(self.length)


class MessageReader:
    """Events from one direction of an HTTP/1.x connection; see the module docstring."""

    __slots__ = (
        "_clean",
        "_cut_head",
        "_events",
        "_fed_head",
        "_head",
        "_head_size",
        "_in_message",
        "_max_fields",
        "_max_head",
        "_parser",
        "_pending",
        "_response",
        "leftover",
        "partial",
    )

    def __init__(self, *, response: bool, max_head: int = MAX_HEAD, max_fields: int = MAX_FIELDS) -> None:
        self._response = response
        self._max_head = max_head
        self._max_fields = max_fields
        self._parser: httptools.HttpRequestParser | httptools.HttpResponseParser = (
            httptools.HttpResponseParser(self) if response else httptools.HttpRequestParser(self)
        )
        self._events: list[Event] = []
        self._head = Head()
        self._head_size = 0
        self._fed_head = 0
        #: A message has begun and its head is not complete yet (a deadline applies).
        self.partial = False
        self._cut_head = False
        self._pending = b""
        #: Bytes that came after a head cut by :meth:`expect_no_body` (a peer that sent more
        #: than it should have; the connection is not reused).
        self.leftover = b""
        #: Between messages, with nothing buffered: the parser could serve a new connection.
        self._clean = True
        self._in_message = False

    @classmethod
    def fresh(cls, *, response: bool) -> MessageReader:
        """A reader with the default limits, recycled if one is free (making an llhttp parser
        costs more than a whole small request's parsing)."""
        free = _FREE[response]
        if free:
            return free.pop()
        return cls(response=response)

    def recycle(self) -> None:
        """Give the reader back once its connection is done with it: kept for another one only
        if it is between messages (also after a CONNECT or an upgrade: llhttp resumes at the
        next message), never after an error or a message that asked to close."""
        if not self._clean or self._cut_head or self._pending or self.leftover:
            return
        if not self._head.keep_alive:
            return  # llhttp remembers "Connection: close" and would refuse the next message
        if self._max_head != MAX_HEAD or self._max_fields != MAX_FIELDS:
            return
        free = _FREE[self._response]
        if len(free) < FREE_LIMIT:
            self._events = []
            self._head = Head()
            self.partial = False
            free.append(self)

    # -- feeding -------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Event]:
        """Parse ``data``; the events it completed. Raises :class:`HttpError`."""
        events: list[Event] = []
        if not data:
            return events
        self._events = events
        self._clean = False  # until the message in progress is complete
        if self._cut_head:
            self._feed_cut(data)
            return events
        was_partial = self.partial
        bad = 502 if self._response else 400
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as exc:
            events.append((UPGRADE, data[exc.args[0] :]))
            # llhttp resumed after the upgrade at a message boundary: the parser could serve
            # another connection (this one is no longer HTTP).
            self._clean = not self._in_message
            return events
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__context__
            if isinstance(cause, HttpError):
                raise cause from None
            raise HttpError(bad, f"bad HTTP: {exc}") from cause
        except httptools.HttpParserError as exc:
            what = "response" if self._response else "request"
            raise HttpError(bad, f"bad HTTP {what}: {exc}") from None
        if self.partial:
            # llhttp holds a field that is still arriving without calling back: count what
            # was fed since the head began, so that one endless field cannot grow forever.
            self._fed_head = (self._fed_head if was_partial else 0) + len(data)
            if self._fed_head > self._max_head:
                raise HttpError(431 if not self._response else 502, f"head over {self._max_head} bytes")
        self._clean = not self._in_message
        return events

    def expect_no_body(self) -> None:
        """The next response answers a ``HEAD``: it ends with its head (a ``1xx`` before it
        is passed through as usual)."""
        self._cut_head = True

    def _feed_cut(self, data: bytes) -> None:
        buf = self._pending + data
        while self._cut_head and buf:
            stripped = buf.lstrip(b"\r\n")  # empty lines before a message are ignored (RFC 9112 §2.2)
            if not stripped:
                self._pending = buf[-2:]
                return
            buf = stripped
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self._max_head:
                    raise HttpError(502, f"response head over {self._max_head} bytes")
                self._pending = buf
                self.partial = True  # (the head has begun; a deadline applies)
                return
            head, buf = buf[: end + 4], buf[end + 4 :]
            main, parser = self._parser, httptools.HttpResponseParser(self)
            self._parser = parser  # (the callbacks ask it for the status and version)
            try:
                parser.feed_data(head)
            except httptools.HttpParserUpgrade:
                raise HttpError(502, "a 101 answer to a HEAD request") from None
            except httptools.HttpParserCallbackError as exc:
                cause = exc.__context__
                if isinstance(cause, HttpError):
                    raise cause from None
                raise HttpError(502, f"bad HTTP response: {exc}") from cause
            except httptools.HttpParserError as exc:
                raise HttpError(502, f"bad HTTP response: {exc}") from None
            finally:
                self._parser = main
            if 100 <= self._head.status < 200 and self._head.status != 101:
                continue  # an interim answer: the real one follows
            # llhttp waits for the body a HEAD answer does not have: end it here. (The main
            # parser saw none of this, so it is ready for the next response as it is.)
            if not self._events or self._events[-1][0] != END:
                self._events.append((END, None))
            self._cut_head = False
            self._in_message = False
            self._clean = not buf
        self._pending = b""
        self.leftover = buf

    # -- llhttp callbacks ------------------------------------------------------------------
    def on_message_begin(self) -> None:
        """llhttp: a message starts."""
        self._head = Head()
        self._head_size = 0
        self.partial = True
        self._in_message = True

    def on_url(self, url: bytes) -> None:
        """llhttp: (a piece of) the request target."""
        head = self._head
        head.target += url
        self._grow(len(url))

    def on_status(self, status: bytes) -> None:
        """llhttp: (a piece of) the reason phrase."""
        head = self._head
        head.reason += status
        self._grow(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        """llhttp: one field (trailer fields of a chunked body come here too, and are dropped)."""
        if not self.partial:
            return
        fields = self._head.fields
        fields.append((name, value))
        self._grow(len(name) + len(value) + 4)
        if len(fields) > self._max_fields:
            raise HttpError(431, f"more than {self._max_fields} header fields")

    def _grow(self, n: int) -> None:
        self._head_size += n
        if self._head_size > self._max_head:
            raise HttpError(431 if not self._response else 502, f"head over {self._max_head} bytes")

    def on_headers_complete(self) -> None:
        """llhttp: the head is complete; its framing is known."""
        parser = self._parser
        head = self._head
        self.partial = False
        head.version = parser.get_http_version()
        head.keep_alive = parser.should_keep_alive()
        head.upgrade = parser.should_upgrade()
        if self._response:
            assert isinstance(parser, httptools.HttpResponseParser)
            head.status = status = parser.get_status_code()
            if status < 100:
                raise HttpError(502, f"status {status} (below 100)")
            if 103 < status < 200:
                # llhttp would read a body after an interim answer it does not know: refuse
                # rather than pass unframed bytes on.
                raise HttpError(502, f"unsupported interim status {status}")
        else:
            assert isinstance(parser, httptools.HttpRequestParser)
            head.method = parser.get_method().decode("ascii")
        for name, value in head.fields:
            n = len(name)
            if n == 10 and name.lower() == b"connection":
                head.connection = head.connection | {t.strip().lower() for t in value.split(b",")}
            elif n == 14 and name.lower() == b"content-length":
                head.length = int(value)
            elif n == 17 and name.lower() == b"transfer-encoding":
                head.chunked = value.rsplit(b",", 1)[-1].strip().lower() == b"chunked"
                if head.version == "1.0" and not self._response:
                    # RFC 9112 §6.1: such a message is faulty (an HTTP/1.0 hop would not
                    # understand the framing): refuse it rather than guess.
                    raise HttpError(400, "Transfer-Encoding in an HTTP/1.0 request")
        if head.upgrade and (head.chunked or head.length) and not self._response:
            # llhttp hands over right after the head of an upgrade (or CONNECT) request, so a
            # body would be taken for the new protocol's first bytes.
            raise HttpError(400, "a body on an upgrade or CONNECT request is not supported")
        self._events.append((HEAD, head))

    def on_body(self, body: bytes) -> None:
        """llhttp: body bytes (de-chunked)."""
        self._events.append((BODY, body))

    def on_message_complete(self) -> None:
        """llhttp: the message is complete."""
        self.partial = False
        self._in_message = False
        self._events.append((END, None))
