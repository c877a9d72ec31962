"""Tests for portway.proto.clienthello: real captures, byte-at-a-time, malformed hellos, properties.

The captures in tests/fixtures/clienthello/ come from Python's ssl module, openssl s_client and
a hand-built hello split over three records; README.md there says how each was made. The
malformed inputs below are written field by field from RFC 8446 §4.1.2 and RFC 6066 §3.
"""

import os
import pickle
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portway.errors import ProtocolError
from portway.proto.clienthello import (
    NEED_DATA,
    Alert,
    ClientHello,
    ClientHelloError,
    _fast_body,
    _parse_body,
    alert_record,
    parse,
)
from tests.proto.contract import assert_decision_is_final

_EXAMPLES = {"fast": 100, "deep": 5_000}.get(os.environ.get("HYPOTHESIS_PROFILE", "fast"), 100)
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIXTURE_DIR = Path(__file__).resolve().parent.parent / "fixtures" / "clienthello"


def _fixture(name: str) -> bytes:
    return bytes.fromhex((FIXTURE_DIR / f"{name}.hex").read_text())


TLS13, TLS12 = 0x0304, 0x0303
CAPTURES: list[tuple[str, ClientHello]] = [
    (
        "python-tls13-alpn",
        ClientHello("www.example.com", ("h2", "http/1.1"), (TLS13, TLS12), TLS12, False, 517),
    ),
    ("python-tls12", ClientHello("tls12.example.org", (), (), TLS12, False, 188)),
    (
        "openssl-s-client",
        ClientHello("x.example", ("acme-tls/1",), (TLS13, TLS12, 0x0302, 0x0301), TLS12, False, 332),
    ),
    # SNI sent as "XN--Bcher-KVA.Example"; GREASE ALPN name and version dropped.
    (
        "hand-built-split",
        ClientHello("xn--bcher-kva.example", ("h2", "http/1.1"), (TLS13, TLS12), TLS12, False, 1882),
    ),
]
FIXTURES = [(name, _fixture(name), expected) for name, expected in CAPTURES]
IDS = [name for name, _ in CAPTURES]
TRAILING = [
    b"\x17\x03\x03\x00\x05hello",  # an application_data record (0-RTT would look like this)
    b"\x16\x03\x01\x00\x04\x01\x00\x00\x00",  # another (bogus) handshake record: never looked at
    b"\x00",
]


@pytest.mark.parametrize(("name", "raw", "expected"), FIXTURES, ids=IDS)
def test_whole(name: str, raw: bytes, expected: ClientHello) -> None:
    assert parse(raw) == expected
    assert expected.length == len(raw)
    assert parse(bytearray(raw)) == parse(memoryview(raw)) == expected


@pytest.mark.parametrize(("name", "raw", "expected"), FIXTURES, ids=IDS)
def test_one_byte_at_a_time(name: str, raw: bytes, expected: ClientHello) -> None:
    buffer = bytearray()
    for byte in raw:
        assert parse(buffer) is NEED_DATA
        buffer.append(byte)
    assert parse(buffer) == expected


@pytest.mark.parametrize("trailing", TRAILING)
@pytest.mark.parametrize(("name", "raw", "expected"), FIXTURES, ids=IDS)
def test_trailing_bytes_are_left_alone(name: str, raw: bytes, expected: ClientHello, trailing: bytes) -> None:
    data = raw + trailing
    hello = parse(data)
    assert hello == expected
    assert isinstance(hello, ClientHello)
    assert data[hello.length :] == trailing


def test_hand_built_fixture_spans_three_uneven_records() -> None:
    raw = _fixture("hand-built-split")
    sizes, pos = [], 0
    while pos < len(raw):
        assert raw[pos : pos + 3] == b"\x16\x03\x01"
        sizes.append(int.from_bytes(raw[pos + 3 : pos + 5]))
        pos += 5 + sizes[-1]
    assert sizes == [700, 3, 1164]
    # Cut right after each record: the hello is not complete until the last one.
    assert parse(raw[:705]) is parse(raw[:713]) is NEED_DATA


def test_max_size_is_inclusive() -> None:
    raw = _fixture("python-tls13-alpn")
    assert parse(raw, max_size=len(raw)) == parse(raw)
    with pytest.raises(ClientHelloError, match="run past the 516-byte limit") as excinfo:
        parse(raw, max_size=len(raw) - 1)
    assert excinfo.value.alert == Alert.ILLEGAL_PARAMETER
    with pytest.raises(ValueError, match="max_size 8"):
        parse(raw, max_size=8)


# --- building hellos field by field -------------------------------------------------------


