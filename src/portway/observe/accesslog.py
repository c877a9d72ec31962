"""The access log: one line per finished :class:`~portway.session.Session`, text or JSON.

Strategy:

- Rule 1: per connection, the worker pays one format and one list append
  (:meth:`AccessLog.write`). Lines are written out in batches by :meth:`AccessLog.flush`,
  which the worker calls from a periodic timer (about every 0.2 s) and at exit, or when
  the buffer grows past :data:`BUFFER_LIMIT`.
- Rule 2: a line is always exactly one line. Text that came from outside (the ``detail``)
  is quoted and escaped; JSON is ASCII-only, so no byte in it can split a line.
- Rule 3: the log never takes the worker down. A failed write is reported once on the
  ``portway.accesslog`` logger and the batch is dropped.

Text format (fields separated by one space, ``-`` for anything unknown)::

    <accept time, UTC, ms> <listener> <client> -> <backend>/<server> <server address>
    in=<bytes from client> out=<bytes to client> sniff=<d> connect=<d> total=<d>
    retries=<n> end=<reason> (<code>) [sni=<name> route=<route>] [tls=<version> alpn=<protocol>]
    [peer=<tcp peer>] [detail="<escaped>"]

e.g. ``2026-11-22T08:21:00.123Z db 10.1.2.3:51234 -> postgres/pg1 10.0.0.5:5432 in=1.2KiB
out=3.4MiB sniff=0.1ms connect=1.2ms total=12.3s retries=0 end=client_closed (CD)``.
``peer=`` appears when the client address came from a PROXY header and differs from the
TCP peer.

JSON keys (always all present, ``null`` when unknown): ``time`` (accept, ISO 8601 UTC),
``start_unix``, ``end`` (ISO 8601 UTC), ``end_unix``, ``id``, ``listener``, ``client``,
``peer``, ``frontend``, ``sni``, ``route``, ``tls_version`` and ``alpn`` (TLS terminated
here), ``backend``, ``server``, ``server_addr`` (addresses as
``"host:port"``, IPv6 hosts in brackets), ``bytes_in``, ``bytes_out``, ``sniff_s``,
``connect_s``, ``total_s``, ``retries``, ``reason`` (the :class:`Reason` value), ``code``
(HAProxy-style, e.g. ``"CD"``), ``message`` and ``detail``.

The http-proxy mode also writes one line per HTTP request it forwards or answers
(:meth:`AccessLog.write_request`), besides the line of the connection that carried it:
formats in :mod:`portway.observe.httplog`. They share the session id (``#17`` in text,
``"id"`` in JSON, where request lines also carry ``"type": "http"``).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING, Any

from portway.session import Session

if TYPE_CHECKING:
    from portway.observe.httplog import HttpRecord

__all__ = ["BUFFER_LIMIT", "FORMATS", "AccessLog", "format_json", "format_text"]

log = logging.getLogger("portway.accesslog")

BUFFER_LIMIT = 64 * 1024
"""Buffered characters after which :meth:`AccessLog.write` flushes on its own."""

_ENCODER = json.JSONEncoder(separators=(",", ":"))
"""Compact, ASCII-only JSON (so no character in a value can break the line)."""

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def _addr(addr: tuple[str, int] | None) -> str:
    """``host:port``, with an IPv6 host in brackets; ``-`` when unknown."""
    if addr is None:
        return "-"
    host, port = addr[0], addr[1]
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def _addr_or_none(addr: tuple[str, int] | None) -> str | None:
    return None if addr is None else _addr(addr)


def _size(n: int) -> str:
    """Bytes for people: ``512B``, ``1.2KiB``, ``3.4MiB``."""
    value = float(n)
    for unit in _UNITS:
        if value < 1024 or unit == _UNITS[-1]:
            return f"{n}B" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float | None) -> str:
    """A duration for people: ``0.1ms``, ``12.3s``, ``3725s``; ``-`` when it did not happen."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{seconds:.0f}s"


_iso_seconds: dict[int, str] = {}
"""Recently formatted whole seconds (``YYYY-mm-ddTHH:MM:SS.``), so most lines skip strftime."""


