"""Connect to one server of a pool, with a timeout per attempt and retries across servers.

A :class:`Dial` is callback-driven, like the relay: a non-blocking ``connect`` watched by the
worker's :class:`~portway.net.poller.Poller`, and a deadline on its
:class:`~portway.net.timers.TimerWheel`. Each failed attempt is recorded on the server's
health (passive ejection) and moves on to the next server the pool picks, never one already
tried. The chosen server is ``acquire()``-d when picked (so ``leastconn`` sees
connections that are still connecting) and ``release()``-d again if the attempt fails; on
success the caller owns that reference and releases it when the connection ends.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
from collections.abc import Callable

from portway.net.poller import Poller
from portway.net.timers import TimerWheel
from portway.route.backend import Pool, Server
from portway.termination import Reason

ConnectedCallback = Callable[[socket.socket, Server], None]
FailedCallback = Callable[[Reason, str], None]
_ERR = select.EPOLLERR | select.EPOLLHUP

#: Called after each failed attempt with the server and the health transition it caused, if any.
AttemptCallback = Callable[[Server, str, "str | None"], None]


class Dial:
    """One connection attempt sequence towards ``pool`` on behalf of ``client_ip``."""

    __slots__ = (
        "attempts_left",
        "client_ip",
        "done",
        "exhausted",
        "last_detail",
        "last_reason",
        "loop",
        "on_attempt_failed",
        "on_connected",
        "on_failed",
        "poller",
        "pool",
        "server",
        "sock",
        "timeout",
        "tried",
        "wheel",
        "wheel_slot",
    )

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        poller: Poller,
        wheel: TimerWheel,
        pool: Pool,
        client_ip: str,
        *,
        timeout: float,
        retries: int,
        on_connected: ConnectedCallback,
        on_failed: FailedCallback,
        on_attempt_failed: AttemptCallback,
    ) -> None:
        self.loop = loop
        self.poller = poller
        self.wheel = wheel
        self.wheel_slot: int | None = None
        self.pool = pool
        self.client_ip = client_ip
        self.timeout = timeout
        self.attempts_left = retries + 1
        self.on_connected = on_connected
        self.on_failed = on_failed
        self.on_attempt_failed = on_attempt_failed
        self.tried: list[Server] = []
        self.sock: socket.socket | None = None
        self.server: Server | None = None
        self.last_reason = Reason.NO_SERVER
        self.last_detail = ""
        self.done = False
        #: The error when this worker itself ran out of descriptors (not the server's fault).
        self.exhausted: OSError | None = None

    def start(self) -> None:
        """Begin with the first server the pool picks."""
        self._next()

    def _next(self) -> None:
        while self.attempts_left > 0:
            self.attempts_left -= 1
            server = self.pool.pick(self.client_ip, self.loop.time(), self.tried)
            if server is None:
                break
            self.tried.append(server)
            if self._attempt(server):
                return
        self.done = True
        on_failed = self.on_failed
        self._unlink()
        if not self.tried:
            on_failed(Reason.NO_SERVER, f"no server of backend {self.pool.name} is up")
        else:
            on_failed(self.last_reason, self.last_detail)

    def _attempt(self, server: Server) -> bool:
        """Start connecting to ``server``; False if it failed at once."""
        sockaddr = server.sockaddr
        if sockaddr is None:
            self._record_failure(server, Reason.CONNECT_REFUSED, f"{server.address}: name did not resolve")
            return False
        family = socket.AF_INET6 if len(sockaddr) == 4 else socket.AF_INET  # type: ignore[arg-type]
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as exc:  # EMFILE/ENFILE: out of descriptors; not the server's fault
            self.last_reason = Reason.CONNECT_REFUSED
            self.last_detail = f"cannot create a socket: {exc.strerror}"
            self.attempts_left = 0
            self.exhausted = exc
            return False
        server.acquire()
        err = sock.connect_ex(sockaddr)  # type: ignore[arg-type]
        if err in (0, errno.EINPROGRESS):
            self.sock = sock
            self.server = server
            self.poller.add_writer(sock.fileno(), self._on_writable)
            self.wheel.arm(self, self.timeout)
            return True
        sock.close()  # never registered with the poller
        server.release()
        self._record_failure(server, _reason_for(err), f"{server.address}: {os.strerror(err)}")
        return False

    def _on_writable(self) -> None:
        sock, server = self.sock, self.server
        assert sock is not None and server is not None
        # A failed connect always raises EPOLLERR; only then is SO_ERROR worth a system call.
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) if self.poller.events & _ERR else 0
        if err == 0:
            self.done = True
            self.sock = None
            self.wheel.disarm(self)
            self.poller.hand_over_writer(sock.fileno())  # the relay registers its reader next
            server.health.record_connect(True, self.loop.time())
            on_connected = self.on_connected
            self._unlink()
            on_connected(sock, server)
            return
        self._unwatch()
        self._drop()
        self._record_failure(server, _reason_for(err), f"{server.address}: {os.strerror(err)}")
        self._next()

    def on_deadline(self, now: float) -> None:
        """The connect attempt in progress took longer than ``timeout``: try the next server."""
        server = self.server
        assert server is not None
        self._unwatch()
        self._drop()
        self._record_failure(
            server, Reason.CONNECT_TIMEOUT, f"{server.address}: no answer within {self.timeout:g}s"
        )
        self._next()

    def _record_failure(self, server: Server, reason: Reason, detail: str) -> None:
        self.last_reason = reason
        self.last_detail = detail
        change = server.health.record_connect(False, self.loop.time())
        self.on_attempt_failed(server, detail, change)

    def _unwatch(self) -> None:
        if self.sock is not None:
            self.poller.remove_writer(self.sock.fileno())
        self.wheel.disarm(self)

    def _drop(self) -> None:
        """Close the socket of the attempt in progress and release its server."""
        if self.sock is not None:
            self.poller.close(self.sock)
            self.sock = None
        if self.server is not None:
            self.server.release()
            self.server = None

    def cancel(self) -> None:
        """Abandon the dial (the client went away or the worker is shutting down)."""
        if self.done:
            return
        self.done = True
        self._unwatch()
        self._drop()
        self._unlink()

    def _unlink(self) -> None:
        """Drop the callbacks into the owner once finished, so no reference cycle remains."""
        self.on_connected = _ignore
        self.on_failed = _ignore
        self.on_attempt_failed = _ignore


def _ignore(*args: object) -> None:
    """Placeholder callback of a finished dial."""


def _reason_for(err: int) -> Reason:
    if err == errno.ETIMEDOUT:
        return Reason.CONNECT_TIMEOUT
    return Reason.CONNECT_REFUSED
