"""The client side of Portway's ``gateway`` mode: open a connection through a gateway with a token.

A gateway listener puts any number of backends behind one address without configuring them:
the client names its destination with an encrypted *token* (see ``portway token encrypt``), and
the gateway decides whether to connect it. The exchange, all in ASCII::

    client -> gateway   <token>\\n            one line; the token itself holds no CR or LF
    gateway -> client   200                  exactly three bytes, no newline; from here on the
                                             connection is a transparent byte stream to the backend
    gateway -> client   400|401|403|502|504  a refusal (see STATUS_MEANINGS); the gateway closes

Rules this module keeps:

1. *Not one byte too many.* The status is read as exactly three bytes. Whatever the backend
   sent right behind it (a banner, a greeting) stays in the returned stream, ready for the
   application protocol.
2. *Every failure says what happened.* A refusal, a connection closed before any status and a
   reply that is not a gateway status all raise :class:`GatewayError`, whose ``status`` is the
   code answered (0 when there was none) and whose message says what the code means.
3. *One deadline for the whole handshake.* ``timeout`` bounds connecting, sending the token line
   and reading the status together; past it :class:`GatewayTimeoutError` is raised.
4. *Early data is explicit.* The gateway delivers bytes sent right after the token line to the
   backend before anything else, so a client may save a round trip by passing them as
   ``early_data``; nothing else is sent before the status has been read.

Two flavours share those rules: :func:`open_connection` for asyncio programs and :func:`connect`
for programs that use plain blocking sockets::

    reader, writer = await portway.client.open_connection("gw.example.com", 7000, token)
    sock = portway.client.connect("gw.example.com", 7000, token)
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from portway.config.units import format_hostport
from portway.errors import PortwayError

__all__ = [
    "STATUS_MEANINGS",
    "GatewayError",
    "GatewayTimeoutError",
    "connect",
    "open_connection",
]

STATUS_MEANINGS: Mapping[int, str] = MappingProxyType(
    {
        200: "connected to the backend",
        400: "the gateway could not read the token line (it is not a token, or it is too long)",
        401: "the gateway refused the token (invalid, expired or for another gateway)",
        403: "the token is authentic, but its destination is outside the gateway's policy",
        502: "the gateway could not connect to the backend (refused or failed)",
        504: "the backend did not accept the gateway's connection in time",
    }
)
"""What each status a gateway answers means, in words for the user (read-only)."""

_STATUS_LENGTH = 3
_FORBIDDEN = (b"\n", b"\r")


class GatewayError(ConnectionError, PortwayError):
    """The gateway did not connect us to the backend; :attr:`status` says why.

    It is a :class:`ConnectionError`, so code that already handles a refused or reset
    connection handles this too, and a :class:`~portway.errors.PortwayError`, so its ``str()``
    is a sentence for the user, e.g.
    ``gateway gw.example.com:7000 answered 401: the gateway refused the token (invalid,
    expired or for another gateway)``.
    """

    status: int
    """The code the gateway answered (400, 401, 403, 502, 504, or another three-digit code it
    sent), or 0 when it closed the connection, or answered something that is not a status."""

    def __init__(self, status: int, message: str) -> None:
        """Record ``status``; ``message`` is the complete sentence ``str()`` returns."""
        super().__init__(message)
        self.status = status

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle as ``(status, message)`` (OSError's default would lose ``status``)."""
        return (type(self), (self.status, str(self)))

    @property
    def meaning(self) -> str:
        """The meaning of :attr:`status` from :data:`STATUS_MEANINGS` ("" for 0 or an unknown code)."""
        return STATUS_MEANINGS.get(self.status, "")


class GatewayTimeoutError(GatewayError, TimeoutError):
    """The gateway did not complete the handshake (connect, token line, status) in time.

    Its :attr:`~GatewayError.status` is 0: no status was answered. It is also a
    :class:`TimeoutError`, for code that handles timeouts alike.
    """

    def __init__(self, status: int, message: str) -> None:
        """Same arguments as :class:`GatewayError`."""
        super().__init__(status, message)


def _token_line(token: bytes | str) -> bytes:
    """The token as the line the gateway expects; ValueError for what cannot be a token."""
    if isinstance(token, str):
        try:
            token = token.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError("a gateway token is ASCII text; this one has other characters") from None
    if not token:
        raise ValueError("the gateway token is empty")
    if any(ch in token for ch in _FORBIDDEN):
        raise ValueError(
            "a gateway token must not contain a newline or carriage return "
            "(strip the line ending when reading it from a file)"
        )
    return token + b"\n"


