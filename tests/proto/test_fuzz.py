"""A bounded mutation fuzz run over every sans-IO parser, in CI on every commit.

Seeded from real inputs (captured ClientHellos, HTTP heads, PROXY headers, curl's SOCKS5
messages), each round mutates one (bit flips, byte changes, insertions, deletions, truncation,
splices of two seeds, length fields set to extremes) and checks the parser's contract: a result,
``NEED_DATA``, or the parser's typed error (the PROXY parser may also answer ``None``: no header
here), never anything else, and a decision that the first ``length`` bytes alone give again. The
ClientHello's fast path must agree with its strict parser on every body.

The run is deterministic (fixed seed) and bounded by a count, not by time, so a failure is
reproduced by running the test again; ``FUZZ_ROUNDS`` raises the count for a deeper local run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from portway.errors import ProtocolError
from portway.proto import NEED_DATA, clienthello, httphead, proxyheader, socks5

ROUNDS = int(os.environ.get("FUZZ_ROUNDS", "20000"))
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "clienthello"

HELLOS = [bytes.fromhex(p.read_text().split()[0]) for p in sorted(FIXTURES.glob("*.hex"))]
HEADS = [
    b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n",
    b"POST /submit?x=1 HTTP/1.1\r\nHost: [::1]:8080\r\nContent-Length: 3\r\n\r\nabc",
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    b"GET http://a.test/ HTTP/1.0\r\n\r\n",
]
PROXIES = [
    b"PROXY TCP4 198.51.100.7 10.0.0.1 5555 443\r\n",
    b"PROXY TCP6 2001:db8::1 2001:db8::2 5555 443\r\n",
    b"PROXY UNKNOWN\r\n",
    proxyheader.build_v2(("198.51.100.7", 5555), ("10.0.0.1", 443)),
    proxyheader.build_v2(("2001:db8::1", 5555), ("2001:db8::2", 443)),
]
SOCKS5_GREETINGS = [b"\x05\x02\x00\x01", b"\x05\x03\x00\x01\x02", b"\x05\x01\x02"]  # curl, curl -U
SOCKS5_AUTHS = [
    b"\x01\x04user\x04pass",
    b"\x01\x05us\xc3\xa9r\x04p@ss",
    b"\x01\x04user\x00",
    b"\x01\x00\x04pass",
]
SOCKS5_REQUESTS = [
    b"\x05\x01\x00\x03\x0cexample.test\x00\x50",  # curl --socks5-hostname
    b"\x05\x01\x00\x03\x0dExample.TEST.\x00\x50",
    b"\x05\x01\x00\x03\x0b192.0.2.200\x01\xbb",
    b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50",  # curl --socks5
    b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x1f\x90",
]


def _mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        kind = rng.randrange(7)
        pos = rng.randrange(len(data) + 1)
        if kind == 0 and data:  # flip a bit
            data[pos % len(data)] ^= 1 << rng.randrange(8)
        elif kind == 1 and data:  # any byte
            data[pos % len(data)] = rng.randrange(256)
        elif kind == 2:  # insert bytes
            data[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == 3 and data:  # delete a run
            del data[pos : pos + rng.randint(1, 16)]
        elif kind == 4:  # truncate
            del data[pos:]
        elif kind == 5:  # splice another seed in
            other = rng.choice(seeds)
            start = rng.randrange(len(other) + 1)
            data[pos:] = other[start:]
        elif data:  # a length-like field at an extreme
            value = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
            data[pos % len(data)] = value
    return bytes(data)


def _run(parse: Callable[[bytes], object], error: type[ProtocolError], seeds: list[bytes], seed: int) -> int:
    rng = random.Random(seed)
    decided = 0
    for _ in range(ROUNDS):
        data = _mutate(rng, seeds)
        try:
            result = parse(data)
        except error as exc:
            assert str(exc), data.hex()
            continue
        if result is NEED_DATA:
            continue
        decided += 1
        if result is None:  # proxyheader: the bytes do not start a PROXY header at all
            continue
        length = getattr(result, "length", None)
        assert isinstance(length, int) and 0 < length <= len(data), (data.hex(), result)
        assert parse(data[:length]) == result, data.hex()  # the decision needs nothing after it
    return decided


@pytest.mark.parametrize(
    ("name", "parse", "error", "seeds"),
    [
        ("clienthello", clienthello.parse, clienthello.ClientHelloError, HELLOS),
        ("httphead", httphead.parse, httphead.HeadError, HEADS),
        ("proxyheader", proxyheader.parse, proxyheader.ProxyHeaderError, PROXIES),
        ("socks5-greeting", socks5.parse_greeting, socks5.Socks5Error, SOCKS5_GREETINGS),
        ("socks5-auth", socks5.parse_auth, socks5.Socks5Error, SOCKS5_AUTHS),
        ("socks5-request", socks5.parse_request, socks5.Socks5Error, SOCKS5_REQUESTS),
    ],
)
def test_parser_contract_under_mutation(
    name: str, parse: Callable[[bytes], object], error: type[ProtocolError], seeds: list[bytes]
) -> None:
    decided = _run(parse, error, seeds, seed=len(name))
    assert decided > ROUNDS // 100  # the run reached the parsers' success paths, not only errors


def test_clienthello_fast_path_agrees_with_the_strict_parser() -> None:
    rng = random.Random(7)
    bodies = []
    for raw in HELLOS:
        message, pos = b"", 0
        while pos < len(raw):
            size = raw[pos + 3] << 8 | raw[pos + 4]
            message += raw[pos + 5 : pos + 5 + size]
            pos += 5 + size
        bodies.append(message[4:])
    fast_answers = 0
    for _ in range(ROUNDS):
        body = _mutate(rng, bodies)
        fast = clienthello._fast_body(body, 1)
        if fast is None:
            continue
        fast_answers += 1
        assert clienthello._parse_body(body, length=1) == fast, body.hex()
    assert fast_answers > ROUNDS // 100


# -- the HTTP/1 readers (portway.proto.http1) -------------------------------------------------
# Streaming readers have their own contract: ``feed`` returns events or raises HttpError, and
# nothing else; the events follow HEAD (BODY)* END, with UPGRADE only right after the END of an
# upgrading head, and last; a body given a length has that length; and the same bytes fed in
# other pieces give the same events (BODY pieces merged; UPGRADE bytes counted with whatever
# was not fed after it) and the same error status. Seeds are fed unmutated first.
from portway.proto import http1  # noqa: E402

HTTP1_REQUESTS = [
    b"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    b"POST http://a.test/f HTTP/1.1\r\nHost: a.test\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /up HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value\r\nhello\r\n6\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\n",
    b"GET http://a.test/old HTTP/1.0\r\nUser-Agent: Wget/1.21\r\nConnection: keep-alive\r\n\r\n",
    b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n\x16\x03\x01\x00\x05hello",
    b"GET /chat HTTP/1.1\r\nHost: a.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x00",
    b"HEAD / HTTP/1.1\r\nHost: a.test\r\n\r\nGET /2 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n",
]
HTTP1_RESPONSES = [
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
    b'HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nHTTP/1.1 304 Not Modified\r\nETag: "x"\r\n\r\n',
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-Sum: 1\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nread until the connection closes",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
]
_HTTP1_LIMITS = {"max_head": 512, "max_fields": 16}  # small, so mutations reach them


class _Http1Grammar:
    """Checks a reader's events as they come, across feeds."""

    def __init__(self, *, response: bool, cut: bool) -> None:
        self.response = response
        self.cut = cut  # expect_no_body(): the final answer ends with its head
        self.head: http1.Head | None = None  # the message in progress
        self.last: http1.Head | None = None  # the latest head
        self.body = 0
        self.upgraded = False
        self.ends = 0

    def check(self, events: list[tuple[int, object]]) -> None:
        for kind, value in events:
            assert not self.upgraded, "an event after UPGRADE"
            if kind == http1.HEAD:
                assert self.head is None, "HEAD inside a message"
                assert isinstance(value, http1.Head)
                self._check_head(value)
                self.head = self.last = value
                self.body = 0
            elif kind == http1.BODY:
                assert self.head is not None, "BODY outside a message"
                assert isinstance(value, bytes) and value
                self.body += len(value)
            elif kind == http1.END:
                head = self.head
                assert head is not None and value is None, "END outside a message"
                self._check_length(head)
                self.head = None
                self.ends += 1
                if self.response and not 100 <= head.status < 200:
                    self.cut = False  # (the reader cuts one answer only)
            elif kind == http1.UPGRADE:
                assert self.head is None and isinstance(value, bytes), "UPGRADE not after an END"
                assert self.last is not None and self.last.upgrade, "UPGRADE after a plain message"
                self.upgraded = True
            else:
                raise AssertionError(f"unknown event kind {kind!r}")

    def _check_head(self, head: http1.Head) -> None:
        if self.response:  # (statuses below 100 and unknown interim ones are refused)
            assert 100 <= head.status <= 999 and head.method == ""
            assert not 103 < head.status < 200, head.status
        else:  # (the target may be empty: llhttp reads "CONNECT \r\n" as HTTP/0.9)
            assert head.method and head.status == 0
        assert len(head.version) == 3 and head.version[1] == "."
        assert head.length is None or head.length >= 0
        assert not (head.chunked and head.length is not None)
        assert len(head.fields) <= _HTTP1_LIMITS["max_fields"]
        assert all(isinstance(n, bytes) and n and isinstance(v, bytes) for n, v in head.fields)

    def _check_length(self, head: http1.Head) -> None:
        if head.upgrade and not self.response:
            assert not head.chunked and not head.length, "an upgrade request with a body got through"
            return
        if self.response and (self.cut or 100 <= head.status < 200 or head.status in (204, 304)):
            if head.status in (100, 102, 103, 204, 304) or (self.cut and head.status >= 200):
                assert self.body == 0, (head.status, self.body)
            return
        if head.length is not None:
            assert self.body == head.length, (head.length, self.body)
        elif not head.chunked and not self.response:
            assert self.body == 0