def _iso(unix: float) -> str:
    """``2026-11-22T08:21:00.123Z``: UTC, millisecond precision."""
    second, ms = divmod(round(unix * 1_000_000) // 1000, 1000)
    prefix = _iso_seconds.get(second)
    if prefix is None:
        if len(_iso_seconds) >= 256:
            _iso_seconds.clear()
        prefix = _iso_seconds[second] = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
    return f"{prefix}{ms:03d}Z"


def _round(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


def format_text(s: Session) -> str:
    """One human-readable line for a session, without a trailing newline."""
    route = f"{s.backend or '-'}/{s.server or '-'}"
    end = "end=- (--)" if s.reason is None else f"end={s.reason.value} ({s.reason.code})"
    line = (
        f"{_iso(s.start_wall)} {s.listener} {_addr(s.client)} -> {route} {_addr(s.server_addr)}"
        f" in={_size(s.bytes_in)} out={_size(s.bytes_out)}"
        f" sniff={_duration(s.sniff_s)} connect={_duration(s.connect_s)} total={_duration(s.total_s)}"
        f" retries={s.retries} {end}"
    )
    if s.sni is not None or s.route is not None:
        line += f" sni={s.sni or '-'} route={s.route or '-'}"
    if s.tls_version is not None:
        line += f" tls={s.tls_version} alpn={s.alpn or '-'}"
    if s.client != s.peer:
        line += f" peer={_addr(s.peer)}"
    if s.detail:
        line += f" detail={json.dumps(s.detail)}"
    return line


def format_json(s: Session) -> str:
    """One JSON object (ASCII only) for a session, without a trailing newline."""
    end_unix = None if s.total_s is None else s.start_wall + s.total_s
    record: dict[str, Any] = {
        "time": _iso(s.start_wall),
        "start_unix": round(s.start_wall, 6),
        "end": None if end_unix is None else _iso(end_unix),
        "end_unix": None if end_unix is None else round(end_unix, 6),
        "id": s.id,
        "listener": s.listener,
        "client": _addr(s.client),
        "peer": _addr(s.peer),
        "frontend": _addr(s.frontend),
        "sni": s.sni,
        "route": s.route,
        "tls_version": s.tls_version,
        "alpn": s.alpn,
        "backend": s.backend,
        "server": s.server,
        "server_addr": _addr_or_none(s.server_addr),
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "sniff_s": _round(s.sniff_s),
        "connect_s": _round(s.connect_s),
        "total_s": _round(s.total_s),
        "retries": s.retries,
        "reason": None if s.reason is None else s.reason.value,
        "code": None if s.reason is None else s.reason.code,
        "message": None if s.reason is None else s.reason.message,
        "detail": s.detail,
    }
    return _ENCODER.encode(record)


FORMATS = {"text": format_text, "json": format_json}
"""The access-log formats by name, as written in the ``[log] format`` setting."""


class AccessLog:
    """A buffered access log.

    Args:
        target: ``"stdout"``, ``"stderr"``, ``"off"`` or a file path (opened for
            appending, created if missing).
        fmt: ``"text"`` or ``"json"``.

    Raises:
        ValueError: for an unknown ``fmt``.
        OSError: if the file cannot be opened.
    """

    __slots__ = ("_buffer", "_fmt", "_path", "_size", "_stream", "_target", "_warned")

    def __init__(self, target: str, fmt: str) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"access log format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
        self._target = target
        self._fmt = FORMATS[fmt]
        self._buffer: list[str] = []
        self._size = 0
        self._warned = False
        self._path: str | None = None
        self._stream: IO[str] | None = None
        if target not in ("stdout", "stderr", "off"):
            self._path = target
            self._stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - kept open until close()

    @property
    def enabled(self) -> bool:
        """False when the target is ``"off"`` or the log was closed."""
        return self._target != "off"

    def write(self, s: Session) -> None:
        """Buffer one line for a finished session; flush if the buffer is full."""
        if self._target == "off":
            return
        line = self._fmt(s)
        self._buffer.append(line)
        self._size += len(line) + 1
        if self._size > BUFFER_LIMIT:
            self.flush()

    def write_request(self, rec: HttpRecord) -> None:
        """Buffer one line for a finished HTTP request of the http-proxy mode (same buffer
        and flush rules as :meth:`write`); the format follows the log's ``fmt``."""
        if self._target == "off":
            return
        # Imported here, not at the top: httplog builds its lines from this module's helpers.
        # (This form is a sys.modules lookup, about 0.3 us; "from ... import" costs ~1 us each.)
        import portway.observe.httplog as httplog

        line = httplog.format_json(rec) if self._fmt is format_json else httplog.format_text(rec)
        self._buffer.append(line)
        self._size += len(line) + 1
        if self._size > BUFFER_LIMIT:
            self.flush()

    def _out(self) -> IO[str] | None:
        if self._target == "stdout":
            return sys.stdout
        if self._target == "stderr":
            return sys.stderr
        return self._stream

    def flush(self) -> None:
        """Write out every buffered line. A failed write drops them and is logged once."""
        if not self._buffer:
            return
        data = "\n".join(self._buffer) + "\n"
        self._buffer.clear()
        self._size = 0
        out = self._out()
        if out is None:
            return
        try:
            out.write(data)
            out.flush()
        except (OSError, ValueError) as e:  # ValueError: the stream was closed under us
            if not self._warned:
                log.warning("access log %s: write failed, lines dropped: %s", self._target, e)
                self._warned = True
        else:
            self._warned = False

    def reopen(self) -> None:
        """Flush, then reopen the file (after log rotation); no-op for streams."""
        self.flush()
        if self._path is None:
            return
        if self._stream is not None:
            self._stream.close()
        self._stream = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - kept open until close()

    def close(self) -> None:
        """Flush and close the file; later writes are ignored."""
        self.flush()
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._path = None
        self._target = "off"
