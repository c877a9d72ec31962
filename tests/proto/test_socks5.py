"""Tests for portway.proto.socks5: curl captures, byte-at-a-time, errors, replies, properties.

The byte fixtures were captured from curl 7.88.1 (Debian 12) by the recording server below,
``test_curl_live`` runs the same capture against whatever curl is installed, and checks what
it sent and that it accepted our replies. Each fixture is parsed whole, one byte at a time
and with trailing bytes. Hypothesis checks the three-way contract on arbitrary bytes.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import pickle
import shutil
import socket
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portway.errors import ProtocolError
from portway.proto.socks5 import (
    MAX_AUTH_LENGTH,
    MAX_GREETING_LENGTH,
    MAX_REQUEST_LENGTH,
    NEED_DATA,
    VERSION,
    Command,
    Credentials,
    Greeting,
    Kind,
    Method,
    Reply,
    Request,
    Socks5Error,
    auth_reply,
    choose_method,
    method_reply,
    parse_auth,
    parse_greeting,
    parse_request,
    reply,
    reply_for_errno,
    reply_for_oserror,
)
from tests.proto.contract import assert_decision_is_final, mutate

_EXAMPLES = {"fast": 100, "deep": 5_000}.get(os.environ.get("HYPOTHESIS_PROFILE", "fast"), 100)
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _hex(*fields: str) -> bytes:
    return bytes.fromhex("".join(fields))


# --- captured from curl 7.88.1 -------------------------------------------------------------

CURL_GREETING = _hex(
    "05",  # VER 5
    "02",  # NMETHODS 2
    "00",  # NO AUTHENTICATION REQUIRED
    "01",  # GSSAPI (curl is built with it)
)
CURL_GREETING_USER = _hex(
    "05",  # VER 5
    "03",  # NMETHODS 3 (with -U / --proxy-user / socks5h://user:pass@)
    "00",  # NO AUTHENTICATION REQUIRED
    "01",  # GSSAPI
    "02",  # USERNAME/PASSWORD
)
CURL_AUTH = _hex(
    "01",  # RFC 1929 VER 1 (-U user:pass)
    "04",  # ULEN 4
    "75736572",  # "user"
    "04",  # PLEN 4
    "70617373",  # "pass"
)
CURL_AUTH_UTF8 = _hex(
    "01",  # VER 1 (-x socks5h://us%C3%A9r:p%40ss@...)
    "05",  # ULEN 5
    "7573c3a972",  # "usér" in UTF-8
    "04",  # PLEN 4
    "70407373",  # "p@ss"
)
CURL_AUTH_EMPTY_PASSWORD = _hex(
    "01",  # VER 1 (-U user:)
    "04",  # ULEN 4
    "75736572",  # "user"
    "00",  # PLEN 0
)
CURL_AUTH_EMPTY_USER = _hex(
    "01",  # VER 1 (-U :pass)
    "00",  # ULEN 0
    "04",  # PLEN 4
    "70617373",  # "pass"
)
CURL_REQUEST_NAME = _hex(
    "05",  # VER 5 (--socks5-hostname, http://example.test/)
    "01",  # CMD CONNECT
    "00",  # RSV
    "03",  # ATYP DOMAINNAME
    "0c",  # 12 bytes of name
    "6578616d706c652e74657374",  # "example.test"
    "0050",  # port 80
)
CURL_REQUEST_NAME_DOT = _hex(
    "05",  # VER 5 (--socks5-hostname, http://Example.TEST./: the host as typed)
    "01",  # CMD CONNECT
    "00",  # RSV
    "03",  # ATYP DOMAINNAME
    "0d",  # 13 bytes of name
    "4578616d706c652e544553542e",  # "Example.TEST."
    "0050",  # port 80
)
CURL_REQUEST_IPV4 = _hex(
    "05",  # VER 5 (--socks5, http://127.0.0.1/; --socks5-hostname sends IP literals like this too)
    "01",  # CMD CONNECT
    "00",  # RSV
    "01",  # ATYP IPv4
    "7f000001",  # 127.0.0.1
    "0050",  # port 80
)
CURL_REQUEST_IPV4_8080 = _hex(
    "05",  # VER 5 (--socks5, http://127.0.0.1:8080/)
    "01",  # CMD CONNECT
    "00",  # RSV
    "01",  # ATYP IPv4
    "7f000001",  # 127.0.0.1
    "1f90",  # port 8080
)
CURL_REQUEST_IPV6 = _hex(
    "05",  # VER 5 (--socks5-hostname, http://[::1]:8080/)
    "01",  # CMD CONNECT
    "00",  # RSV
    "04",  # ATYP IPv6
    "00000000000000000000000000000001",  # ::1
    "1f90",  # port 8080
)
CURL_REQUEST_IPV6_DOC = _hex(
    "05",  # VER 5 (--socks5, http://[2001:db8::1]:8080/)
    "01",  # CMD CONNECT
    "00",  # RSV
    "04",  # ATYP IPv6
    "20010db8000000000000000000000001",  # 2001:db8::1
    "1f90",  # port 8080
)
CURL_HTTP = b"GET / HTTP/1.1\r\nHost: example.test\r\nUser-Agent: curl/7.88.1\r\nAccept: */*\r\n\r\n"
CLIENT_HELLO_START = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # a TLS record after the request

Parser = Callable[[bytes | bytearray], object]

# name, parser, wire bytes, expected result
FIXTURES: list[tuple[str, Parser, bytes, object]] = [
    ("greeting", parse_greeting, CURL_GREETING, Greeting(frozenset({0, 1}), length=4)),
    ("greeting-user", parse_greeting, CURL_GREETING_USER, Greeting(frozenset({0, 1, 2}), length=5)),
    ("greeting-one", parse_greeting, b"\x05\x01\x02", Greeting(frozenset({2}), length=3)),
    (
        "greeting-255",
        parse_greeting,
        b"\x05\xff" + bytes(range(255)),
        Greeting(frozenset(range(255)), length=MAX_GREETING_LENGTH),
    ),
    ("greeting-duplicates", parse_greeting, b"\x05\x03\x00\x00\x02", Greeting(frozenset({0, 2}), length=5)),
    ("auth", parse_auth, CURL_AUTH, Credentials("user", "pass", length=11)),
    ("auth-utf8", parse_auth, CURL_AUTH_UTF8, Credentials("usér", "p@ss", length=12)),
    ("auth-empty-password", parse_auth, CURL_AUTH_EMPTY_PASSWORD, Credentials("user", "", length=7)),
    ("auth-empty-user", parse_auth, CURL_AUTH_EMPTY_USER, Credentials("", "pass", length=7)),
    ("auth-empty-both", parse_auth, b"\x01\x00\x00", Credentials("", "", length=3)),
    (
        "auth-longest",
        parse_auth,
        b"\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 255,
        Credentials("u" * 255, "p" * 255, length=MAX_AUTH_LENGTH),
    ),
    ("auth-latin1", parse_auth, b"\x01\x02\xe9t\x01\xff", Credentials("ét", "ÿ", length=6)),
    ("auth-mixed", parse_auth, b"\x01\x02\xc3\xa9\x02\xc3\xa9", Credentials("é", "é", length=7)),
    ("request-name", parse_request, CURL_REQUEST_NAME, Request(1, "example.test", 80, "name", length=19)),
    (
        "request-name-dot",
        parse_request,
        CURL_REQUEST_NAME_DOT,
        Request(1, "example.test", 80, "name", length=20),
    ),
    ("request-ipv4", parse_request, CURL_REQUEST_IPV4, Request(1, "127.0.0.1", 80, "ipv4", length=10)),
    (
        "request-ipv4-8080",
        parse_request,
        CURL_REQUEST_IPV4_8080,
        Request(1, "127.0.0.1", 8080, "ipv4", length=10),
    ),
    ("request-ipv6", parse_request, CURL_REQUEST_IPV6, Request(1, "::1", 8080, "ipv6", length=22)),
    (
        "request-ipv6-doc",
        parse_request,
        CURL_REQUEST_IPV6_DOC,
        Request(1, "2001:db8::1", 8080, "ipv6", length=22),
    ),
    (
        "request-name-ipv4",
        parse_request,
        b"\x05\x01\x00\x03\x0b192.0.2.200\x01\xbb",
        Request(1, "192.0.2.200", 443, "ipv4", length=18),
    ),
    (
        "request-name-ipv6",
        parse_request,
        b"\x05\x01\x00\x03\x0b2001:DB8::1\x01\xbb",
        Request(1, "2001:db8::1", 443, "ipv6", length=18),
    ),
    (
        "request-name-longest",
        parse_request,
        b"\x05\x01\x00\x03\xfe"
        + b"a" * 63
        + b"."
        + b"b" * 63
        + b"."
        + b"c" * 63
        + b"."
        + b"d" * 61
        + b".\xff\xff",
        Request(1, "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, 65535, "name", length=261),
    ),
]
IDS = [f[0] for f in FIXTURES]


@pytest.mark.parametrize(("name", "parse", "raw", "expected"), FIXTURES, ids=IDS)
def test_whole(name: str, parse: Parser, raw: bytes, expected: object) -> None:
    assert parse(raw) == expected
    assert getattr(expected, "length", None) == len(raw)


@pytest.mark.parametrize(("name", "parse", "raw", "expected"), FIXTURES, ids=IDS)
def test_one_byte_at_a_time(name: str, parse: Parser, raw: bytes, expected: object) -> None:
    buffer = bytearray()
    for byte in raw:
        assert parse(buffer) is NEED_DATA
        buffer.append(byte)
    assert parse(buffer) == expected


@pytest.mark.parametrize("trailing", [CURL_HTTP, CLIENT_HELLO_START, b"\x05", b"\x00" * 600])
@pytest.mark.parametrize(("name", "parse", "raw", "expected"), FIXTURES, ids=IDS)
def test_trailing_bytes_are_left_alone(
    name: str, parse: Parser, raw: bytes, expected: object, trailing: bytes
) -> None:
    data = raw + trailing
    result = parse(data)
    assert result == expected
    length = getattr(result, "length", None)
    assert isinstance(length, int)
    assert data[length:] == trailing


def test_pipelined_greeting_auth_request_and_client_hello() -> None:
    """A client that sends every phase at once: each parser takes its part by ``length``."""
    data = CURL_GREETING_USER + CURL_AUTH + CURL_REQUEST_NAME + CLIENT_HELLO_START
    greeting = parse_greeting(data)
    assert isinstance(greeting, Greeting)
    assert choose_method(greeting, auth_required=True) is Method.USERNAME_PASSWORD
    data = data[greeting.length :]
    credentials = parse_auth(data)
    assert isinstance(credentials, Credentials)
    assert credentials.matches("user", "pass")
    data = data[credentials.length :]
    request = parse_request(data)
    assert request == Request(Command.CONNECT, "example.test", 80, "name", length=19)
    assert isinstance(request, Request)
    assert data[request.length :] == CLIENT_HELLO_START


def test_empty_needs_data() -> None:
    assert parse_greeting(b"") is NEED_DATA
    assert parse_auth(b"") is NEED_DATA
    assert parse_request(bytearray()) is NEED_DATA


def test_max_lengths() -> None:
    assert (MAX_GREETING_LENGTH, MAX_AUTH_LENGTH, MAX_REQUEST_LENGTH) == (257, 513, 262)


# --- errors -------------------------------------------------------------------------------

# parser, complete bytes, reply, words from the message
ERRORS: list[tuple[Parser, bytes, Reply | None, str]] = [
    (parse_greeting, b"\x04\x01\x00\x50", None, "version 4 (SOCKS4 is not served); expected 5"),
    (parse_greeting, b"G", None, "version 71"),
    (parse_greeting, b"\x05\x00", None, "NMETHODS is 0"),
    (parse_auth, b"\x05\x04user\x04pass", None, "version 5; RFC 1929 defines only 1"),
    (parse_auth, b"\x00", None, "version 0"),
    (parse_request, b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", Reply.GENERAL_FAILURE, "version 4"),
    (parse_request, b"\x05\x01\x00\x02", Reply.ADDRESS_TYPE_NOT_SUPPORTED, "address type 2"),
    (parse_request, b"\x05\x01\x00\x00", Reply.ADDRESS_TYPE_NOT_SUPPORTED, "address type 0"),
    (parse_request, b"\x05\x01\x00\xff", Reply.ADDRESS_TYPE_NOT_SUPPORTED, "address type 255"),
    (parse_request, b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", Reply.GENERAL_FAILURE, "RSV 0x01"),
    (
        parse_request,
        b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50",
        Reply.COMMAND_NOT_SUPPORTED,
        "command 2 (BIND)",
    ),
    (
        parse_request,
        b"\x05\x03\x00\x01\x00\x00\x00\x00\x00\x00",
        Reply.COMMAND_NOT_SUPPORTED,
        "UDP ASSOCIATE",
    ),
    (parse_request, b"\x05\x00\x00\x01\x7f\x00\x00\x01\x00\x50", Reply.COMMAND_NOT_SUPPORTED, "command 0"),
    (parse_request, b"\x05\x09\x00\x03\x00\x00\x50", Reply.COMMAND_NOT_SUPPORTED, "command 9"),
    (parse_request, b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", Reply.GENERAL_FAILURE, "port 0"),
    (parse_request, b"\x05\x01\x00\x04" + bytes(15) + b"\x01\x00\x00", Reply.GENERAL_FAILURE, "port 0"),
    (parse_request, b"\x05\x01\x00\x03\x01a\x00\x00", Reply.GENERAL_FAILURE, "'a' has port 0"),
    (parse_request, b"\x05\x01\x00\x03\x00\x00\x50", Reply.GENERAL_FAILURE, "empty domain name"),
]


def _error_id(case: tuple[Parser, bytes, Reply | None, str]) -> str:
    return f"{getattr(case[0], '__name__', '?')}-{case[3]}"


@pytest.mark.parametrize(("parse", "data", "code", "message"), ERRORS, ids=[_error_id(e) for e in ERRORS])
def test_errors(parse: Parser, data: bytes, code: Reply | None, message: str) -> None:
    with pytest.raises(Socks5Error) as excinfo:
        parse(data)
    assert excinfo.value.reply is code
    assert excinfo.value.hint == (None if code is None else int(code))
    assert message in str(excinfo.value)
    # Rule 1: the decision holds with more bytes, and every prefix is NEED_DATA or the same error.
    outcome = assert_decision_is_final(_outcome(parse), data + b"\x00\x50more")
    assert outcome == ("error", code)


@pytest.mark.parametrize(
    ("parse", "data", "decided_at"),
    [
        (parse_greeting, b"\x04\x01\x00", 1),  # version: at once
        (parse_auth, b"\x05\x04user\x04pass", 1),
        (parse_request, b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", 1),
        (parse_request, b"\x05\x01\x00\x02\x00\x00\x00\x00\x00\x50", 4),  # ATYP: the length is unknown
        (parse_greeting, b"\x05\x00", 2),  # NMETHODS 0 is a whole greeting
        (parse_request, b"\x05\x01\x01\x01\x7f\x00\x00\x01\x00\x50", 10),  # RSV: after the whole request
        (parse_request, b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", 10),  # CMD: after the whole request
        (parse_request, b"\x05\x02\x00\x03\x04a b.\x00\x50", 11),
        (parse_request, b"\x05\x01\x00\x03\x04a b.\x00\x50", 11),  # a bad name: after the whole request
        (parse_request, b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x00", 10),  # port 0
    ],
)
def test_when_errors_are_raised(parse: Parser, data: bytes, decided_at: int) -> None:
    """Rule 2: version and ATYP at once; everything else once the client has sent it all."""
    for n in range(decided_at):
        assert parse(data[:n]) is NEED_DATA, n
    with pytest.raises(Socks5Error):
        parse(data[:decided_at])


def test_checks_run_in_order_rsv_command_address() -> None:
    everything_wrong = b"\x05\x02\x01\x03\x03a b\x00\x00"
    with pytest.raises(Socks5Error, match="RSV") as excinfo:
        parse_request(everything_wrong)
    assert excinfo.value.reply is Reply.GENERAL_FAILURE
    with pytest.raises(Socks5Error, match="BIND"):
        parse_request(b"\x05\x02\x00\x03\x03a b\x00\x00")
    with pytest.raises(Socks5Error, match="byte 0x20"):
        parse_request(b"\x05\x01\x00\x03\x03a b\x00\x00")


def test_error_is_a_protocol_error_and_pickles() -> None:
    error = Socks5Error("bad", reply=Reply.HOST_UNREACHABLE)
    assert isinstance(error, ProtocolError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.reply, copy.hint) == ("bad", Reply.HOST_UNREACHABLE, 4)
    quiet = pickle.loads(pickle.dumps(Socks5Error("greeting", reply=None)))
    assert (str(quiet), quiet.reply, quiet.hint) == ("greeting", None, None)


# --- domain names -----------------------------------------------------------------------------


def _name_request(name: bytes, port: int = 443) -> bytes:
    return b"\x05\x01\x00\x03" + bytes([len(name)]) + name + port.to_bytes(2, "big")


@pytest.mark.parametrize(
    ("name", "host", "kind"),
    [
        (b"example.com", "example.com", "name"),
        (b"EXAMPLE.com.", "example.com", "name"),  # one trailing dot stripped, lower-cased
        (b"localhost", "localhost", "name"),
        (b"xn--bcher-kva.example", "xn--bcher-kva.example", "name"),
        (b"a-b.c0", "a-b.c0", "name"),
        (b"0x1.example", "0x1.example", "name"),  # inet_aton does not read this as a number
        (b"1.2.3.example", "1.2.3.example", "name"),
        (b"123abc", "123abc", "name"),
        (b"a" * 63, "a" * 63, "name"),
        (b"127.0.0.1", "127.0.0.1", "ipv4"),
        (b"127.0.0.1.", "127.0.0.1", "ipv4"),
        (b"0.0.0.0", "0.0.0.0", "ipv4"),
        (b"::1", "::1", "ipv6"),
        (b"::ffff:127.0.0.1", "::ffff:7f00:1", "ipv6"),
        (b"2001:0DB8:0000::0001", "2001:db8::1", "ipv6"),
    ],
)
def test_domain_names(name: bytes, host: str, kind: Kind) -> None:
    assert parse_request(_name_request(name)) == Request(1, host, 443, kind, length=len(name) + 7)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        (b"127.1", "numeric label"),
        (b"2130706433", "numeric label"),
        (b"0x7f000001", "numeric label"),
        (b"0X7F.0.0.1", "numeric label"),
        (b"017700000001", "numeric label"),
        (b"127.0.0.01", "numeric label"),
        (b"1.2.3.4.5", "numeric label"),
        (b"example.0x", "numeric label"),
        (b"256.1.1.1", "numeric label"),
        (b"example.com..", "not a host name"),
        (b".example.com", "not a host name"),
        (b".", "not a host name"),
        (b"a..b", "not a host name"),
        (b"-a.example", "not a host name"),
        (b"a-.example", "not a host name"),
        (b"plus+sign.example", "not a host name"),
        (b"a" * 64 + b".example", "not a host name"),
        (b"a" * 63 + b"." + b"b" * 63 + b"." + b"c" * 63 + b"." + b"d" * 62, "not a host name"),  # 254
        (b"a" * 255, "not a host name"),
        (b"[::1]", "not an IPv6 address (written without brackets"),
        (b"fe80::1%eth0", "not an IPv6 address"),
        (b"1:2:3:4:5:6:7:8:9", "not an IPv6 address"),
        (b"example.com:443", "not an IPv6 address"),
        (b"exa mple.com", "byte 0x20"),
        (b"example.com\x00.evil", "byte 0x00"),
        (b"b\xc3\xbccher.example", "byte 0xc3"),
        (b"a\tb", "byte 0x09"),
    ],
)
def test_bad_domain_names(name: bytes, message: str) -> None:
    with pytest.raises(Socks5Error) as excinfo:
        parse_request(_name_request(name))
    assert excinfo.value.reply is Reply.HOST_UNREACHABLE
    assert message in str(excinfo.value)


# --- choosing a method, and the small replies ---------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "auth_required", "chosen"),
    [
        ({0}, False, Method.NO_AUTH),
        ({0, 2}, False, Method.NO_AUTH),
        ({0, 1}, False, Method.NO_AUTH),
        ({2}, False, Method.NO_ACCEPTABLE),  # nobody would check the credentials
        ({1}, False, Method.NO_ACCEPTABLE),
        ({0x80, 0xFF}, False, Method.NO_ACCEPTABLE),
        ({0, 1, 2}, True, Method.USERNAME_PASSWORD),
        ({2}, True, Method.USERNAME_PASSWORD),
        ({0}, True, Method.NO_ACCEPTABLE),
        ({0, 1}, True, Method.NO_ACCEPTABLE),
        ({0xFF}, True, Method.NO_ACCEPTABLE),
    ],
)
def test_choose_method(offered: set[int], auth_required: bool, chosen: Method) -> None:
    greeting = Greeting(frozenset(offered), length=2 + len(offered))
    assert choose_method(greeting, auth_required=auth_required) is chosen


def test_method_and_auth_replies() -> None:
    assert method_reply(Method.NO_AUTH) == b"\x05\x00"
    assert method_reply(Method.USERNAME_PASSWORD) == b"\x05\x02"
    assert method_reply(Method.NO_ACCEPTABLE) == b"\x05\xff"
    assert auth_reply(True) == b"\x01\x00"
    assert auth_reply(False) == b"\x01\x01"
    with pytest.raises(ValueError):
        method_reply(1)  # type: ignore[arg-type]


def test_credentials() -> None:
    credentials = parse_auth(CURL_AUTH_UTF8)
    assert isinstance(credentials, Credentials)
    assert "p@ss" not in repr(credentials)
    assert "usér" in repr(credentials)
    assert credentials.matches("usér", "p@ss")
    assert not credentials.matches("usér", "p@sS")
    assert not credentials.matches("user", "p@ss")
    assert not credentials.matches("usér", "")
    latin1 = parse_auth(b"\x01\x02\xe9t\x01\xff")  # not UTF-8: read as Latin-1, as HTTP Basic is
    assert isinstance(latin1, Credentials)
    assert latin1.matches("ét", "ÿ")
    assert latin1.password.encode("utf-8") == b"\xc3\xbf"  # valid Unicode: encoding cannot fail
    assert not latin1.matches("\udce9t", "\udcff")  # a caller's lone surrogates do not crash it


# --- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "bound", "wire"),
    [
        (Reply.SUCCEEDED, None, "05 00 00 01 00000000 0000"),
        (Reply.GENERAL_FAILURE, None, "05 01 00 01 00000000 0000"),
        (Reply.NOT_ALLOWED, None, "05 02 00 01 00000000 0000"),
        (Reply.NETWORK_UNREACHABLE, None, "05 03 00 01 00000000 0000"),
        (Reply.HOST_UNREACHABLE, None, "05 04 00 01 00000000 0000"),
        (Reply.CONNECTION_REFUSED, None, "05 05 00 01 00000000 0000"),
        (Reply.TTL_EXPIRED, None, "05 06 00 01 00000000 0000"),
        (Reply.COMMAND_NOT_SUPPORTED, None, "05 07 00 01 00000000 0000"),
        (Reply.ADDRESS_TYPE_NOT_SUPPORTED, None, "05 08 00 01 00000000 0000"),
        (Reply.SUCCEEDED, ("192.0.2.7", 51234), "05 00 00 01 c0000207 c822"),
        (Reply.SUCCEEDED, ("2001:db8::7", 443), "05 00 00 04 20010db8000000000000000000000007 01bb"),
        (Reply.SUCCEEDED, ("::ffff:192.0.2.7", 1), "05 00 00 01 c0000207 0001"),  # dual-stack socket
        (Reply.SUCCEEDED, ("fe80::1%eth0", 65535), "05 00 00 04 fe800000000000000000000000000001 ffff"),
        (Reply.SUCCEEDED, ("0.0.0.0", 0), "05 00 00 01 00000000 0000"),
    ],
)
def test_reply_is_byte_exact(code: Reply, bound: tuple[str, int] | None, wire: str) -> None:
    assert reply(code, bound) == bytes.fromhex(wire)


@pytest.mark.parametrize(
    ("code", "bound", "message"),
    [
        (Reply.SUCCEEDED, ("example.com", 80), "does not appear to be an IPv4 or IPv6"),
        (Reply.SUCCEEDED, ("192.0.2.1", 65536), "bound port 65536"),
        (Reply.SUCCEEDED, ("192.0.2.1", -1), "bound port -1"),
        (9, None, "9 is not a valid Reply"),
    ],
)
def test_reply_rejects(code: Reply, bound: tuple[str, int] | None, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        reply(code, bound)


@pytest.mark.parametrize(
    ("err", "code"),
    [
        (errno.ECONNREFUSED, Reply.CONNECTION_REFUSED),
        (errno.ETIMEDOUT, Reply.TTL_EXPIRED),
        (errno.EHOSTUNREACH, Reply.HOST_UNREACHABLE),
        (errno.EHOSTDOWN, Reply.HOST_UNREACHABLE),
        (errno.ENETUNREACH, Reply.NETWORK_UNREACHABLE),
        (errno.ENETDOWN, Reply.NETWORK_UNREACHABLE),
        (errno.ECONNRESET, Reply.GENERAL_FAILURE),
        (errno.EACCES, Reply.GENERAL_FAILURE),
        (errno.EADDRNOTAVAIL, Reply.GENERAL_FAILURE),
        (0, Reply.GENERAL_FAILURE),
        (-2, Reply.GENERAL_FAILURE),
    ],
)
def test_reply_for_errno(err: int, code: Reply) -> None:
    assert reply_for_errno(err) is code


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Reply.CONNECTION_REFUSED),
        (OSError(errno.ENETUNREACH, "unreachable"), Reply.NETWORK_UNREACHABLE),
        (TimeoutError(errno.ETIMEDOUT, "timed out"), Reply.TTL_EXPIRED),
        (TimeoutError(), Reply.TTL_EXPIRED),  # asyncio.timeout() and wait_for() raise this
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), Reply.HOST_UNREACHABLE),
        (socket.gaierror(socket.EAI_AGAIN, "Temporary failure"), Reply.HOST_UNREACHABLE),
        (OSError("no errno"), Reply.GENERAL_FAILURE),
        (OSError(errno.EMFILE, "Too many open files"), Reply.GENERAL_FAILURE),
    ],
)
def test_reply_for_oserror(error: OSError, code: Reply) -> None:
    assert reply_for_oserror(error) is code


def test_reply_for_a_real_refused_connect() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, not listening: a connect is refused
        with pytest.raises(OSError) as excinfo:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    assert reply_for_oserror(excinfo.value) is Reply.CONNECTION_REFUSED


# --- real curl against a recording server -----------------------------------------------------

needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@dataclass
class _Recording:
    """What the recording server saw and answered."""

    raw: bytearray
    errors: list[BaseException]


def _serve_one(
    listener: socket.socket, record: _Recording, *, auth_required: bool, accept: bool, outcome: Reply
) -> None:
    """Answer one SOCKS5 client with this module's parsers and builders, recording every byte."""
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            buffer = bytearray()

            def until(parse: Callable[[bytearray], object]) -> object:
                while (result := parse(buffer)) is NEED_DATA:
                    chunk = conn.recv(4096)
                    if not chunk:
                        raise EOFError(f"client closed after {bytes(record.raw)!r}")
                    buffer.extend(chunk)
                    record.raw.extend(chunk)
                return result

            greeting = until(parse_greeting)
            assert isinstance(greeting, Greeting)
            del buffer[: greeting.length]
            method = choose_method(greeting, auth_required=auth_required)
            conn.sendall(method_reply(method))
            if method is Method.NO_ACCEPTABLE:
                return
            if method is Method.USERNAME_PASSWORD:
                credentials = until(parse_auth)
                assert isinstance(credentials, Credentials)
                del buffer[: credentials.length]
                conn.sendall(auth_reply(accept))
                if not accept:
                    return
            request = until(parse_request)
            assert isinstance(request, Request)
            del buffer[: request.length]
            if outcome is not Reply.SUCCEEDED:
                conn.sendall(reply(outcome))
                return
            conn.sendall(reply(Reply.SUCCEEDED, listener.getsockname()[:2]))
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                buffer.extend(chunk)
                record.raw.extend(chunk)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    except BaseException as exc:  # reported by the test, in the main thread
        record.errors.append(exc)


