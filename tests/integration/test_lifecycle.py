"""Processes and signals: reload under load, invalid reload, drain, worker restart, fd hygiene."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
from pathlib import Path

import pytest

from tests.integration.backends import Backend, LoopThread, exchange_client, exchange_handler, greeter_backend
from tests.integration.harness import Portway, fd_count, free_port, greeting, tcp_config, wait_until


def test_sighup_under_load_loses_nothing_and_applies_new_config(tmp_path: Path, lt: LoopThread) -> None:
    size = 2 << 20
    ref: list[Backend] = []
    streamer = Backend(lt, exchange_handler(ref, size))
    ref.append(streamer)
    other = greeter_backend(lt, b"new")
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [streamer.port], workers=2)).start()
    try:
        baseline = {pid: fd_count(pid) for pid in pw.worker_pids()}

        async def load_and_reload() -> list[dict[str, object]]:
            tasks = [asyncio.ensure_future(exchange_client("127.0.0.1", port, size)) for _ in range(200)]
            # Reload while the 200 transfers are in flight, pointing new connections elsewhere.
            await asyncio.to_thread(wait_until, lambda: streamer.active >= 50, 20, "transfers in flight")
            pw.path.write_text(tcp_config(port, [other.port], workers=2))
            n = len(pw.log)
            pw.signal(signal.SIGHUP)
            await asyncio.to_thread(pw.wait_for, r"reloaded .*generation 2", 20, n)
            return list(await asyncio.gather(*tasks))

        results = asyncio.run(load_and_reload())
        wait_until(lambda: len(streamer.records) == 200, what="200 complete transfers")
        for r in results:
            rec = streamer.records[r["id"]]  # type: ignore[index]
            assert r["recv_bytes"] == size and rec["recv_bytes"] == size
            assert rec["recv"] == r["sent"] and rec["sent"] == r["recv"]
        assert greeting(port) == b"new"  # new connections use the new config
        for pid, count in baseline.items():
            wait_until(
                lambda pid=pid, count=count: fd_count(pid) <= count, what=f"worker {pid} fds at baseline"
            )
    finally:
        assert pw.stop() == 0


def test_invalid_config_on_sighup_keeps_the_old(tmp_path: Path, lt: LoopThread) -> None:
    old = greeter_backend(lt, b"old")
    port, admin = free_port(), free_port()
    pw = Portway(tmp_path, tcp_config(port, [old.port], admin_port=admin)).start()
    try:
        pw.path.write_text(tcp_config(port, [old.port]).replace("balance", "balanse") + "\n[oops\n")
        n = len(pw.log)
        pw.signal(signal.SIGHUP)
        line = pw.wait_for(r"reload rejected: .*portway.toml", start=n)
        assert "portway.toml" in line
        pw.wait_for(r"still running the previous configuration", start=n)
        assert greeting(port) == b"old"
        assert pw.stats(admin)["supervisor"]["reload_failures_total"] == 1
    finally:
        pw.stop()


def test_sigterm_drains_then_exits_zero(tmp_path: Path, lt: LoopThread) -> None:
    release = asyncio.Event()
    payload = os.urandom(1 << 20)

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(3)
        await release.wait()  # the reply comes only after SIGTERM was sent
        writer.write(payload)
        await writer.drain()

    backend = Backend(lt, slow)
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], top='pid_file = "run/portway.pid"'))
    (tmp_path / "run").mkdir()
    pw.start()
    pid_file = tmp_path / "run" / "portway.pid"
    assert pid_file.read_text().strip() == str(pw.pid)  # relative to the config file's directory
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"go!")
        wait_until(lambda: backend.active == 1, what="backend connection")
        pw.signal(signal.SIGTERM)
        pw.wait_for(r"SIGTERM")
        # New connections are refused once the listeners close...
        wait_until(lambda: _refused(port), what="listener closed")
        # ...while the live one finishes its transfer.
        lt.loop.call_soon_threadsafe(release.set)
        got = b""
        while chunk := s.recv(65536):
            got += chunk
        assert got == payload
    assert pw.wait_exit() == 0
    assert not pid_file.exists()


def test_drain_timeout_ends_connections_with_shutdown(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"idle")
    port = free_port()
    conf = tcp_config(port, [backend.port]).replace('drain_timeout = "10s"', 'drain_timeout = "300ms"')
    pw = Portway(tmp_path, conf).start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.makefile("rb").readline() == b"idle\n"
        pw.signal(signal.SIGTERM)
        assert s.recv(1) == b""  # ended by the proxy after the drain timeout
    assert pw.wait_exit() == 0
    rec = pw.wait_access(lambda a: a)[0]
    assert rec["reason"] == "shutdown"


def test_sigint_exits_at_once(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"idle")
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port])).start()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.makefile("rb").readline() == b"idle\n"
        pw.signal(signal.SIGINT)
        assert s.recv(1) == b""
    assert pw.wait_exit(timeout=5) == 0
    assert pw.wait_access(lambda a: a)[0]["reason"] == "shutdown"


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def test_killed_worker_comes_back(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"hi")
    port, admin = free_port(), free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port], workers=2, admin_port=admin)).start()
    try:
        before = pw.worker_pids()
        assert len(before) == 2
        os.kill(before[0], signal.SIGKILL)
        pw.wait_for(rf"worker \d \(pid {before[0]}\) was killed by SIGKILL")
        pw.wait_for(r"worker \d restarted")
        after = wait_until(lambda: len(pw.worker_pids()) == 2 and pw.worker_pids(), what="two workers")
        assert before[0] not in after and before[1] in after
        for _ in range(10):
            assert greeting(port) == b"hi"
        status, body = pw.admin_get(admin, "/metrics")
        assert status == 200
        assert b"portway_worker_restarts_total 1.0" in body
        assert pw.admin_get(admin, "/healthz")[0] == 200
    finally:
        assert pw.stop() == 0


def test_worker_fds_return_to_baseline(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"hi")
    port = free_port()
    dead = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port, dead], workers=1)).start()
    try:
        worker = pw.worker_pids()[0]
        baseline = fd_count(worker)
        socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(50)]
        for s in socks:
            assert s.makefile("rb").readline() == b"hi\n"
        assert fd_count(worker) >= baseline + 100
        for s in socks:
            s.close()
        pw.wait_access(lambda a: len(a) >= 50)
        wait_until(lambda: fd_count(worker) <= baseline, what="fds back to baseline")
    finally:
        pw.stop()


def test_port_in_use_is_a_clear_error(tmp_path: Path) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        pw = Portway(tmp_path, tcp_config(port, [free_port()])).start(wait=False)
        assert pw.wait_exit() == 1
        assert any(f"127.0.0.1:{port}" in line and "address already in use" in line for line in pw.log)
        assert not any("Traceback" in line for line in pw.log)
    finally:
        holder.close()


def test_out_of_file_descriptors_backs_off_and_recovers(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"hi")
    port = free_port()
    pw = Portway(tmp_path, tcp_config(port, [backend.port]), prefix=["prlimit", "--nofile=64:64", "--"])
    pw.start()
    held: list[socket.socket] = []
    try:
        for _ in range(60):  # far more than 64 descriptors' worth of proxied connections
            held.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        pw.wait_for(r"cannot (accept|open a socket to a server): .*EMFILE")
        worker = pw.worker_pids()[0]
        cpu_before = _cpu_ticks(worker)
        # While out of descriptors a new client gets no answer for a second, and the worker
        # backs off instead of spinning on accept (it uses well under half a core-second).
        with socket.create_connection(("127.0.0.1", port), timeout=10) as waiting:
            waiting.settimeout(1.0)
            with pytest.raises(TimeoutError):
                waiting.recv(1)
            assert _cpu_ticks(worker) - cpu_before < 50
            for s in held:
                s.close()
            held.clear()
            waiting.settimeout(10)
            assert waiting.makefile("rb").readline() == b"hi\n"  # recovered: served from the backlog
        assert greeting(port) == b"hi"
    finally:
        for s in held:
            s.close()
        pw.stop()


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def test_reload_moves_the_access_log_to_a_file(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"hi")
    port = free_port()
    conf = tcp_config(port, [backend.port])
    pw = Portway(tmp_path, conf).start()
    try:
        assert greeting(port) == b"hi"
        pw.wait_access(lambda a: a)  # the first connection is logged on stdout (JSON)
        pw.path.write_text(conf.replace('access = "stdout"', 'access = "logs/access.log"'))
        (tmp_path / "logs").mkdir()
        n = len(pw.log)
        pw.signal(signal.SIGHUP)
        pw.wait_for(r"reloaded .*generation 2", start=n)
        assert greeting(port) == b"hi"
        log_file = tmp_path / "logs" / "access.log"
        line = wait_until(lambda: log_file.exists() and log_file.read_text(), what="access.log written")
        assert '"listener": "front"' in line or '"listener":"front"' in line
        assert len(pw.access) == 1  # nothing more on stdout
    finally:
        pw.stop()


def test_unwritable_access_log_is_a_clear_error(tmp_path: Path) -> None:
    conf = tcp_config(free_port(), [free_port()]).replace('access = "stdout"', 'access = "no/such/dir/a.log"')
    pw = Portway(tmp_path, conf).start(wait=False)
    assert pw.wait_exit() == 1
    assert any("cannot open the access log" in line and "no/such/dir/a.log" in line for line in pw.log)
    assert not any("Traceback" in line for line in pw.log)


def test_reload_moves_a_listener_and_changes_the_worker_count(tmp_path: Path, lt: LoopThread) -> None:
    backend = greeter_backend(lt, b"hi")
    old_port, new_port, admin = free_port(), free_port(), free_port()
    pw = Portway(tmp_path, tcp_config(old_port, [backend.port], workers=1, admin_port=admin)).start()
    try:
        held = socket.create_connection(("127.0.0.1", old_port), timeout=10)
        assert held.makefile("rb").readline() == b"hi\n"
        pw.path.write_text(tcp_config(new_port, [backend.port], workers=2, admin_port=admin))
        n = len(pw.log)
        pw.signal(signal.SIGHUP)
        pw.wait_for(r"reloaded .*generation 2", start=n)
        assert greeting(new_port) == b"hi"  # the new address is served...
        wait_until(lambda: _refused(old_port), what="old address closed")  # ...the old one is gone
        held.sendall(b"still here")  # the connection accepted on the old address lives on
        held.shutdown(socket.SHUT_WR)
        assert held.recv(1) == b""
        held.close()
        rec = pw.wait_access(lambda a: [r for r in a if r["bytes_in"] == 10])[0]
        assert rec["reason"] == "client_closed" and rec["frontend"].endswith(f":{old_port}")
        assert len(wait_until(lambda: len(pw.worker_pids()) == 2 and pw.worker_pids(), what="2 workers")) == 2
        workers = wait_until(lambda: len(w := pw.stats(admin)["workers"]) == 2 and w, what="2 in /stats")
        assert len(workers) == 2
    finally:
        pw.stop()
