"""Load generator and bulk origin of the gateway scenarios (``gw-connect``, ``gw-bulk``).

Run as its own process, pinned to the load core by the harness; the results are one JSON object on
stdout. ``--token`` makes a client do the gateway handshake first: send the token line, read
exactly three bytes, and go on only if they are ``200``. Without it the client talks to the
origin straight away (Portway's tcp listener, the baseline)::

    python bench/gwload.py connect PORT --duration 5 --concurrency 50 [--token v2....]
    python bench/gwload.py bulk PORT --bytes 2147483648 --direction up|down [--token v2....]
    python bench/gwload.py origin PORT

``connect``: ``--concurrency`` clients (asyncio, uvloop when it imports), each in a loop until the
duration is over: connect → [handshake] → send one HTTP ``GET`` with ``Connection: close`` → read
to EOF → close. A connection counts only if the origin's whole answer (``200``, body ``ok``) came
back, and through a gateway only after a ``200`` status; anything else is an error of one kind
(``connect``, ``status`` (no ``200``), ``reply``, ``timeout``). The latency is connect → EOF.

``bulk``: one blocking connection; after the handshake it sends a 9-byte request to the ``origin``
(``U`` or ``D``, and the byte count, 64-bit big-endian). ``up``: the client sends the bytes (one
preallocated buffer, ``sendall`` in a loop) and the origin, which reads them into a buffer and
drops them, answers the count it received once it has them all; timed from the first byte sent to
the answer. ``down``: the origin sends the bytes and closes; the client reads them into a buffer;
timed from the request to the last byte.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import struct
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

REQUEST = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
#: The nginx origin answers ``return 200 "ok\n"``.
REPLY_HEAD = b"HTTP/1.1 200 "
REPLY_TAIL = b"\r\n\r\nok\n"
OK_STATUS = b"200"
#: Bulk request: direction (b"U" or b"D") and byte count.
BULK_HEADER = struct.Struct(">cQ")
CHUNK = 1 << 20


def cpu_seconds() -> float:
    """This process's user + system CPU seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def core_ticks() -> tuple[int, int]:
    """(busy, total) ticks since boot of the CPUs this process may run on (the load core), from
    ``/proc/stat``: everything but idle and iowait is busy."""
    names = {f"cpu{n}" for n in os.sched_getaffinity(0)}
    busy = total = 0
    with open("/proc/stat") as stat:
        for line in stat:
            fields = line.split()
            if fields and fields[0] in names:
                ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
                total += sum(ticks)
                busy += sum(ticks) - ticks[3] - ticks[4]
    return busy, total


class Window:
    """Wall time, this process's CPU and the load core's busy share over a measurement."""

    def __init__(self) -> None:
        self.t0, self.cpu0, self.core0 = time.monotonic(), cpu_seconds(), core_ticks()

    def close(self) -> dict[str, float]:
        """``seconds``, ``generator_busy`` and ``load_core_busy`` (percent) since creation."""
        seconds = time.monotonic() - self.t0
        busy, total = (now - then for now, then in zip(core_ticks(), self.core0, strict=True))
        return {
            "seconds": seconds,
            "generator_busy": 100 * (cpu_seconds() - self.cpu0) / seconds,
            "load_core_busy": 100 * busy / total if total else 0.0,
        }


# ------------------------------------------------------------------------------------ connect


