"""Tests for portway.proto.http1: the streaming HTTP/1.x reader, from byte fixtures.

Every fixture goes through the real llhttp parser. A pipelined request stream is fed whole,
one byte at a time and at hypothesis-chosen split points, and must give the same events each
time (consecutive BODY pieces merged: how llhttp cuts a body is not part of the contract).
Responses cover 1xx, 204/304, answers to HEAD, read-until-close and 101. Each refused input
names the status it should carry, and is refused whether it arrives whole or byte by byte.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portway.proto import http1
from portway.proto.http1 import (
    BODY,
    END,
    HEAD,
    LAST_CHUNK,
    UPGRADE,
    Head,
    HttpError,
    MessageReader,
    chunk,
)

_EXAMPLES = {"fast": 100, "deep": 5_000}.get(os.environ.get("HYPOTHESIS_PROFILE", "fast"), 100)
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- the pipelined request stream --------------------------------------------------------------
GET = b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
HEAD_REQ = b"HEAD http://a.test/x HTTP/1.1\r\nHost: a.test\r\nX-MiXeD-CaSe: Value\r\n\r\n"
POST_CL = (
    b"POST http://a.test/form HTTP/1.1\r\n"
    b"Host: a.test\r\n"
    b"content-type: text/plain\r\n"
    b"Content-Length: 11\r\n"
    b"\r\n"
    b"hello world"
)
POST_CHUNKED = (
    b"POST http://a.test/up HTTP/1.1\r\n"
    b"Host: a.test\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Trailer: X-Checksum\r\n"
    b"\r\n"
    b"5;name=value\r\nhello\r\n"  # a chunk extension
    b"6\r\n world\r\n"
    b"a;x=1;y\r\n0123456789\r\n"
    b"0;last\r\n"
    b"X-Checksum: abc\r\n"  # a trailer: never one of the head's fields
    b"\r\n"
)
HTTP10 = b"GET http://a.test/old HTTP/1.0\r\nUser-Agent: Wget/1.21\r\nConnection: keep-alive\r\n\r\n"
CLOSE = b"GET http://a.test/last HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n"
STREAM = GET + HEAD_REQ + POST_CL + POST_CHUNKED + HTTP10 + CLOSE
MESSAGES = [GET, HEAD_REQ, POST_CL, POST_CHUNKED, HTTP10, CLOSE]


def _head(head: Head) -> tuple[object, ...]:
    return (
        head.method,
        head.target,
        head.status,
        head.reason,
        head.version,
        tuple(head.fields),
        head.length,
        head.chunked,
        head.keep_alive,
        head.upgrade,
    )


def summary(events: list[tuple[int, object]]) -> list[tuple[int, object]]:
    """Events as comparable values, consecutive BODY pieces merged into one."""
    out: list[tuple[int, object]] = []
    for kind, value in events:
        assert kind in (HEAD, BODY, END, UPGRADE), kind
        if kind == HEAD:
            assert isinstance(value, Head)
            out.append((HEAD, _head(value)))
        elif kind == BODY:
            assert isinstance(value, bytes) and value, value  # no empty pieces
            if out and out[-1][0] == BODY:
                prev = out[-1][1]
                assert isinstance(prev, bytes)
                out[-1] = (BODY, prev + value)
            else:
                out.append((BODY, value))
        elif kind == END:
            assert value is None
            out.append((END, None))
        else:
            assert isinstance(value, bytes)
            out.append((UPGRADE, value))
    return out


def feed_pieces(reader: MessageReader, data: bytes, cuts: list[int]) -> list[tuple[int, object]]:
    """Feed ``data`` cut at the ``cuts`` offsets; every event, in order."""
    events: list[tuple[int, object]] = []
    start = 0
    for cut in [*sorted(set(cuts)), len(data)]:
        events += reader.feed(data[start:cut])
        start = cut
    return events


def byte_by_byte(reader: MessageReader, data: bytes) -> list[tuple[int, object]]:
    return feed_pieces(reader, data, list(range(1, len(data))))


def kinds(events: list[tuple[int, object]]) -> list[int]:
    return [kind for kind, _ in summary(events)]


def heads(events: list[tuple[int, object]]) -> list[Head]:
    return [value for kind, value in events if kind == HEAD]  # type: ignore[misc]


# -- requests -----------------------------------------------------------------------------------
def test_pipelined_requests_give_the_exact_events() -> None:
    events = summary(MessageReader(response=False).feed(STREAM))
    assert events == [
        (HEAD, ("GET", b"http://a.test/", 0, b"", "1.1",
                ((b"Host", b"a.test"), (b"User-Agent", b"curl/8.5.0"), (b"Accept", b"*/*")),
                None, False, True, False)),
        (END, None),
        (HEAD, ("HEAD", b"http://a.test/x", 0, b"", "1.1",
                ((b"Host", b"a.test"), (b"X-MiXeD-CaSe", b"Value")),
                None, False, True, False)),
        (END, None),
        (HEAD, ("POST", b"http://a.test/form", 0, b"", "1.1",
                ((b"Host", b"a.test"), (b"content-type", b"text/plain"), (b"Content-Length", b"11")),
                11, False, True, False)),
        (BODY, b"hello world"),
        (END, None),
        (HEAD, ("POST", b"http://a.test/up", 0, b"", "1.1",
                ((b"Host", b"a.test"), (b"Transfer-Encoding", b"chunked"), (b"Trailer", b"X-Checksum")),
                None, True, True, False)),
        (BODY, b"hello world0123456789"),
        (END, None),
        (HEAD, ("GET", b"http://a.test/old", 0, b"", "1.0",
                ((b"User-Agent", b"Wget/1.21"), (b"Connection", b"keep-alive")),
                None, False, True, False)),
        (END, None),
        (HEAD, ("GET", b"http://a.test/last", 0, b"", "1.1",
                ((b"Host", b"a.test"), (b"Connection", b"close")),
                None, False, False, False)),
        (END, None),
    ]  # fmt: skip


def test_trailers_are_not_fields_of_any_head() -> None:
    events = MessageReader(response=False).feed(POST_CHUNKED + GET)
    for head in heads(events):
        assert head.get(b"x-checksum") is None
        assert all(b"abc" not in value for _, value in head.fields)
    assert heads(events)[0].get(b"trailer") == b"X-Checksum"  # the announcement itself is a field


def test_head_accessors() -> None:
    (_, head), _ = MessageReader(response=False).feed(
        b"GET / HTTP/1.1\r\nConnection: Keep-Alive, X-A\r\nconnection: x-b \r\nX-Two: 1\r\nx-two: 2\r\n\r\n"
    )
    assert isinstance(head, Head)
    assert head.get(b"x-two") == b"1"  # the first one
    assert head.get(b"x-none") is None
    assert head.connection == {b"keep-alive", b"x-a", b"x-b"}
    assert head.connection == {b"keep-alive", b"x-a", b"x-b"}
    (_, bare), _ = MessageReader(response=False).feed(b"GET / HTTP/1.1\r\nX-Connection: close\r\n\r\n")
    assert isinstance(bare, Head) and bare.connection == frozenset()
    assert not head.has_body


@pytest.mark.parametrize(
    ("data", "keep_alive"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", True),
        (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", False),
        (b"GET / HTTP/1.1\r\nconnection: Close\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\n\r\n", False),
        (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", True),
    ],
)
def test_keep_alive_follows_version_and_connection(data: bytes, keep_alive: bool) -> None:
    (kind, head), (end, _) = MessageReader(response=False).feed(data)
    assert kind == HEAD and end == END
    assert isinstance(head, Head)
    assert head.keep_alive is keep_alive


def test_http10_request_with_a_body_by_content_length() -> None:
    data = b"POST /f HTTP/1.0\r\nContent-Length: 3\r\n\r\nabc"
    events = MessageReader(response=False).feed(data)
    assert kinds(events) == [HEAD, BODY, END]
    head = heads(events)[0]
    assert head.version == "1.0" and head.length == 3 and not head.chunked and head.has_body


def test_fed_byte_by_byte_gives_the_same_events() -> None:
    whole = summary(MessageReader(response=False).feed(STREAM))
    assert summary(byte_by_byte(MessageReader(response=False), STREAM)) == whole


@_SETTINGS
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_fed_at_any_split_points_gives_the_same_events(cuts: list[int]) -> None:
    whole = summary(MessageReader(response=False).feed(STREAM))
    assert summary(feed_pieces(MessageReader(response=False), STREAM, cuts)) == whole


def test_events_come_as_soon_as_their_bytes_are_in() -> None:
    reader = MessageReader(response=False)
    assert kinds(reader.feed(POST_CL[:-11])) == [HEAD]
    assert summary(reader.feed(b"hello")) == [(BODY, b"hello")]
    assert summary(reader.feed(b" world")) == [(BODY, b" world"), (END, None)]


def test_partial_is_true_exactly_inside_a_head() -> None:
    reader = MessageReader(response=False)
    assert reader.partial is False
    offset = 0
    for message in MESSAGES:
        head_end = message.index(b"\r\n\r\n") + 4
        for i in range(len(message)):
            reader.feed(message[i : i + 1])
            inside = i < head_end - 1  # after the head's last byte it is complete
            assert reader.partial is inside, (offset + i, message[: i + 1])
        offset += len(message)
        assert reader.partial is False  # between messages


def test_partial_stays_false_over_empty_lines_between_messages() -> None:
    reader = MessageReader(response=False)
    reader.feed(GET)
    reader.feed(b"\r\n")  # RFC 9112 §2.2: ignored before a request line
    assert reader.partial is False
    reader.feed(b"G")
    assert reader.partial is True


def test_connect_upgrades_with_the_bytes_after_the_head() -> None:
    head_bytes = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\nProxy-Connection: Keep-Alive\r\n\r\n"
    tls = bytes.fromhex("160301002a") + bytes(range(42))  # a TLS record right behind the head
    events = MessageReader(response=False).feed(head_bytes + tls)
    assert kinds(events) == [HEAD, END, UPGRADE]
    head = heads(events)[0]
    assert head.method == "CONNECT" and head.target == b"a.test:443" and head.upgrade
    assert events[-1] == (UPGRADE, tls)


def test_connect_split_in_its_head_upgrades_with_the_bytes_of_the_last_feed() -> None:
    head_bytes = b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n"
    reader = MessageReader(response=False)
    assert reader.feed(head_bytes[:-1]) == []
    events = reader.feed(head_bytes[-1:] + b"\x16\x03\x01")
    assert kinds(events) == [HEAD, END, UPGRADE]
    assert events[-1] == (UPGRADE, b"\x16\x03\x01")


def test_connect_with_nothing_after_it_upgrades_with_no_bytes() -> None:
    events = MessageReader(response=False).feed(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n")
    assert kinds(events) == [HEAD, END, UPGRADE]
    assert events[-1] == (UPGRADE, b"")
    assert heads(events)[0].target == b"[2001:db8::1]:443"


def test_websocket_upgrade_request() -> None:
    head_bytes = (
        b"GET http://a.test/chat HTTP/1.1\r\n"
        b"Host: a.test\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n"
    )
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"  # a masked "Hello" (RFC 6455 §5.7)
    events = MessageReader(response=False).feed(head_bytes + frame)
    assert kinds(events) == [HEAD, END, UPGRADE]
    assert heads(events)[0].upgrade is True
    assert events[-1] == (UPGRADE, frame)


def test_upgrade_field_without_connection_upgrade_is_a_plain_request() -> None:
    events = MessageReader(response=False).feed(b"GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n" + GET)
    assert kinds(events) == [HEAD, END, HEAD, END]
    assert heads(events)[0].upgrade is False


def test_upgrade_request_with_a_body_is_refused() -> None:
    """llhttp hands over right after an upgrade request's head (its body would be taken for the
    new protocol's bytes), so the reader refuses such a request instead."""
    data = (
        b"POST /up HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Content-Length: 3\r\n\r\nabcREST"
    )
    with pytest.raises(HttpError) as info:
        MessageReader(response=False).feed(data)
    assert info.value.status == 400


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhel",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
    ],
)
def test_an_empty_feed_gives_no_event(head: bytes) -> None:
    reader = MessageReader(response=False)
    reader.feed(head)
    assert reader.feed(b"") == []


