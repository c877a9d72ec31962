"""The sni mode: route TLS by the ClientHello's server name without decrypting; HTTP by Host.

accept → [PROXY header] → sniff → route → dial → relay, as in the tcp mode, with a sniff that
reads the first bytes: ``0x16`` starts a TLS handshake record and is read until the
:mod:`ClientHello <portway.proto.clienthello>` is complete; anything else is read as an HTTP/1
:mod:`request head <portway.proto.httphead>`. Either way every byte is kept and replayed to the
server first, so the backend sees the client's own handshake or request.

The listener's :class:`~portway.route.table.RouteTable` picks the route: a backend pool (with
everything the tcp mode has), or "dial the name itself", where the name is resolved and the IP
actually dialled must pass the route's ``allow`` list
(:class:`~portway.route.destpolicy.DestPolicy`).

Refusals are answered in the client's protocol before closing: a fatal TLS alert
(``unrecognized_name``, ``handshake_failure``, or the parser's alert for a bad hello) or a short
HTTP response (400, 404, 421...), and the access log records why.
"""

from __future__ import annotations

import logging
import socket

from portway.context import Context
from portway.modes.tcp import TcpConnection
from portway.net.listener import Listener
from portway.net.tlsrelay import Endpoint, Handshake
from portway.proto import NEED_DATA, NeedData, clienthello, httphead
from portway.route.table import Decision, Refusal, Sniffed
from portway.termination import Reason

log = logging.getLogger("portway.sni")

#: Largest ClientHello or HTTP request head read before routing.
SNIFF_LIMIT = 65536
#: Connect timeout when dialling a name (a route that dials has no backend to take it from).
DIAL_TIMEOUT = 5.0

_HTTP_REASONS = {
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    414: "URI Too Long",
    421: "Misdirected Request",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    505: "HTTP Version Not Supported",
}


def sniff_parse(data: bytearray) -> clienthello.ClientHello | httphead.RequestHead | NeedData:
    """A ClientHello when the first byte says TLS, else an HTTP request head (or ``NEED_DATA``)."""
    if data[0] == 0x16:
        return clienthello.parse(data, max_size=SNIFF_LIMIT)
    return httphead.parse(data, max_head=SNIFF_LIMIT)


