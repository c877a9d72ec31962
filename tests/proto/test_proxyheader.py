"""Tests for portway.proto.proxyheader: spec fixtures, byte-at-a-time, errors, properties.

Fixtures follow https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt. The v1 lines are
the spec's own examples; the spec gives no v2 hex dumps, so the v2 fixtures are written out
field by field from its struct layouts.
"""

import ipaddress
import os
import socket
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portway.proto.proxyheader import (
    NEED_DATA,
    PP2_TYPE_ALPN,
    PP2_TYPE_AUTHORITY,
    PP2_TYPE_CRC32C,
    PP2_TYPE_UNIQUE_ID,
    V1_SIGNATURE,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyHeaderError,
    build_v1,
    build_v2,
    crc32c,
    parse,
)
from tests.proto.contract import assert_decision_is_final, mutate

_EXAMPLES = {"fast": 100, "deep": 5_000}.get(os.environ.get("HYPOTHESIS_PROFILE", "fast"), 100)
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _hex(*fields: str) -> bytes:
    return bytes.fromhex("".join(fields))


# --- version 1: the spec's example lines ---------------------------------------------------

V1_TCP4_MAX = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"  # spec: 56 chars
V1_TCP6_MAX = (
    b"PROXY TCP6 "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "  # source
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "  # destination
    b"65535 65535\r\n"  # ports; spec: 104 chars
)
V1_UNKNOWN = b"PROXY UNKNOWN\r\n"  # spec: short form, 15 chars
V1_UNKNOWN_WORST = (
    b"PROXY UNKNOWN "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
    b"65535 65535\r\n"  # spec: worst case, 107 chars
)
V1_EXAMPLE = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"  # spec: "before an HTTP request"
HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"

# --- version 2 --------------------------------------------------------------------------

SIG = "0d0a0d0a000d0a515549540a"  # \r\n\r\n\0\r\nQUIT\n

V2_TCP4 = _hex(
    SIG,
    "21",  # version 2, command PROXY
    "11",  # AF_INET, STREAM
    "000c",  # 12 bytes of addresses follow
    "c0a80001",  # source 192.168.0.1
    "c0a8000b",  # destination 192.168.0.11
    "dc04",  # source port 56324
    "01bb",  # destination port 443
)
V2_TCP6 = _hex(
    SIG,
    "21",  # version 2, command PROXY
    "21",  # AF_INET6, STREAM
    "0024",  # 36 bytes of addresses follow
    "20010db8000000000000000000000001",  # source 2001:db8::1
    "20010db8000000000000000000000002",  # destination 2001:db8::2
    "dc04",  # source port 56324
    "01bb",  # destination port 443
)
V2_LOCAL = _hex(
    SIG,
    "20",  # version 2, command LOCAL
    "00",  # AF_UNSPEC, UNSPEC
    "0000",  # nothing follows
)
V2_TCP4_TLVS = _hex(
    SIG,
    "21",  # version 2, command PROXY
    "11",  # AF_INET, STREAM
    "0026",  # 38 bytes follow: 12 of addresses, 26 of TLVs
    "c0a80001",  # source 192.168.0.1
    "c0a8000b",  # destination 192.168.0.11
    "dc04",  # source port 56324
    "01bb",  # destination port 443
    "01",  # PP2_TYPE_ALPN
    "0002",  # 2 bytes
    "6832",  # "h2"
    "02",  # PP2_TYPE_AUTHORITY
    "000b",  # 11 bytes
    "6578616d706c652e636f6d",  # "example.com"
    "03",  # PP2_TYPE_CRC32C
    "0004",  # 4 bytes
    "eddcda2f",  # CRC32c of these 54 bytes with this field zeroed
)
V2_LOCAL_TLV = _hex(
    SIG,
    "20",  # version 2, command LOCAL
    "00",  # AF_UNSPEC, UNSPEC
    "0006",  # 6 bytes of TLVs follow
    "05",  # PP2_TYPE_UNIQUE_ID
    "0003",  # 3 bytes
    "616263",  # "abc"
)
# Valid but without TCP addresses Portway can use: they parse with source None.
V2_UNIX = _hex(
    SIG,
    "21",  # version 2, command PROXY
    "31",  # AF_UNIX, STREAM
    "00d8",  # 216 bytes of addresses follow
    "2f746d702f61" + "00" * 102,  # source "/tmp/a", 108 bytes
    "2f746d702f62" + "00" * 102,  # destination "/tmp/b", 108 bytes
)
V2_UDP4 = _hex(
    SIG,
    "21",  # version 2, command PROXY
    "12",  # AF_INET, DGRAM: spec allows falling back to UNSPEC mode
    "000c",  # 12 bytes of addresses follow
    "c0a80001c0a8000b",  # source, destination
    "dc0401bb",  # ports
)
V2_PROXY_UNSPEC = _hex(
    SIG,
    "21",  # version 2, command PROXY
    "00",  # AF_UNSPEC, UNSPEC: "The receiver should ignore address information"
    "0000",  # nothing follows
)
V2_LOCAL_WITH_ADDRESSES = _hex(
    SIG,
    "20",  # version 2, command LOCAL: "the family which is ignored"
    "11",  # AF_INET, STREAM
    "000c",  # 12 bytes of addresses follow, to be skipped
    "c0a80001c0a8000b",  # source, destination
    "dc0401bb",  # ports
)
V2_LOCAL_INET_EMPTY = _hex(
    SIG,
    "20",  # version 2, command LOCAL
    "11",  # AF_INET, STREAM: ignored for LOCAL, so no addresses need follow
    "0000",  # nothing follows
)


