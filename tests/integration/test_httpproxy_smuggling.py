"""Request smuggling through the forward proxy: the classic desync payloads, each sent raw on a
fresh connection, get ``400`` (``431``/``414`` for what is too long) and a close, and the origin
receives nothing of the request smuggled behind them. Valid chunked uploads, including the
spellings RFC 9110/9112 allow (a tab as whitespace, case-insensitive ``chunked``, chunk
extensions, trailers), pass with the body intact.

Every payload ends with ``GET /smuggled-<case> ...``: a parser that disagrees with the proxy's
about where the first request ends would read it as a second request, and the origin (a
keep-alive :class:`~tests.integration.backends.HttpOrigin` that records every byte it receives)
would show it. Errors in the chunked body itself are caught because the proxy parses and
re-frames every body it forwards.
"""

from __future__ import annotations

import hashlib
import io
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.backends import HttpOrigin, LoopThread, http_proxy_config, post_answer, read_response
from tests.integration.harness import Portway, fd_count, free_port, wait_until

HEAD = b"POST http://@/upload HTTP/1.1\r\nHost: @\r\n"
"""Each payload's start; ``@`` becomes the origin's address."""
SMUGGLED = b"GET /smuggled-# HTTP/1.1\r\nHost: @\r\n\r\n"
"""The request hidden behind each payload; ``#`` becomes the case's name."""


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