def _vec(length_size: int, body: bytes) -> bytes:
    return len(body).to_bytes(length_size) + body


def _ext(ext_type: int, body: bytes) -> bytes:
    return struct.pack("!H", ext_type) + _vec(2, body)


def _sni(*entries: tuple[int, bytes]) -> bytes:
    """server_name extension data: ServerNameList of (name_type, name) entries."""
    return _vec(2, b"".join(bytes([t]) + _vec(2, name) for t, name in entries))


SNI = _ext(0, _sni((0, b"example.com")))
ALPN_H2 = _ext(16, _vec(2, _vec(1, b"h2")))
VERSIONS = _ext(43, _vec(1, bytes.fromhex("0304")))


def _body(
    extensions: bytes | None = SNI + ALPN_H2 + VERSIONS,
    *,
    version: str = "0303",  # legacy_version
    session_id: bytes = bytes(32),
    suites: str = "13011302",
    compression: str = "00",
) -> bytes:
    return b"".join(
        [
            bytes.fromhex(version),
            bytes(range(32)),  # random
            _vec(1, session_id),  # legacy_session_id
            _vec(2, bytes.fromhex(suites)),  # cipher_suites
            _vec(1, bytes.fromhex(compression)),  # legacy_compression_methods
            b"" if extensions is None else _vec(2, extensions),
        ]
    )


def _hello(body: bytes | None = None, *, sizes: tuple[int, ...] = (), tail: bytes = b"") -> bytes:
    """Wrap a ClientHello body in a handshake header and records of ``sizes`` (then the rest)."""
    message = b"\x01" + _vec(3, _body() if body is None else body) + tail
    records, pos = [], 0
    for size in (*sizes, len(message)):
        if pos < len(message):
            records.append(b"\x16\x03\x01" + _vec(2, message[pos : pos + size]))
            pos += size
    return b"".join(records)


def test_built_hello() -> None:
    raw = _hello()
    assert parse(raw) == ClientHello("example.com", ("h2",), (TLS13,), TLS12, False, len(raw))


def test_handshake_header_split_across_one_byte_records() -> None:
    raw = _hello(sizes=(1, 1, 1, 1, 1))
    hello = parse(raw)
    assert isinstance(hello, ClientHello)
    assert (hello.server_name, hello.length) == ("example.com", len(raw))


def test_old_client_without_extensions() -> None:
    raw = _hello(_body(None, version="0301"))
    assert parse(raw) == ClientHello(None, (), (), 0x0301, False, len(raw))
    raw = _hello(_body(b""))  # an empty extensions block is legal before TLS 1.3
    assert parse(raw) == ClientHello(None, (), (), TLS12, False, len(raw))


def test_grease_and_grease_ech() -> None:
    # RFC 8701: GREASE extension types, versions and ALPN names are ignored; Chrome also sends
    # a GREASE encrypted_client_hello. Its payload looks like an SNI here, to prove it is never read.
    fake_ech = b"".join(
        [
            b"\x00",  # ECHClientHello type: outer
            b"\x00\x01\x00\x01",  # cipher suite: HKDF-SHA256, AES-128-GCM
            b"\x2a",  # config_id
            _vec(2, bytes(32)),  # enc
            _vec(2, _sni((0, b"evil.example"))),  # payload
        ]
    )
    extensions = b"".join(
        [
            _ext(0x1A1A, b""),  # GREASE extension, empty
            SNI,
            _ext(0xFE0D, fake_ech),  # encrypted_client_hello (outer)
            _ext(16, _vec(2, _vec(1, b"\x2a\x2a") + _vec(1, b"h2") + _vec(1, b"\x0a\x0a"))),
            _ext(43, _vec(1, bytes.fromhex("4a4a03040303"))),  # GREASE version first
            _ext(0xFAFA, b"\x00"),  # GREASE extension with a byte
            _ext(0x7777, b"unknown"),  # an unknown extension type is ignored too
        ]
    )
    raw = _hello(_body(extensions, suites="0a0a1301"))
    assert parse(raw) == ClientHello("example.com", ("h2",), (TLS13, TLS12), TLS12, True, len(raw))


def test_sni_details() -> None:
    def name(*entries: tuple[int, bytes]) -> str | None:
        hello = parse(_hello(_body(_ext(0, _sni(*entries)))))
        assert isinstance(hello, ClientHello)
        return hello.server_name

    assert name((0, b"WWW.Example.COM")) == "www.example.com"
    assert name((0, b"xn--bcher-kva.example")) == "xn--bcher-kva.example"
    assert name((7, b"\xff\xfe"), (0, b"a.example")) == "a.example"  # unknown name types skipped
    assert name((0, b"localhost")) == "localhost"


