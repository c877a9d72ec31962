"""Run a real Portway instance (``python -m portway run``) and real backends on loopback.

Everything here waits on conditions (a log line, a port accepting, a count reached), never on
fixed sleeps. Log lines from the Portway process are collected by reader threads; a test waits
for the line it needs with :meth:`Portway.wait_for`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until(cond: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


class Portway:
    """A Portway process under test, with its stderr log and stdout access log captured."""

    def __init__(self, tmp: Path, config: str, *, prefix: list[str] | None = None) -> None:
        self.tmp = tmp
        self.path = tmp / "portway.toml"
        self.path.write_text(config)
        self.prefix = prefix or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log: list[str] = []
        #: JSON access-log records of connections, and of HTTP requests (``"type": "http"``).
        self.access: list[dict[str, Any]] = []
        self.requests: list[dict[str, Any]] = []
        self.raw_out: list[str] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []

    # -- process ----------------------------------------------------------------------------
    def start(self, wait: bool = True) -> Portway:
        """Start ``portway run -c FILE``; by default wait for its ``ready`` line."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [*self.prefix, sys.executable, "-m", "portway", "run", "-c", str(self.path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=self.tmp,
        )
        for stream, sink in ((self.proc.stdout, self._on_out), (self.proc.stderr, self._on_err)):
            t = threading.Thread(target=self._pump, args=(stream, sink), daemon=True)
            t.start()
            self._threads.append(t)
        if wait:
            self.wait_for(r"\bready: ", timeout=30)
        return self

    def _pump(self, stream: Any, sink: Callable[[str], None]) -> None:
        for raw in iter(stream.readline, b""):
            sink(raw.decode(errors="replace").rstrip("\n"))
        with self._cond:
            self._cond.notify_all()

    def _on_err(self, line: str) -> None:
        with self._cond:
            self.log.append(line)
            self._cond.notify_all()

    def _on_out(self, line: str) -> None:
        with self._cond:
            self.raw_out.append(line)
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict):
                (self.requests if record.get("type") == "http" else self.access).append(record)
            self._cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0, start: int = 0) -> str:
        """Wait for a stderr log line matching ``pattern`` (from index ``start``); return it."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.log[start:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0 or (
                    self.proc is not None
                    and self.proc.poll() is not None
                    and not any(t.is_alive() for t in self._threads)
                ):
                    tail = "\n".join(self.log[-30:])
                    raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; log:\n{tail}")
                self._cond.wait(min(left, 0.2))

    def wait_access(
        self, cond: Callable[[list[dict[str, Any]]], Any], timeout: float = 10.0, *, requests: bool = False
    ) -> Any:
        """Wait until ``cond(records)`` is truthy; return its value. The records are the
        connections' (default) or, with ``requests``, the HTTP requests' access-log lines."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = cond(self.requests if requests else self.access)
                if value:
                    return value
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"access log condition not met within {timeout}s: {self.access[-5:]}"
                    )
                self._cond.wait(min(left, 0.2))

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the supervisor."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 30.0) -> int:
        """Wait for the supervisor to exit; its exit status."""
        assert self.proc is not None
        code = self.proc.wait(timeout)
        for t in self._threads:
            t.join(timeout)
        return code

    def stop(self) -> int | None:
        """SIGTERM (then SIGKILL if needed) and wait; safe to call twice."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.wait_exit(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    # -- inspection -------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """The supervisor's pid."""
        assert self.proc is not None
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        """Pids of the supervisor's child processes (the workers)."""
        path = Path(f"/proc/{self.pid}/task/{self.pid}/children")
        return [int(p) for p in path.read_text().split()]

    def admin_get(self, port: int, path: str) -> tuple[int, bytes]:
        """GET ``path`` from the admin endpoint on 127.0.0.1:``port``."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def stats(self, port: int) -> dict[str, Any]:
        """The merged /stats document."""
        status, body = self.admin_get(port, "/stats")
        assert status == 200, body
        return json.loads(body)  # type: ignore[no-any-return]


def fd_count(pid: int) -> int:
    """Number of open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def sha256(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def tcp_config(
    port: int,
    servers: list[int] | list[str],
    *,
    workers: int = 1,
    admin_port: int | None = None,
    listener: str = "",
    backend: str = "",
    top: str = "",
) -> str:
    """A config with one tcp listener on 127.0.0.1:``port`` and one backend ``pool``.

    ``servers`` are ports on 127.0.0.1 (or full ``host:port`` strings); ``listener`` and
    ``backend`` are extra TOML lines for those tables; ``top`` goes before them.
    """
    admin = f'"127.0.0.1:{admin_port}"' if admin_port else '"off"'
    entries = ", ".join(
        f'{{ address = "{s if isinstance(s, str) else f"127.0.0.1:{s}"}", name = "s{i}" }}'
        for i, s in enumerate(servers)
    )
    return f"""
workers = {workers}
drain_timeout = "10s"
{top}
[admin]
listen = {admin}
[log]
access = "stdout"
format = "json"
level = "debug"

[[listener]]
name = "front"
mode = "tcp"
bind = "127.0.0.1:{port}"
backend = "pool"
{listener}

[[backend]]
name = "pool"
servers = [{entries}]
{backend}
"""


def roundtrip(port: int, payload: bytes, host: str = "127.0.0.1") -> tuple[int, bytes]:
    """Connect, send ``payload``, half-close, read to EOF; (client port, what came back).

    A connection refused before its data was read ends with a reset: that reads as b"".
    """
    with socket.create_connection((host, port), timeout=10) as s:
        cport = s.getsockname()[1]
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        back = b""
        try:
            while chunk := s.recv(65536):
                back += chunk
        except ConnectionResetError:
            pass
        return cport, back


def greeting(port: int) -> bytes:
    """Connect and return the first line the server sends, without its newline."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        return s.makefile("rb").readline().strip()
