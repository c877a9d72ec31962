"""The route table of an ``sni`` listener: from what was sniffed to a target or a refusal.

One table routes both TLS (by the ClientHello's server name) and plaintext HTTP (by the
host part of ``Host``); :attr:`Sniffed.protocol` only changes the wording of refusals.

Strategy:

Rule 1. Pure. :meth:`RouteTable.decide` never raises, touches no socket and resolves no
        name: a dial route yields the host name and port to dial, and the I/O layer
        resolves it and applies the destination allow-list to the IP it dials.
Rule 2. Rules are tried in configuration order, and the first whose conditions all hold
        wins. A rule is a route with a ``match`` (name pattern), an ``alpn`` condition or a
        ``clients`` network condition, or any of them together; a rule without ``match``
        takes any name, or none. Put narrower rules first: an ``acme-tls/1`` rule must come
        before a plain ``*.example.com`` route, or the plain route takes the challenge.
Rule 3. Default routes (no ``match`` and no condition) are tried only when no rule won, in
        configuration order, wherever they appear in the list. A connection without a
        name (no SNI, no ``Host``) can only be taken by a rule without ``match`` or a
        default route; if that route dials by name, the connection is refused (there is
        nothing to dial), with no fall-through the config does not show.
Rule 4. Refusals carry the answer for both protocols (:data:`REFUSALS`):

        ==================  ============================  ==================  ====
        reason              when                          TLS alert           HTTP
        ==================  ============================  ==================  ====
        ``no_sni``          no name, no default route     handshake_failure   400
        ``no_route``        a name no route matches       unrecognized_name   404
        ``not_allowed``     a route's pattern matches,    handshake_failure   421
                            but not its ALPN/network
        ``no_dial_name``    a dial route, and no name     handshake_failure   400
        ``bad_dial_name``   a dial route, and a name      unrecognized_name   400
                            that is not a host name
        ==================  ============================  ==================  ====

Rule 5. ``decide`` is on the per-connection path: matchers are compiled and backend
        decisions built when the table is; a call allocates only a dial decision or a
        refusal (whose message quotes the client's name with ``repr``, safe for logs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from portway.route.match import NameMatcher, Networks, is_hostname, parse_ip

__all__ = [
    "ACTIONS",
    "DIAL_PLACEHOLDERS",
    "REFUSALS",
    "Decision",
    "Refusal",
    "Route",
    "RouteTable",
    "Sniffed",
]

ACTIONS: Final = frozenset({"passthrough", "terminate"})
"""The accepted values of :attr:`Route.action`."""

DIAL_PLACEHOLDERS: Final = ("{sni}", "{name}")
"""Placeholders of a dial template; both stand for the sniffed name (SNI or ``Host``)."""

REFUSALS: Final = {
    "no_sni": ("handshake_failure", 400),
    "no_route": ("unrecognized_name", 404),
    "not_allowed": ("handshake_failure", 421),
    "no_dial_name": ("handshake_failure", 400),
    "bad_dial_name": ("unrecognized_name", 400),
}
"""Every :attr:`Refusal.reason`, with its TLS alert and HTTP status (Rule 4)."""

_TEMPLATE_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-")


@dataclass(frozen=True, slots=True)
class Sniffed:
    """What a mode learned before routing."""

    name: str | None
    """The SNI, or the host part of ``Host`` (lower-cased, no port, no trailing dot); ``None`` if absent."""
    alpn: tuple[str, ...] = ()
    """Protocols the client offered (TLS ALPN), in its order; empty for plaintext HTTP."""
    client_ip: str = ""
    """The client's address without port (after PROXY protocol, if any)."""
    protocol: str = "tls"
    """``"tls"`` or ``"http"``."""


