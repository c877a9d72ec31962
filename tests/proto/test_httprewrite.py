"""Tests for portway.proto.httprewrite: the heads the forward proxy writes, and request targets.

Every :class:`Head` here comes from real bytes through :class:`MessageReader` (llhttp), as it
does in the proxy, and every head written is read back by the same parser, so a rewrite that
produces bytes llhttp would refuse fails here too.
"""

from __future__ import annotations

import pytest

from portway.proto.http1 import BODY, END, HEAD, UPGRADE, Head, MessageReader
from portway.proto.httprewrite import Target, absolute_target, request_head, response_head, split_authority


def parse(data: bytes, *, response: bool = False) -> Head:
    """The first head in ``data``, read by the real parser."""
    events = MessageReader(response=response).feed(data)
    assert events and events[0][0] == HEAD, events
    head = events[0][1]
    assert isinstance(head, Head)
    return head


def reparse(data: bytes, *, response: bool = False) -> Head:
    """``data`` must be one complete, valid head (nothing after it)."""
    reader = MessageReader(response=response)
    if response:
        reader.expect_no_body()  # the body is not written here, whatever the framing says
    events = reader.feed(data)
    assert [kind for kind, _ in events][:1] == [HEAD], events
    assert not reader.partial and reader.leftover == b""
    head = events[0][1]
    assert isinstance(head, Head)
    return head


def target_of(raw: bytes) -> Target:
    target = absolute_target(raw)
    assert isinstance(target, Target), target
    return target


# -- request_head -------------------------------------------------------------------------------
BROWSER_VIA_PROXY = (
    b"GET http://origin.test:8080/p?q=1 HTTP/1.1\r\n"
    b"Host: wrong.test\r\n"
    b"User-Agent: curl/8.5.0\r\n"
    b"Connection: keep-alive, X-Hop\r\n"
    b"X-Hop: secret\r\n"
    b"Keep-Alive: timeout=5\r\n"
    b"Proxy-Authorization: Basic dXNlcjpwYXNz\r\n"
    b"Proxy-Connection: Keep-Alive\r\n"
    b"TE: trailers\r\n"
    b"Trailer: X-Sum\r\n"
    b"Upgrade: websocket\r\n"  # not an upgrade: Connection does not say so
    b"Via: 1.0 fred, 1.1 p.example\r\n"
    b"X-Forwarded-For: 198.51.100.1\r\n"
    b"Accept: */*\r\n"
    b"accept: text/html\r\n"
    b"\r\n"
)


def test_request_head_removes_hop_by_hop_and_appends_via_and_xff() -> None:
    head = parse(BROWSER_VIA_PROXY)
    assert not head.upgrade
    target = target_of(head.target)
    out = request_head(head, target.path, target.authority, client_ip="203.0.113.9", upgrade=None)
    assert out == (
        b"GET /p?q=1 HTTP/1.1\r\n"
        b"Host: origin.test:8080\r\n"
        b"User-Agent: curl/8.5.0\r\n"
        b"Accept: */*\r\n"
        b"accept: text/html\r\n"
        b"Via: 1.0 fred, 1.1 p.example, 1.1 portway\r\n"
        b"X-Forwarded-For: 198.51.100.1, 203.0.113.9\r\n"
        b"\r\n"
    )
    again = reparse(out)
    assert again.method == "GET" and again.target == b"/p?q=1"


