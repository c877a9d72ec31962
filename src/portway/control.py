"""The supervisor ↔ worker control channel: length-prefixed JSON messages over a socketpair.

Each message is a JSON object with an ``"op"`` key, framed by a 4-byte big-endian length.
Supervisor → worker: ``config`` (initial or reload), ``ping``, ``stats``, ``stop``.
Worker → supervisor: ``ready``, ``fatal``, ``applied``, ``apply_failed``, ``pong``, ``stats``.
Requests that expect an answer carry an ``"id"`` that the answer echoes.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

#: Upper bound on one message, so a confused peer cannot make us allocate without limit.
MAX_MESSAGE = 64 << 20

Message = dict[str, Any]


def encode(msg: Message) -> bytes:
    """Frame ``msg`` for the wire."""
    data = json.dumps(msg, separators=(",", ":")).encode()
    return len(data).to_bytes(4, "big") + data


async def send(writer: asyncio.StreamWriter, msg: Message) -> None:
    """Write one message and wait until the transport has taken it."""
    writer.write(encode(msg))
    await writer.drain()


async def recv(reader: asyncio.StreamReader) -> Message | None:
    """Read one message; ``None`` when the peer has gone (EOF)."""
    try:
        head = await reader.readexactly(4)
        size = int.from_bytes(head, "big")
        if size > MAX_MESSAGE:
            raise ValueError(f"control message of {size} bytes is too large")
        data = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    msg = json.loads(data)
    if not isinstance(msg, dict):
        raise ValueError("control message is not a JSON object")
    return msg