class Exchange(asyncio.Protocol):
    """One connection of a closed-loop load: ``opening`` (a handshake to answer first, or the
    request itself), then :data:`REQUEST`, then the origin's reply to EOF. ``done`` gets the
    outcome (``"ok"`` or the error kind); ``statuses`` counts the handshakes answered ``200``.
    Subclasses say in :meth:`handshake` when and how the proxy's answer is complete."""

    def __init__(self, opening: bytes | None, done: asyncio.Future[str], statuses: Counter[str]) -> None:
        self.opening = opening
        self.done = done
        self.statuses = statuses
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.in_handshake = opening is not None

    def handshake(self) -> str | None:
        """Look at ``buf`` during the handshake: None for "need more", "" when it is complete
        (and removed from ``buf``), else the failure kind."""
        raise NotImplementedError

    def finish(self, outcome: str) -> None:
        if not self.done.done():
            self.done.set_result(outcome)
        if self.transport is not None:
            self.transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's does not subclass it
        self.transport.write(self.opening if self.opening is not None else REQUEST)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.in_handshake:
            return
        outcome = self.handshake()
        if outcome is None:
            return
        if outcome:
            self.finish(outcome)
            return
        self.statuses["200"] += 1
        self.in_handshake = False
        if self.buf:  # the origin cannot have spoken yet: it has had no request
            self.finish("reply")
            return
        assert self.transport is not None
        self.transport.write(REQUEST)

    def eof_received(self) -> bool:
        if self.in_handshake:
            self.finish("status")
        elif self.buf.startswith(REPLY_HEAD) and self.buf.endswith(REPLY_TAIL):
            self.finish("ok")
        else:
            self.finish("reply")
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish("status" if self.in_handshake else "reply")


class Attempt(Exchange):
    """One connection of ``connect``: [the token line, then exactly ``200``], the request, the
    reply to EOF."""

    def handshake(self) -> str | None:
        if len(self.buf) < len(OK_STATUS):
            return None
        if self.buf[: len(OK_STATUS)] != OK_STATUS:
            return "status"
        del self.buf[: len(OK_STATUS)]
        return ""


