"""The gateway mode: the client names its backend in an encrypted token line; no backend list.

accept → [PROXY header] → read one line (``handshake_timeout``, ``line_limit``) → decode the
token (:mod:`portway.proto.gateway`: v1 frontd tokens and authenticated v2 tokens on one
listener) → resolve the address → check it against ``allow`` on the IP actually dialled →
dial (timeouts retried ``retries`` times) → answer ``200`` and relay, the bytes the client sent
after its newline first. Every answer is exactly three ASCII bytes:

=====  ==================================================================================
200    connected; the relay runs from here
400    the line could not be read: no newline within ``line_limit``, or EOF first
401    the token is not valid (one code path for every v1 and v2 failure: no padding
       oracle), or a v1 token leads outside ``allow``
403    an authentic v2 token for a destination outside ``allow``
502    the backend refused or failed (or its name did not resolve)
504    the backend did not answer within ``connect_timeout``, ``retries`` + 1 times
=====  ==================================================================================

``400``/``401``/``403`` come before any dial; nothing is dialled for a token that does not
pass. A silent client is closed at the deadline without an answer. Failed handshakes count
against the source address (:mod:`portway.route.sourcelimit`): answers to a source that keeps
failing are delayed, then the source is refused for a while. Handshakes in progress are capped
by ``max_pending``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import socket
import time

from portway.context import Context
from portway.modes.tcp import TcpConnection
from portway.net.dial import Dial
from portway.net.listener import Listener, share_of
from portway.net.sniff import Sniff
from portway.proto import gateway
from portway.route.backend import Server
from portway.route.sourcelimit import SourceLimiter
from portway.termination import Reason

log = logging.getLogger("portway.gateway")

#: Accepted tokens remembered per listener and worker (see GatewayConnection._decode).
TOKEN_CACHE = 10_000

OK = b"200"
BAD_LINE = b"400"
BAD_TOKEN = b"401"
FORBIDDEN = b"403"
BAD_GATEWAY = b"502"
TIMEOUT = b"504"


class GatewayConnection(TcpConnection):
    """One client of a gateway listener."""

    __slots__ = ("later", "pending", "version")

    def __init__(
        self,
        ctx: Context,
        listener: Listener,
        sock: socket.socket,
        peer: tuple[str, int],
        frontend: tuple[str, int],
    ) -> None:
        self.version = 0
        self.pending = False
        self.later: asyncio.TimerHandle | None = None
        super().__init__(ctx, listener, sock, peer, frontend)

    # -- limits ----------------------------------------------------------------------------
    def _limiter(self) -> SourceLimiter:
        spec = self.spec.gateway
        assert spec is not None
        limiters = self.ctx.source_limiters
        limiter = limiters.get(self.spec.name)
        if limiter is None:
            limiter = limiters[self.spec.name] = SourceLimiter(spec.source_limit)
        elif limiter.limit != spec.source_limit:
            limiter.limit = spec.source_limit  # a reload changed it: keep the buckets
        return limiter

    def _set_pending(self, on: bool) -> None:
        if on == self.pending:
            return
        self.pending = on
        counts = self.ctx.gateway_pending
        counts[self.spec.name] = counts.get(self.spec.name, 0) + (1 if on else -1)

    # -- the line --------------------------------------------------------------------------
    def _route(self, prefix: bytes) -> None:
        """The PROXY header (if any) is done: read the token line."""
        spec = self.spec.gateway
        assert spec is not None
        ip = self.session.client[0]
        banned = self._limiter().refused_for(ip, time.monotonic())
        if banned:
            self._end(
                Reason.REFUSED_BY_RULE,
                f"{ip} is refused for {banned:.0f}s more after too many failed handshakes",
            )
            return
        ctx = self.ctx
        share = share_of(spec.max_pending, ctx.worker_index, ctx.worker_count)
        if ctx.gateway_pending.get(self.spec.name, 0) >= share:
            self._end(Reason.REFUSED_BY_RULE, f"{share} handshakes already in progress (max_pending)")
            return
        self._set_pending(True)
        parse = functools.partial(gateway.parse_line, limit=spec.line_limit)
        self._sniff(parse, "token line", spec.line_limit + 1, prefix, self._on_line, self._on_line_error)

    def _on_line_error(self, reason: Reason, detail: str) -> None:
        self._set_pending(False)
        delay = self._limiter().failed(self.session.client[0], time.monotonic())
        if reason is Reason.SNIFF_TIMEOUT:
            self._end(reason, detail)  # a silent client gets no answer
        else:
            self._answer(BAD_LINE, reason, detail, delay)

    def _on_line(self, line: gateway.Line, data: bytearray) -> None:
        try:
            self._set_pending(False)
            session = self.session
            session.sniff_s = self.ctx.loop.time() - session.start_mono
            self.ctx.stats.sniffed(session.listener, session.sniff_s)
            spec = self.spec.gateway
            assert spec is not None
            try:
                version, address = self._decode(line.token)
            except gateway.TokenError as exc:
                self._refuse(BAD_TOKEN, f"token refused: {exc}")
                return
            self.version = version
            self.ctx.stats.gateway_token(session.listener, version)
            session.sni = str(address)
            self.prefix = bytes(data[line.length :])
            self.greeting = OK
            self._dial_destination(
                address.host,
                address.port,
                self.runtime.gateway_policies[self.spec.name],
                timeout=spec.connect_timeout,
                timeout_retries=spec.retries,
            )
        except Exception as exc:
            self._crash(exc)

    def _decode(self, token: bytes) -> tuple[int, gateway.Address]:
        """The token's version and address; tokens that passed recently are remembered (per
        configuration generation, so a reload that rotates keys forgets them) until their
        validity ends. Refused tokens are never remembered."""
        now = time.time()
        cache = self.runtime.gateway_tokens[self.spec.name]
        hit = cache.get(token)
        if hit is not None and hit[2] <= now < hit[3]:
            return hit[0], hit[1]
        spec = self.spec.gateway
        keys = self.runtime.gateway_keys[self.spec.name]
        assert spec is not None
        version, address = gateway.decode(
            token,
            secrets=keys.secrets,
            keyring=keys.keyring,
            accept_v1=spec.accept_v1,
            digest=spec.v1_digest,
            now=now,
        )
        header = gateway.v2_header(token) if version == 2 else None
        not_before, expires = (header[1], header[2]) if header is not None else (0.0, math.inf)
        if len(cache) >= TOKEN_CACHE:
            cache.clear()
        cache[token] = (version, address, not_before, expires)
        return version, address

    def _destination_refused(self, why: str) -> None:
        # v1 tokens are not authenticated: a refusal must look like any other bad token.
        self._refuse(FORBIDDEN if self.version == 2 else BAD_TOKEN, f"destination refused: {why}")

    def _unresolved(self, host: str, exc: OSError) -> None:
        self._answer(BAD_GATEWAY, Reason.CONNECT_REFUSED, f"{host}: cannot resolve: {exc}")

    def _dial_failed(self, reason: Reason, detail: str) -> None:
        self._answer(TIMEOUT if reason is Reason.CONNECT_TIMEOUT else BAD_GATEWAY, reason, detail)

    # -- answers ---------------------------------------------------------------------------
    def _refuse(self, code: bytes, detail: str) -> None:
        """A handshake the client is to blame for: counted against its source, then answered."""
        delay = self._limiter().failed(self.session.client[0], time.monotonic())
        self._answer(code, Reason.REFUSED_BY_RULE, detail, delay)

    def _answer(self, code: bytes, reason: Reason, detail: str, delay: float = 0.0) -> None:
        self.ctx.stats.gateway_reply(self.session.listener, code.decode())
        if delay <= 0:
            self._answer_and_end(code, reason, detail)
            return
        stage = self.stage
        if isinstance(stage, (Sniff, Dial)):
            stage.cancel()
        self.stage = None
        self.later = self.ctx.loop.call_later(delay, self._answer_now, code, reason, detail)

    def _answer_now(self, code: bytes, reason: Reason, detail: str) -> None:
        self.later = None
        self._answer_and_end(code, reason, detail + " (answer delayed: this source keeps failing)")

    def _on_connected(self, ssock: socket.socket, server: Server) -> None:
        self.ctx.stats.gateway_reply(self.session.listener, "200")
        super()._on_connected(ssock, server)

    def _finish(self, reason: Reason, detail: str) -> None:
        self._set_pending(False)
        super()._finish(reason, detail)

    def abort(self, reason: Reason, detail: str = "") -> None:
        """End now, whatever the stage (also while holding back an answer)."""
        if self.later is not None:
            self.later.cancel()
            self.later = None
        super().abort(reason, detail)
