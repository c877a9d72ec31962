"""Durations and addresses as they are written in the configuration.

Pure functions, no I/O. Each parser raises :class:`ValueError` whose message is a
complete sentence fragment for the user: it says what was expected and quotes what
was found (``expected host:port, got "web01" (the port is missing)``), so the
loader can put it after ``file: key:`` unchanged.

Durations
    A duration is a string of one or more ``<number><unit>`` parts with no spaces:
    ``"5s"``, ``"250ms"``, ``"1m30s"``, ``"1.5h"``; units are ``ms``, ``s``, ``m``
    and ``h``. ``"0"`` is the only unit-less string accepted (it means zero, and
    for timeouts "none"). A bare number in quotes such as ``"5"`` is refused because
    it is ambiguous (seconds? milliseconds?); an unquoted TOML number (``5``,
    ``0.25``) is accepted and means seconds. Durations are never negative.

Addresses
    ``host:port`` or ``[ipv6]:port``. An IPv6 address must be in brackets, since its
    own colons make the port ambiguous.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from decimal import Decimal
from fractions import Fraction

__all__ = ["format_duration", "format_hostport", "parse_duration", "parse_hostport"]

_UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_TOKEN = re.compile(r"(\d+(?:\.\d*)?|\.\d+)([A-Za-z]*)")
_NUMBER_ONLY = re.compile(r"[+-]?(\d+(?:\.\d*)?|\.\d+)")
_EXPECTED_DURATION = 'expected a duration like "5s", "250ms" or "1m30s"'

_HOSTNAME_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _quote(value: object) -> str:
    """Quote a found value the way messages show it: strings in double quotes."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def parse_duration(value: str | int | float) -> float:
    """Parse a configuration duration into seconds.

    Args:
        value: A duration string (``"5s"``, ``"250ms"``, ``"1m30s"``, ``"0"``) or a
            plain non-negative number of seconds (``5``, ``0.25``).

    Returns:
        The duration in seconds, as the float nearest to the exact value written.

    Raises:
        ValueError: With a message that quotes the input and says what is wrong:
            ``"5"`` (a unit is needed), ``"abc"``, ``"-1s"`` (negative), ``"5 s"``
            (space), ``"5sec"`` (unknown unit), a boolean, NaN or infinity.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"{_EXPECTED_DURATION}, got {_quote(value)}")
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{_EXPECTED_DURATION}, got {_quote(value)}")
        if value < 0:
            raise ValueError(f"{_EXPECTED_DURATION}, got {_quote(value)} (durations cannot be negative)")
        return float(value)

    text = value
    found = _quote(text)
    if text == "0":
        return 0.0
    if text.strip() != text or any(ch.isspace() for ch in text):
        raise ValueError(f'{_EXPECTED_DURATION}, got {found} (no spaces: write "5s", not "5 s")')
    if text.startswith("-"):
        raise ValueError(f"{_EXPECTED_DURATION}, got {found} (durations cannot be negative)")
    if _NUMBER_ONLY.fullmatch(text):
        raise ValueError(
            f"{_EXPECTED_DURATION}, got {found} (a number in quotes needs a unit; "
            f'only "0" may go without one, or write {text.lstrip("+")} without quotes for seconds)'
        )
    total = Fraction(0)
    position = 0
    for match in _TOKEN.finditer(text):
        if match.start() != position:
            break
        number, unit = match.groups()
        if unit not in _UNITS:
            if not unit:
                raise ValueError(f"{_EXPECTED_DURATION}, got {found} (the number {number} has no unit)")
            raise ValueError(f'{_EXPECTED_DURATION}, got {found} (unknown unit "{unit}"; use ms, s, m or h)')
        total += Fraction(number) * _UNITS[unit]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f"{_EXPECTED_DURATION}, got {found}")
    return float(total)


def format_duration(seconds: float) -> str:
    """Write a number of seconds the way a person would, as a valid duration string.

    The result always parses back to exactly ``seconds`` with :func:`parse_duration`.

    Examples: ``0 -> "0"``, ``0.25 -> "250ms"``, ``5 -> "5s"``, ``90 -> "1m30s"``,
    ``3600 -> "1h"``, ``1.5 -> "1.5s"``, ``0.0001 -> "0.0001s"``.

    Raises:
        ValueError: If ``seconds`` is negative, NaN or infinite.
    """
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"cannot format {seconds!r} as a duration: it must be a finite number >= 0")
    if seconds == 0:
        return "0"
    millis = round(seconds * 1000)
    if float(Fraction(millis, 1000)) != seconds:
        # Not a whole number of milliseconds: plain decimal seconds, never exponent form.
        return format(Decimal(repr(float(seconds))), "f") + "s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    parts = []
    if hours:
        parts.append(f"{hours}h")
    if minutes:
        parts.append(f"{minutes}m")
    if frac:
        parts.append(f"{whole}.{frac:03d}".rstrip("0") + "s")
    elif whole:
        parts.append(f"{whole}s")
    return "".join(parts)


def _check_hostname(host: str, value: str) -> None:
    """Raise ValueError unless ``host`` is a syntactically valid DNS name."""
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in name.split(".")):
        raise ValueError(
            f"expected host:port, got {_quote(value)}"
            f" ({_quote(host)} is neither an IP address nor a host name)"
        )


def parse_hostport(value: str, *, allow_port_zero: bool = True) -> tuple[str, int]:
    """Split ``"host:port"`` or ``"[ipv6]:port"`` into its host and port.

    The host comes back without brackets and otherwise as written (an IPv6 address
    is not normalised here; DNS names are kept). ``"*"`` is accepted as a host so
    that bind addresses can use it; callers decide which hosts they allow.

    Args:
        value: The address as written in the configuration.
        allow_port_zero: Whether port 0 (an ephemeral port, for binds) is allowed.

    Returns:
        ``(host, port)``.

    Raises:
        ValueError: If the port is missing or out of range, the host is empty or not
            a valid IP literal or host name, or an IPv6 address lacks brackets (the
            message suggests the bracketed form).
    """
    if not isinstance(value, str):
        raise ValueError(f"expected host:port as a string, got {_quote(value)}")
    found = _quote(value)
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f'expected [ipv6]:port, got {found} (the closing "]" is missing)')
        host, rest = value[1:end], value[end + 1 :]
        if not rest:
            raise ValueError(f'expected [ipv6]:port, got {found} (the port is missing, e.g. "[{host}]:80")')
        if not rest.startswith(":"):
            raise ValueError(f'expected [ipv6]:port, got {found} (expected ":" and a port after "]")')
        port_text = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected [ipv6]:port, got {found} (brackets are only for IPv6 addresses, "
                f"and {_quote(host)} is not one)"
            ) from None
    else:
        colons = value.count(":")
        if colons == 0:
            raise ValueError(f"expected host:port, got {found} (the port is missing)")
        if colons > 1:
            host_part, _, port_part = value.rpartition(":")
            raise ValueError(
                f"expected host:port, got {found} (an IPv6 address must be in brackets, "
                f'e.g. "[{host_part}]:{port_part}")'
            )
        host, port_text = value.split(":")
        if not host:
            raise ValueError(
                f'expected host:port, got {found} (the host is missing; use "*" for every address)'
            )
        if host != "*":
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                _check_hostname(host, value)
    low = 0 if allow_port_zero else 1
    if not port_text:
        raise ValueError(f"expected host:port, got {found} (the port is missing)")
    if not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {found} (the port must be a number from {low} to 65535)")
    port = int(port_text)
    if not low <= port <= 65535:
        raise ValueError(f"expected host:port, got {found} (the port must be a number from {low} to 65535)")
    return host, port


def format_hostport(host: str, port: int) -> str:
    """Join a host and a port, bracketing an IPv6 address: ``"[::1]:80"``."""
    if ":" in host:
        return f"[{host}]:{port}"
    return f"{host}:{port}"
