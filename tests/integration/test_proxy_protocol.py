"""PROXY protocol through a real Portway: sent to servers, accepted only from trusted clients."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from tests.integration.backends import Backend, LoopThread
from tests.integration.harness import Portway, free_port, roundtrip, tcp_config, wait_until


def _recording_backend(lt: LoopThread, seen: list[bytes]) -> Backend:
    """Records everything a connection sends until EOF."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())

    return Backend(lt, handler)


def test_v1_header_sent_to_server_byte_exact(tmp_path: Path, lt: LoopThread) -> None:
    seen: list[bytes] = []
    backend = _recording_backend(lt, seen)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], backend='send_proxy_protocol = "v1"')).start()
    try:
        cport, _ = roundtrip(port, b"hello")
        wait_until(lambda: seen, what="backend data")
        assert seen[0] == f"PROXY TCP4 127.0.0.1 127.0.0.1 {cport} {port}\r\nhello".encode()
    finally:
        pw.stop()


def test_v2_header_sent_to_server_byte_exact(tmp_path: Path, lt: LoopThread) -> None:
    seen: list[bytes] = []
    backend = _recording_backend(lt, seen)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], backend='send_proxy_protocol = "v2"')).start()
    try:
        cport, _ = roundtrip(port, b"hello")
        wait_until(lambda: seen, what="backend data")
        expected = (
            b"\r\n\r\n\x00\r\nQUIT\n"  # signature
            + b"\x21"  # version 2, command PROXY
            + b"\x11"  # AF_INET, STREAM
            + struct.pack("!H", 12)  # address block length
            + socket.inet_aton("127.0.0.1")
            + socket.inet_aton("127.0.0.1")
            + struct.pack("!HH", cport, port)
        )
        assert seen[0] == expected + b"hello"
    finally:
        pw.stop()


def test_header_from_trusted_client_sets_client_address(tmp_path: Path, lt: LoopThread) -> None:
    seen: list[bytes] = []
    backend = _recording_backend(lt, seen)
    port = free_port()
    conf = tcp_config(
        port,
        [backend.port],
        listener='proxy_protocol = { accept = "required", trusted = ["127.0.0.0/8"] }',
        backend='send_proxy_protocol = "v1"',
    )
    pw = Portway(tmp_path, conf).start()
    try:
        # A load balancer in front says the real client is 203.0.113.7:4242.
        roundtrip(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 443\r\nGET /")
        wait_until(lambda: seen, what="backend data")
        assert seen[0] == b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 443\r\nGET /"
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["client"] == "203.0.113.7:4242"
        assert rec["peer"].startswith("127.0.0.1:")
    finally:
        pw.stop()


def test_optional_accepts_clients_without_header(tmp_path: Path, lt: LoopThread) -> None:
    seen: list[bytes] = []
    backend = _recording_backend(lt, seen)
    port = free_port()
    conf = tcp_config(
        port, [backend.port], listener='proxy_protocol = { accept = "optional", trusted = ["127.0.0.1"] }'
    )
    pw = Portway(tmp_path, conf).start()
    try:
        roundtrip(port, b"GET / HTTP/1.0\r\n\r\n")
        wait_until(lambda: seen, what="backend data")
        assert seen[0] == b"GET / HTTP/1.0\r\n\r\n"  # every byte replayed
    finally:
        pw.stop()


@pytest.mark.parametrize("accept", ["required", "optional"])
def test_header_from_untrusted_client_is_refused(tmp_path: Path, lt: LoopThread, accept: str) -> None:
    seen: list[bytes] = []
    backend = _recording_backend(lt, seen)
    port = free_port()
    conf = tcp_config(
        port, [backend.port], listener=f'proxy_protocol = {{ accept = "{accept}", trusted = ["10.0.0.0/8"] }}'
    )
    pw = Portway(tmp_path, conf).start()
    try:
        _, back = roundtrip(port, b"PROXY TCP4 203.0.113.7 127.0.0.1 4242 443\r\nGET /")
        assert back == b""
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "refused_by_rule"
        assert "trusted" in rec["detail"]
        assert backend.accepted == 0
    finally:
        pw.stop()


def test_required_without_header_is_refused(tmp_path: Path, lt: LoopThread) -> None:
    seen: list[bytes] = []
    backend = _recording_backend(lt, seen)
    port = free_port()
    conf = tcp_config(
        port, [backend.port], listener='proxy_protocol = { accept = "required", trusted = ["127.0.0.1"] }'
    )
    pw = Portway(tmp_path, conf).start()
    try:
        roundtrip(port, b"GET / HTTP/1.0\r\n\r\n")
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "protocol_error"
        assert backend.accepted == 0
        roundtrip(port, b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n")  # malformed: port out of range
        rec = pw.wait_access(lambda a: a[1:])[0]
        assert rec["reason"] == "protocol_error"
        assert "PROXY" in rec["detail"]
    finally:
        pw.stop()


def test_sniff_timeout_applies_to_header(tmp_path: Path, lt: LoopThread) -> None:
    backend = _recording_backend(lt, [])
    port = free_port()
    conf = tcp_config(
        port,
        [backend.port],
        listener='sniff_timeout = "300ms"\nproxy_protocol = { accept = "required", trusted = ["127.0.0.1"] }',
    )
    pw = Portway(tmp_path, conf).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"PROXY TCP4 ")  # and then nothing
            assert s.recv(1) == b""
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "sniff_timeout"
    finally:
        pw.stop()
