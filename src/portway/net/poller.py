"""One epoll set for every connection socket of a worker, driven by a single event-loop reader.

Why not ``loop.add_reader`` per socket: with uvloop each add/remove allocates or frees a
libuv poll handle (and its ``ioctl(FIONBIO)``) and checks a weak dictionary of transports, and
every start/stop is an ``epoll_ctl``. A short proxied connection toggles its two sockets about
a dozen times, and that churn cost more than the bytes it carried. Here each socket's interest
set is a plain bitmask in a dict, changed with one ``epoll_ctl`` only when it really changes,
and a closed socket needs none (the kernel drops closed descriptors from the set).

Rules:

1. Level-triggered: a callback need not drain its socket; it is called again while ready.
2. An fd with no interest is removed from the set (``EPOLLHUP``/``EPOLLERR`` are reported
   whatever the mask, so keeping it would spin).
3. :meth:`Poller.forget` must be called before the socket is closed, so a reused descriptor
   number can never reach a stale callback. :meth:`Poller.close` does both. Events already
   fetched for a descriptor that was forgotten during the same batch are skipped, for the
   same reason.
4. The worker's uvloop still runs timers and the control channel; this set, which also holds
   the listening sockets, is one more readable descriptor to it.
"""

from __future__ import annotations

import asyncio
import select
import socket
from collections.abc import Callable

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP
#: Events fetched per ``epoll_wait``, and batches handled per wake-up before yielding back
#: to the loop (timers, the control channel).
_BATCH = 512
_ROUNDS = 4

Callback = Callable[[], None]


class Poller:
    """Readiness callbacks for many sockets through one ``epoll`` descriptor."""

    __slots__ = ("_dead", "_ep", "_loop", "_masks", "_readers", "_writers", "events")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._ep = select.epoll()
        self._readers: dict[int, Callback] = {}
        self._writers: dict[int, Callback] = {}
        self._masks: dict[int, int] = {}
        self._dead: set[int] = set()
        #: The epoll event mask of the callback being run (``EPOLLERR`` tells a failed connect).
        self.events = 0
        loop.add_reader(self._ep.fileno(), self._dispatch)

    def _sync(self, fd: int) -> None:
        """Bring the kernel's interest set for ``fd`` in line with its callbacks."""
        mask = (_IN if fd in self._readers else 0) | (_OUT if fd in self._writers else 0)
        old = self._masks.get(fd, 0)
        if mask == old:
            return
        if mask == 0:
            del self._masks[fd]
            self._ep.unregister(fd)
        elif old == 0:
            self._masks[fd] = mask
            self._ep.register(fd, mask)
        else:
            self._masks[fd] = mask
            self._ep.modify(fd, mask)

    def add_reader(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is readable (replaces any previous reader)."""
        self._readers[fd] = callback
        self._sync(fd)

    def remove_reader(self, fd: int) -> None:
        """Stop watching ``fd`` for reading."""
        if self._readers.pop(fd, None) is not None:
            self._sync(fd)

    def add_writer(self, fd: int, callback: Callback) -> None:
        """Call ``callback()`` whenever ``fd`` is writable (replaces any previous writer)."""
        self._writers[fd] = callback
        self._sync(fd)

    def remove_writer(self, fd: int) -> None:
        """Stop watching ``fd`` for writing."""
        if self._writers.pop(fd, None) is not None:
            self._sync(fd)

    def hand_over_writer(self, fd: int) -> None:
        """Drop ``fd``'s writer without a system call, for a caller that registers a reader next.

        A connected socket passes from the dialler (waiting for writability) to the relay
        (waiting for data): one ``epoll_ctl(MOD)`` then replaces a ``DEL`` and an ``ADD``.
        The caller must register a callback for ``fd`` or close it before returning to the loop.
        """
        self._writers.pop(fd, None)

    def forget(self, fd: int) -> None:
        """Drop every callback for ``fd`` without a system call; close the fd right after."""
        self._readers.pop(fd, None)
        self._writers.pop(fd, None)
        self._masks.pop(fd, None)
        self._dead.add(fd)

    def close(self, sock: socket.socket) -> None:
        """Forget ``sock``'s callbacks and close it (the kernel removes it from the set)."""
        fd = sock.fileno()
        if fd >= 0:
            self.forget(fd)
        sock.close()

    @property
    def watched(self) -> int:
        """Number of descriptors currently in the set."""
        return len(self._masks)

    def _dispatch(self) -> None:
        readers = self._readers
        writers = self._writers
        dead = self._dead
        poll = self._ep.poll
        # Under load, new events arrive while a batch is handled: take up to _ROUNDS batches
        # per wake-up instead of paying a full event-loop iteration for each.
        for _ in range(_ROUNDS):
            events = poll(0, _BATCH)
            if not events:
                return
            dead.clear()
            for fd, ev in events:
                if dead and fd in dead:
                    continue
                self.events = ev
                if ev & _OUT:
                    cb = writers.get(fd)
                    if cb is not None:
                        cb()
                if ev & (_IN | _ERR):
                    cb = readers.get(fd)
                    if cb is not None:
                        cb()
                    elif ev & _ERR:
                        cb = writers.get(fd)
                        if cb is not None:
                            cb()

    def shutdown(self) -> None:
        """Stop dispatching and close the epoll descriptor."""
        self._loop.remove_reader(self._ep.fileno())
        self._ep.close()
        self._readers.clear()
        self._writers.clear()
        self._masks.clear()