def _run_curl(
    *args: str, auth_required: bool = False, accept: bool = True, outcome: Reply = Reply.SUCCEEDED
) -> tuple[subprocess.CompletedProcess[bytes], bytes]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(20)
        port = listener.getsockname()[1]
        record = _Recording(bytearray(), [])
        server = threading.Thread(
            target=_serve_one,
            args=(listener, record),
            kwargs={"auth_required": auth_required, "accept": accept, "outcome": outcome},
        )
        server.start()
        command = ["curl", "-sS", "--max-time", "10", *(a.replace("PORT", str(port)) for a in args)]
        done = subprocess.run(command, capture_output=True, timeout=30, check=False)
        server.join(30)
    assert not server.is_alive()
    assert not record.errors, record.errors
    return done, bytes(record.raw)


# curl arguments, credentials it should send (None: no authentication), the request it should send
CURL_CASES: list[tuple[list[str], Credentials | None, Request]] = [
    (
        ["--socks5-hostname", "127.0.0.1:PORT", "http://example.test/"],
        None,
        Request(1, "example.test", 80, "name", length=19),
    ),
    (
        ["--socks5", "127.0.0.1:PORT", "http://127.0.0.1/"],
        None,
        Request(1, "127.0.0.1", 80, "ipv4", length=10),
    ),
    (
        ["--socks5-hostname", "127.0.0.1:PORT", "-U", "user:pass", "http://example.test/"],
        Credentials("user", "pass", length=11),
        Request(1, "example.test", 80, "name", length=19),
    ),
    (
        ["--socks5", "127.0.0.1:PORT", "--proxy-user", "user:pass", "http://127.0.0.1:8080/"],
        Credentials("user", "pass", length=11),
        Request(1, "127.0.0.1", 8080, "ipv4", length=10),
    ),
    (
        ["-x", "socks5h://us%C3%A9r:p%40ss@127.0.0.1:PORT", "http://example.test/"],
        Credentials("usér", "p@ss", length=12),
        Request(1, "example.test", 80, "name", length=19),
    ),
    (
        ["--socks5-hostname", "127.0.0.1:PORT", "-U", "user:", "http://Example.TEST./"],
        Credentials("user", "", length=7),
        Request(1, "example.test", 80, "name", length=20),
    ),
    (
        ["--socks5-hostname", "127.0.0.1:PORT", "http://[::1]:8080/"],
        None,
        Request(1, "::1", 8080, "ipv6", length=22),
    ),
]