def _status_error(where: str, answer: bytes) -> GatewayError | None:
    """The error for a status ``answer`` (None for 200). ``answer`` may be short (EOF)."""
    if answer == b"200":
        return None
    if len(answer) < _STATUS_LENGTH:
        got = f" after {answer!r}" if answer else ""
        return GatewayError(
            0,
            f"{where} closed the connection without answering a status{got} "
            "(is this address a Portway gateway listener?)",
        )
    if not answer.isdigit():
        return GatewayError(
            0, f"{where} answered {answer!r}, which is not a gateway status (is this a Portway gateway?)"
        )
    status = int(answer)
    meaning = STATUS_MEANINGS.get(status)
    if meaning is None:
        return GatewayError(status, f"{where} answered {status}, a status this client does not know")
    return GatewayError(status, f"{where} answered {status}: {meaning}")


async def open_connection(
    host: str,
    port: int,
    token: bytes | str,
    *,
    timeout: float = 10.0,
    early_data: bytes = b"",
    **kwargs: Any,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the backend a token names, through the gateway at ``host:port``.

    Args:
        host: The gateway's host name or IP address.
        port: The gateway's port.
        token: The token line without its line ending, as ``portway token encrypt`` prints
            it (``bytes`` or an ASCII ``str``).
        timeout: Seconds allowed for the whole handshake: connecting, sending the line and
            reading the status. The streams returned have no timeout of their own.
        early_data: Bytes sent right behind the token line, before the status arrives; the
            gateway delivers them to the backend first. Saves a round trip for protocols
            where the client speaks first; they are lost if the gateway refuses.
        **kwargs: Passed on to :func:`asyncio.open_connection` (``ssl``, ``local_addr``,
            ``limit``, ...).

    Returns:
        ``(reader, writer)`` connected to the backend. Bytes the backend sent right after
        the status are already waiting in ``reader``.

    Raises:
        ValueError: The token is empty, not ASCII, or contains CR or LF (checked before
            connecting).
        GatewayError: The gateway refused (``status`` is its code), closed without a status
            (``status`` 0) or answered something else.
        GatewayTimeoutError: The handshake took longer than ``timeout``.
        OSError: The gateway itself could not be reached (refused, unreachable, DNS).
    """
    line = _token_line(token)
    where = f"gateway {format_hostport(host, port)}"
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port, **kwargs)
            writer.write(line + early_data)
            await writer.drain()
            try:
                answer = await reader.readexactly(_STATUS_LENGTH)
            except asyncio.IncompleteReadError as exc:
                answer = exc.partial
    except TimeoutError:
        if writer is not None:
            writer.close()
        raise GatewayTimeoutError(
            0, f"{where} did not complete the gateway handshake within {timeout:g}s"
        ) from None
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    error = _status_error(where, answer)
    if error is not None:
        writer.close()
        raise error
    return reader, writer


def connect(
    host: str,
    port: int,
    token: bytes | str,
    *,
    timeout: float = 10.0,
    early_data: bytes = b"",
) -> socket.socket:
    """The blocking flavour of :func:`open_connection`, for programs that use plain sockets.

    Arguments, errors and the meaning of ``timeout`` are those of :func:`open_connection`.

    Returns:
        A connected socket in blocking mode (no timeout), positioned right after the status:
        its next ``recv`` returns the backend's first bytes. The caller owns and closes it.
    """
    line = _token_line(token)
    where = f"gateway {format_hostport(host, port)}"
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        return left

    sock: socket.socket | None = None
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
        sock.settimeout(remaining())
        sock.sendall(line + early_data)
        answer = b""
        while len(answer) < _STATUS_LENGTH:
            sock.settimeout(remaining())
            chunk = sock.recv(_STATUS_LENGTH - len(answer))  # never more than the status
            if not chunk:
                break
            answer += chunk
    except TimeoutError:
        if sock is not None:
            sock.close()
        raise GatewayTimeoutError(
            0, f"{where} did not complete the gateway handshake within {timeout:g}s"
        ) from None
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    error = _status_error(where, answer)
    if error is not None:
        sock.close()
        raise error
    sock.settimeout(None)
    return sock