def _v2(
    command: str,
    source: tuple[str, int] | None,
    destination: tuple[str, int] | None,
    length: int,
    tlvs: tuple[tuple[int, bytes], ...] = (),
) -> ProxyHeader:
    return ProxyHeader(2, command, source, destination, tlvs=tlvs, length=length)


CLIENT4, SERVER4 = ("192.168.0.1", 56324), ("192.168.0.11", 443)
CLIENT6, SERVER6 = ("2001:db8::1", 56324), ("2001:db8::2", 443)
ALL_F6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"

# name, wire bytes, parsed header, builder (None when our builders never emit this form)
FIXTURES: list[tuple[str, bytes, ProxyHeader, Callable[[], bytes] | None]] = [
    (
        "v1-tcp4-max",
        V1_TCP4_MAX,
        ProxyHeader(1, "PROXY", ("255.255.255.255", 65535), ("255.255.255.255", 65535), length=56),
        lambda: build_v1(("255.255.255.255", 65535), ("255.255.255.255", 65535)),
    ),
    (
        "v1-tcp6-max",
        V1_TCP6_MAX,
        ProxyHeader(1, "PROXY", (ALL_F6, 65535), (ALL_F6, 65535), length=104),
        lambda: build_v1((ALL_F6, 65535), (ALL_F6, 65535)),
    ),
    ("v1-unknown", V1_UNKNOWN, ProxyHeader(1, "LOCAL", None, None, length=15), lambda: build_v1(None, None)),
    ("v1-unknown-worst", V1_UNKNOWN_WORST, ProxyHeader(1, "LOCAL", None, None, length=107), None),
    (
        "v1-example",
        V1_EXAMPLE,
        ProxyHeader(1, "PROXY", CLIENT4, SERVER4, length=len(V1_EXAMPLE)),
        lambda: build_v1(CLIENT4, SERVER4),
    ),
    ("v2-tcp4", V2_TCP4, _v2("PROXY", CLIENT4, SERVER4, 28), lambda: build_v2(CLIENT4, SERVER4)),
    ("v2-tcp6", V2_TCP6, _v2("PROXY", CLIENT6, SERVER6, 52), lambda: build_v2(CLIENT6, SERVER6)),
    ("v2-local", V2_LOCAL, _v2("LOCAL", None, None, 16), lambda: build_v2(None, None)),
    (
        "v2-tcp4-tlvs",
        V2_TCP4_TLVS,
        _v2(
            "PROXY",
            CLIENT4,
            SERVER4,
            54,
            (
                (PP2_TYPE_ALPN, b"h2"),
                (PP2_TYPE_AUTHORITY, b"example.com"),
                (PP2_TYPE_CRC32C, b"\xed\xdc\xda\x2f"),
            ),
        ),
        lambda: build_v2(
            CLIENT4,
            SERVER4,
            tlvs=[(PP2_TYPE_ALPN, b"h2"), (PP2_TYPE_AUTHORITY, b"example.com"), (PP2_TYPE_CRC32C, b"")],
        ),
    ),
    (
        "v2-local-tlv",
        V2_LOCAL_TLV,
        _v2("LOCAL", None, None, 22, ((PP2_TYPE_UNIQUE_ID, b"abc"),)),
        lambda: build_v2(None, None, tlvs=[(PP2_TYPE_UNIQUE_ID, b"abc")]),
    ),
    ("v2-unix", V2_UNIX, _v2("PROXY", None, None, 16 + 216), None),
    ("v2-udp4", V2_UDP4, _v2("PROXY", None, None, 28), None),
    ("v2-proxy-unspec", V2_PROXY_UNSPEC, _v2("PROXY", None, None, 16), None),
    ("v2-local-with-addresses", V2_LOCAL_WITH_ADDRESSES, _v2("LOCAL", None, None, 28), None),
    ("v2-local-inet-empty", V2_LOCAL_INET_EMPTY, _v2("LOCAL", None, None, 16), None),
]
IDS = [f[0] for f in FIXTURES]
BUILT = [f for f in FIXTURES if f[3] is not None]


