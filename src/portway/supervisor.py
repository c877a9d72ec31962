"""The supervisor: starts N workers, restarts the dead, reloads on SIGHUP, drains on SIGTERM.

``portway run`` is this process. It owns the signals, the pid file and the admin endpoint;
the workers own the listeners and the connections. Signal handlers only queue the signal;
one dispatcher task calls ``handle_<name>()`` for each, in order (uvicorn's pattern), so a
reload never runs in the middle of another reload or of a shutdown.

- ``SIGHUP``: re-read and validate the config file. Invalid: log every error, keep running on
  the old one. Valid: send it to every worker (new connections use it, live ones are not
  touched) and adjust the number of workers.
- ``SIGTERM``: workers stop accepting and drain for up to ``drain_timeout``, then end what is
  left with the reason ``shutdown``; exit 0. ``SIGINT`` does the same without waiting.
- A worker that exits unexpectedly is restarted after a back-off that doubles while it keeps
  dying young (0.1 s up to 10 s), and the restart is counted and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
from typing import Any

from portway import __version__, control, logs
from portway.config.load import load_file
from portway.config.model import Config
from portway.errors import ConfigError, ConfigIssue
from portway.observe import metrics
from portway.observe.admin import AdminServer

log = logging.getLogger("portway.supervisor")

RESTART_BACKOFF_FIRST = 0.1
RESTART_BACKOFF_MAX = 10.0
#: A worker that lived this long before dying restarts without back-off.
STABLE_AFTER = 30.0
#: How long a worker may take to answer a stats or ping request.
REQUEST_TIMEOUT = 2.0
#: How long a new worker may take to bind and report ready.
START_TIMEOUT = 30.0


class StartupError(Exception):
    """The instance could not start (a worker could not bind, the admin port is taken...)."""


class WorkerHandle:
    """The supervisor's view of one worker process."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.started = 0.0
        self.generation = 0
        self.restarts = 0
        self.quick_deaths = 0
        self.retiring = False
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def pid(self) -> int | None:
        """The worker's process id, while it runs."""
        return self.proc.pid if self.proc is not None and self.proc.returncode is None else None

    @property
    def alive(self) -> bool:
        """True once the worker reported ready and until it exits."""
        return (
            self.pid is not None
            and self.ready is not None
            and self.ready.done()
            and not self.ready.exception()
        )

    def summary(self) -> dict[str, Any]:
        """What /stats shows about this worker."""
        return {
            "index": self.index,
            "pid": self.pid,
            "alive": self.alive,
            "generation": self.generation,
            "started": self.started,
            "restarts": self.restarts,
        }


