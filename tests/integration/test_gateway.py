"""The gateway mode end to end: a real ``portway`` process, tokens made by the ``openssl`` CLI
and by Portway, raw sockets reading the exact reply bytes, real backends on loopback.

Clients connect from several loopback source addresses (127.0.0.x) where a test needs the
per-source limit out of its way, or in its way.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from portway.proto import gateway
from tests.integration.backends import Backend, LoopThread, echo_backend
from tests.integration.harness import Portway, fd_count, free_port, wait_until

SECRET = "correct horse battery staple, 2026"


def _openssl_v1(address: str, *, md5: bool = True) -> bytes:
    """A v1 token as frontd users make them: ``openssl enc ... -a -salt -md md5``."""
    argv = ["openssl", "enc", "-e", "-aes-256-cbc", "-a", "-salt", "-pass", "env:GW_SECRET"]
    if md5:
        argv += ["-md", "md5"]
    out = subprocess.run(
        argv, input=address.encode(), capture_output=True, env={**os.environ, "GW_SECRET": SECRET}, check=True
    )
    return b"".join(out.stdout.split())  # -a wraps at 64 columns; the token is one line


def _ask(port: int, line: bytes, *, source: str = "127.0.0.1", half_close: bool = False) -> bytes:
    """Send ``line`` and read everything until the gateway closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=15, source_address=(source, 0)) as s:
        back = b""
        try:
            s.sendall(line)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:  # closed on accept (a refused source): what was read is the answer
            pass
        try:
            while chunk := s.recv(65536):
                back += chunk
        except ConnectionResetError:
            pass
        return back


def _blackhole() -> tuple[socket.socket, socket.socket, int]:
    """A listening port whose accept queue is full: further SYNs are dropped (connect times out)."""
    sink = socket.socket()
    sink.bind(("127.0.0.1", 0))
    sink.listen(0)
    port = sink.getsockname()[1]
    filler = socket.socket()
    filler.setblocking(False)
    filler.connect_ex(("127.0.0.1", port))
    time.sleep(0.05)  # let the handshake land in the queue (not a wait for a condition we test)
    return sink, filler, port


CONFIG = """
workers = 1
[admin]
listen = "127.0.0.1:{admin}"
[log]
access = "stdout"
format = "json"

[[listener]]
name = "gw"
mode = "gateway"
bind = "127.0.0.1:{port}"
secrets_file = "v1.secrets"
keyring_file = "v2.keyring"
allow = ["127.0.0.1:{echo}", "127.0.0.1:{closed}", "127.0.0.1:{hole}", "localhost", "*.example.invalid"]
handshake_timeout = "1s"
connect_timeout = "400ms"
retries = 1
line_limit = {line_limit}
max_pending = {max_pending}
source_limit = {{ rate = {rate}, burst = {burst}, ban = "30s" }}
"""


@pytest.fixture
def gw(tmp_path: Path, lt: LoopThread) -> Any:
    echo = echo_backend(lt)
    closed = free_port()
    sink, filler, hole = _blackhole()
    (tmp_path / "v1.secrets").write_text(f"# rotated 2026-11\nan old secret that is long enough\n{SECRET}\n")
    keyline = gateway.Keyring.new_line()
    (tmp_path / "v2.keyring").write_text(keyline + "\n")
    keyring = gateway.Keyring.parse(keyline)
    port, admin = free_port(), free_port()
    conf = CONFIG.format(
        port=port,
        admin=admin,
        echo=echo.port,
        closed=closed,
        hole=hole,
        line_limit=4096,
        burst=100000,
        rate=1,
        max_pending=1000,
    )
    pw = Portway(tmp_path, conf).start()
    worker = pw.worker_pids()[0]
    baseline = fd_count(worker)
    yield {
        "pw": pw,
        "port": port,
        "admin": admin,
        "echo": echo,
        "closed": closed,
        "hole": hole,
        "keyring": keyring,
        "tmp": tmp_path,
    }
    wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to the baseline")
    pw.stop()
    sink.close()
    filler.close()


def _v2(gw: Any, address: str, **kwargs: Any) -> bytes:
    kwargs.setdefault("expires", time.time() + 3600)
    return gateway.v2_encrypt(address, gw["keyring"], **kwargs)


