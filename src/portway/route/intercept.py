"""Which CONNECT tunnels of a forward proxy are intercepted, and which hosts refused the forged certificate.

An ``http-proxy`` listener with ``intercept`` patterns answers a matching CONNECT, ends the
client's TLS itself with a leaf certificate minted by Portway's CA, opens verified TLS to the
origin and proxies the HTTP inside. This module holds the decisions around that, and nothing
that touches a socket or a clock.

Rule 1. A pattern is an exact host name (``example.com``), ``*.suffix`` (every name that ends
        in ``.suffix``, at any depth, but not ``suffix`` itself), ``*`` (every destination) or an
        IP literal (``192.0.2.1``, ``2001:db8::1``, brackets allowed). Patterns and the hosts
        asked for are compared case-insensitively and without a trailing dot; IP literals in
        their canonical form. :func:`parse_pattern` is the one parser: the configuration
        validates entries with it, so its :class:`ValueError` messages are the user's.
Rule 2. Matching runs once per CONNECT, so it is a set lookup for exact names and IPs plus one
        ``str.endswith`` over a tuple of suffixes; nothing is compiled or allocated beyond
        lower-casing the host.
Rule 3. A client that refuses the forged certificate (it aborts the handshake with a
        certificate alert, or closes right after the ServerHello: certificate pinning, or a
        machine that does not trust the CA) is reported by the caller with
        :meth:`Interception.client_refused`. With ``pinning = "log"`` nothing else happens: the
        next tunnel to that host is intercepted again. With ``pinning = "passthrough"`` the host
        is remembered for ``pinning_ttl`` seconds, during which :meth:`Interception.should_intercept`
        says no and its tunnels pass through untouched.
Rule 4. Time is the caller's: every method that needs it takes ``now`` (a monotonic clock in
        seconds, the event loop's ``loop.time()``), so tests never sleep.
Rule 5. Memory is bounded: at most :data:`MAX_PINNED` hosts are remembered per listener and
        worker; past that the host remembered longest ago is forgotten (and intercepted again).
        The memory lives in each worker process, as the gateway's source limits do.
"""

from __future__ import annotations

import collections
import ipaddress
import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from portway.config.units import format_duration
from portway.route.match import is_hostname

if TYPE_CHECKING:
    import ssl

    from portway.net.mitmca import CertificateAuthority

__all__ = [
    "MAX_PINNED",
    "PATTERN_EXPECTED",
    "PINNING_MODES",
    "HostPatterns",
    "Interception",
    "normalise_host",
    "parse_pattern",
    "refusal_detail",
]

PINNING_MODES: Final = ("log", "passthrough")
"""The values of ``pinning``: what happens after a client refuses the forged certificate."""

MAX_PINNED: Final = 10_000
"""Most hosts remembered as refusing the forged certificate, per listener and worker."""

PATTERN_EXPECTED: Final = (
    'expected a host name ("example.com"), "*.suffix" (every name below the suffix), '
    '"*" (every destination) or an IP address'
)
"""The grammar of an ``intercept`` entry, as error messages state it."""

_REFUSAL_ALERTS: Final = {
    "TLSV1_ALERT_UNKNOWN_CA": "unknown_ca",
    "SSLV3_ALERT_BAD_CERTIFICATE": "bad_certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_unknown",
    "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE": "unsupported_certificate",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "certificate_expired",
    "SSLV3_ALERT_CERTIFICATE_REVOKED": "certificate_revoked",
    "TLSV1_ALERT_ACCESS_DENIED": "access_denied",
}
"""OpenSSL's ``SSLError.reason`` on the server side for the alerts by which a client says it does
not accept the certificate, and the alert's name in RFC 8446."""


def _quote(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)


def _ip(text: str) -> str | None:
    """The canonical form of the IP literal ``text`` (brackets allowed), or ``None``."""
    literal = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        return ipaddress.ip_address(literal).compressed
    except ValueError:
        return None


def normalise_host(host: str) -> str:
    """``host`` as patterns are compared with it: lower case, no trailing dot, an IP literal in
    its canonical form without brackets. Never raises; a malformed host simply matches no
    exact pattern."""
    name = host.lower()
    if name.endswith("."):
        name = name[:-1]
    if ":" in name:  # only an IPv6 literal has a colon
        return _ip(name) or name
    return name


