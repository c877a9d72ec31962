"""Idle connections to origin servers, kept per worker for the forward proxy to reuse.

After a response that leaves its connection reusable (HTTP/1.1 keep-alive, body complete,
nothing extra read), the forward proxy puts the connection here under its key, the
``(host, port, tls)`` the client asked for; the next request to the same origin takes it
instead of resolving and dialling again.

- An idle connection stays in the worker's poller with a reader that closes it: an origin
  that closes it, or sends bytes nobody asked for, makes it readable, and it is dropped at
  once. (Keeping it registered costs nothing; unregistering and registering again would cost
  two ``epoll_ctl`` per request.) The origin may still close it while a request is on its
  way; the proxy then retries once on a new connection (requests without a body only).
- Each connection carries the ``token`` it was checked under (the destination policy
  object): after a reload changes the rules, connections checked under the old ones are
  not reused.
- At most ``max_per_origin`` idle connections per key; each for at most ``idle_timeout``
  seconds, after which :meth:`OriginPool.sweep` (run on a timer while anything is idle)
  closes it.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque

from portway.net.poller import Poller
from portway.net.tlsrelay import Endpoint
from portway.proto.http1 import MessageReader

__all__ = ["Idle", "OriginPool"]

Key = tuple[str, int, bool]


class Idle:
    """One idle origin connection."""

    __slots__ = ("addr", "ep", "reader", "since", "token")

    def __init__(
        self, ep: Endpoint, addr: tuple[str, int], token: object, since: float, reader: MessageReader
    ) -> None:
        self.ep = ep
        #: The connection's response reader, between two messages.
        self.reader = reader
        #: The address dialled (for the access log).
        self.addr = addr
        self.token = token
        self.since = since


class OriginPool:
    """Idle origin connections of one worker; see the module docstring."""

    __slots__ = ("_handle", "_idle", "_loop", "_poller", "idle_timeout", "max_per_origin")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        poller: Poller,
        *,
        max_per_origin: int = 256,
        idle_timeout: float = 30.0,
    ) -> None:
        self._loop = loop
        self._poller = poller
        self._idle: dict[Key, deque[Idle]] = {}
        self._handle: asyncio.TimerHandle | None = None
        self.max_per_origin = max_per_origin
        self.idle_timeout = idle_timeout

    def __len__(self) -> int:
        return sum(len(q) for q in self._idle.values())

    def take(self, key: Key, token: object) -> Idle | None:
        """The most recently used connection for ``key`` checked under ``token``, or None.

        It is still registered for reading: the caller replaces the reader at once."""
        queue = self._idle.get(key)
        if not queue:
            return None
        deadline = time.monotonic() - self.idle_timeout
        while queue:
            idle = queue.pop()
            if idle.token is token and idle.since > deadline:
                if not queue:
                    del self._idle[key]
                return idle
            self._poller.close(idle.ep.sock)
        del self._idle[key]
        return None

    def put(
        self, key: Key, ep: Endpoint, addr: tuple[str, int], token: object, reader: MessageReader
    ) -> None:
        """Keep ``ep`` for the next request to ``key``. It must have no writer registered;
        its reader (registered or not) becomes the pool's."""
        queue = self._idle.get(key)
        if queue is None:
            queue = self._idle[key] = deque()
        elif len(queue) >= self.max_per_origin:
            self._poller.close(queue.popleft().ep.sock)
        idle = Idle(ep, addr, token, time.monotonic(), reader)
        queue.append(idle)
        self._poller.add_reader(ep.fd, lambda: self._readable(key, idle))
        if self._handle is None:
            self._handle = self._loop.call_later(self.idle_timeout / 2 + 0.05, self.sweep)

    def _readable(self, key: Key, idle: Idle) -> None:
        """An idle connection became readable: closed by the origin (or it said something
        unasked, or TLS sent a record; a TLS session ticket alone keeps it)."""
        if _still_open(idle.ep):
            return
        queue = self._idle.get(key)
        if queue is not None:
            try:
                queue.remove(idle)
            except ValueError:
                pass
            if not queue:
                del self._idle[key]
        self._poller.close(idle.ep.sock)

    def sweep(self) -> None:
        """Close connections idle for longer than ``idle_timeout``; re-arm while any is left."""
        self._handle = None
        deadline = time.monotonic() - self.idle_timeout
        for key in list(self._idle):
            queue = self._idle[key]
            while queue and queue[0].since <= deadline:
                self._poller.close(queue.popleft().ep.sock)
            if not queue:
                del self._idle[key]
        if self._idle:
            self._handle = self._loop.call_later(self.idle_timeout / 2 + 0.05, self.sweep)

    def close(self) -> None:
        """Close every idle connection (worker exit, or a drain)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for queue in self._idle.values():
            for idle in queue:
                self._poller.close(idle.ep.sock)
        self._idle.clear()


def _still_open(ep: Endpoint) -> bool:
    if ep.tls is None:
        return False  # readable: EOF, an error, or bytes nobody asked for
    # TLS: records that carry no application data (a TLS 1.3 session ticket) are fine.
    try:
        ep.read()
    except BlockingIOError:
        return True
    except (OSError, ssl.SSLError):
        return False
    return False
