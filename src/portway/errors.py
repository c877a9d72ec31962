"""The Portway error family.

Every error Portway raises on purpose derives from :class:`PortwayError`, so a caller
(the command line, the supervisor) can tell "Portway refused, with a sentence for the
user" from "a bug" with one ``except`` clause.

Configuration problems are collected, not raised one at a time: the loader validates
the whole document and raises a single :class:`ConfigError` that holds every
:class:`ConfigIssue` it found. Each issue names the file, the key and what was
expected, quoting what was found (STYLE.md §6, "How errors flow", point 4)::

    portway.toml: backend.web.servers[1].address: expected host:port, got "web01"
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ConfigError", "ConfigIssue", "PortwayError", "ProtocolError"]


class PortwayError(Exception):
    """Base class of every error Portway raises deliberately.

    Its ``str()`` is a sentence meant for the user; it never needs a traceback.
    """


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem found in a configuration document.

    Attributes:
        file: The configuration's source as the user named it (``"portway.toml"``,
            ``"<built-in default>"``).
        key: Where in the document, as a dotted path that uses names where the
            document gives them (``"listener.db.bind[1]"``,
            ``"backend.web.servers[0].address"``); array indexes count from 0.
            Empty when the problem concerns the whole file (a syntax error, a
            missing file, an unknown top-level key).
        message: What was expected and what was found, e.g.
            ``expected host:port, got "web01"``.
    """

    file: str
    key: str
    message: str

    def __str__(self) -> str:
        """Render as ``file: key: message`` (or ``file: message`` without a key)."""
        if self.key:
            return f"{self.file}: {self.key}: {self.message}"
        return f"{self.file}: {self.message}"


class ConfigError(PortwayError):
    """A configuration could not be loaded; :attr:`issues` lists every reason.

    ``str()`` gives one issue per line, ready to print. The exception pickles, so a
    worker process can hand it back to the supervisor.
    """

    issues: list[ConfigIssue]
    """Every problem found, in document order as far as it is known (never empty)."""

    def __init__(self, issues: Iterable[ConfigIssue]) -> None:
        """Collect ``issues``; at least one is expected."""
        collected = list(issues)
        super().__init__(collected)
        self.issues = collected

    def __str__(self) -> str:
        """One issue per line, each in ``file: key: message`` form."""
        return "\n".join(str(issue) for issue in self.issues)


class ProtocolError(PortwayError):
    """Bytes from a peer that a sans-IO parser rejects.

    ``hint`` is the answer the protocol itself would give (an HTTP status, a TLS alert name,
    a SOCKS reply code, a gateway status); the mode handler sends it before closing. The
    ``str()`` says what was wrong, for the access log's ``detail``.
    """

    def __init__(self, message: str, *, hint: int | str | None = None) -> None:
        super().__init__(message)
        self.hint = hint
