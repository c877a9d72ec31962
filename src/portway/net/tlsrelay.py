"""Relay where Portway itself speaks TLS on one side or both: it terminates the client's TLS,
originates TLS to the server, or both.

TLS runs in memory (:class:`ssl.SSLObject` over two :class:`ssl.MemoryBIO`), driven by the
worker's :class:`~portway.net.poller.Poller` on the raw non-blocking sockets, like the plain
:mod:`~portway.net.relay`: no Task, no Future, and bytes already read (the sniffed ClientHello)
simply go into the incoming BIO first, so nothing the client sent is lost.

- :class:`Endpoint` is one socket with an optional TLS layer: ``read()`` gives plaintext,
  ``write()`` takes plaintext and queues the bytes for the wire, ``flush()`` sends them.
- :class:`Handshake` is a stage that completes the TLS handshake on an endpoint under a
  deadline (after routing on the client side; after connecting on the server side).
- :class:`TlsRelay` moves plaintext both ways between two endpoints once their handshakes are
  done, with the plain relay's rules: prefix first, backpressure (stop reading a side while the
  other holds :data:`HIGH_WATER` unsent bytes), half-close, errors end both directions, idle
  timeout blaming the side silent longer.

Half-close over TLS sends ``close_notify`` and then ``shutdown(SHUT_WR)``. OpenSSL's shutdown
reads the peer's records too, and fails on application data it finds unread, so the
``close_notify`` is queued only once that side's incoming bytes are all decrypted
(:meth:`Endpoint.close_write` defers it until then).
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Callable

from portway.net.poller import Poller
from portway.net.relay import ended, idle_check
from portway.net.timers import TimerWheel
from portway.session import Session
from portway.termination import Reason

log = logging.getLogger("portway.tls")

_now = time.monotonic

#: Bytes read from a socket, or plaintext read from TLS, at a time.
CHUNK = 65536
#: A side stops reading while the other side holds this many bytes not yet sent.
HIGH_WATER = 256 * 1024

DoneCallback = Callable[[Reason, str], None]


class Endpoint:
    """One socket of a relay, with the TLS layer Portway runs on it (``tls``), if any."""

    __slots__ = (
        "closing",
        "eof",
        "fd",
        "inbio",
        "more",
        "notified",
        "out",
        "outbio",
        "shut",
        "sock",
        "tls",
    )

    def __init__(
        self,
        sock: socket.socket,
        tls: ssl.SSLObject | None = None,
        inbio: ssl.MemoryBIO | None = None,
        outbio: ssl.MemoryBIO | None = None,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.tls = tls
        self.inbio = inbio
        self.outbio = outbio
        #: Bytes for the wire not yet sent (TLS records, or plaintext on a plain socket).
        self.out = bytearray()
        #: The peer's EOF (or close_notify) has been read.
        self.eof = False
        #: close_write() was asked for; ``notified`` once close_notify is queued (always true
        #: without TLS); ``shut`` once ``shutdown(SHUT_WR)`` is done.
        self.closing = False
        self.notified = tls is None
        self.shut = False
        #: After a read: whether another might return data at once (a full read, or bytes
        #: still buffered for TLS). When false the socket is most likely empty: reading again
        #: would cost a system call answering EAGAIN, and the poller calls back if more came.
        self.more = True

    @classmethod
    def wrap(
        cls, sock: socket.socket, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None
    ) -> Endpoint:
        """An endpoint that will speak TLS on ``sock`` with ``context``."""
        inbio, outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(inbio, outbio, server_side=server_side, server_hostname=server_hostname)
        return cls(sock, tls, inbio, outbio)

    def feed(self, data: bytes) -> None:
        """Bytes of the TLS stream read from the socket earlier (the sniffed ClientHello)."""
        assert self.inbio is not None
        self.inbio.write(data)

    def read(self) -> bytes:
        """Plaintext from the peer; ``b""`` at its EOF.

        Raises :class:`BlockingIOError` when nothing can be read now, :class:`OSError` or
        :class:`ssl.SSLError` when the connection failed.
        """
        tls = self.tls
        if tls is None:
            data = self.sock.recv(CHUNK)
            self.more = len(data) == CHUNK
            if not data:
                self.eof = True
            return data
        inbio = self.inbio
        assert inbio is not None
        full = self.more
        while True:
            try:
                data = tls.read(CHUNK)
            except ssl.SSLWantReadError:
                self._collect()
                if self.closing and not self.notified:
                    self._close_notify()  # every received record is decrypted now
                raw = self.sock.recv(CHUNK)  # BlockingIOError when the socket is empty
                full = len(raw) == CHUNK
                if raw:
                    inbio.write(raw)
                else:
                    inbio.write_eof()
                continue
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                data = b""
            self._collect()
            # OpenSSL pulls a record from the BIO only when asked for one (Python does not
            # turn read-ahead on), so bytes not yet decrypted are in ``inbio`` or pending.
            self.more = full or inbio.pending > 0 or tls.pending() > 0
            if not data:
                self.eof = True
            return data

    def write(self, data: bytes) -> None:
        """Queue plaintext for the peer (encrypted first when TLS is on)."""
        tls = self.tls
        if tls is None:
            self.out += data
            return
        tls.write(data)
        self._collect()

    def _collect(self) -> None:
        outbio = self.outbio
        if outbio is not None and outbio.pending:
            self.out += outbio.read()

    def flush(self) -> bool:
        """Send what is queued; True when nothing is left (and then a requested half-close
        is carried out). Raises :class:`OSError` when the socket failed."""
        out = self.out
        while out:
            try:
                n = self.sock.send(out)
            except BlockingIOError:
                return False
            del out[:n]
        if self.closing and self.notified and not self.shut:
            self.shut = True
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        return True

    def close_write(self) -> None:
        """Half-close towards the peer: ``close_notify`` (TLS), then ``shutdown(SHUT_WR)``
        once everything queued is sent (by :meth:`flush`)."""
        if self.closing:
            return
        self.closing = True
        tls = self.tls
        if tls is None or self.inbio is None:
            return
        if self.eof or not (self.inbio.pending or tls.pending()):
            self._close_notify()

    def _close_notify(self) -> None:
        tls = self.tls
        assert tls is not None
        self.notified = True
        try:
            tls.unwrap()
        except ssl.SSLWantReadError:
            pass  # sent; the peer's close_notify is not awaited
        except (ssl.SSLError, OSError):
            pass  # the peer broke the protocol or is gone: the FIN still says EOF
        self._collect()

    def describe(self) -> tuple[str | None, str | None]:
        """The negotiated TLS version and ALPN protocol (``(None, None)`` without TLS)."""
        tls = self.tls
        if tls is None:
            return None, None
        return tls.version(), tls.selected_alpn_protocol()


#: What the usual OpenSSL reasons mean for whoever reads the log.
_HINTS = {
    "UNSUPPORTED_PROTOCOL": "no TLS version both sides accept (see tls_min_version)",
    "NO_SHARED_CIPHER": "no cipher both sides accept",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS",
    "HTTP_REQUEST": "plain HTTP sent to a TLS port",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust the certificate's issuer",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer refused the certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer refused the certificate",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the peer accepts no TLS version offered",
    "NO_APPLICATION_PROTOCOL": "no ALPN protocol both sides accept (see offer_alpn)",
    "TLSV1_ALERT_NO_APPLICATION_PROTOCOL": "no ALPN protocol both sides accept",
}


def describe_error(exc: ssl.SSLError) -> str:
    """A short sentence for a TLS failure, OpenSSL's reason in parentheses, e.g. ``the peer
    does not trust the certificate's issuer (tlsv1 alert unknown ca)`` or ``certificate verify
    failed: self-signed certificate``."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    reason = str(exc.reason or exc)
    plain = reason.lower().replace("_", " ")
    hint = _HINTS.get(reason)
    return f"{hint} ({plain})" if hint else plain


