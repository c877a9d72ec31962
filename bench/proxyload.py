"""Load generator of the forward-proxy scenario ``fwd-connect``: CONNECT tunnels through a proxy.

Run as its own process, pinned to the load core by the harness; the result is one JSON object on
stdout::

    python bench/proxyload.py connect-tunnel PORT --target 127.0.0.1:ORIGIN --duration 5 --concurrency 50

``connect-tunnel``: ``--concurrency`` clients (asyncio, uvloop when it imports), each in a loop until
the duration is over: connect to the proxy → send ``CONNECT TARGET HTTP/1.1`` → read the reply head
(up to its blank line) → go on only if its status is ``200`` → send one HTTP ``GET`` with
``Connection: close`` through the tunnel → read to EOF → close. A tunnel counts only if the origin's
whole answer (``200``, body ``ok``) came back after a ``200`` from the proxy; anything else is an
error of one kind (``connect``, ``status`` (the proxy did not answer ``200``), ``reply``,
``timeout``). The latency is connect → EOF.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Any

from gwload import Exchange, closed_loop

#: The proxy's answer to CONNECT: any HTTP/1.x status line with 200 (reasons vary by proxy).
CONNECT_OK = re.compile(rb"HTTP/1\.[01] 200[ \r]")
HEAD_END = b"\r\n\r\n"
#: A CONNECT reply head longer than this is not one.
MAX_HEAD = 16384


def connect_request(target: str) -> bytes:
    """The CONNECT request head for ``host:port``."""
    return f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode("ascii")


class Tunnel(Exchange):
    """One tunnel: CONNECT, the proxy's ``200`` head, the request, the reply to EOF."""

    def handshake(self) -> str | None:
        end = self.buf.find(HEAD_END)
        if end < 0:
            return "status" if len(self.buf) > MAX_HEAD else None
        if not CONNECT_OK.match(self.buf):
            return "status"
        del self.buf[: end + len(HEAD_END)]
        return ""


async def tunnel_load(
    port: int, target: str, duration: float, concurrency: int, timeout: float
) -> dict[str, Any]:
    """Run the ``connect-tunnel`` load; return its counts and latencies."""
    connect = connect_request(target)
    result = await closed_loop(
        port, duration, concurrency, timeout, lambda done, statuses: Tunnel(connect, done, statuses)
    )
    result["tunnels"] = result.pop("completed")
    return result


def run_tunnels(args: argparse.Namespace) -> dict[str, Any]:
    """``connect-tunnel``: on uvloop if it imports, else on asyncio's own loop."""
    coro = tunnel_load(args.port, args.target, args.duration, args.concurrency, args.timeout)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
        result["loop"] = "asyncio"
    else:
        result = uvloop.run(coro)
        result["loop"] = "uvloop"
    return result


def main() -> None:
    p = argparse.ArgumentParser(prog="python bench/proxyload.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("connect-tunnel", help="CONNECT tunnels with a fixed concurrency")
    c.add_argument("port", type=int, help="the proxy's port on 127.0.0.1")
    c.add_argument("--target", required=True, help="host:port to CONNECT to (the origin)")
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--concurrency", type=int, default=50)
    c.add_argument("--timeout", type=float, default=5.0, help="per tunnel, connect to EOF")
    args = p.parse_args()
    json.dump(run_tunnels(args), sys.stdout)
    print()


if __name__ == "__main__":
    main()