def test_alpn_keeps_client_order_and_bytes() -> None:
    names = [b"http/1.1", b"h2", b"\xc3\xa9"]
    hello = parse(_hello(_body(_ext(16, _vec(2, b"".join(_vec(1, n) for n in names))))))
    assert isinstance(hello, ClientHello)
    assert hello.alpn == ("http/1.1", "h2", "Ã©")
    assert [a.encode("latin-1") for a in hello.alpn] == names


# --- malformed hellos -----------------------------------------------------------------------


def _with(ext_type: int, data: bytes) -> bytes:
    """A hello whose only extension is ``ext_type`` with ``data``."""
    return _hello(_body(_ext(ext_type, data)))


UNEXPECTED, OVERFLOW, ILLEGAL = Alert.UNEXPECTED_MESSAGE, Alert.RECORD_OVERFLOW, Alert.ILLEGAL_PARAMETER
DECODE, VERSION = Alert.DECODE_ERROR, Alert.PROTOCOL_VERSION
GOOD = _hello()
FIRST_RECORD = _hello(sizes=(40,))[: 5 + 40]

MALFORMED = [
    # record layer
    (b"\x17\x03\x03\x00\x05hello", UNEXPECTED, "first byte has content type 23"),
    (FIRST_RECORD + b"\x17\x03\x03\x00\x05hello", UNEXPECTED, "record at byte 45 has content type 23"),
    (FIRST_RECORD + b"\x15\x03\x03\x00\x02\x02\x28", UNEXPECTED, "content type 21"),  # an alert
    (b"\x16\x03\x01\x00\x00", DECODE, "byte 0 is empty"),
    (FIRST_RECORD + b"\x16\x03\x03\x00\x00", DECODE, "byte 45 is empty"),
    (b"\x16\x03\x01\x40\x01" + bytes(100), OVERFLOW, "declares 16385 bytes; the limit is 16384"),
    (b"\x16\x02\x00\x00\x10", VERSION, "version 0x0200"),
    (b"\x16\x03\x05\x00\x10", VERSION, "version 0x0305"),
    (b"\x16\x03\x01\x00\x04\x02\x00\x00\x00", UNEXPECTED, "type 2, not 1"),  # server_hello
    (b"\x16\x03\x01\x00\x04\x01\xff\xff\xff", ILLEGAL, "declares 16777215 bytes"),
    (_hello(tail=b"\x0b\x00\x00\x00"), UNEXPECTED, "4 bytes after the"),  # a message after it
    (_hello(sizes=(40,), tail=b"\x00"), UNEXPECTED, "carries 1 bytes after"),  # in the 2nd record
    # ClientHello fields
    (_hello(_body(version="0200")), VERSION, "legacy_version is 0x0200"),
    (_hello(_body(session_id=bytes(33))), DECODE, "legacy_session_id has 33 bytes; at most 32"),
    (_hello(_body(suites="130113")), DECODE, "cipher_suites has 3 bytes; it must be an even"),
    (_hello(_body(suites="")), DECODE, "cipher_suites has 0 bytes; at least 2"),
    (_hello(_body(compression="")), DECODE, "legacy_compression_methods has 0 bytes; at least 1"),
    (_hello(_body()[:-3]), DECODE, "extensions needs"),  # extensions block longer than the message
    (_hello(_body(None) + b"\x00"), DECODE, "extensions length needs 2 bytes but only 1"),
    (_hello(_body() + b"\x00"), DECODE, "ClientHello has 1 stray bytes"),
    (_hello(_body(SNI + b"\x00")), DECODE, "extension type needs 2 bytes but only 1"),
    (_hello(_body(SNI + b"\x00\x10\x00\x05ab")), DECODE, "extension 0x0010 data needs 5 bytes"),
    (_hello(_body(SNI + ALPN_H2 + SNI)), ILLEGAL, "extension 0x0000 twice"),
    (_hello(_body(_ext(0x2A2A, b"") * 2)), ILLEGAL, "extension 0x2a2a twice"),
    # server_name
    (_with(0, _sni((0, b"a.example"), (0, b"b.example"))), ILLEGAL, "two host_names"),
    (_with(0, _sni((0, b""))), DECODE, "name of type 0 has 0 bytes"),
    (_with(0, _sni()), DECODE, "server_name_list has 0 bytes"),
    (_with(0, b""), DECODE, "server_name_list length needs 2 bytes"),
    (_with(0, _sni((0, b"example.com."))), ILLEGAL, "ends with a dot"),
    (_with(0, _sni((0, "bücher.example".encode()))), ILLEGAL, "byte 0xc3"),
    (_with(0, _sni((0, b"a.example\x00.evil"))), ILLEGAL, "byte 0x00"),
    (_with(0, _sni((0, b"a example"))), ILLEGAL, "byte 0x20"),
    (_with(0, _sni((5, b"x"))), ILLEGAL, "no host_name"),
    (_with(0, _sni((0, b"a.example")) + b"\x00"), DECODE, "server_name extension has 1 stray"),
    (_with(0, b"\x00\x05\x00\x00\x09ab"), DECODE, "name of type 0 needs 9 bytes"),
    # ALPN
    (_with(16, _vec(2, b"")), DECODE, "protocol_name_list has 0 bytes"),
    (_with(16, _vec(2, b"\x00\x02h2")), DECODE, "protocol name has 0 bytes"),
    (_with(16, _vec(2, b"\x05h2")), DECODE, "protocol name needs 5 bytes"),
    # supported_versions
    (_with(43, _vec(1, b"\x03\x04\x03")), DECODE, "supported_versions has 3 bytes"),
    (_with(43, _vec(1, b"")), DECODE, "versions has 0 bytes; at least 2"),
    (_with(43, b"\x04\x03\x04"), DECODE, "versions needs 4 bytes but only 2"),
]


