"""The admin endpoint: a small HTTP/1.1 server for ``/metrics``, ``/stats``, ``/healthz`` and ``/``.

It runs in the supervisor, off the data path, so it favours being obviously correct over
being fast. Strategy:

- Rule 1: every read is bounded. The request head (request line and headers) must fit
  in :data:`HEAD_LIMIT` bytes (else 431) and arrive within the read deadline (else 408).
  A request body is never read; the connection is closed after each response, once the
  client has closed its side or after a short, bounded linger (so that unread input
  does not turn the close into a reset that destroys the response).
- Rule 2: bad input gets a proper status: 400 for a malformed head, 404 for an unknown
  path, 405 (with ``Allow``) for a method other than GET/HEAD, 505 for HTTP other than 1.x.
- Rule 3: nothing a request does can stop the server. A content callable that raises gives
  a 500 and a log line; one that takes longer than the handler deadline gives a 503.

The content comes from three callables given by the supervisor: ``metrics()`` and
``stats()`` return the rendered bytes, ``health()`` returns ``(ok, reason)``.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any
from urllib.parse import urlsplit

__all__ = ["DASHBOARD_HTML", "HEAD_LIMIT", "AdminServer"]

log = logging.getLogger("portway.admin")

HEAD_LIMIT = 8192
"""Largest accepted request head (request line, headers and the blank line), in bytes."""

LINGER_TIMEOUT = 1.0
"""After a response, how long to wait (seconds) for the client to close its side."""

LINGER_LIMIT = 64 * 1024
"""After a response, how many unread bytes to discard before closing anyway."""

CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_TEXT = "text/plain; charset=utf-8"
CONTENT_TYPE_HTML = "text/html; charset=utf-8"

_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_REQUEST_LINE = re.compile(rf"({_TOKEN}) ([^\s]+) HTTP/(\d)\.(\d)")
_HEADER_LINE = re.compile(rf"({_TOKEN}):[ \t]*(.*?)[ \t]*")
_ALLOWED = ("GET", "HEAD")


class _HttpError(Exception):
    """A request that gets an error status instead of content."""

    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _head_end(buf: bytes | bytearray) -> int:
    """Index just past the blank line that ends a request head, or -1 if not there yet."""
    crlf = buf.find(b"\r\n\r\n")
    lf = buf.find(b"\n\n")
    ends = [i + 4 for i in (crlf,) if i >= 0] + [i + 2 for i in (lf,) if i >= 0]
    return min(ends) if ends else -1


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    """Parse a request head into ``(method, path, headers)``; raise :class:`_HttpError`."""
    text = head.decode("latin-1")
    lines = [line.removesuffix("\r") for line in text.split("\n")]
    while lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "empty request")
    m = _REQUEST_LINE.fullmatch(lines[0])
    if m is None:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed request line")
    method, target, major = m.group(1), m.group(2), m.group(3)
    if major != "1":
        raise _HttpError(HTTPStatus.HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.x is supported")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        hm = _HEADER_LINE.fullmatch(line)
        if hm is None:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "malformed header line")
        headers[hm.group(1).lower()] = hm.group(2)
    if target.startswith("/"):
        path = target.partition("?")[0]
    elif target.startswith(("http://", "https://")):
        path = urlsplit(target).path or "/"
    else:
        raise _HttpError(HTTPStatus.BAD_REQUEST, "unsupported request target")
    return method, path, headers


class AdminServer:
    """The admin HTTP server; one per supervisor.

    Args:
        host: address to bind, e.g. ``"127.0.0.1"``.
        port: port to bind; 0 picks a free one (see :meth:`start`).
        metrics: returns the Prometheus text for ``/metrics``.
        stats: returns the JSON document for ``/stats``.
        health: returns ``(True, "")`` when healthy, else ``(False, reason)``.
        read_timeout: deadline (seconds) for the whole request head to arrive.
        handler_timeout: deadline (seconds) for a content callable.
        write_timeout: deadline (seconds) for the response to be written.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        metrics: Callable[[], Awaitable[bytes]],
        stats: Callable[[], Awaitable[bytes]],
        health: Callable[[], Awaitable[tuple[bool, str]]],
        read_timeout: float = 5.0,
        handler_timeout: float = 10.0,
        write_timeout: float = 10.0,
    ) -> None:
        self._host = host
        self._port = port
        self._metrics = metrics
        self._stats = stats
        self._health = health
        self._read_timeout = read_timeout
        self._handler_timeout = handler_timeout
        self._write_timeout = write_timeout
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._routes: dict[str, Callable[[], Awaitable[tuple[HTTPStatus, str, bytes]]]] = {
            "/": self._dashboard,
            "/metrics": self._get_metrics,
            "/stats": self._get_stats,
            "/healthz": self._get_health,
        }

    async def start(self) -> tuple[str, int]:
        """Bind and start serving; return the bound ``(host, port)``."""
        self._server = await asyncio.start_server(self._on_connection, self._host, self._port)
        sockname = self._server.sockets[0].getsockname()
        log.info("admin endpoint listening on %s:%d", sockname[0], sockname[1])
        return str(sockname[0]), int(sockname[1])

    async def close(self) -> None:
        """Stop accepting, abort requests in progress and wait until all is closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()

    # -- connection handling -------------------------------------------------------------

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("admin: unexpected error while serving a request")
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()

    async def _read_head(self, reader: asyncio.StreamReader) -> bytes | None:
        """Read one request head; ``None`` if the client left before sending anything."""
        buf = bytearray()
        while True:
            end = _head_end(buf)
            if end >= 0:
                if end > HEAD_LIMIT:
                    break
                return bytes(buf[:end])
            if len(buf) >= HEAD_LIMIT:
                break
            chunk = await reader.read(HEAD_LIMIT + 4 - len(buf))
            if not chunk:
                if buf:
                    raise _HttpError(HTTPStatus.BAD_REQUEST, "incomplete request head")
                return None
            buf += chunk
        raise _HttpError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"request head exceeds {HEAD_LIMIT} bytes"
        )

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = "-"
        path = "-"
        try:
            try:
                async with asyncio.timeout(self._read_timeout):
                    head = await self._read_head(reader)
            except TimeoutError:
                raise _HttpError(HTTPStatus.REQUEST_TIMEOUT, "request head not received in time") from None
            if head is None:
                return
            method, path, _headers = _parse_head(head)
            status, ctype, body = await self._dispatch(method, path)
            extra: dict[str, str] = {}
        except _HttpError as e:
            status, ctype, body = e.status, CONTENT_TYPE_TEXT, (e.message + "\n").encode()
            extra = {"Allow": ", ".join(_ALLOWED)} if e.status == HTTPStatus.METHOD_NOT_ALLOWED else {}
        log.debug("admin: %s %s -> %d", method, path, status)
        await self._respond(writer, status, ctype, body, head_only=method == "HEAD", extra=extra)
        await self._linger(reader, writer)

    async def _linger(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Half-close, then discard what the client still sends, within bounds.

        Closing a socket with unread input makes the kernel send a reset, which can
        destroy the response before the client reads it (an oversized head, a body we
        never read). So signal EOF and wait, briefly, for the client to close first.
        """
        if writer.can_write_eof():
            writer.write_eof()
        discarded = 0
        try:
            async with asyncio.timeout(LINGER_TIMEOUT):
                while discarded < LINGER_LIMIT:
                    chunk = await reader.read(16384)
                    if not chunk:
                        return
                    discarded += len(chunk)
        except (TimeoutError, ConnectionError):
            pass

    async def _dispatch(self, method: str, path: str) -> tuple[HTTPStatus, str, bytes]:
        route = self._routes.get(path)
        if route is None:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        if method not in _ALLOWED:
            raise _HttpError(HTTPStatus.METHOD_NOT_ALLOWED, f"method {method} not allowed")
        try:
            async with asyncio.timeout(self._handler_timeout) as deadline:
                return await route()
        except TimeoutError:
            if not deadline.expired():
                log.exception("admin: handler for %s failed", path)
                raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the log") from None
            log.warning("admin: handler for %s took longer than %.1fs", path, self._handler_timeout)
            raise _HttpError(HTTPStatus.SERVICE_UNAVAILABLE, "timed out gathering data") from None
        except Exception:
            log.exception("admin: handler for %s failed", path)
            raise _HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the log") from None

    async def _respond(
        self,
        writer: asyncio.StreamWriter,
        status: HTTPStatus,
        ctype: str,
        body: bytes,
        *,
        head_only: bool,
        extra: dict[str, str],
    ) -> None:
        lines = [
            f"HTTP/1.1 {status.value} {status.phrase}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "X-Content-Type-Options: nosniff",
            "Connection: close",
        ]
        if ctype == CONTENT_TYPE_HTML:
            lines.append(
                "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; "
                "style-src 'unsafe-inline'; connect-src 'self'"
            )
        lines.extend(f"{k}: {v}" for k, v in extra.items())
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head_only:
            data += body
        async with asyncio.timeout(self._write_timeout):
            writer.write(data)
            await writer.drain()

    # -- routes --------------------------------------------------------------------------

    async def _dashboard(self) -> tuple[HTTPStatus, str, bytes]:
        return HTTPStatus.OK, CONTENT_TYPE_HTML, _DASHBOARD_BYTES

    async def _get_metrics(self) -> tuple[HTTPStatus, str, bytes]:
        return HTTPStatus.OK, CONTENT_TYPE_METRICS, await self._metrics()

    async def _get_stats(self) -> tuple[HTTPStatus, str, bytes]:
        return HTTPStatus.OK, CONTENT_TYPE_JSON, await self._stats()

    async def _get_health(self) -> tuple[HTTPStatus, str, bytes]:
        ok, reason = await self._health()
        if ok:
            return HTTPStatus.OK, CONTENT_TYPE_TEXT, b"ok\n"
        text = (reason or "unhealthy").rstrip("\n") + "\n"
        return HTTPStatus.SERVICE_UNAVAILABLE, CONTENT_TYPE_TEXT, text.encode()