def parse_pattern(text: str) -> str:
    """Check one ``intercept`` entry and return it normalised (Rule 1).

    Returns ``"*"``, ``"*.example.org"``, ``"example.com"`` or a canonical IP literal, lower
    case and without a trailing dot.

    Raises:
        ValueError: With the user message: it quotes ``text`` and says what is wrong.
    """
    shown = _quote(text)
    if text != text.strip():
        raise ValueError(f"{PATTERN_EXPECTED}, got {shown} (remove the spaces)")
    if text == "*":
        return text
    if not text:
        raise ValueError(f"{PATTERN_EXPECTED}, got an empty string")
    ip = _ip(text)
    if ip is not None:
        return ip
    if "/" in text:
        raise ValueError(
            f"{PATTERN_EXPECTED}, got {shown}: networks are not supported here, since a CONNECT names "
            "a host; list the addresses, or the names the clients ask for"
        )
    if text.startswith("~"):
        raise ValueError(f"{PATTERN_EXPECTED}, got {shown}: regular expressions are not supported here")
    if text.count(":") == 1 or text.startswith("["):
        raise ValueError(
            f"{PATTERN_EXPECTED}, got {shown}: leave out the port (connect_ports says which ports "
            "CONNECT may open)"
        )
    name = text.lower()
    prefix = ""
    if name.startswith("*."):
        prefix, name = "*.", name[2:]
    name = name.removesuffix(".")
    if prefix and not name:
        raise ValueError(
            f'{PATTERN_EXPECTED}, got {shown}: "*." needs a suffix, as in "*.example.org" ("*" alone '
            "intercepts everything)"
        )
    if "*" in name:
        raise ValueError(
            f'{PATTERN_EXPECTED}, got {shown}: "*" may only stand alone or as the whole first label, '
            'as in "*.example.org"'
        )
    if not name.isascii():
        try:
            hint = f' (write "{prefix}{name.encode("idna").decode("ascii")}")'
        except UnicodeError:
            hint = ""
        raise ValueError(f"{PATTERN_EXPECTED}, got {shown}: write a non-ASCII name in its xn-- form{hint}")
    if not is_hostname(name):
        raise ValueError(
            f"{PATTERN_EXPECTED}, got {shown}: labels are letters, digits and inner hyphens, "
            "1 to 63 characters, separated by single dots"
        )
    return prefix + name


class HostPatterns:
    """A parsed ``intercept`` list: which host names and IP literals it covers (Rule 1, Rule 2)."""

    __slots__ = ("everything", "exact", "patterns", "suffixes")

    def __init__(self, patterns: Iterable[str]) -> None:
        """Parse every entry with :func:`parse_pattern` (which raises :class:`ValueError`)."""
        parsed = tuple(parse_pattern(pattern) for pattern in patterns)
        self.patterns: tuple[str, ...] = parsed
        """The entries, normalised, in the order given."""
        self.everything: bool = "*" in parsed
        """Whether ``*`` is among them: every host matches."""
        self.exact: frozenset[str] = frozenset(p for p in parsed if not p.startswith("*"))
        """Exact names and IP literals."""
        self.suffixes: tuple[str, ...] = tuple(dict.fromkeys(p[1:] for p in parsed if p.startswith("*.")))
        """The ``*.suffix`` entries as ``".suffix"``, for ``str.endswith``."""

    def __bool__(self) -> bool:
        """Whether any entry was given (an empty list intercepts nothing)."""
        return bool(self.patterns)

    def matches(self, host: str) -> bool:
        """Whether ``host`` (as the client wrote it in CONNECT: any case, maybe a trailing dot,
        an IPv6 literal with or without brackets) is covered."""
        if self.everything:
            return True
        name = normalise_host(host)
        return name in self.exact or (bool(self.suffixes) and name.endswith(self.suffixes))


def refusal_detail(reason: str | None) -> str | None:
    """If an ``ssl.SSLError`` with this ``reason`` (raised on Portway's side of the handshake
    with the client) means the client refused the forged certificate, the alert's name
    (``"unknown_ca"``, ``"bad_certificate"``, ...); else ``None``.

    A client that closes the connection right after the ServerHello without an alert refuses
    too, but that shows as an EOF, not an alert; the caller reports it with a detail of its own.
    """
    return _REFUSAL_ALERTS.get(reason) if reason is not None else None