# -- responses ----------------------------------------------------------------------------------
OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"


def test_interim_100_then_the_answer() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + OK_HI
    for events in (MessageReader(response=True).feed(data), byte_by_byte(MessageReader(response=True), data)):
        assert kinds(events) == [HEAD, END, HEAD, BODY, END]
        first, second = heads(events)
        assert (first.status, first.reason) == (100, b"Continue")
        assert (second.status, second.reason, second.length) == (200, b"OK", 2)
        assert summary(events)[3] == (BODY, b"hi")


@pytest.mark.parametrize("status", [b"104", b"150", b"199"])
def test_an_interim_answer_llhttp_does_not_know_is_refused(status: bytes) -> None:
    """llhttp ends only 100, 102 and 103 after their head and would read a body after another
    1xx (from the real answer's bytes): the reader refuses those instead (502)."""
    data = b"HTTP/1.1 " + status + b" Early\r\nContent-Length: 3\r\n\r\n" + OK_HI
    with pytest.raises(HttpError) as info:
        MessageReader(response=True).feed(data)
    assert info.value.status == 502


@pytest.mark.parametrize("status", [b"204 No Content", b"304 Not Modified"])
def test_204_and_304_have_no_body_whatever_content_length_says(status: bytes) -> None:
    data = b"HTTP/1.1 " + status + b'\r\nContent-Length: 5\r\nETag: "x"\r\n\r\n' + OK_HI
    events = MessageReader(response=True).feed(data)
    assert kinds(events) == [HEAD, END, HEAD, BODY, END]
    assert heads(events)[0].length == 5  # as sent: the status decides there is no body
    assert summary(events)[3] == (BODY, b"hi")