@pytest.mark.parametrize(("data", "alert", "message"), MALFORMED, ids=[m[2] for m in MALFORMED])
def test_malformed(data: bytes, alert: Alert, message: str) -> None:
    with pytest.raises(ClientHelloError) as excinfo:
        parse(data)
    error = excinfo.value
    assert message in str(error)
    assert error.alert == alert
    assert error.hint == alert.name.lower()
    assert isinstance(error, ProtocolError)


def test_too_big_for_max_size() -> None:
    raw = _fixture("hand-built-split")
    # Refused when the first record header says the records cannot fit, long before the end.
    with pytest.raises(ClientHelloError, match="run past the 600-byte limit") as excinfo:
        parse(raw[:5], max_size=600)
    assert excinfo.value.alert == ILLEGAL
    # Refused when the handshake header announces a hello too big for the limit.
    with pytest.raises(ClientHelloError, match="declares 1863 bytes") as excinfo:
        parse(raw[:9], max_size=1800)
    assert excinfo.value.alert == ILLEGAL
    # 1-byte records: each record header counts against max_size.
    small = _hello(sizes=(1,) * 50)
    assert isinstance(parse(small), ClientHello)
    with pytest.raises(ClientHelloError, match="run past"):
        parse(small, max_size=len(small) - 1)


@pytest.mark.parametrize(
    ("prefix", "alert"),
    [
        (b"\x17", UNEXPECTED),  # refused at the first byte
        (b"\x16\x04", VERSION),
        (b"\x16\x03\x01\x40\x01", OVERFLOW),  # refused with the record header, before its body
        (b"\x16\x03\x01\x00\x40\x02", UNEXPECTED),  # refused at the handshake type byte
        (FIRST_RECORD + b"\x14", UNEXPECTED),  # change_cipher_spec mid-hello
    ],
)
def test_malformed_refused_early(prefix: bytes, alert: Alert) -> None:
    with pytest.raises(ClientHelloError) as excinfo:
        parse(prefix)
    assert excinfo.value.alert == alert


def test_empty_needs_data() -> None:
    assert parse(b"") is NEED_DATA
    assert parse(b"\x16") is NEED_DATA


def test_error_pickles() -> None:
    with pytest.raises(ClientHelloError) as excinfo:
        parse(b"\x17")
    copy = pickle.loads(pickle.dumps(excinfo.value))
    assert (str(copy), copy.alert, copy.hint) == (str(excinfo.value), UNEXPECTED, "unexpected_message")


# --- alert records --------------------------------------------------------------------------


@pytest.mark.parametrize("alert", list(Alert))
def test_alert_record(alert: Alert) -> None:
    assert alert_record(alert) == bytes([0x15, 0x03, 0x03, 0x00, 0x02, 0x02, int(alert)])


def test_alert_record_exact_bytes() -> None:
    assert alert_record(50) == bytes.fromhex("15030300020232")
    assert alert_record(112, version=0x0301) == bytes.fromhex("15030100020270")
    with pytest.raises(ValueError, match="alert 256"):
        alert_record(256)
    with pytest.raises(ValueError, match="version 65536"):
        alert_record(10, version=0x10000)


# --- properties -----------------------------------------------------------------------------


