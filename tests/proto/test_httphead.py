"""Tests for portway.proto.httphead: real heads, byte-at-a-time, malformed heads, properties.

The curl heads are what curl 7.88.1 sends (``curl -v http://example.com/``, ``curl -x ...``); the
browser head is a Firefox 128 request for a stylesheet. Each fixture is fed whole, one byte at a
time, and with a body or a pipelined request after it.
"""

import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portway.proto.httphead import NEED_DATA, HeadError, RequestHead, parse
from tests.proto.contract import assert_decision_is_final, mutate

_EXAMPLES = {"fast": 100, "deep": 5_000}.get(os.environ.get("HYPOTHESIS_PROFILE", "fast"), 100)
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CURL = b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
BROWSER = (
    b"GET /static/css/site.css?v=3 HTTP/1.1\r\n"
    b"Host: WWW.Example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/css,*/*;q=0.1\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: http://www.example.com/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef\r\n"
    b"Sec-Fetch-Dest: style\r\n"
    b"\r\n"
)
HTTP10 = b"GET /index.html HTTP/1.0\r\nUser-Agent: Wget/1.21\r\n\r\n"
CONNECT = (
    b"CONNECT example.com:443 HTTP/1.1\r\n"
    b"Host: example.com:443\r\n"
    b"User-Agent: curl/7.88.1\r\n"
    b"Proxy-Connection: Keep-Alive\r\n"
    b"\r\n"
)
CONNECT_V6 = b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n\r\n"
ABSOLUTE = (
    b"GET http://Example.com:8080/x?y=1 HTTP/1.1\r\n"
    b"Host: other.example:9\r\n"  # the target's authority wins (RFC 9112 §3.3)
    b"User-Agent: curl/7.88.1\r\n"
    b"Accept: */*\r\n"
    b"Proxy-Connection: Keep-Alive\r\n"
    b"\r\n"
)
IPV6_HOST = b"GET /ping HTTP/1.1\r\nHost: [::1]:8080\r\nAccept: */*\r\n\r\n"
OPTIONS_STAR = b"OPTIONS * HTTP/1.1\r\nHost: example.com\r\n\r\n"
LEADING_CRLF = b"\r\n\r\nGET / HTTP/1.1\r\nHost: example.com:80\r\n\r\n"  # RFC 9112 §2.2: skipped
EMPTY_HOST = b"GET / HTTP/1.1\r\nHost:\r\n\r\n"  # RFC 9112 §3.2: valid, no host to route by
ODD_VALUES = b"POST /f HTTP/1.1\r\nHost: a.test\r\nX-Empty:\r\nX-Tab:\t a\tb \t\r\nX-Latin: caf\xe9\r\n\r\n"

CURL_FIELDS = (("host", "example.com"), ("user-agent", "curl/7.88.1"), ("accept", "*/*"))
BROWSER_FIELDS = (
    ("host", "WWW.Example.com"),
    ("user-agent", "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"),
    ("accept", "text/css,*/*;q=0.1"),
    ("accept-language", "en-US,en;q=0.5"),
    ("accept-encoding", "gzip, deflate, br, zstd"),
    ("referer", "http://www.example.com/"),
    ("connection", "keep-alive"),
    ("cookie", "session=0123456789abcdef"),
    ("sec-fetch-dest", "style"),
)


def _head(
    raw: bytes,
    method: str,
    target: str,
    version: tuple[int, int],
    headers: tuple[tuple[str, str], ...],
    host: str | None,
    port: int | None,
    authority: str | None,
) -> RequestHead:
    """The expected result for the whole of ``raw``."""
    return RequestHead(method, target, version, headers, host, port, authority, len(raw))


