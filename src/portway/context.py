"""Worker-wide services that every connection in one worker process shares.

A :class:`Context` is made once per worker. It owns the socket poller, the timer wheel, the pipe
and buffer pools, the statistics, the access log and the table of live connections (for draining and for
live byte counts). A connection reports to it twice: :meth:`Context.opened` when accepted
and :meth:`Context.closed` when its :class:`~portway.session.Session` is complete.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import TYPE_CHECKING, Protocol

from portway.net.pipes import BufferPool, PipePool
from portway.net.poller import Poller
from portway.net.timers import TimerWheel
from portway.observe.accesslog import AccessLog
from portway.observe.metrics import WorkerStats
from portway.route.sourcelimit import SourceLimiter
from portway.session import Session
from portway.termination import Reason

if TYPE_CHECKING:
    from portway.net.listener import Listener
    from portway.net.originpool import OriginPool
    from portway.observe.har import HarWriter

log = logging.getLogger("portway.worker")


class Connection(Protocol):
    """What the worker needs from a live connection of any mode."""

    session: Session
    listener: Listener

    def abort(self, reason: Reason, detail: str = "") -> None:
        """End the connection now, whatever phase it is in, recording ``reason``."""


class Context:
    """Shared services of one worker; see the module docstring."""

    __slots__ = (
        "_idle_waiters",
        "access",
        "buffers",
        "gateway_pending",
        "har",
        "live",
        "loop",
        "next_id",
        "origins",
        "pid",
        "pipes",
        "poller",
        "source_limiters",
        "stats",
        "wheel",
        "worker_count",
        "worker_index",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        access: AccessLog,
        *,
        worker_index: int = 0,
        worker_count: int = 1,
    ) -> None:
        self.loop = loop
        self.pid = os.getpid()
        self.poller = Poller(loop)
        self.wheel = TimerWheel(loop)
        self.pipes = PipePool()
        self.buffers = BufferPool()
        self.stats = WorkerStats(self.pid)
        self.access = access
        self.live: dict[int, Connection] = {}
        self.next_id = 0
        self.worker_index = worker_index
        self.worker_count = worker_count
        self._idle_waiters: list[asyncio.Future[None]] = []
        #: Gateway handshakes in progress, by listener (for ``max_pending``).
        self.gateway_pending: dict[str, int] = {}
        #: Failed-handshake buckets by listener; kept across reloads (see route/sourcelimit.py).
        self.source_limiters: dict[str, SourceLimiter] = {}
        #: Idle connections to origins of the forward proxy (made on first use).
        self.origins: OriginPool | None = None
        #: HAR writers of intercepting listeners, by file path (made on first use).
        self.har: dict[str, HarWriter] = {}

    def new_session(self, listener: str, peer: tuple[str, int], frontend: tuple[str, int]) -> Session:
        """Start the record of a freshly accepted connection."""
        self.next_id += 1
        return Session(self.next_id, listener, peer, frontend, self.loop.time())

    def opened(self, conn: Connection) -> None:
        """A connection was accepted and is now live."""
        self.live[conn.session.id] = conn
        self.stats.opened(conn.session)

    def closed(self, conn: Connection) -> None:
        """A connection ended; its session is final. Logs it and frees its listener slot."""
        session = conn.session
        if self.live.pop(session.id, None) is None:
            return
        self.stats.closed(session)
        self.access.write(session)
        if session.reason is Reason.INTERNAL_ERROR:
            log.error(
                "connection %d on %s ended by an internal error: %s",
                session.id,
                session.listener,
                session.detail,
            )
        conn.listener.release()
        if not self.live and self._idle_waiters:
            for fut in self._idle_waiters:
                if not fut.done():
                    fut.set_result(None)
            self._idle_waiters.clear()

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no connection is live, or ``timeout`` seconds."""
        if not self.live or timeout <= 0:
            return
        fut: asyncio.Future[None] = self.loop.create_future()
        self._idle_waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pass

    def abort_all(self, reason: Reason, detail: str = "") -> None:
        """End every live connection (used when the drain deadline passes)."""
        for conn in list(self.live.values()):
            try:
                conn.abort(reason, detail)
            except Exception:  # one bad connection must not stop the others from ending
                log.exception("error while aborting connection %d", conn.session.id)
