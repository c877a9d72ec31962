"""Per-request records of the http-proxy mode, and their access-log lines (text and JSON).

A keep-alive HTTP/1.1 client connection carries many requests, so the connection's
:class:`~portway.session.Session` line alone says little about what the proxy did. The
http-proxy engine makes one :class:`HttpRecord` per request it forwards (or answers
itself) and hands it, finished, to :meth:`AccessLog.write_request
<portway.observe.accesslog.AccessLog.write_request>`, to
:meth:`WorkerStats.http_request <portway.observe.metrics.WorkerStats.http_request>` and,
when one is active, to a :class:`~portway.observe.har.HarWriter`.

Strategy:

- Rule 1: a record is a plain slotted object, created once per request and filled in by
  attribute stores; nothing is validated or copied on the hot path.
- Rule 2: the lines follow :mod:`portway.observe.accesslog` (same time format, sizes,
  durations, ``-`` for unknown) and its Rule 2: text that came from the client (method,
  URL, version, user name, error) can never break the line or add a field. In text it is
  written bare only if it is printable ASCII without spaces or ``"``, else quoted as a
  JSON string (ASCII escapes); JSON lines are ASCII-only.

Text format (fields separated by one space)::

    <request start, UTC, ms> <listener> <client> #<session id> <method> <url> HTTP/<version>
    -> <status> <upstream address> reused|new in=<request body> out=<response body>
    head=<d> total=<d> [user=<name>] [mitm] [error="<escaped>"]

e.g. ``2026-11-22T08:21:00.123Z proxy 10.1.2.3:51234 #17 GET http://example.com/a HTTP/1.1
-> 200 127.0.0.1:8081 reused in=0B out=1.2KiB head=1.2ms total=3.4ms user=alice``.

JSON keys (always all present, ``null`` when unknown): ``type`` (``"http"``, which tells
these lines from connection lines in the same log), ``time`` (request start, ISO 8601
UTC), ``start_unix``, ``id`` (the session id, shared by the requests of one connection and
its connection line), ``listener``, ``client``, ``user``, ``method``, ``url``,
``version``, ``status``, ``req_bytes``, ``resp_bytes``, ``upstream`` (``"host:port"``),
``reused``, ``head_s``, ``total_s``, ``intercepted`` and ``error`` (``""`` when none).
"""

from __future__ import annotations

import json
import time
from typing import Any

from portway.observe.accesslog import _ENCODER, _addr, _addr_or_none, _duration, _iso, _round, _size
from portway.session import Session

__all__ = ["HttpRecord", "format_json", "format_text"]


class HttpRecord:
    """One HTTP request forwarded (or answered) by the http-proxy mode.

    The engine creates it when a request head has been read, sets the facts as they
    become known, calls :meth:`finish` when the response is complete (or the request
    failed) and then hands it to the access log, the statistics and the HAR writer.

    Sizes are body bytes (heads not counted): ``req_bytes`` from the client, ``resp_bytes``
    to the client. Durations are seconds from ``start_mono``; ``None`` means "did not
    happen". ``request_headers``, ``response_headers`` and ``status_text`` are for the HAR
    writer only: the engine fills them only when one is active, since copying headers on
    every request would cost for nothing.
    """

    __slots__ = (
        "error",
        "head_s",
        "intercepted",
        "method",
        "req_bytes",
        "request_headers",
        "resp_bytes",
        "response_headers",
        "reused",
        "session",
        "start_mono",
        "start_wall",
        "status",
        "status_text",
        "total_s",
        "upstream",
        "url",
        "version",
    )

    def __init__(self, session: Session, method: str, url: str, version: str, start_mono: float) -> None:
        #: The client connection this request came on (id, listener, client, route = user).
        self.session = session
        #: The method as sent, e.g. ``"GET"``.
        self.method = method
        #: The absolute URL as the client meant it (``https://...`` inside intercepted TLS).
        self.url = url
        #: The client's HTTP version without ``HTTP/``: ``"1.1"`` or ``"1.0"``.
        self.version = version
        self.start_mono = start_mono
        self.start_wall = time.time()
        #: The final status sent to the client; ``None`` if no response was sent.
        self.status: int | None = None
        self.req_bytes = 0
        self.resp_bytes = 0
        #: The origin address dialled, if any.
        self.upstream: tuple[str, int] | None = None
        #: The upstream connection came from the idle pool (not dialled for this request).
        self.reused = False
        #: Seconds from the request start to the response head received from upstream.
        self.head_s: float | None = None
        #: Seconds from the request start to the response complete (set by :meth:`finish`).
        self.total_s: float | None = None
        #: The request came inside TLS that the proxy intercepted.
        self.intercepted = False
        #: Empty, or a short reason when the proxy answered itself or the request failed.
        self.error = ""
        #: HAR only (else ``None``): the request headers as sent to upstream.
        self.request_headers: list[tuple[bytes, bytes]] | None = None
        #: HAR only (else ``None``): the response headers as sent to the client.
        self.response_headers: list[tuple[bytes, bytes]] | None = None
        #: HAR only (else ``""``): the reason phrase of the response.
        self.status_text = ""

    def finish(self, now_mono: float) -> None:
        """Set :attr:`total_s`: the request is over (response complete, or it failed)."""
        self.total_s = now_mono - self.start_mono


def _word(text: str) -> str:
    """``text`` as one field: bare if it is printable ASCII without space or ``"``, else a
    quoted JSON string (ASCII escapes), so no client text can end the line or add a field."""
    if text and text.isascii() and text.isprintable() and " " not in text and '"' not in text:
        return text
    return json.dumps(text)


def format_text(rec: HttpRecord) -> str:
    """One human-readable line for a request, without a trailing newline."""
    s = rec.session
    status = rec.status
    line = (
        f"{_iso(rec.start_wall)} {s.listener} {_addr(s.client)} #{s.id}"
        f" {_word(rec.method)} {_word(rec.url)} HTTP/{_word(rec.version)}"
        f" -> {'-' if status is None else status} {_addr(rec.upstream)} {'reused' if rec.reused else 'new'}"
        f" in={_size(rec.req_bytes)} out={_size(rec.resp_bytes)}"
        f" head={_duration(rec.head_s)} total={_duration(rec.total_s)}"
    )
    if s.route is not None:
        line += f" user={_word(s.route)}"
    if rec.intercepted:
        line += " mitm"
    if rec.error:
        line += f" error={json.dumps(rec.error)}"
    return line


def format_json(rec: HttpRecord) -> str:
    """One JSON object (ASCII only) for a request, without a trailing newline."""
    s = rec.session
    record: dict[str, Any] = {
        "type": "http",
        "time": _iso(rec.start_wall),
        "start_unix": round(rec.start_wall, 6),
        "id": s.id,
        "listener": s.listener,
        "client": _addr(s.client),
        "user": s.route,
        "method": rec.method,
        "url": rec.url,
        "version": rec.version,
        "status": rec.status,
        "req_bytes": rec.req_bytes,
        "resp_bytes": rec.resp_bytes,
        "upstream": _addr_or_none(rec.upstream),
        "reused": rec.reused,
        "head_s": _round(rec.head_s),
        "total_s": _round(rec.total_s),
        "intercepted": rec.intercepted,
        "error": rec.error,
    }
    return _ENCODER.encode(record)