FIXTURES: list[tuple[str, bytes, RequestHead]] = [
    ("curl", CURL, _head(CURL, "GET", "/", (1, 1), CURL_FIELDS, "example.com", None, None)),
    (
        "browser",
        BROWSER,
        _head(
            BROWSER, "GET", "/static/css/site.css?v=3", (1, 1), BROWSER_FIELDS, "www.example.com", None, None
        ),
    ),
    (
        "http10-no-host",
        HTTP10,
        _head(HTTP10, "GET", "/index.html", (1, 0), (("user-agent", "Wget/1.21"),), None, None, None),
    ),
    (
        "connect",
        CONNECT,
        _head(
            CONNECT,
            "CONNECT",
            "example.com:443",
            (1, 1),
            (
                ("host", "example.com:443"),
                ("user-agent", "curl/7.88.1"),
                ("proxy-connection", "Keep-Alive"),
            ),
            "example.com",
            443,
            "example.com:443",
        ),
    ),
    (
        "connect-ipv6",
        CONNECT_V6,
        _head(
            CONNECT_V6,
            "CONNECT",
            "[2001:db8::1]:8443",
            (1, 1),
            (("host", "[2001:db8::1]:8443"),),
            "2001:db8::1",
            8443,
            "[2001:db8::1]:8443",
        ),
    ),
    (
        "absolute-form",
        ABSOLUTE,
        _head(
            ABSOLUTE,
            "GET",
            "http://Example.com:8080/x?y=1",
            (1, 1),
            (
                ("host", "other.example:9"),
                ("user-agent", "curl/7.88.1"),
                ("accept", "*/*"),
                ("proxy-connection", "Keep-Alive"),
            ),
            "example.com",
            8080,
            None,
        ),
    ),
    (
        "ipv6-host",
        IPV6_HOST,
        _head(
            IPV6_HOST, "GET", "/ping", (1, 1), (("host", "[::1]:8080"), ("accept", "*/*")), "::1", 8080, None
        ),
    ),
    (
        "options-star",
        OPTIONS_STAR,
        _head(OPTIONS_STAR, "OPTIONS", "*", (1, 1), (("host", "example.com"),), "example.com", None, None),
    ),
    (
        "leading-crlf",
        LEADING_CRLF,
        _head(LEADING_CRLF, "GET", "/", (1, 1), (("host", "example.com:80"),), "example.com", 80, None),
    ),
    ("empty-host", EMPTY_HOST, _head(EMPTY_HOST, "GET", "/", (1, 1), (("host", ""),), None, None, None)),
    (
        "odd-values",
        ODD_VALUES,
        _head(
            ODD_VALUES,
            "POST",
            "/f",
            (1, 1),
            (("host", "a.test"), ("x-empty", ""), ("x-tab", "a\tb"), ("x-latin", "café")),
            "a.test",
            None,
            None,
        ),
    ),
]
IDS = [f[0] for f in FIXTURES]


@pytest.mark.parametrize(("name", "raw", "expected"), FIXTURES, ids=IDS)
def test_whole(name: str, raw: bytes, expected: RequestHead) -> None:
    assert parse(raw) == expected
    assert parse(bytearray(raw)) == expected
    assert parse(memoryview(raw)) == expected


@pytest.mark.parametrize(("name", "raw", "expected"), FIXTURES, ids=IDS)
def test_one_byte_at_a_time(name: str, raw: bytes, expected: RequestHead) -> None:
    buffer = bytearray()
    for byte in raw:
        assert parse(buffer) is NEED_DATA
        buffer.append(byte)
    assert parse(buffer) == expected


@pytest.mark.parametrize(
    "trailing",
    [
        b"hello=world",  # a body
        CURL,  # a pipelined request
        b"\r\n\r\n",
        b"\n\x00\xff garbage that is never looked at \r",
    ],
)
@pytest.mark.parametrize(("name", "raw", "expected"), FIXTURES, ids=IDS)
def test_trailing_bytes_are_left_alone(name: str, raw: bytes, expected: RequestHead, trailing: bytes) -> None:
    data = raw + trailing
    head = parse(data)
    assert head == expected
    assert isinstance(head, RequestHead)
    assert data[head.length :] == trailing


def test_http2_preface_is_refused_with_505() -> None:
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    assert parse(preface[:15]) is NEED_DATA
    with pytest.raises(HeadError, match="HTTP/2 connection preface") as excinfo:
        parse(preface[:16])  # refused as soon as the request line is complete
    assert excinfo.value.hint == 505