@needs_curl
@pytest.mark.parametrize(
    ("args", "credentials", "request_"), CURL_CASES, ids=[" ".join(c[0]) for c in CURL_CASES]
)
def test_curl_live(args: list[str], credentials: Credentials | None, request_: Request) -> None:
    done, raw = _run_curl(*args, auth_required=credentials is not None)
    assert (done.returncode, done.stdout) == (0, b"ok"), done.stderr
    greeting = parse_greeting(raw)
    assert isinstance(greeting, Greeting)
    assert Method.NO_AUTH in greeting.methods
    assert (Method.USERNAME_PASSWORD in greeting.methods) is (credentials is not None)
    rest = raw[greeting.length :]
    if credentials is not None:
        assert parse_auth(rest) == credentials
        rest = rest[credentials.length :]
    assert parse_request(rest) == request_
    assert rest[request_.length :].startswith(b"GET / HTTP/1.1\r\nHost: ")


@needs_curl
def test_curl_live_fixtures_match_this_curl_version() -> None:
    """On the curl the fixtures came from, the live capture is byte for byte the same."""
    version = subprocess.run(["curl", "--version"], capture_output=True, check=True).stdout
    if not version.startswith(b"curl 7.88.1 "):
        pytest.skip("the fixtures were captured with curl 7.88.1")
    _, raw = _run_curl(
        "--socks5-hostname", "127.0.0.1:PORT", "-U", "user:pass", "http://example.test/", auth_required=True
    )
    assert raw == CURL_GREETING_USER + CURL_AUTH + CURL_REQUEST_NAME + CURL_HTTP
    _, raw = _run_curl("--socks5", "127.0.0.1:PORT", "http://127.0.0.1/")
    assert raw.startswith(CURL_GREETING + CURL_REQUEST_IPV4 + b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")


@needs_curl
@pytest.mark.parametrize(
    ("kwargs", "seen_by_curl"),
    [
        ({"auth_required": True}, b"No authentication method was acceptable"),
        ({"auth_required": True, "accept": False}, b"rejected"),
        ({"outcome": Reply.CONNECTION_REFUSED}, b"(5)"),
        ({"outcome": Reply.NOT_ALLOWED}, b"(2)"),
        ({"outcome": Reply.TTL_EXPIRED}, b"(6)"),
    ],
)
def test_curl_understands_refusals(kwargs: dict[str, object], seen_by_curl: bytes) -> None:
    args = ["--socks5-hostname", "127.0.0.1:PORT", "http://example.test/"]
    if kwargs.get("accept") is False:
        args += ["-U", "user:wrong"]
    done, _ = _run_curl(*args, **kwargs)  # type: ignore[arg-type]
    assert done.returncode == 97, done.stderr  # CURLE_PROXY
    assert seen_by_curl in done.stderr


# --- properties ---------------------------------------------------------------------------


def _outcome(parse: Parser) -> Callable[[bytes], object]:
    """``parse`` as a comparable value; anything but the three allowed outcomes fails the test."""

    def outcome(data: bytes) -> object:
        try:
            result = parse(data)
        except Socks5Error as error:
            assert str(error)
            return ("error", error.reply)
        assert result is NEED_DATA or isinstance(result, Greeting | Credentials | Request), result
        if isinstance(result, Credentials):  # always valid Unicode, whatever the bytes
            result.username.encode("utf-8")
            result.password.encode("utf-8")
        return result

    return outcome


_NAME_ALPHABET = "abcxyz019-.:_ \x00AZ"
arbitrary = {
    "greeting": st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"\x05" + b),
        st.builds(
            mutate,
            st.sampled_from([CURL_GREETING, CURL_GREETING_USER]),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 6),
        ),
    ),
    "auth": st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=600).map(lambda b: b"\x01" + b),
        st.builds(
            mutate,
            st.sampled_from([CURL_AUTH, CURL_AUTH_UTF8, CURL_AUTH_EMPTY_USER]),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 14),
        ),
    ),
    "request": st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=300).map(lambda b: b"\x05\x01\x00" + b),
        st.builds(
            lambda cmd, rsv, name, port, tail: b"\x05" + bytes([cmd, rsv, 3, len(name)]) + name + port + tail,
            st.sampled_from([0, 1, 1, 1, 2, 3]),
            st.sampled_from([0, 0, 0, 1]),
            st.text(_NAME_ALPHABET, max_size=40).map(lambda t: t.encode("latin-1")),
            st.binary(min_size=2, max_size=2),
            st.binary(max_size=4),
        ),
        st.builds(
            mutate,
            st.sampled_from([CURL_REQUEST_NAME, CURL_REQUEST_IPV4, CURL_REQUEST_IPV6]),
            st.integers(0, 255),
            st.integers(0, 255),
            st.integers(0, 22),
        ),
    ),
}
PARSERS: dict[str, Parser] = {"greeting": parse_greeting, "auth": parse_auth, "request": parse_request}


