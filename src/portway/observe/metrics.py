"""Connection statistics: cheap counters in each worker, merged and rendered by the supervisor.

Strategy:

- Rule 1: the hot path is plain Python. A worker keeps one :class:`WorkerStats`; the I/O
  code calls it when a connection opens, is routed, and closes (plus a few rare events).
  Each call is a handful of dict lookups and integer additions on slotted objects. No
  ``prometheus_client`` object is touched in a worker.
- Rule 2: a worker's statistics leave it as a *snapshot*, a JSON-able ``dict`` (schema
  below) that the supervisor fetches over its control channel. Snapshots are
  self-describing (histograms carry their bounds), so :func:`merge` needs nothing else.
- Rule 3: the supervisor merges the snapshots of all workers (:func:`merge`) and renders
  the result once per admin request, as Prometheus text (:func:`render_prometheus`,
  through a throw-away ``CollectorRegistry``) or as JSON (:func:`render_json`).

Snapshot schema (one worker, from :meth:`WorkerStats.snapshot`)::

    {
      "pid": int,
      "time": float,                      # unix time the snapshot was taken
      "listeners": {
        <listener>: {
          "connections_total": int,       # connections accepted
          "active": int,                  # connections open now
          "bytes_in": int,                # bytes from clients (incl. in-flight, see below)
          "bytes_out": int,               # bytes to clients (incl. in-flight)
          "max_connections": int,         # the configured limit, 0 = none
          "accept_errors": int,           # accept(2) failures
        }, ...
      },
      "backends": {
        <backend>: {
          "connections_total": int,       # connections routed to this backend
          "active": int,
          "bytes_in": int,                # bytes from clients of these connections
          "bytes_out": int,               # bytes to clients of these connections
          "servers": {
            <server>: {
              "address": "host:port",
              "weight": int,
              "backup": bool,
              "up": bool,                 # health as this worker sees it
              "connections_total": int,   # connections routed to this server
              "active": int,
              "connect_failures": int,
            }, ...
          },
        }, ...
      },
      "terminations": {<listener>: {<Reason.value>: int}},   # non-zero reasons only
      "tls_handshakes": {<listener>: {"<version> <alpn>": int}},  # TLS completed here,
                                          # e.g. "TLSv1.3 h2"; "-" for no ALPN
      "gateway_tokens": {<listener>: {"v1"|"v2": int}},   # tokens a gateway accepted
      "gateway_replies": {<listener>: {"200"|"400"|...: int}},  # a gateway's answers
      "http_requests": {<listener>: {"<method> <class>": int}},  # http-proxy requests, e.g.
                                          # "GET 2xx"; method is one of HTTP_METHODS or
                                          # "other", class "1xx".."5xx" or "none" (no status)
      "histograms": {
        "sniff_seconds": {<listener>: HIST},                  # time to decide a route
        "connect_seconds": {<backend>: HIST},                 # time to connect to a server
        "http_request_seconds": {<listener>: HIST},           # http-proxy request durations,
                                          # only for listeners that served a request
      },
    }

    HIST = {
      "bounds": [float, ...],   # upper bounds in seconds, ascending (SNIFF_/CONNECT_BUCKETS)
      "buckets": [int, ...],    # NOT cumulative: len(bounds) + 1 counts; buckets[i] counts
                                # observations v with bounds[i-1] < v <= bounds[i]; the
                                # last one counts observations above the last bound
      "sum": float,             # sum of observations, seconds
      "count": int,             # number of observations (= sum(buckets))
    }

Byte counters include the bytes of connections still open (the ``live`` sessions given
to :meth:`WorkerStats.snapshot`), so a long connection is visible before it ends. That
keeps the counters monotonic only if ``live`` is exactly the set of sessions that were
opened and not yet closed.

The merged document (from :func:`merge`) has the same ``listeners``, ``backends``,
``terminations``, ``tls_handshakes``, ``gateway_tokens``, ``gateway_replies``,
``http_requests`` and ``histograms`` keys with every count summed across workers, and:

- ``"time"``: the newest worker snapshot time;
- ``"workers"``: one summary per snapshot, in input order:
  ``{"pid", "time", "active", "connections_total", "bytes_in", "bytes_out"}``
  (summed over that worker's listeners);
- per server, ``"up"`` is true only if every worker that reports the server sees it up,
  ``"up_workers"`` counts the workers that see it up and ``"workers"`` those that report it;
- per listener, ``"max_connections"`` is the configured value (the largest reported), not
  a sum.

A counter summed across workers drops when a worker dies and is replaced; Prometheus
treats that as a counter reset, which ``rate()`` handles.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from portway import __version__
from portway.session import Session
from portway.termination import Reason

if TYPE_CHECKING:
    from portway.observe.httplog import HttpRecord

__all__ = [
    "CONNECT_BUCKETS",
    "HTTP_BUCKETS",
    "HTTP_METHODS",
    "SNIFF_BUCKETS",
    "SupervisorInfo",
    "WorkerStats",
    "merge",
    "render_json",
    "render_prometheus",
]

SNIFF_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the sniff-duration histogram: accept to route decision."""

