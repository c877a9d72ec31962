"""Allow-lists for client-chosen destinations, checked on the IP actually dialled."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.route.destpolicy import DestPolicy, parse_entry


@pytest.mark.parametrize(
    ("entries", "name", "ip", "port", "allowed"),
    [
        (["10.20.0.0/16"], "db.lab", "10.20.1.2", 5432, True),  # a network entry opens a private range
        (["10.20.0.0/16"], "db.lab", "10.21.1.2", 5432, False),
        (["*.lab.example.com"], "a.lab.example.com", "203.0.113.9", 443, True),
        (["*.lab.example.com"], "a.lab.example.com", "10.0.0.9", 443, False),  # a name never opens private
        (["*.lab.example.com"], "a.lab.example.com", "127.0.0.1", 443, False),  # ...nor loopback
        (["*.lab.example.com"], "a.lab.example.com", "169.254.169.254", 80, False),  # ...nor metadata
        (["*.lab.example.com:443"], "a.lab.example.com", "203.0.113.9", 8443, False),
        (["*.lab.example.com:8000-8999"], "a.lab.example.com", "203.0.113.9", 8443, True),
        (["127.0.0.1"], "localhost", "127.0.0.1", 80, True),  # a bare IP is a /32
        (["127.0.0.1"], "localhost", "::ffff:127.0.0.1", 80, True),  # IPv4-mapped seen as IPv4
        (["[fd00::/8]:443"], None, "fd00::1", 443, True),
        (["[fd00::/8]:443"], None, "fd00::1", 80, False),
        ([], "example.com", "203.0.113.9", 443, False),  # empty list allows nothing
        (["db.internal"], "db.internal", "203.0.113.5", 5432, True),
        (["db.internal"], "other.internal", "203.0.113.5", 5432, False),
        (["0.0.0.0/0"], "x", "100.64.0.1", 80, False),  # "the internet" opens no special range
        (["0.0.0.0/0"], "x", "203.0.113.9", 80, True),
        (["::/0"], "x", "::ffff:127.0.0.1", 80, False),  # nor does it through an IPv4-mapped form
        (["100.64.0.0/10"], "x", "100.64.0.1", 80, True),  # an entry inside the range opens it
    ],
)
def test_check(entries: list[str], name: str | None, ip: str, port: int, allowed: bool) -> None:
    why = DestPolicy.parse(entries).check(name, ip, port)
    assert (why is None) is allowed, why


def test_refusal_says_why() -> None:
    why = DestPolicy.parse(["*.lab.example.com"]).check("a.lab.example.com", "127.0.0.1", 443)
    assert why is not None and "loopback" in why and "a.lab.example.com" in why
    why = DestPolicy.parse(["10.0.0.0/8"]).check("x.example", "203.0.113.1", 443)
    assert why is not None and "not in the allow list" in why


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("10.0.0.1/8", 'no host bits set, got "10.0.0.1/8" (did you mean "10.0.0.0/8"?)'),
        ("10.0.0.0/8:99999", "ports from 1 to 65535"),
        (
            "10.0.0.0/8:b",
            'expected :port or :port-port with ports from 1 to 65535, low to high, got "10.0.0.0/8:b"',
        ),
        ("10.0.0.0/8:", "expected :port or :port-port"),
        ("[fd00::/8", 'got "[fd00::/8"'),
        ("[10.0.0.0/8]:443", "only an IPv6 address or CIDR goes in brackets"),
        ("fd00::/8:443", "write an IPv6 address with a port in brackets"),
        ("a.*.com", "a.*.com"),
        ("~^x$", "regular expressions are not allowed in an allow-list"),
        ("db.internal:443-80", "low to high"),
    ],
)
def test_bad_entries(text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_entry(text)
    assert words in str(info.value)


def test_entries_and_their_ports() -> None:
    entry = parse_entry("[fd00::/8]:8000-8999")
    assert (str(entry.network), entry.port_lo, entry.port_hi) == ("fd00::/8", 8000, 8999)
    entry = parse_entry("db.internal:443")
    assert entry.name is not None and entry.network is None and entry.port_lo == entry.port_hi == 443
    assert parse_entry("10.1.2.3").network == ipaddress.ip_network("10.1.2.3/32")


@given(st.ip_addresses(), st.integers(1, 65535))
def test_anything_is_a_decision(ip: object, port: int) -> None:
    policy = DestPolicy.parse(["10.0.0.0/8", "*.example.com:443", "[fd00::/8]"])
    result = policy.check("a.example.com", str(ip), port)
    assert result is None or isinstance(result, str)


def test_deny_wins_over_allow() -> None:
    policy = DestPolicy.parse(["0.0.0.0/0"], deny=["*.ads.example:443", "198.51.100.0/24"])
    assert policy.check("x.ads.example", "203.0.113.9", 443) == (
        "x.ads.example (203.0.113.9:443) is denied by '*.ads.example:443'"
    )
    assert policy.check("x.ads.example", "203.0.113.9", 80) is None
    why = policy.check(None, "198.51.100.7", 80)
    assert why is not None and "denied" in why
