"""The configuration model: the TOML document's schema and the resolved runtime types.

Strategy
    A configuration goes through two shapes.

    1. **The document** (``*Doc`` classes, pydantic v2, ``extra="forbid"``,
       ``strict=True``) mirrors the TOML file key for key. It says what may be
       written and checks each value on its own: types, ranges, durations,
       addresses. Optional keys stay ``None`` here ("not written"), so that the
       next step can tell "inherit" from "set".
    2. **The runtime spec** (frozen, slotted dataclasses: :class:`Config`,
       :class:`ListenerSpec`, :class:`BackendSpec`, ...) is what the rest of Portway
       reads. Every default is resolved, every duration is float seconds, every
       path is absolute, every bind host is a normalised IP literal. Nothing in it
       is optional unless it means "off" (``health_check is None``).

    :mod:`portway.config.load` turns (1) into (2), runs the cross-checks that need
    the whole document, and reports every problem at once.

Modes
    A listener's ``mode`` selects its document class in :data:`LISTENER_MODES`.
    Every mode shares :class:`ListenerDoc` (name, bind, limits, timeouts, PROXY
    protocol intake) and adds its own keys; ``tcp`` adds ``backend``; ``sni`` and ``tls``
    share :class:`RoutingListenerDoc` (``route``, a list of :class:`RouteDoc`, and the
    TLS keys ``certificates``, ``tls_min_version``, ``offer_alpn``), and ``tls`` adds
    ``backend`` as the alternative to routes. To add a mode,
    subclass :class:`ListenerDoc`, override :meth:`ListenerDoc.backend_refs` so the
    loader can check the backends it names (and :meth:`ListenerDoc.route_specs` if
    it routes), register it in :data:`LISTENER_MODES` and remove it from
    :data:`PLANNED_MODES`.

Value validators
    Scalars with rules (durations, addresses, names, choices, ranged integers) are
    checked by small ``BeforeValidator`` functions that raise :class:`ValueError`
    with the finished user message (``expected ..., got "..."``); the loader shows
    that message unchanged. A check that spans several keys of a table raises
    :class:`KeyedValueError` to say which key below the table the problem is at.
"""

from __future__ import annotations

import contextlib
import difflib
import ipaddress
import json
import re
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Final, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from portway.config.units import format_hostport, parse_duration, parse_hostport
from portway.net.mitmca import DEFAULT_DIRECTORY as DEFAULT_CA_DIRECTORY
from portway.route.destpolicy import ALLOW_EXPECTED, parse_entry
from portway.route.intercept import PATTERN_EXPECTED, PINNING_MODES, parse_pattern
from portway.route.match import NameMatcher, Networks
from portway.route.table import Route

__all__ = [
    "LISTENER_MODES",
    "NAME_PATTERN",
    "PLANNED_MODES",
    "SNI_PLACEHOLDER",
    "AdminDoc",
    "AdminSpec",
    "BackendDoc",
    "BackendSpec",
    "BackendTls",
    "BackendTlsDoc",
    "BindSpec",
    "CertFile",
    "CertFileDoc",
    "Config",
    "DefaultsDoc",
    "DocumentDoc",
    "Eject",
    "EjectDoc",
    "FrozenMap",
    "GatewayListenerDoc",
    "GatewaySpec",
    "HealthCheck",
    "HealthCheckDoc",
    "HttpProxyListenerDoc",
    "HttpProxySpec",
    "InterceptSpec",
    "Keepalive",
    "KeepaliveDoc",
    "KeyedValueError",
    "ListenerDoc",
    "ListenerSpec",
    "LogDoc",
    "LogSpec",
    "ProxyProtocolDoc",
    "ProxyProtocolIn",
    "RouteDoc",
    "RouteSpec",
    "RoutingListenerDoc",
    "ServerDoc",
    "ServerSpec",
    "SniListenerDoc",
    "SourceLimit",
    "SourceLimitDoc",
    "TcpListenerDoc",
    "TlsListenerDoc",
    "TlsSpec",
    "parse_bind",
    "quote",
    "suggest",
]

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
"""An IPv4 or IPv6 network, as ``ipaddress`` parses a CIDR."""

# ---------------------------------------------------------------------------
# Runtime types: what the rest of Portway imports.
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Keepalive:
    """TCP keepalive settings applied to both sides of a relayed connection.

    All three are whole numbers, as the kernel wants them (``TCP_KEEPIDLE``,
    ``TCP_KEEPINTVL``, ``TCP_KEEPCNT``).
    """

    idle: float
    """Seconds of silence before the first probe."""
    interval: float
    """Seconds between probes."""
    count: int
    """Unanswered probes before the connection is declared dead."""


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """Active health checking of a backend's servers (a TCP connect per check)."""

    interval: float
    """Seconds between two checks of one server."""
    timeout: float
    """Seconds a check may take before it counts as a failure."""
    rise: int
    """Consecutive successes that bring a down server back up."""
    fall: int
    """Consecutive failures that take an up server down."""


@dataclass(frozen=True, slots=True)
class Eject:
    """Passive ejection: take a server out after real connections fail to reach it."""

    failures: int
    """Consecutive connect failures that eject a server; 0 disables ejection."""
    cooldown: float
    """Seconds an ejected server stays out before it is tried again."""


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """One server of a backend pool."""

    name: str
    """Unique within its backend; defaults to the address as written."""
    host: str
    """An IP literal (normalised, no brackets) or a DNS name resolved at dial time."""
    port: int
    """1-65535."""
    weight: int
    """0-256; 0 takes the server out of balancing without removing it."""
    backup: bool
    """Used only when no non-backup server is available."""

    @property
    def address(self) -> str:
        """``host:port``, with brackets around an IPv6 host."""
        return format_hostport(self.host, self.port)


@dataclass(frozen=True, slots=True)
class BackendTls:
    """TLS from Portway to a backend's servers (``tls = true`` or ``tls = { ... }``)."""

    verify: bool
    """Verify the server's certificate chain and name (default true)."""
    ca: str | None
    """Absolute path of a PEM file of trusted CAs; ``None``: the system's trust store."""
    server_name: str | None
    """The name sent as SNI and verified: ``None`` means each server's own host (name or IP);
    the literal ``"{sni}"`` means the name the client asked for (its SNI or Host)."""


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """A pool of servers that listeners forward to, with its dialling policy."""

    name: str
    balance: str
    """``"roundrobin"``, ``"leastconn"``, ``"random"`` or ``"source"``."""
    servers: tuple[ServerSpec, ...]
    """In file order; never empty, and at least one is not a backup."""
    connect_timeout: float
    """Seconds one connect attempt may take."""
    retries: int
    """Extra connect attempts on other servers after the first fails."""
    health_check: HealthCheck | None
    """``None``: no active checks (passive ejection still applies)."""
    eject: Eject
    send_proxy_protocol: str
    """``"off"``, ``"v1"`` or ``"v2"``: the PROXY header sent to the servers."""
    tls: BackendTls | None = None
    """``None``: plaintext to the servers; else TLS is originated to each server."""

    def server(self, name: str) -> ServerSpec:
        """The server called ``name``; raises :class:`KeyError` if there is none."""
        for spec in self.servers:
            if spec.name == name:
                return spec
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class BindSpec:
    """One address a listener accepts on.

    ``host`` is a normalised IP literal (``"127.0.0.1"``, ``"::"``); the
    configuration's ``"*"`` becomes ``"0.0.0.0"`` and ``"localhost"`` becomes
    ``"127.0.0.1"``. ``port`` 0 asks the kernel for an ephemeral port.
    """

    host: str
    port: int

    @property
    def family(self) -> socket.AddressFamily:
        """``socket.AF_INET6`` for an IPv6 host, else ``socket.AF_INET``."""
        return socket.AF_INET6 if ":" in self.host else socket.AF_INET

    def __str__(self) -> str:
        """``"host:port"``, or ``"[v6]:port"`` for IPv6."""
        return format_hostport(self.host, self.port)


