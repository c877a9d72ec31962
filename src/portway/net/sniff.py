"""Read from a fresh connection until a sans-IO parser decides, under a deadline and a size limit.

The bytes read are kept, whole and in order, and handed to ``on_result`` together with the
parser's answer, so the mode can strip what it consumed (a PROXY header) and replay the rest
(a ClientHello, an HTTP head) to the backend. Nothing is lost.

The parser is any callable ``parse(data) -> NEED_DATA | result``; it may raise
:class:`portway.errors.ProtocolError` for input it rejects.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from portway.errors import ProtocolError
from portway.net.poller import Poller
from portway.net.timers import TimerWheel
from portway.termination import Reason

ResultCallback = Callable[[Any, bytearray], None]
ErrorCallback = Callable[[Reason, str], None]


class Sniff:
    """Reads ``sock`` into a buffer until ``parse`` returns something other than ``need``."""

    __slots__ = (
        "buf",
        "done",
        "error",
        "limit",
        "need",
        "on_error",
        "on_result",
        "parse",
        "poller",
        "reading",
        "sock",
        "timeout",
        "what",
        "wheel",
        "wheel_slot",
    )

    def __init__(
        self,
        poller: Poller,
        wheel: TimerWheel,
        sock: socket.socket,
        parse: Callable[[bytearray], Any],
        need: object,
        *,
        what: str,
        limit: int,
        timeout: float,
        on_result: ResultCallback,
        on_error: ErrorCallback,
        initial: bytes = b"",
    ) -> None:
        self.poller = poller
        self.wheel = wheel
        self.wheel_slot: int | None = None
        self.sock = sock
        self.parse = parse
        self.need = need
        self.what = what
        self.limit = limit
        self.on_result = on_result
        self.on_error = on_error
        #: Every byte read so far, starting with ``initial`` (bytes an earlier stage read).
        self.buf = bytearray(initial)
        self.done = False
        self.reading = False
        #: The parser's error, when it rejected the bytes (for an answer in the protocol's terms).
        self.error: ProtocolError | None = None
        self.timeout = timeout

    def start(self) -> None:
        """Arm the deadline and read: at once (the bytes are often there already, always with
        ``TCP_DEFER_ACCEPT``), then whenever the socket is readable until a decision."""
        self.wheel.arm(self, self.timeout)
        self._on_readable()
        if not self.done:
            self.poller.add_reader(self.sock.fileno(), self._on_readable)
            self.reading = True

    def _on_readable(self) -> None:
        try:
            chunk = self.sock.recv(self.limit - len(self.buf) + 1)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(Reason.CLIENT_CLOSED, f"{exc.strerror} while reading the {self.what}")
            return
        if not chunk:
            self._fail(Reason.CLIENT_CLOSED, f"closed before sending a complete {self.what}")
            return
        self.buf += chunk
        try:
            result = self.parse(self.buf)
        except ProtocolError as exc:
            self.error = exc
            self._fail(Reason.PROTOCOL_ERROR, f"bad {self.what}: {exc}")
            return
        if result is self.need:
            if len(self.buf) > self.limit:
                self._fail(Reason.PROTOCOL_ERROR, f"{self.what} longer than {self.limit} bytes")
            return
        self._stop()
        self.on_result(result, self.buf)

    def on_deadline(self, now: float) -> None:
        """``sniff_timeout`` passed without a decision."""
        got = f"{len(self.buf)} bytes" if self.buf else "nothing"
        self._fail(Reason.SNIFF_TIMEOUT, f"no complete {self.what} in time (got {got})")

    def _fail(self, reason: Reason, detail: str) -> None:
        self._stop()
        self.on_error(reason, detail)

    def _stop(self) -> None:
        if self.done:
            return
        self.done = True
        if self.reading:
            self.poller.remove_reader(self.sock.fileno())
            self.reading = False
        self.wheel.disarm(self)

    def cancel(self) -> None:
        """Stop reading without reporting anything (the connection is being torn down)."""
        self._stop()