def _http1_outcome(data: bytes, cuts: list[int], *, response: bool, cut: bool) -> tuple[object, ...]:
    """Feed ``data`` in pieces; ("error", status) or ("events", merged events, partial, ENDs)."""
    reader = http1.MessageReader(response=response, **_HTTP1_LIMITS)
    if cut:
        reader.expect_no_body()
    grammar = _Http1Grammar(response=response, cut=cut)
    bounds = [0, *sorted(set(cuts)), len(data)]
    merged: list[tuple[int, object]] = []
    for i in range(len(bounds) - 1):
        try:
            events = reader.feed(data[bounds[i] : bounds[i + 1]])
        except http1.HttpError as exc:
            assert str(exc) and 400 <= exc.status <= 599, data.hex()
            return ("error", exc.status)
        grammar.check(events)
        for kind, value in events:
            if kind == http1.HEAD:
                assert isinstance(value, http1.Head)
                merged.append((kind, (value.method, value.target, value.status, tuple(value.fields))))
            elif kind == http1.BODY and merged and merged[-1][0] == http1.BODY:
                merged[-1] = (kind, merged[-1][1] + value)  # type: ignore[operator]
            else:
                merged.append((kind, value))
        if grammar.upgraded:  # what was not fed belongs to the new protocol too
            merged[-1] = (http1.UPGRADE, merged[-1][1] + data[bounds[i + 1] :])  # type: ignore[operator]
            break
    return ("events", merged, reader.partial, grammar.ends)


