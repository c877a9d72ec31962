"""Which CONNECT destinations are intercepted, and the memory of clients that refused the forged
certificate: matching, pinning in "log" and "passthrough" modes, expiry, the bound."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from portway.net.mitmca import CertificateAuthority
from portway.route.intercept import (
    MAX_PINNED,
    HostPatterns,
    Interception,
    normalise_host,
    parse_pattern,
    refusal_detail,
)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority.create(tmp_path_factory.mktemp("ca") / "ca")


def _interception(
    ca: CertificateAuthority,
    patterns: list[str],
    pinning: str = "log",
    *,
    pinning_ttl: float = 3600.0,
    max_pinned: int = MAX_PINNED,
) -> Interception:
    return Interception(
        patterns,
        ca,
        ssl.create_default_context(),
        pinning=pinning,
        pinning_ttl=pinning_ttl,
        max_pinned=max_pinned,
    )


@pytest.mark.parametrize(
    ("patterns", "host", "matched"),
    [
        (["example.com"], "example.com", True),
        (["example.com"], "www.example.com", False),  # exact is exact
        (["example.com"], "example.co", False),
        (["*.example.org"], "a.example.org", True),
        (["*.example.org"], "a.b.example.org", True),  # any depth, unlike an sni route's wildcard
        (["*.example.org"], "example.org", False),  # not the suffix itself
        (["*.example.org"], "badexample.org", False),  # a label boundary, not a string suffix
        (["*.example.org", "example.org"], "example.org", True),
        (["*"], "anything.test", True),
        (["*"], "192.0.2.7", True),
        (["Example.COM"], "example.com", True),  # case-insensitive both ways
        (["example.com"], "EXAMPLE.Com", True),
        (["*.Example.org"], "A.EXAMPLE.ORG", True),
        (["example.com."], "example.com", True),  # trailing dots ignored both ways
        (["example.com"], "example.com.", True),
        (["*.example.org"], "a.example.org.", True),
        (["192.0.2.1"], "192.0.2.1", True),
        (["192.0.2.1"], "192.0.2.10", False),
        (["2001:db8::1"], "2001:DB8:0:0::1", True),  # canonical form
        (["[2001:db8::1]"], "[2001:db8::1]", True),  # brackets allowed on either side
        (["2001:db8::1"], "2001:db8::2", False),
        ([], "example.com", False),  # empty: nothing
    ],
)
def test_matching(patterns: list[str], host: str, matched: bool) -> None:
    assert HostPatterns(patterns).matches(host) is matched


def test_patterns_are_precomputed() -> None:
    patterns = HostPatterns(["Example.com.", "*.a.test", "*.A.test", "192.0.2.1", "*.b.test"])
    assert patterns.exact == frozenset({"example.com", "192.0.2.1"})
    assert patterns.suffixes == (".a.test", ".b.test")  # duplicates dropped, order kept
    assert not patterns.everything and patterns
    assert not HostPatterns([])
    assert HostPatterns(["x.test", "*"]).everything


@pytest.mark.parametrize(
    ("text", "normalised"),
    [
        ("*", "*"),
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("*.Example.org.", "*.example.org"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("192.0.2.1", "192.0.2.1"),
        ("2001:DB8::0:1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("localhost", "localhost"),
    ],
)
def test_parse_pattern(text: str, normalised: str) -> None:
    assert parse_pattern(text) == normalised


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "got an empty string"),
        (" example.com", "remove the spaces"),
        ("*.", '"*." needs a suffix'),
        ("*example.com", '"*" may only stand alone or as the whole first label'),
        ("a.*.example.com", '"*" may only stand alone'),
        ("**.example.com", '"*" may only stand alone'),
        ("example.com:443", "leave out the port"),
        ("[2001:db8::1]:443", "leave out the port"),
        ("10.0.0.0/8", "networks are not supported here"),
        ("~^api\\.", "regular expressions are not supported"),
        ("bad_name!.com", "labels are letters"),
        ("-x.example.com", "labels are letters"),
        ("a..b", "labels are letters"),
        ("bücher.example", 'write "xn--bcher-kva.example"'),
    ],
)
def test_bad_patterns(text: str, words: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_pattern(text)
    message = str(info.value)
    assert message.startswith('expected a host name ("example.com"), "*.suffix"')
    assert words in message


def test_normalise_host() -> None:
    assert normalise_host("Example.COM.") == "example.com"
    assert normalise_host("[2001:DB8::1]") == "2001:db8::1"
    assert normalise_host("not:an:ip") == "not:an:ip"  # never raises


def test_log_mode_keeps_intercepting(ca: CertificateAuthority) -> None:
    interception = _interception(ca, ["*.example.org"])
    assert interception.should_intercept("a.example.org", 0.0)
    assert interception.client_refused("a.example.org", 1.0, "unknown_ca") is False
    assert interception.should_intercept("a.example.org", 2.0)  # still intercepted
    assert interception.pinned_hosts(2.0) == []
    assert interception.refusals == 1
    line = interception.describe_refusal("a.example.org", "unknown_ca", False)
    assert "a.example.org (unknown_ca)" in line and 'pinning = "log"' in line


def test_passthrough_mode_remembers_for_the_ttl(ca: CertificateAuthority) -> None:
    interception = _interception(ca, ["*"], "passthrough", pinning_ttl=60.0)
    assert interception.client_refused("Pinned.Example.", 100.0, "bad_certificate") is True
    # The host as any client may write it is the same host.
    assert not interception.should_intercept("pinned.example", 100.0)
    assert not interception.should_intercept("PINNED.example.", 159.9)
    assert interception.should_intercept("other.example", 120.0)
    assert interception.pinned_hosts(159.9) == ["pinned.example"]
    assert interception.should_intercept("pinned.example", 160.0)  # the TTL is over
    assert interception.pinned_hosts(160.0) == []
    line = interception.describe_refusal("pinned.example", "bad_certificate", True)
    assert "pass through uninspected for 1m" in line


def test_a_new_refusal_restarts_the_ttl(ca: CertificateAuthority) -> None:
    interception = _interception(ca, ["*"], "passthrough", pinning_ttl=10.0)
    interception.client_refused("a.test", 0.0, "unknown_ca")
    interception.client_refused("b.test", 5.0, "unknown_ca")
    interception.client_refused("a.test", 8.0, "unknown_ca")  # the TTL now counts from here
    assert interception.pinned_hosts(12.0) == ["b.test", "a.test"]  # oldest refusal first
    assert interception.pinned_hosts(15.0) == ["a.test"]
    assert not interception.should_intercept("a.test", 17.9)
    assert interception.should_intercept("a.test", 18.0)


def test_an_unmatched_host_is_never_intercepted(ca: CertificateAuthority) -> None:
    interception = _interception(ca, ["example.com"], "passthrough")
    interception.client_refused("example.com", 0.0, "unknown_ca")
    assert not interception.should_intercept("elsewhere.test", 0.0)
    assert not interception.should_intercept("example.com", 1.0)


def test_memory_is_bounded(ca: CertificateAuthority) -> None:
    assert MAX_PINNED == 10_000
    interception = _interception(ca, ["*"], "passthrough", max_pinned=3)
    for number in range(5):
        interception.client_refused(f"h{number}.test", float(number), "unknown_ca")
    assert interception.pinned_hosts(5.0) == ["h2.test", "h3.test", "h4.test"]
    assert interception.should_intercept("h0.test", 5.0)  # forgotten: intercepted again
    assert not interception.should_intercept("h4.test", 5.0)


def test_the_default_bound_holds(ca: CertificateAuthority) -> None:
    interception = _interception(ca, ["*"], "passthrough")
    for number in range(MAX_PINNED + 50):
        interception.client_refused(f"h{number}.test", 0.0, "unknown_ca")
    hosts = interception.pinned_hosts(1.0)
    assert len(hosts) == MAX_PINNED and hosts[0] == "h50.test"


def test_inherit_takes_over_the_pins(ca: CertificateAuthority) -> None:
    old = _interception(ca, ["*"], "passthrough", pinning_ttl=100.0)
    old.client_refused("a.test", 1.0, "unknown_ca")
    old.client_refused("b.test", 2.0, "unknown_ca")
    new = _interception(ca, ["*.test"], "passthrough", pinning_ttl=100.0, max_pinned=1)
    new.inherit(old)
    assert new.pinned_hosts(3.0) == ["b.test"]  # the new bound applies
    logged = _interception(ca, ["*"], "log")
    logged.inherit(old)
    assert logged.pinned_hosts(3.0) == []  # "log" mode remembers nothing


def test_invalid_arguments(ca: CertificateAuthority) -> None:
    with pytest.raises(ValueError, match="pinning"):
        _interception(ca, ["*"], "ignore")
    with pytest.raises(ValueError, match="pinning_ttl"):
        _interception(ca, ["*"], "passthrough", pinning_ttl=0.0)
    with pytest.raises(ValueError, match="max_pinned"):
        _interception(ca, ["*"], max_pinned=0)
    with pytest.raises(ValueError, match="leave out the port"):
        _interception(ca, ["example.com:443"])


def _handshake(server: ssl.SSLObject, client: ssl.SSLObject, pipes: tuple[ssl.MemoryBIO, ...]) -> None:
    """Run both ends of a handshake over memory BIOs until one raises."""
    c_in, c_out, s_in, s_out = pipes
    for _ in range(10):
        for obj in (client, server):
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            finally:
                s_in.write(c_out.read())
                c_in.write(s_out.read())
    raise AssertionError("the handshake neither finished nor failed")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_a_client_that_does_not_trust_the_ca_is_recognised(
    ca: CertificateAuthority, tmp_path: Path, version: ssl.TLSVersion
) -> None:
    """A real client that does not trust the CA aborts with an alert; the server side's
    ``SSLError.reason`` is what :func:`refusal_detail` recognises."""
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # trusts nothing: like a pinning client
    client_context.maximum_version = version
    pipes = tuple(ssl.MemoryBIO() for _ in range(4))
    client = client_context.wrap_bio(pipes[0], pipes[1], server_hostname="pinned.example")
    server = ca.leaf_context("pinned.example").wrap_bio(pipes[2], pipes[3], server_side=True)
    with pytest.raises(ssl.SSLError) as info:
        _handshake(server, client, pipes)
    if isinstance(info.value, ssl.SSLCertVerificationError):  # the client's side failed first
        with pytest.raises(ssl.SSLError) as info:
            server.do_handshake()
    assert refusal_detail(info.value.reason) == "unknown_ca"


def test_other_errors_are_not_refusals() -> None:
    assert refusal_detail(None) is None
    assert refusal_detail("WRONG_VERSION_NUMBER") is None
    assert refusal_detail("SSLV3_ALERT_BAD_CERTIFICATE") == "bad_certificate"