@pytest.mark.parametrize(("name", "raw", "expected", "build"), FIXTURES, ids=IDS)
def test_whole(name: str, raw: bytes, expected: ProxyHeader, build: object) -> None:
    assert parse(raw) == expected
    assert expected.length == len(raw)


@pytest.mark.parametrize(("name", "raw", "expected", "build"), BUILT, ids=[f[0] for f in BUILT])
def test_build_is_byte_exact(
    name: str, raw: bytes, expected: ProxyHeader, build: Callable[[], bytes]
) -> None:
    assert build() == raw


@pytest.mark.parametrize(("name", "raw", "expected", "build"), FIXTURES, ids=IDS)
def test_one_byte_at_a_time(name: str, raw: bytes, expected: ProxyHeader, build: object) -> None:
    buffer = bytearray()
    for byte in raw:
        assert parse(buffer) is NEED_DATA
        buffer.append(byte)
    assert parse(buffer) == expected


@pytest.mark.parametrize(("name", "raw", "expected", "build"), FIXTURES, ids=IDS)
def test_every_proper_prefix_needs_data(name: str, raw: bytes, expected: ProxyHeader, build: object) -> None:
    view = memoryview(raw)
    assert all(parse(view[:n]) is NEED_DATA for n in range(len(raw)))


@pytest.mark.parametrize("trailing", [HTTP_REQUEST, b"\x16\x03\x01\x00\xa5", b"\r\n", b"PROXY UNKNOWN\r\n"])
@pytest.mark.parametrize(("name", "raw", "expected", "build"), FIXTURES, ids=IDS)
def test_trailing_bytes_are_left_alone(
    name: str, raw: bytes, expected: ProxyHeader, build: object, trailing: bytes
) -> None:
    data = raw + trailing
    header = parse(data)
    assert header == expected
    assert isinstance(header, ProxyHeader)
    assert data[header.length :] == trailing


def test_spec_example_before_http_request() -> None:
    data = V1_EXAMPLE + HTTP_REQUEST
    header = parse(data)
    assert isinstance(header, ProxyHeader)
    assert (header.source, header.destination) == (CLIENT4, SERVER4)
    assert data[header.length :] == HTTP_REQUEST


def test_header_helpers() -> None:
    header = parse(V2_TCP4_TLVS)
    assert isinstance(header, ProxyHeader)
    assert header.tlv(PP2_TYPE_AUTHORITY) == b"example.com"
    assert header.tlv(PP2_TYPE_UNIQUE_ID) is None
    assert not header.local
    assert parse(V1_UNKNOWN) == ProxyHeader(1, "LOCAL", None, None, length=15)
    local = parse(V2_LOCAL)
    assert isinstance(local, ProxyHeader)
    assert local.local


def test_max_v1() -> None:
    with pytest.raises(ProxyHeaderError, match="first 56 bytes"):
        parse(V1_TCP6_MAX, max_v1=56)
    assert parse(V1_TCP4_MAX, max_v1=56) == parse(V1_TCP4_MAX)
    assert parse(V1_TCP4_MAX[:-1], max_v1=56) is NEED_DATA