def _parse_dial(route_name: str, dial: str) -> tuple[str, str, int]:
    """Split a dial template ``[prefix]{sni}[suffix]:port`` into ``(prefix, suffix, port)``.

    Raises:
        ValueError: naming the route and quoting the template.
    """
    where = f"route {route_name!r}: dial {dial!r}"
    host, sep, port_text = dial.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{where}: expected '{{sni}}:port', as in '{{sni}}:443' (the port is required)")
    if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"{where}: port: expected 1..65535, got {port_text!r}")
    for placeholder in DIAL_PLACEHOLDERS:
        prefix, found, suffix = host.partition(placeholder)
        if found:
            break
    else:
        raise ValueError(
            f"{where}: expected the placeholder {{sni}} or {{name}} in the host part; "
            "for a fixed address use a backend"
        )
    for part in (prefix, suffix):
        if any(c not in _TEMPLATE_CHARS for c in part):
            raise ValueError(
                f"{where}: around the placeholder only letters, digits, '.' and '-' are allowed, "
                f"got {part!r} (one placeholder per template)"
            )
    if (
        (prefix and not prefix.endswith("."))
        or (suffix and not suffix.startswith("."))
        or not is_hostname(prefix + "x" + suffix)
    ):
        raise ValueError(
            f"{where}: text around the placeholder must be whole labels, as in '{{sni}}.internal:443'"
        )
    return prefix.lower(), suffix.lower(), int(port_text)


@dataclass(frozen=True, slots=True)
class Route:
    """One ``[[listener.route]]``: conditions, and a target (a backend pool or a dial template).

    Construction validates (``__post_init__``) and raises ``ValueError`` naming the route:
    exactly one of ``backend`` / ``dial``, a known ``action``, a dial template with a
    placeholder and a port.
    """

    name: str
    """For logs and metrics: ``"route[2]"`` or a configured label."""
    match: NameMatcher | None
    """The server name condition; ``None`` makes a default route (any name, or none)."""
    alpn: frozenset[str] = frozenset()
    """If non-empty, the client must offer at least one of these protocols."""
    networks: Networks | None = None
    """If non-empty, the client IP must be inside."""
    backend: str | None = None
    """Target: the name of a backend pool."""
    dial: str | None = None
    """Target: a template like ``"{sni}:443"`` or ``"{name}.internal:8443"``."""
    action: str = "passthrough"
    """``"passthrough"`` or ``"terminate"``; the mode acts on it."""
    offer_alpn: tuple[str, ...] = ()
    """A terminating route: the ALPN protocols offered to the client, preferred first."""
    _dial_prefix: str = field(default="", init=False, repr=False, compare=False)
    _dial_suffix: str = field(default="", init=False, repr=False, compare=False)
    _dial_port: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate the route and parse its dial template once."""
        where = f"route {self.name!r}"
        if isinstance(self.alpn, str):
            raise ValueError(
                f"{where}: alpn: expected a list of protocol names, got the string {self.alpn!r}"
            )
        if not isinstance(self.alpn, frozenset):
            object.__setattr__(self, "alpn", frozenset(self.alpn))
        if any(not p for p in self.alpn):
            raise ValueError(f"{where}: alpn: empty protocol name")
        if self.action not in ACTIONS:
            expected = ", ".join(sorted(ACTIONS))
            raise ValueError(f"{where}: action: expected one of {expected}, got {self.action!r}")
        if (self.backend is None) == (self.dial is None):
            raise ValueError(f"{where}: expected exactly one of 'backend' and 'dial'")
        if self.backend is not None and not self.backend:
            raise ValueError(f"{where}: backend: expected a backend name, got an empty string")
        if self.dial is not None:
            prefix, suffix, port = _parse_dial(self.name, self.dial)
            object.__setattr__(self, "_dial_prefix", prefix)
            object.__setattr__(self, "_dial_suffix", suffix)
            object.__setattr__(self, "_dial_port", port)

    @property
    def is_default(self) -> bool:
        """Whether this is a default route: no ``match`` and no ALPN or network condition.

        A route with a condition but no ``match`` (``alpn = ["acme-tls/1"]`` alone) is an
        ordinary rule, tried in its place; only unconditional catch-alls wait until the end.
        """
        return self.match is None and not self.alpn and not self.networks


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a connection goes."""

    route: Route
    """The route that won."""
    backend: str | None
    """The backend pool to dial, for a backend route."""
    dial_host: str | None
    """For a dial route: the name to resolve (the sniffed name, inside the template)."""
    dial_port: int | None
    """For a dial route: the port from the template."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is not routed, and what to answer (see :data:`REFUSALS`)."""

    reason: str
    """A machine word: a key of :data:`REFUSALS`."""
    message: str
    """A sentence for the log."""
    alert: str
    """The TLS alert to send: ``"unrecognized_name"`` or ``"handshake_failure"``."""
    http_status: int
    """The status for plaintext HTTP: 400, 404 or 421."""