HEAD_ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 5\r\n\r\n"


def test_answer_to_head_ends_after_its_head() -> None:
    reader = MessageReader(response=True)
    reader.expect_no_body()
    events = reader.feed(HEAD_ANSWER)
    assert kinds(events) == [HEAD, END]
    head = heads(events)[0]
    assert head.status == 200 and head.length == 5
    assert reader.leftover == b""
    # the reader then reads the next response as usual
    assert kinds(reader.feed(OK_HI)) == [HEAD, BODY, END]


def test_answer_to_head_byte_by_byte() -> None:
    reader = MessageReader(response=True)
    reader.expect_no_body()
    events = byte_by_byte(reader, HEAD_ANSWER)
    assert kinds(events) == [HEAD, END]
    assert heads(events)[0].length == 5
    assert kinds(reader.feed(OK_HI)) == [HEAD, BODY, END]


def test_answer_to_head_after_a_100() -> None:
    data = b"HTTP/1.1 100 Continue\r\n\r\n" + HEAD_ANSWER
    for split in (False, True):
        reader = MessageReader(response=True)
        reader.expect_no_body()
        events = byte_by_byte(reader, data) if split else reader.feed(data)
        assert kinds(events) == [HEAD, END, HEAD, END]
        assert [h.status for h in heads(events)] == [100, 200]
        assert reader.leftover == b""


