"""The local forwarder (``portway.forward`` and ``portway connect``) against the fake gateway.

Real sockets on loopback: a client connects to the forwarder, which connects to
:class:`tests.test_client.FakeGateway` with the token and relays. Everything waits on events
(a log record, a line on stdout, EOF), never on fixed sleeps.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType

import pytest

from portway.forward import serve_forwarder
from tests.test_client import TOKEN, Connection, FakeGateway, answer, echo

ROOT = Path(__file__).resolve().parents[1]
PORTWAY_CONNECT = [sys.executable, "-m", "portway", "connect"]


class Forwarder:
    """``serve_forwarder`` on ``127.0.0.1:<free port>`` in its own thread and event loop."""

    def __init__(
        self, gateway: tuple[str, int], token: bytes = TOKEN, *, connect_timeout: float = 5.0
    ) -> None:
        self.gateway = gateway
        self.token = token
        self.connect_timeout = connect_timeout
        self.address: tuple[str, int] = ("127.0.0.1", 0)
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        def ready(bound: tuple[str, int]) -> None:
            self.address = bound
            self._ready.set()

        async def main() -> None:
            self._task = asyncio.current_task()  # type: ignore[assignment]
            await serve_forwarder(
                self.gateway,
                self.token,
                ("127.0.0.1", 0),
                connect_timeout=self.connect_timeout,
                on_ready=ready,
            )

        try:
            self._loop.run_until_complete(main())
        except asyncio.CancelledError:
            pass
        except BaseException as exc:
            self.error = exc
            self._ready.set()
        finally:
            self._loop.close()

    def __enter__(self) -> Forwarder:
        self._thread.start()
        assert self._ready.wait(10), "the forwarder did not start"
        assert self.error is None, self.error
        return self

    def stop(self) -> None:
        """Cancel the forwarder (as Ctrl-C does in ``portway connect``) and wait for it to end."""
        if self._thread.is_alive():
            assert self._task is not None
            self._loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(10)
            assert not self._thread.is_alive(), "the forwarder did not stop"

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def connect(self) -> socket.socket:
        sock = socket.create_connection(self.address, timeout=10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock


class Records(logging.Handler):
    """Collects the forwarder's log records (thread-safe), with a wait for a matching one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.records.append(record)
            self._changed.notify_all()

    def wait_for(self, pattern: str, timeout: float = 10.0) -> logging.LogRecord:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for record in self.records:
                    if re.search(pattern, record.getMessage()):
                        return record
                left = deadline - time.monotonic()
                assert left > 0, (
                    f"no log line matching {pattern!r}; got {[r.getMessage() for r in self.records]}"
                )
                self._changed.wait(left)


