"""The http-proxy mode: an HTTP/1.1 forward proxy with CONNECT, and SOCKS5 on the same port.

accept → [PROXY header] → the first byte tells: ``0x05`` is SOCKS5 (RFC 1928 CONNECT, with RFC
1929 username/password when ``users_file`` is set), anything else is HTTP, served by the
keep-alive engine of :mod:`portway.modes.httpforward` (authentication, destination rules,
pooled origin connections, pipelining, re-framing; see there).

This module is the connection those two share, and the paths that end in a plain relay:

- ``CONNECT host:port`` (checked by the engine against ``connect_ports``, 443 by default, as
  squid) is dialled here under the destination rules (``deny``, then ``allow``, on the IP
  actually dialled, after DNS), answered ``200 Connection established``, then spliced both
  ways; bytes the client pipelined after the head (its ClientHello) go first.
- SOCKS5 CONNECT likewise, answered with the SOCKS5 reply codes (not allowed, host
  unreachable, connection refused, TTL expired for a timeout...).
- A WebSocket (or other) upgrade the origin accepted with ``101`` continues as a relay.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from portway.config.units import format_hostport
from portway.context import Context
from portway.modes.httpforward import HttpForward, authorized, connect_target
from portway.modes.sni import http_response
from portway.modes.tcp import TcpConnection
from portway.net.listener import Listener
from portway.net.relay import Relay
from portway.net.sniff import Sniff
from portway.net.tlsctx import CertError
from portway.net.tlsrelay import Endpoint, Handshake, TlsRelay
from portway.observe.har import HarWriter
from portway.proto import NeedData, http1, socks5
from portway.route.auth import PROXY_AUTHENTICATE
from portway.route.backend import Server
from portway.route.intercept import Interception, refusal_detail
from portway.termination import Reason

log = logging.getLogger("portway.httpproxy")

#: Largest first read, and largest SOCKS5 message read before routing (HTTP heads are the
#: engine's: see :data:`portway.proto.http1.MAX_HEAD`).
HEAD_LIMIT = 65536
CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
#: What the first read is taken for when it does not start a SOCKS5 greeting.
HTTP = object()


def parse_first(data: bytearray) -> socks5.Greeting | object | NeedData:
    """A SOCKS5 greeting when the first byte is 0x05, else :data:`HTTP`."""
    if data[0] == socks5.VERSION:
        return socks5.parse_greeting(data)
    return HTTP


def _http_only(data: bytearray) -> object:
    return HTTP


def har_writer(ctx: Context, path: str) -> HarWriter:
    """The worker's HAR writer for ``path`` (with several workers, each writes its own file:
    ``capture.har`` becomes ``capture.2.har`` for worker 2)."""
    har = ctx.har.get(path)
    if har is None:
        target = path
        if ctx.worker_count > 1:
            stem, dot, ext = path.rpartition(".")
            if dot and "/" not in ext:
                target = f"{stem}.{ctx.worker_index}.{ext}"
            else:
                target = f"{path}.{ctx.worker_index}"
        har = ctx.har[path] = HarWriter(target)
    return har


_SOCKS_FOR_REASON = {
    Reason.CONNECT_REFUSED: socks5.Reply.CONNECTION_REFUSED,
    Reason.CONNECT_TIMEOUT: socks5.Reply.TTL_EXPIRED,
}


class HttpProxyConnection(TcpConnection):
    """One client of an http-proxy listener (HTTP or SOCKS5)."""

    __slots__ = ("is_socks",)

    def __init__(
        self,
        ctx: Context,
        listener: Listener,
        sock: socket.socket,
        peer: tuple[str, int],
        frontend: tuple[str, int],
    ) -> None:
        self.is_socks = False
        super().__init__(ctx, listener, sock, peer, frontend)

    # -- reading ---------------------------------------------------------------------------
    def _read(
        self,
        parse: Callable[[bytearray], Any],
        what: str,
        initial: bytes,
        on_result: Callable[[Any, bytearray], None],
    ) -> None:
        self._sniff(parse, what, HEAD_LIMIT, initial, on_result, self._on_read_error)

    def _route(self, prefix: bytes) -> None:
        """The PROXY header (if any) is done: the first bytes tell SOCKS5 from HTTP."""
        spec = self.spec.http_proxy
        assert spec is not None
        if not prefix:
            # The first bytes are most often there already (always with TCP_DEFER_ACCEPT):
            # one read decides without setting up a sniffing stage.
            try:
                prefix = self.sock.recv(HEAD_LIMIT)
            except BlockingIOError:
                parse = parse_first if spec.socks5 else _http_only
                self._read(parse, "HTTP request head or SOCKS5 greeting", b"", self._on_first)
                return
            except OSError as exc:
                self._end(Reason.CLIENT_CLOSED, exc.strerror or type(exc).__name__)
                return
            if not prefix:
                self._end(Reason.CLIENT_CLOSED, "closed before sending anything")
                return
        if spec.socks5 and prefix[0] == socks5.VERSION:
            data = bytearray(prefix)
            try:
                result = parse_first(data)
            except socks5.Socks5Error as exc:
                reply = socks5.reply(exc.reply) if exc.reply is not None else b""
                self._answer_and_end(reply, Reason.PROTOCOL_ERROR, f"bad SOCKS5 greeting: {exc}")
                return
            self._on_first(result, data)
            return
        self._on_first(HTTP, prefix)

    def _on_read_error(self, reason: Reason, detail: str) -> None:
        exc = getattr(self.stage, "error", None)
        if isinstance(exc, socks5.Socks5Error) and exc.reply is not None:
            self._answer_and_end(socks5.reply(exc.reply), Reason.PROTOCOL_ERROR, str(exc))
        else:
            self._end(reason, detail)

    def _on_first(self, result: object, data: bytes | bytearray) -> None:
        try:
            session = self.session
            session.sniff_s = self.ctx.loop.time() - session.start_mono
            self.ctx.stats.sniffed(session.listener, session.sniff_s)
            if isinstance(result, socks5.Greeting):
                self.is_socks = True
                self._on_greeting(result, data)
            elif result is HTTP:
                self._serve_http(data if isinstance(data, bytes) else bytes(data))
            else:  # a SOCKS5 greeting still incomplete
                parse = socks5.parse_greeting
                self._read(parse, "SOCKS5 greeting", bytes(data), self._on_first)
        except Exception as exc:
            self._crash(exc)

    # -- SOCKS5 ----------------------------------------------------------------------------
    def _send_now(self, data: bytes) -> bool:
        """Send a small handshake answer at once; False (and the end) if the socket refused."""
        try:
            sent = self.sock.send(data)
        except OSError as exc:
            self._end(Reason.CLIENT_CLOSED, exc.strerror or type(exc).__name__)
            return False
        if sent != len(data):
            self._end(Reason.CLIENT_CLOSED, "the client does not read its answers")
            return False
        return True

    def _on_greeting(self, greeting: socks5.Greeting, data: bytes | bytearray) -> None:
        users = self.runtime.users.get(self.spec.name)
        method = socks5.choose_method(greeting, auth_required=users is not None)
        stage = self.stage
        if isinstance(stage, Sniff):
            stage.cancel()
        if not self._send_now(socks5.method_reply(method)):
            return
        rest = bytes(data[greeting.length :])
        if method is socks5.Method.NO_ACCEPTABLE:
            detail = "SOCKS5: no acceptable authentication method offered"
            self._end(Reason.REFUSED_BY_RULE, detail)
        elif method is socks5.Method.USERNAME_PASSWORD:
            self._read(socks5.parse_auth, "SOCKS5 username/password", rest, self._on_socks_auth)
        else:
            self._read(socks5.parse_request, "SOCKS5 request", rest, self._on_socks_request)

    def _on_socks_auth(self, creds: socks5.Credentials, data: bytearray) -> None:
        try:
            rest = bytes(data[creds.length :])

            def done(ok: bool) -> None:
                if not self._send_now(socks5.auth_reply(ok)):
                    return
                if not ok:
                    self._end(
                        Reason.REFUSED_BY_RULE, f"SOCKS5: wrong username or password for {creds.username!r}"
                    )
                    return
                self.session.route = creds.username
                self._read(socks5.parse_request, "SOCKS5 request", rest, self._on_socks_request)

            self._verify(creds.username, creds.password, done)
        except Exception as exc:
            self._crash(exc)

    def _on_socks_request(self, request: socks5.Request, data: bytearray) -> None:
        try:
            self.prefix = bytes(data[request.length :])
            self._go(request.host, request.port)
        except Exception as exc:
            self._crash(exc)

    # -- HTTP ----------------------------------------------------------------------------
    def _serve_http(self, initial: bytes) -> None:
        stage = self.stage
        if isinstance(stage, Sniff):
            stage.cancel()
        if initial.startswith(b"CONNECT ") and self._connect_at_once(initial):
            return
        engine = HttpForward(self, Endpoint(self.sock))
        self.stage = engine
        engine.start(initial)

    def _connect_at_once(self, data: bytes) -> bool:
        """A whole ``CONNECT`` head in the first read, allowed at once: tunnel without setting
        up the HTTP engine (the common case, and the one tunnels per second are made of).
        False when anything needs the engine (an answer, a slow password check, more bytes)."""
        reader = http1.MessageReader.fresh(response=False)
        try:
            events = reader.feed(data)
        except http1.HttpError:
            return False
        if len(events) != 3 or events[2][0] != http1.UPGRADE:
            return False
        head = events[0][1]
        assert isinstance(head, http1.Head)
        spec = self.spec.http_proxy
        assert spec is not None
        user = authorized(self.runtime.users.get(self.spec.name), head)
        where = connect_target(head, spec.connect_ports)
        if not user or isinstance(where[0], int):
            return False
        reader.recycle()
        if isinstance(user, str):
            self.session.route = user
        rest = events[2][1]
        assert isinstance(rest, bytes) and isinstance(where[0], str) and isinstance(where[1], int)
        self.on_tunnel(where[0], where[1], rest, b"")
        return True

    def on_tunnel(self, host: str, port: int, rest: bytes, pending: bytes) -> None:
        """The engine passed on a checked ``CONNECT``: ``pending`` (answers not yet sent)
        and then ``200 Connection established`` go to the client, ``rest`` to the server
        (or, when the destination is intercepted, into Portway's own TLS server)."""
        self.stage = None
        interception = self.runtime.intercepts.get(self.spec.name)
        if interception is not None and interception.should_intercept(host, self.ctx.loop.time()):
            self._intercept(interception, host, port, rest, pending)
            return
        self.greeting = pending + CONNECTED
        self.prefix = rest
        self._go(host, port)

    # -- interception ----------------------------------------------------------------------
    def _intercept(
        self, interception: Interception, host: str, port: int, rest: bytes, pending: bytes
    ) -> None:
        """Answer the CONNECT, complete the client's TLS handshake with a certificate made for
        ``host``, then serve the HTTP/1.1 inside with the engine, towards ``host:port`` over
        verified TLS."""
        try:
            context = interception.ca.leaf_context(host, ["http/1.1"])
        except (ValueError, CertError) as exc:
            self._answer_http(502, f"cannot make a certificate for {host}: {exc}", Reason.INTERNAL_ERROR)
            return
        try:
            self.sock.send(pending + CONNECTED)  # small, into an empty send buffer
        except OSError as exc:
            self._end(Reason.CLIENT_CLOSED, exc.strerror or type(exc).__name__)
            return
        client = Endpoint.wrap(self.sock, context, server_side=True, server_hostname=None)
        if rest:
            client.feed(rest)
        self.client_ep = client
        self.session.sni = format_hostport(host, port)
        left = max(0.5, self.spec.sniff_timeout - (self.ctx.loop.time() - self.session.start_mono))
        handshake = Handshake(
            self.ctx.poller,
            self.ctx.wheel,
            client,
            timeout=left,
            client_side=True,
            on_done=lambda: self._intercepted(interception, client, host, port),
            on_error=lambda reason, detail: self._refused(interception, host, reason, detail),
        )
        self.stage = handshake
        handshake.start()

    def _intercepted(self, interception: Interception, client: Endpoint, host: str, port: int) -> None:
        try:
            session = self.session
            session.tls_version, session.alpn = client.describe()
            self.ctx.stats.handshake(session.listener, session.tls_version, session.alpn)
            har = None
            if interception.har is not None:
                har = har_writer(self.ctx, interception.har)
            engine = HttpForward(
                self, client, origin=(host, port), origin_tls=interception.origin_context, har=har
            )
            self.stage = engine
            engine.start(b"")
        except Exception as exc:
            self._crash(exc)

    def _refused(self, interception: Interception, host: str, reason: Reason, detail: str) -> None:
        """The client's handshake failed: if it refused the forged certificate (an alert, or a
        close in the middle), say so clearly, and remember the host (``pinning``)."""
        stage = self.stage
        exc = stage.error if isinstance(stage, Handshake) else None
        alert = refusal_detail(exc.reason) if exc is not None else None
        if alert is None and reason is Reason.CLIENT_CLOSED:
            alert = "closed the connection during the handshake"
        if alert is not None:
            passed = interception.client_refused(host, self.ctx.loop.time(), alert)
            log.warning("%s", interception.describe_refusal(host, alert, passed))
            detail = f"the client refused the intercepting certificate for {host}: {alert}"
            reason = Reason.TLS_HANDSHAKE_FAILED
        self.stage = None
        self._end(reason, detail)

    def on_upgraded(self, client: Endpoint, server: Endpoint, to_client: bytes, to_server: bytes) -> None:
        """The origin answered ``101``: relay both ways from here (the engine unregistered
        both sockets; the relay owns and closes them)."""
        ctx = self.ctx
        session = self.session
        if client.tls is None and server.tls is None:
            relay: Relay | TlsRelay = Relay(
                ctx.poller,
                ctx.wheel,
                self.sock,
                server.sock,
                session,
                self._on_relay_done,
                mode=self.spec.relay,
                pipes=ctx.pipes,
                buffers=ctx.buffers,
                idle_timeout=self.spec.idle_timeout,
                to_server=to_server,
                to_client=to_client,
            )
        else:
            client.write(to_client)
            relay = TlsRelay(
                ctx.poller,
                ctx.wheel,
                client,
                server,
                session,
                self._on_relay_done,
                idle_timeout=self.spec.idle_timeout,
                to_server=to_server,
            )
        self.stage = relay
        relay.start()

    def drain(self) -> None:
        """The worker is stopping: an HTTP connection idle between requests ends now, one in
        the middle of a request after its answer; tunnels and SOCKS5 relays run on."""
        if isinstance(self.stage, HttpForward):
            self.stage.drain()

    def http_done(self, reason: Reason, detail: str) -> None:
        """The engine ended the connection (it has released everything but the client)."""
        self.stage = None
        self._end(reason, detail)

    # -- authentication --------------------------------------------------------------------
    def _verify(self, user: str, password: str, then: Callable[[bool], None]) -> None:
        """Check credentials: at once when known, else bcrypt in a thread (it is slow by design)."""
        users = self.runtime.users[self.spec.name]
        if users.verify_cached(user, password):
            then(True)
            return
        stage = self.stage
        if isinstance(stage, Sniff):
            stage.cancel()
        self.stage = None

        async def check() -> None:
            try:
                ok = await self.ctx.loop.run_in_executor(None, users.verify, user, password)
                self.resolving = None
                if not self.ended:
                    then(ok)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._crash(exc)

        self.resolving = self.ctx.loop.create_task(check())

    # -- dialling --------------------------------------------------------------------------
    def _go(self, host: str, port: int) -> None:
        spec = self.spec.http_proxy
        assert spec is not None
        self.session.sni = f"{host}:{port}"
        policy = self.runtime.policies[(self.spec.name, "")]
        self._dial_destination(host, port, policy, timeout=spec.connect_timeout, timeout_retries=spec.retries)

    def _destination_refused(self, why: str) -> None:
        self._fail(403, socks5.Reply.NOT_ALLOWED, Reason.REFUSED_BY_RULE, f"destination refused: {why}")

    def _unresolved(self, host: str, exc: OSError) -> None:
        detail = f"{host}: cannot resolve: {exc}"
        self._fail(502, socks5.Reply.HOST_UNREACHABLE, Reason.CONNECT_REFUSED, detail)

    def _dial_failed(self, reason: Reason, detail: str) -> None:
        status = 504 if reason is Reason.CONNECT_TIMEOUT else 502
        self._fail(status, _SOCKS_FOR_REASON.get(reason, socks5.Reply.GENERAL_FAILURE), reason, detail)

    def _on_connected(self, ssock: socket.socket, server: Server) -> None:
        if self.is_socks:
            bound = ssock.getsockname()
            self.greeting = socks5.reply(socks5.Reply.SUCCEEDED, (str(bound[0]), int(bound[1])))
        super()._on_connected(ssock, server)

    # -- answers ---------------------------------------------------------------------------
    def _fail(self, status: int, code: socks5.Reply, reason: Reason, detail: str) -> None:
        if self.is_socks:
            self._answer_and_end(socks5.reply(code), reason, detail)
        else:
            self._answer_http(status, detail, reason)

    def _answer_http(self, status: int, message: str, reason: Reason) -> None:
        answer = http_response(status, message)
        if status == 407:
            head, _, body = answer.partition(b"\r\n\r\n")
            answer = head + f"\r\nProxy-Authenticate: {PROXY_AUTHENTICATE}".encode() + b"\r\n\r\n" + body
        self._answer_and_end(answer, reason, message)
