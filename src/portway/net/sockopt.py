"""Socket options Portway sets on every proxied connection.

``TCP_NODELAY`` keeps the proxy from adding latency to small writes: the client chose its
segment boundaries and the relay passes them on as they come. TCP keepalive finds dead peers
on connections that are idle for long. ``TCP_DEFER_ACCEPT`` on a listener whose clients speak
first (a ClientHello, an HTTP head, a PROXY header) lets the kernel hand over a connection only
once its first bytes are there: the sniff then reads them at once instead of waiting for a
readiness event, and a client that connects and says nothing costs no accept.

Linux copies these options from a listening socket to every socket it accepts, so they are
set once on the listener (:func:`tune_listener`) and not again per client; a dialled socket
gets them in :func:`tune_dialed`.
"""

from __future__ import annotations

import socket

from portway.config.model import Keepalive


def _apply(sock: socket.socket, keepalive: Keepalive | None, fresh: bool) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is None:
        if not fresh:  # a listener kept across a reload may have had it on
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(keepalive.idle)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(keepalive.interval)))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, keepalive.count))


def tune_listener(sock: socket.socket, keepalive: Keepalive | None, defer: int = 0) -> None:
    """Set the options every accepted socket inherits (no-delay, keepalive), and
    ``TCP_DEFER_ACCEPT`` to ``defer`` seconds (0: accept at once)."""
    _apply(sock, keepalive, fresh=False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, defer)


def tune_dialed(sock: socket.socket, keepalive: Keepalive | None) -> None:
    """Set no-delay and keepalive on a connected socket towards a server (off by default)."""
    _apply(sock, keepalive, fresh=True)


def peer_of(addr: tuple[str, int] | tuple[str, int, int, int]) -> tuple[str, int]:
    """Reduce a socket address to ``(host, port)``, unmapping IPv4-mapped IPv6 hosts."""
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, addr[1]
