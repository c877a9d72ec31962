"""Where a client-chosen destination may be dialled: allow-lists and the ranges refused by default.

When the client picks the destination (an SNI route that dials the name itself, later the
forward proxy and the gateway), the name is resolved and the check runs on the IP actually
dialled, so a name that resolves somewhere unexpected is caught.

Rules:

1. A destination is allowed only if an ``allow`` entry matches it: a network entry (CIDR or
   bare IP) that contains the IP, or a host-name entry (``db.internal``, ``*.lab.example.com``)
   that matches the name. Either may carry ``:port`` or ``:port-port``.
2. Addresses in the special ranges (loopback, link-local and so cloud metadata, private,
   CGNAT, unspecified, multicast, broadcast) are refused unless a *network* entry that lies
   inside that range contains them: ``127.0.0.1`` or ``10.20.0.0/16`` open what they name, but
   ``0.0.0.0/0`` ("the internet") opens no special range, and a host-name entry alone never
   does, since DNS answers are the client's to shape. IPv4-mapped IPv6 addresses are checked
   as the IPv4 address they carry.
3. ``deny`` entries (same grammar) refuse whatever they match, before any ``allow`` entry.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass

from portway.route.match import NameMatcher

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Refused for client-chosen destinations unless a network entry of ``allow`` contains them.
SPECIAL_RANGES: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), why)
    for net, why in (
        ("127.0.0.0/8", "loopback"),
        ("::1/128", "loopback"),
        ("169.254.0.0/16", "link-local (cloud metadata lives here)"),
        ("fe80::/10", "link-local"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("fc00::/7", "private"),
        ("100.64.0.0/10", "carrier-grade NAT"),
        ("0.0.0.0/8", "unspecified"),
        ("::/128", "unspecified"),
        ("224.0.0.0/4", "multicast"),
        ("ff00::/8", "multicast"),
        ("255.255.255.255/32", "broadcast"),
    )
)

ALLOW_EXPECTED = (
    "expected a CIDR or IP address, or a host pattern (exact or *.suffix), "
    'each optionally followed by :port or :port-port, like "10.20.0.0/16", "[fd00::/8]:443" '
    'or "*.lab.example.com:8000-8999"'
)
"""The grammar of an ``allow`` entry, as error messages state it."""

_PORTS = re.compile(r"(?P<lo>[0-9]{1,5})(?:-(?P<hi>[0-9]{1,5}))?", re.ASCII)
_IP_LIKE = re.compile(r"[0-9.]+(/.*)?|.*:.*|.*/.*", re.ASCII | re.DOTALL)


@dataclass(frozen=True, slots=True)
class AllowEntry:
    """One ``allow`` entry: a network or a host pattern, with a port range."""

    text: str
    network: IPNetwork | None
    name: NameMatcher | None
    port_lo: int = 1
    port_hi: int = 65535

    def matches(self, name: str | None, ip: IPAddress, port: int) -> bool:
        """True if this entry lets ``name`` (resolved to ``ip``) be dialled on ``port``."""
        if not self.port_lo <= port <= self.port_hi:
            return False
        if self.network is not None:
            return ip.version == self.network.version and ip in self.network
        return name is not None and self.name is not None and self.name.matches(name)


def parse_entry(text: str) -> AllowEntry:
    """Parse ``10.0.0.0/8``, ``10.1.2.3:443``, ``[fd00::/8]:443``, ``*.lab.example.com:8000-8999``.

    The one parser of the grammar: the configuration validates entries with it, so its
    :class:`ValueError` messages are the user's (they quote the entry).
    """
    shown = json.dumps(text, ensure_ascii=False)
    host, ports = text, ""
    if text.startswith("["):
        end = text.find("]")
        rest = text[end + 1 :] if end > 0 else ""
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"{ALLOW_EXPECTED}, got {shown}")
        host, ports = text[1:end], rest[1:]
        if ":" not in host:
            raise ValueError(f"only an IPv6 address or CIDR goes in brackets, got {shown}")
    elif text.count(":") == 1:
        host, _, ports = text.partition(":")
    lo, hi = 1, 65535
    if ports or text.endswith(":"):
        m = _PORTS.fullmatch(ports)
        lo = int(m["lo"]) if m else 0
        hi = int(m["hi"] or lo) if m else 0
        if not 1 <= lo <= hi <= 65535:
            raise ValueError(
                f"expected :port or :port-port with ports from 1 to 65535, low to high, got {shown}"
            )
    if _IP_LIKE.fullmatch(host):
        try:
            network = ipaddress.ip_network(host)
        except ValueError:
            try:
                loose = ipaddress.ip_network(host, strict=False)
            except ValueError:
                hint = ' (write an IPv6 address with a port in brackets, as in "[fd00::/8]:443")'
                raise ValueError(
                    f"{ALLOW_EXPECTED}, got {shown}" + (hint if host.count(":") > 1 else "")
                ) from None
            raise ValueError(
                f'expected a CIDR with no host bits set, got {shown} (did you mean "{loose}"?)'
            ) from None
        return AllowEntry(text, network, None, lo, hi)
    if host.startswith("~"):
        raise ValueError(
            f"expected an exact host name or a *.suffix pattern, got {shown} "
            "(regular expressions are not allowed in an allow-list)"
        )
    return AllowEntry(text, None, NameMatcher.parse(host), lo, hi)


def special_range(ip: IPAddress) -> str | None:
    """Why ``ip`` is refused by default ("loopback", "private", ...), or None."""
    found = _special(ip)
    return found[1] if found is not None else None


def _special(ip: IPAddress) -> tuple[IPNetwork, str] | None:
    for net, why in SPECIAL_RANGES:
        if ip.version == net.version and ip in net:
            return net, why
    return None


_DECIDED_MAX = 4096
"""Answers a policy remembers before it starts again."""


class DestPolicy:
    """An ``allow`` list, checked against the IP actually dialled."""

    __slots__ = ("_decided", "deny", "entries")

    def __init__(self, entries: Iterable[AllowEntry], deny: Iterable[AllowEntry] = ()) -> None:
        self.entries = tuple(entries)
        self.deny = tuple(deny)
        #: Recent answers by (name, ip, port): a policy never changes, and a gateway or a
        #: dial-by-name route asks about the same few destinations over and over.
        self._decided: dict[tuple[str | None, str, int], str | None] = {}

    @classmethod
    def parse(cls, texts: Iterable[str], deny: Iterable[str] = ()) -> DestPolicy:
        """Build from config strings; ValueError names the first bad entry."""
        return cls((parse_entry(t) for t in texts), (parse_entry(t) for t in deny))

    def check(self, name: str | None, ip: str, port: int) -> str | None:
        """None when ``name`` resolved to ``ip`` may be dialled on ``port``; else why not."""
        key = (name, ip, port)
        decided = self._decided
        if key in decided:
            return decided[key]
        if len(decided) >= _DECIDED_MAX:
            decided.clear()
        why = decided[key] = self._check(name, ip, port)
        return why

    def _check(self, name: str | None, ip: str, port: int) -> str | None:
        addr = ipaddress.ip_address(ip)
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        where = f"{name} ({addr}:{port})" if name else f"{addr}:{port}"
        for entry in self.deny:
            if entry.matches(name, addr, port):
                return f"{where} is denied by {entry.text!r}"
        found = _special(addr)
        for entry in self.entries:
            if not entry.matches(name, addr, port):
                continue
            if found is not None:
                net = entry.network
                if net is None or net.version != found[0].version or not net.subnet_of(found[0]):  # type: ignore[arg-type]
                    continue  # only an entry inside the special range opens it (Rule 2)
            return None
        if found is not None:
            return f"{where} is {found[1]}, and no allow entry lists its network"
        return f"{where} is not in the allow list"