def test_bytes_after_an_answer_to_head_are_leftover() -> None:
    reader = MessageReader(response=True)
    reader.expect_no_body()
    events = reader.feed(HEAD_ANSWER + b"hello" + OK_HI)
    assert kinds(events) == [HEAD, END]
    assert reader.leftover == b"hello" + OK_HI


def test_answer_to_head_with_chunked_or_no_framing_also_ends_after_its_head() -> None:
    for framing in (b"Transfer-Encoding: chunked\r\n", b"", b"Content-Length: 0\r\n"):
        reader = MessageReader(response=True)
        reader.expect_no_body()
        events = reader.feed(b"HTTP/1.1 200 OK\r\n" + framing + b"\r\n")
        assert kinds(events) == [HEAD, END], framing  # one END, never two


def test_answer_to_head_after_empty_lines() -> None:
    reader = MessageReader(response=True)
    reader.expect_no_body()
    events = reader.feed(b"\r\n\r\n" + HEAD_ANSWER)
    assert kinds(events) == [HEAD, END]
    assert reader.leftover == b""


def test_empty_lines_before_a_response_are_skipped() -> None:
    assert kinds(MessageReader(response=True).feed(b"\r\n\r\n" + OK_HI)) == [HEAD, BODY, END]


def test_answer_to_head_that_is_a_101_is_an_upgrade_or_an_http_error() -> None:
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nxyz"
    reader = MessageReader(response=True)
    reader.expect_no_body()
    try:
        events = reader.feed(data)
    except HttpError:
        return
    assert kinds(events) == [HEAD, END, UPGRADE]
    assert events[-1] == (UPGRADE, b"xyz")


