"""End-to-end byte integrity, half-close, idle timeout and keepalive through the tcp mode."""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.integration.backends import Backend, LoopThread, echo_backend, exchange_client, exchange_handler
from tests.integration.harness import Portway, fd_count, free_port, roundtrip, tcp_config, wait_until

MiB = 1 << 20


def _exchange_backend(lt: LoopThread, size: int) -> Backend:
    ref: list[Backend] = []
    backend = Backend(lt, exchange_handler(ref, size))
    ref.append(backend)
    return backend


def _check_exchanges(backend: Backend, results: list[dict[str, object]], size: int) -> None:
    for r in results:
        rec = backend.records[r["id"]]  # type: ignore[index]
        assert r["recv_bytes"] == size, "client received a truncated stream"
        assert rec["recv_bytes"] == size, "backend received a truncated stream"
        assert rec["recv"] == r["sent"], "client→server bytes differ"
        assert rec["sent"] == r["recv"], "server→client bytes differ"


@pytest.mark.parametrize("relay", ["splice", "copy"])
def test_64mib_both_ways_at_once(tmp_path: Path, lt: LoopThread, relay: str) -> None:
    size = 64 * MiB
    backend = _exchange_backend(lt, size)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], listener=f'relay = "{relay}"')).start()
    try:
        worker = pw.worker_pids()[0]
        baseline = fd_count(worker)
        result = asyncio.run(exchange_client("127.0.0.1", port, size))
        wait_until(lambda: result["id"] in backend.records, what="backend record")
        _check_exchanges(backend, [result], size)
        rec = pw.wait_access(lambda a: [x for x in a if x.get("bytes_in") == size])[0]
        assert rec["bytes_out"] == size
        assert rec["reason"] in ("client_closed", "server_closed")
        wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to baseline")
    finally:
        assert pw.stop() == 0


@pytest.mark.parametrize("relay", ["splice", "copy"])
def test_200_concurrent_connections(tmp_path: Path, lt: LoopThread, relay: str) -> None:
    size = 256 * 1024
    backend = _exchange_backend(lt, size)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], listener=f'relay = "{relay}"')).start()
    try:
        worker = pw.worker_pids()[0]
        baseline = fd_count(worker)

        async def many() -> list[dict[str, object]]:
            return list(await asyncio.gather(*(exchange_client("127.0.0.1", port, size) for _ in range(200))))

        results = asyncio.run(many())
        wait_until(lambda: len(backend.records) == 200, what="200 backend records")
        _check_exchanges(backend, results, size)
        pw.wait_access(lambda a: len(a) >= 200)
        wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to baseline")
    finally:
        assert pw.stop() == 0


