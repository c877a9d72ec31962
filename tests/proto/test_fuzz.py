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