def test_request_head_leaves_xff_alone_without_a_client_ip() -> None:
    head = parse(BROWSER_VIA_PROXY)
    out = request_head(head, b"/p", b"origin.test", client_ip=None, upgrade=None)
    assert out.count(b"X-Forwarded-For") == 1
    assert b"X-Forwarded-For: 198.51.100.1\r\n" in out
    bare = parse(b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n")
    assert b"forwarded" not in request_head(bare, b"/", b"a.test", client_ip=None, upgrade=None).lower()
    with_ip = request_head(bare, b"/", b"a.test", client_ip="2001:db8::7", upgrade=None)
    assert b"\r\nX-Forwarded-For: 2001:db8::7\r\n" in with_ip


def test_request_head_several_via_and_xff_fields_join_in_order() -> None:
    head = parse(
        b"GET http://a.test/ HTTP/1.1\r\nVia: 1.0 a\r\nX-Forwarded-For: 10.0.0.1\r\nvia: 1.1 b\r\n"
        b"x-forwarded-for: 10.0.0.2\r\n\r\n"
    )
    out = request_head(head, b"/", b"a.test", client_ip="10.0.0.3", upgrade=None)
    assert b"\r\nVia: 1.0 a, 1.1 b, 1.1 portway\r\n" in out
    assert b"\r\nX-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3\r\n" in out


def test_request_head_hop_names_are_case_insensitive() -> None:
    head = parse(
        b"GET http://a.test/ HTTP/1.1\r\nCONNECTION: X-Private\r\nx-PRIVATE: 1\r\nKEEP-ALIVE: 5\r\n"
        b"proxy-authorization: Basic eA==\r\nHOST: other\r\nX-Kept: yes\r\n\r\n"
    )
    out = request_head(head, b"/", b"a.test", client_ip=None, upgrade=None)
    assert out == b"GET / HTTP/1.1\r\nHost: a.test\r\nX-Kept: yes\r\nVia: 1.1 portway\r\n\r\n"


def test_request_head_keeps_the_body_framing() -> None:
    for framing, body in (
        (b"Content-Length: 5\r\n", b"hello"),
        (b"Transfer-Encoding: chunked\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
    ):
        head = parse(b"POST http://a.test/f HTTP/1.1\r\nHost: a.test\r\n" + framing + b"\r\n" + body)
        out = request_head(head, b"/f", b"a.test", client_ip=None, upgrade=None)
        assert framing in out
        again = reparse(out)
        assert (again.length, again.chunked) == (head.length, head.chunked)


@pytest.mark.parametrize(
    ("framing", "body"),
    [
        (b"Content-Length: 5\r\nConnection: Content-Length\r\n", b"hello"),
        (b"Transfer-Encoding: chunked\r\nConnection: transfer-encoding\r\n", b"5\r\nhello\r\n0\r\n\r\n"),
    ],
)
def test_request_head_keeps_the_body_framing_even_when_connection_names_it(
    framing: bytes, body: bytes
) -> None:
    data = b"POST http://a.test/f HTTP/1.1\r\nHost: a.test\r\n" + framing + b"\r\n" + body
    head = parse(data)
    assert head.has_body  # the proxy reads a body, and will forward it
    out = request_head(head, b"/f", b"a.test", client_ip=None, upgrade=None)
    again = reparse(out)
    assert again.has_body, out  # ...so the origin must be told there is one


def test_request_head_connection_cannot_remove_host() -> None:
    head = parse(
        b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: Host, Via\r\nVia: 1.1 x\r\n\r\n"
    )
    out = request_head(head, b"/", b"a.test", client_ip=None, upgrade=None)
    assert reparse(out).get(b"host") == b"a.test"
    assert b"\r\nVia: 1.1 x, 1.1 portway\r\n" in out


def test_request_head_for_an_upgrade() -> None:
    head = parse(
        b"GET http://a.test/chat HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\n"
        b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    assert head.upgrade
    upgrade = head.get(b"upgrade")
    out = request_head(head, b"/chat", b"a.test", client_ip=None, upgrade=upgrade)
    assert out == (
        b"GET /chat HTTP/1.1\r\n"
        b"Host: a.test\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Via: 1.1 portway\r\n"
        b"\r\n"
    )
    events = MessageReader(response=False).feed(out)
    assert [kind for kind, _ in events] == [HEAD, END, UPGRADE]  # the origin sees an upgrade request


def test_request_head_from_http10_is_sent_as_http11_with_its_version_in_via() -> None:
    head = parse(b"GET http://a.test/old HTTP/1.0\r\nUser-Agent: Wget/1.21\r\n\r\n")
    out = request_head(head, b"/old", b"a.test", client_ip=None, upgrade=None)
    assert out == b"GET /old HTTP/1.1\r\nHost: a.test\r\nUser-Agent: Wget/1.21\r\nVia: 1.0 portway\r\n\r\n"


# -- response_head ------------------------------------------------------------------------------
ORIGIN_ANSWER = (
    b"HTTP/1.1 404 Not Found\r\n"
    b"Content-Type: text/html\r\n"
    b"Connection: keep-alive, X-Internal\r\n"
    b"X-Internal: node-7\r\n"
    b"Keep-Alive: timeout=5, max=100\r\n"
    b"Proxy-Connection: keep-alive\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Trailer: X-Sum\r\n"
    b"TE: trailers\r\n"
    b"Via: 1.1 cdn\r\n"
    b"Set-Cookie: a=1\r\n"
    b"Set-Cookie: b=2\r\n"
    b"\r\n"
)
ANSWER_KEPT = b"Content-Type: text/html\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"


def test_response_head_with_the_framing_the_proxy_chose() -> None:
    head = parse(ORIGIN_ANSWER, response=True)
    out = response_head(head, te=b"chunked", close=False, keep_alive_10=False, upgrade=False)
    assert out == (
        b"HTTP/1.1 404 Not Found\r\n"
        + ANSWER_KEPT
        + b"Transfer-Encoding: chunked\r\nVia: 1.1 cdn, 1.1 portway\r\n\r\n"
    )
    assert reparse(out, response=True).chunked


def test_response_head_without_te_drops_the_origins() -> None:
    head = parse(ORIGIN_ANSWER, response=True)
    out = response_head(head, te=None, close=False, keep_alive_10=False, upgrade=False)
    assert out == b"HTTP/1.1 404 Not Found\r\n" + ANSWER_KEPT + b"Via: 1.1 cdn, 1.1 portway\r\n\r\n"


@pytest.mark.parametrize(
    ("close", "keep_alive_10", "line"),
    [
        (True, False, b"Connection: close\r\n"),
        (True, True, b"Connection: close\r\n"),  # closing wins
        (False, True, b"Connection: keep-alive\r\n"),
        (False, False, None),
    ],
)
def test_response_head_connection_line(close: bool, keep_alive_10: bool, line: bytes | None) -> None:
    head = parse(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi", response=True)
    out = response_head(head, te=None, close=close, keep_alive_10=keep_alive_10, upgrade=False)
    connection = [ln for ln in out.split(b"\r\n") if ln.lower().startswith(b"connection:")]
    assert connection == ([line[:-2]] if line else [])
    assert out.endswith(b"Content-Length: 2\r\nVia: 1.1 portway\r\n" + (line or b"") + b"\r\n")


def test_response_head_for_a_101() -> None:
    head = parse(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        response=True,
    )
    out = response_head(head, te=None, close=True, keep_alive_10=False, upgrade=True)
    assert out == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Via: 1.1 portway\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"\r\n"
    )
    events = MessageReader(response=True).feed(out)  # (a 101 is no answer to a HEAD)
    assert [kind for kind, _ in events] == [HEAD, END, UPGRADE]
    assert events[-1] == (UPGRADE, b"")


def test_response_head_keeps_content_length_and_the_reason() -> None:
    head = parse(b"HTTP/1.0 200 Fine Thanks\r\nContent-Length: 2\r\n\r\nhi", response=True)
    out = response_head(head, te=None, close=False, keep_alive_10=True, upgrade=False)
    assert out == (
        b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 2\r\nVia: 1.0 portway\r\nConnection: keep-alive\r\n\r\n"
    )
    assert reparse(out, response=True).length == 2


def test_response_head_for_an_interim_answer() -> None:
    head = parse(b"HTTP/1.1 100 Continue\r\n\r\n", response=True)
    out = response_head(head, te=None, close=False, keep_alive_10=False, upgrade=False)
    assert out == b"HTTP/1.1 100 Continue\r\nVia: 1.1 portway\r\n\r\n"
    events = MessageReader(response=True).feed(out)
    assert [kind for kind, _ in events] == [HEAD, END]


def test_response_head_keeps_content_length_even_when_connection_names_it() -> None:
    head = parse(
        b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\nhi", response=True
    )
    assert head.length == 2
    out = response_head(head, te=None, close=False, keep_alive_10=False, upgrade=False)
    events = MessageReader(response=True).feed(out + b"hi" + b"HTTP/1.1 204 No Content\r\n\r\n")
    assert [kind for kind, _ in events][:3] == [HEAD, BODY, END], out


# -- absolute_target ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "host", "port", "authority", "path"),
    [
        (b"http://a.test/p", "a.test", 80, b"a.test", b"/p"),
        (b"http://a.test:8080/p?q=1&r=%20#frag", "a.test", 8080, b"a.test:8080", b"/p?q=1&r=%20"),
        (b"http://a.test", "a.test", 80, b"a.test", b"/"),
        (b"http://a.test?x=1", "a.test", 80, b"a.test", b"/?x=1"),
        (b"http://a.test/p#frag", "a.test", 80, b"a.test", b"/p"),
        (b"HTTP://A.Test/P", "A.Test", 80, b"A.Test", b"/P"),
        (b"http://a.test:80/", "a.test", 80, b"a.test:80", b"/"),
        (b"http://192.0.2.7:81/x", "192.0.2.7", 81, b"192.0.2.7:81", b"/x"),
        (b"http://[2001:db8::1]:8443/x?y", "2001:db8::1", 8443, b"[2001:db8::1]:8443", b"/x?y"),
        (b"http://[::1]/", "::1", 80, b"[::1]", b"/"),
    ],
)
def test_absolute_target(raw: bytes, host: str, port: int, authority: bytes, path: bytes) -> None:
    target = target_of(raw)
    assert (target.host, target.port, target.authority, target.path) == (host, port, authority, path)
    assert target.url == raw.decode() and target.tls is False


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"https://a.test/", "CONNECT"),
        (b"ftp://a.test/f", "absolute URI"),
        (b"/origin/form", "absolute URI"),
        (b"*", "absolute URI"),
        (b"a.test:443", "malformed"),
        (b"http://u:p@a.test/", "credentials"),
        (b"http://u@a.test/", "credentials"),
        (b"http:///x", "malformed"),
        (b"http://a.test:99999/", "malformed"),
        (b"http://a.test:/x", "malformed"),
        (b"http://a b/", "malformed"),
    ],
)
def test_absolute_target_refusals(raw: bytes, says: str) -> None:
    answer = absolute_target(raw)
    assert isinstance(answer, str) and says in answer, answer