@dataclass(frozen=True, slots=True)
class ProxyProtocolIn:
    """Whether a listener reads a PROXY protocol header, and from whom.

    ``accept`` is ``"off"`` (never read one), ``"optional"`` (read one if a trusted
    peer sends it) or ``"required"`` (a trusted peer must send one). Headers are
    honoured only from peers in ``trusted``.
    """

    accept: str
    trusted: tuple[IPNetwork, ...]

    def trusts(self, ip: str) -> bool:
        """Whether the peer address ``ip`` is in a trusted network.

        An IPv4-mapped IPv6 address (``"::ffff:10.1.2.3"``, as a dual-stack socket
        reports an IPv4 peer) is checked as the IPv4 address it carries. A string
        that is not an IP address is not trusted.
        """
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate.version == net.version and candidate in net
            for candidate in candidates
            for net in self.trusted
        )


@dataclass(frozen=True, slots=True)
class CertFile:
    """One certificate a listener serves: a PEM chain and its private key."""

    cert: str
    """Absolute path of the PEM certificate chain (leaf first)."""
    key: str | None
    """Absolute path of the PEM private key; ``None``: the key is in :attr:`cert` too."""


@dataclass(frozen=True, slots=True)
class TlsSpec:
    """How a listener terminates TLS: its certificates and protocol settings."""

    certificates: tuple[CertFile, ...]
    """Never empty. Picked by the client's server name: exact, then one-label wildcard, then
    the default (the first listed)."""
    min_version: str
    """``"1.2"`` or ``"1.3"``: the oldest TLS version accepted."""
    offer_alpn: tuple[str, ...]
    """ALPN protocols offered by default (routes may set their own); empty: no ALPN."""


@dataclass(frozen=True, slots=True)
class SourceLimit:
    """How a gateway slows down, then refuses, a source address whose handshakes keep failing.

    A token bucket per source: each failed handshake takes one token; ``rate`` tokens per
    second come back, up to ``burst``. Below half a bucket the source's answers are delayed;
    with none left it is refused for ``ban`` seconds.
    """

    rate: float
    burst: int
    ban: float


@dataclass(frozen=True, slots=True)
class GatewaySpec:
    """A ``gateway`` listener's keys, destination policy and handshake limits."""

    secrets_file: str | None
    """Absolute path of the v1 passphrases (one per line), or ``None``."""
    secrets_env: str | None
    """Environment variable holding the v1 passphrases (one per line), or ``None``."""
    keyring_file: str | None
    """Absolute path of the v2 keyring, or ``None``."""
    keyring_env: str | None
    """Environment variable holding the v2 keyring, or ``None``."""
    accept_v1: bool
    """Whether v1 (frontd) tokens are accepted; always false without v1 secrets."""
    v1_digest: str
    """``"md5"`` (what ``openssl enc -md md5`` and frontd use) or ``"sha256"``."""
    allow: tuple[str, ...]
    """Where tokens may send connections (never empty); see :mod:`portway.route.destpolicy`."""
    line_limit: int
    """Most bytes before the token line's newline."""
    max_pending: int
    """Handshakes in progress at once on this listener (split over the workers)."""
    connect_timeout: float
    """Seconds one connect attempt to the backend may take."""
    retries: int
    """Extra connect attempts after a timeout (a refusal is not retried)."""
    source_limit: SourceLimit


@dataclass(frozen=True, slots=True)
class HttpProxySpec:
    """An ``http-proxy`` listener's users, destination rules, tunnel ports and TLS interception."""

    users_file: str | None
    """Absolute path of the htpasswd (bcrypt) file; ``None``: no authentication."""
    socks5: bool
    """Whether SOCKS5 is served on the same port (the first byte 0x05 tells)."""
    connect_ports: tuple[tuple[int, int], ...]
    """Port ranges a CONNECT may open (squid's default: 443 only)."""
    allow: tuple[str, ...]
    """Where clients may go (:mod:`portway.route.destpolicy`); special ranges only by a network
    entry inside them."""
    deny: tuple[str, ...]
    """Refused before ``allow`` is looked at (same grammar)."""
    x_forwarded_for: bool
    """Add ``X-Forwarded-For`` to plain-HTTP requests."""
    connect_timeout: float
    retries: int
    """Extra connect attempts after a timeout."""
    intercept: InterceptSpec | None = None
    """How CONNECT tunnels are intercepted; ``None``: never (``intercept`` empty or absent)."""


@dataclass(frozen=True, slots=True)
class InterceptSpec:
    """An ``http-proxy`` listener's TLS interception: its ``intercept*``, ``har`` and ``pinning*`` keys.

    Built only when ``intercept`` lists at least one destination; the loader has then read the
    CA (and the origin CA file) once, so they load. :class:`portway.route.intercept.Interception`
    is the runtime object made from it.
    """

    patterns: tuple[str, ...]
    """The ``intercept`` entries as written (never empty): exact names, ``*.suffix``, ``*`` or IP
    literals (:func:`portway.route.intercept.parse_pattern`)."""
    ca: str
    """Absolute path of the CA directory (``ca.pem`` and ``ca-key.pem``, as ``portway ca init`` makes)."""
    origin_ca: str | None
    """Absolute path of a PEM file of CAs trusted for origins besides the system's; ``None``: none."""
    har: str | None
    """Absolute path of the HAR file for intercepted requests; ``None``: no recording."""
    pinning: str
    """``"log"`` or ``"passthrough"``: what a client's refusal of the forged certificate leads to."""
    pinning_ttl: float
    """Seconds a refusing host is passed through (``"passthrough"`` mode)."""


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """One ``[[listener.route]]`` of an ``sni`` listener, as written and validated.

    Strings are kept as written: :meth:`portway.route.match.NameMatcher.parse`,
    :meth:`portway.route.match.Networks.parse` and :class:`portway.route.table.Route`
    accept every one of them.
    """

    name: str
    """The ``name`` key, or ``"route[<index>]"`` (index in the listener, from 0); unique in the listener."""
    match: str | None
    """The server name pattern (exact, ``*.suffix`` or ``~regex``); ``None``: a default route."""
    alpn: tuple[str, ...]
    """If non-empty, the client must offer one of these ALPN protocols."""
    clients: tuple[str, ...]
    """If non-empty, the client IP must be in one of these CIDRs or IPs."""
    backend: str | None
    """Target: a backend (it exists in :attr:`Config.backends`); ``None`` for a dial route."""
    dial: str | None
    """Target: a dial template such as ``"{sni}:443"``; ``None`` for a backend route."""
    allow: tuple[str, ...]
    """Where a dial route's destination may be (never empty for a dial route, empty otherwise)."""
    action: str
    """``"passthrough"`` (relay the client's TLS untouched) or ``"terminate"`` (complete the
    handshake here with the listener's certificates and forward plaintext)."""
    offer_alpn: tuple[str, ...] = ()
    """A terminating route: the ALPN protocols offered, in server preference order (the
    route's own ``offer_alpn``, else the listener's); empty: no ALPN."""


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """A listener with every default resolved."""

    name: str
    mode: str
    """``"tcp"``, ``"sni"`` or ``"tls"``."""
    bind: tuple[BindSpec, ...]
    """Never empty; no address appears twice across the whole config (port 0 aside)."""
    backend: str | None
    """The backend a ``tcp`` listener forwards to (it exists in :attr:`Config.backends`);
    ``None`` for an ``sni`` listener (its routes name theirs)."""
    max_connections: int
    """Live connections of this listener (split evenly over the workers); more wait in the backlog."""
    sniff_timeout: float
    """Deadline in seconds on everything read before routing."""
    idle_timeout: float
    """Seconds without traffic in either direction before closing; 0 = never."""
    keepalive: Keepalive | None
    """``None``: TCP keepalive off."""
    relay: str
    """``"auto"`` (copy small exchanges, splice bulk), ``"splice"`` or ``"copy"``."""
    backlog: int
    """The ``listen(2)`` backlog."""
    proxy_protocol: ProxyProtocolIn
    routes: tuple[RouteSpec, ...] = ()
    """An ``sni`` or ``tls`` listener's routes in file order (never empty there); empty for ``tcp``."""
    tls: TlsSpec | None = None
    """Certificates and settings for terminating TLS (``tls`` mode, or ``sni`` routes with
    ``action = "terminate"``); ``None`` when the listener terminates nothing."""
    gateway: GatewaySpec | None = None
    """The ``gateway`` mode's keys and policy; ``None`` for the other modes."""
    http_proxy: HttpProxySpec | None = None
    """The ``http-proxy`` mode's users and rules; ``None`` for the other modes."""


