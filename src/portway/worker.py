"""One worker process: a uvloop event loop, its own SO_REUSEPORT listeners, and its connections.

The supervisor starts a worker with one end of a socketpair (the control channel, see
:mod:`portway.control`) and sends it the configuration. The worker binds its listeners,
answers ``ready``, and then serves until told to stop. It never reads the config file
itself: what it runs is exactly what the supervisor validated.

Reload (a ``config`` message) builds a new :class:`~portway.runtime.Runtime`, binds any new
addresses first (so a failure changes nothing), then points the listeners at the new runtime.
Live connections keep the runtime they started with.

Stop (a ``stop`` message, SIGTERM, or the supervisor going away) closes the listeners, waits
up to the drain timeout for live connections to finish, ends the rest with the termination
reason ``shutdown``, flushes the access log and exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import resource
import signal
import socket
from typing import Any

from portway import control, logs
from portway.config.load import load_dict
from portway.config.model import BindSpec, Config
from portway.context import Context
from portway.modes import CONNECTION_CLASSES
from portway.net.listener import BindError, Listener, bind_socket
from portway.observe.accesslog import AccessLog
from portway.route.backend import Server
from portway.runtime import Runtime
from portway.termination import Reason

log = logging.getLogger("portway.worker")

#: How often buffered access-log lines are written out.
ACCESS_FLUSH_INTERVAL = 0.2
#: How often pooled pipes that stayed unused are closed (see PipePool.trim).
PIPE_TRIM_EVERY = 5  # flush intervals
#: HAR files of intercepted requests are rewritten whole: about once a second is enough.
HAR_FLUSH_EVERY = 5  # flush intervals


class Worker:
    """State of one worker process; see the module docstring."""

    def __init__(self, index: int, count: int, control_fd: int) -> None:
        self.index = index
        self.count = count
        self.control_sock = socket.socket(fileno=control_fd)
        self.ctx: Context | None = None
        self.runtime: Runtime | None = None
        self.listeners: dict[str, Listener] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.stopping = False
        self.generation = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._ticks = 0
        self._stop_task: asyncio.Task[None] | None = None

    async def run(self) -> int:
        """Serve until stopped; the process exit code."""
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(sock=self.control_sock)
        self.writer = writer
        first = await control.recv(reader)
        if first is None or first.get("op") != "config":
            return 2
        config = load_dict(first["config"], first["source"])
        logs.setup(config.log.level, config.log.format, f"worker {self.index}")
        _raise_nofile_limit()
        access = AccessLog(config.log.access, config.log.format)
        self.ctx = Context(loop, access, worker_index=self.index, worker_count=self.count)
        try:
            await self.apply(config, int(first.get("generation", 1)))
        except (BindError, OSError) as exc:
            await control.send(writer, {"op": "fatal", "message": str(exc)})
            return 3
        loop.add_signal_handler(signal.SIGTERM, self._on_sigterm)
        _tune_gc()
        self._schedule_flush()
        await control.send(writer, {"op": "ready", "pid": os.getpid(), "generation": self.generation})
        while True:
            msg = await control.recv(reader)
            if msg is None:  # the supervisor is gone: do not outlive it
                log.warning("control channel closed; draining and exiting")
                await self.stop(config_drain(self.runtime))
                return 0
            reply = await self.handle(msg)
            if reply is not None:
                await control.send(writer, reply)
            if msg.get("op") == "stop":
                return 0

    async def handle(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Carry out one control message; the reply to send, if any."""
        op = msg.get("op")
        mid = msg.get("id")
        if op == "ping":
            return {"op": "pong", "id": mid}
        if op == "stats":
            return {"op": "stats", "id": mid, "data": self.snapshot()}
        if op == "config":
            try:
                config = load_dict(msg["config"], msg["source"])
                if self.ctx is not None and "count" in msg:  # the number of workers may have changed
                    self.count = self.ctx.worker_count = int(msg["count"])
                await self.apply(config, int(msg["generation"]))
            except Exception as exc:  # BindError, resolution problems, bugs: keep the old config
                log.error("could not apply configuration generation %s: %s", msg.get("generation"), exc)
                return {"op": "apply_failed", "id": mid, "message": str(exc)}
            return {"op": "applied", "id": mid, "generation": self.generation}
        if op == "stop":
            await self.stop(float(msg.get("timeout", 0)))
            return {"op": "stopped", "id": mid}
        log.warning("unknown control message %r", op)
        return None

    async def apply(self, config: Config, generation: int) -> None:
        """Make ``config`` live for new connections; raises BindError and changes nothing then."""
        ctx = self.ctx
        assert ctx is not None
        loop = ctx.loop
        old_log = self.runtime.config.log if self.runtime is not None else config.log
        new_access: AccessLog | None = None
        if (config.log.access, config.log.format) != (old_log.access, old_log.format):
            new_access = AccessLog(
                config.log.access, config.log.format
            )  # may raise OSError: nothing changed yet
        runtime = Runtime(config, generation, previous=self.runtime)
        for problem in await runtime.resolve(loop):
            log.warning("%s", problem)
        existing: dict[BindSpec, socket.socket] = {}
        for listener in self.listeners.values():
            existing.update(listener.sockets)
        created: dict[BindSpec, socket.socket] = {}
        try:
            for spec in config.listeners:
                for bind in spec.bind:
                    if bind not in existing and bind not in created:
                        created[bind] = bind_socket(bind, spec.backlog)
        except BindError:
            for sock in created.values():
                sock.close()
            raise
        # Commit: from here on nothing fails.
        for listener in self.listeners.values():
            listener.pause()
            listener.sockets = {}
        listeners: dict[str, Listener] = {}
        for spec in config.listeners:
            factory = CONNECTION_CLASSES[spec.mode]
            socks: dict[BindSpec, socket.socket] = {}
            for bind in spec.bind:
                if bind in existing:
                    sock = existing.pop(bind)
                    sock.listen(spec.backlog)
                else:
                    sock = created[bind]
                socks[bind] = sock
            old = self.listeners.get(spec.name)
            if old is None or old.closed:
                listener = Listener(ctx, spec, runtime, factory)
            else:
                listener = old
                listener.update(spec, runtime, factory)
            listener.adopt(socks)
            listeners[spec.name] = listener
        for name, listener in self.listeners.items():
            if name not in listeners:
                listener.close()
        for sock in existing.values():
            ctx.poller.close(sock)
        self.listeners = listeners
        if self.runtime is not None:
            self.runtime.stop_health_checks()
        runtime.start_health_checks(loop, self._on_server_state)
        if config.log != old_log:
            logs.setup(config.log.level, config.log.format, f"worker {self.index}")
        if new_access is not None:
            ctx.access.flush()
            ctx.access.close()
            ctx.access = new_access
        self.runtime = runtime
        self.generation = generation
        ctx.stats.declare(
            ((s.name, s.max_connections) for s in config.listeners),
            (
                (name, ((srv.name, srv.address, srv.weight, srv.backup) for srv in pool.servers))
                for name, pool in runtime.pools.items()
            ),
        )
        for name, pool in runtime.pools.items():
            for srv in pool.servers:
                ctx.stats.server_state(name, srv.name, srv.health.checked_up)

    def _on_server_state(self, backend: str, server: Server, up: bool, why: str) -> None:
        ctx = self.ctx
        assert ctx is not None
        ctx.stats.server_state(backend, server.name, up)
        if up:
            log.info("server %s/%s (%s) is UP: %s", backend, server.name, server.address, why)
        else:
            log.warning("server %s/%s (%s) is DOWN: %s", backend, server.name, server.address, why)

    def snapshot(self) -> dict[str, Any]:
        """This worker's statistics, including bytes of live connections."""
        ctx = self.ctx
        assert ctx is not None
        data = ctx.stats.snapshot(c.session for c in ctx.live.values())
        data["generation"] = self.generation
        data["index"] = self.index
        data["live"] = len(ctx.live)
        data["pipes_created"] = ctx.pipes.created
        data["gc_collected"] = sum(g["collected"] for g in gc.get_stats())
        return data

    def _schedule_flush(self) -> None:
        ctx = self.ctx
        assert ctx is not None
        ctx.access.flush()
        self._ticks += 1
        if self._ticks % PIPE_TRIM_EVERY == 0:
            ctx.pipes.trim()
        if ctx.har and self._ticks % HAR_FLUSH_EVERY == 0:
            for har in ctx.har.values():
                har.flush()  # (rewrites the whole file: not at the access log's pace)
        self._flush_handle = ctx.loop.call_later(ACCESS_FLUSH_INTERVAL, self._schedule_flush)

    def _on_sigterm(self) -> None:
        if self._stop_task is None:
            log.info("SIGTERM: draining")
            self._stop_task = asyncio.get_running_loop().create_task(self._stop_and_exit())

    async def _stop_and_exit(self) -> None:
        await self.stop(config_drain(self.runtime))
        os._exit(0)

    async def stop(self, timeout: float) -> None:
        """Stop accepting, wait up to ``timeout`` for live connections, end the rest."""
        ctx = self.ctx
        assert ctx is not None
        if not self.stopping:
            self.stopping = True
            for listener in self.listeners.values():
                listener.close()
            if self.runtime is not None:
                self.runtime.stop_health_checks()
            if ctx.origins is not None:
                ctx.origins.close()
            for conn in list(ctx.live.values()):
                drain = getattr(conn, "drain", None)
                if drain is not None:  # HTTP keep-alive: do not wait for idle clients
                    drain()
            if ctx.live:
                log.info("draining %d connections (up to %gs)", len(ctx.live), timeout)
        deadline = ctx.loop.time() + timeout
        while ctx.live and ctx.loop.time() < deadline:
            await ctx.wait_idle(deadline - ctx.loop.time())
        if ctx.live:
            log.info("drain timeout: ending %d connections", len(ctx.live))
            ctx.abort_all(Reason.SHUTDOWN, f"still open after the {timeout:g}s drain timeout")
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        ctx.access.flush()
        ctx.access.close()
        for har in ctx.har.values():
            har.close()
        ctx.pipes.close()


def config_drain(runtime: Runtime | None) -> float:
    """The drain timeout of the running config (default 30 s before any config)."""
    return runtime.config.drain_timeout if runtime is not None else 30.0


#: Allocations (minus frees) between two young-generation collections. Every connection makes
#: a few dozen short-lived objects, most freed by reference counting; the default (700) ran a
#: collection every few connections, about 3 % of a busy worker's time.
GC_THRESHOLD = (20_000, 20, 20)


def _tune_gc() -> None:
    """Move everything made at startup (modules, config, runtime) out of the collector's way
    and collect the young generation less often (see :data:`GC_THRESHOLD`)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


def _raise_nofile_limit() -> None:
    """Raise the soft open-files limit to the hard limit: every connection costs two descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-files limit from %d to %d: %s", soft, hard, exc)


def main(index: int, count: int, control_fd: int) -> int:
    """Entry point of a worker process (``portway worker``, started by the supervisor)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides what Ctrl-C means
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    import uvloop

    worker = Worker(index, count, control_fd)
    return int(uvloop.run(worker.run()))
