"""Socket options Portway sets on every proxied connection.

Kept in one place so that the accept path and the dial path configure both ends the same way.
"""

from __future__ import annotations

import socket

from portway.config.model import Keepalive


def tune(sock: socket.socket, keepalive: Keepalive | None) -> None:
    """Make ``sock`` non-blocking, disable Nagle, and apply TCP keepalive when configured.

    ``TCP_NODELAY`` keeps the proxy from adding latency to small writes: the client chose
    its segment boundaries and the relay passes them on as they come.
    """
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if keepalive is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(keepalive.idle)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, int(keepalive.interval)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, max(1, keepalive.count))


def peer_of(addr: tuple[str, int] | tuple[str, int, int, int]) -> tuple[str, int]:
    """Reduce a socket address to ``(host, port)``, unmapping IPv4-mapped IPv6 hosts."""
    host = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, addr[1]
