"""Intercepted HTTP requests as a HAR 1.2 file, for browsers' dev tools and HAR viewers.

HAR (HTTP Archive, http://www.softwareishard.com/blog/har-12-spec/) is the JSON document
that browsers' network panels and mitmproxy export. The http-proxy mode can keep one of the
requests it sees, mostly to debug TLS interception: what did the client really ask, and
what came back.

Strategy:

- Rule 1: :meth:`HarWriter.add` is cheap and never touches the disk: it builds the entry
  and keeps it, already encoded as JSON, in a bounded deque (the oldest entry is dropped
  past ``limit``, and counted).
- Rule 2: the file on disk is always one whole HAR document. :meth:`HarWriter.flush`
  writes the full document to a temporary file (mode 0600: headers carry cookies and
  credentials) in the same directory and renames it over ``path``, so a reader sees the
  old document or the new one, never half of one. It does nothing if nothing was added
  since the last flush. Its cost grows with the number of entries kept (a join and one
  write of the document), so call it from a slow timer (about every second) and at exit.
- Rule 3: the HAR file never takes the worker down. A failed write is reported once on
  the ``portway.har`` logger (again only after a write has succeeded) and retried at the
  next flush, entries kept.

Each worker process writes its own file: the caller passes a path with the worker index
already in it (e.g. ``capture.1.har``), and :class:`HarWriter` writes exactly ``path``.

What a record cannot tell is written as HAR allows: headers and sizes of heads are not
measured (``headersSize`` -1), no cookies are parsed out (``[]``), no body is kept. The
spec requires ``timings.send``, ``wait`` and ``receive`` to be non-negative, so none is -1:
``send`` is 0 (the request is forwarded as it arrives), ``wait`` is until the response head
(the whole request when there was none from upstream, e.g. the proxy answered itself),
``receive`` the rest, 0 when unknown; ``time`` is their sum, so the total duration. A
request that got no response has status 0, as in browsers' exports; the proxy's reason,
if any, is in the custom field ``_error``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from portway import __version__
from portway.observe.accesslog import _iso
from portway.observe.httplog import HttpRecord

__all__ = ["HarWriter", "entry"]

log = logging.getLogger("portway.har")

_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""Compact, ASCII-only JSON: valid UTF-8 whatever the headers held."""


def _headers(headers: list[tuple[bytes, bytes]] | None) -> list[dict[str, str]]:
    if not headers:
        return []
    return [{"name": n.decode("latin-1"), "value": v.decode("latin-1")} for n, v in headers]


def _header(headers: list[dict[str, str]], name: str) -> str:
    """The first header called ``name`` (case-insensitive, lower-case ``name``), or ``""``."""
    for h in headers:
        if h["name"].lower() == name:
            return h["value"]
    return ""


def _query(url: str) -> list[dict[str, str]]:
    try:
        query = urlsplit(url).query
    except ValueError:  # e.g. an unbalanced "[" in the host
        return []
    if not query:
        return []
    return [{"name": k, "value": v} for k, v in parse_qsl(query, keep_blank_values=True)]


def _ms(seconds: float | None) -> float:
    return 0.0 if seconds is None else round(max(seconds, 0.0) * 1000, 3)


