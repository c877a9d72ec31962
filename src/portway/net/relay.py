"""Move bytes both ways between a client and a server socket until both directions are done.

The relay is callback-driven (readiness callbacks from the worker's
:class:`~portway.net.poller.Poller` on raw non-blocking sockets): no Task, no Future, no
per-read allocation. Each direction is a :class:`_Half`:

- :class:`_SpliceHalf` moves bytes socket → pipe → socket with ``os.splice``; they never
  enter Python. The pipe is borrowed from a :class:`~portway.net.pipes.PipePool` only while
  bytes are in it.
- :class:`_CopyHalf` moves bytes with ``recv_into`` / ``send`` through a pooled buffer, for
  whatever cannot be spliced.

Rules every half keeps:

1. *Prefix first.* Bytes already read before the relay started (a sniffed request, a PROXY
   header for the server) are written before anything read by the relay, so no byte is lost
   or reordered.
2. *Backpressure.* While the destination cannot take more, the half stops reading its
   source; it reads again only once everything it holds has been written.
3. *Half-close.* EOF on the source becomes ``shutdown(SHUT_WR)`` on the destination once the
   held bytes are written; the other direction keeps flowing until its own EOF.
4. *Errors end both directions.* A reset or broken pipe on either socket tears the relay
   down, attributed to the side that failed.

The relay owns both sockets from :meth:`Relay.start` on and closes them when it ends; it then
calls ``on_done(reason, detail)`` exactly once.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from portway.net.pipes import BufferPool, Pipe, PipePool
from portway.net.poller import Poller
from portway.net.timers import TimerWheel
from portway.session import Session
from portway.termination import Reason

log = logging.getLogger("portway.relay")

#: Activity stamps use the monotonic clock directly: the loop's clock has only millisecond
#: resolution, too coarse to tell which side spoke last.
_now = time.monotonic

_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
#: Successive read→write rounds handled in one readiness callback before yielding to the loop.
_ROUNDS = 4
#: A read shorter than this most likely emptied the socket: do not try again at once (that
#: would cost one more system call answering EAGAIN); the poller calls back if more came.
_SHORT_READ = 1 << 15

DoneCallback = Callable[[Reason, str], None]


def ended(reason: Reason, detail: str) -> None:
    """Placeholder ``on_done`` once a relay has reported."""


def idle_check(c_last: float, s_last: float, idle_timeout: float, now: float) -> tuple[float, Reason]:
    """At an idle deadline: ``(seconds left, _)`` if traffic moved since (re-arm for that long),
    else ``(0, reason)`` blaming the side that has been silent longer."""
    left = max(c_last, s_last) + idle_timeout - now
    if left > 0:
        return left, Reason.CLIENT_IDLE_TIMEOUT
    return 0.0, Reason.CLIENT_IDLE_TIMEOUT if c_last <= s_last else Reason.SERVER_IDLE_TIMEOUT


_S = TypeVar("_S")


class _Half(Generic[_S]):
    """One direction of a relay: read from ``src`` into a pooled store, write it to ``dst``.

    Subclasses say how to fill and flush the store (:meth:`_fill`, :meth:`_flush`); the
    rules of the module docstring live here, once.
    """

    # Every field lives here and the subclasses add none, so that an object can change class
    # (copy → splice) in place; see _CopyHalf._fill.
    __slots__ = (
        "buffers",
        "dfd",
        "done",
        "dst",
        "end",
        "eof",
        "last",
        "pipes",
        "poller",
        "prefix",
        "reading",
        "relay",
        "sfd",
        "src",
        "start_",
        "store",
        "to_server",
        "upgrade",
        "writing",
    )

    def __init__(
        self,
        relay: Relay,
        src: socket.socket,
        dst: socket.socket,
        to_server: bool,
        prefix: bytes,
        pipes: PipePool,
        buffers: BufferPool,
        upgrade: bool = False,
    ) -> None:
        self.relay = relay
        self.poller = relay.poller
        self.src = src
        self.dst = dst
        self.sfd = src.fileno()
        self.dfd = dst.fileno()
        self.to_server = to_server
        self.prefix: memoryview | None = memoryview(prefix) if prefix else None
        self.reading = False
        self.writing = False
        self.eof = False
        self.done = False
        self.last = _now()
        #: The pipe or buffer borrowed while bytes are in flight; None when idle.
        self.store: _S | None = None
        self.pipes = pipes
        self.buffers = buffers
        #: Copy half of an ``auto`` relay: becomes a splice half once a read fills the buffer.
        self.upgrade = upgrade
        self.start_ = 0
        self.end = 0

    # -- registration helpers (idempotent) -------------------------------------------------
    def _want_read(self) -> None:
        if not self.reading:
            self.poller.add_reader(self.sfd, self._on_readable)
            self.reading = True

    def _stop_read(self) -> None:
        if self.reading:
            self.poller.remove_reader(self.sfd)
            self.reading = False

    def _want_write(self) -> None:
        if not self.writing:
            self.poller.add_writer(self.dfd, self._on_writable)
            self.writing = True

    def _stop_write(self) -> None:
        if self.writing:
            self.poller.remove_writer(self.dfd)
            self.writing = False

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> None:
        """Send the prefix if any, then start reading."""
        if self.prefix is not None:
            self._send_prefix()
        else:
            self._want_read()

    def _send_prefix(self) -> None:
        prefix = self.prefix
        assert prefix is not None
        try:
            while prefix:
                prefix = prefix[self.dst.send(prefix) :]
        except BlockingIOError:
            self.prefix = prefix
            self._want_write()
            return
        except OSError as exc:
            self.relay.fail(not self.to_server, exc)
            return
        self.prefix = None
        self._stop_write()
        self._want_read()

    def _on_writable(self) -> None:
        try:
            if self.prefix is not None:
                self._send_prefix()
            else:
                self._drain()
        except Exception as exc:  # a bug must end this connection, not leak it
            self.relay.crash(exc)

    def _on_readable(self) -> None:
        try:
            self._read()
        except Exception as exc:
            self.relay.crash(exc)

    def _read(self) -> None:
        for _ in range(_ROUNDS):
            try:
                n = self._fill()
            except BlockingIOError:
                break
            except OSError as exc:
                self.relay.fail(self.to_server, exc)
                return
            if n == 0:
                self.eof = True  # _at_eof below stops reading, unless the relay ends anyway
                break
            self._count(n)
            self._drain()
            if self.store is not None or not self.reading or n < _SHORT_READ:
                return  # backpressure, the relay ended, or the socket is likely empty
        self.release()  # empty here: an idle direction holds no pipe or buffer
        if self.eof and not self.done:
            self._at_eof()

    def _drain(self) -> None:
        try:
            while self._flush():
                pass
        except BlockingIOError:
            self._stop_read()
            self._want_write()
            return
        except OSError as exc:
            self.relay.fail(not self.to_server, exc)
            return
        self.release()
        self._stop_write()
        if self.eof:
            self._at_eof()
        else:
            self._want_read()

    def _fill(self) -> int:
        """Read once from the source into the store (borrowing one if needed); 0 at EOF."""
        raise NotImplementedError

    def _flush(self) -> int:
        """Write once from the store to the destination; the bytes still held after it."""
        raise NotImplementedError

    def _count(self, n: int) -> None:
        self.last = _now()
        if self.to_server:
            self.relay.session.bytes_in += n
        else:
            self.relay.session.bytes_out += n

    def _at_eof(self) -> None:
        """The source said EOF and everything read has been written: pass the half-close on.

        When the other direction is already done the relay ends now, and closing both sockets
        says EOF to the destination: no ``shutdown`` and no poller change is needed first.
        """
        self.done = True
        other = self.relay.s2c if self.to_server else self.relay.c2s
        if not other.done:
            self._stop_read()
            self._stop_write()
            try:
                self.dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.relay.half_done(self)

    def release(self) -> None:
        """Give back the store to its pool (or close it if it still holds bytes)."""
        raise NotImplementedError


class _SpliceHalf(_Half[Pipe]):
    """Socket → pipe → socket with ``os.splice``; the store is a pooled pipe."""

    __slots__ = ()

    def _fill(self) -> int:
        pipe = self.store
        if pipe is None:
            pipe = self.store = self.pipes.get()
        n = os.splice(self.sfd, pipe.w, self.pipes.size, flags=_SPLICE_FLAGS)
        pipe.pending += n
        return n

    def _flush(self) -> int:
        pipe = self.store
        assert pipe is not None
        m = os.splice(pipe.r, self.dfd, pipe.pending, flags=_SPLICE_FLAGS)
        if m == 0:
            raise BlockingIOError
        pipe.pending -= m
        return pipe.pending

    def release(self) -> None:
        """Give back (or close, if not empty) the borrowed pipe."""
        if self.store is not None:
            self.pipes.put(self.store)
            self.store = None


class _CopyHalf(_Half[memoryview]):
    """``recv_into`` a pooled buffer, then ``send`` it; the store is that buffer.

    In an ``auto`` relay a read that fills the whole buffer means bulk is flowing: the
    next read goes through a pipe instead (the object becomes a :class:`_SpliceHalf`).
    Small exchanges, where a pipe costs more than it saves, stay here.
    """

    __slots__ = ()

    def _fill(self) -> int:
        buf = self.store
        if buf is None:
            if self.upgrade and self.end == self.buffers.size:
                self.__class__ = _SpliceHalf  # type: ignore[assignment]
                return self._fill()
            buf = self.store = self.buffers.get()
        n = self.src.recv_into(buf)
        self.start_ = 0
        self.end = n
        return n

    def _flush(self) -> int:
        buf = self.store
        assert buf is not None
        self.start_ += self.dst.send(buf[self.start_ : self.end])
        return self.end - self.start_

    def release(self) -> None:
        """Give back the borrowed buffer."""
        if self.store is not None:
            self.buffers.put(self.store)
            self.store = None


class Relay:
    """Both directions between ``client`` and ``server``, with idle timeout and accounting.

    ``mode`` is the listener's ``relay`` setting: ``"splice"`` moves bytes with ``os.splice``
    (both must be plain TCP sockets), ``"copy"`` through pooled buffers, and ``"auto"`` starts
    each direction copying and moves it to splice once it carries bulk (a read that fills
    the whole buffer). ``idle_timeout`` of 0 disables the idle timer.
    """

    __slots__ = (
        "c2s",
        "client",
        "ended",
        "first_eof_client",
        "idle_timeout",
        "on_done",
        "poller",
        "s2c",
        "server",
        "session",
        "wheel",
        "wheel_slot",
    )

    def __init__(
        self,
        poller: Poller,
        wheel: TimerWheel,
        client: socket.socket,
        server: socket.socket,
        session: Session,
        on_done: DoneCallback,
        *,
        mode: str,
        pipes: PipePool,
        buffers: BufferPool,
        idle_timeout: float = 0.0,
        to_server: bytes = b"",
        to_client: bytes = b"",
    ) -> None:
        self.poller = poller
        self.client = client
        self.server = server
        self.session = session
        self.on_done = on_done
        self.idle_timeout = idle_timeout
        self.ended = False
        self.first_eof_client: bool | None = None
        self.wheel = wheel
        self.wheel_slot: int | None = None
        self.c2s: _Half[Any]
        self.s2c: _Half[Any]
        kind: type[_Half[Any]] = _SpliceHalf if mode == "splice" else _CopyHalf
        upgrade = mode == "auto"
        self.c2s = kind(self, client, server, True, to_server, pipes, buffers, upgrade)
        self.s2c = kind(self, server, client, False, to_client, pipes, buffers, upgrade)

    def start(self) -> None:
        """Begin relaying in both directions."""
        if self.idle_timeout > 0:
            self.wheel.arm(self, self.idle_timeout)
        self.c2s.start()
        if not self.ended:
            self.s2c.start()

    def on_deadline(self, now: float) -> None:
        """The idle deadline came: end if nothing moved for ``idle_timeout``, else move it on."""
        left, reason = idle_check(self.c2s.last, self.s2c.last, self.idle_timeout, now)
        if left > 0:
            self.wheel.arm(self, left)
        else:
            self.end(reason, f"no data for {self.idle_timeout:g}s")

    def half_done(self, half: _Half[Any]) -> None:
        """Called by a half that reached EOF; ends the relay when both have."""
        if self.first_eof_client is None:
            self.first_eof_client = half.to_server
        if self.c2s.done and self.s2c.done:
            reason = Reason.CLIENT_CLOSED if self.first_eof_client else Reason.SERVER_CLOSED
            self.end(reason)

    def fail(self, client_side: bool, exc: OSError) -> None:
        """A socket error on one side ends both directions, blamed on that side."""
        reason = Reason.CLIENT_CLOSED if client_side else Reason.SERVER_CLOSED
        self.end(reason, exc.strerror or type(exc).__name__)

    def crash(self, exc: BaseException) -> None:
        """An unexpected exception in a callback: end with ``internal_error`` and the traceback."""
        log.error("relay of connection %d failed", self.session.id, exc_info=exc)
        self.end(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def end(self, reason: Reason, detail: str = "") -> None:
        """Tear down: unregister, release pipes/buffers, close both sockets, report once."""
        if self.ended:
            return
        self.ended = True
        self.wheel.disarm(self)
        self.c2s.release()
        self.s2c.release()
        self.c2s.reading = self.c2s.writing = self.s2c.reading = self.s2c.writing = False
        self.poller.close(self.client)
        self.poller.close(self.server)
        on_done = self.on_done
        # Break the relay <-> half and owner <-> relay cycles so that reference counting
        # frees this connection's objects at once, without waiting for the cyclic GC.
        self.on_done = ended
        self.c2s.relay = self.s2c.relay = None  # type: ignore[assignment]
        on_done(reason, detail)