def test_openssl_v1_token_early_bytes_first_and_v2(gw: Any) -> None:
    port, echo = gw["port"], gw["echo"]
    token = _openssl_v1(f"127.0.0.1:{echo.port}")
    assert token.startswith(gateway.V1_PREFIX)
    payload = os.urandom(200_000)
    back = _ask(port, token + b"\r\n" + b"EARLY:" + payload, half_close=True)
    assert back[:3] == b"200"  # exactly three bytes, no newline, then the backend's bytes
    assert hashlib.sha256(back[3:]).digest() == hashlib.sha256(b"EARLY:" + payload).digest()
    back = _ask(port, _v2(gw, f"127.0.0.1:{echo.port}") + b"\nv2 works", half_close=True)
    assert back == b"200v2 works"
    recs = gw["pw"].wait_access(lambda a: len(a) >= 2 and a)
    assert [r["reason"] for r in recs] == ["client_closed", "client_closed"]
    _status, body = gw["pw"].admin_get(gw["admin"], "/metrics")
    text = body.decode()
    assert 'portway_gateway_tokens_total{listener="gw",version="v1"} 1.0' in text
    assert 'portway_gateway_tokens_total{listener="gw",version="v2"} 1.0' in text
    assert 'portway_gateway_replies_total{code="200",listener="gw"} 2.0' in text


def test_every_reply_code_byte_exact(gw: Any) -> None:
    port, echo = gw["port"], gw["echo"]
    before = echo.accepted
    assert _ask(port, _openssl_v1(f"127.0.0.1:{echo.port}", md5=False) + b"\n") == b"401"  # sha256 digest
    assert _ask(port, b"U2FsdGVkX1" + b"A" * 54 + b"\n") == b"401"
    assert _ask(port, b"x" * 4097) == b"400"  # no newline within line_limit
    assert _ask(port, b"U2FsdGVkX1half a line", half_close=True) == b"400"  # EOF first
    assert echo.accepted == before  # nothing was dialled for any of them
    assert _ask(port, _openssl_v1(f"127.0.0.1:{gw['closed']}") + b"\n") == b"502"
    t0 = time.monotonic()
    assert _ask(port, _v2(gw, f"127.0.0.1:{gw['hole']}") + b"\n") == b"504"
    assert time.monotonic() - t0 >= 0.75  # 2 attempts of 400 ms: retried once
    assert _ask(port, _v2(gw, "10.9.8.7:22") + b"\n") == b"403"  # authentic, outside allow
    assert _ask(port, _openssl_v1("10.9.8.7:22") + b"\n") == b"401"  # v1: like any bad token
    recs = gw["pw"].wait_access(lambda a: len(a) >= 8 and a)
    reasons = [r["reason"] for r in recs]
    assert reasons == [
        "refused_by_rule",
        "refused_by_rule",
        "protocol_error",
        "client_closed",
        "connect_refused",
        "connect_timeout",
        "refused_by_rule",
        "refused_by_rule",
    ]
    assert recs[5]["retries"] == 2  # both attempts timed out
    assert SECRET not in "\n".join(gw["pw"].log + gw["pw"].raw_out)  # the secret is never logged


def test_no_padding_oracle(gw: Any) -> None:
    """Every corrupted v1 token, and random and truncated lines, get the same 401 and no dial."""
    port, echo = gw["port"], gw["echo"]
    good = _openssl_v1(f"127.0.0.1:{echo.port}")
    raw = base64.b64decode(good)
    before = echo.accepted
    lines = []
    for i in range(16, len(raw)):  # every ciphertext byte (the salt too changes the key)
        bad = bytearray(raw)
        bad[i] ^= 0x01
        lines.append(base64.b64encode(bytes(bad)))
    lines += [good[:n] for n in (10, 20, 43, len(good) - 4)]
    lines += [base64.b64encode(os.urandom(n)) for n in (16, 32, 48, 64)]
    lines += [b"v2." + os.urandom(40).hex().encode(), b"", b"\x00\xff garbage"]
    answers = {_ask(port, line + b"\n") for line in lines}
    assert answers == {b"401"}
    assert echo.accepted == before
    recs = gw["pw"].wait_access(lambda a: len(a) >= len(lines) and a)
    assert {(r["reason"], r["detail"]) for r in recs if r["detail"].startswith("token refused")} <= {
        ("refused_by_rule", "token refused: invalid token"),
        ("refused_by_rule", "token refused: unknown key id"),
    }
    assert {r["detail"] for r in recs[: len(raw) - 16]} == {"token refused: invalid token"}


