"""Micro-benchmark: portway.proto.httphead.parse against httptools (llhttp) on one browser-like head.

Usage::

    .venv/bin/python bench/micro_httphead.py [--n 100000]

Prints microseconds per parse for the pure parser and, if ``httptools`` can be imported, for an
httptools-based head parse that does comparable work (a fresh parser per head, callbacks that
collect the request-target and the lower-cased header fields, and a Host lookup).
"""

import argparse
import time
from collections.abc import Callable

from portway.proto.httphead import RequestHead, parse

HEAD = (
    b"GET /static/css/site.css?v=3 HTTP/1.1\r\n"
    b"Host: www.example.com\r\n"
    b"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n"
    b"Accept: text/css,*/*;q=0.1\r\n"
    b"Accept-Language: en-US,en;q=0.5\r\n"
    b"Accept-Encoding: gzip, deflate, br, zstd\r\n"
    b"Referer: http://www.example.com/\r\n"
    b"Connection: keep-alive\r\n"
    b"Cookie: session=0123456789abcdef0123456789abcdef\r\n"
    b"Sec-Fetch-Dest: style\r\n"
    b"Sec-Fetch-Mode: no-cors\r\n"
    b"\r\n"
)


def _pure() -> object:
    head = parse(HEAD)
    assert isinstance(head, RequestHead)
    return head


def _httptools_parse() -> Callable[[], object] | None:
    try:
        import httptools  # type: ignore[import-not-found]
    except ImportError:
        return None

    class _Collect:
        __slots__ = ("done", "headers", "url")

        def __init__(self) -> None:
            self.url = b""
            self.headers: list[tuple[str, str]] = []
            self.done = False

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.decode("ascii").lower(), value.decode("latin-1")))

        def on_headers_complete(self) -> None:
            self.done = True

    def run() -> object:
        sink = _Collect()
        parser = httptools.HttpRequestParser(sink)
        parser.feed_data(HEAD)
        assert sink.done
        host = next(v for n, v in sink.headers if n == "host")
        return parser.get_method().decode("ascii"), sink.url.decode("ascii"), host

    return run


def _time(fn: Callable[[], object], n: int) -> float:
    for _ in range(1000):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, time.perf_counter() - start)
    return best / n * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="parses per timing run (best of 3)")
    args = parser.parse_args()
    fields = HEAD.count(b"\r\n") - 2
    print(f"head: {len(HEAD)} bytes, {fields} fields, {args.n} parses, best of 3")
    print(f"pure httphead.parse : {_time(_pure, args.n):6.2f} µs/parse")
    other = _httptools_parse()
    if other is None:
        print("httptools           :   (not importable)")
    else:
        print(f"httptools (llhttp)  : {_time(other, args.n):6.2f} µs/parse")


if __name__ == "__main__":
    main()
