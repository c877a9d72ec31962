"""The forward proxy's HTTP/1.1 engine: many requests per client connection, pooled origins.

One :class:`HttpForward` serves one client connection of an ``http-proxy`` listener once its
first byte showed HTTP (or, with interception, the plaintext inside the client's TLS). It is
callback-driven like the relay: readiness callbacks from the worker's poller, one timer.

Per request (``GET http://host/path``): authenticate (``Proxy-Authorization``) → parse the
absolute URL → take an idle connection to that origin from the worker's
:class:`~portway.net.originpool.OriginPool`, or resolve, check the IP against the listener's
destination rules and dial → send the rewritten head and stream the body → stream the
response back → log one :class:`~portway.observe.httplog.HttpRecord` → put the origin
connection back in the pool if it is reusable → next request.

- **Pipelining**: requests are parsed as they arrive (llhttp, :mod:`portway.proto.http1`)
  and queued; each is sent to its origin only after the previous response is complete, so
  answers come back in order. The queue is bounded: past it the client is not read.
- **Framing**: bodies are re-framed, never passed through unparsed. Requests keep their
  ``Content-Length`` or are re-chunked. Responses keep ``Content-Length``; chunked and
  read-until-close responses go to an HTTP/1.1 client chunked (so its connection survives),
  to an HTTP/1.0 client until the close. ``HEAD``, ``1xx``, ``204`` and ``304`` have no body.
- **Hop-by-hop** fields are removed both ways (``Connection`` and what it names,
  ``Keep-Alive``, ``Proxy-Authorization``, ``Proxy-Connection``, ``TE``, ``Trailer``,
  ``Upgrade`` unless upgrading); ``Via`` is added both ways; ``X-Forwarded-For`` if configured.
- ``Expect: 100-continue`` and other ``1xx`` answers pass through to HTTP/1.1 clients.
- A ``101`` answer to an upgrade request (WebSocket) hands both sockets to a relay; a
  ``CONNECT`` hands the client to the connection's tunnel path (``on_tunnel``).
- Errors are HTTP answers that close the connection: ``400`` (bad request, smuggling
  attempts), ``431`` (head too large), ``403`` (rules), ``407`` (credentials), ``502``
  (origin failed, with the reason), ``504`` (origin timed out). After a ``Connection:
  close`` answer the client's late bytes are read and dropped for a moment before the
  close, so that a reset cannot destroy the answer on its way.
- Deadlines: a request head must be complete ``sniff_timeout`` after its first byte (the
  first one after the accept); an idle client between requests is closed after
  ``idle_timeout`` (at most :data:`KEEPALIVE_LIMIT`); once a request is under way, no
  byte either way for ``idle_timeout`` ends it (``504`` if no answer had started).
- A reused origin connection that closes before answering is retried once on a new one
  when the request has no body (the origin may close an idle connection at any moment).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from portway.config.units import format_hostport
from portway.modes.sni import http_response
from portway.modes.tcp import is_ip
from portway.net.dial import Dial
from portway.net.originpool import OriginPool
from portway.net.sockopt import tune_dialed
from portway.net.tlsrelay import HIGH_WATER, Endpoint, Handshake, describe_error
from portway.observe.har import HarWriter
from portway.observe.httplog import HttpRecord
from portway.proto import http1
from portway.proto.http1 import BODY, END, HEAD, UPGRADE, Head, HttpError
from portway.proto.httprewrite import Target, absolute_target, request_head, response_head, split_authority
from portway.route.auth import PROXY_AUTHENTICATE, Credentials, parse_basic
from portway.route.backend import Pool, Server
from portway.termination import Reason

if TYPE_CHECKING:
    from portway.context import Context
    from portway.modes.httpproxy import HttpProxyConnection
    from portway.runtime import Runtime

log = logging.getLogger("portway.httpproxy")

_now = time.monotonic

#: The longest an idle client connection is kept between requests (squid keeps 2 minutes).
KEEPALIVE_LIMIT = 120.0
#: Requests parsed ahead of the one in progress before the client is no longer read.
PIPELINE_LIMIT = 32
#: How long the client's late bytes are drained after a closing answer.
LINGER = 2.0


def connect_target(head: Head, ports: tuple[tuple[int, int], ...]) -> tuple[str, int] | tuple[int, str]:
    """``(host, port)`` of a ``CONNECT`` head whose port is in ``ports``, else ``(status,
    message)`` of the refusal."""
    where = split_authority(head.target, 0)
    if where is None or where[1] == 0:
        return 400, "CONNECT needs host:port"
    port = where[1]
    if not any(low <= port <= high for low, high in ports):
        allowed = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in ports)
        return 403, f"CONNECT to port {port} is not allowed (connect_ports: {allowed})"
    return where


def authorized(users: Credentials | None, head: Head) -> str | bool | None:
    """Whether ``head`` may go on: True without users, the user name when its credentials
    are right (known from the cache), False when they are missing or malformed (``407``),
    None when they must be checked the slow way (bcrypt)."""
    if users is None:
        return True
    value = head.get(b"proxy-authorization")
    creds = parse_basic(value.decode("latin-1")) if value is not None else None
    if creds is None:
        return False
    return creds[0] if users.verify_cached(*creds) else None


# -- one request ---------------------------------------------------------------------------
class Exchange:
    """One request and its response."""

    __slots__ = (
        "chunk_out",
        "chunk_up",
        "client_rest",
        "close_after",
        "got_bytes",
        "head",
        "key",
        "reader",
        "record",
        "req_done",
        "resp",
        "retried",
        "reused",
        "sent",
        "target",
        "token",
        "until_close",
        "up",
        "up_addr",
    )

    def __init__(self, head: Head, record: HttpRecord | None) -> None:
        self.head = head
        self.record = record
        self.target: Target | None = None
        self.key: tuple[str, int, bool] = ("", 0, False)
        self.token: object = None
        self.up: Endpoint | None = None
        self.up_addr: tuple[str, int] | None = None
        self.reader: http1.MessageReader | None = None
        self.reused = False
        self.retried = False
        #: The request head was written to the origin (body events may follow).
        self.sent = b""
        self.chunk_up = head.chunked
        self.req_done = False
        self.got_bytes = False
        self.resp: Head | None = None
        self.chunk_out = False
        self.until_close = False
        self.close_after = not head.keep_alive
        #: Bytes the client sent after an upgrade request (the new protocol's first bytes).
        self.client_rest: bytes | None = None


class HttpForward:
    """Serves one client connection's HTTP requests; see the module docstring.

    ``conn`` gives the listener's settings and runtime and receives the end (through its
    ``_end``), a tunnel (``on_tunnel``) or an upgrade (``on_upgraded``). ``origin`` fixes the
    destination (interception: the requests come in origin-form inside TLS), with
    ``origin_tls`` the context for TLS to it.
    """

    __slots__ = (
        "active",
        "armed_for",
        "c_read",
        "c_write",
        "client",
        "closing",
        "conn",
        "ctx",
        "dial",
        "done",
        "end_detail",
        "end_reason",
        "har",
        "head_start",
        "idle_timeout",
        "keepalive",
        "last",
        "lingering",
        "origin",
        "origin_tls",
        "policy",
        "pool",
        "queue",
        "reader",
        "runtime",
        "shake",
        "spec",
        "task",
        "u_read",
        "u_write",
        "users",
        "wheel_slot",
    )

    def __init__(
        self,
        conn: HttpProxyConnection,
        client: Endpoint,
        *,
        origin: tuple[str, int] | None = None,
        origin_tls: ssl.SSLContext | None = None,
        har: HarWriter | None = None,
    ) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        spec = conn.spec
        proxy = spec.http_proxy
        assert proxy is not None
        self.spec = proxy
        self.client = client
        self.origin = origin
        self.origin_tls = origin_tls
        #: Where intercepted requests are also recorded (with their heads), if anywhere.
        self.har = har
        self.runtime = conn.runtime
        self.policy = conn.runtime.policies[(spec.name, "")]
        self.users = conn.runtime.users.get(spec.name)
        self.pool = origin_pool(conn.ctx)
        self.reader = http1.MessageReader.fresh(response=False)
        self.queue: deque[http1.Event] = deque()
        self.active: Exchange | None = None
        self.idle_timeout = spec.idle_timeout
        self.keepalive = min(spec.idle_timeout, KEEPALIVE_LIMIT) if spec.idle_timeout > 0 else KEEPALIVE_LIMIT
        self.last = _now()
        self.head_start = conn.session.start_mono
        self.wheel_slot: int | None = None
        self.armed_for = float("inf")
        self.c_read = self.c_write = self.u_read = self.u_write = False
        self.closing = False
        self.lingering = False
        self.done = False
        self.dial: Dial | None = None
        self.task: asyncio.Task[None] | None = None
        self.shake: Handshake | None = None
        #: How the connection ends after a closing answer (once the answer is out).
        self.end_reason = Reason.CLIENT_CLOSED
        self.end_detail = ""

    def _rules(self, runtime: Runtime) -> None:
        """Take the users and destination rules of ``runtime`` (for the next request after a
        reload, so that a keep-alive client cannot outlive a tightened rule)."""
        name = self.conn.spec.name
        self.runtime = runtime
        policy = runtime.policies.get((name, ""))
        if policy is None:
            return  # the listener left the configuration: its connections keep the old rules
        self.policy = policy
        self.users = runtime.users.get(name)

    # -- the client side ------------------------------------------------------------------
    def start(self, initial: bytes) -> None:
        """Parse what was read already, then serve; ``initial`` may be empty."""
        sniff = self.conn.spec.sniff_timeout
        self._arm(self.head_start + sniff)
        if initial:
            self._client_data(initial)
        if self.client.tls is not None and not self.done:
            self._on_client_readable()  # the handshake's last flight may have carried a request
            return
        if not self.done:
            self._pump()

    def _on_client_readable(self) -> None:
        if self.done:
            return
        try:
            client = self.client
            while True:  # (until empty: with TLS, bytes left in OpenSSL raise no event)
                try:
                    data = client.read()
                except BlockingIOError:
                    break
                except (OSError, ssl.SSLError) as exc:
                    if self.lingering:  # the answer was out: it says why the connection ended
                        self._end(self.end_reason, self.end_detail)
                    else:
                        self._end(Reason.CLIENT_CLOSED, _describe(exc))
                    return
                if not data:
                    self._client_eof()
                    return
                if self.lingering:
                    continue
                self._client_data(data)
                if self.done or not client.more or not self._want_client():
                    break
            if not self.done:
                self._pump()
        except Exception as exc:
            self._crash(exc)

    def _client_data(self, data: bytes) -> None:
        self.conn.session.bytes_in += len(data)
        self.last = now = _now()
        reader = self.reader
        was_partial = reader.partial
        try:
            events = reader.feed(data)
        except HttpError as exc:
            self._refuse(exc.status, str(exc), Reason.PROTOCOL_ERROR)
            return
        if reader.partial and not was_partial and self.active is None:
            self.head_start = now
            self._arm(now + self.conn.spec.sniff_timeout)
        self.queue.extend(events)
        self._advance()

    def _client_eof(self) -> None:
        if self.lingering:
            self._end(self.end_reason, self.end_detail)
            return
        ex = self.active
        if ex is None and not self.queue:
            detail = "in the middle of a request head" if self.reader.partial else ""
            self._end(Reason.CLIENT_CLOSED, detail)
        elif ex is not None and ex.req_done and not self.queue:
            # Half-closed after its request: answer it, then close.
            self.closing = True
            self.c_read = False
            self.ctx.poller.remove_reader(self.client.fd)
            self._pump()
        else:
            self._end(Reason.CLIENT_CLOSED, "in the middle of a request")

    def _want_client(self) -> bool:
        if self.closing and not self.lingering:
            return False
        ex = self.active
        if ex is not None and (ex.client_rest is not None or (ex.close_after and ex.req_done)):
            return False  # after an upgrade request nothing more is HTTP; after the last one, nothing
        if len(self.queue) > PIPELINE_LIMIT:
            return False
        up = ex.up if ex is not None else None
        return up is None or len(up.out) < HIGH_WATER

    # -- requests in order ----------------------------------------------------------------
    def _advance(self) -> None:
        """Hand queued events to the request they belong to, in order, while they can go."""
        queue = self.queue
        while queue and not self.done and not self.closing:
            kind, value = queue[0]
            ex = self.active
            if kind == HEAD:
                if ex is not None:
                    return  # pipelined: waits for the answer in progress
                queue.popleft()
                assert isinstance(value, Head)
                self._begin(value)
                continue
            assert ex is not None
            if not ex.sent:
                return  # still authenticating or dialling
            queue.popleft()
            up = ex.up
            assert up is not None
            if kind == BODY:
                assert isinstance(value, bytes)
                if ex.record is not None:
                    ex.record.req_bytes += len(value)
                up.write(http1.chunk(value) if ex.chunk_up else value)
            elif kind == END:
                if ex.chunk_up:
                    up.write(http1.LAST_CHUNK)
                ex.req_done = True
            elif kind == UPGRADE:
                assert isinstance(value, bytes)
                ex.client_rest = value

    def _begin(self, head: Head) -> None:
        """A request head is complete: authenticate, then find its origin."""
        conn = self.conn
        record = None
        if head.method != "CONNECT":  # a tunnel is logged as its connection
            record = HttpRecord(
                conn.session, head.method, head.target.decode("latin-1"), head.version, _now()
            )
            if self.origin is not None:
                record.intercepted = True
                if self.har is not None:
                    record.request_headers = head.fields
        runtime = conn.listener.runtime
        if runtime is not self.runtime:  # reloaded: the next request follows the new rules
            self._rules(runtime)
        ex = Exchange(head, record)
        self.active = ex
        self.last = _now()
        self._arm(self.last + (self.idle_timeout or KEEPALIVE_LIMIT))
        verdict = authorized(self.users, head)
        if verdict is False:
            self._refuse(407, "proxy authentication required", Reason.REFUSED_BY_RULE)
            return
        if verdict is None:  # credentials not seen yet: bcrypt, in a thread
            value = head.get(b"proxy-authorization")
            creds = parse_basic(value.decode("latin-1")) if value is not None else None
            assert creds is not None
            self.task = self.ctx.loop.create_task(self._verify(ex, *creds))
            return
        if isinstance(verdict, str):
            conn.session.route = verdict
        self._route(ex)

    async def _verify(self, ex: Exchange, user: str, password: str) -> None:
        try:
            users = self.users
            assert users is not None
            ok = await self.ctx.loop.run_in_executor(None, users.verify, user, password)
            self.task = None
            if self.done:
                return
            if not ok:
                self._refuse(407, f"wrong username or password for {user!r}", Reason.REFUSED_BY_RULE)
            else:
                self.conn.session.route = user
                self._route(ex)
            if not self.done:
                self._pump()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._crash(exc)

    def _route(self, ex: Exchange) -> None:
        head = ex.head
        if head.method == "CONNECT":
            self._connect(ex)
            return
        if self.origin is not None:
            host, port = self.origin
            path = head.target
            if not path.startswith(b"/"):
                parsed = absolute_target(path)
                if isinstance(parsed, str):
                    self._refuse(400, parsed, Reason.PROTOCOL_ERROR)
                    return
                path = parsed.path
            authority = head.get(b"host") or format_hostport(host, port).encode()
            url = f"https://{authority.decode('latin-1')}{path.decode('latin-1')}"
            target = Target(host, port, authority, path, url, tls=True)
        else:
            parsed = absolute_target(head.target)
            if isinstance(parsed, str):
                self._refuse(400, parsed, Reason.PROTOCOL_ERROR)
                return
            target = parsed
        ex.target = target
        if ex.record is not None:
            ex.record.url = target.url
        session = self.conn.session
        if session.sni is None:
            session.sni = format_hostport(target.host, target.port)
        ex.key = (target.host.lower(), target.port, target.tls)
        ex.token = self.policy
        idle = self.pool.take(ex.key, self.policy)
        if idle is not None:
            self.ctx.poller.add_reader(idle.ep.fd, self._on_upstream_readable)
            self.u_read = True
            ex.reader = idle.reader
            self._attach(ex, idle.ep, idle.addr, reused=True)
            return
        self._open(ex)

    def _connect(self, ex: Exchange) -> None:
        """``CONNECT host:port``: checked here, then the connection's tunnel path takes over
        once everything before it has been answered."""
        if self.origin is not None:
            self._refuse(405, "CONNECT inside an intercepted connection", Reason.PROTOCOL_ERROR)
            return
        where = connect_target(ex.head, self.spec.connect_ports)
        if isinstance(where[0], int):
            status, message = where
            assert isinstance(status, int) and isinstance(message, str)
            reason = Reason.REFUSED_BY_RULE if status == 403 else Reason.PROTOCOL_ERROR
            self._refuse(status, message, reason)
            return
        host, port = where
        assert isinstance(host, str) and isinstance(port, int)
        # The tunnel starts after the head's END and UPGRADE events (the bytes after it).
        queue = self.queue
        rest = b""
        while queue:
            kind, value = queue.popleft()
            if kind == UPGRADE:
                assert isinstance(value, bytes)
                rest = value
                break
        self._hand_over()
        self.conn.on_tunnel(host, port, rest, bytes(self.client.out))

    # -- origins ---------------------------------------------------------------------------
    def _open(self, ex: Exchange) -> None:
        target = ex.target
        assert target is not None
        host = target.host
        if is_ip(host):
            self._dial(ex, host)
            return
        self.task = self.ctx.loop.create_task(self._resolve(ex, host, target.port))

    async def _resolve(self, ex: Exchange, host: str, port: int) -> None:
        try:
            try:
                infos = await self.ctx.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                self.task = None
                if not self.done:
                    self._refuse(502, f"{host}: cannot resolve: {exc}", Reason.CONNECT_REFUSED)
                    self._pump()
                return
            self.task = None
            if not self.done:
                self._dial(ex, str(infos[0][4][0]))
                if not self.done:
                    self._pump()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._crash(exc)

    def _dial(self, ex: Exchange, ip: str, retries: int | None = None) -> None:
        target = ex.target
        assert target is not None
        why = self.policy.check(None if target.host == ip else target.host, ip, target.port)
        if why is not None:
            self._refuse(403, f"destination refused: {why}", Reason.REFUSED_BY_RULE)
            return
        server = Server(format_hostport(target.host, target.port), ip, target.port)
        server.sockaddr = (ip, target.port, 0, 0) if ":" in ip else (ip, target.port)
        pool = Pool.single(f"http-proxy:{self.conn.spec.name}", server)
        left = self.spec.retries if retries is None else retries
        started = _now()

        def connected(sock: socket.socket, server: Server) -> None:
            self.dial = None
            try:
                self.conn.session.connect_s = _now() - started
                tune_dialed(sock, self.conn.spec.keepalive)
                self._connected(ex, sock, (ip, target.port))
            except Exception as exc:
                self.ctx.poller.close(sock)
                self._crash(exc)

        def failed(reason: Reason, detail: str) -> None:
            self.dial = None
            try:
                if reason is Reason.CONNECT_TIMEOUT and left > 0:
                    self._dial(ex, ip, left - 1)
                    return
                status = 504 if reason is Reason.CONNECT_TIMEOUT else 502
                self._refuse(status, f"{target.host}:{target.port}: {detail}", reason)
                if not self.done:
                    self._pump()
            except Exception as exc:
                self._crash(exc)

        def attempt_failed(server: Server, detail: str, change: str | None) -> None:
            self.conn.session.retries += 1

        dial = Dial(
            self.ctx.loop,
            self.ctx.poller,
            self.ctx.wheel,
            pool,
            self.conn.session.client[0],
            timeout=self.spec.connect_timeout,
            retries=0,
            on_connected=connected,
            on_failed=failed,
            on_attempt_failed=attempt_failed,
        )
        self.dial = dial
        dial.start()

    def _connected(self, ex: Exchange, sock: socket.socket, addr: tuple[str, int]) -> None:
        target = ex.target
        assert target is not None
        if not target.tls:
            self.ctx.poller.hand_over_writer(sock.fileno())
            self.ctx.poller.add_reader(sock.fileno(), self._on_upstream_readable)
            self.u_read = True
            self._attach(ex, Endpoint(sock), addr, reused=False)
            if not self.done:
                self._pump()
            return
        context = self.origin_tls
        assert context is not None
        ep = Endpoint.wrap(sock, context, server_side=False, server_hostname=target.host)

        def handshaken() -> None:
            self.shake = None
            try:
                self.ctx.poller.add_reader(ep.fd, self._on_upstream_readable)
                self.u_read = True
                self._attach(ex, ep, addr, reused=False)
                if not self.done:
                    self._pump()
            except Exception as exc:
                self._crash(exc)

        def failed(reason: Reason, detail: str) -> None:
            self.shake = None
            self.ctx.poller.close(sock)
            ex.up = None
            self._refuse(
                502, f"TLS to {target.host}:{target.port} failed: {detail}", Reason.SERVER_TLS_FAILED
            )
            if not self.done:
                self._pump()

        self.ctx.poller.hand_over_writer(sock.fileno())
        handshake = Handshake(
            self.ctx.poller,
            self.ctx.wheel,
            ep,
            timeout=self.spec.connect_timeout,
            client_side=False,
            on_done=handshaken,
            on_error=failed,
        )
        self.shake = handshake
        handshake.start()

    def _attach(self, ex: Exchange, up: Endpoint, addr: tuple[str, int], *, reused: bool) -> None:
        """An origin connection is ready: send the head, then whatever body is queued."""
        ex.up = up
        ex.up_addr = addr
        ex.reused = reused
        session = self.conn.session
        session.server_addr = addr
        reader = ex.reader
        if reader is None:
            reader = ex.reader = http1.MessageReader.fresh(response=True)
        if ex.head.method == "HEAD":
            reader.expect_no_body()
        record = ex.record
        if record is not None:
            record.upstream = addr
            record.reused = reused
        if not ex.sent:
            target = ex.target
            assert target is not None
            upgrade = ex.head.get(b"upgrade") if ex.head.upgrade else None
            xff = session.client[0] if self.spec.x_forwarded_for else None
            ex.sent = request_head(ex.head, target.path, target.authority, client_ip=xff, upgrade=upgrade)
        up.write(ex.sent)
        self._advance()

    def _on_upstream_readable(self) -> None:
        try:
            ex = self.active
            if ex is None or ex.up is None or self.done:
                return
            up = ex.up
            reader = ex.reader
            assert reader is not None
            while True:  # (until empty: with TLS, bytes left in OpenSSL raise no event)
                try:
                    data = up.read()
                except BlockingIOError:
                    break
                except (OSError, ssl.SSLError) as exc:
                    self._upstream_failed(ex, _describe(exc))
                    return
                if not data:
                    self._upstream_eof(ex)
                    return
                ex.got_bytes = True
                self.last = _now()
                try:
                    events = reader.feed(data)
                except HttpError as exc:
                    self._upstream_failed(ex, f"the origin broke HTTP: {exc}")
                    return
                for kind, value in events:
                    self._response_event(ex, kind, value)
                    if self.active is not ex or self.done:
                        if not self.done:
                            self._pump()
                        return
                if not up.more:
                    break
                if len(self.client.out) >= HIGH_WATER:
                    self._pump()  # the client may take it all at once: then read on
                    if self.done or self.active is not ex or len(self.client.out) >= HIGH_WATER:
                        return
            self._pump()
        except Exception as exc:
            self._crash(exc)

    def _response_event(self, ex: Exchange, kind: int, value: object) -> None:
        if kind == BODY:
            assert isinstance(value, bytes)
            if ex.record is not None:
                ex.record.resp_bytes += len(value)
            self._to_client(http1.chunk(value) if ex.chunk_out else value)
        elif kind == HEAD:
            assert isinstance(value, Head)
            self._response_head(ex, value)
        elif kind == END:
            resp = ex.resp
            if resp is None or resp.status == 101:
                return  # after an interim answer; or the upgrade's bytes follow
            if ex.chunk_out:
                self._to_client(http1.LAST_CHUNK)
            self._finish(ex, reusable=resp.keep_alive)
        elif kind == UPGRADE:
            assert isinstance(value, bytes)
            self._upgraded(ex, value)

    def _to_client(self, data: bytes) -> None:
        self.client.write(data)
        self.conn.session.bytes_out += len(data)

    def _response_head(self, ex: Exchange, resp: Head) -> None:
        status = resp.status
        request = ex.head
        client_11 = request.version != "1.0"
        if 100 <= status < 200 and status != 101:
            if client_11:
                self._to_client(response_head(resp, te=None, close=False, keep_alive_10=False, upgrade=False))
            return
        ex.resp = resp
        record = ex.record
        if record is not None:
            record.status = status
            record.head_s = _now() - record.start_mono
            if self.har is not None:
                record.response_headers = resp.fields
                record.status_text = resp.reason.decode("latin-1")
        if status == 101:
            if not request.upgrade:
                self._upstream_failed(ex, "101 Switching Protocols to a request that asked for no upgrade")
                return
            self._to_client(response_head(resp, te=None, close=False, keep_alive_10=False, upgrade=True))
            return
        te: bytes | None = None
        no_body = request.method == "HEAD" or status in (204, 304)
        if not no_body and resp.length is None:
            ex.until_close = not resp.chunked
            if client_11:  # chunked to the client, whatever the origin's framing
                ex.chunk_out = True
                te = b"chunked"
            else:
                ex.close_after = True
        if request.upgrade or self.closing:
            ex.close_after = True  # (an upgrade that did not happen ends the request side)
        close = ex.close_after
        self._to_client(
            response_head(
                resp,
                te=te,
                close=close,
                keep_alive_10=not client_11 and not close,
                upgrade=False,
            )
        )

    def _upstream_eof(self, ex: Exchange) -> None:
        resp = ex.resp
        if resp is None:
            detail = "the origin closed the connection without answering"
            if ex.reused and not ex.got_bytes and not ex.head.has_body and not ex.retried and ex.req_done:
                self._retry(ex)
                return
            self._upstream_failed(ex, detail)
            return
        if ex.until_close:  # (bodiless answers ended with their head, before any EOF)
            if ex.chunk_out:
                self._to_client(http1.LAST_CHUNK)
            self._finish(ex, reusable=False)
            self._pump()
            return
        self._upstream_failed(ex, "the origin closed the connection in the middle of its answer")

    def _retry(self, ex: Exchange) -> None:
        """A reused connection closed before answering: once more on a new one."""
        up = ex.up
        assert up is not None
        self._drop_upstream(up)
        ex.up = None
        ex.retried = True
        ex.reused = False
        self._open(ex)

    def _upstream_failed(self, ex: Exchange, detail: str) -> None:
        """The origin failed: ``502`` if nothing of the answer went out yet, else the end."""
        if ex.up is not None:
            self._drop_upstream(ex.up)
            ex.up = None
        if ex.resp is None:
            if ex.record is not None:
                ex.record.error = detail
            self._refuse(502, detail, Reason.SERVER_CLOSED)
            self._pump()
        else:
            if ex.record is not None:
                ex.record.error = detail
                self._log(ex)
            self._end(Reason.SERVER_CLOSED, detail)

    def _drop_upstream(self, up: Endpoint) -> None:
        self.ctx.poller.close(up.sock)
        self.u_read = self.u_write = False
        ex = self.active
        if ex is not None and ex.up is up and ex.reader is not None:
            ex.reader.recycle()
            ex.reader = None

    def _finish(self, ex: Exchange, *, reusable: bool) -> None:
        """The response is complete: log it, keep the origin connection if it can serve again,
        and go on with the next request (or close)."""
        self.active = None
        up = ex.up
        ex.up = None
        self._log(ex)
        if up is not None:
            reader = ex.reader
            if (
                reusable
                and ex.req_done
                and not ex.until_close
                and not up.out
                and (reader is None or not reader.leftover)
            ):
                poller = self.ctx.poller
                if self.u_write:
                    poller.remove_writer(up.fd)
                self.u_read = self.u_write = False
                assert reader is not None
                self.pool.put(ex.key, up, ex.up_addr or ("", 0), ex.token, reader)
            else:
                self.ctx.poller.close(up.sock)
                self.u_read = self.u_write = False
                if reader is not None:
                    reader.recycle()
            ex.reader = None
        if ex.close_after or not ex.req_done:
            self.closing = True
            return
        self.last = _now()
        self._arm(self.last + self.keepalive)
        self._advance()

    def _upgraded(self, ex: Exchange, rest: bytes) -> None:
        """``101``: from here both sides speak the new protocol; a relay moves the bytes."""
        up = ex.up
        assert up is not None
        self.active = None
        if ex.record is not None:
            self._log(ex)
        self._hand_over()
        poller = self.ctx.poller
        if self.u_read:
            poller.remove_reader(up.fd)
        if self.u_write:
            poller.remove_writer(up.fd)
        self.u_read = self.u_write = False
        to_server = bytes(up.out) + (ex.client_rest or b"")
        up.out.clear()
        self.conn.on_upgraded(self.client, up, bytes(self.client.out) + rest, to_server)

    # -- answers and the end ---------------------------------------------------------------
    def _refuse(self, status: int, message: str, reason: Reason) -> None:
        """Answer the request in progress (or the bad bytes) with ``status`` and close."""
        ex = self.active
        if ex is not None and ex.resp is not None:
            self._end(reason, message)  # the answer has begun: nothing else can be said
            return
        self._stop_pending()
        if ex is not None:
            if ex.up is not None:
                self._drop_upstream(ex.up)
                ex.up = None
            record = ex.record
            if record is not None:
                record.status = status
                record.error = message
                self._log(ex)
            self.active = None
        answer = http_response(status, message)
        if status == 407:
            head, _, body = answer.partition(b"\r\n\r\n")
            answer = head + f"\r\nProxy-Authenticate: {PROXY_AUTHENTICATE}".encode() + b"\r\n\r\n" + body
        self._to_client(answer)
        self.end_reason = reason
        self.end_detail = message
        self.closing = True
        self.queue.clear()

    def _log(self, ex: Exchange) -> None:
        record = ex.record
        if record is None:
            return
        ex.record = None
        record.finish(_now())
        ctx = self.ctx
        ctx.access.write_request(record)
        ctx.stats.http_request(record)
        if self.har is not None:
            self.har.add(record)

    def _pump(self) -> None:
        """Send what is queued both ways, then bring the poller's interest up to date."""
        client = self.client
        if client.out:
            try:
                client.flush()
            except OSError as exc:
                self._end(Reason.CLIENT_CLOSED, _describe(exc))
                return
        ex = self.active
        up = ex.up if ex is not None else None
        if up is not None and up.out and ex is not None and ex.sent:
            try:
                up.flush()
            except OSError as exc:
                self._upstream_failed(ex, _describe(exc))
                return
        if self.closing and not client.out and self.active is None and not self.lingering:
            self._linger()
            return
        self._interest(up)

    def _interest(self, up: Endpoint | None) -> None:
        client = self.client
        want = not client.eof and self._want_client()
        if want != self.c_read:
            self.c_read = want
            self._watch_read(client, want, self._on_client_readable)
        want = bool(client.out)
        if want != self.c_write:
            self.c_write = want
            self._watch_write(client, want, self._on_client_writable)
        if up is None:
            return
        want = len(client.out) < HIGH_WATER
        if want != self.u_read:
            self.u_read = want
            self._watch_read(up, want, self._on_upstream_readable)
        want = bool(up.out)
        if want != self.u_write:
            self.u_write = want
            self._watch_write(up, want, self._on_upstream_writable)

    def _watch_read(self, ep: Endpoint, want: bool, callback: Callable[[], None]) -> None:
        poller = self.ctx.poller
        if not want:
            poller.remove_reader(ep.fd)
            return
        poller.add_reader(ep.fd, callback)
        if ep.more and ep.tls is not None:  # plaintext may wait in OpenSSL: no event will say so
            self.ctx.loop.call_soon(callback)

    def _watch_write(self, ep: Endpoint, want: bool, callback: Callable[[], None]) -> None:
        if want:
            self.ctx.poller.add_writer(ep.fd, callback)
        else:
            self.ctx.poller.remove_writer(ep.fd)

    def _on_client_writable(self) -> None:
        try:
            self._pump()
            ex = self.active
            if not self.done and ex is not None and ex.up is not None and ex.up.more:
                self._on_upstream_readable()  # it may have stopped for backpressure
        except Exception as exc:
            self._crash(exc)

    def _on_upstream_writable(self) -> None:
        try:
            self._pump()
        except Exception as exc:
            self._crash(exc)

    def _linger(self) -> None:
        """After a closing answer: half-close, drop what the client still sends for a moment,
        then close (closing at once with unread bytes would reset the connection, and a reset
        can destroy the answer before the client reads it)."""
        self.lingering = True
        client = self.client
        try:
            late = client.read()
        except BlockingIOError:
            late = None  # nothing unread: a plain close cannot reset the answer away
        except (OSError, ssl.SSLError):
            late = b""
        if not late:
            client.close_write()
            try:
                client.flush()
            except OSError:
                pass
            self._end(self.end_reason, self.end_detail)
            return
        client.close_write()
        try:
            client.flush()
        except OSError:
            pass
        if client.eof:
            self._end(self.end_reason, self.end_detail)
            return
        self.armed_for = float("inf")
        self._arm(_now() + LINGER)
        self._interest(None)
        if not self.c_read:
            self.c_read = True
            self.ctx.poller.add_reader(client.fd, self._on_client_readable)

    def _arm(self, deadline: float) -> None:
        if deadline < self.armed_for - 0.05:
            wheel = self.ctx.wheel
            if self.wheel_slot is not None:
                wheel.disarm(self)
            self.armed_for = deadline
            wheel.arm(self, max(0.0, deadline - _now()))

    def on_deadline(self, now: float) -> None:
        """The timer fired: act on the deadline of the current state, or re-arm for it."""
        try:
            self.armed_for = float("inf")
            now = _now()
            if self.lingering:
                self._end(self.end_reason, self.end_detail)
                return
            ex = self.active
            if ex is None:
                if self.reader.partial:
                    deadline = self.head_start + self.conn.spec.sniff_timeout
                    if now >= deadline:
                        self._refuse(408, "request head not complete in time", Reason.SNIFF_TIMEOUT)
                        self._pump()
                        return
                else:
                    deadline = self.last + self.keepalive
                    if now >= deadline:
                        self._end(
                            Reason.CLIENT_IDLE_TIMEOUT, f"idle for {self.keepalive:g}s between requests"
                        )
                        return
            else:
                limit = self.idle_timeout or KEEPALIVE_LIMIT
                deadline = self.last + limit
                if now >= deadline:
                    if ex.resp is None and ex.req_done:
                        self._refuse(
                            504, f"the origin did not answer in {limit:g}s", Reason.SERVER_IDLE_TIMEOUT
                        )
                        self._pump()
                    else:
                        reason = Reason.SERVER_IDLE_TIMEOUT if ex.req_done else Reason.CLIENT_IDLE_TIMEOUT
                        self._end(reason, f"no data for {limit:g}s")
                    return
            self._arm(deadline)
        except Exception as exc:
            self._crash(exc)

    def _hand_over(self) -> None:
        """Stop serving HTTP on this connection (a tunnel or an upgrade takes it): unregister,
        without closing anything."""
        self.done = True
        self.ctx.wheel.disarm(self)
        poller = self.ctx.poller
        if self.c_read:
            poller.remove_reader(self.client.fd)
        if self.c_write:
            poller.remove_writer(self.client.fd)
        self.c_read = self.c_write = False

    def drain(self) -> None:
        """The worker is stopping: close now if idle between requests, else after the answer
        in progress (which then says ``Connection: close``)."""
        if self.done or self.lingering:
            return
        ex = self.active
        if ex is None and not self.queue and not self.reader.partial:
            self._end(Reason.SHUTDOWN, "idle keep-alive connection closed for the drain")
            return
        if ex is not None:
            ex.close_after = True
        self.closing = True

    def _stop_pending(self) -> None:
        """Cancel authentication, resolution, a dial or a TLS handshake under way."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        if self.dial is not None:
            self.dial.cancel()
            self.dial = None
        if self.shake is not None:
            self.shake.cancel()
            self.ctx.poller.close(self.shake.endpoint.sock)
            self.shake = None

    def cancel(self) -> None:
        """Stop everything but the client socket (the connection closes that)."""
        self._stop_pending()
        ex = self.active
        if ex is not None:
            if ex.up is not None:
                self._drop_upstream(ex.up)
                ex.up = None
            if ex.record is not None and not self.done:
                ex.record.error = ex.record.error or "connection ended"
                self._log(ex)
        self.active = None
        if not self.done:
            self._hand_over()
        self.reader.recycle()

    def _end(self, reason: Reason, detail: str) -> None:
        if self.done:
            return
        self.cancel()
        self.conn.http_done(reason, detail)

    def _crash(self, exc: BaseException) -> None:
        log.error("HTTP engine of connection %d failed", self.conn.session.id, exc_info=exc)
        self._end(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return "TLS error: " + describe_error(exc)
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


def origin_pool(ctx: Context) -> OriginPool:
    """The worker's pool of idle origin connections (made on first use)."""
    pool = ctx.origins
    if pool is None:
        pool = ctx.origins = OriginPool(ctx.loop, ctx.poller)
    return pool
