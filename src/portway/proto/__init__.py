"""Sans-IO protocol code: pure functions over bytes, no sockets, no asyncio.

Every parser here has the same three-way contract (h11's readers, mitmproxy's
``parse_client_hello``): given every byte seen so far it returns a result, :data:`NEED_DATA`
(the bytes are a proper prefix of something valid; read more), or raises its subclass of
:class:`portway.errors.ProtocolError`, whose ``hint`` is the protocol's own answer.
"""

from __future__ import annotations

import enum
from typing import Final


class NeedData(enum.Enum):
    """Type of the :data:`NEED_DATA` sentinel (an enum so that ``is`` narrows for mypy)."""

    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = NeedData.NEED_DATA
"""Returned by every parser when the bytes so far are a proper prefix of what it parses."""
