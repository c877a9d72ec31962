"""Listening sockets: bind with SO_REUSEPORT, accept without a Task, hold the connection limit.

Each worker binds its own socket for every ``bind`` address (``SO_REUSEPORT``; IPv6 sockets
are ``IPV6_V6ONLY`` so ``0.0.0.0:p`` and ``[::]:p`` can both be bound) and the kernel spreads
new connections over the workers. Accepting is a readiness callback of the worker's
:class:`~portway.net.poller.Poller` that accepts a batch and hands each socket to the mode's connection class.

Rules:

1. *maxconn.* At ``limit`` live connections the listener stops accepting (removes its readers)
   and resumes when a slot frees, as HAProxy's ``maxconn`` does: clients wait in the kernel's
   backlog; an accepted client is never dropped for being over the limit.
2. *Out of descriptors.* ``EMFILE``/``ENFILE``/``ENOBUFS``/``ENOMEM`` on accept pause accepting
   with a growing back-off (never a busy loop) and log once per burst, then once on recovery.
3. A :class:`Listener` is identified by its configured name and survives reloads: the worker
   swaps in the new spec and keeps the sockets of addresses that are still configured, so
   nothing queued in their backlog is lost.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import logging
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from portway.config.model import BindSpec, ListenerSpec
from portway.net.sockopt import peer_of, tune_listener

if TYPE_CHECKING:
    from portway.context import Context
    from portway.runtime import Runtime

log = logging.getLogger("portway.listener")

_ACCEPT_BATCH = 64
_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0

#: ``factory(ctx, listener, sock, peer, frontend)`` makes and starts the mode's connection object;
#: ``frontend`` is the configured bind address that accepted it.
ConnectionFactory = Callable[["Context", "Listener", socket.socket, tuple[str, int], tuple[str, int]], Any]


class BindError(Exception):
    """A bind address could not be bound; the message names the address and the fix."""


def bind_socket(bind: BindSpec, backlog: int) -> socket.socket:
    """Create, bind and listen a non-blocking ``SO_REUSEPORT`` socket for ``bind``."""
    sock = socket.socket(bind.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if bind.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((bind.host, bind.port))
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise BindError(_bind_message(bind, exc)) from exc
    return sock


def _bind_message(bind: BindSpec, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {bind}: address already in use "
            "(another program holds this port; stop it or change the bind address)"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {bind}: no local interface has this address"
    if exc.errno == errno.EACCES:
        return (
            f"cannot listen on {bind}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        )
    return f"cannot listen on {bind}: {exc.strerror}"


class Listener:
    """The bind sockets of one configured listener in this worker, and its accept loop."""

    __slots__ = (
        "_backoff",
        "_errors_in_burst",
        "_held",
        "_resume_handle",
        "accepting",
        "active",
        "closed",
        "ctx",
        "factory",
        "limit",
        "name",
        "runtime",
        "sockets",
        "spec",
    )

    def __init__(
        self, ctx: Context, spec: ListenerSpec, runtime: Runtime, factory: ConnectionFactory
    ) -> None:
        self.ctx = ctx
        self.name = spec.name
        self.spec = spec
        self.runtime = runtime
        self.factory = factory
        self.sockets: dict[BindSpec, socket.socket] = {}
        self.active = 0
        self.limit = share_of(spec.max_connections, ctx.worker_index, ctx.worker_count)
        self.accepting = False
        self.closed = False
        self._backoff = _BACKOFF_FIRST
        self._errors_in_burst = 0
        self._held = False
        self._resume_handle: asyncio.TimerHandle | None = None

    def update(self, spec: ListenerSpec, runtime: Runtime, factory: ConnectionFactory) -> None:
        """Point new connections at a reloaded spec and runtime (live ones keep theirs)."""
        self.spec = spec
        self.runtime = runtime
        self.factory = factory
        self.limit = share_of(spec.max_connections, self.ctx.worker_index, self.ctx.worker_count)

    def adopt(self, sockets: dict[BindSpec, socket.socket]) -> None:
        """Take ownership of bound sockets (new ones, or ones kept across a reload).

        The per-connection socket options are set here, on the listening sockets, and
        accepted sockets inherit them.
        """
        self.pause()
        spec = self.spec
        client_first = spec.mode != "tcp" or spec.proxy_protocol.accept == "required"
        defer = 1 if client_first else 0
        for sock in sockets.values():
            tune_listener(sock, spec.keepalive, defer)
        self.sockets = sockets
        self.resume()

    # -- accepting --------------------------------------------------------------------------
    def resume(self) -> None:
        """Start (or restart) accepting, unless at the limit or closed."""
        if self.accepting or self.closed or self.active >= self.limit:
            return
        if self._resume_handle is not None or self._held:
            return
        poller = self.ctx.poller
        for bind, sock in self.sockets.items():
            poller.add_reader(
                sock.fileno(), functools.partial(self._on_acceptable, sock, (bind.host, bind.port))
            )
        self.accepting = True

    def pause(self) -> None:
        """Stop accepting; queued clients wait in the kernel's backlog."""
        if not self.accepting:
            return
        poller = self.ctx.poller
        for sock in self.sockets.values():
            poller.remove_reader(sock.fileno())
        self.accepting = False

    def _on_acceptable(self, lsock: socket.socket, frontend: tuple[str, int]) -> None:
        ctx = self.ctx
        for _ in range(_ACCEPT_BATCH):
            if self.active >= self.limit:
                self.pause()
                return
            try:
                sock, addr = lsock.accept()
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in _RESOURCE_ERRORS:
                    self.out_of_resources(exc)
                    return
                if exc.errno in (errno.ECONNABORTED, errno.EPROTO, errno.EPERM):
                    continue
                log.error("listener %s: accept failed: %s", self.name, exc)
                return
            if self._errors_in_burst:
                log.warning(
                    "listener %s: accepting again after %d failed accepts", self.name, self._errors_in_burst
                )
                self._errors_in_burst = 0
                self._backoff = _BACKOFF_FIRST
            self.active += 1
            try:
                sock.setblocking(False)
                self.factory(ctx, self, sock, peer_of(addr), frontend)
            except Exception:
                log.exception("listener %s: could not start a connection", self.name)
                sock.close()
                self.active -= 1
            if not self.accepting:  # the connection paused us (out of descriptors)
                return

    def out_of_resources(self, exc: OSError, doing: str = "accept") -> None:
        """Out of descriptors or memory (on accept, or on a socket for a server): back off.

        New clients wait in the backlog until the back-off ends or, when it was a socket for
        a server that could not be made, until a connection of this listener ends and frees
        descriptors. One log line per burst.
        """
        if doing != "accept":
            self._held = True
        self._errors_in_burst += 1
        ctx = self.ctx
        ctx.stats.accept_error(self.name)
        if self._errors_in_burst == 1:
            log.error(
                "listener %s: cannot %s: %s (%s); pausing accepts, retrying with back-off "
                "(raise the open-files limit `ulimit -n` or lower max_connections)",
                self.name,
                doing,
                exc.strerror,
                errno.errorcode.get(exc.errno or 0, "?"),
            )
        self.pause()
        if self._resume_handle is not None or self._held:
            return
        self._resume_handle = ctx.loop.call_later(self._backoff, self._after_backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)

    def _after_backoff(self) -> None:
        self._resume_handle = None
        self.resume()

    def release(self) -> None:
        """A connection of this listener ended: free its slot and resume if we had paused."""
        self.active -= 1
        self._held = False
        if not self.accepting and self.active < self.limit and self._resume_handle is None:
            self.resume()

    def close(self) -> None:
        """Stop accepting for good and close the sockets this listener still owns."""
        self.pause()
        self.closed = True
        if self._resume_handle is not None:
            self._resume_handle.cancel()
            self._resume_handle = None
        for sock in self.sockets.values():
            self.ctx.poller.close(sock)
        self.sockets = {}


def share_of(total: int, index: int, count: int) -> int:
    """This worker's part of a listener's ``max_connections`` (at least 1).

    The limit is split evenly, the remainder going to the first workers, so the whole
    instance never holds more than ``total`` (when ``total >= count``).
    """
    base, extra = divmod(total, count)
    return max(1, base + (1 if index < extra else 0))
