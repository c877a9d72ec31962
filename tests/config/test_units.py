"""Durations and addresses: parsing, formatting and their round trip."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.config.units import format_duration, format_hostport, parse_duration, parse_hostport


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("5s", 5.0),
        ("250ms", 0.25),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5h", 5400.0),
        ("1h1m1.5s", 3661.5),
        (".5s", 0.5),
        ("0s", 0.0),
        (5, 5.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_parse_duration(text: str | int | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("5", 'only "0" may go without one'),
        ("abc", 'got "abc"'),
        ("-1s", "cannot be negative"),
        ("5 s", "no spaces"),
        ("5sec", 'unknown unit "sec"'),
        ("1m30", "the number 30 has no unit"),
        ("", 'got ""'),
        (-1, "cannot be negative"),
        (True, "got true"),
        (math.inf, "got inf"),
    ],
)
def test_parse_duration_rejects(text: object, hint: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(text)  # type: ignore[arg-type]
    message = str(info.value)
    assert message.startswith('expected a duration like "5s"')
    assert hint in message


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0"),
        (0.25, "250ms"),
        (1, "1s"),
        (5, "5s"),
        (90, "1m30s"),
        (3600, "1h"),
        (3661.5, "1h1m1.5s"),
        (1.5, "1.5s"),
        (86400, "24h"),
        (0.0001, "0.0001s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(-1)


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False, allow_infinity=False))
def test_format_then_parse_is_identity(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**12))
def test_whole_milliseconds_use_units(millis: int) -> None:
    text = format_duration(millis / 1000)
    assert "e" not in text
    assert parse_duration(text) == millis / 1000


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("[::1]:80", ("::1", 80)),
        ("[::]:0", ("::", 0)),
        ("db6.internal:5432", ("db6.internal", 5432)),
        ("*:8080", ("*", 8080)),
        ("localhost:65535", ("localhost", 65535)),
    ],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(text) == expected


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("::1:80", 'must be in brackets, e.g. "[::1]:80"'),
        ("web01", "the port is missing"),
        ("web01:", "the port is missing"),
        ("[::1]", "the port is missing"),
        ("host:65536", "from 0 to 65535"),
        ("host:http", "from 0 to 65535"),
        (":80", "the host is missing"),
        ("[web]:80", "brackets are only for IPv6"),
        ("a b:80", "neither an IP address nor a host name"),
    ],
)
def test_parse_hostport_rejects(text: str, hint: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_hostport(text)
    assert f'got "{text}"' in str(info.value)
    assert hint in str(info.value)


def test_parse_hostport_port_zero_can_be_refused() -> None:
    with pytest.raises(ValueError, match="from 1 to 65535"):
        parse_hostport("10.0.0.1:0", allow_port_zero=False)


def test_format_hostport_brackets_ipv6() -> None:
    assert format_hostport("::1", 80) == "[::1]:80"
    assert format_hostport("10.0.0.1", 80) == "10.0.0.1:80"


@given(st.ip_addresses(), st.integers(min_value=0, max_value=65535))
def test_hostport_round_trip(address: object, port: int) -> None:
    host = str(address)
    assert parse_hostport(format_hostport(host, port)) == (host, port)