def percentile_ms(ordered: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of sorted seconds, in milliseconds; None if empty."""
    if not ordered:
        return None
    return 1000 * ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def closed_loop(
    port: int,
    duration: float,
    concurrency: int,
    timeout: float,
    protocol: Callable[[asyncio.Future[str], Counter[str]], asyncio.Protocol],
) -> dict[str, Any]:
    """``concurrency`` clients, each opening connections one after the other for ``duration``
    seconds; ``protocol(done, statuses)`` drives one connection and resolves ``done`` with
    ``"ok"`` or the kind of failure. Returns the counts, latencies and CPU window."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + duration

    def on_exception(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        errors["generator"] += 1  # a bug in the load generator: counted, so that the run is not clean
        loop.default_exception_handler(context)

    loop.set_exception_handler(on_exception)

    async def client() -> None:
        while time.monotonic() < deadline:
            t0 = time.monotonic()
            done: asyncio.Future[str] = loop.create_future()
            transport: asyncio.BaseTransport | None = None
            try:
                async with asyncio.timeout(timeout):
                    try:
                        transport, _ = await loop.create_connection(
                            lambda done=done: protocol(done, statuses), "127.0.0.1", port
                        )
                    except OSError:
                        outcome = "connect"
                    else:
                        outcome = await done
            except TimeoutError:
                outcome = "timeout"
                if transport is not None:
                    transport.abort()
            if outcome == "ok":
                latencies.append(time.monotonic() - t0)
            else:
                errors[outcome] += 1

    window = Window()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    result: dict[str, Any] = window.close()
    latencies.sort()
    result.update(
        completed=len(latencies),
        p50_ms=percentile_ms(latencies, 0.50),
        p99_ms=percentile_ms(latencies, 0.99),
        errors=dict(errors),
        status_200=statuses["200"],
    )
    return result


async def connect_load(
    port: int, duration: float, concurrency: int, timeout: float, token: bytes | None
) -> dict[str, Any]:
    """Run the ``connect`` load; return its counts and latencies."""
    token_line = token + b"\n" if token is not None else None
    result = await closed_loop(
        port, duration, concurrency, timeout, lambda done, statuses: Attempt(token_line, done, statuses)
    )
    result["connections"] = result.pop("completed")
    return result


def run_connect(args: argparse.Namespace) -> dict[str, Any]:
    """``connect``: on uvloop if it imports, else on asyncio's own loop."""
    token = args.token.encode("ascii") if args.token else None
    coro = connect_load(args.port, args.duration, args.concurrency, args.timeout, token)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(coro)
        result["loop"] = "asyncio"
    else:
        result = uvloop.run(coro)
        result["loop"] = "uvloop"
    return result


# ------------------------------------------------------------------------------------ bulk


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    """``n`` bytes from ``sock`` (fewer only at EOF)."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def handshake(port: int, token: str | None) -> socket.socket:
    """A connection to ``port``, past the gateway's ``200`` when there is a token."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    if token is not None:
        sock.sendall(token.encode("ascii") + b"\n")
        status = recv_exactly(sock, len(OK_STATUS))
        if status != OK_STATUS:
            sock.close()
            raise SystemExit(f"gateway answered {status!r}, not 200")
    return sock


def run_bulk(args: argparse.Namespace) -> dict[str, Any]:
    """``bulk``: one transfer of ``--bytes`` through the proxy in ``--direction``."""
    total: int = args.bytes
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with handshake(args.port, args.token) as sock:
        if args.direction == "up":
            sock.sendall(BULK_HEADER.pack(b"U", total))
            window = Window()
            left = total
            while left >= CHUNK:
                sock.sendall(view)
                left -= CHUNK
            if left:
                sock.sendall(view[:left])
            answer = recv_exactly(sock, 8)
            result: dict[str, Any] = window.close()
            moved = struct.unpack(">Q", answer)[0] if len(answer) == 8 else -1
        else:
            window = Window()
            sock.sendall(BULK_HEADER.pack(b"D", total))
            moved = 0
            while n := sock.recv_into(view):
                moved += n
            result = window.close()
    result.update(bytes=moved, expected=total)
    return result


# ------------------------------------------------------------------------------------ origin


def serve_bulk(conn: socket.socket) -> None:
    """One connection of the bulk origin: read the request, then sink or send."""
    with conn:
        header = recv_exactly(conn, BULK_HEADER.size)
        if len(header) < BULK_HEADER.size:
            return  # a readiness probe
        direction, total = BULK_HEADER.unpack(header)
        view = memoryview(bytearray(CHUNK))
        if direction == b"U":
            got = 0
            while got < total and (n := conn.recv_into(view, min(CHUNK, total - got))):
                got += n
            conn.sendall(struct.pack(">Q", got))
        else:
            left = total
            while left >= CHUNK:
                conn.sendall(view)
                left -= CHUNK
            if left:
                conn.sendall(view[:left])
            conn.shutdown(socket.SHUT_WR)
            while conn.recv(4096):  # wait for the client's close
                pass


def run_origin(args: argparse.Namespace) -> None:
    """``origin``: accept forever, one thread per connection."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.port))
    listener.listen(128)
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve_bulk, args=(conn,), daemon=True).start()


def main() -> None:
    p = argparse.ArgumentParser(prog="python bench/gwload.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("connect", help="new connections with a fixed concurrency")
    c.add_argument("port", type=int)
    c.add_argument("--duration", type=float, default=5.0)
    c.add_argument("--concurrency", type=int, default=50)
    c.add_argument("--timeout", type=float, default=5.0, help="per connection, connect to EOF")
    c.add_argument("--token", help="a gateway token: do the handshake first")
    b = sub.add_parser("bulk", help="one bulk transfer")
    b.add_argument("port", type=int)
    b.add_argument("--bytes", type=int, required=True)
    b.add_argument("--direction", choices=("up", "down"), required=True)
    b.add_argument("--token", help="a gateway token: do the handshake first")
    o = sub.add_parser("origin", help="the bulk origin (sink and source)")
    o.add_argument("port", type=int)
    args = p.parse_args()
    if args.command == "origin":
        run_origin(args)
        return
    result = run_connect(args) if args.command == "connect" else run_bulk(args)
    json.dump(result, sys.stdout)
    print()


if __name__ == "__main__":
    main()
