"""The http-proxy mode: an HTTP/1.1 forward proxy with CONNECT, and SOCKS5 on the same port.

accept → [PROXY header] → the first byte tells: ``0x05`` is SOCKS5 (RFC 1928 CONNECT, with RFC
1929 username/password when ``users_file`` is set), anything else an HTTP/1 request head →
authenticate (``Proxy-Authorization: Basic``) → check the destination (``deny``, then ``allow``,
on the IP actually dialled, after DNS) → dial (timeouts retried) → relay:

- ``CONNECT host:port`` (``connect_ports``, 443 by default, as squid) answers
  ``200 Connection established`` and then splices both ways; bytes the client pipelined after
  the head (its ClientHello) go first.
- An absolute-form request (``GET http://host/path``) is rewritten for the origin: origin-form
  target, hop-by-hop fields removed (``Connection`` and the fields it names, ``Keep-Alive``,
  ``Proxy-Authorization``, ``Proxy-Connection``, ``TE``, ``Trailer``, ``Upgrade`` unless this
  is a real upgrade), ``Via`` added, ``X-Forwarded-For`` if configured, and
  ``Connection: close``; then bytes flow both ways untouched (the body in whatever framing the
  client chose, the response in whatever framing the origin chose). A WebSocket upgrade keeps
  ``Upgrade`` and relays after ``101``.

This version handles one request per client connection: after the response the origin closes
(``Connection: close``) and so does Portway, and clients open a new connection for the next
request. Connection reuse on both sides and response-side header processing are for a later
version (see docs).

Framing checks where request smuggling lives: ``Content-Length`` with ``Transfer-Encoding``,
conflicting or malformed ``Content-Length``, a ``Transfer-Encoding`` whose last coding is not
``chunked``, or one on HTTP/1.0, are answered ``400``; the head parser already refuses bare LF,
obsolete line folding and over-long heads.

Answers are real HTTP responses (or SOCKS5 reply codes): ``400`` bad request, ``403`` refused by
rule, ``407`` credentials needed (with ``Proxy-Authenticate``), ``502`` the origin failed (with
the reason), ``504`` it did not answer in time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from portway.context import Context
from portway.modes.sni import http_response
from portway.modes.tcp import TcpConnection
from portway.net.listener import Listener
from portway.net.sniff import Sniff
from portway.proto import NeedData, httphead, socks5
from portway.route.auth import PROXY_AUTHENTICATE, parse_basic
from portway.route.backend import Server
from portway.termination import Reason

log = logging.getLogger("portway.httpproxy")

#: Largest request head (or SOCKS5 message) read before routing.
HEAD_LIMIT = 65536
CONNECTED = b"HTTP/1.1 200 Connection established\r\n\r\n"
#: Hop-by-hop fields (RFC 9110 §7.6.1), removed before a request goes to the origin.
HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authorization", "proxy-connection", "te", "trailer", "upgrade"}
)


def parse_first(data: bytearray) -> socks5.Greeting | httphead.RequestHead | NeedData:
    """A SOCKS5 greeting when the first byte is 0x05, else an HTTP/1 request head."""
    if data[0] == socks5.VERSION:
        return socks5.parse_greeting(data)
    return httphead.parse(data, max_head=HEAD_LIMIT)


def framing_problem(head: httphead.RequestHead) -> str | None:
    """Why the body framing of ``head`` is refused (request smuggling lives here), or None."""
    lengths = [v for name, v in head.headers if name == "content-length"]
    codings = [v for name, v in head.headers if name == "transfer-encoding"]
    if codings:
        if head.version == (1, 0):
            return "Transfer-Encoding in an HTTP/1.0 request"
        if lengths:
            return "both Content-Length and Transfer-Encoding"
        last = ",".join(codings).split(",")[-1].strip().lower()
        if last != "chunked":
            return f"Transfer-Encoding {','.join(codings)!r} does not end with chunked"
    values = {part.strip() for v in lengths for part in v.split(",")}
    if values and (len(values) > 1 or not all(v.isdigit() and v.isascii() for v in values)):
        return f"bad or conflicting Content-Length {', '.join(sorted(values))!r}"
    return None


def rewrite_request(head: httphead.RequestHead, path: str, client_ip: str, *, x_forwarded_for: bool) -> bytes:
    """The head to send to the origin (see the module docstring)."""
    named = {
        token.strip().lower()
        for name, value in head.headers
        if name == "connection"
        for token in value.split(",")
    }
    upgrade = "upgrade" in named and any(name == "upgrade" for name, _ in head.headers)
    drop = HOP_BY_HOP | named
    if upgrade:
        drop = drop - {"upgrade"}
    lines = [f"{head.method} {path} HTTP/{head.version[0]}.{head.version[1]}"]
    via = [value for name, value in head.headers if name == "via"]
    forwarded = [value for name, value in head.headers if name == "x-forwarded-for"]
    for name, value in head.headers:
        if name in drop or name in ("via", "x-forwarded-for"):
            continue
        lines.append(f"{name}: {value}")
    lines.append("via: " + ", ".join([*via, f"{head.version[0]}.{head.version[1]} portway"]))
    if x_forwarded_for:
        lines.append("x-forwarded-for: " + ", ".join([*forwarded, client_ip]))
    elif forwarded:
        lines.append("x-forwarded-for: " + ", ".join(forwarded))
    lines.append("connection: upgrade" if upgrade else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def origin_form(target: str) -> tuple[str, str] | None:
    """``("host[:port]", "/path?query")`` of an ``http://`` absolute-form target, else None."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() != "http":
        return None
    authority, slash, path = rest.partition("/")
    path = "/" + path if slash else "/"
    if "?" in authority:
        authority, _, query = authority.partition("?")
        path = "/?" + query
    return authority, path.split("#", 1)[0]


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
        """The PROXY header (if any) is done: read an HTTP head or a SOCKS5 greeting."""
        spec = self.spec.http_proxy
        assert spec is not None
        parse = parse_first if spec.socks5 else self._parse_head
        self._read(parse, "HTTP request head or SOCKS5 greeting", prefix, self._on_first)

    @staticmethod
    def _parse_head(data: bytearray) -> httphead.RequestHead | NeedData:
        return httphead.parse(data, max_head=HEAD_LIMIT)

    def _on_read_error(self, reason: Reason, detail: str) -> None:
        exc = getattr(self.stage, "error", None)
        if isinstance(exc, httphead.HeadError):
            self._answer_http(int(exc.hint or 400), str(exc), Reason.PROTOCOL_ERROR)
        elif isinstance(exc, socks5.Socks5Error) and exc.reply is not None:
            self._answer_and_end(socks5.reply(exc.reply), Reason.PROTOCOL_ERROR, str(exc))
        else:
            self._end(reason, detail)

    def _on_first(self, result: object, data: bytearray) -> None:
        try:
            session = self.session
            session.sniff_s = self.ctx.loop.time() - session.start_mono
            self.ctx.stats.sniffed(session.listener, session.sniff_s)
            if isinstance(result, socks5.Greeting):
                self.is_socks = True
                self._on_greeting(result, data)
            else:
                assert isinstance(result, httphead.RequestHead)
                self._on_head(result, data)
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

    def _on_greeting(self, greeting: socks5.Greeting, data: bytearray) -> None:
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

    # -- HTTP ------------------------------------------------------------------------------
    def _on_head(self, head: httphead.RequestHead, data: bytearray) -> None:
        users = self.runtime.users.get(self.spec.name)
        if users is not None:
            header = next((v for name, v in head.headers if name == "proxy-authorization"), None)
            creds = parse_basic(header) if header is not None else None
            if creds is None:
                self._answer_http(407, "proxy authentication required", Reason.REFUSED_BY_RULE)
                return
            self._verify(creds[0], creds[1], lambda ok: self._after_auth(ok, creds[0], head, data))
            return
        self._after_auth(True, None, head, data)

    def _after_auth(self, ok: bool, user: str | None, head: httphead.RequestHead, data: bytearray) -> None:
        try:
            if not ok:
                self._answer_http(407, f"wrong username or password for {user!r}", Reason.REFUSED_BY_RULE)
                return
            if user is not None:
                self.session.route = user
            spec = self.spec.http_proxy
            assert spec is not None
            rest = bytes(data[head.length :])
            if head.method == "CONNECT":
                if head.host is None or head.port is None:
                    self._answer_http(400, "CONNECT needs host:port", Reason.PROTOCOL_ERROR)
                    return
                if not any(low <= head.port <= high for low, high in spec.connect_ports):
                    allowed = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spec.connect_ports)
                    self._answer_http(
                        403,
                        f"CONNECT to port {head.port} is not allowed (connect_ports: {allowed})",
                        Reason.REFUSED_BY_RULE,
                    )
                    return
                self.greeting = CONNECTED
                self.prefix = rest
                self._go(head.host, head.port)
                return
            parts = origin_form(head.target)
            if parts is None or head.host is None:
                why = (
                    "https:// URLs go through CONNECT"
                    if head.target.lower().startswith("https://")
                    else "this is a forward proxy: send an absolute URI (GET http://host/path) or CONNECT"
                )
                self._answer_http(400, why, Reason.PROTOCOL_ERROR)
                return
            problem = framing_problem(head)
            if problem is not None:
                self._answer_http(400, problem, Reason.PROTOCOL_ERROR)
                return
            new_head = rewrite_request(
                head, parts[1], self.session.client[0], x_forwarded_for=spec.x_forwarded_for
            )
            self.prefix = new_head + rest
            self._go(head.host, head.port or 80)
        except Exception as exc:
            self._crash(exc)

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