@dataclass(frozen=True, slots=True)
class AdminSpec:
    """The admin endpoint (``/metrics``, ``/stats``, ``/healthz``, dashboard)."""

    listen: BindSpec | None
    """``None``: the admin endpoint is off."""


@dataclass(frozen=True, slots=True)
class LogSpec:
    """Where the access log goes and how the operational log is filtered."""

    access: str
    """``"stdout"``, ``"stderr"``, ``"off"`` or an absolute file path."""
    format: str
    """Access log format: ``"text"`` or ``"json"``."""
    level: str
    """Operational log level (on stderr): ``"debug"``, ``"info"``, ``"warning"``, ``"error"``."""


_K = TypeVar("_K")
_V = TypeVar("_V")


class FrozenMap(Mapping[_K, _V]):
    """A read-only mapping that keeps insertion order, compares equal by content
    and pickles (unlike :class:`types.MappingProxyType`)."""

    __slots__ = ("_data",)

    def __init__(self, items: Mapping[_K, _V] | None = None) -> None:
        """Copy ``items``; later changes to the source do not show through."""
        self._data: dict[_K, _V] = dict(items or {})

    def __getitem__(self, key: _K) -> _V:
        """The value for ``key``; :class:`KeyError` if absent."""
        return self._data[key]

    def __iter__(self) -> Iterator[_K]:
        """Keys in insertion order."""
        return iter(self._data)

    def __len__(self) -> int:
        """Number of entries."""
        return len(self._data)

    def __repr__(self) -> str:
        """``FrozenMap({...})``."""
        return f"FrozenMap({self._data!r})"

    def __getstate__(self) -> dict[_K, _V]:
        """Pickle support: the underlying dict."""
        return self._data

    def __setstate__(self, state: dict[_K, _V]) -> None:
        """Pickle support."""
        self._data = state


@dataclass(frozen=True, slots=True)
class Config:
    """A validated, fully resolved, immutable configuration.

    Build one with :func:`portway.config.load.load_file`, ``load_text`` or
    ``load_dict``; never by hand. Backends are looked up by name with
    ``config.backends[name]`` (a read-only mapping in file order) or
    :meth:`backend`; listeners are a tuple in file order, or :meth:`listener` by
    name.

    :attr:`raw` is the document as parsed (plain dicts, lists, strings, numbers and
    booleans, so it is JSON-able): ``load_dict(config.raw, config.source)`` rebuilds
    an equal Config, which is how the supervisor hands the configuration to its
    workers. Do not mutate it. Relative paths in it are resolved against the
    directory of :attr:`source`, so reload it from the same working directory.
    """

    source: str
    """Where the configuration came from, as named in error messages."""
    workers: int
    """Number of worker processes (>= 1)."""
    workers_auto: bool
    """True when ``workers = "auto"`` chose :attr:`workers` from the CPU affinity."""
    pid_file: str | None
    """Absolute path of the supervisor's pid file, or ``None``."""
    drain_timeout: float
    """Seconds ``SIGTERM`` waits for live connections before closing them."""
    admin: AdminSpec
    log: LogSpec
    listeners: tuple[ListenerSpec, ...]
    backends: Mapping[str, BackendSpec] = field(hash=False)
    raw: dict[str, Any] = field(hash=False, repr=False)

    def backend(self, name: str) -> BackendSpec:
        """The backend called ``name``; raises :class:`KeyError` if there is none."""
        return self.backends[name]

    def listener(self, name: str) -> ListenerSpec:
        """The listener called ``name``; raises :class:`KeyError` if there is none."""
        for spec in self.listeners:
            if spec.name == name:
                return spec
        raise KeyError(name)


# ---------------------------------------------------------------------------
# Value validators: each returns the parsed value or raises ValueError with the
# finished message.
# ---------------------------------------------------------------------------

NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]+")
"""What a listener or backend name may contain."""


def quote(value: object) -> str:
    """Show a value found in the document the way messages quote it.

    Strings in double quotes, booleans as TOML writes them, tables and lists
    summarised.
    """
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (list, tuple)):
        shown = "[" + ", ".join(quote(item) for item in value) + "]"
        return shown if len(shown) <= 60 else "a list"
    if value is None:
        return "nothing"
    return str(value)