def http_response(status: int, message: str) -> bytes:
    """A short ``text/plain`` HTTP/1.1 answer that closes the connection."""
    body = (message + "\n").encode("utf-8", "replace")
    reason = _HTTP_REASONS.get(status, "Error")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class SniConnection(TcpConnection):
    """One client of an sni listener."""

    __slots__ = ("decision", "is_tls")

    def __init__(
        self,
        ctx: Context,
        listener: Listener,
        sock: socket.socket,
        peer: tuple[str, int],
        frontend: tuple[str, int],
    ) -> None:
        self.is_tls = True
        self.decision: Decision | None = None
        super().__init__(ctx, listener, sock, peer, frontend)

    # -- sniff ------------------------------------------------------------------------------
    def _route(self, prefix: bytes) -> None:
        """The PROXY header (if any) is done: read the ClientHello or the HTTP head."""
        if prefix:
            try:
                result = sniff_parse(bytearray(prefix))
            except (clienthello.ClientHelloError, httphead.HeadError) as exc:
                self.is_tls = prefix[0] == 0x16
                self._bad_input(exc)
                return
            if result is not NEED_DATA:
                self._on_sniffed(result, bytearray(prefix))
                return
        what = "TLS ClientHello or HTTP request head"
        self._sniff(sniff_parse, what, SNIFF_LIMIT, prefix, self._on_sniffed, self._on_sniff_error)

    def _on_sniff_error(self, reason: Reason, detail: str) -> None:
        stage = self.stage
        exc = getattr(stage, "error", None)
        if isinstance(exc, (clienthello.ClientHelloError, httphead.HeadError)):
            self._bad_input(exc)
            return
        self._end(reason, detail)

    def _on_sniffed(self, result: object, data: bytearray) -> None:
        try:
            session = self.session
            session.sniff_s = self.ctx.loop.time() - session.start_mono
            self.ctx.stats.sniffed(session.listener, session.sniff_s)
            if isinstance(result, clienthello.ClientHello):
                self.is_tls = True
                sniffed = Sniffed(result.server_name, result.alpn, session.client[0], "tls")
            else:
                assert isinstance(result, httphead.RequestHead)
                self.is_tls = False
                sniffed = Sniffed(result.host, (), session.client[0], "http")
            session.sni = sniffed.name
            if not self.is_tls and self.spec.mode == "tls":
                message = "this port speaks TLS only: use https://"
                self._answer_and_end(http_response(400, message), Reason.PROTOCOL_ERROR, message)
                return
            table = self.runtime.tables[self.spec.name]
            decision = table.decide(sniffed)
            if isinstance(decision, Refusal):
                self._refuse(decision)
                return
            session.route = decision.route.name
            if self.is_tls and decision.route.action == "terminate":
                self._terminate(decision, sniffed.name, bytes(data))
                return
            self._forward(decision, bytes(data))
        except Exception as exc:
            self._crash(exc)

    def _forward(self, decision: Decision, prefix: bytes) -> None:
        if decision.backend is not None:
            self._dial_backend(decision.backend, prefix)
        else:
            self._dial_name(decision, prefix)

    # -- termination ------------------------------------------------------------------------
    def _terminate(self, decision: Decision, name: str | None, hello: bytes) -> None:
        """Complete the TLS handshake here, with the certificate for ``name`` and the route's
        ALPN offer; the ClientHello already read is the handshake's first input."""
        context = self.runtime.certs[self.spec.name].context_for(name, decision.route.offer_alpn)
        endpoint = Endpoint.wrap(self.sock, context, server_side=True, server_hostname=None)
        endpoint.feed(hello)
        self.client_ep = endpoint
        self.decision = decision
        handshake = Handshake(
            self.ctx.poller,
            self.ctx.wheel,
            endpoint,
            timeout=self.spec.sniff_timeout,
            client_side=True,
            on_done=self._on_handshake,
            on_error=self._on_handshake_failed,
        )
        self.stage = handshake
        handshake.start()

    def _on_handshake(self) -> None:
        try:
            endpoint, decision = self.client_ep, self.decision
            assert endpoint is not None and decision is not None
            self.decision = None
            session = self.session
            session.tls_version, session.alpn = endpoint.describe()
            self.ctx.stats.handshake(session.listener, session.tls_version, session.alpn)
            self._forward(decision, b"")
        except Exception as exc:
            self._crash(exc)

    def _on_handshake_failed(self, reason: Reason, detail: str) -> None:
        self.client_ep = None
        self.decision = None
        self._end(reason, detail)

    # -- answers ----------------------------------------------------------------------------
    def _bad_input(self, exc: clienthello.ClientHelloError | httphead.HeadError) -> None:
        if isinstance(exc, clienthello.ClientHelloError):
            answer = clienthello.alert_record(int(exc.alert))
        else:
            answer = http_response(int(exc.hint or 400), str(exc))
        self._answer_and_end(answer, Reason.PROTOCOL_ERROR, str(exc))

    def _refuse(self, refusal: Refusal) -> None:
        if self.is_tls:
            answer = clienthello.alert_record(clienthello.Alert[refusal.alert.upper()])
        else:
            answer = http_response(refusal.http_status, refusal.message)
        self._answer_and_end(answer, Reason.REFUSED_BY_RULE, refusal.message)

    # -- dial by name -----------------------------------------------------------------------
    def _dial_name(self, decision: Decision, prefix: bytes) -> None:
        host, port = decision.dial_host, decision.dial_port
        assert host is not None and port is not None
        self.prefix = prefix
        policy = self.runtime.policies[(self.spec.name, decision.route.name)]
        self._dial_destination(host, port, policy, timeout=DIAL_TIMEOUT)

    def _destination_refused(self, why: str) -> None:
        self._refuse(Refusal("not_allowed", why, "handshake_failure", 403))

    def _unresolved(self, host: str, exc: OSError) -> None:
        self._refuse(Refusal("not_allowed", f"{host}: cannot resolve: {exc}", "handshake_failure", 502))