def test_absolute_target_port_zero_is_refused() -> None:
    assert isinstance(absolute_target(b"http://a.test:0/"), str)


def test_absolute_target_from_a_parsed_request() -> None:
    head = parse(b"GET http://[2001:db8::5]:8080/a/b?c HTTP/1.1\r\nHost: ignored\r\n\r\n")
    target = target_of(head.target)
    out = request_head(head, target.path, target.authority, client_ip=None, upgrade=None)
    assert out.startswith(b"GET /a/b?c HTTP/1.1\r\nHost: [2001:db8::5]:8080\r\n")


# -- split_authority ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        (b"a.test", ("a.test", 443)),
        (b"a.test:8080", ("a.test", 8080)),
        (b"A.Test:1", ("A.Test", 1)),
        (b"a.test:65535", ("a.test", 65535)),
        (b"a.test:0080", ("a.test", 80)),
        (b"192.0.2.1:80", ("192.0.2.1", 80)),
        (b"[::1]:443", ("::1", 443)),
        (b"[2001:db8::1]:8443", ("2001:db8::1", 8443)),
        (b"[::1]", ("::1", 443)),
        (b"a.test:0", None),
        (b"a.test:65536", None),
        (b"a.test:99999999999999999999", None),
        (b"a.test:x", None),
        (b"a.test:+80", None),
        (b"a.test:-1", None),
        (b"a.test:8 0", None),
        (b":80", None),
        (b"", None),
        (b"[]:80", None),
        (b"[::1", None),
        (b"[::1]x", None),
        (b"[::1]80", None),
        (b"a/b:80", None),
        (b"a b:80", None),
        (b"user@a.test:80", None),
        (b"a.test?:80", None),
    ],
)
def test_split_authority(authority: bytes, expected: tuple[str, int] | None) -> None:
    assert split_authority(authority, 443) == expected


def test_split_authority_default_port_zero_for_connect() -> None:
    assert split_authority(b"a.test", 0) == ("a.test", 0)  # the caller refuses port 0


@pytest.mark.parametrize("authority", [b"2001:db8::1", b"::1"])
def test_split_authority_refuses_unbracketed_ipv6(authority: bytes) -> None:
    assert split_authority(authority, 443) is None


@pytest.mark.parametrize("authority", [b"a.test:\xb2", b"a.test:8\xb9", b"[::1]:\xb3"])
def test_split_authority_malformed_port_is_none_not_an_exception(authority: bytes) -> None:
    assert split_authority(authority, 443) is None
