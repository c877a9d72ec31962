"""1 GiB through the forward proxy, by a plain-HTTP request and through a CONNECT tunnel: every
byte arrives (sha256 on both sides, counted as it streams, never held) and the worker's
memory stays flat (its RSS sampled every 0.2 s during the transfer).

The origin streams a 1 MiB pseudo-random block 1024 times and hashes what it writes; the client
hashes what it reads into one reused buffer.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.integration.backends import Backend, LoopThread, http_proxy_config, read_response
from tests.integration.harness import Portway, free_port, wait_until

pytestmark = pytest.mark.slow

SIZE = 1 << 30
BLOCK = 1 << 20
RSS_GROWTH_LIMIT = 64 << 20
TIME_LIMIT = 30.0


def rss(pid: int) -> int:
    """Resident set size of ``pid`` in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


class RssSampler:
    """Samples a process's RSS every ``interval`` seconds in a thread until stopped."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.start = rss(pid)
        self.samples = [self.start]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.samples.append(rss(self.pid))

    def stop(self) -> int:
        """Stop; the largest growth over the starting RSS, in bytes."""
        self._stop.set()
        self._thread.join(5)
        self.samples.append(rss(self.pid))
        return max(self.samples) - self.start


def streaming_origin(lt: LoopThread, sent: list[str]) -> Backend:
    """Answers any request with 1 GiB (Content-Length) made of one 1 MiB pseudo-random block
    repeated; appends the sha256 of what it wrote to ``sent`` once it is all written."""
    block = hashlib.shake_256(b"portway large transfer").digest(BLOCK)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % SIZE)
        h = hashlib.sha256()
        for _ in range(SIZE // BLOCK):
            writer.write(block)
            h.update(block)
            await writer.drain()
        sent.append(h.hexdigest())
        await reader.read()  # until the client (the proxy) closes

    return Backend(lt, serve)


@pytest.mark.parametrize("via", ["absolute-form GET", "CONNECT"])
def test_one_gib_streams_through_with_flat_worker_memory(tmp_path: Path, lt: LoopThread, via: str) -> None:
    sent: list[str] = []
    origin = streaming_origin(lt, sent)
    port = free_port()
    pw = Portway(
        tmp_path, http_proxy_config(port, [f"127.0.0.1:{origin.port}"], connect_ports=(origin.port,))
    ).start()
    try:
        (worker,) = pw.worker_pids()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s, s.makefile("rb") as f:
            if via == "CONNECT":
                s.sendall(
                    b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % ((origin.port,) * 2)
                )
                assert read_response(f, "CONNECT").status == 200
                s.sendall(b"GET /big HTTP/1.1\r\nHost: origin\r\n\r\n")
            else:
                s.sendall(
                    b"GET http://127.0.0.1:%d/big HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n"
                    % ((origin.port,) * 2)
                )
            sampler = RssSampler(worker)
            started = time.monotonic()
            r = read_response(f, "HEAD")  # the head only: the body is streamed below
            assert r.status == 200 and r.values("content-length") == [str(SIZE)], r.headers
            h = hashlib.sha256()
            got = 0
            buf = bytearray(BLOCK)
            view = memoryview(buf)
            while got < SIZE:
                n = f.readinto(view[: min(BLOCK, SIZE - got)])
                assert n, f"closed after {got} of {SIZE} bytes"
                h.update(view[:n])
                got += n
            took = time.monotonic() - started
            growth = sampler.stop()
        wait_until(lambda: sent, what="the origin's hash of what it sent")
        assert h.hexdigest() == sent[0], "the bytes received are not the bytes sent"
        assert growth < RSS_GROWTH_LIMIT, f"worker RSS grew by {growth >> 20} MiB during the transfer"
        assert took < TIME_LIMIT, f"1 GiB took {took:.1f}s"
    finally:
        pw.stop()