@pytest.fixture
def records() -> Records:
    handler = Records()
    logger = logging.getLogger("portway.forward")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler  # type: ignore[misc]
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def recv_until_eof(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


# --- bulk, half-close, interactive ------------------------------------------------------------


@pytest.mark.slow
def test_64_mib_through_the_forwarder_and_back_with_equal_sha256() -> None:
    size = 64 << 20
    data = random.Random(64).randbytes(size)
    sent_digest = hashlib.sha256(data).hexdigest()
    received = hashlib.sha256()
    count = 0
    with FakeGateway(echo()) as gw, Forwarder(gw.address) as fwd, fwd.connect() as sock:
        sock.settimeout(30)

        def send() -> None:
            view = memoryview(data)
            for offset in range(0, size, 1 << 20):
                sock.sendall(view[offset : offset + (1 << 20)])
            sock.shutdown(socket.SHUT_WR)

        started = time.monotonic()
        sender = threading.Thread(target=send)
        sender.start()
        while chunk := sock.recv(1 << 20):
            received.update(chunk)
            count += len(chunk)
        sender.join(30)
        elapsed = time.monotonic() - started
        (conn,) = gw.wait_connections(1)
    assert count == size
    assert conn.count == size
    assert conn.received.hexdigest() == sent_digest  # client -> gateway
    assert received.hexdigest() == sent_digest  # gateway -> client
    assert elapsed < 15, f"64 MiB each way took {elapsed:.1f}s"


def test_half_close_from_the_client_passes_through_and_the_answer_still_comes_back() -> None:
    async def reply_after_eof(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        writer.write(b"200")
        data = await reader.read()  # until the client's EOF arrives through the forwarder
        conn.note(data)
        writer.write(b"got " + data)  # our side is still open
        writer.write_eof()

    with FakeGateway(reply_after_eof) as gw, Forwarder(gw.address) as fwd, fwd.connect() as sock:
        sock.sendall(b"the whole request")
        sock.shutdown(socket.SHUT_WR)
        assert recv_until_eof(sock) == b"got the whole request"


def test_half_close_from_the_gateway_side_keeps_the_upload_flowing() -> None:
    async def banner_then_listen(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: Connection
    ) -> None:
        writer.write(b"200" + b"nothing more from me")
        writer.write_eof()  # the backend is done talking, not listening
        while data := await reader.read(65536):
            conn.note(data)

    with FakeGateway(banner_then_listen) as gw, Forwarder(gw.address) as fwd, fwd.connect() as sock:
        assert recv_until_eof(sock) == b"nothing more from me"
        payload = os.urandom(1 << 20)
        sock.sendall(payload)  # after the EOF the other way
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(1) == b""  # the forwarder closes once both directions are done
        (conn,) = gw.wait_connections(1)
    assert conn.count == len(payload)
    assert conn.received.digest() == hashlib.sha256(payload).digest()


def test_an_interactive_session_of_many_small_messages() -> None:
    rng = random.Random(7)
    with FakeGateway(echo(b"SSH-2.0-fake\r\n")) as gw, Forwarder(gw.address) as fwd, fwd.connect() as sock:
        banner = b""
        while len(banner) < 14:
            banner += sock.recv(14 - len(banner))
        assert banner == b"SSH-2.0-fake\r\n"
        started = time.monotonic()
        for i in range(1000):
            message = rng.randbytes(rng.randint(1, 200)) + i.to_bytes(4, "big")
            sock.sendall(message)
            got = b""
            while len(got) < len(message):
                got += sock.recv(len(message) - len(got))
            assert got == message
        elapsed = time.monotonic() - started
    assert elapsed < 10, f"1000 round trips took {elapsed:.1f}s (is Nagle's algorithm on?)"


def test_each_local_connection_gets_its_own_gateway_connection() -> None:
    with FakeGateway(echo()) as gw, Forwarder(gw.address) as fwd:
        socks = [fwd.connect() for _ in range(5)]
        for n, sock in enumerate(socks):
            sock.sendall(b"conn %d" % n)
        for n, sock in enumerate(socks):
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == b"conn %d" % n
            sock.close()
        conns = gw.wait_connections(5)
    assert [c.line for c in conns] == [TOKEN] * 5


# --- refusals and shutdown ----------------------------------------------------------------------


def test_a_401_closes_the_local_connection_and_logs_one_line(records: Records) -> None:
    with FakeGateway(answer(b"401")) as gw, Forwarder(gw.address) as fwd, fwd.connect() as sock:
        assert recv_until_eof(sock) == b""
        record = records.wait_for("401")
    assert record.levelno == logging.WARNING
    assert (
        "401: the gateway refused the token (invalid, expired or for another gateway)" in record.getMessage()
    )
    assert len([r for r in records.records if "401" in r.getMessage()]) == 1


def test_an_unreachable_gateway_closes_the_local_connection_and_says_so(records: Records) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # bound, not listening: refused
        with Forwarder(s.getsockname()) as fwd, fwd.connect() as sock:
            assert recv_until_eof(sock) == b""
            record = records.wait_for("cannot reach gateway")
    assert record.levelno == logging.WARNING


def test_stopping_the_forwarder_closes_live_connections() -> None:
    with FakeGateway(echo()) as gw, Forwarder(gw.address) as fwd, fwd.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        fwd.stop()
        assert sock.recv(1) == b""
        with pytest.raises(OSError):
            fwd.connect()


def test_a_token_with_a_newline_is_refused_before_listening() -> None:
    async def go() -> None:
        await serve_forwarder(("127.0.0.1", 1), b"a\nb", ("127.0.0.1", 0), connect_timeout=1)

    with pytest.raises(ValueError):
        asyncio.run(go())


# --- portway connect, as a user runs it -----------------------------------------------------------


class ConnectProcess:
    """``python -m portway connect ...`` with its stdout lines collected by a thread."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [*PORTWAY_CONNECT, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        assert self.proc.stdout is not None
        stdout = self.proc.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stdout], daemon=True).start()

    def first_line(self, timeout: float = 20.0) -> str:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"portway connect printed nothing; stderr: {err}") from None

    def stop(self, sig: int) -> tuple[int, str]:
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_portway_connect_end_to_end_exits_0_on_a_signal(tmp_path: Path, sig: int) -> None:
    token_file = tmp_path / "db.token"
    token_file.write_bytes(TOKEN + b"\n")
    with FakeGateway(echo()) as gw:
        gateway = f"127.0.0.1:{gw.address[1]}"
        proc = ConnectProcess(
            "--gateway", gateway, "--token-file", str(token_file), "--listen", "127.0.0.1:0"
        )
        line = proc.first_line()
        match = re.fullmatch(rf"forwarding 127\.0\.0\.1:(\d+) -> gateway {re.escape(gateway)}\n", line)
        assert match, line
        payload = os.urandom(256 << 10)
        with socket.create_connection(("127.0.0.1", int(match[1])), timeout=10) as sock:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == payload
        (conn,) = gw.wait_connections(1)
        status, err = proc.stop(sig)
    assert conn.line == TOKEN  # the file's trailing newline is not part of the token
    assert status == 0, err
    assert "Traceback" not in err


def test_portway_connect_reads_the_token_from_the_environment(tmp_path: Path) -> None:
    with FakeGateway(echo()) as gw:
        proc = ConnectProcess(
            "--gateway",
            f"127.0.0.1:{gw.address[1]}",
            "--token-env",
            "PORTWAY_TEST_TOKEN",
            "--listen",
            "127.0.0.1:0",
            env={"PORTWAY_TEST_TOKEN": TOKEN.decode()},
        )
        port = int(proc.first_line().split()[1].rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"hi")
            sock.shutdown(socket.SHUT_WR)
            assert recv_until_eof(sock) == b"hi"
        (conn,) = gw.wait_connections(1)
        status, err = proc.stop(signal.SIGTERM)
    assert conn.line == TOKEN
    assert status == 0, err


def test_portway_connect_logs_a_refusal_and_keeps_serving(tmp_path: Path) -> None:
    token_file = tmp_path / "t"
    token_file.write_bytes(TOKEN + b"\n")
    with FakeGateway(answer(b"403")) as gw:
        proc = ConnectProcess(
            "--gateway",
            f"127.0.0.1:{gw.address[1]}",
            "--token-file",
            str(token_file),
            "--listen",
            "127.0.0.1:0",
        )
        port = int(proc.first_line().split()[1].rsplit(":", 1)[1])
        for _ in range(2):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                assert recv_until_eof(sock) == b""
        gw.wait_connections(2)
        status, err = proc.stop(signal.SIGTERM)
    assert status == 0, err
    assert err.count("403: the token is authentic, but its destination is outside the gateway's policy") == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--gateway", "gw", "--token-env", "T", "--listen", "127.0.0.1:0"], 'expected host:port, got "gw"'),
        (["--gateway", "gw:1", "--token-file", "/nonexistent/t", "--listen", "127.0.0.1:0"], "no such file"),
        (["--gateway", "gw:1", "--token-env", "PORTWAY_UNSET_VAR", "--listen", "127.0.0.1:0"], "is not set"),
        (
            ["--gateway", "gw:1", "--token-env", "T", "--listen", "127.0.0.1:0", "--connect-timeout", "5"],
            "--connect-timeout: expected a duration",
        ),
    ],
)
def test_portway_connect_usage_errors_are_one_clear_line(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PORTWAY_UNSET_VAR"}
    env["T"] = TOKEN.decode()
    r = subprocess.run(
        [*PORTWAY_CONNECT, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=30,
    )
    assert r.returncode in (1, 2)
    assert r.stderr.startswith("error: ") and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_portway_connect_says_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        r = subprocess.run(
            [*PORTWAY_CONNECT, "--gateway", "gw:1", "--token-env", "T", "--listen", f"127.0.0.1:{port}"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env={**os.environ, "T": TOKEN.decode()},
            timeout=30,
        )
    assert r.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: " in r.stderr, r.stderr
