"""Tests for portway.route.match: server name patterns and client networks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portway.route.match import NameMatcher, Networks, is_hostname, parse_ip

# --- NameMatcher: kinds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "kind"),
    [
        ("app.example.com", "exact"),
        ("localhost", "exact"),
        ("xn--bcher-kva.de", "exact"),
        ("10.0.0.5", "exact"),
        ("*.example.com", "wildcard"),
        ("*.com", "wildcard"),
        ("~^api-[0-9]+\\.example\\.com$", "regex"),
        ("~.*", "regex"),
    ],
)
def test_parse_kind(pattern: str, kind: str) -> None:
    matcher = NameMatcher.parse(pattern)
    assert matcher.kind == kind
    assert matcher.pattern == pattern


# --- NameMatcher: matching ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        # exact
        ("app.example.com", "app.example.com", True),
        ("app.example.com", "APP.Example.COM", True),
        ("App.Example.Com", "app.example.com", True),
        ("app.example.com", "app.example.co", False),
        ("app.example.com", "xapp.example.com", False),
        ("app.example.com", "a.app.example.com", False),
        ("app.example.com", "app.example.com.", False),  # the sniffer strips the dot
        ("app.example.com", "", False),
        ("xn--bcher-kva.de", "xn--bcher-kva.de", True),
        # wildcard: exactly one label in place of '*'
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "xn--bcher-kva.example.com", True),
        ("*.example.com", "A.EXAMPLE.COM", True),
        ("*.Example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", "example.com", False),  # needs its own exact route
        ("*.example.com", ".example.com", False),
        ("*.example.com", "aexample.com", False),
        ("*.example.com", "a.example.org", False),
        ("*.example.com", "", False),
        ("*.com", "example.com", True),
        ("*.com", "a.example.com", False),
        # non-ASCII never matches an exact or wildcard pattern: KELVIN SIGN lower-cases to "k"
        ("k.example.com", "\u212a.example.com", False),
        ("*.example.com", "\u212a.example.com", False),
        ("~k\\.example\\.com", "\u212a.example.com", False),
        ("~.*", "bücher.de", False),
        # regex: fullmatch on the lower-cased name
        ("~^(.+\\.)?example\\.com$", "example.com", True),
        ("~^(.+\\.)?example\\.com$", "a.b.example.com", True),
        ("~^(.+\\.)?example\\.com$", "EXAMPLE.com", True),
        ("~^(.+\\.)?example\\.com$", "example.com.evil", False),
        ("~api-[0-9]+\\.example\\.com", "api-12.example.com", True),
        ("~api-[0-9]+\\.example\\.com", "xapi-12.example.com", False),  # fullmatch, not search
        ("~api-[0-9]+\\.example\\.com", "api-12.example.com.x", False),
        ("~API\\.example\\.com", "api.example.com", False),  # write regexes in lower case
    ],
)
def test_matches(pattern: str, name: str, expected: bool) -> None:
    assert NameMatcher.parse(pattern).matches(name) is expected


def test_example_com_is_not_covered_by_its_wildcard() -> None:
    wildcard = NameMatcher.parse("*.example.com")
    apex = NameMatcher.parse("example.com")
    both = NameMatcher.parse("~^(.+\\.)?example\\.com$")
    assert not wildcard.matches("example.com")
    assert apex.matches("example.com")
    assert both.matches("example.com") and both.matches("www.example.com")


def test_regex_is_compiled_once() -> None:
    matcher = NameMatcher.parse("~[a-z]+\\.example\\.com")
    regex = matcher._regex
    assert regex is not None
    for _ in range(3):
        assert matcher.matches("abc.example.com")
    assert matcher._regex is regex


def test_equality_and_repr() -> None:
    assert NameMatcher.parse("*.example.com") == NameMatcher.parse("*.example.com")
    assert NameMatcher.parse("*.example.com") != NameMatcher.parse("*.example.org")
    assert hash(NameMatcher.parse("a.b")) == hash(NameMatcher.parse("a.b"))
    assert repr(NameMatcher.parse("*.example.com")) == "NameMatcher.parse('*.example.com')"


# --- NameMatcher: bad patterns -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        ("", "empty server name pattern"),
        ("app.example.com.", "remove the trailing dot"),
        ("*.example.com.", "remove the trailing dot"),
        ("a.*.com", "'*' is allowed only as the whole first label"),
        ("*example.com", "'*' is allowed only as the whole first label"),
        ("**.x", "'*' is allowed only as the whole first label"),
        ("*.*.example.com", "'*' is allowed only as the whole first label"),
        ("a*.example.com", "'*' is allowed only as the whole first label"),
        ("*", "'*' needs a suffix"),
        ("*.", "'*' needs a suffix"),
        ("a..example.com", "empty label"),
        (".example.com", "empty label"),
        ("*..example.com", "empty label"),
        ("a_b.example.com", "label 'a_b' may hold only letters, digits and '-'"),
        ("-a.example.com", "label '-a'"),
        ("a-.example.com", "label 'a-'"),
        ("a b.com", "label 'a b'"),
        ("app.example.com:443", "label 'com:443'"),
        (" app.example.com", "whitespace"),
        ("a" * 64 + ".com", "has 64 characters, at most 63"),
        (".".join(["a" * 63] * 4), "at most 253 characters, this one has 255"),
        ("bücher.de", "IDNA 'xn--' form ('xn--bcher-kva.de')"),
        ("~", "empty regular expression"),
        ("~(", "invalid regular expression: missing ), unterminated subpattern"),
        ("~[a-", "invalid regular expression"),
    ],
)
def test_bad_patterns(pattern: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        NameMatcher.parse(pattern)
    text = str(info.value)
    assert message in text
    if pattern:
        assert repr(pattern) in text  # the message quotes the bad input


def test_longest_valid_names_are_accepted() -> None:
    name = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 61])
    assert len(name) == 253
    assert NameMatcher.parse(name).matches(name)
    assert NameMatcher.parse("*." + "a" * 63 + ".com").matches("x." + "a" * 63 + ".com")


@given(
    st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True
    )
)
def test_every_valid_name_matches_itself_and_its_wildcard(name: str) -> None:
    assert is_hostname(name)
    assert NameMatcher.parse(name).matches(name)
    assert NameMatcher.parse(name.upper()).matches(name)
    wildcard = NameMatcher.parse("*." + name)
    assert wildcard.matches("x." + name)
    assert not wildcard.matches(name)
    assert not wildcard.matches("x.y." + name)


@given(st.text(max_size=40), st.text(max_size=40))
def test_matching_never_raises(pattern: str, name: str) -> None:
    try:
        matcher = NameMatcher.parse(pattern)
    except ValueError:
        return
    assert matcher.matches(name) in (True, False)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("a", True),
        ("app.example.com", True),
        ("APP.example.com", True),
        ("xn--bcher-kva.de", True),
        ("", False),
        ("a..b", False),
        ("a.b.", False),
        ("-a.b", False),
        ("a_b.c", False),
        ("a:443", False),
        ("[::1]", False),
        ("a" * 64, False),
        (".".join(["a" * 63] * 4), False),
    ],
)
def test_is_hostname(name: str, expected: bool) -> None:
    assert is_hostname(name) is expected


# --- Networks ----------------------------------------------------------------------------------


NETS = Networks.parse(["10.0.0.0/8", "192.0.2.7", "2001:db8::/32", "::1"])


@pytest.mark.parametrize(
    ("ip", "expected"),
    [
        ("10.0.0.1", True),
        ("10.255.255.255", True),
        ("11.0.0.1", False),
        ("9.255.255.255", False),
        ("192.0.2.7", True),  # a bare IP is a /32
        ("192.0.2.8", False),
        ("2001:db8::1", True),
        ("2001:DB8:ffff::1", True),
        ("2001:db9::1", False),
        ("::1", True),  # a bare IP is a /128
        ("::2", False),
        # IPv4-mapped IPv6, as a dual-stack socket reports IPv4 clients
        ("::ffff:10.1.2.3", True),
        ("::FFFF:192.0.2.7", True),
        ("::ffff:11.1.2.3", False),
        ("::ffff:a01:203", True),  # the same as ::ffff:10.1.2.3
        # not an address: in no network
        ("", False),
        ("10.0.0.1:443", False),
        ("[::1]", False),
        ("example.com", False),
        ("10.0.0", False),
    ],
)
def test_networks_contains(ip: str, expected: bool) -> None:
    assert NETS.contains(ip) is expected


def test_mapped_ipv6_entry_matches_plain_ipv4_client() -> None:
    nets = Networks.parse(["::ffff:10.0.0.0/104"])
    assert nets.contains("10.1.2.3")
    assert nets.contains("::ffff:10.1.2.3")
    assert not nets.contains("11.1.2.3")


def test_ipv4_client_is_its_mapped_form_everywhere() -> None:
    # ::/0 holds ::ffff:0:0/96, so it takes IPv4 clients whichever form the socket reports.
    nets = Networks.parse(["::/0"])
    assert nets.contains("2001:db8::1")
    assert nets.contains("10.0.0.1")
    assert nets.contains("::ffff:10.0.0.1")
    assert Networks.parse(["0.0.0.0/0"]).contains("::ffff:1.2.3.4")
    assert not Networks.parse(["0.0.0.0/0"]).contains("2001:db8::1")
    assert not Networks.parse(["2001:db8::/32"]).contains("10.0.0.1")


def test_scoped_ipv6_address() -> None:
    assert Networks.parse(["fe80::/10"]).contains("fe80::1%eth0")


def test_empty_networks_are_falsy_and_contain_nothing() -> None:
    empty = Networks.parse([])
    assert not empty
    assert len(empty) == 0
    assert not empty.contains("10.0.0.1")
    assert len(NETS) == 4 and NETS


def test_parse_ip_forms() -> None:
    assert parse_ip("10.0.0.1") == (0x0A000001, 0xFFFF0A000001)
    assert parse_ip("::ffff:10.0.0.1") == (0x0A000001, 0xFFFF0A000001)
    assert parse_ip("::1") == (-1, 1)
    assert parse_ip("nope") is None


def test_networks_equality_and_repr() -> None:
    assert Networks.parse(["10.0.0.0/8"]) == Networks.parse([" 10.0.0.0/8 "])
    assert Networks.parse(["10.0.0.0/8"]) != Networks.parse(["10.0.0.0/16"])
    assert hash(Networks.parse(["::1"])) == hash(Networks.parse(["::1/128"]))
    assert repr(Networks.parse(["10.0.0.0/8", "::1"])) == "Networks.parse(['10.0.0.0/8', '::1/128'])"


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        (["example.com"], "'example.com' is not an IP address or CIDR"),
        ([""], "'' is not an IP address or CIDR"),
        (["10.0.0.0/33"], "is not an IP address or CIDR"),
        (["10.0.0.256"], "is not an IP address or CIDR"),
        (["10.0.0.0/8", "garbage"], "'garbage' is not"),
        (["[::1]"], "is not an IP address or CIDR"),
        (["2001:db8::/129"], "is not an IP address or CIDR"),
        (["10.1.2.3/8"], "has host bits set; did you mean '10.0.0.0/8'?"),
        (["2001:db8::1/32"], "did you mean '2001:db8::/32'?"),
        ("10.0.0.0/8", "expected a list of CIDRs or IP addresses, got the string"),
    ],
)
def test_networks_bad_entries(entries: list[str] | str, message: str) -> None:
    with pytest.raises(ValueError, match=r"^networks: ") as info:
        Networks.parse(entries)
    assert message in str(info.value)


@given(st.text(max_size=45))
def test_contains_never_raises(ip: str) -> None:
    assert NETS.contains(ip) in (True, False)
