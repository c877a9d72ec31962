"""Tests for portway.proto.gateway: the line, the address grammar, v1 and v2 tokens, dispatch.

v1 tokens are checked against the real ``openssl enc`` command line in both directions, both
from the stored fixtures (``tests/fixtures/gateway/``, made by ``make_fixtures.py`` there) and
made fresh during the run. v2 tokens are checked against the test vectors printed in
``docs/gateway-protocol.md``, and each vector is also rebuilt here from the byte layout with
``AESGCM`` directly, independently of the module's encoder.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portway.errors import ProtocolError
from portway.proto.gateway import (
    NEED_DATA,
    V1_PREFIX,
    V2_AAD_CONTEXT,
    V2_PREFIX,
    Address,
    Key,
    Keyring,
    Line,
    LineError,
    Status,
    TokenError,
    decode,
    evp_bytes_to_key,
    load_secrets,
    parse_address,
    parse_line,
    v1_decrypt,
    v1_encrypt,
    v2_decrypt,
    v2_encrypt,
    weak_secret,
)
from tests.proto.contract import assert_decision_is_final

_EXAMPLES = {"fast": 100, "deep": 5_000}.get(os.environ.get("HYPOTHESIS_PROFILE", "fast"), 100)
_SETTINGS = settings(max_examples=_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "gateway"
DOC = ROOT / "docs" / "gateway-protocol.md"
V1_FIXTURES = json.loads((FIXTURES / "v1-openssl.json").read_text())
V2_VECTORS = json.loads((FIXTURES / "v2-vectors.json").read_text())

SECRET = b"throwaway-test-secret-7f3a9c"
LONGEST = "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61 + ":65535"  # 253 + 6 characters
NOW = 1_780_000_000.0

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl CLI is not installed")


def _openssl(*args: str, data: bytes, secret: bytes = SECRET) -> bytes:
    """Run ``openssl enc`` with the secret passed through the environment."""
    env = {**os.environ, "PORTWAY_TEST_SECRET": secret.decode()}
    cmd = ["openssl", "enc", *args, "-pass", "env:PORTWAY_TEST_SECRET"]
    return subprocess.run(cmd, input=data, capture_output=True, check=True, env=env).stdout


def _joined(cli_output: bytes | str) -> bytes:
    """``openssl enc -a`` wraps base64 at 64 characters; the gateway line is one line."""
    text = cli_output.encode() if isinstance(cli_output, str) else cli_output
    return b"".join(text.split())


def _reason(token: bytes, **kwargs: object) -> str:
    """The TokenError reason for ``token`` through :func:`decode` (v1 on, md5, keyring K1)."""
    options: dict[str, object] = {"secrets": [SECRET], "keyring": RING, "accept_v1": True, "now": NOW}
    options.update(kwargs)
    with pytest.raises(TokenError) as caught:
        decode(token, **options)  # type: ignore[arg-type]
    assert caught.value.hint == "401"
    return str(caught.value)


# --- the line ---------------------------------------------------------------------------------


def _line_outcome(data: bytes, limit: int = 32) -> object:
    try:
        return parse_line(data, limit=limit)
    except LineError:
        return LineError


def test_line_whole_byte_by_byte_and_with_trailing_bytes() -> None:
    data = b"U2FsdGVkX1abc=\nHELLO backend"
    line = assert_decision_is_final(_line_outcome, data)
    assert line == Line(token=b"U2FsdGVkX1abc=", length=15)
    assert data[15:] == b"HELLO backend"


def test_line_crlf_and_stray_cr_are_dropped() -> None:
    assert parse_line(b"v2.abc\r\nrest", limit=32) == Line(token=b"v2.abc", length=8)
    assert parse_line(b"v2.a\rbc\n", limit=32) == Line(token=b"v2.abc", length=8)
    assert parse_line(b"\n", limit=32) == Line(token=b"", length=1)


def test_line_limit_is_the_bytes_before_the_newline() -> None:
    # Exactly `limit` bytes before the newline: accepted; limit + 1 buffered bytes at most.
    assert parse_line(b"x" * 8 + b"\n", limit=8) == Line(token=b"x" * 8, length=9)
    assert parse_line(b"x" * 8, limit=8) is NEED_DATA
    with pytest.raises(LineError) as caught:
        parse_line(b"x" * 9, limit=8)
    assert caught.value.hint == "400"
    with pytest.raises(LineError):
        parse_line(b"x" * 9 + b"\n", limit=8)
    # "\r" counts towards the limit even though it is dropped from the token.
    with pytest.raises(LineError):
        parse_line(b"x" * 8 + b"\r\n", limit=8)
    assert parse_line(b"x" * 7 + b"\r\n", limit=8) == Line(token=b"x" * 7, length=9)


def test_line_over_limit_decision_is_final() -> None:
    assert assert_decision_is_final(lambda d: _line_outcome(d, 8), b"y" * 20 + b"\n") is LineError


def test_line_accepts_bytearray_and_rejects_a_silly_limit() -> None:
    assert parse_line(bytearray(b"abc\n"), limit=3) == Line(token=b"abc", length=4)
    with pytest.raises(ValueError):
        parse_line(b"abc\n", limit=0)


@_SETTINGS
@given(st.binary(max_size=80), st.integers(min_value=1, max_value=64))
def test_line_contract(data: bytes, limit: int) -> None:
    outcome = assert_decision_is_final(lambda d: _line_outcome(d, limit), data)
    if isinstance(outcome, Line):
        assert outcome.length <= limit + 1
        assert b"\n" not in outcome.token and b"\r" not in outcome.token


def test_status_replies_are_three_ascii_bytes() -> None:
    assert [s.reply for s in Status] == [b"200", b"400", b"401", b"403", b"502", b"504"]


def test_errors_carry_their_hint_and_pickle() -> None:
    for error in (LineError("x"), TokenError("invalid token")):
        assert isinstance(error, ProtocolError)
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error) and copy.hint == error.hint


# --- the address grammar ----------------------------------------------------------------------

GOOD_ADDRESSES = [
    ("192.0.2.10:443", "192.0.2.10", 443, "ipv4", "192.0.2.10:443"),
    ("0.0.0.0:1", "0.0.0.0", 1, "ipv4", "0.0.0.0:1"),
    ("255.255.255.255:65535", "255.255.255.255", 65535, "ipv4", "255.255.255.255:65535"),
    ("[2001:db8::1]:8443", "2001:db8::1", 8443, "ipv6", "[2001:db8::1]:8443"),
    ("[2001:DB8:0:0:0:0:0:1]:80", "2001:db8::1", 80, "ipv6", "[2001:db8::1]:80"),
    ("[::1]:22", "::1", 22, "ipv6", "[::1]:22"),
    ("localhost:6379", "localhost", 6379, "name", "localhost:6379"),
    ("DB.Internal.Example:5432", "db.internal.example", 5432, "name", "db.internal.example:5432"),
    ("a-b.c0:1", "a-b.c0", 1, "name", "a-b.c0:1"),
    ("0x7f.example:80", "0x7f.example", 80, "name", "0x7f.example:80"),
    ("1.2.3.example:80", "1.2.3.example", 80, "name", "1.2.3.example:80"),
    ("x" * 63 + ".com:80", "x" * 63 + ".com", 80, "name", "x" * 63 + ".com:80"),
    (LONGEST, LONGEST[:-6], 65535, "name", LONGEST),
]

BAD_ADDRESSES = [
    "",
    "192.0.2.10",  # no port
    "192.0.2.10:",  # empty port
    "192.0.2.10:0",  # port 0
    "192.0.2.10:65536",  # port too large
    "192.0.2.10:080",  # leading zero
    "192.0.2.10:+80",  # sign
    "192.0.2.10: 80",  # space
    "192.0.2.10:80 ",  # trailing space
    " 192.0.2.10:80",  # leading space
    "192.0.2.10:80\n",  # newline (echo without -n)
    "192.0.2.10:8\u0660",  # Arabic-Indic digit
    "256.0.0.1:80",  # octet too large, and an all-digit last label as a name
    "01.2.3.4:80",  # leading zero in an octet
    "127.1:80",  # inet_aton shorthand
    "2130706433:80",  # a number some resolvers read as 127.0.0.1
    "10.0.0.1.5:80",
    "2001:db8::1:80",  # IPv6 without brackets
    "[2001:db8::1]",  # no port
    "[2001:db8::1]:",  # empty port
    "[192.0.2.1]:80",  # IPv4 in brackets
    "[fe80::1%eth0]:80",  # zone id
    "[2001:db8::g]:80",
    "[]:80",
    "[[::1]]:80",
    "user@host.example:80",  # userinfo
    "host.example:80/path",  # path
    "http://host.example:80",  # scheme
    "host.example.:80",  # trailing dot
    ".host.example:80",  # empty label
    "host..example:80",
    "-host.example:80",  # label starts with "-"
    "host-.example:80",  # label ends with "-"
    "host.-example:80",
    "under_score.example:80",
    "x" * 64 + ".com:80",  # label too long
    "a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62 + ":80",  # 254-character name
    "bücher.example:80",  # non-ASCII
    "xn--bcher-kva.example:80:81",
    "host.example:80:81",
    "host example:80",
    "host\texample:80",
    "host.example:80\x00",
    ":80",
]


@pytest.mark.parametrize(("text", "host", "port", "kind", "rendered"), GOOD_ADDRESSES)
def test_address_good(text: str, host: str, port: int, kind: str, rendered: str) -> None:
    address = parse_address(text)
    assert address == Address(host, port, kind)
    assert str(address) == rendered
    assert parse_address(str(address)) == address


@pytest.mark.parametrize("text", BAD_ADDRESSES)
def test_address_bad(text: str) -> None:
    with pytest.raises(TokenError) as caught:
        parse_address(text)
    assert str(caught.value) == "invalid token"


# --- v1: OpenSSL compatibility ----------------------------------------------------------------


@needs_openssl
@pytest.mark.parametrize("digest", ["md5", "sha256"])
def test_evp_bytes_to_key_matches_openssl(digest: str) -> None:
    printed = _openssl("-e", "-aes-256-cbc", "-md", digest, "-S", "0001020304050607", "-P", data=b"")
    fields = dict(line.replace(" ", "").split("=") for line in printed.decode().splitlines())
    key, iv = evp_bytes_to_key(SECRET, bytes(range(8)), digest=digest)
    assert (key.hex().upper(), iv.hex().upper()) == (fields["key"], fields["iv"])


def test_evp_bytes_to_key_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        evp_bytes_to_key(SECRET, bytes(8), digest="sha1")
    with pytest.raises(ValueError):
        evp_bytes_to_key(SECRET, bytes(7))


@pytest.mark.parametrize("case", V1_FIXTURES, ids=lambda c: f"{c['digest']}-{c['address'][:24]}")
def test_v1_stored_openssl_tokens(case: dict[str, str]) -> None:
    token = _joined(case["openssl_output"])
    assert token.startswith(V1_PREFIX)
    secret = case["secret"].encode()
    assert v1_decrypt(token, [secret], digest=case["digest"]) == parse_address(case["address"])
    other = "sha256" if case["digest"] == "md5" else "md5"
    with pytest.raises(TokenError, match=r"^invalid token$"):
        v1_decrypt(token, [secret], digest=other)


@needs_openssl
@pytest.mark.parametrize(
    "address", ["192.0.2.10:443", "[2001:db8::1]:8443", "db.internal.example:5432", LONGEST]
)
def test_v1_fresh_openssl_md5_tokens_decrypt(address: str) -> None:
    out = _openssl("-e", "-aes-256-cbc", "-a", "-salt", "-md", "md5", data=address.encode())
    assert v1_decrypt(_joined(out), [SECRET]) == parse_address(address)
    assert decode(_joined(out), secrets=[SECRET], keyring=None, accept_v1=True) == (1, parse_address(address))


@needs_openssl
def test_v1_openssl3_default_digest_is_refused_as_md5_and_accepted_as_sha256() -> None:
    out = _openssl("-e", "-aes-256-cbc", "-a", "-salt", data=b"192.0.2.10:443")  # no -md: sha256
    with pytest.raises(TokenError, match=r"^invalid token$"):
        v1_decrypt(_joined(out), [SECRET], digest="md5")
    assert v1_decrypt(_joined(out), [SECRET], digest="sha256") == parse_address("192.0.2.10:443")


@needs_openssl
@pytest.mark.parametrize("address", ["192.0.2.10:443", "[2001:db8::1]:8443", LONGEST])
@pytest.mark.parametrize("single_line", [True, False])
def test_v1_our_tokens_decrypt_with_openssl(address: str, single_line: bool) -> None:
    token = v1_encrypt(address, SECRET)
    assert token.startswith(V1_PREFIX) and b"\n" not in token
    flags = ["-A"] if single_line else []
    out = _openssl("-d", "-aes-256-cbc", "-a", *flags, "-md", "md5", data=token + b"\n")
    assert out == address.encode()


@needs_openssl
def test_v1_sha256_tokens_decrypt_with_openssl_default() -> None:
    token = v1_encrypt("backend.example:80", SECRET, digest="sha256")
    assert _openssl("-d", "-aes-256-cbc", "-a", "-A", data=token) == b"backend.example:80"


def test_v1_longest_address_token_length() -> None:
    token = v1_encrypt(LONGEST, SECRET)
    assert len(token) == 384  # the longest valid v1 line
    assert v1_decrypt(token, [SECRET]) == parse_address(LONGEST)


DOC_V1_SECRET = b"correct horse battery staple"
DOC_V1_TOKEN = b"U2FsdGVkX18AAQIDBAUGB2fsqRabFT0OSnF5MqIv/Ds="


def test_v1_worked_example_from_the_doc() -> None:
    assert v1_encrypt("192.0.2.10:443", DOC_V1_SECRET, salt=bytes(range(8))) == DOC_V1_TOKEN
    assert DOC_V1_TOKEN.decode() in DOC.read_text()
    key, iv = evp_bytes_to_key(DOC_V1_SECRET, bytes(range(8)))
    assert key.hex() == "33ba19105fb54511369a58bed8733d63c7d262891c556325f033d2421adb9d78"
    assert iv.hex() == "7f30fa59d3122564e08c6c68dba03c71"
    assert key.hex().upper() in DOC.read_text() and iv.hex().upper() in DOC.read_text()


@needs_openssl
def test_v1_worked_example_decrypts_with_openssl() -> None:
    out = _openssl("-d", "-aes-256-cbc", "-a", "-A", "-md", "md5", data=DOC_V1_TOKEN, secret=DOC_V1_SECRET)
    assert out == b"192.0.2.10:443"


def test_v1_rotation_tries_each_passphrase() -> None:
    old = v1_encrypt("192.0.2.10:443", b"old-secret-old-secret")
    assert v1_decrypt(old, [b"new-secret-new-secret", b"old-secret-old-secret"]) == parse_address(
        "192.0.2.10:443"
    )
    with pytest.raises(TokenError, match=r"^invalid token$"):
        v1_decrypt(old, [b"new-secret-new-secret"])
    with pytest.raises(TokenError, match=r"^invalid token$"):
        v1_decrypt(old, [])


def test_v1_encrypt_normalises_and_refuses() -> None:
    token = v1_encrypt("[2001:DB8:0::1]:80", SECRET)
    assert str(v1_decrypt(token, [SECRET])) == "[2001:db8::1]:80"
    with pytest.raises(ValueError):
        v1_encrypt("not an address", SECRET)
    with pytest.raises(ValueError):
        v1_encrypt("192.0.2.10:443", b"")
    with pytest.raises(ValueError):
        v1_decrypt(token, [SECRET], digest="sha512")


# --- v1: no padding oracle --------------------------------------------------------------------


def _v1_raw_token(plaintext: bytes, passphrase: bytes = SECRET, salt: bytes = bytes(8)) -> bytes:
    """A v1 token over arbitrary (already padded or not) plaintext, built by hand."""
    key, iv = evp_bytes_to_key(passphrase, salt)
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return base64.b64encode(b"Salted__" + salt + encryptor.update(plaintext) + encryptor.finalize())


ORACLE_ADDRESS = "backend.internal.example:8443"  # 29 bytes: two ciphertext blocks
ORACLE_TOKEN = v1_encrypt(ORACLE_ADDRESS, SECRET, salt=b"\x11" * 8)
ORACLE_RAW = base64.b64decode(ORACLE_TOKEN)


def test_oracle_token_is_valid() -> None:
    assert len(ORACLE_RAW) == 16 + 32
    assert decode(ORACLE_TOKEN, secrets=[SECRET], keyring=None, accept_v1=True) == (
        1,
        parse_address(ORACLE_ADDRESS),
    )


@pytest.mark.parametrize("xor", [0x01, 0x80, 0xFF])
def test_oracle_every_byte_flipped(xor: int) -> None:
    reasons = set()
    for index in range(len(ORACLE_RAW)):
        raw = bytearray(ORACLE_RAW)
        raw[index] ^= xor
        reasons.add(_reason(base64.b64encode(raw)))
    assert reasons == {"invalid token"}


def test_oracle_every_bit_of_the_last_two_blocks_flipped() -> None:
    reasons = set()
    for bit in range(8 * 32):
        raw = bytearray(ORACLE_RAW)
        raw[len(raw) - 32 + bit // 8] ^= 1 << (bit % 8)
        reasons.add(_reason(base64.b64encode(raw)))
    assert reasons == {"invalid token"}


def test_oracle_valid_padding_and_invalid_padding_look_the_same() -> None:
    good_padding_bad_address = _v1_raw_token(b"not an address!!" + bytes([16]) * 16)
    bad_padding_good_text = _v1_raw_token(b"192.0.2.1:80" + b"\x00\x00\x00\x05")
    zero_padding = _v1_raw_token(b"192.0.2.1:80" + b"\x00" * 4)
    oversized_pad_byte = _v1_raw_token(b"192.0.2.1:80" + b"\x11" * 4)
    newline = _v1_raw_token(b"192.0.2.1:80\n" + b"\x03" * 3)  # `echo` without -n
    non_ascii = _v1_raw_token("bücher.example:80".encode() + b"\x0e" * 14)
    assert v1_decrypt(_v1_raw_token(b"192.0.2.1:80" + b"\x04" * 4), [SECRET]) == parse_address("192.0.2.1:80")
    for token in (
        good_padding_bad_address,
        bad_padding_good_text,
        zero_padding,
        oversized_pad_byte,
        newline,
        non_ascii,
    ):
        assert _reason(token) == "invalid token"


def test_oracle_truncations_and_shape_errors() -> None:
    reasons = {_reason(ORACLE_TOKEN[:n]) for n in range(len(ORACLE_TOKEN))}
    reasons |= {
        _reason(ORACLE_TOKEN + b"A"),  # bad base64 length
        _reason(ORACLE_TOKEN + b"="),  # excess padding, which a lenient decoder ignores
        _reason(ORACLE_TOKEN[:-2] + b"=="),  # padding in place of data
        _reason(DOC_V1_TOKEN.rstrip(b"="), secrets=[DOC_V1_SECRET]),  # padding removed
        # a set bit among the unused bits of the last character: same bytes, not canonical
        _reason(DOC_V1_TOKEN[:-2] + b"t=", secrets=[DOC_V1_SECRET]),
        _reason(ORACLE_TOKEN[:-4] + b"!!!!"),  # not in the alphabet
        _reason(ORACLE_TOKEN.replace(b"U2Fsd", b"U2Fse")),  # not Salted__
        _reason(base64.b64encode(ORACLE_RAW[:40])),  # not whole blocks
        _reason(base64.b64encode(ORACLE_RAW[:16])),  # header only
        _reason(base64.b64encode(ORACLE_RAW + bytes(16 * 16))),  # longer than any address
        _reason(b"U2FsdGVkX1 " + ORACLE_TOKEN[10:]),
        _reason(b""),
    }
    assert reasons == {"invalid token"}


def test_oracle_random_lines() -> None:
    rng = random.Random(20261122)
    reasons = set()
    for _ in range(300):
        body = bytes(rng.randrange(256) for _ in range(rng.choice([16, 32, 48, 64, 100])))
        reasons.add(_reason(base64.b64encode(b"Salted__" + body)))
        reasons.add(_reason(bytes(rng.randrange(256) for _ in range(rng.randrange(80)))))
    assert reasons == {"invalid token"}


# --- secrets files ----------------------------------------------------------------------------


def test_load_secrets() -> None:
    text = "# v1 secrets\n\nnewest-secret-1234567  \r\n  # old one below\nolder secret with spaces\n"
    assert load_secrets(text) == [b"newest-secret-1234567", b"older secret with spaces"]
    assert load_secrets("  leading kept\n") == [b"  leading kept"]
    assert load_secrets("gr\u00fcn-geheimnis-1234\n") == ["gr\u00fcn-geheimnis-1234".encode()]


def test_load_secrets_errors_name_the_source_and_line() -> None:
    with pytest.raises(ValueError, match=r"^/etc/portway/v1: no v1 secret"):
        load_secrets("# nothing\n\n", source="/etc/portway/v1")
    with pytest.raises(ValueError, match=r"^v1.txt: line 2: ") as caught:
        load_secrets("fine-secret\nbad\x00secret\n", source="v1.txt")
    assert "bad" not in str(caught.value).split(": ", 2)[2]


@pytest.mark.parametrize(
    ("secret", "weak"),
    [
        (b"short", True),
        (b"fifteen-bytes!!", True),
        (b"aaaaaaaaaaaaaaaaaaaaaaaa", True),
        (b"abababababababababab", True),
        (b"abcdefghabcdefgh", True),
        (b"kT9#vQ2!xL7@pM4$", False),
        (b"correct horse battery staple", False),
    ],
)
def test_weak_secret(secret: bytes, weak: bool) -> None:
    warning = weak_secret(secret)
    assert (warning is not None) is weak
    if warning is not None:
        assert secret.decode() not in warning


# --- v2 ---------------------------------------------------------------------------------------

K1 = Key(1, bytes([1]) * 32)
K2 = Key(2, bytes([2]) * 32)
RING = Keyring([K1])


def _v2_raw(token: bytes) -> bytes:
    text = token[len(V2_PREFIX) :]
    return base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))


def _v2_token(raw: bytes) -> bytes:
    return V2_PREFIX + base64.urlsafe_b64encode(raw).rstrip(b"=")


def _v2_sealed(
    plaintext: bytes, key: Key = K1, nbf: int = 0, exp: int = int(NOW) + 60, aad: bytes | None = None
) -> bytes:
    """A v2 token over an arbitrary address field, built from the documented layout."""
    header = struct.pack(">III", key.kid, nbf, exp)
    nonce = os.urandom(12)
    aad = V2_AAD_CONTEXT + header if aad is None else aad
    return _v2_token(header + nonce + AESGCM(key.secret).encrypt(nonce, plaintext, aad))


@pytest.mark.parametrize(
    "text", ["192.0.2.10:443", "[2001:db8::1]:8443", "[::ffff:192.0.2.1]:80", "db.example:5432", LONGEST]
)
def test_v2_round_trip(text: str) -> None:
    token = v2_encrypt(text, RING, expires=NOW + 60, now=NOW)
    assert token.startswith(V2_PREFIX) and b"=" not in token and b"\n" not in token
    assert v2_decrypt(token, RING, now=NOW) == parse_address(text)
    assert decode(token, secrets=[], keyring=RING, accept_v1=False, now=NOW) == (2, parse_address(text))
    assert v2_encrypt(parse_address(text), RING, expires=NOW + 60, now=NOW) != token  # fresh nonce


def test_v2_token_lengths() -> None:
    assert len(v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, now=NOW)) == 66
    assert len(v2_encrypt(LONGEST, RING, expires=NOW + 60, now=NOW)) == 399


@pytest.mark.parametrize("vector", V2_VECTORS, ids=lambda v: v["address"])
def test_v2_documented_vectors(vector: dict[str, object]) -> None:
    key = Key(int(str(vector["kid"])), bytes.fromhex(str(vector["key_hex"])))
    nbf, exp = int(str(vector["not_before"])), int(str(vector["expires"]))
    nonce = bytes.fromhex(str(vector["nonce_hex"]))
    token = str(vector["token"]).encode()
    address = parse_address(str(vector["address"]))
    ring = Keyring([key])
    assert v2_encrypt(address, ring, expires=exp, not_before=nbf or None, now=exp - 1, nonce=nonce) == token
    assert v2_decrypt(token, ring, now=exp - 1) == address
    assert token.decode() in DOC.read_text(), "docs/gateway-protocol.md must print this vector"
    # Independent construction from the documented layout.
    if address.kind == "ipv4":
        field = b"\x01" + ipaddress.IPv4Address(address.host).packed
    elif address.kind == "ipv6":
        field = b"\x04" + ipaddress.IPv6Address(address.host).packed
    else:
        field = b"\x03" + bytes([len(address.host)]) + address.host.encode()
    field += address.port.to_bytes(2, "big")
    header = key.kid.to_bytes(4, "big") + nbf.to_bytes(4, "big") + exp.to_bytes(4, "big")
    sealed = AESGCM(key.secret).encrypt(nonce, field, b"portway-gateway-v2" + header)
    assert _v2_token(header + nonce + sealed) == token


def test_v2_validity_window() -> None:
    token = v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, not_before=NOW - 5, now=NOW)
    assert v2_decrypt(token, RING, now=NOW - 5) == parse_address("192.0.2.10:443")  # nbf is inclusive
    assert v2_decrypt(token, RING, now=NOW + 59.9) == parse_address("192.0.2.10:443")
    assert _reason(token, now=NOW + 60) == "expired"  # expires is exclusive
    assert _reason(token, now=NOW + 10_000) == "expired"
    assert _reason(token, now=NOW - 5.5) == "not yet valid"
    later = v2_encrypt("192.0.2.10:443", RING, expires=NOW + 600, not_before=NOW + 300, now=NOW)
    assert _reason(later) == "not yet valid"
    assert v2_decrypt(later, RING, now=NOW + 300) == parse_address("192.0.2.10:443")


def test_v2_uses_the_clock_by_default() -> None:
    import time

    token = v2_encrypt("192.0.2.10:443", RING, expires=time.time() + 60)
    assert v2_decrypt(token, RING) == parse_address("192.0.2.10:443")


def test_v2_wrong_key_and_unknown_kid() -> None:
    token = v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, now=NOW)
    same_kid_other_secret = Keyring([Key(1, bytes([9]) * 32)])
    assert _reason(token, keyring=same_kid_other_secret) == "invalid token"
    assert _reason(token, keyring=Keyring([K2])) == "unknown key id"


def test_v2_every_byte_flipped_is_refused() -> None:
    token = v2_encrypt("db.example:5432", RING, expires=NOW + 60, not_before=NOW - 60, now=NOW)
    raw = _v2_raw(token)
    for index in range(len(raw)):
        for xor in (0x01, 0x80):
            changed = bytearray(raw)
            changed[index] ^= xor
            reason = _reason(_v2_token(bytes(changed)))
            assert reason == ("unknown key id" if index < 4 else "invalid token"), index


def test_v2_header_is_bound_to_the_ciphertext() -> None:
    short = _v2_raw(v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, now=NOW))
    longer = _v2_raw(v2_encrypt("192.0.2.10:443", RING, expires=NOW + 10**6, now=NOW))
    assert _reason(_v2_token(longer[:12] + short[12:])) == "invalid token"  # extend the expiry
    # The AAD must include the context string, then the header: nothing else verifies.
    field = b"\x01\xc0\x00\x02\x0a\x01\xbb"
    header = struct.pack(">III", 1, 0, int(NOW) + 60)
    assert v2_decrypt(_v2_sealed(field), RING, now=NOW) == parse_address("192.0.2.10:443")
    for aad in (header, b"", b"portway-gateway-v3" + header, V2_AAD_CONTEXT, header + V2_AAD_CONTEXT):
        assert _reason(_v2_sealed(field, aad=aad)) == "invalid token"


@pytest.mark.parametrize(
    "field",
    [
        b"\x01\xc0\x00\x02\x0a\x00\x00",  # port 0
        b"\x01\xc0\x00\x02\x0a\x01",  # short
        b"\x01\xc0\x00\x02\x0a\x01\xbb\x00",  # trailing byte
        b"\x02\xc0\x00\x02\x0a\x01\xbb",  # unknown type
        b"\x04" + bytes(15) + b"\x01\xbb",  # IPv6 one byte short
        b"\x03\x05ab.cd\x00\x50" + b"x",  # trailing byte after a name
        b"\x03\x06ab.cd\x00\x50",  # length too long
        b"\x03\x00\x00\x50",  # empty name
        b"\x03\x0aab_cd.test\x00\x50",  # not LDH
        b"\x03\x09127.0.0.1\x00\x50",  # an IP address as a name
        b"\x03\x07b\xc3\xbccher\x00\x50",  # not ASCII
        b"\x03\x04ab.\x00\x50",  # trailing dot
    ],
)
def test_v2_authentic_but_bad_address_field(field: bytes) -> None:
    assert _reason(_v2_sealed(field)) == "invalid token"


def test_v2_name_field_is_lower_cased() -> None:
    assert v2_decrypt(_v2_sealed(b"\x03\x07DB.Test\x00\x50"), RING, now=NOW) == Address("db.test", 80, "name")


def test_v2_encoding_must_be_canonical_base64url() -> None:
    token = v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, now=NOW)
    assert len(token[3:]) % 4 == 3  # 47 bytes: the last character carries 2 unused bits
    last = token[-1:]
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    sibling = alphabet[alphabet.index(last) ^ 1 : (alphabet.index(last) ^ 1) + 1]  # differs in an unused bit
    for bad in (
        token + b"=",
        token[:-1] + sibling,
        token.replace(b"v2.", b"V2."),
        token[:20] + b"+" + token[21:],
        token[:20] + b" " + token[21:],
        token + b"A",
        token[:-1],
        V2_PREFIX,
        V2_PREFIX + b"A" * 600,
    ):
        assert _reason(bad) == "invalid token"
        with pytest.raises(TokenError):
            v2_decrypt(bad, RING, now=NOW)


def test_v2_encrypt_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError):
        v2_encrypt("192.0.2.10", RING, expires=NOW + 60, now=NOW)
    with pytest.raises(ValueError):
        v2_encrypt("192.0.2.10:443", RING, expires=NOW, now=NOW)  # already expired
    with pytest.raises(ValueError):
        v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, not_before=NOW + 60, now=NOW)
    with pytest.raises(ValueError):
        v2_encrypt("192.0.2.10:443", RING, expires=2.0**32, now=NOW)
    with pytest.raises(ValueError):
        v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, now=NOW, nonce=bytes(8))


def test_v2_rotation() -> None:
    old_token = v2_encrypt("192.0.2.10:443", Keyring([K1]), expires=NOW + 60, now=NOW)
    rotated = Keyring([K2, K1])
    assert rotated.current == K2
    assert v2_decrypt(old_token, rotated, now=NOW) == parse_address("192.0.2.10:443")
    new_token = v2_encrypt("192.0.2.10:443", rotated, expires=NOW + 60, now=NOW)
    assert _v2_raw(new_token)[:4] == b"\x00\x00\x00\x02"
    assert _reason(new_token, keyring=Keyring([K1])) == "unknown key id"
    assert _reason(old_token, keyring=Keyring([K2])) == "unknown key id"  # retired


# --- keyrings ---------------------------------------------------------------------------------

KEY_A = base64.b64encode(bytes([0xA]) * 32).decode()
KEY_B = base64.b64encode(bytes([0xB]) * 32).decode()


def test_keyring_parse() -> None:
    text = f"# portway v2 keys\n\n7 {KEY_A}   # newest: current\n  4294967295\t{KEY_B}\n#0 {KEY_A}\n"
    ring = Keyring.parse(text)
    assert ring.current == Key(7, bytes([0xA]) * 32)
    assert dict(ring.keys) == {7: ring.current, 4294967295: Key(4294967295, bytes([0xB]) * 32)}
    assert KEY_A not in repr(ring) and KEY_A not in repr(ring.current)
    assert (bytes([0xA]) * 32).hex() not in repr(ring.current) and "secret" not in repr(ring.current)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (f"1 {KEY_A}\n2\n", "line 2: expected '<key id> <base64 key>'"),
        (f"1 {KEY_A} extra\n", "line 1: expected"),
        (f"x1 {KEY_A}\n", "line 1: expected"),
        (f"-1 {KEY_A}\n", "line 1: expected"),
        (f"4294967296 {KEY_A}\n", "line 1: the key id must be"),
        (f"1 {KEY_A}\n\n1 {KEY_B}\n", "line 3: key id 1 is already listed on line 1"),
        (f"1 {KEY_A[:-2]}\n", "line 1: key 1 is not valid base64"),
        (f"1 {KEY_A.replace('C', '!')}\n", "line 1: key 1 is not valid base64"),
        (f"1 {base64.b64encode(bytes(16)).decode()}\n", "line 1: key 1 must be 32 bytes, got 16"),
        (f"1 {base64.urlsafe_b64encode(bytes([0xFB]) * 32).decode()}\n", "line 1: key 1 is not valid base64"),
        ("# only a comment\n\n", "no key found"),
        ("", "no key found"),
    ],
)
def test_keyring_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        Keyring.parse(text, source="/etc/portway/v2.keys")
    assert str(caught.value).startswith("/etc/portway/v2.keys: ")
    assert message in str(caught.value)
    for key_text in (KEY_A, KEY_B, KEY_A[:-2], KEY_A[:20]):
        assert key_text not in str(caught.value)


def test_keyring_new_line() -> None:
    line = Keyring.new_line()
    ring = Keyring.parse(line)
    assert f"{ring.current.kid} " == line[: line.index(" ") + 1]
    assert Keyring.parse(Keyring.new_line(5)).current.kid == 5
    assert Keyring.new_line(5) != Keyring.new_line(5)


def test_key_and_keyring_validation() -> None:
    with pytest.raises(ValueError):
        Key(-1, bytes(32))
    with pytest.raises(ValueError):
        Key(2**32, bytes(32))
    with pytest.raises(ValueError) as caught:
        Key(1, b"\x01" * 31)
    assert "\\x01" not in str(caught.value)
    with pytest.raises(ValueError):
        Keyring([])
    with pytest.raises(ValueError):
        Keyring([K1, Key(1, bytes(32))])
    with pytest.raises(TypeError):
        RING.keys[3] = K1  # type: ignore[index]


# --- dispatch ---------------------------------------------------------------------------------


def test_decode_dispatch() -> None:
    v1 = v1_encrypt("192.0.2.10:443", SECRET)
    v2 = v2_encrypt("192.0.2.10:443", RING, expires=NOW + 60, now=NOW)
    address = parse_address("192.0.2.10:443")
    assert decode(v1, secrets=[SECRET], keyring=RING, accept_v1=True, now=NOW) == (1, address)
    assert decode(v2, secrets=[SECRET], keyring=RING, accept_v1=True, now=NOW) == (2, address)
    assert decode(v2, secrets=[], keyring=RING, accept_v1=False, now=NOW) == (2, address)
    assert _reason(v1, accept_v1=False) == "not a v2 token, and v1 tokens are not accepted"
    assert _reason(v2, keyring=None) == "v2 token, but no v2 keyring is configured"
    assert _reason(v1, secrets=[]) == "invalid token"
    assert _reason(b"garbage") == "invalid token"
    sha = v1_encrypt("192.0.2.10:443", SECRET, digest="sha256")
    assert decode(sha, secrets=[SECRET], keyring=None, accept_v1=True, digest="sha256") == (1, address)
    assert _reason(sha) == "invalid token"


@_SETTINGS
@given(
    st.one_of(
        st.binary(max_size=400),
        st.binary(max_size=400).map(lambda b: V1_PREFIX + b),
        st.binary(max_size=400).map(lambda b: V2_PREFIX + b),
        st.binary(min_size=16, max_size=300).map(lambda b: base64.b64encode(b"Salted__" + b)),
        st.binary(min_size=40, max_size=300).map(_v2_token),
    ),
    st.booleans(),
)
def test_decode_random_bytes_give_a_result_or_token_error(token: bytes, accept_v1: bool) -> None:
    try:
        version, address = decode(
            token, secrets=[SECRET, b"second"], keyring=RING, accept_v1=accept_v1, now=NOW
        )
    except TokenError as exc:
        assert str(exc) in {
            "invalid token",
            "unknown key id",
            "expired",
            "not yet valid",
            "not a v2 token, and v1 tokens are not accepted",
        }
        return
    assert version in (1, 2) and parse_address(str(address)) == address


@_SETTINGS
@given(
    st.one_of(
        st.text(max_size=300),
        st.text(alphabet="0123456789abcdefABCDEF.:-[]%", max_size=60),
    )
)
def test_parse_address_random_text(text: str) -> None:
    try:
        address = parse_address(text)
    except TokenError as exc:
        assert str(exc) == "invalid token"
        return
    assert parse_address(str(address)) == address
    assert address.kind in ("ipv4", "ipv6", "name") and 1 <= address.port <= 65535