def test_partial_while_an_answer_to_head_is_incomplete() -> None:
    reader = MessageReader(response=True)
    reader.expect_no_body()
    assert reader.feed(HEAD_ANSWER[:20]) == []
    assert reader.partial is True


def test_read_until_close_gives_body_and_no_end() -> None:
    reader = MessageReader(response=True)
    events = reader.feed(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst ")
    events += reader.feed(b"second")
    assert summary(events)[1:] == [(BODY, b"first second")]
    head = heads(events)[0]
    assert head.length is None and not head.chunked and head.keep_alive is False


@pytest.mark.parametrize("status", [b"000", b"001", b"099"])
def test_a_status_code_below_100_is_refused(status: bytes) -> None:
    with pytest.raises(HttpError):
        MessageReader(response=True).feed(b"HTTP/1.1 " + status + b" X\r\nContent-Length: 0\r\n\r\n")


def test_http10_response_with_content_length() -> None:
    events = MessageReader(response=True).feed(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    assert kinds(events) == [HEAD, BODY, END]
    head = heads(events)[0]
    assert head.version == "1.0" and head.keep_alive is False


def test_chunked_response_is_dechunked() -> None:
    data = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(b"abc") + chunk(b"de") + LAST_CHUNK
    )
    for events in (MessageReader(response=True).feed(data), byte_by_byte(MessageReader(response=True), data)):
        assert summary(events)[1:] == [(BODY, b"abcde"), (END, None)]
        assert heads(events)[0].chunked is True


def test_101_upgrades_with_the_exact_rest() -> None:
    rest = b"\x81\x05Hello\x00\r\n\r\nHTTP/1.1 200 OK\r\n"  # anything: it is not HTTP any more
    data = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n" + rest
    events = MessageReader(response=True).feed(data)
    assert kinds(events) == [HEAD, END, UPGRADE]
    assert heads(events)[0].status == 101 and heads(events)[0].upgrade
    assert events[-1] == (UPGRADE, rest)


def test_upgrade_and_connection_on_a_200_are_no_upgrade() -> None:
    data = b"HTTP/1.1 200 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\nContent-Length: 2\r\n\r\nhi" + OK_HI
    assert kinds(MessageReader(response=True).feed(data)) == [HEAD, BODY, END, HEAD, BODY, END]


def test_partial_on_responses() -> None:
    reader = MessageReader(response=True)
    reader.feed(OK_HI[:10])
    assert reader.partial is True
    reader.feed(OK_HI[10:-2])
    assert reader.partial is False  # the head is complete, the body is not
    reader.feed(OK_HI[-2:])
    assert reader.partial is False


# -- chunk helpers ------------------------------------------------------------------------------
def test_chunk_framing_round_trips_through_the_reader() -> None:
    assert chunk(b"hello") == b"5\r\nhello\r\n"
    assert chunk(bytes(300))[:5] == b"12c\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    body = [os.urandom(n) for n in (1, 15, 16, 4096)]
    data = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(map(chunk, body)) + LAST_CHUNK
    assert summary(MessageReader(response=False).feed(data))[1:] == [(BODY, b"".join(body)), (END, None)]


# -- refusals -----------------------------------------------------------------------------------
CHUNKED_ABC = b"3\r\nabc\r\n0\r\n\r\n"
BAD_REQUESTS = {
    "cl-and-te": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_ABC,
    "te-and-cl": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n" + CHUNKED_ABC,
    "duplicate-cl": b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "cl-plus": b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\nabc",
    "cl-list": b"POST / HTTP/1.1\r\nContent-Length: 6, 7\r\n\r\nabcdefg",
    "cl-negative": b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    "cl-overflow": b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "te-xchunked": b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n" + CHUNKED_ABC,
    "te-chunked-identity": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n" + CHUNKED_ABC,
    "te-chunked-then-gzip": (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n" + CHUNKED_ABC
    ),
    "te-on-http10": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + CHUNKED_ABC,
    "bare-lf-request-line": b"GET / HTTP/1.1\nHost: a.test\r\n\r\n",
    "bare-lf-field": b"GET / HTTP/1.1\r\nHost: a.test\nX: y\r\n\r\n",
    "bare-lf-end": b"GET / HTTP/1.1\r\nHost: a.test\r\n\n",
    "obs-fold": b"GET / HTTP/1.1\r\nX-Long: a\r\n b\r\n\r\n",
    "space-before-colon": b"GET / HTTP/1.1\r\nHost : a.test\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    "nul-in-name": b"GET / HTTP/1.1\r\nX\x00Y: a\r\n\r\n",
    "chunk-size-space": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "chunk-size-0x": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "chunk-size-g": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\ng\r\nabc\r\n0\r\n\r\n",
    "chunk-too-long": b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    "data-after-close": b"GET / HTTP/1.1\r\nConnection: close\r\n\r\nGET / HTTP/1.1\r\n\r\n",
    "bad-version": b"GET / HTTP/2.7\r\n\r\n",
}


@pytest.mark.parametrize("data", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_bad_requests_are_400(data: bytes) -> None:
    with pytest.raises(HttpError) as whole:
        MessageReader(response=False).feed(data)
    assert whole.value.status == 400 and str(whole.value)
    with pytest.raises(HttpError) as split:
        byte_by_byte(MessageReader(response=False), data)
    assert split.value.status == 400


def test_a_bad_request_after_a_good_one_is_refused() -> None:
    reader = MessageReader(response=False)
    assert kinds(reader.feed(GET)) == [HEAD, END]
    with pytest.raises(HttpError):
        reader.feed(BAD_REQUESTS["cl-and-te"])


def test_request_head_over_max_head_is_431() -> None:
    data = b"GET / HTTP/1.1\r\nHost: a.test\r\nCookie: " + b"c" * 200 + b"\r\n\r\n"
    assert kinds(MessageReader(response=False, max_head=len(data)).feed(data)) == [HEAD, END]
    with pytest.raises(HttpError) as exc:
        MessageReader(response=False, max_head=128).feed(data)
    assert exc.value.status == 431
    with pytest.raises(HttpError) as exc:
        byte_by_byte(MessageReader(response=False, max_head=128), data)
    assert exc.value.status == 431


def test_request_target_over_max_head_is_431_before_the_line_ends() -> None:
    reader = MessageReader(response=False, max_head=128)
    with pytest.raises(HttpError) as exc:
        reader.feed(b"GET /" + b"a" * 200)  # no CRLF yet
    assert exc.value.status == 431


def test_a_field_still_being_sent_counts_against_max_head() -> None:
    reader = MessageReader(response=False, max_head=1024)
    reader.feed(b"GET / HTTP/1.1\r\nX-Big: ")
    with pytest.raises(HttpError) as exc:
        for _ in range(64):
            reader.feed(b"a" * 1024)  # 64 KiB into a head limited to 1 KiB
    assert exc.value.status == 431


def test_more_than_max_fields_is_431() -> None:
    four = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(4)) + b"\r\n"
    events = MessageReader(response=False, max_fields=4).feed(four)
    assert len(heads(events)[0].fields) == 4
    five = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n"
    with pytest.raises(HttpError) as exc:
        MessageReader(response=False, max_fields=4).feed(five)
    assert exc.value.status == 431


def test_trailers_do_not_count_as_fields() -> None:
    data = (
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
        + b"".join(b"T-%d: v\r\n" % i for i in range(10))
        + b"\r\n"
    )
    assert kinds(MessageReader(response=False, max_fields=4).feed(data)) == [HEAD, END]


def test_response_head_over_max_head_is_502() -> None:
    data = b"HTTP/1.1 200 OK\r\nSet-Cookie: " + b"c" * 200 + b"\r\nContent-Length: 0\r\n\r\n"
    assert kinds(MessageReader(response=True, max_head=len(data)).feed(data)) == [HEAD, END]
    with pytest.raises(HttpError) as exc:
        MessageReader(response=True, max_head=128).feed(data)
    assert exc.value.status == 502


def test_answer_to_head_over_max_head_is_502() -> None:
    data = b"HTTP/1.1 200 OK\r\nSet-Cookie: " + b"c" * 200 + b"\r\nContent-Length: 5\r\n\r\n"
    reader = MessageReader(response=True, max_head=128)
    reader.expect_no_body()
    with pytest.raises(HttpError) as exc:
        reader.feed(data)  # complete, and too big
    assert exc.value.status == 502
    reader = MessageReader(response=True, max_head=128)
    reader.expect_no_body()
    with pytest.raises(HttpError) as exc:
        reader.feed(data[:150])  # no end of head in sight, already too big
    assert exc.value.status == 502


BAD_RESPONSES = {
    "cl-and-te": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
    "duplicate-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc",
    "bare-lf": b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",
    "obs-fold": b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
    "not-http": b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
}


@pytest.mark.parametrize("data", BAD_RESPONSES.values(), ids=BAD_RESPONSES.keys())
def test_bad_responses_raise_http_error(data: bytes) -> None:
    with pytest.raises(HttpError):
        MessageReader(response=True).feed(data)
    with pytest.raises(HttpError):
        byte_by_byte(MessageReader(response=True), data)


def test_bad_response_status_is_502_in_both_modes() -> None:
    data = BAD_RESPONSES["cl-and-te"]
    statuses = []
    for cut in (False, True):
        reader = MessageReader(response=True)
        if cut:
            reader.expect_no_body()
        with pytest.raises(HttpError) as exc:
            reader.feed(data)
        statuses.append(exc.value.status)
    assert statuses == [502, 502]


# -- recycling ----------------------------------------------------------------------------------
@pytest.fixture
def free_lists(monkeypatch: pytest.MonkeyPatch) -> dict[bool, list[MessageReader]]:
    """Empty free lists for the test, the module's own restored after it."""
    monkeypatch.setitem(http1._FREE, False, [])
    monkeypatch.setitem(http1._FREE, True, [])
    return http1._FREE


def test_a_reader_between_messages_is_recycled_and_reads_the_next_connection(
    free_lists: dict[bool, list[MessageReader]],
) -> None:
    reader = MessageReader.fresh(response=False)
    assert kinds(reader.feed(GET + POST_CL)) == [HEAD, END, HEAD, BODY, END]
    reader.recycle()
    assert free_lists[False] == [reader]
    again = MessageReader.fresh(response=False)
    assert again is reader and free_lists[False] == []
    assert again.partial is False
    assert summary(again.feed(STREAM)) == summary(MessageReader(response=False).feed(STREAM))
    assert MessageReader.fresh(response=True) is not reader  # per kind
    responses = MessageReader.fresh(response=True)
    responses.feed(OK_HI)
    responses.recycle()
    assert free_lists[True] == [responses] and free_lists[False] == []


def _failed() -> MessageReader:
    reader = MessageReader(response=False)
    with pytest.raises(HttpError):
        reader.feed(GET + BAD_REQUESTS["cl-and-te"])
    return reader


def _fed(data: bytes, *, response: bool = False, cut: bool = False, **limits: int) -> MessageReader:
    reader = MessageReader(response=response, **limits)
    if cut:
        reader.expect_no_body()
    reader.feed(data)
    return reader


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(_failed, id="after-error"),
        pytest.param(lambda: _fed(GET[:10]), id="partial-head"),
        pytest.param(lambda: _fed(POST_CL[:-3]), id="mid-body"),
        pytest.param(lambda: _fed(OK_HI[:-1], response=True), id="mid-response-body"),
        pytest.param(lambda: _fed(b"HTTP/1.1 200 OK\r\n\r\nabc", response=True), id="until-close"),
        pytest.param(lambda: _fed(HEAD_ANSWER[:10], response=True, cut=True), id="cut-pending"),
        pytest.param(lambda: _fed(HEAD_ANSWER + b"x", response=True, cut=True), id="cut-leftover"),
        pytest.param(lambda: _fed(b"", response=True, cut=True), id="cut-not-yet"),
        pytest.param(lambda: _fed(GET, max_head=1000), id="own-limits"),
    ],
)
def test_a_reader_not_between_messages_is_not_recycled(
    make: Callable[[], MessageReader], free_lists: dict[bool, list[MessageReader]]
) -> None:
    reader = make()
    reader.recycle()
    assert free_lists == {False: [], True: []}