class Interception:
    """Which CONNECT destinations of one listener are intercepted, with what CA, and which hosts
    refused the forged certificate.

    One per ``http-proxy`` listener with ``intercept`` patterns, per configuration generation
    and worker (:attr:`portway.runtime.Runtime.intercepts`). Pure: the caller does the TLS and
    passes the time.
    """

    __slots__ = (
        "_pinned",
        "ca",
        "har",
        "max_pinned",
        "origin_context",
        "patterns",
        "pinning",
        "pinning_ttl",
        "refusals",
    )

    def __init__(
        self,
        patterns: HostPatterns | Iterable[str],
        ca: CertificateAuthority,
        origin_context: ssl.SSLContext,
        *,
        har: str | None = None,
        pinning: str = "log",
        pinning_ttl: float = 3600.0,
        max_pinned: int = MAX_PINNED,
    ) -> None:
        """Intercept the destinations ``patterns`` cover (parsed if given as strings).

        Raises:
            ValueError: A pattern is invalid, ``pinning`` is not one of :data:`PINNING_MODES`,
                ``pinning_ttl`` is not above 0 or ``max_pinned`` is below 1.
        """
        if pinning not in PINNING_MODES:
            raise ValueError(f"pinning: expected one of {', '.join(PINNING_MODES)}, got {pinning!r}")
        if not pinning_ttl > 0:
            raise ValueError(f"pinning_ttl: expected a duration above 0, got {pinning_ttl!r}")
        if max_pinned < 1:
            raise ValueError(f"max_pinned: expected at least 1, got {max_pinned!r}")
        if not isinstance(patterns, HostPatterns):
            patterns = HostPatterns(patterns)
        self.patterns: HostPatterns = patterns
        """The destinations intercepted."""
        self.ca: CertificateAuthority = ca
        """Mints the leaf certificates presented to clients (``leaf_context(host, alpn)``)."""
        self.origin_context: ssl.SSLContext = origin_context
        """Client context for TLS to the origin: verifies the chain (system store plus
        ``intercept_origin_ca``) and the name, TLS 1.2+, ALPN ``http/1.1``."""
        self.har: str | None = har
        """Absolute path of the HAR file to record intercepted requests in; ``None``: none."""
        self.pinning: str = pinning
        """``"log"`` or ``"passthrough"`` (Rule 3)."""
        self.pinning_ttl: float = pinning_ttl
        """Seconds a refusing host is passed through, in ``"passthrough"`` mode."""
        self.max_pinned: int = max_pinned
        """Most hosts remembered at once (Rule 5)."""
        self.refusals: int = 0
        """Refusals reported since this object was made (both modes)."""
        # host -> when it refused; in refusal order, so the oldest is first (expired or dropped first).
        self._pinned: collections.OrderedDict[str, float] = collections.OrderedDict()

    def should_intercept(self, host: str, now: float) -> bool:
        """Whether to intercept a CONNECT to ``host``: a pattern covers it, and (in
        ``"passthrough"`` mode) its clients have not refused the forged certificate within
        :attr:`pinning_ttl` of ``now``."""
        if not self.patterns.matches(host):
            return False
        pinned = self._pinned
        if not pinned:
            return True
        name = normalise_host(host)
        refused_at = pinned.get(name)
        if refused_at is None:
            return True
        if now < refused_at + self.pinning_ttl:
            return False
        del pinned[name]
        return True

    def client_refused(self, host: str, now: float, detail: str) -> bool:
        """Record that a client refused the certificate forged for ``host`` (``detail``, e.g. the
        alert's name, is for the caller's log line: see :meth:`describe_refusal`).

        Returns True when ``host`` will now be passed through (``"passthrough"`` mode), False in
        ``"log"`` mode, where it is intercepted again next time.
        """
        self.refusals += 1
        if self.pinning != "passthrough":
            return False
        pinned = self._pinned
        name = normalise_host(host)
        pinned[name] = now
        pinned.move_to_end(name)
        self._expire(now)
        while len(pinned) > self.max_pinned:
            pinned.popitem(last=False)
        return True

    def pinned_hosts(self, now: float) -> list[str]:
        """The hosts passed through at ``now`` because a client refused the forged certificate,
        the longest remembered first (always empty in ``"log"`` mode)."""
        self._expire(now)
        return list(self._pinned)

    def describe_refusal(self, host: str, detail: str, passthrough: bool) -> str:
        """The log line for a refusal: who refused what and what Portway does about it.

        ``passthrough`` is what :meth:`client_refused` returned.
        """
        what = f"a client refused the certificate Portway made for {host} ({detail})"
        if passthrough:
            return (
                f"{what}: it pins certificates or does not trust the interception CA; tunnels to {host} "
                f"now pass through uninspected for {format_duration(self.pinning_ttl)}"
            )
        return (
            f"{what}: it pins certificates or does not trust the interception CA; {host} stays "
            'intercepted (pinning = "log"; "passthrough" would tunnel it untouched)'
        )

    def inherit(self, previous: Interception) -> None:
        """Take over ``previous``'s memory of refusing hosts (on a reload that keeps the CA, so
        that a reload does not make pinned clients fail again). Only in ``"passthrough"`` mode;
        the bound of this object applies."""
        if self.pinning != "passthrough" or previous is self:
            return
        merged = {**previous._pinned}
        for name, refused_at in self._pinned.items():
            merged[name] = max(refused_at, merged.get(name, refused_at))
        ordered = sorted(merged.items(), key=lambda item: item[1])  # Rule 5 drops from the front
        self._pinned = collections.OrderedDict(ordered[-self.max_pinned :])

    def _expire(self, now: float) -> None:
        """Forget the hosts whose pass-through has ended (the oldest are first)."""
        pinned = self._pinned
        ttl = self.pinning_ttl
        while pinned:
            name, refused_at = next(iter(pinned.items()))
            if now < refused_at + ttl:
                break
            del pinned[name]