# --- not a PROXY header -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "diverges_at"),
    [
        (b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 0),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03", 0),  # TLS ClientHello record
        (b"SSH-2.0-OpenSSH_9.6\r\n", 0),
        (b"PUT / HTTP/1.1\r\n", 1),
        (b"PROXZ", 4),
        (b"\r\n\r\n\x00\r\nQUIX\n", 10),  # v2 signature, wrong 11th byte
        (b"\r\nGET / HTTP/1.1\r\n", 2),  # a stray CRLF before HTTP
    ],
)
def test_not_a_proxy_header(data: bytes, diverges_at: int) -> None:
    for n in range(len(data) + 1):
        expected = NEED_DATA if n <= diverges_at else None
        assert parse(data[:n]) is expected, n


def test_empty_needs_data() -> None:
    assert parse(b"") is NEED_DATA


# --- malformed headers ----------------------------------------------------------------------


def _tcp4_v2(length: str, tail: str) -> bytes:
    return _hex(SIG, "21", "11", length, "c0a80001c0a8000bdc0401bb", tail)


MALFORMED = [
    # version 1
    (b"PROXYTCP4 1.2.3.4 5.6.7.8 1 2\r\n", "exactly one space after 'PROXY'"),
    (b"PROXY\r\n", "exactly one space after 'PROXY'"),
    (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2\r\n", "unknown protocol"),
    (b"PROXY UNKNOWNX\r\n", "unknown protocol"),
    (b"PROXY \r\n", "unknown protocol"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 80\r\n", "<destination port>"),
    (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", "single spaces"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", "single spaces"),
    (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "source address '01.2.3.4' has an octet with a leading zero"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.256 1 2\r\n", "destination address '5.6.7.256' has an octet above 255"),
    (b"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", "'1.2.3' is not a dotted-quad IPv4"),
    (b"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", "not a dotted-quad IPv4"),
    (b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n", "'::1' is not a dotted-quad IPv4"),
    (b"PROXY TCP4 1.2.3.4 +5.6.7.8 1 2\r\n", "not a dotted-quad IPv4"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "source address '1.2.3.4' is not an IPv6 address"),
    (b"PROXY TCP6 ::1 fe80::1%eth0 1 2\r\n", "'fe80::1%eth0' is not an IPv6 address"),
    (b"PROXY TCP6 ::1 ::g 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP6 ::1 1:2:3:4:5:6:7:8:9 1 2\r\n", "not an IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "source port '65536' is not a decimal number 0-65535"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 080\r\n", "destination port '080' is not a decimal number"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "source port '-1'"),
    (b"PROXY TCP4 1.2.3.4 5.6.7.8 0x50 2\r\n", "source port '0x50'"),
    (b"PROXY UNKNOWN\n", "bare CR or LF"),
    (b"PROXY UNKNOWN\rX\r\n", "bare CR or LF"),
    (b"PROXY TCP4 1.2.3.4\n5.6.7.8 1 2\r\n", "bare CR or LF"),
    (b"PROXY TCP4 1.2.3.4\x005.6.7.8 1 2\r\n", "non-printable byte 0x00"),
    (b"PROXY UNKNOWN \xff\r\n", "non-printable byte 0xff"),
    (b"PROXY UNKNOWN " + b"f" * 93, "no CRLF within the first 107 bytes"),
    (V1_UNKNOWN_WORST[:-2] + b"1\r\n", "no CRLF within the first 107 bytes"),
    # version 2
    (_hex(SIG, "11"), "version 1"),
    (_hex(SIG, "31"), "version 3"),
    (_hex(SIG, "22"), "unknown command 2"),
    (_hex(SIG, "2f"), "unknown command 15"),
    (_hex(SIG, "21", "41"), "family/protocol byte 0x41"),
    (_hex(SIG, "21", "13"), "family/protocol byte 0x13"),
    (
        _hex(SIG, "21", "11", "0008"),
        "declares 8 address bytes, too few for family/protocol 0x11 which needs 12",
    ),
    (_hex(SIG, "21", "21", "000c"), "too few for family/protocol 0x21 which needs 36"),
    (_hex(SIG, "21", "31", "0024"), "too few for family/protocol 0x31 which needs 216"),
    (_tcp4_v2("000e", "0102"), "2 stray bytes where a TLV"),
    (_tcp4_v2("0011", "01000a6832"), "TLV type 0x01 declares 10 bytes but only 2 remain"),
    (_tcp4_v2("0011", "0300020000"), "CRC32C TLV has 2 bytes; it must have 4"),
    (_tcp4_v2("0013", "03000400000000"), "fails its CRC32C check"),
    (V2_TCP4_TLVS[:-1] + b"\x00", "fails its CRC32C check (sent 0xeddcda00, computed 0xeddcda2f)"),
    (_tcp4_v2("001a", "0300040000000003000400000000"), "more than one CRC32C TLV"),
    (_hex(SIG, "20", "00", "0003", "050005616263"), "declares 5 bytes but only 0 remain"),  # LOCAL TLVs too
]


@pytest.mark.parametrize(("data", "message"), MALFORMED, ids=[m[1] for m in MALFORMED])
def test_malformed(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError) as excinfo:
        parse(data)
    assert message in str(excinfo.value)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        (b"PROXY X", "unknown protocol"),  # refused at byte 7, long before any CRLF
        (b"PROXY TCP4 1.2.3.4\n", "bare CR or LF"),
        (b"PROXYZ", "exactly one space"),
        (_hex(SIG, "11"), "version 1"),  # refused at byte 13, before the length is known
        (_hex(SIG, "21", "11", "0000"), "too few"),  # refused before the addresses arrive
    ],
)
def test_malformed_refused_early(prefix: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message):
        parse(prefix)


def test_crc_covers_every_byte() -> None:
    crc_type_at = len(V2_TCP4_TLVS) - 7  # flipping 0x03 there makes it a different TLV
    for i in set(range(16, len(V2_TCP4_TLVS))) - {crc_type_at}:
        corrupted = bytearray(V2_TCP4_TLVS)
        corrupted[i] ^= 0x01
        with pytest.raises(ProxyHeaderError):
            parse(corrupted)


def test_crc32c_check_value() -> None:
    # RFC 3720 B.4 / the usual CRC catalogue check value for CRC-32C.
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(bytes(32)) == 0x8A9136AA


# --- builders ---------------------------------------------------------------------------


def test_build_v1_unknown_forms() -> None:
    assert build_v1(None, None) == V1_UNKNOWN
    assert build_v1(CLIENT4, None) == V1_UNKNOWN
    assert build_v1(CLIENT4, CLIENT6) == V1_UNKNOWN  # mixed families


def test_build_normalises_ipv4_mapped() -> None:
    mapped_client, mapped_server = ("::ffff:192.168.0.1", 56324), ("::ffff:192.168.0.11", 443)
    assert build_v1(mapped_client, mapped_server) == V1_EXAMPLE
    assert build_v1(mapped_client, SERVER4) == V1_EXAMPLE
    assert build_v2(mapped_client, mapped_server) == V2_TCP4
    # A mapped address next to a real IPv6 one stays IPv6, written as the socket module does.
    assert build_v1(mapped_client, SERVER6) == b"PROXY TCP6 ::ffff:192.168.0.1 2001:db8::2 56324 443\r\n"
    assert parse(build_v1(mapped_client, SERVER6)) == ProxyHeader(
        1, "PROXY", mapped_client, SERVER6, length=53
    )


def test_build_v2_mixed_families_maps_ipv4_into_ipv6() -> None:
    header = parse(build_v2(CLIENT4, SERVER6))
    assert header == _v2("PROXY", ("::ffff:192.168.0.1", 56324), SERVER6, 52)


def test_build_strips_ipv6_zone() -> None:
    assert build_v1(("fe80::1%eth0", 1), ("fe80::2%eth0", 2)) == b"PROXY TCP6 fe80::1 fe80::2 1 2\r\n"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: build_v1(("1.2.3.4", 65536), SERVER4), "source port 65536"),
        (lambda: build_v2(CLIENT4, ("1.2.3.4", -1)), "destination port -1"),
        (lambda: build_v1(("example.com", 1), SERVER4), "does not appear to be an IPv4 or IPv6"),
        (lambda: build_v2(CLIENT4, SERVER4, tlvs=[(256, b"")]), "TLV type 256"),
        (lambda: build_v2(CLIENT4, SERVER4, tlvs=[(3, b""), (3, b"")]), "only one CRC32C"),
        (lambda: build_v2(CLIENT4, SERVER4, tlvs=[(4, bytes(65536))]), "limit is 65535"),
        (lambda: build_v2(CLIENT4, SERVER4, tlvs=[(4, bytes(65000))] * 2), "limit is 65535"),
    ],
)
def test_build_rejects(call: Callable[[], bytes], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_build_v2_largest_header_parses() -> None:
    raw = build_v2(None, None, tlvs=[(4, bytes(65535 - 3))])
    assert len(raw) == 16 + 65535
    assert parse(raw) == _v2("LOCAL", None, None, len(raw), ((4, bytes(65532)),))


# --- properties ---------------------------------------------------------------------------

ports = st.integers(0, 65535)
tlv_lists = st.lists(
    st.tuples(st.integers(0, 255).filter(lambda t: t != PP2_TYPE_CRC32C), st.binary(max_size=40)), max_size=4
)


IP = ipaddress.IPv4Address | ipaddress.IPv6Address


def _expected(a: IP, b: IP) -> tuple[str, str, bool]:
    """What the receiver should see, and whether the families are mixed (v1 says UNKNOWN).

    IPv4 when both ends are IPv4 underneath (IPv4-mapped counts); otherwise IPv6 text as the
    socket module writes it, with a plain IPv4 end mapped into IPv6 (v2 only).
    """
    plain = [ip.ipv4_mapped or ip if isinstance(ip, ipaddress.IPv6Address) else ip for ip in (a, b)]
    if all(ip.version == 4 for ip in plain):
        return str(plain[0]), str(plain[1]), False
    six = [ipaddress.IPv6Address(f"::ffff:{ip}") if ip.version == 4 else ip for ip in (a, b)]
    text = [socket.inet_ntop(socket.AF_INET6, ip.packed) for ip in six]
    return text[0], text[1], a.version != b.version


@_SETTINGS
@given(
    st.one_of(
        st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
        st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)),
        st.tuples(st.ip_addresses(v=6), st.ip_addresses()),  # mapped and mixed pairs too
    ),
    ports,
    ports,
    tlv_lists,
    st.booleans(),
    st.binary(max_size=8),
)
def test_round_trip(
    addresses: tuple[IP, IP],
    sport: int,
    dport: int,
    tlvs: list[tuple[int, bytes]],
    with_crc: bool,
    trailing: bytes,
) -> None:
    src, dst = addresses
    source, destination = (str(src), sport), (str(dst), dport)
    want_src, want_dst, mixed = _expected(src, dst)
    v1 = build_v1(source, destination)
    if mixed:
        assert parse(v1 + trailing) == ProxyHeader(1, "LOCAL", None, None, length=15)
    else:
        assert parse(v1 + trailing) == ProxyHeader(
            1, "PROXY", (want_src, sport), (want_dst, dport), length=len(v1)
        )
    if with_crc:
        tlvs = [*tlvs, (PP2_TYPE_CRC32C, b"")]
    v2 = build_v2(source, destination, tlvs=tlvs)
    header = parse(v2 + trailing)
    assert isinstance(header, ProxyHeader)
    assert (header.version, header.command, header.length) == (2, "PROXY", len(v2))
    assert (header.source, header.destination) == ((want_src, sport), (want_dst, dport))
    assert [t for t, _ in header.tlvs] == [t for t, _ in tlvs]
    assert [v for t, v in header.tlvs if t != PP2_TYPE_CRC32C] == [v for t, v in tlvs if t != PP2_TYPE_CRC32C]


