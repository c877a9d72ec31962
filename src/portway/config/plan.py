"""The effective plan that ``portway check`` prints: the configuration as Portway will run it.

Every inherited default is shown filled in, every duration is written back in its
short form (:func:`~portway.config.units.format_duration`), and every path is
absolute, so a reader sees what will happen without knowing the defaults. The
output is plain aligned text with no colour, fit for a terminal, a log or a diff.
"""

from __future__ import annotations

from collections.abc import Sequence

from portway.config.model import BackendSpec, Config, Keepalive, ListenerSpec, ProxyProtocolIn, RouteSpec
from portway.config.units import format_duration

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


def _render_listener(listener: ListenerSpec) -> str:
    idle = format_duration(listener.idle_timeout) if listener.idle_timeout else "none"
    rows = [
        ("bind", ", ".join(str(bind) for bind in listener.bind)),
        *([] if listener.routes else [("backend", listener.backend or "-")]),
        ("sniff timeout", format_duration(listener.sniff_timeout)),
        ("idle timeout", idle),
        ("max connections", str(listener.max_connections)),
        ("backlog", str(listener.backlog)),
        ("keepalive", _keepalive(listener.keepalive)),
        ("relay", listener.relay),
        ("proxy protocol", _proxy_protocol(listener.proxy_protocol)),
    ]
    return "\n".join(
        [f"listener {listener.name} (mode {listener.mode})", *_rows(rows, _INDENT), *_routes(listener.routes)]
    )


def _routes(routes: Sequence[RouteSpec]) -> list[str]:
    """One line per route: ``route <name>  <match>  <conditions>  -> <target>``, names and
    patterns aligned."""
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
            cells.append(f"-> backend {route.backend}")
        else:
            cells.append(f"-> dial {route.dial} allow {','.join(route.allow)}")
        lines.append(_INDENT + "  ".join(cells))
    return lines


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
