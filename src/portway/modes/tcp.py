"""The tcp mode: accept → [PROXY header intake] → pick a server → dial → relay → account.

One :class:`TcpConnection` per accepted client, driven by callbacks from its current stage
(a :class:`~portway.net.sniff.Sniff`, a :class:`~portway.net.dial.Dial`, then a
:class:`~portway.net.relay.Relay`); there is no Task per connection. Without PROXY intake
nothing is read before dialling, so server-speaks-first protocols (SMTP, MySQL) work.

PROXY protocol intake (``proxy_protocol.accept``):

- ``required``: the peer must be in ``trusted`` and must send a valid header, else refused.
- ``optional``: a header is used if the peer is trusted; a header from an untrusted peer is
  refused (it would let anyone claim any address); no header is fine. The first bytes are
  read under ``sniff_timeout`` to tell, so ``optional`` does not suit server-speaks-first
  protocols.

The address a trusted header carries becomes ``session.client``: it is what ``source``
balancing hashes, what the access log shows, and what is sent on with
``send_proxy_protocol``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any, Protocol

from portway.config.units import format_hostport
from portway.context import Context
from portway.net.dial import Dial
from portway.net.listener import Listener
from portway.net.relay import Relay
from portway.net.sniff import Sniff
from portway.net.sockopt import peer_of, tune_dialed
from portway.net.tlsrelay import Endpoint, Handshake, TlsRelay
from portway.proto import NEED_DATA, proxyheader
from portway.route.backend import Pool, Server
from portway.route.destpolicy import DestPolicy
from portway.runtime import Runtime
from portway.termination import Reason

log = logging.getLogger("portway.tcp")

#: Largest PROXY header accepted (v2 with TLVs); HAProxy's own limit is similar.
PROXY_HEADER_LIMIT = 4096


class Stage(Protocol):
    """A phase a mode adds of its own (the forward proxy's HTTP engine): it can be cancelled."""

    def cancel(self) -> None:
        """Stop, releasing everything but the client socket."""


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IPv4 or IPv6 literal (then nothing needs resolving)."""
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
    except OSError:
        return False
    return True


class TcpConnection:
    """One client of a tcp listener, from accept to the access-log record."""

    __slots__ = (
        "client_ep",
        "ctx",
        "dest",
        "dial_timeout",
        "ended",
        "greeting",
        "listener",
        "pool",
        "prefix",
        "resolving",
        "runtime",
        "server",
        "server_ep",
        "session",
        "sock",
        "spec",
        "stage",
        "t_dial",
        "timeout_retries",
        "trusted",
    )

    def __init__(
        self,
        ctx: Context,
        listener: Listener,
        sock: socket.socket,
        peer: tuple[str, int],
        frontend: tuple[str, int],
    ) -> None:
        self.ctx = ctx
        self.listener = listener
        # A reload swaps the listener's spec and runtime; this connection keeps the ones it
        # was accepted under.
        self.spec = listener.spec
        self.runtime: Runtime = listener.runtime
        self.sock = sock
        self.session = ctx.new_session(listener.name, peer, frontend)
        self.stage: Sniff | Dial | Handshake | Relay | TlsRelay | Stage | None = None
        self.server: Server | None = None
        #: The client side once Portway has completed a TLS handshake with it (terminate).
        self.client_ep: Endpoint | None = None
        #: The server side while Portway's TLS handshake with it is in progress.
        self.server_ep: Endpoint | None = None
        self.dest: tuple[str, int] | None = None
        self.prefix = b""
        #: Bytes for the client before the server's (the gateway's "200").
        self.greeting = b""
        self.t_dial = 0.0
        self.trusted = False
        #: A client-chosen destination: its one-server pool, the resolution under way, the
        #: connect timeout and the timeouts still to retry (see _dial_destination).
        self.pool: Pool | None = None
        self.resolving: asyncio.Task[None] | None = None
        self.dial_timeout = 0.0
        self.timeout_retries = 0
        self.ended = False
        ctx.opened(self)
        try:
            self._start()
        except Exception as exc:
            self._crash(exc)

    def _start(self) -> None:
        spec = self.spec
        pp = spec.proxy_protocol
        if pp.accept == "off":
            self._route(b"")
            return
        peer_ip = self.session.peer[0]
        self.trusted = pp.trusts(peer_ip)
        if not self.trusted and pp.accept == "required":
            self._end(
                Reason.REFUSED_BY_RULE,
                f"{peer_ip} is not in proxy_protocol.trusted (a PROXY header is required)",
            )
            return
        self._sniff(
            proxyheader.parse,
            "PROXY protocol header",
            PROXY_HEADER_LIMIT,
            b"",
            self._on_proxy_header,
            self._end,
        )

    def _sniff(
        self,
        parse: Callable[[bytearray], Any],
        what: str,
        limit: int,
        initial: bytes,
        on_result: Callable[[Any, bytearray], None],
        on_error: Callable[[Reason, str], None],
    ) -> None:
        """Read until ``parse`` decides (see :class:`~portway.net.sniff.Sniff`), under what is
        left of ``sniff_timeout`` since the accept: every read before routing shares it."""
        left = max(0.0, self.spec.sniff_timeout - (self.ctx.loop.time() - self.session.start_mono))
        sniff = Sniff(
            self.ctx.poller,
            self.ctx.wheel,
            self.sock,
            parse,
            NEED_DATA,
            what=what,
            limit=limit,
            timeout=left,
            on_result=on_result,
            on_error=on_error,
            initial=initial,
        )
        self.stage = sniff
        sniff.start()

    def _on_proxy_header(self, header: proxyheader.ProxyHeader | None, data: bytearray) -> None:
        try:
            session = self.session
            session.sniff_s = self.ctx.loop.time() - session.start_mono
            self.ctx.stats.sniffed(session.listener, session.sniff_s)
            if header is None:
                if self.spec.proxy_protocol.accept == "required":
                    self._end(
                        Reason.PROTOCOL_ERROR, "no PROXY protocol header (proxy_protocol.accept = required)"
                    )
                    return
                self._route(bytes(data))
                return
            if not self.trusted:
                self._end(
                    Reason.REFUSED_BY_RULE,
                    f"PROXY protocol header from {session.peer[0]}, which is not in proxy_protocol.trusted",
                )
                return
            if header.source is not None:
                session.client = peer_of(header.source)
            if header.destination is not None:
                self.dest = peer_of(header.destination)
            self._route(bytes(data[header.length :]))
        except Exception as exc:
            self._crash(exc)

    def _route(self, prefix: bytes) -> None:
        """Everything before routing is read; ``prefix`` is what must reach the server first."""
        name = self.spec.backend
        assert name is not None
        self._dial_backend(name, prefix)

    def _dial_backend(self, name: str, prefix: bytes) -> None:
        """Dial a server of the configured backend ``name``."""
        backend = self.runtime.backends[name]
        self._dial_pool(self.runtime.pools[name], backend.connect_timeout, backend.retries, prefix)

    def _dial_pool(self, pool: Pool, timeout: float, retries: int, prefix: bytes) -> None:
        """Dial a server of ``pool``, then relay with ``prefix`` sent first."""
        self.session.backend = pool.name
        self.prefix = prefix
        loop = self.ctx.loop
        self.t_dial = loop.time()
        dial = Dial(
            loop,
            self.ctx.poller,
            self.ctx.wheel,
            pool,
            self.session.client[0],
            timeout=timeout,
            retries=retries,
            on_connected=self._on_connected,
            on_failed=self._on_dial_failed,
            on_attempt_failed=self._on_attempt_failed,
        )
        self.stage = dial
        dial.start()

    def _on_dial_failed(self, reason: Reason, detail: str) -> None:
        pool = self.pool
        if reason is Reason.CONNECT_TIMEOUT and self.timeout_retries > 0 and pool is not None:
            self.timeout_retries -= 1  # (the failed attempt is already counted in session.retries)
            pool.servers[0].health.ejected_until = 0.0
            self._dial_pool(pool, self.dial_timeout, 0, self.prefix)
            return
        dial = self.stage
        exhausted = dial.exhausted if isinstance(dial, Dial) else None
        self.stage = None
        self._dial_failed(reason, detail)
        if exhausted is not None:  # after the end: its own release must not resume accepting
            self.listener.out_of_resources(exhausted, "open a socket to a server")

    def _dial_failed(self, reason: Reason, detail: str) -> None:
        """No connection to the server: end (modes that answer the client override this)."""
        self._end(reason, detail)

    # -- client-chosen destinations (sni dial routes, the gateway, the forward proxy) --------
    def _dial_destination(
        self, host: str, port: int, policy: DestPolicy, *, timeout: float, timeout_retries: int = 0
    ) -> None:
        """Dial a destination the client chose: resolve ``host`` unless it is an IP literal,
        check the IP actually dialled against ``policy``, then connect to it alone (a timeout is
        retried ``timeout_retries`` times). ``self.prefix`` goes to it first. Refusals come back
        through :meth:`_destination_refused`, a name that does not resolve through
        :meth:`_unresolved`, connect failures through :meth:`_dial_failed`."""
        self.dial_timeout = timeout
        self.timeout_retries = timeout_retries
        if is_ip(host):
            self._dial_checked(host, host, port, policy)
        else:
            self.resolving = self.ctx.loop.create_task(self._resolve(host, port, policy))

    async def _resolve(self, host: str, port: int, policy: DestPolicy) -> None:
        try:
            try:
                infos = await self.ctx.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except OSError as exc:
                self.resolving = None
                if not self.ended:
                    self._unresolved(host, exc)
                return
            self.resolving = None
            if not self.ended:
                self._dial_checked(host, str(infos[0][4][0]), port, policy)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._crash(exc)

    def _dial_checked(self, host: str, ip: str, port: int, policy: DestPolicy) -> None:
        why = policy.check(None if host == ip else host, ip, port)
        if why is not None:
            self._destination_refused(why)
            return
        server = Server(format_hostport(host, port), ip, port)
        server.sockaddr = (ip, port, 0, 0) if ":" in ip else (ip, port)
        self.pool = Pool.single(f"{self.spec.mode}:{self.spec.name}", server)
        self._dial_pool(self.pool, self.dial_timeout, 0, self.prefix)

    def _destination_refused(self, why: str) -> None:
        """The policy refused the destination (modes answer in their protocol)."""
        self._end(Reason.REFUSED_BY_RULE, f"destination refused: {why}")

    def _unresolved(self, host: str, exc: OSError) -> None:
        """The destination's name did not resolve (modes answer in their protocol)."""
        self._end(Reason.CONNECT_REFUSED, f"{host}: cannot resolve: {exc}")

    def _on_attempt_failed(self, server: Server, detail: str, change: str | None) -> None:
        session = self.session
        session.retries += 1
        backend = session.backend or "-"
        self.ctx.stats.connect_failed(backend, server.name)
        if change == "ejected":
            h = server.health
            log.warning(
                "server %s/%s ejected for %gs after %d failed connects in a row (last: %s)",
                backend,
                server.name,
                h.eject_cooldown,
                h.eject_failures,
                detail,
            )

    def _on_connected(self, ssock: socket.socket, server: Server) -> None:
        try:
            ctx = self.ctx
            loop = ctx.loop
            session = self.session
            self.server = server
            session.server = server.name
            session.server_addr = (server.host, server.port)
            session.connect_s = loop.time() - self.t_dial
            backend = session.backend or "-"
            ctx.stats.routed(session)
            ctx.stats.connected(backend, session.connect_s)
            spec = self.spec
            tune_dialed(ssock, spec.keepalive)
            header = b""
            backend_spec = self.runtime.backends.get(backend)
            mode = backend_spec.send_proxy_protocol if backend_spec is not None else "off"
            if mode != "off":
                dest = self.dest or peer_of(self.sock.getsockname())
                build = proxyheader.build_v2 if mode == "v2" else proxyheader.build_v1
                header = build(session.client, dest)
            if backend_spec is not None and backend_spec.tls is not None:
                self._server_handshake(ssock, server, header)
                return
            if self.client_ep is not None:
                server_ep = Endpoint(ssock)
                server_ep.write(header)
                self._tls_relay(server_ep)
                return
            relay = Relay(
                ctx.poller,
                ctx.wheel,
                self.sock,
                ssock,
                session,
                self._on_relay_done,
                mode=spec.relay,
                pipes=ctx.pipes,
                buffers=ctx.buffers,
                idle_timeout=spec.idle_timeout,
                to_server=header + self.prefix,
                to_client=self.greeting,
            )
            self.stage = relay
            relay.start()
        except Exception as exc:
            self.ctx.poller.close(ssock)
            self._crash(exc)

    def _server_handshake(self, ssock: socket.socket, server: Server, header: bytes) -> None:
        """TLS to the server (``tls`` on the backend): the PROXY header, if any, goes first in
        plaintext, then the handshake; the relay starts once it is complete."""
        session = self.session
        backend = session.backend or "-"
        tls = self.runtime.backends[backend].tls
        assert tls is not None
        name: str | None = tls.server_name
        if name == "{sni}":
            name = session.sni or server.host
        elif name is None:
            name = server.host
        server_ep = Endpoint.wrap(
            ssock, self.runtime.backend_tls[backend], server_side=False, server_hostname=name
        )
        server_ep.out += header
        self.server_ep = server_ep
        handshake = Handshake(
            self.ctx.poller,
            self.ctx.wheel,
            server_ep,
            timeout=self.runtime.backends[backend].connect_timeout,
            client_side=False,
            on_done=self._on_server_handshake,
            on_error=self._end,
        )
        self.stage = handshake
        handshake.start()

    def _on_server_handshake(self) -> None:
        try:
            server_ep = self.server_ep
            assert server_ep is not None
            self.server_ep = None
            self._tls_relay(server_ep)
        except Exception as exc:
            self._crash(exc)

    def _tls_relay(self, server_ep: Endpoint) -> None:
        """Relay plaintext between the client (TLS terminated or plain) and ``server_ep``."""
        client_ep = self.client_ep or Endpoint(self.sock)
        relay = TlsRelay(
            self.ctx.poller,
            self.ctx.wheel,
            client_ep,
            server_ep,
            self.session,
            self._on_relay_done,
            idle_timeout=self.spec.idle_timeout,
            to_server=self.prefix,
        )
        self.stage = relay
        relay.start()

    def _answer_and_end(self, answer: bytes, reason: Reason, detail: str) -> None:
        """Best effort: one non-blocking send, a half-close so it is read, then the end."""
        stage = self.stage
        if (stage is not None and not isinstance(stage, Sniff)) or self.client_ep is not None:
            self._end(reason, detail)  # past the sniff, or inside TLS: no answer in clear
            return
        if isinstance(stage, Sniff):
            stage.cancel()
        self.stage = None
        try:
            self.sock.send(answer)
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self._end(reason, detail)

    def _on_relay_done(self, reason: Reason, detail: str) -> None:
        self._finish(reason, detail)

    def _end(self, reason: Reason, detail: str = "") -> None:
        """End before the relay started: stop the stage and close the client."""
        stage = self.stage
        if isinstance(stage, (Relay, TlsRelay)):
            stage.end(reason, detail)
            return
        if stage is not None:
            stage.cancel()
        if self.server_ep is not None:  # a TLS handshake with the server was under way
            self.ctx.poller.close(self.server_ep.sock)
            self.server_ep = None
        self.ctx.poller.close(self.sock)
        self._finish(reason, detail)

    def _finish(self, reason: Reason, detail: str) -> None:
        if self.ended:
            return
        self.ended = True
        self.stage = None  # breaks the connection <-> stage reference cycle
        self.client_ep = None
        self.session.finish(reason, self.ctx.loop.time(), detail)
        if self.server is not None:
            self.server.release()
        self.ctx.closed(self)

    def _crash(self, exc: BaseException) -> None:
        log.error("connection %d on %s failed", self.session.id, self.session.listener, exc_info=exc)
        self._end(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def abort(self, reason: Reason, detail: str = "") -> None:
        """End now, whatever the stage (drain deadline, shutdown; also while resolving)."""
        if self.resolving is not None:
            self.resolving.cancel()
            self.resolving = None
        self._end(reason, detail)