def _refuse(reason: str, message: str) -> Refusal:
    """A :class:`Refusal` with the alert and status of ``reason``."""
    alert, status = REFUSALS[reason]
    return Refusal(reason, message, alert, status)


def _what(sniffed: Sniffed) -> str:
    """How the name was sent, for messages."""
    return "Host" if sniffed.protocol == "http" else "SNI"


class RouteTable:
    """The routes of one listener and the decision procedure (module docstring, Rules 2-4)."""

    __slots__ = ("_defaults", "_named", "routes")

    routes: tuple[Route, ...]
    """All routes, in configuration order."""

    def __init__(self, routes: Sequence[Route]) -> None:
        """Build the table; any number of default routes is allowed, anywhere in the list.

        Raises:
            ValueError: if two routes share a name (logs could not tell them apart).
        """
        seen: set[str] = set()
        for route in routes:
            if route.name in seen:
                raise ValueError(f"route name {route.name!r} is used twice")
            seen.add(route.name)
        self.routes = tuple(routes)
        # Backend decisions never change: build them once (Rule 5).
        entries = [
            (r, None if r.backend is None else Decision(r, r.backend, None, None)) for r in self.routes
        ]
        self._named = tuple((r, r.match, d) for r, d in entries if not r.is_default)
        self._defaults = tuple((r, d) for r, d in entries if r.is_default)

    def decide(self, sniffed: Sniffed) -> Decision | Refusal:
        """Route one connection. Never raises."""
        name = sniffed.name or None
        alpn = sniffed.alpn
        keys: tuple[int, int] | None = None
        parsed = False
        pattern_matched: Route | None = None
        for route, matcher, decision in self._named:
            if matcher is not None and (name is None or not matcher.matches(name)):
                continue
            if route.alpn and route.alpn.isdisjoint(alpn):
                if matcher is not None:
                    pattern_matched = pattern_matched or route
                continue
            networks = route.networks
            if networks:
                if not parsed:
                    keys, parsed = parse_ip(sniffed.client_ip), True
                if keys is None or not networks.contains_parsed(keys):
                    if matcher is not None:
                        pattern_matched = pattern_matched or route
                    continue
            return decision or self._dial(route, name, sniffed)
        for route, decision in self._defaults:
            return decision or self._dial(route, name, sniffed)
        if name is None:
            return _refuse(
                "no_sni", f"the client sent no {_what(sniffed)} and no default route accepts the connection"
            )
        if pattern_matched is not None:
            return _refuse(
                "not_allowed",
                f"{_what(sniffed)} {name!r} matches {pattern_matched.name}, but the client "
                f"{sniffed.client_ip!r} (ALPN {list(alpn)!r}) does not meet its alpn/networks condition",
            )
        return _refuse("no_route", f"no route for {_what(sniffed)} {name!r}")

    @staticmethod
    def _dial(route: Route, name: str | None, sniffed: Sniffed) -> Decision | Refusal:
        """The decision for dial ``route`` and the sniffed ``name``, or a refusal (no or bad name)."""
        if name is None:
            return _refuse(
                "no_dial_name",
                f"{route.name} dials the client's server name, but the client sent no {_what(sniffed)}",
            )
        if not is_hostname(name):
            return _refuse(
                "bad_dial_name",
                f"{route.name} dials the client's server name, but {_what(sniffed)} {name!r} "
                "is not a valid host name",
            )
        host = route._dial_prefix + name.lower() + route._dial_suffix
        if len(host) > 253:
            return _refuse(
                "bad_dial_name",
                f"{route.name}: {_what(sniffed)} {name!r} makes a host name longer than 253 characters",
            )
        return Decision(route, None, host, route._dial_port)

    def __repr__(self) -> str:
        """``RouteTable([route names])``."""
        return f"RouteTable({[r.name for r in self.routes]!r})"