class Supervisor:
    """Runs one Portway instance; :meth:`run` returns the process exit code."""

    def __init__(
        self, config: Config, path: str | None, *, pid_file: str | None = None, workers: int | None = None
    ) -> None:
        self.config = config
        self.path = path
        self.pid_file = pid_file if pid_file is not None else config.pid_file
        #: ``--workers`` from the command line wins over the file, also across reloads.
        self.workers_override = workers
        self.workers: list[WorkerHandle] = []
        self.generation = 1
        self.started = time.time()
        self.worker_restarts = 0
        self.reloads = 0
        self.reload_failures = 0
        self.stopping = False
        self.admin: AdminServer | None = None
        self.admin_address: tuple[str, int] | None = None
        self._ids = itertools.count(1)
        self._signals: asyncio.Queue[signal.Signals] = asyncio.Queue()
        self._done: asyncio.Future[int] | None = None

    # -- life cycle -------------------------------------------------------------------------
    async def run(self) -> int:
        """Start everything, serve until a stop signal, and return the exit code."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        try:
            problem = check_access_log(self.config)
            if problem:
                raise StartupError(problem)
            await self._start_admin()
            self._write_pid_file()
            for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._signals.put_nowait, sig)
            self.workers = [WorkerHandle(i) for i in range(self.worker_count)]
            results = await asyncio.gather(*(self._spawn(w) for w in self.workers), return_exceptions=True)
            for result in results:  # every failure is retrieved; the first one is reported
                if isinstance(result, BaseException):
                    raise result
        except StartupError as exc:
            log.error("%s", exc)
            await self._shutdown(0.0)
            return 1
        log.info(
            "ready: %d worker%s (pids %s)%s",
            len(self.workers),
            "s" * (len(self.workers) != 1),
            ", ".join(str(w.pid) for w in self.workers),
            f"; admin on http://{_fmt(self.admin_address)}/" if self.admin_address else "",
        )
        dispatcher = loop.create_task(self._dispatch())
        try:
            return await self._done
        finally:
            dispatcher.cancel()

    async def _dispatch(self) -> None:
        while True:
            sig = await self._signals.get()
            handler = getattr(self, f"handle_{sig.name[3:].lower()}")
            try:
                await handler()
            except Exception:
                log.exception("error while handling %s", sig.name)

    async def handle_hup(self) -> None:
        """Reload: validate the file; apply it to every worker only if it is valid."""
        if self.stopping:
            return
        if self.path is None:
            log.warning("SIGHUP: running the built-in default, which has no file to re-read")
            return
        log.info("SIGHUP: reloading %s", self.path)
        try:
            config = load_file(self.path)
            problem = check_access_log(config)
            if problem:
                raise ConfigError([ConfigIssue(config.source, "log.access", problem)])
        except ConfigError as exc:
            self.reload_failures += 1
            for issue in exc.issues:
                log.error("reload rejected: %s", issue)
            log.error(
                "reload rejected: still running the previous configuration (generation %d)", self.generation
            )
            return
        self.generation += 1
        old = self.config
        self.config = config
        if config.log != old.log:
            logs.setup(config.log.level, config.log.format, "supervisor")
        results = await asyncio.gather(*(self._send_config(w) for w in self.workers if w.alive))
        failures = [r for r in results if r]
        if failures:
            self.reload_failures += 1
            for message in failures:
                log.error("reload: a worker kept its previous configuration: %s", message)
        else:
            self.reloads += 1
        if old.admin.listen != config.admin.listen:
            await self._restart_admin()
        await self._resize(self.worker_count)
        log.info(
            "reloaded %s: generation %d, %d listeners, %d backends",
            self.path,
            self.generation,
            len(config.listeners),
            len(config.backends),
        )

    async def handle_term(self) -> None:
        """Graceful stop: drain for up to ``drain_timeout``, then exit 0."""
        log.info("SIGTERM: stopping; draining connections for up to %gs", self.config.drain_timeout)
        await self._stop(self.config.drain_timeout)

    async def handle_int(self) -> None:
        """Fast stop: end live connections now (reason ``shutdown``), then exit 0."""
        log.info("SIGINT: stopping now")
        await self._stop(0.0)

    async def _stop(self, drain: float) -> None:
        if self.stopping:  # a second stop signal: do not wait any longer
            drain = 0.0
        self.stopping = True
        await self._shutdown(drain)
        if self._done is not None and not self._done.done():
            self._done.set_result(0)

    async def _shutdown(self, drain: float) -> None:
        self.stopping = True
        await asyncio.gather(*(self._stop_worker(w, drain) for w in self.workers))
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
        self._remove_pid_file()

    # -- workers ----------------------------------------------------------------------------
    @property
    def worker_count(self) -> int:
        """How many workers should run: ``--workers``, else the config's ``workers``."""
        return self.workers_override or self.config.workers

    async def _spawn(self, handle: WorkerHandle) -> None:
        """Start the worker process for ``handle`` and wait until it is ready."""
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "portway",
                "worker",
                "--index",
                str(handle.index),
                "--count",
                str(self.config.workers),
                "--control-fd",
                str(child.fileno()),
                pass_fds=[child.fileno()],
                stdin=asyncio.subprocess.DEVNULL,
            )
        finally:
            child.close()
        reader, writer = await asyncio.open_connection(sock=parent)
        handle.proc = proc
        handle.writer = writer
        handle.started = time.time()
        handle.generation = self.generation
        handle.ready = loop.create_future()
        handle.pending.clear()
        handle.tasks = [
            loop.create_task(self._read_worker(handle, reader)),
            loop.create_task(self._watch_worker(handle, proc)),
        ]
        try:
            await control.send(writer, self._config_message())
        except (ConnectionError, OSError):
            pass  # the worker is already gone: its watcher says how, through handle.ready
        try:
            await asyncio.wait_for(asyncio.shield(handle.ready), START_TIMEOUT)
        except TimeoutError as exc:
            raise StartupError(f"worker {handle.index} did not start within {START_TIMEOUT:g}s") from exc

    def _config_message(self) -> dict[str, Any]:
        return {
            "op": "config",
            "config": self.config.raw,
            "count": self.worker_count,
            "source": self.config.source,
            "generation": self.generation,
        }

    async def _read_worker(self, handle: WorkerHandle, reader: asyncio.StreamReader) -> None:
        while True:
            try:
                msg = await control.recv(reader)
            except ValueError as exc:
                log.error("worker %d sent a bad control message: %s", handle.index, exc)
                msg = None
            if msg is None:
                break
            op = msg.get("op")
            ready = handle.ready
            if op == "ready" and ready is not None and not ready.done():
                ready.set_result(msg)
            elif op == "fatal" and ready is not None and not ready.done():
                ready.set_exception(StartupError(f"worker {handle.index}: {msg.get('message')}"))
            else:
                fut = handle.pending.pop(msg.get("id") or 0, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        for fut in handle.pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("worker exited"))
        handle.pending.clear()

    async def _watch_worker(self, handle: WorkerHandle, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        ready = handle.ready
        was_ready = ready is not None and ready.done() and not ready.exception()
        if ready is not None and not ready.done():
            ready.set_exception(
                StartupError(f"worker {handle.index} exited during start-up ({_describe_exit(code)})")
            )
        if handle.proc is not proc:
            return
        if handle.writer is not None:
            handle.writer.close()
        if self.stopping or handle.retiring or not was_ready:
            return
        lived = time.time() - handle.started
        handle.quick_deaths = 0 if lived >= STABLE_AFTER else handle.quick_deaths + 1
        delay = min(RESTART_BACKOFF_MAX, RESTART_BACKOFF_FIRST * 2 ** max(0, handle.quick_deaths - 1))
        handle.restarts += 1
        self.worker_restarts += 1
        log.error(
            "worker %d (pid %d) %s after %.1fs; restarting in %gs (restart #%d)",
            handle.index,
            proc.pid,
            _describe_exit(code),
            lived,
            delay,
            handle.restarts,
        )
        await asyncio.sleep(delay)
        if self.stopping or handle.retiring:
            return
        try:
            await self._spawn(handle)
            log.info("worker %d restarted (pid %s)", handle.index, handle.pid)
        except StartupError as exc:
            log.error("%s", exc)

    async def _request(self, handle: WorkerHandle, msg: dict[str, Any]) -> dict[str, Any]:
        mid = next(self._ids)
        msg["id"] = mid
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        handle.pending[mid] = fut
        assert handle.writer is not None
        try:
            await control.send(handle.writer, msg)
            return await asyncio.wait_for(fut, REQUEST_TIMEOUT if msg["op"] != "config" else 60.0)
        finally:
            handle.pending.pop(mid, None)

    async def _send_config(self, handle: WorkerHandle) -> str:
        """Send the current config to one worker; '' on success, else the worker's message."""
        try:
            reply = await self._request(handle, self._config_message())
        except (TimeoutError, ConnectionError) as exc:
            return f"worker {handle.index}: {exc or type(exc).__name__}"
        if reply.get("op") == "applied":
            handle.generation = int(reply.get("generation", self.generation))
            return ""
        return f"worker {handle.index}: {reply.get('message')}"

    async def _stop_worker(self, handle: WorkerHandle, drain: float) -> None:
        proc = handle.proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ConnectionError, OSError, AssertionError):
            assert handle.writer is not None
            await control.send(handle.writer, {"op": "stop", "timeout": drain})
        try:
            await asyncio.wait_for(proc.wait(), drain + 10.0)
        except TimeoutError:
            log.error("worker %d (pid %d) did not stop in time; killing it", handle.index, proc.pid)
            proc.kill()
            await proc.wait()

    async def _resize(self, count: int) -> None:
        """Start or retire workers so that ``count`` run."""
        current = len(self.workers)
        if count > current:
            new = [WorkerHandle(i) for i in range(current, count)]
            self.workers.extend(new)
            results = await asyncio.gather(*(self._spawn(w) for w in new), return_exceptions=True)
            for r in results:
                if isinstance(r, BaseException):
                    log.error("could not start a new worker: %s", r)
        elif count < current:
            retiring = self.workers[count:]
            self.workers = self.workers[:count]
            for w in retiring:
                w.retiring = True
            await asyncio.gather(*(self._stop_worker(w, self.config.drain_timeout) for w in retiring))

    # -- statistics and admin ---------------------------------------------------------------
    async def gather_stats(self) -> dict[str, Any]:
        """Ask every live worker for its snapshot and merge them.

        A restarted worker's counters start again from zero; Prometheus' ``rate()`` treats
        that as a counter reset.
        """
        handles = [w for w in self.workers if w.alive]
        replies = await asyncio.gather(
            *(self._request(w, {"op": "stats"}) for w in handles), return_exceptions=True
        )
        snapshots = [r["data"] for r in replies if isinstance(r, dict) and "data" in r]
        return metrics.merge(snapshots)

    def info(self) -> metrics.SupervisorInfo:
        """Facts about this instance for /metrics and /stats."""
        return metrics.SupervisorInfo(
            started=self.started,
            workers=[w.summary() for w in self.workers],
            worker_restarts_total=self.worker_restarts,
            config_source=self.config.source,
            reloads_total=self.reloads,
            reload_failures_total=self.reload_failures,
            version=__version__,
        )

    async def _metrics(self) -> bytes:
        return metrics.render_prometheus(await self.gather_stats(), self.info())

    async def _stats(self) -> bytes:
        return metrics.render_json(await self.gather_stats(), self.info())

    async def _health(self) -> tuple[bool, str]:
        down = [w.index for w in self.workers if not w.alive]
        if self.stopping:
            return False, "stopping"
        if down:
            return False, "workers not running: " + ", ".join(map(str, down))
        return True, "ok"

    async def _start_admin(self) -> None:
        listen = self.config.admin.listen
        if listen is None:
            return
        admin = AdminServer(
            listen.host, listen.port, metrics=self._metrics, stats=self._stats, health=self._health
        )
        try:
            self.admin_address = await admin.start()
        except OSError as exc:
            raise StartupError(
                f"cannot start the admin endpoint on {listen}: {exc.strerror} "
                '(change [admin] listen, or set it to "off")'
            ) from exc
        self.admin = admin

    async def _restart_admin(self) -> None:
        if self.admin is not None:
            await self.admin.close()
            self.admin = None
            self.admin_address = None
        try:
            await self._start_admin()
        except StartupError as exc:
            log.error("%s", exc)

    # -- pid file ---------------------------------------------------------------------------
    def _write_pid_file(self) -> None:
        if self.pid_file is None:
            return
        try:
            with open(self.pid_file, "w") as f:
                f.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise StartupError(f"cannot write pid_file {self.pid_file}: {exc.strerror}") from exc

    def _remove_pid_file(self) -> None:
        if self.pid_file is None:
            return
        try:
            with open(self.pid_file) as f:
                if f.read().strip() != str(os.getpid()):
                    return
            os.unlink(self.pid_file)
        except OSError:
            pass


def check_access_log(config: Config) -> str:
    """'' if the access-log file can be opened for appending, else a sentence saying why not.

    Checked by the supervisor before workers start or take a reload, so that a bad path is
    one clear error instead of every worker failing on its own.
    """
    target = config.log.access
    if target in ("stdout", "stderr", "off"):
        return ""
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        return (
            f"cannot open the access log {target}: {exc.strerror} "
            "(create its directory, fix its permissions, or change [log] access)"
        )
    return ""


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _fmt(addr: tuple[str, int] | None) -> str:
    if addr is None:
        return "-"
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def main(config: Config, path: str | None, *, pid_file: str | None = None, workers: int | None = None) -> int:
    """Run the supervisor on uvloop until it stops; the process exit code."""
    import uvloop

    return int(uvloop.run(Supervisor(config, path, pid_file=pid_file, workers=workers).run()))