BAD_HEADS: list[tuple[str, bytes]] = [
    # CL.TE: a front end that honours Content-Length forwards all, a back end that honours
    # chunked stops at the 0 and reads the rest as the next request.
    ("cl_te", HEAD + b"Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG" + SMUGGLED),
    # TE.CL: the other way round.
    (
        "te_cl",
        HEAD + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk(SMUGGLED) + b"0\r\n\r\n",
    ),
    (
        "te_chunked_with_tab_and_cl",
        HEAD + b"Content-Length: 5\r\nTransfer-Encoding:\tchunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    ),
    # TE.TE: Transfer-Encoding written so that one parser sees chunked and another does not,
    # alone and beside a Content-Length.
    *[
        (f"te_{name}{suffix}", HEAD + cl + field + b"\r\n\r\n" + chunk(b"hello") + b"0\r\n\r\n" + SMUGGLED)
        for name, field in (
            ("xchunked", b"Transfer-Encoding: xchunked"),
            ("space_before_colon", b"Transfer-Encoding : chunked"),
            ("then_x", b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x"),
            ("chunked_identity", b"Transfer-Encoding: chunked, identity"),
            ("quoted", b'Transfer-Encoding: "chunked"'),
            ("vertical_tab", b"Transfer-Encoding:\x0bchunked"),
            ("obs_fold", b"X-Before: a\r\n Transfer-Encoding: chunked"),
            ("nul_value", b"Transfer-Encoding: chunked\x00"),
        )
        for suffix, cl in (("", b""), ("_with_cl", b"Content-Length: 10\r\n"))
    ],
    (
        "te_on_http10",
        HEAD.replace(b"HTTP/1.1", b"HTTP/1.0") + b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLED,
    ),
    ("cl_duplicate_differing", HEAD + b"Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!" + SMUGGLED),
    ("cl_plus", HEAD + b"Content-Length: +6\r\n\r\nhello!" + SMUGGLED),
    ("cl_list", HEAD + b"Content-Length: 6, 7\r\n\r\nhello!" + SMUGGLED),
    ("cl_negative", HEAD + b"Content-Length: -6\r\n\r\nhello!" + SMUGGLED),
    ("bare_lf", HEAD.replace(b"\r\n", b"\n") + b"Content-Length: 6\n\nhello!" + SMUGGLED),
    ("bare_lf_in_one_field", HEAD + b"X-A: a\nContent-Length: 6\r\n\r\nhello!" + SMUGGLED),
    ("bare_cr_in_value", HEAD + b"X-A: a\rContent-Length: 6\r\n\r\nhello!" + SMUGGLED),
    ("obs_fold", HEAD + b"X-A: a\r\n b\r\nContent-Length: 6\r\n\r\nhello!" + SMUGGLED),
    ("nul_in_value", HEAD + b"X-A: a\x00b\r\nContent-Length: 6\r\n\r\nhello!" + SMUGGLED),
]

BAD_BODIES: list[tuple[str, bytes]] = [
    (name, HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + body + SMUGGLED)
    for name, body in (
        ("chunk_size_leading_space", b" 5\r\nhello\r\n0\r\n\r\n"),
        ("chunk_size_trailing_space", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("chunk_size_0x", b"0x5\r\nhello\r\n0\r\n\r\n"),
        ("chunk_size_negative", b"-5\r\nhello\r\n0\r\n\r\n"),
        ("chunk_size_overflow", b"10000000000000005\r\nhello\r\n0\r\n\r\n"),
        ("chunk_size_bare_lf", b"5\nhello\r\n0\r\n\r\n"),
        ("chunk_ext_control_char", b"5;\x01\r\nhello\r\n0\r\n\r\n"),
        ("chunk_ext_open_quote", b'5;a="b\r\nhello\r\n0\r\n\r\n'),
        ("chunk_data_longer_than_size", b"3\r\nhello\r\n0\r\n\r\n"),
    )
]

TOO_LONG: list[tuple[str, bytes, set[int]]] = [
    (
        "head_100k",
        HEAD + b"".join(b"X-Pad-%04d: %s\r\n" % (i, b"p" * 90) for i in range(1000)) + b"\r\n" + SMUGGLED,
        {400, 431},
    ),
    (
        "request_line_70k",
        b"GET http://@/" + b"a" * (70 << 10) + b" HTTP/1.1\r\nHost: @\r\n\r\n" + SMUGGLED,
        {400, 414, 431},  # 414 URI Too Long is the precise answer (RFC 9112 §3)
    ),
]

TAB_AFTER = (
    "llhttp (httptools 0.9.0) answers 'Request has invalid Transfer-Encoding' to a HTAB after "
    "'chunked', which RFC 9112 §5 allows as OWS; refusing is the safe side"
)
GOOD_BODIES: list[Any] = [
    # (name, the Transfer-Encoding line, chunk extension or "trailer"); the decoded body must arrive
    pytest.param(name, field, extra, id=name, marks=marks)
    for name, field, extra, marks in (
        ("plain", b"Transfer-Encoding: chunked", b"", ()),
        ("tab_before_value", b"Transfer-Encoding:\tchunked", b"", ()),  # OWS = SP / HTAB (RFC 9110 §5.6.3)
        ("no_space", b"Transfer-Encoding:chunked", b"", ()),
        ("trailing_spaces", b"Transfer-Encoding: chunked  ", b"", ()),  # OWS after the value too
        ("capitalised", b"Transfer-Encoding: Chunked", b"", ()),  # codings are case-insensitive (RFC 9112 §7)
        ("extensions", b"Transfer-Encoding: chunked", b';name=value;flag;q="a b"', ()),  # RFC 9112 §7.1.1
        ("trailer", b"Transfer-Encoding: chunked", b"trailer", ()),
        (
            "trailing_tab",
            b"Transfer-Encoding: chunked\t",
            b"",
            pytest.mark.xfail(reason=TAB_AFTER, strict=False),
        ),
    )
]


class Setup:
    def __init__(self, pw: Portway, port: int, origin: HttpOrigin) -> None:
        self.pw, self.port, self.origin = pw, port, origin
        self.address = f"127.0.0.1:{origin.port}".encode()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    """One proxy and one origin for the module; each case looks at what changed at the origin.
    At the end the worker holds no more descriptors than it did at the start."""
    lt = LoopThread()
    origin = HttpOrigin(lt)
    port = free_port()
    pw = Portway(tmp_path_factory.mktemp("smuggling"), http_proxy_config(port, [f"127.0.0.1:{origin.port}"]))
    pw.start()
    worker = pw.worker_pids()[0]
    baseline = fd_count(worker)
    try:
        yield Setup(pw, port, origin)
        origin.disconnect()
        wait_until(lambda: fd_count(worker) <= baseline, what="worker fds back to the baseline")
    finally:
        pw.stop()
        lt.close()


def exchange(s: Setup, payload: bytes) -> bytes:
    """Send ``payload`` on a fresh connection and read until the proxy closes it."""
    answer = b""
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        try:
            sock.sendall(payload)
        except OSError:
            pass  # an answer and a close can come before all of an over-long payload is sent
        try:
            while data := sock.recv(65536):  # the 10 s timeout bounds this
                answer += data
        except ConnectionResetError:
            pass  # closed with our unread bytes still queued: a reset, after the answer
    return answer


def refused(s: Setup, name: str, payload: bytes, statuses: set[int], *, dialled: bool) -> None:
    """``payload`` gets one answer with a status in ``statuses`` and a close; the origin
    completes no request and never sees the smuggled one (nor a connection, unless ``dialled``)."""
    marker = b"/smuggled-" + name.encode()
    payload = payload.replace(b"@", s.address).replace(b"#", name.encode())
    assert marker in payload
    accepted, served = s.origin.accepted, len(s.origin.requests)
    answer = exchange(s, payload)
    f = io.BytesIO(answer)
    r = read_response(f, "POST")
    assert r.status in statuses, answer[:300]
    assert f.read() == b"", "more than one answer on a refused connection"
    assert len(s.origin.requests) == served, s.origin.requests[served:]
    assert marker not in s.origin.received()
    if not dialled:
        assert s.origin.accepted == accepted


@pytest.mark.parametrize(("name", "payload"), BAD_HEADS, ids=[n for n, _ in BAD_HEADS])
def test_bad_framing_in_the_head_is_refused(setup: Setup, name: str, payload: bytes) -> None:
    refused(setup, name, payload, {400}, dialled=False)


@pytest.mark.parametrize(("name", "payload", "statuses"), TOO_LONG, ids=[n for n, _, _ in TOO_LONG])
def test_over_long_heads_are_refused(setup: Setup, name: str, payload: bytes, statuses: set[int]) -> None:
    refused(setup, name, payload, statuses, dialled=False)


@pytest.mark.parametrize(("name", "payload"), BAD_BODIES, ids=[n for n, _ in BAD_BODIES])
def test_bad_chunked_bodies_are_refused(setup: Setup, name: str, payload: bytes) -> None:
    refused(setup, name, payload, {400}, dialled=True)


@pytest.mark.parametrize(("name", "field", "extra"), GOOD_BODIES)
def test_valid_chunked_upload_arrives_intact(setup: Setup, name: str, field: bytes, extra: bytes) -> None:
    body = hashlib.shake_256(name.encode()).digest(200_000)
    sizes = [1, 0xAB, 0x1000, 0x7FFF, 10_000]
    pieces, at = [], 0
    for i, size in enumerate(sizes * 10):
        if at >= len(body):
            break
        piece = body[at : at + size]
        at += len(piece)
        size_text = (b"%X" if i % 2 else b"%x") % len(piece)  # hex digits in either case
        ext = extra if extra not in (b"", b"trailer") else b""
        pieces.append(size_text + ext + b"\r\n" + piece + b"\r\n")
    assert at == len(body)
    trailer = b"X-Checksum: done\r\n" if extra == b"trailer" else b""
    target = f"/chunked/{name}"
    head = b"POST http://@%s HTTP/1.1\r\nHost: @\r\n%s\r\n\r\n" % (target.encode(), field)
    payload = head.replace(b"@", setup.address) + b"".join(pieces) + b"0\r\n" + trailer + b"\r\n"
    served = len(setup.origin.requests)
    with socket.create_connection(("127.0.0.1", setup.port), timeout=10) as sock, sock.makefile("rb") as f:
        sock.sendall(payload)
        r = read_response(f, "POST")
    assert r.status == 200, (r.status, r.body[:300])
    assert r.body == post_answer(target, body)  # the origin's sha256 of what it decoded
    (seen,) = setup.origin.requests[served:]
    assert hashlib.sha256(seen.body).digest() == hashlib.sha256(body).digest()