class Handshake:
    """A stage: complete the TLS handshake on ``endpoint`` within ``timeout`` seconds.

    ``client_side`` says whether the endpoint faces the client (Portway is the TLS server)
    or a server (Portway is the TLS client); it picks the termination reasons. Calls
    ``on_done()`` once the handshake is complete, or ``on_error(reason, detail)``; bytes the
    handshake still has to send and any data that came with its last flight stay in the
    endpoint for the relay.
    """

    __slots__ = (
        "client_side",
        "done",
        "endpoint",
        "error",
        "on_done",
        "on_error",
        "poller",
        "reading",
        "timeout",
        "wheel",
        "wheel_slot",
        "writing",
    )

    def __init__(
        self,
        poller: Poller,
        wheel: TimerWheel,
        endpoint: Endpoint,
        *,
        timeout: float,
        client_side: bool,
        on_done: Callable[[], None],
        on_error: DoneCallback,
    ) -> None:
        self.poller = poller
        self.wheel = wheel
        self.wheel_slot: int | None = None
        self.endpoint = endpoint
        self.timeout = timeout
        self.client_side = client_side
        self.on_done = on_done
        self.on_error = on_error
        self.reading = False
        self.writing = False
        self.done = False
        #: The TLS error that failed the handshake, if that is how it failed (its ``reason``
        #: tells, e.g., which alert the peer sent).
        self.error: ssl.SSLError | None = None

    def start(self) -> None:
        """Arm the deadline and take the first step (bytes fed earlier are used at once)."""
        self.wheel.arm(self, self.timeout)
        self._step()

    def _step(self) -> None:
        ep = self.endpoint
        tls = ep.tls
        assert tls is not None
        try:
            tls.do_handshake()
        except ssl.SSLWantReadError:
            ep._collect()
            if not self._flush():
                return
            if not self.reading:
                self.poller.add_reader(ep.fd, self._on_readable)
                self.reading = True
            return
        except ssl.SSLError as exc:
            ep._collect()  # the alert OpenSSL wrote: best effort, one send
            try:
                ep.flush()
            except OSError:
                pass
            reason = Reason.TLS_HANDSHAKE_FAILED if self.client_side else Reason.SERVER_TLS_FAILED
            self.error = exc
            self._fail(reason, describe_error(exc))
            return
        ep._collect()
        self._stop()
        self.on_done()

    def _flush(self) -> bool:
        """Send what the handshake wrote; False if the stage ended on a socket error."""
        ep = self.endpoint
        try:
            drained = ep.flush()
        except OSError as exc:
            self._closed(exc.strerror or type(exc).__name__)
            return False
        if drained and self.writing:
            self.poller.remove_writer(ep.fd)
            self.writing = False
        elif not drained and not self.writing:
            self.poller.add_writer(ep.fd, self._on_writable)
            self.writing = True
        return True

    def _on_readable(self) -> None:
        try:
            ep = self.endpoint
            try:
                raw = ep.sock.recv(CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                self._closed(exc.strerror or type(exc).__name__)
                return
            if not raw:
                self._closed("closed the connection during the TLS handshake")
                return
            assert ep.inbio is not None
            ep.inbio.write(raw)
            self._step()
        except Exception as exc:  # a bug must end this connection, not leak it
            log.error("TLS handshake failed unexpectedly", exc_info=exc)
            self._fail(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _on_writable(self) -> None:
        try:
            self._flush()
        except Exception as exc:
            log.error("TLS handshake failed unexpectedly", exc_info=exc)
            self._fail(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def _closed(self, detail: str) -> None:
        if self.client_side:
            self._fail(Reason.CLIENT_CLOSED, f"{detail} (TLS handshake)")
        else:
            self._fail(Reason.SERVER_TLS_FAILED, f"the server {detail} (TLS handshake)")

    def on_deadline(self, now: float) -> None:
        """The handshake did not complete in time."""
        detail = f"TLS handshake not complete within {self.timeout:g}s"
        self._fail(Reason.SNIFF_TIMEOUT if self.client_side else Reason.CONNECT_TIMEOUT, detail)

    def _fail(self, reason: Reason, detail: str) -> None:
        if self.done:
            return
        self._stop()
        self.on_error(reason, detail)

    def _stop(self) -> None:
        if self.done:
            return
        self.done = True
        self.wheel.disarm(self)
        if self.reading:
            self.poller.remove_reader(self.endpoint.fd)
            self.reading = False
        if self.writing:
            self.poller.remove_writer(self.endpoint.fd)
            self.writing = False

    def cancel(self) -> None:
        """Stop without reporting (the connection is being torn down)."""
        self._stop()


class TlsRelay:
    """Plaintext both ways between two :class:`Endpoint` whose handshakes are complete.

    ``to_server`` is plaintext sent to the server before anything the client sends (bytes
    read before the relay started). Owns both sockets from :meth:`start` on and closes them
    when it ends, then calls ``on_done(reason, detail)`` exactly once.
    """

    __slots__ = (
        "c_last",
        "c_read",
        "c_write",
        "client",
        "ended",
        "first_eof_client",
        "idle_timeout",
        "on_done",
        "poller",
        "s_last",
        "s_read",
        "s_write",
        "server",
        "session",
        "wheel",
        "wheel_slot",
    )

    def __init__(
        self,
        poller: Poller,
        wheel: TimerWheel,
        client: Endpoint,
        server: Endpoint,
        session: Session,
        on_done: DoneCallback,
        *,
        idle_timeout: float = 0.0,
        to_server: bytes = b"",
    ) -> None:
        self.poller = poller
        self.wheel = wheel
        self.wheel_slot: int | None = None
        self.client = client
        self.server = server
        self.session = session
        self.on_done = on_done
        self.idle_timeout = idle_timeout
        self.ended = False
        self.first_eof_client: bool | None = None
        self.c_last = self.s_last = _now()
        self.c_read = self.c_write = self.s_read = self.s_write = False
        if to_server:
            server.write(to_server)

    def start(self) -> None:
        """Send what is queued and relay whatever is already buffered, then wait for events."""
        if self.idle_timeout > 0:
            self.wheel.arm(self, self.idle_timeout)
        try:
            self._move(self.client, self.server)
            if not self.ended:
                self._move(self.server, self.client)
            if not self.ended:
                self._interest()
        except Exception as exc:
            self.crash(exc)

    # -- events --------------------------------------------------------------------------
    def _on_client_readable(self) -> None:
        try:
            self._move(self.client, self.server)
            if not self.ended:
                self._interest()
        except Exception as exc:
            self.crash(exc)

    def _on_server_readable(self) -> None:
        try:
            self._move(self.server, self.client)
            if not self.ended:
                self._interest()
        except Exception as exc:
            self.crash(exc)

    def _on_client_writable(self) -> None:
        try:
            if self._flush(self.client):
                self._move(self.server, self.client)  # it may have stopped for backpressure
            if not self.ended:
                self._interest()
        except Exception as exc:
            self.crash(exc)

    def _on_server_writable(self) -> None:
        try:
            if self._flush(self.server):
                self._move(self.client, self.server)
            if not self.ended:
                self._interest()
        except Exception as exc:
            self.crash(exc)

    # -- moving bytes --------------------------------------------------------------------
    def _move(self, src: Endpoint, dst: Endpoint) -> None:
        """Read plaintext from ``src`` while ``dst`` has room, queue it on ``dst``, send.

        When ``dst`` filled up and then took everything at once, reading goes on: with TLS the
        bytes still to read may sit in OpenSSL's buffers, where no readiness event would ever
        announce them.
        """
        to_server = src is self.client
        while True:
            full = self._read_into(src, dst, to_server)
            if self.ended:
                return
            if src.out and not self._flush(src):  # TLS records the read produced
                return
            if src.eof and not dst.closing:
                if self.first_eof_client is None:
                    self.first_eof_client = to_server
                dst.close_write()
            if not self._flush(dst) or not full:
                break
        if not self.ended and self.client.eof and self.server.eof and self.client.shut and self.server.shut:
            reason = Reason.CLIENT_CLOSED if self.first_eof_client else Reason.SERVER_CLOSED
            self.end(reason)

    def _read_into(self, src: Endpoint, dst: Endpoint, to_server: bool) -> bool:
        """One read round; True if it stopped because ``dst`` holds :data:`HIGH_WATER` bytes."""
        if src.eof:
            return False
        moved = 0
        full = False
        try:
            while True:
                if len(dst.out) >= HIGH_WATER:
                    full = True
                    break
                data = src.read()
                if not data:
                    break
                moved += len(data)
                dst.write(data)
                if not src.more:
                    break  # most likely empty: the poller calls back when more comes
        except BlockingIOError:
            pass
        except (OSError, ssl.SSLError) as exc:
            self.fail(to_server, exc)
            return False
        if moved:
            if to_server:
                self.session.bytes_in += moved
                self.c_last = _now()
            else:
                self.session.bytes_out += moved
                self.s_last = _now()
        return full

    def _flush(self, ep: Endpoint) -> bool:
        """Send what ``ep`` has queued; True when all of it went (False also when the relay ended)."""
        if self.ended:
            return False
        try:
            return ep.flush()
        except OSError as exc:
            self.fail(ep is self.client, exc)
            return False

    def _interest(self) -> None:
        c, s = self.client, self.server
        want = not c.eof and len(s.out) < HIGH_WATER
        if want != self.c_read:
            self.c_read = want
            if want:
                self.poller.add_reader(c.fd, self._on_client_readable)
            else:
                self.poller.remove_reader(c.fd)
        want = not s.eof and len(c.out) < HIGH_WATER
        if want != self.s_read:
            self.s_read = want
            if want:
                self.poller.add_reader(s.fd, self._on_server_readable)
            else:
                self.poller.remove_reader(s.fd)
        want = bool(c.out)
        if want != self.c_write:
            self.c_write = want
            if want:
                self.poller.add_writer(c.fd, self._on_client_writable)
            else:
                self.poller.remove_writer(c.fd)
        want = bool(s.out)
        if want != self.s_write:
            self.s_write = want
            if want:
                self.poller.add_writer(s.fd, self._on_server_writable)
            else:
                self.poller.remove_writer(s.fd)

    # -- ending --------------------------------------------------------------------------
    def on_deadline(self, now: float) -> None:
        """The idle deadline came: end if nothing moved for ``idle_timeout``, else move it on."""
        left, reason = idle_check(self.c_last, self.s_last, self.idle_timeout, now)
        if left > 0:
            self.wheel.arm(self, left)
        else:
            self.end(reason, f"no data for {self.idle_timeout:g}s")

    def fail(self, client_side: bool, exc: OSError | ssl.SSLError) -> None:
        """A socket or TLS error on one side ends both directions, blamed on that side."""
        reason = Reason.CLIENT_CLOSED if client_side else Reason.SERVER_CLOSED
        if isinstance(exc, ssl.SSLError):
            detail = "TLS error: " + describe_error(exc)
        else:
            detail = exc.strerror or type(exc).__name__
        self.end(reason, detail)

    def crash(self, exc: BaseException) -> None:
        """An unexpected exception in a callback: end with ``internal_error`` and the traceback."""
        log.error("TLS relay of connection %d failed", self.session.id, exc_info=exc)
        self.end(Reason.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")

    def end(self, reason: Reason, detail: str = "") -> None:
        """Tear down: unregister, close both sockets, report once."""
        if self.ended:
            return
        self.ended = True
        self.wheel.disarm(self)
        self.poller.close(self.client.sock)
        self.poller.close(self.server.sock)
        on_done = self.on_done
        self.on_done = ended
        on_done(reason, detail)