def test_names_are_checked_on_the_address_dialled(gw: Any) -> None:
    port, echo = gw["port"], gw["echo"]
    before = echo.accepted
    # "localhost" is allowed by name, but it resolves to loopback, which only a network
    # entry may open (and the network entries list other ports).
    assert _ask(port, _v2(gw, "localhost:9") + b"\n") == b"403"
    assert _ask(port, _v2(gw, f"localhost:{echo.port}") + b"\nby name", half_close=True) == b"200by name"
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 45]) + ".example.invalid"
    assert len(longest) == 253
    token = _openssl_v1(f"{longest}:65535")  # the largest v1 address: read and decrypted whole
    assert _ask(port, token + b"\n") == b"502"  # and its name does not resolve
    assert echo.accepted == before + 1
    recs = gw["pw"].wait_access(lambda a: len(a) >= 3 and a)
    assert "loopback" in recs[0]["detail"] and recs[2]["reason"] == "connect_refused"


def test_expired_and_foreign_v2_tokens(gw: Any) -> None:
    port, echo = gw["port"], gw["echo"]
    address = f"127.0.0.1:{echo.port}"
    now = time.time()
    assert _ask(port, _v2(gw, address, expires=now - 1, now=now - 100) + b"\n") == b"401"
    assert _ask(port, _v2(gw, address, not_before=now + 600) + b"\n") == b"401"
    other = gateway.Keyring.parse(gateway.Keyring.new_line())
    assert _ask(port, gateway.v2_encrypt(address, other, expires=now + 60) + b"\n") == b"401"


def test_silent_client_closed_at_the_deadline(gw: Any) -> None:
    with socket.create_connection(("127.0.0.1", gw["port"]), timeout=15) as s:
        t0 = time.monotonic()
        assert s.recv(10) == b""  # no answer: just closed
        assert time.monotonic() - t0 >= 0.9
    rec = gw["pw"].wait_access(lambda a: a)[0]
    assert rec["reason"] == "sniff_timeout"


def test_key_rotation_on_reload(gw: Any) -> None:
    port, echo = gw["port"], gw["echo"]
    address = f"127.0.0.1:{echo.port}"
    old_token = _v2(gw, address)
    new_line = gateway.Keyring.new_line()
    new = gateway.Keyring.parse(new_line)
    assert _ask(port, gateway.v2_encrypt(address, new, expires=time.time() + 60) + b"\n") == b"401"
    keyring = gw["tmp"] / "v2.keyring"
    keyring.write_text(new_line + "\n" + keyring.read_text())  # new key first, old still accepted
    n = len(gw["pw"].log)
    gw["pw"].signal(signal.SIGHUP)
    gw["pw"].wait_for(r"reloaded .*generation 2", start=n)
    assert (
        _ask(port, gateway.v2_encrypt(address, new, expires=time.time() + 60) + b"\nn", half_close=True)
        == b"200n"
    )
    assert _ask(port, old_token + b"\no", half_close=True) == b"200o"


def test_per_source_limit(tmp_path: Path, lt: LoopThread) -> None:
    echo = echo_backend(lt)
    (tmp_path / "v1.secrets").write_text(SECRET + "\nhunter2\n")
    (tmp_path / "v2.keyring").write_text(gateway.Keyring.new_line() + "\n")
    port, admin = free_port(), free_port()
    conf = CONFIG.format(
        port=port,
        admin=admin,
        echo=echo.port,
        closed=1,
        hole=2,
        line_limit=64,
        burst=4,
        rate=0.01,
        max_pending=2,
    )
    pw = Portway(tmp_path, conf).start()
    try:
        warning = pw.wait_for(r"v1 passphrase #2")  # a short secret is warned about, never shown
        assert "WARNING" in warning or "warning" in warning.lower()
        assert "hunter2" not in "\n".join(pw.log)
        assert "passphrase #1" not in "\n".join(pw.log)
        # Two handshakes in progress fill max_pending; a third is closed unanswered.
        held = [
            socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.20", 0)) for _ in range(2)
        ]
        for s in held:
            s.sendall(b"U2Fs")  # half a line: accepted (the kernel defers silent ones), pending
        wait_until(lambda: pw.stats(admin)["listeners"]["gw"]["active"] == 2, what="two pending handshakes")
        assert _ask(port, b"U2Fs", source="127.0.0.21") == b""
        for s in held:
            s.close()
        rec = pw.wait_access(lambda a: [r for r in a if "max_pending" in r["detail"]])[0]
        assert rec["reason"] == "refused_by_rule" and rec["client"].startswith("127.0.0.21:")
        pw.wait_access(lambda a: len(a) >= 3)
        pw.access.clear()
        assert _ask(port, b"y" * 65, source="127.0.0.9") == b"400"  # 65 bytes, no newline: 400
        answers = []
        t0 = time.monotonic()
        for _ in range(3):
            answers.append(_ask(port, b"not a token\n", source="127.0.0.9"))
        slowed = time.monotonic() - t0
        assert answers == [b"401", b"401", b"401"]
        assert slowed >= 1.5  # below half a bucket the answers were held back
        assert _ask(port, b"not a token\n", source="127.0.0.9") == b""  # refused: closed unanswered
        good = _openssl_v1(f"127.0.0.1:{echo.port}")
        assert _ask(port, good + b"\nok", source="127.0.0.9", half_close=True) == b""  # still banned
        assert _ask(port, good + b"\nok", source="127.0.0.10", half_close=True) == b"200ok"  # others pass
        recs = pw.wait_access(lambda a: len(a) >= 7 and a)
        assert [r["reason"] for r in recs[:4]] == ["protocol_error"] + ["refused_by_rule"] * 3
        for rec in recs[4:6]:
            assert "refused for" in rec["detail"] and rec["client"].startswith("127.0.0.9:")
        assert recs[6]["client"].startswith("127.0.0.10:") and recs[6]["reason"] == "client_closed"
    finally:
        pw.stop()