DASHBOARD_HTML = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Portway</title>
<meta name="viewport" content="width=device-width,initial-scale=1">
<style>
body{font:14px system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.3em;margin:0}h2{font-size:1.05em;margin:1.4em 0 .4em}
table{border-collapse:collapse;background:#fff}
th,td{padding:.25em .8em;border-bottom:1px solid #e4e4e4;text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}th{background:#f0f0f0}
.up{color:#080;font-weight:600}.down{color:#c00;font-weight:600}
tr.be td{font-weight:600;background:#f6f6f6}tr.srv td:first-child{padding-left:2em}
#status{color:#666;margin:.3em 0}#status.err{color:#c00}td.l{text-align:left}
</style></head><body>
<h1>Portway</h1><div id="status">loading…</div>
<h2>Listeners</h2>
<table><thead><tr><th>listener</th><th>active</th><th>max</th><th>total</th><th>in/s</th>
<th>out/s</th><th>bytes in</th><th>bytes out</th><th>accept errors</th></tr></thead>
<tbody id="listeners"></tbody></table>
<h2>Backends</h2>
<table><thead><tr><th>backend / server</th><th>address</th><th>state</th><th>active</th>
<th>total</th><th>connect failures</th><th>in/s</th><th>out/s</th></tr></thead>
<tbody id="backends"></tbody></table>
<h2>Connections ended, by reason</h2>
<table><thead><tr><th>listener</th><th>reason</th><th>code</th><th>count</th></tr></thead>
<tbody id="ends"></tbody></table>
<h2>TLS handshakes (terminated here)</h2>
<table><thead><tr><th>listener</th><th>version</th><th>ALPN</th><th>count</th></tr></thead>
<tbody id="tls"></tbody></table>
<h2>HTTP requests (http-proxy)</h2>
<table><thead><tr><th>listener</th><th>method</th><th>status</th><th>count</th></tr></thead>
<tbody id="http"></tbody></table>
<h2>Workers</h2>
<table><thead><tr><th>pid</th><th>active</th><th>total</th><th>bytes in</th><th>bytes out</th>
</tr></thead><tbody id="workers"></tbody></table>
<script>
"use strict";
const last = new Map();
function bytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(Math.round(n))) + " " + u[i];
}
function dur(s) {
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600);
  const m = Math.floor(s % 3600 / 60);
  return (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "m " + (s % 60) + "s";
}
function rates(key, t, bin, bout) {
  const p = last.get(key);
  last.set(key, {t: t, bin: bin, bout: bout});
  if (!p || t <= p.t || bin < p.bin || bout < p.bout) return ["-", "-"];
  const dt = t - p.t;
  return [bytes((bin - p.bin) / dt) + "/s", bytes((bout - p.bout) / dt) + "/s"];
}
function row(cells, cls) {
  const tr = document.createElement("tr");
  if (cls) tr.className = cls;
  for (const c of cells) {
    const td = document.createElement("td");
    if (c !== null && typeof c === "object") { td.textContent = c.text; td.className = c.cls; }
    else td.textContent = String(c);
    tr.appendChild(td);
  }
  return tr;
}
function fill(id, rows) { document.getElementById(id).replaceChildren(...rows); }
function render(s) {
  const t = s.time, sup = s.supervisor || {};
  const ls = Object.entries(s.listeners || {}).sort();
  fill("listeners", ls.map(([name, l]) => {
    const [rin, rout] = rates("l:" + name, t, l.bytes_in, l.bytes_out);
    return row([name, l.active, l.max_connections || "-", l.connections_total, rin, rout,
                bytes(l.bytes_in), bytes(l.bytes_out), l.accept_errors]);
  }));
  const rows = [];
  for (const [name, b] of Object.entries(s.backends || {}).sort()) {
    const [rin, rout] = rates("b:" + name, t, b.bytes_in, b.bytes_out);
    const srv = Object.entries(b.servers || {}).sort();
    const up = srv.filter(([, v]) => v.up).length;
    rows.push(row([name, "", up + "/" + srv.length + " up", b.active, b.connections_total,
                   "", rin, rout], "be"));
    for (const [sn, v] of srv) {
      const st = v.up ? "up" : (v.up_workers ? "down (" + v.up_workers + "/" + v.workers + " up)" : "down");
      rows.push(row([sn + (v.backup ? " (backup)" : ""), v.address, {text: st, cls: v.up ? "up" : "down"},
                     v.active, v.connections_total, v.connect_failures, "", ""], "srv"));
    }
  }
  fill("backends", rows);
  const codes = s.reason_codes || {};
  const ends = [];
  for (const [name, counts] of Object.entries(s.terminations || {}).sort()) {
    for (const [reason, n] of Object.entries(counts).sort((a, b) => b[1] - a[1])) {
      if (n) ends.push(row([name, {text: reason, cls: "l"}, codes[reason] || "", n]));
    }
  }
  fill("ends", ends.length ? ends : [row(["(none yet)", "", "", ""])]);
  const shakes = [];
  for (const [name, counts] of Object.entries(s.tls_handshakes || {}).sort()) {
    for (const [key, n] of Object.entries(counts).sort((a, b) => b[1] - a[1])) {
      const [version, alpn] = key.split(" ");
      shakes.push(row([name, {text: version, cls: "l"}, {text: alpn, cls: "l"}, n]));
    }
  }
  fill("tls", shakes.length ? shakes : [row(["(none)", "", "", ""])]);
  const reqs = [];
  for (const [name, counts] of Object.entries(s.http_requests || {}).sort()) {
    for (const [key, n] of Object.entries(counts).sort((a, b) => b[1] - a[1])) {
      const [method, code] = key.split(" ");
      reqs.push(row([name, {text: method, cls: "l"}, {text: code, cls: "l"}, n]));
    }
  }
  fill("http", reqs.length ? reqs : [row(["(none)", "", "", ""])]);
  fill("workers", (s.workers || []).map(w => row([w.pid, w.active, w.connections_total,
                                                  bytes(w.bytes_in), bytes(w.bytes_out)])));
  const st = document.getElementById("status");
  st.className = "";
  st.textContent = "version " + sup.version + " · " + (sup.workers || []).length + " workers · up " +
    dur(sup.uptime_s || 0) + " · config " + (sup.config_source || "-") + " · reloads " +
    sup.reloads_total + " (" + sup.reload_failures_total + " failed) · updated " +
    new Date(t * 1000).toLocaleTimeString();
}
async function poll() {
  try {
    const r = await fetch("stats", {cache: "no-store"});
    if (!r.ok) throw new Error("HTTP " + r.status);
    render(await r.json());
  } catch (e) {
    const st = document.getElementById("status");
    st.className = "err";
    st.textContent = "cannot load stats: " + e.message;
  } finally {
    setTimeout(poll, 1000);
  }
}
poll();
</script></body></html>
"""
"""The self-contained dashboard served at ``/``; it polls ``stats`` every second."""

_DASHBOARD_BYTES = DASHBOARD_HTML.encode()