def entry(rec: HttpRecord) -> dict[str, Any]:
    """The HAR 1.2 ``entry`` object for a finished request."""
    req_headers = _headers(rec.request_headers)
    resp_headers = _headers(rec.response_headers)
    head, total = rec.head_s, rec.total_s
    if head is None:  # no response head from upstream: all the time went waiting
        wait, receive = _ms(total), 0.0
    else:
        wait, receive = _ms(head), (0.0 if total is None else _ms(total - head))
    answered = rec.status is not None
    e: dict[str, Any] = {
        "startedDateTime": _iso(rec.start_wall),
        "time": round(wait + receive, 3),
        "request": {
            "method": rec.method,
            "url": rec.url,
            "httpVersion": f"HTTP/{rec.version}",
            "cookies": [],
            "headers": req_headers,
            "queryString": _query(rec.url),
            "headersSize": -1,
            "bodySize": rec.req_bytes,
        },
        "response": {
            "status": rec.status if answered else 0,
            "statusText": rec.status_text,
            "httpVersion": "HTTP/1.1" if answered else "",
            "cookies": [],
            "headers": resp_headers,
            "content": {"size": rec.resp_bytes, "mimeType": _header(resp_headers, "content-type")},
            "redirectURL": _header(resp_headers, "location"),
            "headersSize": -1,
            "bodySize": rec.resp_bytes,
        },
        "cache": {},
        "timings": {"send": 0, "wait": wait, "receive": receive},
        "connection": str(rec.session.id),
    }
    if rec.upstream is not None:
        e["serverIPAddress"] = rec.upstream[0]
    if rec.error:
        e["_error"] = rec.error
    return e


class HarWriter:
    """Intercepted requests as a HAR 1.2 file (what browsers' dev tools and mitmproxy export).

    Args:
        path: the file to write; replaced whole at each :meth:`flush`. With several
            workers, each worker has its own writer and path (the caller inserts the
            worker index); this class writes exactly ``path``.
        limit: most entries kept (the newest); older ones are dropped and counted in
            ``log.comment``.
        creator_version: the version written in ``log.creator``.

    Raises:
        ValueError: if ``limit`` is less than 1.
    """

    __slots__ = ("_closed", "_creator_version", "_dirty", "_dropped", "_entries", "_path", "_warned", "limit")

    def __init__(self, path: str, *, limit: int = 10_000, creator_version: str = __version__) -> None:
        if limit < 1:
            raise ValueError(f"HAR entry limit: expected at least 1, got {limit}")
        self._path = path
        #: Most entries kept.
        self.limit = limit
        self._creator_version = creator_version
        self._entries: deque[str] = deque(maxlen=limit)
        self._dropped = 0
        self._dirty = False
        self._warned = False
        self._closed = False

    @property
    def path(self) -> str:
        """The HAR file this writer replaces."""
        return self._path

    @property
    def dropped(self) -> int:
        """Entries dropped so far because more than ``limit`` were added."""
        return self._dropped

    def __len__(self) -> int:
        """Entries kept now."""
        return len(self._entries)

    def add(self, rec: HttpRecord) -> None:
        """Keep one finished request (the engine fills its headers and ``status_text``).

        Ignored after :meth:`close`.
        """
        if self._closed:
            return
        if len(self._entries) == self.limit:
            self._dropped += 1
        self._entries.append(_ENCODER.encode(entry(rec)))
        self._dirty = True

    def document(self) -> str:
        """The whole HAR document as it would be written now."""
        head: dict[str, Any] = {
            "version": "1.2",
            "creator": {"name": "portway", "version": self._creator_version},
            "pages": [],
        }
        if self._dropped:
            head["comment"] = (
                f"{self._dropped} older entries dropped: portway keeps the last {self.limit} requests"
            )
        opening = _ENCODER.encode(head)[:-1]  # without its closing "}"
        return '{"log":' + opening + ',"entries":[' + ",".join(self._entries) + "]}}\n"

    def flush(self) -> None:
        """Write the whole document if anything was added since the last flush.

        Atomic (a temporary file in the same directory, then :func:`os.replace`) and never
        raises: a failure is logged once and retried at the next flush.
        """
        if not self._dirty:
            return
        data = self.document().encode("ascii")
        directory = os.path.dirname(self._path) or "."
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(
                dir=directory, prefix="." + os.path.basename(self._path) + ".", suffix=".tmp"
            )  # mkstemp creates the file with mode 0600
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self._path)
            tmp = None
        except OSError as e:
            if not self._warned:
                log.warning("HAR file %s: write failed, will retry at the next flush: %s", self._path, e)
                self._warned = True
        else:
            self._dirty = False
            self._warned = False
        finally:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass

    def close(self) -> None:
        """Final flush; later :meth:`add` calls are ignored."""
        self.flush()
        self._closed = True