def test_limits_at_the_boundary() -> None:
    line = b"GET /" + b"a" * 95 + b" HTTP/1.1"  # 109 bytes
    head = line + b"\r\nHost: a\r\n\r\n"
    assert isinstance(parse(head, max_line=len(line)), RequestHead)
    assert isinstance(parse(head, max_head=len(head)), RequestHead)
    with pytest.raises(HeadError) as excinfo:
        parse(head, max_line=len(line) - 1)
    assert excinfo.value.hint == 414
    with pytest.raises(HeadError) as excinfo:
        parse(head, max_head=len(head) - 1)
    assert excinfo.value.hint == 431
    assert parse(head[:-1], max_head=len(head)) is NEED_DATA
    # A line exactly max_line long with its CR arrived but not its LF still needs data.
    assert parse(line + b"\r", max_line=len(line)) is NEED_DATA


# --- malformed heads --------------------------------------------------------------------------

LONG = b"GET /" + b"x" * 8200
MALFORMED: list[tuple[str, bytes, int, str]] = [
    ("bare-lf", b"GET / HTTP/1.1\nHost: a\n\n", 400, "bare LF"),
    ("bare-lf-in-fields", b"GET / HTTP/1.1\r\nHost: a\n\r\n\r\n", 400, "bare LF"),
    ("bare-cr", b"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 400, "bare CR"),
    ("space-before-colon", b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 400, "whitespace before the colon"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n", 400, "obs-fold"),
    ("space-after-request-line", b"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "whitespace after the request"),
    ("no-colon", b"GET / HTTP/1.1\r\nHost: a\r\nX-A\r\n\r\n", 400, "no colon"),
    ("empty-name", b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n", 400, "not a token"),
    ("non-token-name", b"GET / HTTP/1.1\r\nHost: a\r\nX(A): b\r\n\r\n", 400, "not a token"),
    ("nul-in-value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x00c\r\n\r\n", 400, "control character"),
    ("two-hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"),
    ("two-hosts-same", b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400, "more than one Host"),
    ("two-hosts-http10", b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "more than one Host"),
    ("missing-host-1.1", b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", 400, "has no Host field"),
    ("missing-host-absolute", b"GET http://a/ HTTP/1.1\r\n\r\n", 400, "has no Host field"),
    ("http-0.9", b"GET /\r\n\r\n", 400, "method SP request-target SP HTTP-version"),
    ("bad-version", b"GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400, "HTTP/<digit>.<digit>"),
    ("lower-case-version", b"GET / http/1.1\r\nHost: a\r\n\r\n", 400, "HTTP/<digit>.<digit>"),
    ("http-2.0", b"GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP version 2.0 is not supported"),
    ("http-1.2", b"GET / HTTP/1.2\r\nHost: a\r\n\r\n", 505, "HTTP version 1.2"),
    ("http-0.9-versioned", b"GET / HTTP/0.9\r\n\r\n", 505, "HTTP version 0.9"),
    ("http2-preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2 connection preface"),
    ("line-too-long-no-crlf", LONG, 414, "request line is longer than 8192 bytes"),
    ("line-too-long", LONG + b" HTTP/1.1\r\nHost: a\r\n\r\n", 414, "longer than 8192"),
    ("field-too-long", b"GET / HTTP/1.1\r\nX: " + b"a" * 8200 + b"\r\n\r\n", 431, "field line 1 is longer"),
    ("field-too-long-no-crlf", b"GET / HTTP/1.1\r\nX: " + b"a" * 8200, 431, "field line 1 is longer"),
    (
        "head-too-big",
        b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 4000,
        431,
        "no blank line within the first 16384 bytes",
    ),
    ("only-crlfs", b"\r\n" * 8192, 431, "no blank line"),
    ("non-token-method", b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "method is not a token"),
    ("tls-client-hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "method is not a token"),
    ("leading-space", b" GET / HTTP/1.1\r\n", 400, "method is not a token"),
    ("two-spaces", b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "printable ASCII"),
    ("space-in-target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "HTTP/<digit>.<digit>"),
    ("tab-in-target", b"GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n", 400, "printable ASCII"),
    ("nul-in-target", b"GET /a\x00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "printable ASCII"),
    ("del-in-target", b"GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "printable ASCII"),
    ("utf8-in-target", "GET /é HTTP/1.1\r\nHost: a\r\n\r\n".encode(), 400, "printable ASCII"),
    ("trailing-space", b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "HTTP/<digit>.<digit>"),
    ("star-with-get", b"GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "only allowed with OPTIONS"),
    ("relative-target", b"GET x/y HTTP/1.1\r\nHost: a\r\n\r\n", 400, "neither origin-form"),
    ("authority-form-with-get", b"GET a.test:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "neither origin-form"),
    ("userinfo", b"GET http://u:p@a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n", 400, "userinfo"),
    ("empty-authority", b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n", 400, "empty host"),
    ("connect-origin-form", b"CONNECT / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "must be host:port"),
    ("connect-no-port", b"CONNECT a.test HTTP/1.1\r\nHost: a.test\r\n\r\n", 400, "must be host:port"),
    ("connect-empty-port", b"CONNECT a.test: HTTP/1.1\r\nHost: a.test\r\n\r\n", 400, "must be host:port"),
    ("connect-no-host", b"CONNECT :443 HTTP/1.1\r\nHost: a.test\r\n\r\n", 400, "port but no host"),
    ("host-with-space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "characters a host name cannot"),
    ("host-with-slash", b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "characters a host name cannot"),
    ("host-latin1", b"GET / HTTP/1.1\r\nHost: caf\xe9\r\n\r\n", 400, "characters a host name cannot"),
    ("host-bad-port", b"GET / HTTP/1.1\r\nHost: a:http\r\n\r\n", 400, "not a number 0-65535"),
    ("host-big-port", b"GET / HTTP/1.1\r\nHost: a:65536\r\n\r\n", 400, "not a number 0-65535"),
    ("host-long-port", b"GET / HTTP/1.1\r\nHost: a:000080\r\n\r\n", 400, "not a number 0-65535"),
    ("host-port-only", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400, "port but no host"),
    ("host-bare-ipv6", b"GET / HTTP/1.1\r\nHost: ::1\r\n\r\n", 400, "IPv6 needs [brackets]"),
    ("host-bad-ipv6", b"GET / HTTP/1.1\r\nHost: [::g]\r\n\r\n", 400, "not a bracketed IPv6"),
    ("host-ipv6-zone", b"GET / HTTP/1.1\r\nHost: [fe80::1%eth0]\r\n\r\n", 400, "not a bracketed IPv6"),
    ("host-unclosed-bracket", b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", 400, "not a bracketed IPv6"),
    ("host-junk-after-bracket", b"GET / HTTP/1.1\r\nHost: [::1]x\r\n\r\n", 400, "not a number"),
    ("host-invalid-absolute", b"GET http://a.test/ HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "host name cannot"),
]


@pytest.mark.parametrize(("name", "data", "status", "message"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed(name: str, data: bytes, status: int, message: str) -> None:
    with pytest.raises(HeadError) as excinfo:
        parse(data)
    assert excinfo.value.hint == status
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("prefix", "status", "message"),
    [
        (b"\x16", 400, "method is not a token"),  # TLS on a plaintext port: refused at the first byte
        (b"GET /\x00", 400, "printable ASCII"),
        (b"GET / HTTP/1.1x", 400, "HTTP/<digit>.<digit>"),
        (b"GET / HTTP/1.1\n", 400, "bare LF"),
        (b"GET / HTTP/1.1\r\nHost: a\r\n ", 400, "obs-fold"),
        (b"GET / HTTP/1.1\r\nHost ", 400, "whitespace before the colon"),
        (b"GET / HTTP/1.1\r\nX: a\x01", 400, "control character"),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n", 400, "more than one Host"),
        (b"GET / HTTP/3.0\r\n", 505, "HTTP version 3.0"),
        (b"GET /" + b"a" * 8188, 414, "longer than 8192"),
    ],
)
def test_malformed_refused_early(prefix: bytes, status: int, message: str) -> None:
    with pytest.raises(HeadError) as excinfo:
        parse(prefix)
    assert excinfo.value.hint == status
    assert message in str(excinfo.value)


def test_request_line_of_exactly_max_line_waits() -> None:
    line = b"GET /" + b"a" * 8178 + b" HTTP/1.1"
    assert len(line) == 8192
    assert parse(line) is NEED_DATA
    assert parse(line + b"\r") is NEED_DATA
    with pytest.raises(HeadError) as excinfo:
        parse(line + b"x")
    assert excinfo.value.hint == 414


def test_error_is_a_protocol_error() -> None:
    from portway.errors import ProtocolError

    with pytest.raises(ProtocolError):
        parse(b"GET / HTTP/1.1\r\n\r\n")


# --- properties -------------------------------------------------------------------------------

tokens = st.text("abcxyzABCXYZ0189!#$%&'*+-.^_`|~", min_size=1, max_size=12)
field_values = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30
).map(str.strip)
hosts = st.one_of(
    st.from_regex(r"[a-z0-9][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
ports = st.none() | st.integers(0, 65535)
origin_targets = st.from_regex(r"/[\x21-\x7e]{0,40}", fullmatch=True)


@st.composite
def valid_heads(draw: st.DrawFn) -> tuple[bytes, RequestHead]:
    """A random valid head and what it must parse to."""
    version = draw(st.sampled_from([(1, 0), (1, 1)]))
    connect = draw(st.booleans())
    host, port = draw(hosts), draw(ports)
    hostport = host + ("" if port is None else f":{port}")
    method = "CONNECT" if connect else draw(tokens.filter(lambda m: m != "CONNECT"))
    absolute = not connect and draw(st.booleans())
    if connect:
        target = f"{host}:{port if port is not None else 443}"
    else:
        target = f"http://{hostport}/x" if absolute else draw(origin_targets)
    fields = draw(st.lists(st.tuples(tokens.filter(lambda n: n.lower() != "host"), field_values), max_size=6))
    with_host = version == (1, 1) or draw(st.booleans())
    if with_host:
        fields.insert(draw(st.integers(0, len(fields))), ("Host", hostport))
    lines = [f"{method} {target} HTTP/{version[0]}.{version[1]}"]
    spaces = st.sampled_from(["", " ", "\t "])
    lines += [f"{name}:{draw(spaces)}{value}" for name, value in fields]
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    expected_host: str | None
    expected_port: int | None
    if connect:
        expected_host, expected_port = host.strip("[]").lower(), port if port is not None else 443
    elif absolute or with_host:
        expected_host, expected_port = host.strip("[]").lower(), port
    else:
        expected_host, expected_port = None, None
    expected = RequestHead(
        method,
        target,
        version,
        tuple((name.lower(), value) for name, value in fields),
        expected_host,
        expected_port,
        target if connect else None,
        len(raw),
    )
    return raw, expected


def _outcome(data: bytes) -> object:
    """parse() as a comparable value; anything but the three allowed outcomes fails the test."""
    try:
        result = parse(data, max_head=2048, max_line=256)
    except HeadError as error:
        assert str(error)
        assert error.hint in (400, 414, 431, 505)
        return HeadError
    assert result is NEED_DATA or isinstance(result, RequestHead), result
    return result


@_SETTINGS
@given(valid_heads(), st.binary(max_size=20))
def test_valid_heads_parse_and_every_prefix_needs_data(
    case: tuple[bytes, RequestHead], trailing: bytes
) -> None:
    raw, expected = case
    assert parse(raw + trailing) == expected
    view = memoryview(raw)
    assert all(parse(view[:n]) is NEED_DATA for n in range(len(raw)))


arbitrary_bytes = st.one_of(
    st.binary(max_size=300),
    st.text("GETPOSCNHvt:/ .1\r\n[]", max_size=120).map(str.encode),
    st.binary(max_size=100).map(lambda b: b"GET / HTTP/1.1\r\n" + b),
    st.builds(
        mutate,
        st.sampled_from([raw for _, raw, _ in FIXTURES]),
        st.integers(0, 500),
        st.integers(0, 255),
        st.integers(0, 500),
    ),
)


@_SETTINGS
@given(arbitrary_bytes)
def test_arbitrary_bytes_only_give_the_three_outcomes(data: bytes) -> None:
    # A decision, once made, does not change as more bytes arrive.
    outcome = assert_decision_is_final(_outcome, data)
    if isinstance(outcome, RequestHead):
        assert 0 < outcome.length <= len(data)
        assert _outcome(data[: outcome.length]) == outcome  # trailing bytes never matter
