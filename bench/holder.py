"""Idle-connection backend: accept TCP connections on 127.0.0.1 and hold them open.

Run as its own process (pinned to the load core by the harness)::

    python bench/holder.py PORT

It prints ``ready`` once listening. Each line ``count`` on stdin is answered with the number of
connections currently open; EOF on stdin makes it exit. Data received is discarded; a connection
is forgotten when the peer closes it. A selector loop holds tens of thousands of sockets.
"""

from __future__ import annotations

import resource
import selectors
import socket
import sys


def serve(port: int) -> None:
    """Accept and hold connections on ``127.0.0.1:port`` until stdin closes."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(4096)
    listener.setblocking(False)

    sel = selectors.DefaultSelector()
    sel.register(listener, selectors.EVENT_READ, "listener")
    sel.register(sys.stdin, selectors.EVENT_READ, "control")
    open_conns = 0
    print("ready", flush=True)

    while True:
        for key, _ in sel.select():
            if key.data == "listener":
                while True:
                    try:
                        conn, _addr = listener.accept()
                    except BlockingIOError:
                        break
                    except OSError:  # e.g. EMFILE: leave it in the backlog
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, "conn")
                    open_conns += 1
            elif key.data == "control":
                line = sys.stdin.readline()
                if not line:
                    return
                print(open_conns, flush=True)
            else:
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                try:
                    data = conn.recv(65536)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    sel.unregister(conn)
                    conn.close()
                    open_conns -= 1


if __name__ == "__main__":
    serve(int(sys.argv[1]))