def _outcome(data: bytes) -> object:
    """parse() as a comparable value; anything but the three allowed outcomes fails the test."""
    try:
        result = parse(data)
    except ClientHelloError as error:
        assert str(error)
        assert error.hint == Alert(error.alert).name.lower()
        return ClientHelloError
    assert result is NEED_DATA or isinstance(result, ClientHello), result
    return result


RAWS = [raw for _, raw, _ in FIXTURES]


@_SETTINGS
@given(st.sampled_from(RAWS), st.data())
def test_truncation_needs_data(raw: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(raw) - 1))
    assert parse(raw[:cut]) is NEED_DATA


def _corrupt(raw: bytes, edits: list[tuple[int, int]], cut: int) -> bytes:
    data = bytearray(raw)
    for index, value in edits:
        data[index % len(data)] = value
    return bytes(data[: cut or len(data)])


@_SETTINGS
@given(
    st.builds(
        _corrupt,
        st.sampled_from(RAWS),
        st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=4),
        st.integers(0, 2000),
    )
)
def test_corrupted_fixtures_only_give_the_three_outcomes(data: bytes) -> None:
    outcome = _outcome(data)
    if isinstance(outcome, ClientHello):
        assert 0 < outcome.length <= len(data)
        assert _outcome(data[: outcome.length]) == outcome  # trailing bytes never matter
        assert _outcome(data[: outcome.length - 1]) is NEED_DATA


@_SETTINGS
@given(
    st.one_of(
        st.binary(max_size=200).map(lambda b: b"\x16" + b),
        st.binary(max_size=200).map(lambda b: b"\x16\x03\x01" + _vec(2, b"\x01" + _vec(3, b))),
        st.binary(max_size=200).map(lambda b: _hello(b)),
        st.binary(max_size=120).map(lambda b: _hello(_body(b))),
    )
)
def test_arbitrary_bytes_only_give_the_three_outcomes(data: bytes) -> None:
    # A decision, once made, does not change as more bytes arrive.
    outcome = assert_decision_is_final(_outcome, data)
    if isinstance(outcome, ClientHello):
        assert 0 < outcome.length <= len(data)


def _strict(body: bytes) -> object:
    try:
        return _parse_body(body, length=1)
    except ClientHelloError:
        return ClientHelloError


def _bodies(raw: bytes) -> bytes:
    """The handshake body of a fixture, whatever the records it came in."""
    message, pos = b"", 0
    while pos < len(raw):
        size = raw[pos + 3] << 8 | raw[pos + 4]
        message += raw[pos + 5 : pos + 5 + size]
        pos += 5 + size
    return message[4:]


BODIES = [_bodies(raw) for raw in RAWS]


_NAME_BYTES = st.binary(min_size=0, max_size=12) | st.sampled_from(
    [b"a.test", b"a.test.", b"A.Test", b"a b", b"xn--bcher-kva.example", b"\x00x", b"\x7f"]
)
_SNI_EXT = st.lists(st.tuples(st.sampled_from([0, 0, 0, 1, 255]), _NAME_BYTES), max_size=3).map(
    lambda entries: _ext(0, _sni(*entries))
)
_ALPN_EXT = st.lists(
    st.sampled_from([b"h2", b"http/1.1", b"", b"\x0a\x0a", b"\x1a\x1a", b"\x0a\x1a", b"x" * 3]), max_size=4
).map(lambda names: _ext(16, _vec(2, b"".join(_vec(1, n) for n in names))))
_VERSIONS_EXT = st.binary(max_size=7).map(lambda v: _ext(43, _vec(1, v)))
_STRUCTURED = st.lists(
    st.one_of(_SNI_EXT, _ALPN_EXT, _VERSIONS_EXT, st.just(_ext(0xFE0D, b"\x00"))), max_size=4
).map(lambda exts: _body(b"".join(exts)))


@_SETTINGS
@given(
    st.one_of(
        _STRUCTURED,
        st.builds(
            _corrupt,
            st.sampled_from(BODIES),
            st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=3),
            st.integers(0, 2000),
        ),
        st.sampled_from(BODIES),
        st.binary(max_size=120).map(_body),
    )
)
def test_fast_path_never_disagrees_with_the_strict_parser(body: bytes) -> None:
    """The fast path answers only for hellos the strict parser accepts, and answers the same."""
    fast = _fast_body(body, 1)
    if fast is not None:
        assert _strict(body) == fast


def test_fast_path_takes_the_usual_hellos() -> None:
    single = [raw for raw in RAWS if (raw[3] << 8 | raw[4]) + 5 == len(raw)]  # one record each
    assert len(single) == len(RAWS) - 1  # all but the hand-built multi-record hello
    for raw in single:
        assert _fast_body(_bodies(raw), 1) == _strict(_bodies(raw))
