"""Socket options set on listeners and dialled sockets, read back from the kernel."""

from __future__ import annotations

import socket

from portway.config.model import Keepalive
from portway.net.sockopt import tune_dialed, tune_listener


def test_listener_options_and_defer_accept_on_and_off() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        tune_listener(sock, Keepalive(idle=30, interval=5, count=4), defer=1)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 30
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) >= 1
        tune_listener(sock, None)  # a reload to a mode where the server may speak first
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        assert not sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)


def test_a_deferred_listener_hands_over_a_connection_with_its_first_bytes() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        tune_listener(sock, None, defer=1)
        sock.setblocking(False)
        with socket.create_connection(sock.getsockname()) as client:
            try:
                sock.accept()[0].close()
                raise AssertionError("accepted before any byte arrived")
            except BlockingIOError:
                pass
            client.sendall(b"\x16hello")
            sock.settimeout(5)
            conn, _ = sock.accept()
            with conn:
                assert conn.recv(10, socket.MSG_DONTWAIT) == b"\x16hello"  # there at accept


def test_dialed_socket_without_keepalive() -> None:
    with socket.socket() as sock:
        tune_dialed(sock, None)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