def suggest(word: str, candidates: list[str] | tuple[str, ...]) -> str:
    """``' (did you mean "x"?)'`` for the closest candidate, or ``""``."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _duration(*, positive: bool = False) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        seconds = parse_duration(value)
        if positive and seconds <= 0:
            raise ValueError(f"expected a duration greater than 0, got {quote(value)}")
        return seconds

    return check


def _keepalive_seconds(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds != int(seconds) or not 1 <= seconds <= 32767:
        raise ValueError(f'expected a whole number of seconds from "1s" to "32767s", got {quote(value)}')
    return seconds


def _int_range(low: int, high: int | None = None) -> Callable[[Any], int]:
    wanted = f"an integer from {low} to {high}" if high is not None else f"an integer >= {low}"

    def check(value: Any) -> int:
        if not _is_int(value):
            raise ValueError(f"expected {wanted}, got {quote(value)}")
        if value < low or (high is not None and value > high):
            raise ValueError(f"expected {wanted}, got {quote(value)}")
        return int(value)

    return check


def _choice(*allowed: str) -> Callable[[Any], str]:
    listed = ", ".join(f'"{choice}"' for choice in allowed)

    def check(value: Any) -> str:
        if value not in allowed or not isinstance(value, str):
            hint = suggest(value, allowed) if isinstance(value, str) else ""
            raise ValueError(f"expected one of {listed}, got {quote(value)}{hint}")
        return value

    return check


def _name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
        raise ValueError(f'expected a name made of letters, digits, "_", "." and "-", got {quote(value)}')
    return value


def _non_empty_string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {quote(value)}")
    return value


def _workers(value: Any) -> int | str:
    if value == "auto" and isinstance(value, str):
        return value
    if _is_int(value) and value >= 1:
        return int(value)
    raise ValueError(f'expected "auto" or an integer >= 1, got {quote(value)}')


def _bind_host(host: str, value: str) -> str:
    if host == "*":
        return "0.0.0.0"
    if host == "localhost":
        return "127.0.0.1"
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        raise ValueError(
            f'expected an IP address, "localhost" or "*" as the host to bind, got {quote(value)} '
            "(a listener binds an address, not a name)"
        ) from None


def parse_bind(value: Any) -> tuple[str, int]:
    """Parse a bind address into ``(normalised IP literal, port)``.

    ``"*"`` means ``0.0.0.0`` and ``"localhost"`` means ``127.0.0.1``; any other
    host must be an IP literal. Raises :class:`ValueError` with the user message.
    """
    host, port = parse_hostport(value)
    return _bind_host(host, value), port


def _one_or_many(value: Any) -> Any:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(
            f'expected an address or a list of addresses like ["0.0.0.0:80"], got {quote(value)}'
        )
    return value


def _at_least_one(value: list[Any]) -> list[Any]:
    if not value:
        raise ValueError("expected at least one address, got an empty list")
    return value


def _admin_listen(value: Any) -> tuple[str, int] | None:
    if value == "off":
        return None
    if not isinstance(value, str):
        raise ValueError(f'expected host:port or "off", got {quote(value)}')
    return parse_bind(value)


def _server_address(value: Any) -> tuple[str, int]:
    host, port = parse_hostport(value, allow_port_zero=False)
    if host == "*":
        raise ValueError(f'expected host:port of a server, got {quote(value)} ("*" only makes sense to bind)')
    with contextlib.suppress(ValueError):  # a DNS name is kept as written
        host = str(ipaddress.ip_address(host))
    return host, port


def _network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise ValueError(f'expected an IP address or a CIDR like "10.0.0.0/8", got {quote(value)}')
    try:
        return ipaddress.ip_network(value)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f'expected an IP address or a CIDR like "10.0.0.0/8", got {quote(value)}') from None
    raise ValueError(f'expected a CIDR with no host bits set, got {quote(value)} (did you mean "{loose}"?)')


def _keepalive(value: Any) -> Any:
    if value is False:
        return KeepaliveDoc.disabled()
    if isinstance(value, dict | KeepaliveDoc) or value is None:
        return value
    raise ValueError(
        f'expected a table like {{ idle = "60s", interval = "10s", count = 6 }} or false, got {quote(value)}'
    )


class KeyedValueError(ValueError):
    """A :class:`ValueError` about one key below the table being validated.

    A model validator that checks several keys together raises it to place the
    message on ``key`` (a path relative to the table, e.g. ``("allow",)`` or
    ``(1, "name")``) instead of on the table itself; the loader appends ``key`` to
    the error's location.
    """

    def __init__(self, key: tuple[str | int, ...], message: str) -> None:
        """``message`` is the finished user message."""
        super().__init__(message)
        self.key = key


def _server_name_pattern(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(
            'expected a server name pattern ("app.example.com", "*.example.com" or "~regex"), '
            f"got {quote(value)}"
        )
    NameMatcher.parse(value)
    return value


def _client_network(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected an IP address or a CIDR like "10.0.0.0/8", got {quote(value)}')
    Networks.parse([value])
    return value


def _dial_template(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f'expected a dial template like "{{sni}}:443", got {quote(value)}')
    try:
        Route("", None, dial=value)
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("route '': ")) from None
    return value


def _allow_entry(value: Any) -> str:
    """An ``allow`` entry; the grammar and its messages live in :mod:`portway.route.destpolicy`."""
    if not isinstance(value, str):
        raise ValueError(f"{ALLOW_EXPECTED}, got {quote(value)}")
    parse_entry(value)
    return value


_ACTIONS: Final = ("passthrough", "terminate")


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a number above 0, got {quote(value)}")
    return float(value)


def _action(value: Any) -> str:
    return _choice(*_ACTIONS)(value)


def _tls_version(value: Any) -> str:
    if _is_int(value) or isinstance(value, float):
        raise ValueError(
            f'expected "1.2" or "1.3" as a string, got {quote(value)} (write "{value}" in quotes)'
        )
    return _choice("1.2", "1.3")(value)


_ALPN_EXPECTED: Final = 'expected an ALPN protocol name like "h2" or "http/1.1"'


def _alpn_protocol(value: Any) -> str:
    """One ALPN protocol Portway offers: printable ASCII, 1 to 255 bytes (RFC 7301)."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{_ALPN_EXPECTED}, got {quote(value)}")
    if not (value.isascii() and value.isprintable()):
        raise ValueError(f"{_ALPN_EXPECTED} (printable ASCII), got {quote(value)}")
    if len(value) > 255:
        raise ValueError(f"{_ALPN_EXPECTED}, of at most 255 bytes, got one of {len(value)} bytes")
    return value


def _one_or_list(what: str) -> Callable[[Any], Any]:
    """Accept one entry where a list is expected (as ``bind`` does): ``x`` means ``[x]``."""

    def check(value: Any) -> Any:
        if isinstance(value, str | dict):
            return [value]
        if not isinstance(value, list):
            raise ValueError(f"expected a list of {what}, got {quote(value)}")
        return value

    return check


def _at_least_one_certificate(value: list[Any]) -> list[Any]:
    if not value:
        raise ValueError(
            'expected at least one certificate, got an empty list (e.g. certificates = ["site.pem"])'
        )
    return value


_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)", re.ASCII)
SNI_PLACEHOLDER: Final = "{sni}"
"""The :attr:`BackendTls.server_name` that stands for the name the client asked for."""


def _tls_server_name(value: Any) -> str:
    expected = (
        'expected a DNS name, an IP address or "{sni}" (the name the client asked for) '
        "as the name to send and verify"
    )
    if not isinstance(value, str):
        raise ValueError(f"{expected}, got {quote(value)}")
    if value == SNI_PLACEHOLDER:
        return value
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(value))
    name = value.removesuffix(".")
    if not name or len(name) > 253 or not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
        hint = ' (the only placeholder here is "{sni}")' if "{" in value else ""
        raise ValueError(f"{expected}, got {quote(value)}{hint}")
    return value


Duration = Annotated[float, BeforeValidator(_duration())]
"""A duration >= 0 ("0" allowed)."""
PositiveDuration = Annotated[float, BeforeValidator(_duration(positive=True))]
"""A duration > 0."""
KeepaliveSeconds = Annotated[float, BeforeValidator(_keepalive_seconds)]
Name = Annotated[str, BeforeValidator(_name)]
NonEmptyStr = Annotated[str, BeforeValidator(_non_empty_string)]
BindAddress = Annotated[tuple[str, int], BeforeValidator(parse_bind)]
ServerAddress = Annotated[tuple[str, int], BeforeValidator(_server_address)]
Network = Annotated[IPNetwork, BeforeValidator(_network)]
BindList = Annotated[list[BindAddress], BeforeValidator(_one_or_many), AfterValidator(_at_least_one)]

MaxConnections = Annotated[int, BeforeValidator(_int_range(1))]
Backlog = Annotated[int, BeforeValidator(_int_range(1, 65535))]
Retries = Annotated[int, BeforeValidator(_int_range(0, 100))]
Relay = Annotated[str, BeforeValidator(_choice("auto", "splice", "copy"))]
Balance = Annotated[str, BeforeValidator(_choice("roundrobin", "leastconn", "random", "source"))]

