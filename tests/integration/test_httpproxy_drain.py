"""SIGTERM with HTTP keep-alive clients: idle ones are closed at once, a request in progress
is answered (with ``Connection: close``) before its connection closes, and the drain does not
wait for clients that have nothing more to ask."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from tests.integration.backends import HttpOrigin, LoopThread, http_proxy_config, origin_body, read_response
from tests.integration.harness import Portway, free_port


def test_sigterm_closes_idle_keepalive_clients_without_waiting(tmp_path: Path, lt: LoopThread) -> None:
    origin = HttpOrigin(lt)
    port = free_port()
    conf = http_proxy_config(port, [f"127.0.0.1:{origin.port}"])
    assert 'drain_timeout = "5s"' in conf
    conf = conf.replace('drain_timeout = "5s"', 'drain_timeout = "20s"')
    pw = Portway(tmp_path, conf).start()
    try:
        url = f"http://127.0.0.1:{origin.port}/cl/drain?size=1000"
        idle = socket.create_connection(("127.0.0.1", port), timeout=10)
        idle.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        f = idle.makefile("rb")
        first = read_response(f)
        assert first.status == 200 and first.body == origin_body("/cl/drain?size=1000")
        started = time.monotonic()
        pw.signal(signal.SIGTERM)
        assert f.read() == b""  # the idle keep-alive connection is closed, nothing more sent
        assert pw.wait_exit(15) == 0
        # Far below drain_timeout: nothing waited for the idle client.
        assert time.monotonic() - started < 10
        recs = pw.wait_access(lambda a: a)
        assert recs[-1]["reason"] == "shutdown" and "idle keep-alive" in recs[-1]["detail"]
        idle.close()
    finally:
        pw.stop()
        origin.backend.close()


def test_a_reload_applies_to_the_next_request_of_an_open_connection(tmp_path: Path, lt: LoopThread) -> None:
    origin = HttpOrigin(lt)
    port = free_port()
    pw = Portway(tmp_path, http_proxy_config(port, [f"127.0.0.1:{origin.port}"])).start()
    try:
        url = f"http://127.0.0.1:{origin.port}/cl/reload?size=100"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as c:
            f = c.makefile("rb")
            c.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert read_response(f).status == 200
            # The rule that allowed the origin is gone from the new configuration.
            pw.path.write_text(http_proxy_config(port, ["192.0.2.1:80"]))
            n = len(pw.log)
            pw.signal(signal.SIGHUP)
            pw.wait_for(r"reloaded .*generation 2", start=n)
            c.sendall(f"GET {url} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            refused = read_response(f)
            assert refused.status == 403 and b"destination refused" in refused.body
        assert origin.accepted == 1  # the second request never reached it
    finally:
        pw.stop()
        origin.backend.close()
