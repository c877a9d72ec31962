"""Why a connection ended: a closed set of reasons, each with a HAProxy-style code.

Every connection ends with exactly one :class:`Reason`. The set is closed on purpose:
logs, metrics and dashboards can enumerate it, and a new way for a connection to end
must be added here, with its code, before any code can use it.

The two-character code follows HAProxy's ``termination_state`` (configuration.txt §8.5):
the first character says *who* ended it (``C`` client, ``S`` server, ``P`` proxy,
``c``/``s`` client/server timeout, ``K`` killed, ``I`` internal, ``R`` resource,
``-`` normal), the second *in which phase* (``R`` request/sniff, ``C`` connect,
``D`` data, ``-`` none).
"""

from __future__ import annotations

import enum


class Phase(enum.Enum):
    """The phase of a connection's life in which it ended."""

    SNIFF = "R"
    CONNECT = "C"
    DATA = "D"


class Reason(enum.Enum):
    """The closed set of reasons a connection ends, with a code and a sentence.

    The value is the stable machine name used in JSON logs and metric labels.
    """

    CLIENT_CLOSED = "client_closed"
    SERVER_CLOSED = "server_closed"
    CLIENT_IDLE_TIMEOUT = "client_idle_timeout"
    SERVER_IDLE_TIMEOUT = "server_idle_timeout"
    SNIFF_TIMEOUT = "sniff_timeout"
    CONNECT_REFUSED = "connect_refused"
    CONNECT_TIMEOUT = "connect_timeout"
    NO_SERVER = "no_server"
    REFUSED_BY_RULE = "refused_by_rule"
    PROTOCOL_ERROR = "protocol_error"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    SERVER_TLS_FAILED = "server_tls_failed"
    SHUTDOWN = "shutdown"
    INTERNAL_ERROR = "internal_error"

    @property
    def code(self) -> str:
        """The HAProxy-style two-character termination state, e.g. ``"cD"``."""
        return _CODES[self]

    @property
    def phase(self) -> Phase:
        """The phase this reason belongs to."""
        return _PHASES[self]

    @property
    def message(self) -> str:
        """A short sentence for people, used in the text access log."""
        return _MESSAGES[self]


_CODES: dict[Reason, str] = {
    Reason.CLIENT_CLOSED: "CD",
    Reason.SERVER_CLOSED: "SD",
    Reason.CLIENT_IDLE_TIMEOUT: "cD",
    Reason.SERVER_IDLE_TIMEOUT: "sD",
    Reason.SNIFF_TIMEOUT: "cR",
    Reason.CONNECT_REFUSED: "SC",
    Reason.CONNECT_TIMEOUT: "sC",
    Reason.NO_SERVER: "SC",
    Reason.REFUSED_BY_RULE: "PR",
    Reason.PROTOCOL_ERROR: "PR",
    Reason.TLS_HANDSHAKE_FAILED: "CR",
    Reason.SERVER_TLS_FAILED: "SC",
    Reason.SHUTDOWN: "KD",
    Reason.INTERNAL_ERROR: "ID",
}

_PHASES: dict[Reason, Phase] = {
    Reason.CLIENT_CLOSED: Phase.DATA,
    Reason.SERVER_CLOSED: Phase.DATA,
    Reason.CLIENT_IDLE_TIMEOUT: Phase.DATA,
    Reason.SERVER_IDLE_TIMEOUT: Phase.DATA,
    Reason.SNIFF_TIMEOUT: Phase.SNIFF,
    Reason.CONNECT_REFUSED: Phase.CONNECT,
    Reason.CONNECT_TIMEOUT: Phase.CONNECT,
    Reason.NO_SERVER: Phase.CONNECT,
    Reason.REFUSED_BY_RULE: Phase.SNIFF,
    Reason.PROTOCOL_ERROR: Phase.SNIFF,
    Reason.TLS_HANDSHAKE_FAILED: Phase.SNIFF,
    Reason.SERVER_TLS_FAILED: Phase.CONNECT,
    Reason.SHUTDOWN: Phase.DATA,
    Reason.INTERNAL_ERROR: Phase.DATA,
}

_MESSAGES: dict[Reason, str] = {
    Reason.CLIENT_CLOSED: "client closed",
    Reason.SERVER_CLOSED: "server closed",
    Reason.CLIENT_IDLE_TIMEOUT: "client idle timeout",
    Reason.SERVER_IDLE_TIMEOUT: "server idle timeout",
    Reason.SNIFF_TIMEOUT: "sniff timeout",
    Reason.CONNECT_REFUSED: "connect refused",
    Reason.CONNECT_TIMEOUT: "connect timeout",
    Reason.NO_SERVER: "no server",
    Reason.REFUSED_BY_RULE: "refused by rule",
    Reason.PROTOCOL_ERROR: "protocol error",
    Reason.TLS_HANDSHAKE_FAILED: "TLS handshake with the client failed",
    Reason.SERVER_TLS_FAILED: "TLS to the server failed",
    Reason.SHUTDOWN: "shutdown",
    Reason.INTERNAL_ERROR: "internal error",
}