# ---------------------------------------------------------------------------
# The document.
# ---------------------------------------------------------------------------


class _Doc(BaseModel):
    """Base of every document table: unknown keys are errors, no type coercion."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class KeepaliveDoc(_Doc):
    """``keepalive = { idle, interval, count }``; keys left out take the built-in values.

    ``keepalive = false`` turns keepalive off; it validates to :meth:`disabled`.
    A table replaces an inherited one as a whole (keys are not merged).
    """

    idle: KeepaliveSeconds = 60.0
    interval: KeepaliveSeconds = 10.0
    count: Annotated[int, BeforeValidator(_int_range(1, 127))] = 6
    _off: bool = PrivateAttr(default=False)

    @classmethod
    def disabled(cls) -> KeepaliveDoc:
        """The value ``keepalive = false`` validates to."""
        doc = cls()
        doc._off = True
        return doc

    @property
    def off(self) -> bool:
        """Whether this is ``keepalive = false``."""
        return self._off


KeepaliveField = Annotated[KeepaliveDoc, BeforeValidator(_keepalive)]


class AdminDoc(_Doc):
    """``[admin]``."""

    listen: Annotated[tuple[str, int] | None, BeforeValidator(_admin_listen)] = ("127.0.0.1", 9090)


class LogDoc(_Doc):
    """``[log]``."""

    access: NonEmptyStr = "stdout"
    format: Annotated[str, BeforeValidator(_choice("text", "json"))] = "text"
    level: Annotated[str, BeforeValidator(_choice("debug", "info", "warning", "error"))] = "info"


class DefaultsDoc(_Doc):
    """``[defaults]``: values inherited by every listener and backend that does not set them."""

    sniff_timeout: PositiveDuration = 5.0
    connect_timeout: PositiveDuration = 5.0
    idle_timeout: Duration = 3600.0
    retries: Retries = 2
    max_connections: MaxConnections = 10000
    keepalive: KeepaliveField = KeepaliveDoc()
    relay: Relay = "auto"
    backlog: Backlog = 1024


class ProxyProtocolDoc(_Doc):
    """``proxy_protocol = { accept, trusted }`` on a listener."""

    accept: Annotated[str, BeforeValidator(_choice("off", "optional", "required"))] = "off"
    trusted: list[Network] = []

    @model_validator(mode="after")
    def _trusted_required(self) -> ProxyProtocolDoc:
        if self.accept != "off" and not self.trusted:
            raise ValueError(
                f'expected a non-empty "trusted" list when accept = {quote(self.accept)}: name the load '
                'balancers allowed to send a PROXY header, e.g. trusted = ["10.0.0.0/8"]'
            )
        return self


class ListenerDoc(_Doc):
    """The keys every ``[[listener]]`` has, whatever its mode.

    Optional keys are ``None`` when not written, and then inherit ``[defaults]``.
    """

    name: Name
    mode: str
    bind: BindList
    max_connections: MaxConnections | None = None
    sniff_timeout: PositiveDuration | None = None
    idle_timeout: Duration | None = None
    keepalive: KeepaliveField | None = None
    relay: Relay | None = None
    backlog: Backlog | None = None
    proxy_protocol: ProxyProtocolDoc = ProxyProtocolDoc()

    @classmethod
    def backend_refs(cls, entry: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """Every backend that the raw ``[[listener]]`` table ``entry`` names, with the
        key path (relative to the listener) where it is named.

        It reads the raw table so that the loader can check references even when
        other keys of the listener are invalid; values that are not valid names are
        skipped (validation reports them).
        """
        return []

    def default_backend(self) -> str | None:
        """The backend a connection goes to when nothing else decides (tcp: the only one)."""
        return None

    def route_specs(self) -> tuple[RouteSpec, ...]:
        """The listener's routes in runtime form (none for a mode that does not route)."""
        return ()

    def tls_spec(self, path: Callable[[str], str]) -> TlsSpec | None:
        """How the listener terminates TLS, with every file made absolute by ``path``;
        ``None`` for a listener that terminates nothing."""
        return None

    def gateway_spec(self, path: Callable[[str], str], defaults: DefaultsDoc) -> GatewaySpec | None:
        """The gateway mode's settings (``None`` for the other modes)."""
        return None

    def handshake_deadline(self) -> float | None:
        """The deadline on reads before routing if the mode names it otherwise (gateway's
        ``handshake_timeout``); ``None``: ``sniff_timeout`` as inherited."""
        return None

    def http_proxy_spec(self, path: Callable[[str], str], defaults: DefaultsDoc) -> HttpProxySpec | None:
        """The http-proxy mode's settings (``None`` for the other modes)."""
        return None