CONNECT_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Upper bounds (seconds) of the connect-duration histogram: dial start to connected."""

HTTP_BUCKETS: tuple[float, ...] = (*SNIFF_BUCKETS, 30.0, 60.0)
"""Upper bounds (seconds) of the http-proxy request-duration histogram: request head read
to response complete (long downloads land in the last buckets)."""

HTTP_METHODS: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT")
"""Methods counted under their own name; any other method is counted as ``"other"`` (a
client chooses the method, so the label set must stay bounded)."""

_METHOD_LABEL: dict[str, str] = {m: m for m in HTTP_METHODS}
_STATUS_CLASS: tuple[str, ...] = ("none", "1xx", "2xx", "3xx", "4xx", "5xx")
"""Indexed by ``status // 100``; index 0 (and anything outside 100-599) is ``"none"``."""

_go_float: Callable[[float], str] = floatToGoString
"""Formats a bucket bound the way prometheus_client's own histograms do."""

_FALLBACK_REASON = Reason.INTERNAL_ERROR.value
"""Counted when a session reaches :meth:`WorkerStats.closed` without a reason (a bug)."""


# --------------------------------------------------------------------------------------
# Per-worker bookkeeping
# --------------------------------------------------------------------------------------


class _Histogram:
    """Fixed-bound histogram with non-cumulative buckets."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count one observation."""
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict[str, Any]:
        """The ``HIST`` dict of the module docstring."""
        return {
            "bounds": list(self.bounds),
            "buckets": list(self.counts),
            "sum": self.sum,
            "count": sum(self.counts),
        }


class _ListenerStats:
    """Counters of one listener in one worker."""

    __slots__ = (
        "accept_errors",
        "active",
        "bytes_in",
        "bytes_out",
        "declared",
        "ends",
        "gw_replies",
        "gw_tokens",
        "http",
        "http_seconds",
        "max_connections",
        "sniff",
        "tls",
        "total",
    )

    def __init__(self, max_connections: int) -> None:
        self.declared = True
        self.max_connections = max_connections
        self.total = 0
        self.active = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.accept_errors = 0
        self.ends: dict[str, int] = {}
        self.tls: dict[str, int] = {}
        self.gw_tokens: dict[str, int] = {}
        self.gw_replies: dict[str, int] = {}
        #: http-proxy requests by (method label, status class).
        self.http: dict[tuple[str, str], int] = {}
        #: http-proxy request durations; made at the first request (most listeners have none).
        self.http_seconds: _Histogram | None = None
        self.sniff = _Histogram(SNIFF_BUCKETS)


class _ServerStats:
    """Counters and state of one server of a backend in one worker."""

    __slots__ = ("active", "address", "backup", "declared", "failures", "total", "up", "weight")

    def __init__(self, address: str, weight: int, backup: bool) -> None:
        self.declared = True
        self.address = address
        self.weight = weight
        self.backup = backup
        self.up = True
        self.total = 0
        self.active = 0
        self.failures = 0


class _BackendStats:
    """Counters of one backend, and of its servers, in one worker."""

    __slots__ = ("active", "bytes_in", "bytes_out", "connect", "declared", "servers", "total")

    def __init__(self) -> None:
        self.declared = True
        self.total = 0
        self.active = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.servers: dict[str, _ServerStats] = {}
        self.connect = _Histogram(CONNECT_BUCKETS)

    def server(self, name: str) -> _ServerStats:
        """The server called ``name``, created (address unknown) if it was never declared."""
        srv = self.servers.get(name)
        if srv is None:
            srv = self.servers[name] = _ServerStats("-", 1, False)
        return srv