@_SETTINGS
@given(st.data())
@pytest.mark.parametrize("phase", ["greeting", "auth", "request"])
def test_arbitrary_bytes_only_give_the_three_outcomes(phase: str, data: st.DataObject) -> None:
    raw = data.draw(arbitrary[phase])
    outcome = _outcome(PARSERS[phase])
    # A decision, once made, does not change as more bytes arrive.
    decided = assert_decision_is_final(outcome, raw)
    length = getattr(decided, "length", None)
    if length is not None:
        assert 0 < length <= len(raw)
        assert outcome(raw[:length]) == decided  # trailing bytes never matter


def _request_bytes(kind: str, host: str, port: int) -> bytes:
    if kind == "name":
        encoded = host.encode("ascii")
        address = bytes([3, len(encoded)]) + encoded
    else:
        ip = ipaddress.ip_address(host)
        address = bytes([1 if ip.version == 4 else 4]) + ip.packed
    return b"\x05\x01\x00" + address + port.to_bytes(2, "big")


_labels = st.from_regex(r"[a-z](?:[a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
host_names = st.lists(_labels, min_size=1, max_size=5).map(".".join)


@_SETTINGS
@given(
    st.one_of(
        st.tuples(st.just("name"), host_names),
        st.tuples(st.just("ipv4"), st.ip_addresses(v=4).map(str)),
        st.tuples(st.just("ipv6"), st.ip_addresses(v=6).map(lambda ip: ip.compressed)),
    ),
    st.integers(1, 65535),
    st.binary(max_size=8),
)
def test_request_round_trip(address: tuple[Kind, str], port: int, trailing: bytes) -> None:
    kind, host = address
    raw = _request_bytes(kind, host, port)
    assert parse_request(raw + trailing) == Request(1, host, port, kind, length=len(raw))


@_SETTINGS
@given(st.text("0123456789abcdefx.:-X", min_size=1, max_size=30))
def test_names_are_never_numeric_to_the_resolver(text: str) -> None:
    """Whatever parses as kind "name", getaddrinfo would not read as an IP address.

    ``AI_NUMERICHOST`` makes getaddrinfo parse without any lookup, so this asks the C library
    itself which strings it takes for addresses.
    """
    try:
        request = parse_request(_name_request(text.encode()))
    except Socks5Error:
        return
    assert isinstance(request, Request)
    try:
        infos = socket.getaddrinfo(text, 443, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST)
    except (socket.gaierror, UnicodeError):
        assert request.kind == "name" or text.endswith(".")
        return
    # The resolver reads it as an IP: so must the parser, and as the same IP.
    assert request.kind != "name", text
    assert ipaddress.ip_address(request.host) == ipaddress.ip_address(infos[0][4][0])


def test_reply_bytes_parse_back_as_a_request_would() -> None:
    """The BND fields use the same layout as DST fields: ATYP, address, port."""
    for bound in [("192.0.2.7", 8080), ("2001:db8::7", 443)]:
        wire = reply(Reply.SUCCEEDED, bound)
        assert wire[:3] == bytes([VERSION, Reply.SUCCEEDED, 0])
        as_request = parse_request(b"\x05\x01\x00" + wire[3:])
        assert isinstance(as_request, Request)
        assert (as_request.host, as_request.port) == bound


def test_underscores_are_accepted_in_names() -> None:
    """Container and service names ("my_db") resolve; the policy check is on the IP anyway."""
    request = parse_request(b"\x05\x01\x00\x03\x05my_db\x15\x38")
    assert isinstance(request, Request)
    assert (request.host, request.port, request.kind) == ("my_db", 5432, "name")