class TcpListenerDoc(ListenerDoc):
    """``mode = "tcp"``: forward every connection to one backend."""

    backend: Name

    @classmethod
    def backend_refs(cls, entry: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """The one backend, named by the ``backend`` key."""
        value = entry.get("backend")
        if isinstance(value, str) and NAME_PATTERN.fullmatch(value):
            return [(("backend",), value)]
        return []

    def default_backend(self) -> str | None:
        """The ``backend`` key."""
        return self.backend


class RouteDoc(_Doc):
    """One ``[[listener.route]]`` of an ``sni`` or ``tls`` listener.

    Conditions (``match``, ``alpn``, ``clients``), exactly one target (``backend``, or
    ``dial`` with its ``allow`` list), and what to do with the client's TLS: ``action``
    (``None`` when not written: the listener's mode decides) and, for a route that
    terminates, the ALPN protocols to offer (``offer_alpn``).
    """

    name: Name | None = None
    match: Annotated[str, BeforeValidator(_server_name_pattern)] | None = None
    alpn: list[NonEmptyStr] = []
    clients: list[Annotated[str, BeforeValidator(_client_network)]] = []
    backend: Name | None = None
    dial: Annotated[str, BeforeValidator(_dial_template)] | None = None
    allow: list[Annotated[str, BeforeValidator(_allow_entry)]] | None = None
    action: Annotated[str, BeforeValidator(_action)] | None = None
    offer_alpn: list[AlpnProtocol] | None = None

    @model_validator(mode="after")
    def _one_target(self) -> RouteDoc:
        if self.backend is not None and self.dial is not None:
            raise ValueError(
                'expected exactly one of "backend" (a [[backend]] to forward to) and "dial" '
                "(dial the name itself), got both"
            )
        if self.backend is None and self.dial is None:
            raise ValueError(
                'missing the target: write backend = "<a [[backend]] name>", '
                'or dial = "{sni}:443" with an allow-list'
            )
        if self.dial is not None and not self.allow:
            raise KeyedValueError(
                () if self.allow is None else ("allow",),
                "dialling the name itself needs an allow-list: allow = [...] "
                "(CIDRs, host patterns, optional :port or :port-port)",
            )
        if self.dial is None and self.allow is not None:
            raise KeyedValueError(
                ("allow",),
                '"allow" applies only to a route that dials the name itself (dial = "{sni}:443"); '
                "a backend route has no allow-list",
            )
        return self

    def spec(
        self, index: int, default_action: str = "passthrough", offer_alpn: tuple[str, ...] = ()
    ) -> RouteSpec:
        """The runtime form of this route, the ``index``-th of its listener.

        ``default_action`` is the mode's action for a route that does not write one;
        ``offer_alpn`` is the listener's, used by a terminating route without its own.
        """
        action = self.action if self.action is not None else default_action
        if action != "terminate":
            offer: tuple[str, ...] = ()
        elif self.offer_alpn is not None:
            offer = tuple(self.offer_alpn)
        else:
            offer = offer_alpn
        return RouteSpec(
            name=self.name if self.name is not None else f"route[{index}]",
            match=self.match,
            alpn=tuple(self.alpn),
            clients=tuple(self.clients),
            backend=self.backend,
            dial=self.dial,
            allow=tuple(self.allow or ()),
            action=action,
            offer_alpn=offer,
        )


def _unique_route_names(routes: list[RouteDoc]) -> list[RouteDoc]:
    """Raise (at ``[index].name``) if two routes of a listener share a name."""
    if not routes:
        raise ValueError("expected at least one [[listener.route]]")
    seen: dict[str, int] = {}
    for index, route in enumerate(routes):
        if route.name is None:
            continue
        if route.name in seen:
            raise KeyedValueError(
                (index, "name"),
                f"route name {quote(route.name)} is already used by route[{seen[route.name]}];"
                " names must be unique within a listener",
            )
        seen[route.name] = index
    return routes


class CertFileDoc(_Doc):
    """One entry of a listener's ``certificates``: ``{ cert = "site.crt", key = "site.key" }``.

    The string form ``"site.pem"`` (one PEM file holding the chain and its key)
    validates to ``cert`` alone, as does a table without ``key``.
    """

    cert: NonEmptyStr
    key: NonEmptyStr | None = None


def _cert_entry(value: Any) -> Any:
    if isinstance(value, str):
        if not value:
            raise ValueError("expected the path of a PEM file, got an empty string")
        return CertFileDoc(cert=value)
    if isinstance(value, dict | CertFileDoc):
        return value
    raise ValueError(
        'expected the path of a PEM file holding the chain and its key, like "site.pem", or a table '
        f'like {{ cert = "site.crt", key = "site.key" }}, got {quote(value)}'
    )


AlpnProtocol = Annotated[str, BeforeValidator(_alpn_protocol)]
CertificateList = Annotated[
    list[Annotated[CertFileDoc, BeforeValidator(_cert_entry)]],
    BeforeValidator(_one_or_list('certificates, like ["site.pem"]')),
    AfterValidator(_at_least_one_certificate),
]
TlsVersion = Annotated[str, BeforeValidator(_tls_version)]


class RoutingListenerDoc(ListenerDoc):
    """The keys of the listeners that route by name and may terminate TLS (``sni``, ``tls``).

    ``certificates``, ``tls_min_version`` and ``offer_alpn`` set how TLS is terminated;
    a listener that terminates nothing may not write the last two. Routes take the mode's
    :attr:`default_action` when they write no ``action``.
    """

    default_action: ClassVar[str] = "passthrough"
    """The ``action`` of a route that does not write one."""

    certificates: CertificateList | None = None
    tls_min_version: TlsVersion | None = None
    offer_alpn: list[AlpnProtocol] | None = None
    route: list[RouteDoc] | None = None

    @model_validator(mode="after")
    def _check_tls(self) -> RoutingListenerDoc:
        if self.certificates is None:
            for key in ("tls_min_version", "offer_alpn"):
                if getattr(self, key) is not None:
                    raise KeyedValueError(
                        (key,),
                        f'"{key}" applies only to a listener that terminates TLS: add certificates = '
                        '["site.pem"] to this listener, or remove it',
                    )
        for index, route in enumerate(self.route or ()):
            action = route.action if route.action is not None else self.default_action
            if action == "terminate" and self.certificates is None:
                raise KeyedValueError(
                    ("route", index, "action"),
                    'action "terminate" needs the listener\'s certificates: add certificates = '
                    '["site.pem"] to this listener',
                )
            if action == "passthrough" and route.offer_alpn is not None:
                mode = quote(self.mode)
                why = (
                    f'in mode {mode} a route passes TLS through unless it says action = "terminate"'
                    if route.action is None
                    else 'this route says action = "passthrough"'
                )
                raise KeyedValueError(
                    ("route", index, "offer_alpn"),
                    f'"offer_alpn" applies only to a route that terminates TLS, and {why}; '
                    "a passthrough route leaves ALPN to the backend",
                )
        return self

    @classmethod
    def backend_refs(cls, entry: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """The ``backend`` of each route."""
        routes = entry.get("route")
        if not isinstance(routes, list):
            return []
        refs: list[tuple[tuple[str | int, ...], str]] = []
        for index, route in enumerate(routes):
            value = route.get("backend") if isinstance(route, dict) else None
            if isinstance(value, str) and NAME_PATTERN.fullmatch(value):
                refs.append((("route", index, "backend"), value))
        return refs

    def route_specs(self) -> tuple[RouteSpec, ...]:
        """The routes, in file order, with the mode's default action and the listener's
        ``offer_alpn`` filled in."""
        offer = tuple(self.offer_alpn or ())
        return tuple(
            route.spec(index, self.default_action, offer) for index, route in enumerate(self.route or ())
        )

    def tls_spec(self, path: Callable[[str], str]) -> TlsSpec | None:
        """The ``certificates`` (the first is the default), ``tls_min_version`` (default
        ``"1.2"``) and ``offer_alpn``; ``None`` without certificates."""
        if self.certificates is None:
            return None
        return TlsSpec(
            certificates=tuple(
                CertFile(cert=path(entry.cert), key=path(entry.key) if entry.key is not None else None)
                for entry in self.certificates
            ),
            min_version=self.tls_min_version or "1.2",
            offer_alpn=tuple(self.offer_alpn or ()),
        )


class SniListenerDoc(RoutingListenerDoc):
    """``mode = "sni"``: route TLS by the ClientHello's server name and plaintext HTTP by
    ``Host``, through ``[[listener.route]]`` tables. TLS passes through undecrypted unless a
    route says ``action = "terminate"`` (which needs the listener's ``certificates``)."""

    route: list[RouteDoc] = Field(default=[], validate_default=True)

    @field_validator("route")
    @classmethod
    def _check_routes(cls, routes: list[RouteDoc]) -> list[RouteDoc]:
        return _unique_route_names(routes)


class TlsListenerDoc(RoutingListenerDoc):
    """``mode = "tls"``: terminate every connection's TLS with the listener's certificates
    (chosen by the client's server name) and forward the plaintext.

    Exactly one target: ``backend`` (all traffic), or ``[[listener.route]]`` tables that
    route by name, ALPN and client address as in ``sni`` mode; here a route terminates
    unless it says ``action = "passthrough"``.
    """

    default_action: ClassVar[str] = "terminate"

    certificates: CertificateList
    backend: Name | None = None

    @field_validator("route")
    @classmethod
    def _check_routes(cls, routes: list[RouteDoc] | None) -> list[RouteDoc] | None:
        return routes if routes is None else _unique_route_names(routes)

    @model_validator(mode="after")
    def _one_target(self) -> TlsListenerDoc:
        if self.backend is not None and self.route is not None:
            raise ValueError(
                'expected either backend = "<name>" (every connection goes there) or [[listener.route]] '
                "tables (route by server name), got both"
            )
        if self.backend is None and self.route is None:
            raise ValueError(
                'missing the target: write backend = "<a [[backend]] name>" to forward every connection '
                "there, or add [[listener.route]] tables to route by server name"
            )
        return self

    @classmethod
    def backend_refs(cls, entry: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
        """The ``backend`` key, and the ``backend`` of each route."""
        return TcpListenerDoc.backend_refs(entry) + super().backend_refs(entry)

    def default_backend(self) -> str | None:
        """The ``backend`` key (``None`` when routes decide)."""
        return self.backend

    def route_specs(self) -> tuple[RouteSpec, ...]:
        """The routes; with ``backend``, one terminating default route called ``"default"``
        to it, so that the runtime treats both forms alike."""
        if self.backend is None:
            return super().route_specs()
        return (
            RouteSpec(
                name="default",
                match=None,
                alpn=(),
                clients=(),
                backend=self.backend,
                dial=None,
                allow=(),
                action="terminate",
                offer_alpn=tuple(self.offer_alpn or ()),
            ),
        )


class SourceLimitDoc(_Doc):
    """``source_limit = { rate, burst, ban }`` on a gateway listener."""

    rate: Annotated[float, BeforeValidator(_positive_number)] = 1.0
    burst: Annotated[int, BeforeValidator(_int_range(1, 100_000))] = 10
    ban: PositiveDuration = 60.0


_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*", re.ASCII)


def _env_name(value: Any) -> str:
    if not isinstance(value, str) or not _ENV_NAME.fullmatch(value):
        raise ValueError(
            f'expected an environment variable name like "PORTWAY_GATEWAY_KEYS", got {quote(value)}'
        )
    return value


EnvName = Annotated[str, BeforeValidator(_env_name)]


class GatewayListenerDoc(ListenerDoc):
    """``mode = "gateway"``: the client names its backend in an encrypted token line; no
    backend list. v1 (frontd) tokens need ``secrets_file``/``secrets_env``, v2 tokens a
    ``keyring_file``/``keyring_env``; ``allow`` says where tokens may lead."""

    secrets_file: NonEmptyStr | None = None
    secrets_env: EnvName | None = None
    keyring_file: NonEmptyStr | None = None
    keyring_env: EnvName | None = None
    accept_v1: bool | None = None
    v1_digest: Annotated[str, BeforeValidator(_choice("md5", "sha256"))] = "md5"
    allow: list[Annotated[str, BeforeValidator(_allow_entry)]]
    handshake_timeout: PositiveDuration | None = None
    line_limit: Annotated[int, BeforeValidator(_int_range(64, 65536))] = 4096
    max_pending: Annotated[int, BeforeValidator(_int_range(1))] = 1000
    connect_timeout: PositiveDuration | None = None
    retries: Retries | None = None
    source_limit: SourceLimitDoc = SourceLimitDoc()

    @model_validator(mode="after")
    def _keys(self) -> GatewayListenerDoc:
        for kind in ("secrets", "keyring"):
            if getattr(self, f"{kind}_file") is not None and getattr(self, f"{kind}_env") is not None:
                raise KeyedValueError(
                    (f"{kind}_env",),
                    f"write either {kind}_file or {kind}_env, not both: they name the same keys",
                )
        has_v1 = self.secrets_file is not None or self.secrets_env is not None
        has_v2 = self.keyring_file is not None or self.keyring_env is not None
        if not has_v1 and not has_v2:
            raise ValueError(
                "a gateway needs keys: keyring_file (v2 tokens, recommended; make one with "
                "`portway token keygen`) and/or secrets_file (v1 frontd passphrases)"
            )
        if self.accept_v1 and not has_v1:
            raise KeyedValueError(
                ("accept_v1",),
                "accept_v1 = true needs the v1 passphrases: add secrets_file or secrets_env",
            )
        if not self.allow:
            raise KeyedValueError(
                ("allow",),
                "expected at least one allow entry: name where tokens may lead, e.g. "
                'allow = ["10.0.0.0/8:22", "*.db.internal:5432"]',
            )
        if self.sniff_timeout is not None:
            raise KeyedValueError(
                ("sniff_timeout",),
                "a gateway's deadline on the token line is handshake_timeout; write that instead",
            )
        return self

    def handshake_deadline(self) -> float | None:
        """``handshake_timeout`` (default: the inherited ``sniff_timeout``)."""
        return self.handshake_timeout

    def gateway_spec(self, path: Callable[[str], str], defaults: DefaultsDoc) -> GatewaySpec | None:
        """The keys, policy and limits, files made absolute, defaults inherited."""
        has_v1 = self.secrets_file is not None or self.secrets_env is not None
        limit = self.source_limit
        return GatewaySpec(
            secrets_file=path(self.secrets_file) if self.secrets_file is not None else None,
            secrets_env=self.secrets_env,
            keyring_file=path(self.keyring_file) if self.keyring_file is not None else None,
            keyring_env=self.keyring_env,
            accept_v1=has_v1 if self.accept_v1 is None else self.accept_v1,
            v1_digest=self.v1_digest,
            allow=tuple(self.allow),
            line_limit=self.line_limit,
            max_pending=self.max_pending,
            connect_timeout=self.connect_timeout
            if self.connect_timeout is not None
            else defaults.connect_timeout,
            retries=self.retries if self.retries is not None else defaults.retries,
            source_limit=SourceLimit(rate=limit.rate, burst=limit.burst, ban=limit.ban),
        )


def _port_range(value: Any) -> tuple[int, int]:
    if _is_int(value) and 1 <= value <= 65535:
        return (value, value)
    if isinstance(value, str):
        match = re.fullmatch(r"([0-9]{1,5})-([0-9]{1,5})", value)
        if match and 1 <= int(match[1]) <= int(match[2]) <= 65535:
            return (int(match[1]), int(match[2]))
    raise ValueError(f'expected a port (1-65535) or a range like "8000-8999", got {quote(value)}')


PortRange = Annotated[tuple[int, int], BeforeValidator(_port_range)]


def _intercept_pattern(value: Any) -> str:
    """An ``intercept`` entry; the grammar and its messages live in :mod:`portway.route.intercept`."""
    if not isinstance(value, str):
        raise ValueError(f"{PATTERN_EXPECTED}, got {quote(value)}")
    parse_pattern(value)
    return value


_INTERCEPT_ONLY: Final = ("intercept_ca", "intercept_origin_ca", "har", "pinning", "pinning_ttl")
"""Keys that mean something only on a listener that intercepts."""


class HttpProxyListenerDoc(ListenerDoc):
    """``mode = "http-proxy"``: an HTTP/1.1 forward proxy with CONNECT, and SOCKS5 on the same
    port; no backend list (clients name their destinations, checked by ``allow``/``deny``).

    ``intercept`` lists the CONNECT destinations whose TLS is intercepted with certificates
    from the CA in ``intercept_ca``; the other ``intercept_*``, ``har`` and ``pinning*`` keys
    tune that, and may only be written along with a non-empty ``intercept``.
    """

    users_file: NonEmptyStr | None = None
    allow_unauthenticated: bool = False
    socks5: bool = True
    connect_ports: list[PortRange] = [(443, 443)]
    allow: list[Annotated[str, BeforeValidator(_allow_entry)]] = ["0.0.0.0/0", "::/0"]
    deny: list[Annotated[str, BeforeValidator(_allow_entry)]] = []
    x_forwarded_for: bool = False
    connect_timeout: PositiveDuration | None = None
    retries: Retries | None = None
    intercept: list[Annotated[str, BeforeValidator(_intercept_pattern)]] = []
    intercept_ca: NonEmptyStr | None = None
    intercept_origin_ca: NonEmptyStr | None = None
    har: NonEmptyStr | None = None
    pinning: Annotated[str, BeforeValidator(_choice(*PINNING_MODES))] | None = None
    pinning_ttl: PositiveDuration | None = None

    @model_validator(mode="after")
    def _no_open_proxy(self) -> HttpProxyListenerDoc:
        if self.users_file is None and not self.allow_unauthenticated:
            public = [host for host, _ in self.bind if not _is_loopback(host)]
            if public:
                raise KeyedValueError(
                    ("bind",),
                    f"refusing to run an open proxy on {public[0]}: set users_file (see `portway user "
                    "add`), or bind to 127.0.0.1, or write allow_unauthenticated = true if the network "
                    "in front already decides who may connect",
                )
        if not self.allow:
            raise KeyedValueError(("allow",), 'expected at least one allow entry, e.g. ["0.0.0.0/0", "::/0"]')
        return self

    @model_validator(mode="after")
    def _intercept_keys(self) -> HttpProxyListenerDoc:
        if not self.intercept:
            for key in _INTERCEPT_ONLY:
                if getattr(self, key) is not None:
                    raise KeyedValueError(
                        (key,),
                        f'"{key}" applies only to a listener that intercepts TLS: list the destinations '
                        'to intercept, as in intercept = ["*.example.com"], or remove it',
                    )
        if self.pinning_ttl is not None and self.pinning != "passthrough":
            raise KeyedValueError(
                ("pinning_ttl",),
                '"pinning_ttl" applies only with pinning = "passthrough" (how long a host whose client '
                "refused the certificate is tunnelled untouched): add that, or remove pinning_ttl",
            )
        return self

    def http_proxy_spec(self, path: Callable[[str], str], defaults: DefaultsDoc) -> HttpProxySpec | None:
        """Users, rules, tunnel ports and interception, files made absolute, defaults inherited."""
        return HttpProxySpec(
            users_file=path(self.users_file) if self.users_file is not None else None,
            socks5=self.socks5,
            connect_ports=tuple(self.connect_ports),
            allow=tuple(self.allow),
            deny=tuple(self.deny),
            x_forwarded_for=self.x_forwarded_for,
            connect_timeout=self.connect_timeout
            if self.connect_timeout is not None
            else defaults.connect_timeout,
            retries=self.retries if self.retries is not None else defaults.retries,
            intercept=self.intercept_spec(path),
        )

    def intercept_spec(self, path: Callable[[str], str]) -> InterceptSpec | None:
        """The interception settings, paths made absolute by ``path`` (``intercept_ca``
        defaults to ``~/.portway/ca``); ``None`` when ``intercept`` is empty."""
        if not self.intercept:
            return None
        return InterceptSpec(
            patterns=tuple(self.intercept),
            ca=path(self.intercept_ca if self.intercept_ca is not None else DEFAULT_CA_DIRECTORY),
            origin_ca=path(self.intercept_origin_ca) if self.intercept_origin_ca is not None else None,
            har=path(self.har) if self.har is not None else None,
            pinning=self.pinning if self.pinning is not None else "log",
            pinning_ttl=self.pinning_ttl if self.pinning_ttl is not None else 3600.0,
        )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


LISTENER_MODES: Final[Mapping[str, type[ListenerDoc]]] = FrozenMap(
    {
        "tcp": TcpListenerDoc,
        "sni": SniListenerDoc,
        "tls": TlsListenerDoc,
        "gateway": GatewayListenerDoc,
        "http-proxy": HttpProxyListenerDoc,
    }
)
"""Modes this version implements, and the document class of each."""

PLANNED_MODES: Final[tuple[str, ...]] = ()
"""Modes that are designed but not in this version: naming one is an error that says so."""


class ServerDoc(_Doc):
    """One entry of a backend's ``servers``."""

    address: ServerAddress
    weight: Annotated[int, BeforeValidator(_int_range(0, 256))] = 1
    name: NonEmptyStr | None = None
    backup: bool = False

    @property
    def display_name(self) -> str:
        """The ``name`` key, or the address (normalised) when there is none."""
        return self.name if self.name is not None else format_hostport(*self.address)


class HealthCheckDoc(_Doc):
    """``health_check = { interval, timeout, rise, fall }``; every key optional."""

    interval: PositiveDuration = 2.0
    timeout: PositiveDuration = 1.0
    rise: Annotated[int, BeforeValidator(_int_range(1, 1000))] = 2
    fall: Annotated[int, BeforeValidator(_int_range(1, 1000))] = 3


class EjectDoc(_Doc):
    """``eject = { failures, cooldown }``: passive ejection; ``failures = 0`` disables it."""

    failures: Annotated[int, BeforeValidator(_int_range(0, 1_000_000))] = 3
    cooldown: Duration = 10.0


class BackendTlsDoc(_Doc):
    """``tls = { verify, ca, server_name }`` on a backend; ``tls = true`` is this table with
    every key left out."""

    verify: bool = True
    ca: NonEmptyStr | None = None
    server_name: Annotated[str, BeforeValidator(_tls_server_name)] | None = None

    @model_validator(mode="after")
    def _ca_needs_verify(self) -> BackendTlsDoc:
        if not self.verify and self.ca is not None:
            raise KeyedValueError(
                ("ca",),
                '"ca" has no use with verify = false, since the servers\' certificates are not checked: '
                "remove ca, or set verify = true",
            )
        return self

    def spec(self, path: Callable[[str], str]) -> BackendTls:
        """The runtime form, with ``ca`` made absolute by ``path``."""
        return BackendTls(
            verify=self.verify,
            ca=path(self.ca) if self.ca is not None else None,
            server_name=self.server_name,
        )


def _backend_tls(value: Any) -> Any:
    if value is True:
        return BackendTlsDoc()
    if value is False:
        return None
    if isinstance(value, dict | BackendTlsDoc) or value is None:
        return value
    raise ValueError(
        "expected true, false or a table like "
        f'{{ verify = true, ca = "ca.pem", server_name = "api.internal" }}, got {quote(value)}'
    )


class BackendDoc(_Doc):
    """``[[backend]]``."""

    name: Name
    balance: Balance = "roundrobin"
    servers: list[ServerDoc]
    connect_timeout: PositiveDuration | None = None
    retries: Retries | None = None
    health_check: HealthCheckDoc | None = None
    eject: EjectDoc = EjectDoc()
    send_proxy_protocol: Annotated[str, BeforeValidator(_choice("off", "v1", "v2"))] = "off"
    tls: Annotated[BackendTlsDoc | None, BeforeValidator(_backend_tls)] = None

    @field_validator("servers")
    @classmethod
    def _check_servers(cls, servers: list[ServerDoc]) -> list[ServerDoc]:
        if not servers:
            raise ValueError("expected at least one server, got an empty list")
        if all(server.backup for server in servers):
            raise ValueError(
                "every server is a backup: at least one must not be (remove backup = true from one)"
            )
        seen: dict[str, int] = {}
        for position, server in enumerate(servers):
            name = server.display_name
            if name in seen:
                raise ValueError(
                    f"server name {quote(name)} is used by servers[{seen[name]}] and servers[{position}];"
                    " give each server a distinct name"
                )
            seen[name] = position
        return servers


class DocumentDoc(_Doc):
    """The top level of the file.

    ``listener`` and ``backend`` are only checked to be lists of tables here: the
    loader validates each entry on its own (a listener against its mode's class),
    so that one broken entry does not hide the problems of the others.
    """

    workers: Annotated[int | str, BeforeValidator(_workers)] = "auto"
    pid_file: NonEmptyStr | None = None
    drain_timeout: Duration = 30.0
    admin: AdminDoc = AdminDoc()
    log: LogDoc = LogDoc()
    defaults: DefaultsDoc = DefaultsDoc()
    listener: list[dict[str, Any]] = []
    backend: list[dict[str, Any]] = []
