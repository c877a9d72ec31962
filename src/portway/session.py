"""The per-connection record: who, where, how many bytes, how long, and why it ended.

One :class:`Session` is created when a connection is accepted and filled in by each
phase (sniff, route, dial, relay). When the connection ends it is handed, complete, to
the access log and the worker's statistics. It is a plain slotted object so that the
hot path pays one attribute store per fact.
"""

from __future__ import annotations

import time

from portway.termination import Reason


class Session:
    """What is known about one proxied connection.

    Addresses are ``(host, port)`` tuples. ``client`` is the address the connection is
    attributed to: the PROXY-protocol source when a trusted load balancer sent one,
    else the TCP peer, which is kept in ``peer``. Byte counts are from the proxy's
    point of view: ``bytes_in`` arrived from the client (and went to the server),
    ``bytes_out`` arrived from the server (and went to the client).
    Durations are seconds; ``None`` means the phase did not happen.
    """

    __slots__ = (
        "alpn",
        "backend",
        "bytes_in",
        "bytes_out",
        "client",
        "connect_s",
        "detail",
        "frontend",
        "id",
        "listener",
        "peer",
        "reason",
        "retries",
        "route",
        "server",
        "server_addr",
        "sni",
        "sniff_s",
        "start_mono",
        "start_wall",
        "tls_version",
        "total_s",
    )

    def __init__(
        self,
        sid: int,
        listener: str,
        peer: tuple[str, int],
        frontend: tuple[str, int],
        start_mono: float,
    ) -> None:
        self.id = sid
        self.listener = listener
        self.peer = peer
        self.client = peer
        self.frontend = frontend
        self.start_mono = start_mono
        self.start_wall = time.time()
        #: The server name the connection was routed by (TLS SNI or HTTP Host), if any.
        self.sni: str | None = None
        #: TLS terminated here: the protocol version and the ALPN protocol agreed with the client.
        self.tls_version: str | None = None
        self.alpn: str | None = None
        #: The route that matched, for modes that route.
        self.route: str | None = None
        self.backend: str | None = None
        self.server: str | None = None
        self.server_addr: tuple[str, int] | None = None
        self.bytes_in = 0
        self.bytes_out = 0
        self.sniff_s: float | None = None
        self.connect_s: float | None = None
        self.total_s: float | None = None
        self.retries = 0
        self.reason: Reason | None = None
        self.detail = ""

    def finish(self, reason: Reason, now_mono: float, detail: str = "") -> None:
        """Record how the connection ended; the first call wins."""
        if self.reason is not None:
            return
        self.reason = reason
        self.detail = detail
        self.total_s = now_mono - self.start_mono