async def _half_close_client_first(port: int) -> tuple[int, str, str]:
    """Client sends then shuts its write side; backend reads to EOF and then sends 1 MiB."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"request-" * 1000)
    writer.write_eof()
    data = await reader.read()  # to EOF
    writer.close()
    return len(data), hashlib.sha256(data).hexdigest(), ""


def test_half_close_client_first(tmp_path: Path, lt: LoopThread) -> None:
    reply = os.urandom(MiB)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        got = await reader.read()  # reads to EOF: the client's half-close arrived
        assert got == b"request-" * 1000
        writer.write(reply)
        await writer.drain()

    backend = Backend(lt, handler)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port])).start()
    try:
        n, digest, _ = asyncio.run(_half_close_client_first(port))
        assert n == MiB
        assert digest == hashlib.sha256(reply).hexdigest()
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "client_closed"
        assert rec["bytes_in"] == 8000 and rec["bytes_out"] == MiB
    finally:
        pw.stop()


def test_half_close_server_first(tmp_path: Path, lt: LoopThread) -> None:
    received: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner-" * 1000)
        writer.write_eof()  # server shuts its write side first
        received.append(await reader.read())  # ...and still reads the client's 1 MiB

    backend = Backend(lt, handler)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port])).start()
    payload = os.urandom(MiB)
    try:

        async def client() -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            banner = await reader.read()  # EOF from the server arrives while we may still send
            writer.write(payload)
            await writer.drain()
            writer.write_eof()
            await reader.read()
            writer.close()
            return banner

        assert asyncio.run(client()) == b"banner-" * 1000
        wait_until(lambda: received, what="backend read to EOF")
        assert hashlib.sha256(received[0]).digest() == hashlib.sha256(payload).digest()
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "server_closed"
    finally:
        pw.stop()


def test_idle_timeout_ends_silent_connection(tmp_path: Path, lt: LoopThread) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    backend = Backend(lt, handler)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], listener='idle_timeout = "300ms"')).start()
    try:
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.settimeout(10)
            assert s.recv(1) == b""  # closed by the proxy, not by us
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] in ("client_idle_timeout", "server_idle_timeout")
        assert 0.25 <= rec["total_s"] < 5
        # A connection that keeps talking is not cut by the idle timer.
        with socket.create_connection(("127.0.0.1", port)) as s:
            for _ in range(8):
                s.sendall(b"x")
                wait_until(lambda: backend.active >= 1, what="backend connection")
                s.settimeout(0.1)
                with pytest.raises(TimeoutError):
                    s.recv(1)  # nothing comes back, and the connection stays open 0.1s per turn
        rec2 = pw.wait_access(lambda a: a[1:])[0]
        assert rec2["reason"] == "client_closed"
        assert rec2["bytes_in"] == 8
    finally:
        pw.stop()


@pytest.mark.skipif(shutil.which("ss") is None, reason="needs ss from iproute2")
def test_keepalive_is_set_on_both_sides(tmp_path: Path, lt: LoopThread) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    backend = Backend(lt, handler)
    port = free_port()
    conf = tcp_config(
        port, [backend.port], listener='keepalive = { idle = "7s", interval = "3s", count = 4 }'
    )
    pw = Portway(tmp_path, conf).start()
    try:
        with socket.create_connection(("127.0.0.1", port)):
            wait_until(lambda: backend.active == 1, what="backend connection")

            def timers() -> list[str]:
                out = subprocess.run(
                    ["ss", "-tnoH", "state", "established"], capture_output=True, text=True, check=True
                ).stdout
                return [line for line in out.splitlines() if "keepalive" in line]

            lines = wait_until(lambda: len(timers()) >= 2 and timers(), what="keepalive timers")
            # One on the proxy's accepted socket (local port = listener) and one on its server socket.
            assert any(f"127.0.0.1:{port} " in line for line in lines)
            assert any(
                f"127.0.0.1:{backend.port}" in line.split()[-2]
                for line in lines
                if f"127.0.0.1:{port} " not in line
            )
    finally:
        pw.stop()


def test_auto_relay_copies_small_exchanges_and_splices_bulk(tmp_path: Path, lt: LoopThread) -> None:
    size = 8 * MiB
    backend = _exchange_backend(lt, size)
    port, admin = free_port(), free_port()
    pw = Portway(
        tmp_path, tcp_config(port, [backend.port], admin_port=admin, listener='relay = "auto"')
    ).start()
    try:

        def pipes_created() -> int:
            return int(pw.stats(admin)["workers"][0]["pipes_created"])

        small = asyncio.run(exchange_client("127.0.0.1", port, 100))  # the backend answers 8 MiB...
        assert small["recv_bytes"] == size
        assert pipes_created() >= 1  # ...which moved through pipes
        wait_until(lambda: small["id"] in backend.records, what="backend record")
        _check_exchanges_sizes(backend, small, sent=100, received=size)
    finally:
        pw.stop()


def test_auto_relay_small_exchange_needs_no_pipe(tmp_path: Path, lt: LoopThread) -> None:
    backend = echo_backend(lt)
    port, admin = free_port(), free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], admin_port=admin)).start()
    try:
        for _ in range(20):
            assert roundtrip(port, b"ping")[1] == b"ping"
        pw.wait_access(lambda a: len(a) >= 20)
        assert pw.stats(admin)["workers"][0]["pipes_created"] == 0
    finally:
        pw.stop()


def _check_exchanges_sizes(backend: Backend, r: dict[str, object], *, sent: int, received: int) -> None:
    rec = backend.records[r["id"]]  # type: ignore[index]
    assert rec["recv_bytes"] == sent and rec["recv"] == r["sent"]
    assert r["recv_bytes"] == received and rec["sent"] == r["recv"]
