"""Listeners: IPv4 and IPv6 binds on one port, and every worker accepting on SO_REUSEPORT."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.integration.backends import Backend, LoopThread, echo_backend
from tests.integration.harness import Portway, free_port, tcp_config, wait_until


def _has_ipv6() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6(), reason="no IPv6 loopback")
def test_ipv4_and_ipv6_on_the_same_port(tmp_path: Path, lt: LoopThread) -> None:
    backend = echo_backend(lt)
    port = free_port()
    conf = tcp_config(port, [backend.port]).replace(
        f'bind = "127.0.0.1:{port}"', f'bind = ["127.0.0.1:{port}", "[::1]:{port}"]'
    )
    pw = Portway(tmp_path, conf).start()
    try:
        for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
            with socket.socket(family) as s:
                s.settimeout(10)
                s.connect((host, port))
                s.sendall(host.encode())
                s.shutdown(socket.SHUT_WR)
                assert s.recv(100) == host.encode()
        records = pw.wait_access(lambda a: len(a) >= 2 and a)
        assert {r["client"].rsplit(":", 1)[0] for r in records} == {"127.0.0.1", "[::1]"}
    finally:
        pw.stop()


def test_every_worker_accepts(tmp_path: Path, lt: LoopThread) -> None:
    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    backend = Backend(lt, hold)
    port, admin = free_port(), free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], workers=2, admin_port=admin)).start()
    held = []
    try:
        for _ in range(64):  # distinct source ports spread over both SO_REUSEPORT sockets
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        workers = wait_until(
            lambda: (w := pw.stats(admin)["workers"]) and sum(x["connections_total"] for x in w) == 64 and w,
            what="64 connections accepted",
        )
        assert len(workers) == 2
        assert all(w["connections_total"] > 0 for w in workers), workers
    finally:
        for s in held:
            s.close()
        pw.stop()
