"""Pools of kernel pipes (for splice) and of copy buffers, borrowed only while bytes are in flight.

Rule 1: an idle connection holds neither a pipe nor a buffer. A relay direction takes one from
the pool when its source becomes readable and gives it back as soon as everything it read has
been written, as HAProxy does with its pipe pool. 100,000 idle connections therefore cost no
pipe file descriptors and no buffer memory.

Rule 2: the pool shrinks when idle. :meth:`PipePool.trim`, called periodically, closes the
pipes that stayed unused for a whole period (the low-water mark of the free list), so after a
burst the worker returns to its baseline of open descriptors.

Rule 3: a pipe goes back to the pool only when it is empty (``pending == 0``); a pipe that still
holds bytes belongs to its connection until drained or until the connection is torn down, and
is then closed rather than pooled (its bytes must never reach another connection).
"""

from __future__ import annotations

import fcntl
import logging
import os

log = logging.getLogger("portway.relay")

#: Size asked for each pipe with F_SETPIPE_SZ. One splice moves at most this much.
DEFAULT_PIPE_SIZE = 1 << 20
#: Size of each copy buffer.
DEFAULT_BUFFER_SIZE = 1 << 16


class Pipe:
    """A non-blocking pipe pair plus the number of bytes currently inside it."""

    __slots__ = ("pending", "r", "w")

    def __init__(self, r: int, w: int) -> None:
        self.r = r
        self.w = w
        self.pending = 0

    def close(self) -> None:
        """Close both ends; the pipe is unusable afterwards."""
        os.close(self.r)
        os.close(self.w)


class PipePool:
    """Hands out enlarged non-blocking pipes and keeps up to ``keep`` empty ones for reuse."""

    __slots__ = ("_free", "_low", "created", "keep", "size")

    def __init__(self, size: int = DEFAULT_PIPE_SIZE, keep: int = 64) -> None:
        self.size = size
        self.keep = keep
        self.created = 0
        self._free: list[Pipe] = []
        self._low = 0

    def get(self) -> Pipe:
        """Borrow an empty pipe (a pooled one if any, else a new one)."""
        free = self._free
        if free:
            pipe = free.pop()
            if len(free) < self._low:
                self._low = len(free)
            return pipe
        r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, self.size)
        except OSError as exc:  # EPERM above pipe-max-size for unprivileged users: keep the default
            if self.created == 0:
                log.warning(
                    "cannot enlarge pipes to %d bytes (%s); splicing with the default size",
                    self.size,
                    exc.strerror,
                )
        self.created += 1
        return Pipe(r, w)

    def put(self, pipe: Pipe) -> None:
        """Give a pipe back: pooled if empty and there is room, else closed."""
        if pipe.pending == 0 and len(self._free) < self.keep:
            self._free.append(pipe)
        else:
            pipe.close()

    @property
    def idle(self) -> int:
        """Number of pipes waiting in the pool."""
        return len(self._free)

    def trim(self) -> int:
        """Close the pipes nobody needed since the last call; returns how many were closed."""
        n = min(self._low, len(self._free))
        for _ in range(n):
            self._free.pop(0).close()
        self._low = len(self._free)
        return n

    def close(self) -> None:
        """Close every pooled pipe."""
        while self._free:
            self._free.pop().close()


class BufferPool:
    """Hands out reusable copy buffers (as memoryviews) and keeps up to ``keep`` of them."""

    __slots__ = ("_free", "keep", "size")

    def __init__(self, size: int = DEFAULT_BUFFER_SIZE, keep: int = 64) -> None:
        self.size = size
        self.keep = keep
        self._free: list[memoryview] = []

    def get(self) -> memoryview:
        """Borrow a writable buffer of ``size`` bytes."""
        if self._free:
            return self._free.pop()
        return memoryview(bytearray(self.size))

    def put(self, buf: memoryview) -> None:
        """Give a buffer back."""
        if len(self._free) < self.keep:
            self._free.append(buf)
