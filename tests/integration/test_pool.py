"""Backend pools through a real Portway: retries, no server, health checks, balancing, maxconn."""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.backends import Backend, LoopThread, greeter_backend
from tests.integration.harness import Portway, free_port, tcp_config, wait_until


def _greeting(port: int, source: str | None = None) -> bytes:
    with socket.create_connection(
        ("127.0.0.1", port), timeout=10, source_address=(source, 0) if source else None
    ) as s:
        f = s.makefile("rb")
        name = f.readline().strip()
        s.sendall(b"ping")
        assert f.read(4) == b"ping"
        return name


def test_dead_server_is_skipped_by_retry(tmp_path: Path, lt: LoopThread) -> None:
    alive = greeter_backend(lt, b"alive", echo=True)
    dead = free_port()  # nothing listens here
    port = free_port()
    conf = tcp_config(port, [dead, alive.port], backend='balance = "roundrobin"\nretries = 2')
    pw = Portway(tmp_path, conf).start()
    try:
        for _ in range(6):  # roundrobin would send half of these to the dead server
            assert _greeting(port) == b"alive"
        records = pw.wait_access(lambda a: len(a) >= 6 and a)
        assert {r["server"] for r in records} == {"s1"}
        assert any(r["retries"] >= 1 for r in records)
        assert all(r["reason"] == "client_closed" for r in records)
    finally:
        pw.stop()


def test_all_servers_down_closes_at_once_with_no_server(tmp_path: Path) -> None:
    dead1, dead2, port = free_port(), free_port(), free_port()
    conf = tcp_config(
        port,
        [dead1, dead2],
        backend='health_check = { interval = "100ms", timeout = "100ms", rise = 1, fall = 1 }',
    )
    pw = Portway(tmp_path, conf).start()
    try:
        pw.wait_for(r"pool/s0 .* is DOWN")
        pw.wait_for(r"pool/s1 .* is DOWN")
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            assert s.recv(1) == b""  # closed promptly, no data
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "no_server"
        assert rec["total_s"] < 1.0
    finally:
        pw.stop()


def test_health_checks_follow_rise_and_fall(tmp_path: Path, lt: LoopThread) -> None:
    a = greeter_backend(lt, b"a", echo=True)
    b_port = free_port()
    port, admin = free_port(), free_port()
    conf = tcp_config(
        port,
        [a.port, b_port],
        admin_port=admin,
        backend='health_check = { interval = "100ms", timeout = "200ms", rise = 3, fall = 2 }',
    )
    pw = Portway(tmp_path, conf).start()
    try:
        down_line = pw.wait_for(r"pool/s1 .* is DOWN")
        assert "2 checks failed" in down_line
        servers = pw.stats(admin)["backends"]["pool"]["servers"]
        assert servers["s1"]["up"] is False and servers["s0"]["up"] is True
        n = len(pw.log)
        b = Backend(lt, lambda r, w: r.read(), port=b_port)  # the server comes up
        up_line = pw.wait_for(r"pool/s1 .* is UP", start=n)
        assert "3 checks passed" in up_line
        wait_until(lambda: pw.stats(admin)["backends"]["pool"]["servers"]["s1"]["up"], what="s1 up in /stats")
        b.close()
    finally:
        pw.stop()


def test_leastconn_sends_new_connections_to_the_least_loaded(tmp_path: Path, lt: LoopThread) -> None:
    a = greeter_backend(lt, b"a")
    b = greeter_backend(lt, b"b")
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [a.port, b.port], backend='balance = "leastconn"')).start()
    held: list[socket.socket] = []
    try:
        names = []
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            names.append(s.makefile("rb").readline().strip())
        assert Counter(names) == {b"a": 5, b"b": 5}
        # Free three connections held on "a": the next three go to "a".
        closed = 0
        for s, name in zip(held, names, strict=True):
            if name == b"a" and closed < 3:
                s.close()
                closed += 1
        wait_until(lambda: a.active == 2, what="a down to 2 active")
        pw.wait_access(lambda x: len(x) >= 3)
        more = []
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            held.append(s)
            more.append(s.makefile("rb").readline().strip())
        assert more == [b"a", b"a", b"a"]
    finally:
        for s in held:
            s.close()
        pw.stop()


