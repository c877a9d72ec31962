"""Server name matchers and client network sets: the conditions of a route.

Strategy:

Rule 1. Everything here is pure and built once, from configuration strings. Parsing
        validates in full and raises ``ValueError`` with a sentence that quotes the bad
        input; matching never raises and never compiles anything.
Rule 2. A server name pattern is one of three kinds (``NameMatcher.kind``):

        * ``exact``: ``app.example.com``. Case-insensitive. A trailing dot is an error,
          because names (SNI, or the host part of ``Host``) are matched without one.
        * ``wildcard``: ``*.example.com``. The ``*`` stands for exactly ONE label: it
          matches ``a.example.com`` but not ``a.b.example.com``, and not ``example.com``
          itself. ``example.com`` needs its own exact route, or one regex route such as
          ``~^(.+\\.)?example\\.com$`` covers the name and every name below it. Only a
          leading ``*.`` is allowed (``a.*.com``, ``*example.com``, ``**.x`` are errors).
        * ``regex``: ``~`` followed by a Python regular expression, applied with
          :func:`re.fullmatch` to the lower-cased name. Write it in lower case.

        Exact and wildcard patterns are validated as host names: labels of letters,
        digits and ``-`` (not first or last), 1 to 63 characters each, 253 at most in
        all. IDNA names are written in their ``xn--`` form.
Rule 3. Names given to :meth:`NameMatcher.matches` are expected to be lower-cased and
        without a trailing dot (the sniffer normalises them); matching is still
        case-insensitive, at the cost of one ``lower()`` only when the name is not
        already lower case. A name with a non-ASCII character matches no pattern, not
        even a regex: host names travel in their ``xn--`` form.
Rule 4. :class:`Networks` holds CIDRs as integer (network, mask) pairs. An IPv4 address
        and its IPv4-mapped IPv6 form (``::ffff:192.0.2.1``, what a dual-stack socket
        reports) are the same client: each is checked in both forms.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

__all__ = ["MATCH_KINDS", "NameMatcher", "Networks", "is_hostname", "parse_ip"]

MATCH_KINDS: Final = frozenset({"exact", "wildcard", "regex"})
"""The values of :attr:`NameMatcher.kind`."""

_LABEL_RE: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII | re.IGNORECASE)
_HOSTNAME_RE: Final = re.compile(
    r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?",
    re.ASCII | re.IGNORECASE,
)
_MAX_NAME: Final = 253
_EXAMPLES: Final = (
    "expected a name like 'app.example.com', a wildcard like '*.example.com' "
    "or a regex like '~^api-[0-9]+\\.example\\.com$'"
)

_MAPPED_PREFIX: Final = 0xFFFF << 32
"""``::ffff:0:0``: IPv4-mapped IPv6 addresses are this plus the IPv4 address."""
_V4_ALL: Final = 0xFFFFFFFF


def is_hostname(name: str) -> bool:
    """Whether ``name`` is a syntactically valid host name (LDH labels, any case, no trailing dot).

    Cheap (one precompiled regex); used before a client-chosen name is dialled.
    """
    return len(name) <= _MAX_NAME and _HOSTNAME_RE.fullmatch(name) is not None


def _lower(name: str) -> str:
    """``name`` in lower case, without a copy when it already is."""
    return name if name.islower() else name.lower()


def _check_hostname(host: str, pattern: str) -> None:
    """Raise ``ValueError`` naming ``pattern`` unless ``host`` is a valid host name."""
    if not host.isascii():
        try:
            suggestion = f" ({host.encode('idna').decode('ascii')!r})"
        except UnicodeError:
            suggestion = ""
        raise ValueError(
            f"server name pattern {pattern!r}: non-ASCII name; write it in its IDNA 'xn--' form{suggestion}"
        )
    if host.endswith("."):
        raise ValueError(
            f"server name pattern {pattern!r}: remove the trailing dot (names are matched without one)"
        )
    if len(host) > _MAX_NAME:
        raise ValueError(
            f"server name pattern {pattern!r}: a host name has at most {_MAX_NAME} characters, "
            f"this one has {len(host)}"
        )
    for label in host.split("."):
        if not label:
            raise ValueError(
                f"server name pattern {pattern!r}: empty label (two dots in a row, or a dot first)"
            )
        if len(label) > 63:
            raise ValueError(
                f"server name pattern {pattern!r}: label {label[:20]!r}... has {len(label)} characters, "
                "at most 63 are allowed"
            )
        if _LABEL_RE.fullmatch(label) is None:
            raise ValueError(
                f"server name pattern {pattern!r}: label {label!r} may hold only letters, digits and '-', "
                "and may not start or end with '-'"
            )


class NameMatcher:
    """A server name condition built from a configuration string (see the module docstring).

    Matchers compare equal when they were parsed from the same pattern.
    """

    __slots__ = ("_regex", "_value", "kind", "pattern")

    kind: str
    """``"exact"``, ``"wildcard"`` or ``"regex"``."""
    pattern: str
    """The configuration string it was parsed from, as written."""

    def __init__(self, kind: str, pattern: str, value: str, regex: re.Pattern[str] | None) -> None:
        """Store a parsed matcher; use :meth:`parse` instead."""
        self.kind = kind
        self.pattern = pattern
        # exact: the lower-cased name; wildcard: the lower-cased suffix with its leading dot.
        self._value = value
        self._regex = regex

    @classmethod
    def parse(cls, pattern: str) -> NameMatcher:
        """Parse ``app.example.com``, ``*.example.com`` or ``~regex``.

        Raises:
            ValueError: with a sentence that quotes ``pattern`` and says what is wrong.
        """
        if not pattern:
            raise ValueError(f"empty server name pattern: {_EXAMPLES}")
        if pattern.startswith("~"):
            source = pattern[1:]
            if not source:
                raise ValueError(f"server name pattern {pattern!r}: empty regular expression after '~'")
            try:
                regex = re.compile(source)
            except re.error as exc:
                raise ValueError(
                    f"server name pattern {pattern!r}: invalid regular expression: {exc}"
                ) from None
            return cls("regex", pattern, source, regex)
        if pattern != pattern.strip():
            raise ValueError(f"server name pattern {pattern!r}: remove the surrounding whitespace")
        if "*" in pattern:
            if pattern == "*" or pattern == "*.":
                raise ValueError(
                    f"server name pattern {pattern!r}: '*' needs a suffix, as in '*.example.com'; "
                    "for a catch-all route leave out 'match'"
                )
            suffix = pattern[2:]
            if not pattern.startswith("*.") or "*" in suffix:
                raise ValueError(
                    f"server name pattern {pattern!r}: '*' is allowed only as the whole first label, "
                    f"as in '*.example.com' (it stands for exactly one label); {_EXAMPLES}"
                )
            _check_hostname(suffix, pattern)
            return cls("wildcard", pattern, "." + suffix.lower(), None)
        _check_hostname(pattern, pattern)
        return cls("exact", pattern, pattern.lower(), None)

    def matches(self, name: str) -> bool:
        """Whether ``name`` (a server name without a trailing dot) satisfies this pattern."""
        kind = self.kind
        if not name.isascii():
            # Host names are ASCII (IDNA A-labels); this also keeps KELVIN SIGN from lower-casing to "k".
            return False
        if kind == "exact":
            value = self._value
            return len(name) == len(value) and (name == value or name.lower() == value)
        name = _lower(name)
        if kind == "wildcard":
            suffix = self._value
            cut = len(name) - len(suffix)
            # One label: something before the suffix, and no dot in it.
            return cut > 0 and name.endswith(suffix) and name.find(".", 0, cut) < 0
        regex = self._regex
        assert regex is not None
        return regex.fullmatch(name) is not None

    def __eq__(self, other: object) -> bool:
        """Equal when parsed from the same pattern string."""
        if not isinstance(other, NameMatcher):
            return NotImplemented
        return self.pattern == other.pattern

    def __hash__(self) -> int:
        """Hash of the pattern string."""
        return hash(self.pattern)

    def __repr__(self) -> str:
        """``NameMatcher.parse('*.example.com')``."""
        return f"NameMatcher.parse({self.pattern!r})"


def parse_ip(ip: str) -> tuple[int, int] | None:
    """``(ipv4, ipv6)`` integers for an address, each form derived from the other, or ``None``.

    The argument of :meth:`Networks.contains_parsed`: a caller that checks one client
    against several sets parses its address once.

    IPv4 ``a.b.c.d`` gives its integer and that of ``::ffff:a.b.c.d``. An IPv4-mapped
    IPv6 address gives both likewise. Any other IPv6 address gives ``-1`` for IPv4.
    """
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return None
    value = int(address)
    if address.version == 4:
        return value, _MAPPED_PREFIX | value
    if value >> 32 == 0xFFFF:
        return value & _V4_ALL, value
    return -1, value


class Networks:
    """A set of client networks: CIDRs or bare IPs (``/32``, ``/128``), IPv4 and IPv6.

    An empty set is falsy; a route treats it as "no network condition".
    """

    __slots__ = ("_v4", "_v6", "networks")

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    """The parsed networks, in configuration order."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        """Hold ``networks``; use :meth:`parse` to build one from configuration strings."""
        self.networks = tuple(networks)
        self._v4 = tuple((int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 4)
        self._v6 = tuple((int(n.network_address), int(n.netmask)) for n in self.networks if n.version == 6)

    @classmethod
    def parse(cls, entries: Iterable[str]) -> Networks:
        """Parse CIDRs (``10.0.0.0/8``, ``2001:db8::/32``) and bare IPs (``192.0.2.7``, ``::1``).

        Raises:
            ValueError: for a string instead of a list, or an entry that is not an IP
                address or CIDR, or a CIDR with host bits set (the message suggests the
                network that was probably meant).
        """
        if isinstance(entries, str):
            raise ValueError(
                f"networks: expected a list of CIDRs or IP addresses, got the string {entries!r}"
            )
        parsed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            text = entry.strip()
            try:
                parsed.append(ipaddress.ip_network(text, strict=True))
                continue
            except ValueError:
                pass
            try:
                loose = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise ValueError(
                    f"networks: {entry!r} is not an IP address or CIDR "
                    "(expected e.g. '10.0.0.0/8', '192.0.2.7', '2001:db8::/32' or '::1')"
                ) from None
            raise ValueError(f"networks: {entry!r} has host bits set; did you mean {str(loose)!r}?")
        return cls(parsed)

    def contains(self, ip: str) -> bool:
        """Whether the address ``ip`` (no port, no brackets) is in one of the networks.

        ``::ffff:a.b.c.d`` and ``a.b.c.d`` are the same client. Anything that is not an IP
        address is in no network.
        """
        keys = parse_ip(ip)
        return keys is not None and self.contains_parsed(keys)

    def contains_parsed(self, keys: tuple[int, int]) -> bool:
        """:meth:`contains` for an address already converted by :func:`parse_ip`."""
        v4, v6 = keys
        if v4 >= 0 and any(v4 & mask == network for network, mask in self._v4):
            return True
        return any(v6 & mask == network for network, mask in self._v6)

    def __len__(self) -> int:
        """The number of networks."""
        return len(self.networks)

    def __eq__(self, other: object) -> bool:
        """Equal when they hold the same networks in the same order."""
        if not isinstance(other, Networks):
            return NotImplemented
        return self.networks == other.networks

    def __hash__(self) -> int:
        """Hash of the networks."""
        return hash(self.networks)

    def __repr__(self) -> str:
        """``Networks.parse(['10.0.0.0/8', '::1/128'])``."""
        return f"Networks.parse({[str(n) for n in self.networks]!r})"