def _outcome(data: bytes) -> object:
    """parse() as a comparable value; anything but the four allowed outcomes fails the test."""
    try:
        result = parse(data)
    except ProxyHeaderError as error:
        assert str(error)
        return ProxyHeaderError
    assert result is NEED_DATA or result is None or isinstance(result, ProxyHeader), result
    return result


arbitrary_bytes = st.one_of(
    st.binary(max_size=150),
    st.binary(max_size=150).map(lambda b: V2_SIGNATURE + b),
    st.binary(max_size=150).map(lambda b: V1_SIGNATURE + b" " + b),
    st.text("PROXYTCUNKOW46 .:0123456789abcdef\r\n", max_size=110).map(lambda t: b"PROXY " + t.encode()),
    st.builds(
        mutate,
        st.sampled_from([raw for _, raw, _, _ in FIXTURES if len(raw) < 200]),
        st.integers(0, 200),
        st.integers(0, 255),
        st.integers(0, 120),
    ),
)


@_SETTINGS
@given(arbitrary_bytes)
def test_arbitrary_bytes_only_give_the_four_outcomes(data: bytes) -> None:
    # A decision, once made, does not change as more bytes arrive.
    outcome = assert_decision_is_final(_outcome, data)
    if isinstance(outcome, ProxyHeader):
        assert 0 < outcome.length <= len(data)
        assert _outcome(data[: outcome.length]) == outcome  # trailing bytes never matter