class WorkerStats:
    """Per-worker counters, updated by the I/O code at connection open/close only.

    The I/O code calls :meth:`opened` when a connection is accepted, :meth:`routed` once
    its backend and server are known, and :meth:`closed` when it has ended. Each call
    costs a few dict lookups and integer additions. The supervisor asks the worker for a
    :meth:`snapshot` (a JSON-able dict, schema in the module docstring) when the admin
    endpoint is queried.

    A name that was never declared (a listener, backend or server) is created on first
    use, as if declared with no limit and an unknown address; it stays until the next
    :meth:`declare` that does not list it.
    """

    __slots__ = ("_backends", "_listeners", "_routed", "pid")

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._listeners: dict[str, _ListenerStats] = {}
        self._backends: dict[str, _BackendStats] = {}
        # What routed() counted for each open session, so closed() undoes exactly that
        # even if session.server changed (retries) or the config was reloaded meanwhile.
        self._routed: dict[Session, tuple[_BackendStats, _ServerStats | None]] = {}

    # -- configuration ------------------------------------------------------------------

    def declare(
        self,
        listeners: Iterable[tuple[str, int]],
        backends: Iterable[tuple[str, Iterable[tuple[str, str, int, bool]]]],
    ) -> None:
        """Declare the configured names; call at start and after every config reload.

        Args:
            listeners: ``(listener name, max_connections)`` pairs; 0 means no limit.
            backends: ``(backend name, servers)`` pairs, each server being
                ``(server name, address "host:port", weight, backup)``.

        Names still present keep their counters (and a server its up/down state); new
        names start at zero (a new server starts up). Names no longer present are
        dropped at once if idle, else kept until their last connection closes.
        """
        for ls in self._listeners.values():
            ls.declared = False
        for name, max_connections in listeners:
            known = self._listeners.get(name)
            if known is None:
                self._listeners[name] = _ListenerStats(max_connections)
            else:
                known.declared = True
                known.max_connections = max_connections

        for be in self._backends.values():
            be.declared = False
            for srv in be.servers.values():
                srv.declared = False
        for bname, servers in backends:
            bstats = self._backends.get(bname)
            if bstats is None:
                bstats = self._backends[bname] = _BackendStats()
            bstats.declared = True
            for sname, address, weight, backup in servers:
                sstats = bstats.servers.get(sname)
                if sstats is None:
                    bstats.servers[sname] = _ServerStats(address, weight, backup)
                else:
                    sstats.declared = True
                    sstats.address, sstats.weight, sstats.backup = address, weight, backup
        self._prune()

    def _prune(self) -> None:
        """Forget undeclared names that have no active connection."""
        for name in [n for n, ls in self._listeners.items() if not ls.declared and ls.active <= 0]:
            del self._listeners[name]
        for bname in list(self._backends):
            be = self._backends[bname]
            for sname in [n for n, s in be.servers.items() if not s.declared and s.active <= 0]:
                del be.servers[sname]
            if not be.declared and be.active <= 0:
                del self._backends[bname]

    def _listener(self, name: str) -> _ListenerStats:
        ls = self._listeners.get(name)
        if ls is None:
            ls = self._listeners[name] = _ListenerStats(0)
        return ls

    def _backend(self, name: str) -> _BackendStats:
        be = self._backends.get(name)
        if be is None:
            be = self._backends[name] = _BackendStats()
        return be

    # -- hot path -----------------------------------------------------------------------

    def opened(self, session: Session) -> None:
        """A connection was accepted on ``session.listener``."""
        ls = self._listeners.get(session.listener) or self._listener(session.listener)
        ls.total += 1
        ls.active += 1

    def routed(self, session: Session) -> None:
        """``session.backend`` (and ``session.server``, if chosen) are now set.

        Counts one connection (total and active) for the backend and the server. Calling
        it again for the same session (a retry on another server) moves the active count
        and counts a new total only for what changed.
        """
        bname = session.backend
        if bname is None:
            return
        be = self._backends.get(bname) or self._backend(bname)
        sname = session.server
        srv = None if sname is None else be.server(sname)
        prev = self._routed.get(session)
        if prev is not None:
            pbe, psrv = prev
            if pbe is be and psrv is srv:
                return
            if pbe is not be:
                pbe.active -= 1
            if psrv is not None and psrv is not srv:
                psrv.active -= 1
        if prev is None or prev[0] is not be:
            be.total += 1
            be.active += 1
        if srv is not None and (prev is None or prev[1] is not srv):
            srv.total += 1
            srv.active += 1
        self._routed[session] = (be, srv)

    def closed(self, session: Session) -> None:
        """The connection has ended (``session.reason`` is set).

        Decrements the active counts, adds the session's bytes to its listener's and
        backend's totals and counts its termination reason.
        """
        ls = self._listeners.get(session.listener) or self._listener(session.listener)
        if ls.active > 0:
            ls.active -= 1
        ls.bytes_in += session.bytes_in
        ls.bytes_out += session.bytes_out
        reason = session.reason
        key = _FALLBACK_REASON if reason is None else reason.value
        ls.ends[key] = ls.ends.get(key, 0) + 1
        routed = self._routed.pop(session, None)
        if routed is not None:
            be, srv = routed
            be.active -= 1
            be.bytes_in += session.bytes_in
            be.bytes_out += session.bytes_out
            if srv is not None:
                srv.active -= 1
                if not srv.declared and srv.active <= 0:
                    self._prune()
            if not be.declared and be.active <= 0:
                self._prune()
        if not ls.declared and ls.active <= 0:
            self._prune()

    # -- rare events --------------------------------------------------------------------

    def connect_failed(self, backend: str, server: str) -> None:
        """A connection attempt to ``server`` of ``backend`` failed (refused, timed out)."""
        self._backend(backend).server(server).failures += 1

    def sniffed(self, listener: str, seconds: float) -> None:
        """Observe how long a connection on ``listener`` took to reach a route decision."""
        self._listener(listener).sniff.observe(seconds)

    def handshake(self, listener: str, version: str | None, alpn: str | None) -> None:
        """A TLS handshake with a client of ``listener`` completed (TLS terminated here)."""
        key = f"{version or '-'} {alpn or '-'}"
        tls = self._listener(listener).tls
        tls[key] = tls.get(key, 0) + 1

    def gateway_token(self, listener: str, version: int) -> None:
        """A gateway on ``listener`` accepted a token of ``version`` (1 or 2): how far v1
        use has gone down is what tells operators when to set ``accept_v1 = false``."""
        tokens = self._listener(listener).gw_tokens
        key = f"v{version}"
        tokens[key] = tokens.get(key, 0) + 1

    def gateway_reply(self, listener: str, code: str) -> None:
        """A gateway on ``listener`` answered ``code`` ("200", "401", ...)."""
        replies = self._listener(listener).gw_replies
        replies[code] = replies.get(code, 0) + 1

    def http_request(self, rec: HttpRecord) -> None:
        """The http-proxy mode has finished one request: count it by listener, method and
        status class, and observe its duration (``rec.total_s``) if it has one.

        Called once per request, so it stays at a few dict operations.
        """
        name = rec.session.listener
        ls = self._listeners.get(name) or self._listener(name)
        status = rec.status
        code = _STATUS_CLASS[status // 100] if status is not None and 100 <= status < 600 else "none"
        key = (_METHOD_LABEL.get(rec.method, "other"), code)
        http = ls.http
        http[key] = http.get(key, 0) + 1
        seconds = rec.total_s
        if seconds is not None:
            hist = ls.http_seconds
            if hist is None:
                hist = ls.http_seconds = _Histogram(HTTP_BUCKETS)
            hist.observe(seconds)

    def connected(self, backend: str, seconds: float) -> None:
        """Observe how long connecting to a server of ``backend`` took."""
        self._backend(backend).connect.observe(seconds)

    def server_state(self, backend: str, server: str, up: bool) -> None:
        """Record the health-check verdict for ``server`` of ``backend``."""
        self._backend(backend).server(server).up = up

    def accept_error(self, listener: str) -> None:
        """``accept(2)`` failed on ``listener`` (e.g. out of file descriptors)."""
        self._listener(listener).accept_errors += 1

    # -- export -------------------------------------------------------------------------

    def snapshot(self, live: Iterable[Session] = ()) -> dict[str, Any]:
        """Everything counted so far, as a JSON-able dict (schema in the module docstring).

        Args:
            live: the sessions opened and not yet closed; their bytes so far are added
                to the byte counters of their listener and backend.
        """
        extra_l: dict[str, list[int]] = {}
        extra_b: dict[int, list[int]] = {}
        for s in live:
            acc = extra_l.setdefault(s.listener, [0, 0])
            acc[0] += s.bytes_in
            acc[1] += s.bytes_out
            routed = self._routed.get(s)
            if routed is not None:
                bacc = extra_b.setdefault(id(routed[0]), [0, 0])
                bacc[0] += s.bytes_in
                bacc[1] += s.bytes_out

        listeners: dict[str, Any] = {}
        terminations: dict[str, dict[str, int]] = {}
        handshakes: dict[str, dict[str, int]] = {}
        tokens: dict[str, dict[str, int]] = {}
        replies: dict[str, dict[str, int]] = {}
        requests: dict[str, dict[str, int]] = {}
        sniff: dict[str, Any] = {}
        http_seconds: dict[str, Any] = {}
        for name, ls in self._listeners.items():
            if not ls.declared and ls.active <= 0:
                continue
            xin, xout = extra_l.get(name, (0, 0))
            listeners[name] = {
                "connections_total": ls.total,
                "active": ls.active,
                "bytes_in": ls.bytes_in + xin,
                "bytes_out": ls.bytes_out + xout,
                "max_connections": ls.max_connections,
                "accept_errors": ls.accept_errors,
            }
            terminations[name] = dict(ls.ends)
            if ls.tls:
                handshakes[name] = dict(ls.tls)
            if ls.gw_tokens:
                tokens[name] = dict(ls.gw_tokens)
            if ls.gw_replies:
                replies[name] = dict(ls.gw_replies)
            if ls.http:
                requests[name] = {f"{method} {code}": n for (method, code), n in ls.http.items()}
            if ls.http_seconds is not None:
                http_seconds[name] = ls.http_seconds.snapshot()
            sniff[name] = ls.sniff.snapshot()

        backends: dict[str, Any] = {}
        connect: dict[str, Any] = {}
        for bname, be in self._backends.items():
            if not be.declared and be.active <= 0:
                continue
            xin, xout = extra_b.get(id(be), (0, 0))
            servers = {
                sname: {
                    "address": srv.address,
                    "weight": srv.weight,
                    "backup": srv.backup,
                    "up": srv.up,
                    "connections_total": srv.total,
                    "active": srv.active,
                    "connect_failures": srv.failures,
                }
                for sname, srv in be.servers.items()
                if srv.declared or srv.active > 0
            }
            backends[bname] = {
                "connections_total": be.total,
                "active": be.active,
                "bytes_in": be.bytes_in + xin,
                "bytes_out": be.bytes_out + xout,
                "servers": servers,
            }
            connect[bname] = be.connect.snapshot()

        return {
            "pid": self.pid,
            "time": time.time(),
            "listeners": listeners,
            "backends": backends,
            "terminations": terminations,
            "tls_handshakes": handshakes,
            "gateway_tokens": tokens,
            "gateway_replies": replies,
            "http_requests": requests,
            "histograms": {
                "sniff_seconds": sniff,
                "connect_seconds": connect,
                "http_request_seconds": http_seconds,
            },
        }


# --------------------------------------------------------------------------------------
# Merging across workers (supervisor side)
# --------------------------------------------------------------------------------------

_LISTENER_SUMS = ("connections_total", "active", "bytes_in", "bytes_out", "accept_errors")
_BACKEND_SUMS = ("connections_total", "active", "bytes_in", "bytes_out")
_SERVER_SUMS = ("connections_total", "active", "connect_failures")


def _merge_hist(into: dict[str, Any] | None, h: dict[str, Any], where: str) -> dict[str, Any]:
    if into is None:
        return {
            "bounds": list(h["bounds"]),
            "buckets": list(h["buckets"]),
            "sum": float(h["sum"]),
            "count": int(h["count"]),
        }
    if list(h["bounds"]) != into["bounds"] or len(h["buckets"]) != len(into["buckets"]):
        raise ValueError(f"histogram {where}: workers report different bucket bounds")
    into["buckets"] = [a + b for a, b in zip(into["buckets"], h["buckets"], strict=True)]
    into["sum"] += float(h["sum"])
    into["count"] += int(h["count"])
    return into


#: Per-worker facts a worker may add to its snapshot, passed through to the merged summary.
WORKER_EXTRAS = ("index", "generation", "live", "pipes_created", "gc_collected")


def merge(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Merge worker snapshots into one document (schema in the module docstring).

    Counters, active gauges and histograms are summed; a server is ``up`` only if every
    worker that reports it sees it up. Raises :class:`ValueError` if two workers report
    the same histogram with different bucket bounds.
    """
    listeners: dict[str, dict[str, Any]] = {}
    backends: dict[str, dict[str, Any]] = {}
    terminations: dict[str, dict[str, int]] = {}
    handshakes: dict[str, dict[str, int]] = {}
    tokens: dict[str, dict[str, int]] = {}
    replies: dict[str, dict[str, int]] = {}
    requests: dict[str, dict[str, int]] = {}
    hists: dict[str, dict[str, dict[str, Any]]] = {
        "sniff_seconds": {},
        "connect_seconds": {},
        "http_request_seconds": {},
    }
    workers: list[dict[str, Any]] = []

    for snap in snapshots:
        summary = {
            "pid": snap.get("pid"),
            "time": snap.get("time"),
            "active": 0,
            "connections_total": 0,
            "bytes_in": 0,
            "bytes_out": 0,
        }
        for key in WORKER_EXTRAS:
            if key in snap:
                summary[key] = snap[key]
        for name, ls in snap.get("listeners", {}).items():
            for key in ("active", "connections_total", "bytes_in", "bytes_out"):
                summary[key] += ls[key]
            into = listeners.get(name)
            if into is None:
                listeners[name] = {**ls}
                continue
            for key in _LISTENER_SUMS:
                into[key] += ls[key]
            into["max_connections"] = max(into["max_connections"], ls["max_connections"])
        workers.append(summary)

        for bname, be in snap.get("backends", {}).items():
            binto = backends.get(bname)
            if binto is None:
                binto = backends[bname] = {key: 0 for key in _BACKEND_SUMS}
                binto["servers"] = {}
            for key in _BACKEND_SUMS:
                binto[key] += be[key]
            for sname, srv in be.get("servers", {}).items():
                sinto = binto["servers"].get(sname)
                if sinto is None:
                    sinto = binto["servers"][sname] = {
                        "address": srv["address"],
                        "weight": srv["weight"],
                        "backup": srv["backup"],
                        "up": True,
                        "up_workers": 0,
                        "workers": 0,
                        **{key: 0 for key in _SERVER_SUMS},
                    }
                for key in _SERVER_SUMS:
                    sinto[key] += srv[key]
                sinto["workers"] += 1
                if srv["up"]:
                    sinto["up_workers"] += 1
                else:
                    sinto["up"] = False

        for counts, into_all in (
            (snap.get("terminations", {}), terminations),
            (snap.get("tls_handshakes", {}), handshakes),
            (snap.get("gateway_tokens", {}), tokens),
            (snap.get("gateway_replies", {}), replies),
            (snap.get("http_requests", {}), requests),
        ):
            for lname, ends in counts.items():
                tinto = into_all.setdefault(lname, {})
                for key, n in ends.items():
                    tinto[key] = tinto.get(key, 0) + n

        for kind, series in snap.get("histograms", {}).items():
            hinto = hists.setdefault(kind, {})
            for name, h in series.items():
                hinto[name] = _merge_hist(hinto.get(name), h, f"{kind}[{name}]")

    times = [t for t in (w["time"] for w in workers) if isinstance(t, int | float)]
    return {
        "time": max(times) if times else time.time(),
        "workers": workers,
        "listeners": listeners,
        "backends": backends,
        "terminations": terminations,
        "tls_handshakes": handshakes,
        "gateway_tokens": tokens,
        "gateway_replies": replies,
        "http_requests": requests,
        "histograms": hists,
    }


# --------------------------------------------------------------------------------------
# Rendering (supervisor side)
# --------------------------------------------------------------------------------------


@dataclass
class SupervisorInfo:
    """What the supervisor knows about itself, rendered next to the merged statistics."""

    started: float
    """Unix time the supervisor started."""
    workers: list[dict[str, Any]] = field(default_factory=list)
    """One dict per running worker: ``{"pid", "generation", "started", "restarts", ...}``."""
    worker_restarts_total: int = 0
    """Workers restarted after dying unexpectedly."""
    config_source: str = ""
    """Where the configuration came from: a path, ``"built-in"``, an etcd URL."""
    reloads_total: int = 0
    """Configuration reloads that succeeded."""
    reload_failures_total: int = 0
    """Configuration reloads that were rejected (the old configuration stayed)."""
    version: str = __version__
    """Portway's version."""


def _hist_buckets(h: dict[str, Any]) -> list[tuple[str, float]]:
    """Prometheus' cumulative ``(le, count)`` pairs from a snapshot ``HIST``."""
    out: list[tuple[str, float]] = []
    running = 0
    for bound, n in zip(h["bounds"], h["buckets"], strict=False):
        running += n
        out.append((_go_float(bound), float(running)))
    out.append(("+Inf", float(h["count"])))
    return out


class _MergedCollector:
    """A custom collector that turns a merged snapshot into metric families."""

    def __init__(self, merged: dict[str, Any], info: SupervisorInfo) -> None:
        self._merged = merged
        self._info = info

    def collect(self) -> Iterator[Metric]:
        """Yield every Portway metric family."""
        m = self._merged
        listeners: dict[str, dict[str, Any]] = m.get("listeners", {})
        backends: dict[str, dict[str, Any]] = m.get("backends", {})
        info = self._info

        conns = CounterMetricFamily(
            "portway_connections", "Connections accepted, by listener.", labels=["listener"]
        )
        active = GaugeMetricFamily(
            "portway_connections_active", "Connections open now, by listener.", labels=["listener"]
        )
        limit = GaugeMetricFamily(
            "portway_listener_max_connections",
            "Configured connection limit of the listener (0 = none).",
            labels=["listener"],
        )
        lbytes = CounterMetricFamily(
            "portway_bytes",
            "Bytes relayed by listener; direction in = from clients, out = to clients.",
            labels=["listener", "direction"],
        )
        accept_errors = CounterMetricFamily(
            "portway_accept_errors", "accept(2) failures, by listener.", labels=["listener"]
        )
        for name in sorted(listeners):
            ls = listeners[name]
            conns.add_metric([name], ls["connections_total"])
            active.add_metric([name], ls["active"])
            limit.add_metric([name], ls["max_connections"])
            lbytes.add_metric([name, "in"], ls["bytes_in"])
            lbytes.add_metric([name, "out"], ls["bytes_out"])
            accept_errors.add_metric([name], ls["accept_errors"])
        yield from (conns, active, limit, lbytes, accept_errors)

        bconns = CounterMetricFamily(
            "portway_backend_connections", "Connections routed to the backend.", labels=["backend"]
        )
        bactive = GaugeMetricFamily(
            "portway_backend_connections_active",
            "Connections open now to the backend.",
            labels=["backend"],
        )
        bbytes = CounterMetricFamily(
            "portway_backend_bytes",
            "Bytes relayed for the backend's connections; in = from clients, out = to clients.",
            labels=["backend", "direction"],
        )
        sconns = CounterMetricFamily(
            "portway_server_connections", "Connections routed to the server.", labels=["backend", "server"]
        )
        sactive = GaugeMetricFamily(
            "portway_server_connections_active",
            "Connections open now to the server.",
            labels=["backend", "server"],
        )
        sfail = CounterMetricFamily(
            "portway_server_connect_failures",
            "Failed connection attempts to the server.",
            labels=["backend", "server"],
        )
        sup = GaugeMetricFamily(
            "portway_server_up",
            "1 if every worker sees the server up, else 0.",
            labels=["backend", "server"],
        )
        for bname in sorted(backends):
            be = backends[bname]
            bconns.add_metric([bname], be["connections_total"])
            bactive.add_metric([bname], be["active"])
            bbytes.add_metric([bname, "in"], be["bytes_in"])
            bbytes.add_metric([bname, "out"], be["bytes_out"])
            servers: dict[str, dict[str, Any]] = be.get("servers", {})
            for sname in sorted(servers):
                srv = servers[sname]
                sconns.add_metric([bname, sname], srv["connections_total"])
                sactive.add_metric([bname, sname], srv["active"])
                sfail.add_metric([bname, sname], srv["connect_failures"])
                sup.add_metric([bname, sname], 1.0 if srv["up"] else 0.0)
        yield from (bconns, bactive, bbytes, sconns, sactive, sfail, sup)

        terms = CounterMetricFamily(
            "portway_terminations",
            "Connections ended, by listener and termination reason.",
            labels=["listener", "reason"],
        )
        ends: dict[str, dict[str, int]] = m.get("terminations", {})
        known = [r.value for r in Reason]
        for lname in sorted(set(listeners) | set(ends)):
            counts = ends.get(lname, {})
            for reason in known + sorted(set(counts) - set(known)):
                terms.add_metric([lname, reason], counts.get(reason, 0))
        yield terms

        tls = CounterMetricFamily(
            "portway_tls_handshakes",
            "TLS handshakes completed with clients (TLS terminated here), by version and ALPN.",
            labels=["listener", "version", "alpn"],
        )
        shakes: dict[str, dict[str, int]] = m.get("tls_handshakes", {})
        for lname in sorted(shakes):
            for key, n in sorted(shakes[lname].items()):
                version, _, alpn = key.partition(" ")
                tls.add_metric([lname, version, alpn], n)
        yield tls

        gw_tokens = CounterMetricFamily(
            "portway_gateway_tokens",
            "Gateway tokens accepted, by listener and token version (v1: frontd, v2: authenticated).",
            labels=["listener", "version"],
        )
        for lname, counts in sorted(m.get("gateway_tokens", {}).items()):
            for version in ("v1", "v2"):
                gw_tokens.add_metric([lname, version], counts.get(version, 0))
        gw_replies = CounterMetricFamily(
            "portway_gateway_replies",
            "Gateway answers, by listener and status code.",
            labels=["listener", "code"],
        )
        for lname, counts in sorted(m.get("gateway_replies", {}).items()):
            for code, n in sorted(counts.items()):
                gw_replies.add_metric([lname, code], n)
        yield from (gw_tokens, gw_replies)

        http = CounterMetricFamily(
            "portway_http_requests",
            "HTTP requests handled by the http-proxy mode, by listener, method and status class"
            " (code: 1xx..5xx, or none when no response was sent).",
            labels=["listener", "method", "code"],
        )
        for lname, counts in sorted(m.get("http_requests", {}).items()):
            for key, n in sorted(counts.items()):
                method, _, code = key.partition(" ")
                http.add_metric([lname, method, code], n)
        yield http

        hists: dict[str, dict[str, dict[str, Any]]] = m.get("histograms", {})
        sniff = HistogramMetricFamily(
            "portway_sniff_duration_seconds",
            "Time from accept to the routing decision.",
            labels=["listener"],
        )
        for name, h in sorted(hists.get("sniff_seconds", {}).items()):
            sniff.add_metric([name], _hist_buckets(h), h["sum"])
        connect = HistogramMetricFamily(
            "portway_connect_duration_seconds",
            "Time to connect to a server of the backend.",
            labels=["backend"],
        )
        for name, h in sorted(hists.get("connect_seconds", {}).items()):
            connect.add_metric([name], _hist_buckets(h), h["sum"])
        http_seconds = HistogramMetricFamily(
            "portway_http_request_duration_seconds",
            "Time from an http-proxy request's head to its response complete.",
            labels=["listener"],
        )
        for name, h in sorted(hists.get("http_request_seconds", {}).items()):
            http_seconds.add_metric([name], _hist_buckets(h), h["sum"])
        yield from (sniff, connect, http_seconds)

        yield GaugeMetricFamily("portway_workers", "Worker processes running.", value=len(info.workers))
        yield CounterMetricFamily(
            "portway_worker_restarts",
            "Workers restarted after dying unexpectedly.",
            value=info.worker_restarts_total,
        )
        yield CounterMetricFamily(
            "portway_config_reloads", "Configuration reloads that succeeded.", value=info.reloads_total
        )
        yield CounterMetricFamily(
            "portway_config_reload_failures",
            "Configuration reloads that were rejected.",
            value=info.reload_failures_total,
        )
        yield GaugeMetricFamily(
            "portway_start_time_seconds", "Unix time the supervisor started.", value=info.started
        )
        build = GaugeMetricFamily("portway_build_info", "Portway's version; always 1.", labels=["version"])
        build.add_metric([info.version], 1.0)
        yield build


def render_prometheus(merged: dict[str, Any], info: SupervisorInfo) -> bytes:
    """Render a merged snapshot and the supervisor's facts as Prometheus text (0.0.4)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_MergedCollector(merged, info))
    data: bytes = generate_latest(registry)
    return data


def render_json(merged: dict[str, Any], info: SupervisorInfo) -> bytes:
    """Render ``/stats``: the merged snapshot plus ``"supervisor"`` (the info and uptime) and
    ``"reason_codes"`` (each termination reason's two-character code, for the dashboard)."""
    sup = asdict(info)
    sup["uptime_s"] = max(0.0, time.time() - info.started)
    doc = {"supervisor": sup, "reason_codes": {r.value: r.code for r in Reason}, **merged}
    return (json.dumps(doc, indent=2, default=str) + "\n").encode()
