"""Modes glue sniff → route → dial → relay for one kind of listener; one module per mode.

:data:`CONNECTION_CLASSES` maps a listener's ``mode`` to the class whose constructor takes
``(ctx, listener, sock, peer, frontend)`` and runs the connection from there.
"""

from __future__ import annotations

from portway.modes.gateway import GatewayConnection
from portway.modes.httpproxy import HttpProxyConnection
from portway.modes.sni import SniConnection
from portway.modes.tcp import TcpConnection
from portway.net.listener import ConnectionFactory

CONNECTION_CLASSES: dict[str, ConnectionFactory] = {
    "tcp": TcpConnection,
    "sni": SniConnection,
    "tls": SniConnection,  # sni routing where routes terminate by default; see modes/sni.py
    "gateway": GatewayConnection,
    "http-proxy": HttpProxyConnection,
}
