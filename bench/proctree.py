"""Child processes for the benchmark: spawn pinned, wait for readiness, measure, clean up.

Everything here reads Linux ``/proc`` directly:

* CPU of a process tree = sum of ``utime + stime`` (fields 14 and 15 of ``/proc/PID/stat``) over the
  root and all its descendants (threads are included in a process's own counters).
* RSS of a process tree = sum of ``VmRSS`` from ``/proc/PID/status``.

Every child is started in its own session (so it is its own process group) and registered; ``stop_all``
kills what is left, and ``run.py`` calls it from ``finally`` so that Ctrl-C or an error leaves nothing
behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: Every process started through :class:`Child` that has not been stopped yet.
_LIVE: list[Child] = []


class StartError(RuntimeError):
    """A child did not start or did not become ready."""


def log_tail(path: Path, lines: int = 8) -> str:
    """The last ``lines`` lines of a log file joined by " | ", for error messages ('' if unreadable)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return " | ".join(text.strip().splitlines()[-lines:])


class Child:
    """A subprocess started under ``taskset -c CORE`` in its own session, output to a log file.

    ``taskset`` execs the program, so ``pid`` is the program's own pid; children it forks inherit the
    CPU affinity.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        core: int,
        log: Path,
        stdin: int | None = subprocess.DEVNULL,
        stdout_pipe: bool = False,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen(
            ["taskset", "-c", str(core), *argv],
            stdin=stdin,
            stdout=subprocess.PIPE if stdout_pipe else self._log_file,
            stderr=self._log_file,
            cwd=cwd,
            start_new_session=True,
            text=stdout_pipe,
        )
        self.pid = self.proc.pid
        _LIVE.append(self)

    def alive(self) -> bool:
        """True while the process has not exited."""
        return self.proc.poll() is None

    def describe_exit(self) -> str:
        """A one-paragraph reason for an early exit, with the tail of the log."""
        return f"{self.name} exited with status {self.proc.returncode}; log {self.log}: {log_tail(self.log)}"

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group (and any descendant that left it), then SIGKILL what remains."""
        if self in _LIVE:
            _LIVE.remove(self)
        pids = tree_pids(self.pid) if self.alive() else []
        _signal_group(self.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        _signal_group(self.pid, signal.SIGKILL)
        for pid in pids:  # descendants that may have called setsid()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        self._log_file.close()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def stop_all() -> None:
    """Stop every registered child that is still around (newest first)."""
    for child in reversed(list(_LIVE)):
        with contextlib.suppress(Exception):
            child.stop(timeout=2.0)


# --------------------------------------------------------------------------- /proc readers


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the ``(comm)`` field; index 0 is field 3 (state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants, found by scanning the ppid of every /proc entry."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            out.append(pid)
            todo.extend(children.get(pid, []))
    return out


def cpu_seconds(pids: Iterable[int]) -> float:
    """Sum of user + system CPU seconds of the given processes (all their threads)."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLK_TCK


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of VmRSS (KiB) of the given processes."""
    total = 0
    for pid in pids:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
                break
    return total


def pin_tree(root: int, core: int) -> list[int]:
    """Pin every thread of ``root`` and its descendants to ``core`` (like ``taskset -a -p``).

    Returns the pids of the tree; raises :class:`StartError` if a thread could not be pinned.
    """
    pids = tree_pids(root)
    for pid in pids:
        for task in os.scandir(f"/proc/{pid}/task"):
            tid = int(task.name)
            try:
                os.sched_setaffinity(tid, {core})
                pinned = os.sched_getaffinity(tid)
            except ProcessLookupError:
                continue  # the thread ended meanwhile
            if pinned != {core}:
                raise StartError(f"thread {tid} of pid {pid} runs on {sorted(pinned)}, not on CPU {core}")
    return pids


# --------------------------------------------------------------------------- readiness


def wait_listening(port: int, child: Child, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    """Poll a TCP connect to ``host:port`` until it succeeds; fail early if ``child`` exits."""
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive():
            raise StartError(child.describe_exit())
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise StartError(f"{child.name} not listening on {host}:{port} after {timeout:.0f}s")
        time.sleep(0.02)


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago and not handed out before in this run."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