@pytest.mark.parametrize(
    "first",
    [
        b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframe",
    ],
    ids=["connect", "websocket"],
)
def test_a_reader_after_an_upgrade_serves_the_next_connection_afresh(
    first: bytes, free_lists: dict[bool, list[MessageReader]]
) -> None:
    """llhttp resumes after an upgrade at the next message: the reader is recycled, and its
    next message has flags of its own (no upgrade, its own keep-alive)."""
    reader = MessageReader(response=False)
    assert kinds(reader.feed(first)) == [HEAD, END, UPGRADE]
    reader.recycle()
    assert free_lists[False] == [reader]
    again = MessageReader.fresh(response=False)
    assert again is reader
    events = again.feed(b"POST http://b/ HTTP/1.1\r\nHost: b\r\nContent-Length: 2\r\n\r\nab")
    assert summary(events)[1:] == [(BODY, b"ab"), (END, None)]
    head = heads(events)[0]
    assert (head.method, head.upgrade, head.keep_alive, head.length) == ("POST", False, True, 2)


def test_free_list_is_bounded(free_lists: dict[bool, list[MessageReader]]) -> None:
    readers = [MessageReader(response=False) for _ in range(http1.FREE_LIMIT + 5)]
    for reader in readers:
        reader.recycle()
    assert len(free_lists[False]) == http1.FREE_LIMIT


@pytest.mark.parametrize(
    ("response", "last", "first"),
    [
        (False, CLOSE, GET),
        (False, b"GET http://a.test/ HTTP/1.0\r\n\r\n", GET),
        (True, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi", OK_HI),
        (True, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi", OK_HI),
    ],
    ids=["close-request", "http10-request", "close-response", "http10-response"],
)
def test_a_recycled_reader_reads_the_next_connection_whatever_ended_the_last(
    response: bool, last: bytes, first: bytes, free_lists: dict[bool, list[MessageReader]]
) -> None:
    # llhttp remembers a message that ended its connection and refuses any byte after it
    # ("Data after `Connection: close`"): such a reader must not serve another connection.
    reader = MessageReader.fresh(response=response)
    assert kinds(reader.feed(last))[-1] == END
    reader.recycle()
    again = MessageReader.fresh(response=response)
    assert kinds(again.feed(first))[-1] == END
