"""The effective plan that ``portway check`` prints: the configuration as Portway will run it.

Every inherited default is shown filled in, every duration is written back in its
short form (:func:`~portway.config.units.format_duration`), and every path is
absolute, so a reader sees what will happen without knowing the defaults. The
output is plain aligned text with no colour, fit for a terminal, a log or a diff.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.x509.oid import NameOID

from portway.config.model import (
    SNI_PLACEHOLDER,
    BackendSpec,
    BackendTls,
    CertFile,
    Config,
    GatewaySpec,
    HttpProxySpec,
    InterceptSpec,
    Keepalive,
    ListenerSpec,
    ProxyProtocolIn,
    RouteSpec,
    TlsSpec,
)
from portway.config.units import format_duration
from portway.net.mitmca import CAError, read_certificate
from portway.net.tlsctx import CertError, cert_names

__all__ = ["render_plan"]

_INDENT = "  "


def render_plan(config: Config) -> str:
    """Render ``config`` as the effective plan, ending with a newline.

    The plan has a header block (workers, pid file, drain timeout, admin, logs),
    then one block per listener (with its routes, one a line, in order) and one
    per backend, in file order.
    """
    blocks = [_render_global(config)]
    blocks.extend(_render_listener(listener) for listener in config.listeners)
    used = {listener.backend for listener in config.listeners}
    used.update(route.backend for listener in config.listeners for route in listener.routes)
    blocks.extend(_render_backend(backend, backend.name in used) for backend in config.backends.values())
    return "\n\n".join(blocks) + "\n"


def _rows(rows: Sequence[tuple[str, str]], indent: str = "") -> list[str]:
    """Align ``label  value`` rows on the longest label."""
    width = max(len(label) for label, _ in rows)
    return [f"{indent}{label.ljust(width)}  {value}".rstrip() for label, value in rows]


def _render_global(config: Config) -> str:
    workers = f"{config.workers} (auto: one per CPU)" if config.workers_auto else str(config.workers)
    admin = str(config.admin.listen) if config.admin.listen is not None else "off"
    rows = [
        ("workers", workers),
        ("pid file", config.pid_file or "none"),
        ("drain timeout", format_duration(config.drain_timeout)),
        ("admin", admin),
        ("access log", f"{config.log.access} ({config.log.format})" if config.log.access != "off" else "off"),
        ("log level", config.log.level),
    ]
    return "\n".join([f"Portway plan for {config.source}", "", *_rows(rows)])


def _keepalive(keepalive: Keepalive | None) -> str:
    if keepalive is None:
        return "off"
    return (
        f"idle {format_duration(keepalive.idle)}, interval {format_duration(keepalive.interval)}, "
        f"count {keepalive.count}"
    )


def _proxy_protocol(pp: ProxyProtocolIn) -> str:
    if pp.accept == "off":
        return "off"
    trusted = ", ".join(str(network) for network in pp.trusted)
    return f"{pp.accept}, trusted from {trusted}"


def _certificate(entry: CertFile, default: bool) -> str:
    """``/path/site.pem (a.example.com, *.example.com; until 2030-01-01)``, with the key
    file if separate; the names are read from the file, and left out if it cannot be read."""
    shown = entry.cert if entry.key is None else f"{entry.cert}, key {entry.key}"
    try:
        names, not_after = cert_names(entry.cert)
    except CertError:
        return shown + (" (default)" if default else "")
    details = [", ".join(names) or "no names", f"until {not_after:%Y-%m-%d}"]
    if default:
        details.append("default")
    return f"{shown} ({'; '.join(details)})"


def _tls_rows(tls: TlsSpec | None) -> list[tuple[str, str]]:
    if tls is None:
        return []
    rows = [
        ("certificates" if position == 0 else "", _certificate(entry, position == 0))
        for position, entry in enumerate(tls.certificates)
    ]
    rows.append(("tls min version", tls.min_version))
    rows.append(("offer alpn", ", ".join(tls.offer_alpn) or "none"))
    return rows


def _render_listener(listener: ListenerSpec) -> str:
    idle = format_duration(listener.idle_timeout) if listener.idle_timeout else "none"
    # A tls listener with one backend has one built-in route to it: show the backend instead.
    single = listener.backend is not None or not listener.routes
    gateway = listener.gateway
    proxy = listener.http_proxy
    rows = [
        ("bind", ", ".join(str(bind) for bind in listener.bind)),
        *([("backend", listener.backend or "-")] if single and gateway is None and proxy is None else []),
        *_proxy_rows(proxy),
        *_tls_rows(listener.tls),
        *_gateway_rows(gateway),
        ("handshake timeout" if gateway else "sniff timeout", format_duration(listener.sniff_timeout)),
        ("idle timeout", idle),
        ("max connections", str(listener.max_connections)),
        ("backlog", str(listener.backlog)),
        ("keepalive", _keepalive(listener.keepalive)),
        ("relay", listener.relay),
        ("proxy protocol", _proxy_protocol(listener.proxy_protocol)),
    ]
    routes = [] if single else _routes(listener.routes, listener.mode)
    return "\n".join([f"listener {listener.name} (mode {listener.mode})", *_rows(rows, _INDENT), *routes])


def _proxy_rows(spec: HttpProxySpec | None) -> list[tuple[str, str]]:
    """Who may use the forward proxy and where it may go."""
    if spec is None:
        return []
    ports = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spec.connect_ports)
    return [
        ("users", spec.users_file or "none (no authentication)"),
        ("protocols", "HTTP/1.1, CONNECT" + (", SOCKS5" if spec.socks5 else "")),
        ("connect ports", ports),
        ("allow", ", ".join(spec.allow)),
        ("deny", ", ".join(spec.deny) or "none"),
        ("connect", f"timeout {format_duration(spec.connect_timeout)}, {spec.retries} retries on timeout"),
        *_intercept_rows(spec.intercept),
    ]


def _intercept_rows(spec: InterceptSpec | None) -> list[tuple[str, str]]:
    """Which tunnels are intercepted, with which CA (its name and end, read from ``ca.pem``, and
    left out if it cannot be read), what origins are trusted, the HAR file and the pinning policy."""
    if spec is None:
        return [("intercept", "off")]
    ca = spec.ca
    try:
        certificate = read_certificate(spec.ca)
    except CAError:
        pass
    else:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        name = str(names[0].value) if names else certificate.subject.rfc4514_string()
        ca = f"{spec.ca} ({name}; until {certificate.not_valid_after_utc:%Y-%m-%d})"
    pinning = (
        f"passthrough for {format_duration(spec.pinning_ttl)}" if spec.pinning == "passthrough" else "log"
    )
    return [
        ("intercept", ", ".join(spec.patterns)),
        ("intercept ca", ca),
        ("origin trust", "system CAs" + (f" + {spec.origin_ca}" if spec.origin_ca else "")),
        ("har", spec.har or "off"),
        ("pinning", pinning),
    ]


def _gateway_rows(spec: GatewaySpec | None) -> list[tuple[str, str]]:
    """Where the keys come from (never the keys), the policy and the limits."""
    if spec is None:
        return []
    v2 = spec.keyring_file or (f"${spec.keyring_env}" if spec.keyring_env else None)
    v1 = spec.secrets_file or (f"${spec.secrets_env}" if spec.secrets_env else None)
    limit = spec.source_limit
    return [
        ("v2 keyring", v2 or "none (v2 tokens refused)"),
        (
            "v1 secrets",
            f"{v1} (digest {spec.v1_digest})" if v1 and spec.accept_v1 else "off (v1 tokens refused)",
        ),
        ("allow", ", ".join(spec.allow)),
        ("line limit", f"{spec.line_limit} bytes"),
        ("max pending", str(spec.max_pending)),
        ("connect", f"timeout {format_duration(spec.connect_timeout)}, {spec.retries} retries on timeout"),
        (
            "source limit",
            f"burst {limit.burst}, refill {limit.rate:g}/s, then refused for {format_duration(limit.ban)}",
        ),
    ]


def _routes(routes: Sequence[RouteSpec], mode: str) -> list[str]:
    """One line per route: ``route <name>  <match>  <conditions>  -> <target>``, names and
    patterns aligned. The action is shown except for passthrough in an sni listener (where
    it is the rule), and a terminating route lists the ALPN protocols it offers."""
    if not routes:
        return []
    matches = [
        route.match
        if route.match is not None
        else "(any name)"
        if route.alpn or route.clients
        else "(default)"
        for route in routes
    ]
    name_width = max(len(route.name) for route in routes)
    match_width = max(len(match) for match in matches)
    lines = []
    for route, match in zip(routes, matches, strict=True):
        cells = [f"route {route.name.ljust(name_width)}", match.ljust(match_width)]
        if route.alpn:
            cells.append("alpn=" + ",".join(route.alpn))
        if route.clients:
            cells.append("clients=" + ",".join(route.clients))
        if route.backend is not None:
            target = f"backend {route.backend}"
        else:
            target = f"dial {route.dial} allow {','.join(route.allow)}"
        if route.action == "terminate" or mode != "sni":
            target = f"{route.action}, {target}"
        cells.append(f"-> {target}")
        if route.offer_alpn:
            cells.append("alpn offer " + ",".join(route.offer_alpn))
        lines.append(_INDENT + "  ".join(cells))
    return lines


def _backend_tls(tls: BackendTls | None) -> str:
    if tls is None:
        return "off"
    if not tls.verify:
        check = "no verification"
    else:
        check = f"verify with {tls.ca if tls.ca is not None else 'system CAs'}"
    if tls.server_name is None:
        name = "each server's host"
    elif tls.server_name == SNI_PLACEHOLDER:
        name = f"the client's name ({SNI_PLACEHOLDER})"
    else:
        name = tls.server_name
    return f"{check}, server name {name}"


def _render_backend(backend: BackendSpec, used: bool) -> str:
    check = backend.health_check
    health = (
        f"every {format_duration(check.interval)}, timeout {format_duration(check.timeout)}, "
        f"rise {check.rise}, fall {check.fall}"
        if check is not None
        else "off"
    )
    eject = backend.eject
    ejection = (
        f"after {eject.failures} failed connects, for {format_duration(eject.cooldown)}"
        if eject.failures
        else "off"
    )
    rows = [
        ("balance", backend.balance),
        ("connect timeout", format_duration(backend.connect_timeout)),
        ("retries", str(backend.retries)),
        ("health check", health),
        ("eject", ejection),
        ("send proxy", backend.send_proxy_protocol),
        ("tls", _backend_tls(backend.tls)),
    ]
    title = f"backend {backend.name}" + ("" if used else " (not used by any listener)")
    lines = [title, *_rows(rows, _INDENT), f"{_INDENT}servers"]
    table = [
        (server.name, server.address, f"weight {server.weight}", "backup" if server.backup else "")
        for server in backend.servers
    ]
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    for name, address, weight, backup in table:
        cells = [name.ljust(widths[0]), address.ljust(widths[1]), weight.ljust(widths[2]), backup]
        lines.append((_INDENT * 2 + "  ".join(cells)).rstrip())
    return "\n".join(lines)