def _run_http1(*, response: bool, cut: bool, seeds: list[bytes], seed: int) -> int:
    rng = random.Random(seed)
    ended = 0
    for n in range(len(seeds) + ROUNDS):
        data = seeds[n] if n < len(seeds) else _mutate(rng, seeds)
        whole = _http1_outcome(data, [], response=response, cut=cut)
        if whole[0] == "events" and whole[3]:
            ended += 1
        if cut:
            continue  # bytes after a cut answer are the caller's (leftover): no split rule
        if len(data) < 2:
            continue
        # non-empty pieces, as a socket delivers them
        cuts = [rng.randint(1, len(data) - 1) for _ in range(rng.randint(1, 3))]
        assert _http1_outcome(data, cuts, response=response, cut=cut) == whole, (data.hex(), cuts)
    return ended


def test_http1_request_reader_under_mutation() -> None:
    ended = _run_http1(response=False, cut=False, seeds=HTTP1_REQUESTS, seed=11)
    assert ended > ROUNDS // 100  # the mutations still reach complete messages


def test_http1_response_reader_under_mutation() -> None:
    ended = _run_http1(response=True, cut=False, seeds=HTTP1_RESPONSES, seed=12)
    assert ended > ROUNDS // 100


def test_http1_response_reader_answering_head_under_mutation() -> None:
    ended = _run_http1(response=True, cut=True, seeds=HTTP1_RESPONSES, seed=13)
    assert ended > ROUNDS // 100