def test_source_hashing_is_sticky_and_spreads(tmp_path: Path, lt: LoopThread) -> None:
    servers = [greeter_backend(lt, name, echo=True) for name in (b"a", b"b", b"c")]
    port = free_port()
    conf = tcp_config(port, [s.port for s in servers], backend='balance = "source"', workers=2)
    pw = Portway(tmp_path, conf).start()
    try:
        first = {f"127.0.0.{i}": _greeting(port, f"127.0.0.{i}") for i in range(2, 62)}
        # Every client address lands on the same server again, whichever worker accepts it.
        for ip, name in first.items():
            assert _greeting(port, ip) == name
            assert _greeting(port, ip) == name
        counts = Counter(first.values())
        assert set(counts) == {b"a", b"b", b"c"}
        assert min(counts.values()) >= 8  # 60 clients over 3 servers: none starved
    finally:
        pw.stop()


def test_max_connections_holds(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"x")
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], listener="max_connections = 5")).start()
    held: list[socket.socket] = []
    try:
        for _ in range(5):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            assert s.makefile("rb").readline() == b"x\n"
            held.append(s)
        # The sixth and seventh wait in the kernel's backlog: connected, but not proxied.
        extra = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        held.extend(extra)
        extra[0].settimeout(0.5)
        with pytest.raises(TimeoutError):
            extra[0].recv(1)
        assert backend.accepted == 5 and backend.active == 5
        held[0].close()  # a slot frees: exactly one waiting client gets in
        extra[0].settimeout(10)
        assert extra[0].makefile("rb").readline() == b"x\n"
        wait_until(lambda: backend.accepted == 6, what="sixth connection proxied")
        assert backend.active == 5
        extra[1].settimeout(0.3)
        with pytest.raises(TimeoutError):
            extra[1].recv(1)
        # Nothing was refused: the access log has no error for the waiting clients.
        assert all(r["reason"] == "client_closed" for r in pw.access)
    finally:
        for s in held:
            s.close()
        pw.stop()


def _blackhole() -> tuple[socket.socket, list[socket.socket]]:
    """A listening socket whose accept queue is full: new SYNs are dropped, connects hang."""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(0)
    fillers = []
    for _ in range(8):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(lsock.getsockname())
        fillers.append(s)
    probe = socket.socket()
    probe.settimeout(0.5)
    try:
        probe.connect(lsock.getsockname())
        raise AssertionError("the accept queue did not fill up")
    except TimeoutError:
        pass
    finally:
        probe.close()
    return lsock, fillers


def test_connect_timeout_moves_to_the_next_server(tmp_path: Path, lt: LoopThread) -> None:
    lsock, fillers = _blackhole()
    alive = greeter_backend(lt, b"alive", echo=True)
    port = free_port()
    hole = lsock.getsockname()[1]
    conf = tcp_config(port, [hole, alive.port], backend='connect_timeout = "300ms"\nretries = 1')
    pw = Portway(tmp_path, conf).start()
    try:
        assert _greeting(port) == b"alive"  # first pick is the black hole: 300 ms later, the next server
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["server"] == "s1" and rec["retries"] == 1
        assert rec["connect_s"] >= 0.3
    finally:
        pw.stop()
        lsock.close()
        for s in fillers:
            s.close()


def test_connect_timeout_when_no_server_answers(tmp_path: Path) -> None:
    lsock, fillers = _blackhole()
    port = free_port()
    conf = tcp_config(port, [lsock.getsockname()[1]], backend='connect_timeout = "200ms"\nretries = 0')
    pw = Portway(tmp_path, conf).start()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            assert s.recv(1) == b""
        rec = pw.wait_access(lambda a: a)[0]
        assert rec["reason"] == "connect_timeout"
        assert 0.2 <= rec["total_s"] < 2
        assert "no answer within 0.2s" in rec["detail"]
    finally:
        pw.stop()
        lsock.close()
        for s in fillers:
            s.close()