def test_client_library_and_local_forwarder(gw: Any, lt: LoopThread) -> None:
    """The library's errors carry the status; ``portway connect`` carries a 64 MiB transfer both
    ways and an interactive exchange through the real gateway."""
    from portway import client

    port = gw["port"]
    with pytest.raises(client.GatewayError) as info:
        client.connect("127.0.0.1", port, b"nonsense")
    assert info.value.status == 401

    big = 64 << 20
    records: dict[str, str] = {}

    async def sink_and_source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.readexactly(4)
        if first == b"PING":  # interactive: answer each line at once
            writer.write(b"PONG")
            await writer.drain()
            while line := await reader.readline():
                writer.write(line.upper())
                await writer.drain()
            return
        h = hashlib.sha256(first)
        while data := await reader.read(1 << 16):
            h.update(data)
        records["up"] = h.hexdigest()
        down = hashlib.sha256()
        for _ in range(big // (1 << 20)):
            chunk = os.urandom(1 << 20)
            down.update(chunk)
            writer.write(chunk)
            await writer.drain()
        records["down"] = down.hexdigest()

    backend = Backend(lt, sink_and_source)
    # The fixture's allow list names specific ports; this backend's is new: a v2 token for
    # 127.0.0.1 needs a network entry. Reload with one.
    conf = gw["pw"].path.read_text().replace('"localhost",', f'"localhost", "127.0.0.1:{backend.port}",')
    gw["pw"].path.write_text(conf)
    n = len(gw["pw"].log)
    gw["pw"].signal(signal.SIGHUP)
    gw["pw"].wait_for(r"reloaded .*generation 2", start=n)
    token_file = gw["tmp"] / "token"
    token_file.write_bytes(_v2(gw, f"127.0.0.1:{backend.port}") + b"\n")
    token_file.chmod(0o600)
    local = free_port()
    fwd = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "portway",
            "connect",
            "--gateway",
            f"127.0.0.1:{port}",
            "--token-file",
            str(token_file),
            "--listen",
            f"127.0.0.1:{local}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        assert fwd.stdout is not None
        line = fwd.stdout.readline().decode()
        assert "forwarding" in line, line
        with socket.create_connection(("127.0.0.1", local), timeout=20) as s:
            s.sendall(b"PING")
            assert s.recv(4) == b"PONG"
            f = s.makefile("rwb")
            for i in range(200):  # keystrokes: each answered before the next is sent
                f.write(b"key %d\n" % i)
                f.flush()
                assert f.readline() == b"KEY %d\n" % i
        with socket.create_connection(("127.0.0.1", local), timeout=60) as s:
            up = hashlib.sha256()
            for _ in range(big // (1 << 20)):
                chunk = os.urandom(1 << 20)
                up.update(chunk)
                s.sendall(chunk)
            s.shutdown(socket.SHUT_WR)
            down = hashlib.sha256()
            received = 0
            while chunk := s.recv(1 << 20):
                down.update(chunk)
                received += len(chunk)
        assert received == big
        wait_until(lambda: "down" in records, what="the backend finished sending")
        assert records["up"] == up.hexdigest() and records["down"] == down.hexdigest()
    finally:
        fwd.send_signal(signal.SIGTERM)
        assert fwd.wait(20) == 0
