"""A blocking TLS peer over memory BIOs for tests: it can half-close (close_notify, then FIN)
and keep reading, which :class:`ssl.SSLSocket` cannot (its ``unwrap`` waits for the peer's
close_notify and fails on data that comes first)."""

from __future__ import annotations

import socket
import ssl


class BioPeer:
    """A blocking TLS peer over memory BIOs, so it can half-close (close_notify + FIN) and
    keep reading, which :class:`ssl.SSLSocket` cannot."""

    def __init__(self, sock: socket.socket, ctx: ssl.SSLContext, *, server_side: bool, name: str | None):
        sock.setblocking(True)
        sock.settimeout(20)
        self.sock = sock
        self.inbio, self.outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = ctx.wrap_bio(self.inbio, self.outbio, server_side=server_side, server_hostname=name)

    def _send_out(self) -> None:
        if self.outbio.pending:
            self.sock.sendall(self.outbio.read())

    def _feed(self) -> bool:
        raw = self.sock.recv(65536)
        if not raw:
            self.inbio.write_eof()
            return False
        self.inbio.write(raw)
        return True

    def handshake(self) -> None:
        while True:
            try:
                self.tls.do_handshake()
                self._send_out()
                return
            except ssl.SSLWantReadError:
                self._send_out()
                self._feed()

    def send(self, data: bytes) -> None:
        view = memoryview(data)
        for i in range(0, len(view), 65536):
            self.tls.write(view[i : i + 65536])
            self._send_out()

    def half_close(self) -> None:
        try:
            self.tls.unwrap()
        except ssl.SSLWantReadError:
            pass
        self._send_out()
        self.sock.shutdown(socket.SHUT_WR)

    def recv_all(self) -> bytes:
        chunks = []
        while True:
            try:
                data = self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._send_out()
                self._feed()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                break
            if not data:
                break
            chunks.append(data)
        return b"".join(chunks)

    def recv_exactly(self, n: int) -> bytes:
        got = bytearray()
        while len(got) < n:
            try:
                got += self.tls.read(n - len(got))
            except ssl.SSLWantReadError:
                self._send_out()
                if not self._feed():
                    break
        return bytes(got)
