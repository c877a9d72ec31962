"""Gateway mode: the client's first line, its token (v1 or v2) and the backend address, sans-IO.

A gateway client connects, sends one line holding an encrypted backend address, and gets
three ASCII bytes back (:class:`Status`); after ``200`` the connection is relayed to that
backend. ``docs/gateway-protocol.md`` is the wire specification; this module implements it.

Strategy. The work is split into three pure steps, each with one way to fail:

1. :func:`parse_line` frames the line (three-way contract of :mod:`portway.proto`): a
   :class:`Line`, ``NEED_DATA``, or :class:`LineError` (answer ``400``).
2. :func:`decode` turns ``line.token`` into ``(version, Address)`` or raises
   :class:`TokenError` (answer ``401``). It dispatches on the prefix: ``v2.`` is
   :func:`v2_decrypt`, anything else is :func:`v1_decrypt` (when v1 is enabled).
3. Policy (``403``), dialing (``502``/``504``) and relaying belong to the mode handler.

Rules.

- Rule 1: every token failure is one exception type, :class:`TokenError`, and the client
  sees one answer for all of them. ``str(error)`` is a coarse reason for operator logs and
  never holds key material or decrypted bytes.
- Rule 2 (v1, no padding oracle): v1 tokens are AES-256-CBC without authentication, so a
  client that could tell "bad padding" from "bad address" could decrypt tokens byte by byte.
  :func:`v1_decrypt` therefore runs the same steps for every input (a malformed token is
  replaced by a dummy of the right shape, every configured passphrase is tried, padding is
  checked without branching and the address grammar runs even after a padding failure),
  and every v1 failure has the single reason ``"invalid token"``.
- Rule 3 (v2): AES-256-GCM authenticates the whole token, so nothing is looked at before
  the tag verifies except the key id; reasons may be specific (``"unknown key id"``,
  ``"expired"``, ``"not yet valid"``, ``"invalid token"``).
- Rule 4: the address grammar (:func:`parse_address`) is strict and the same for both
  versions: an IPv4 literal, a bracketed IPv6 literal, or an LDH host name, then a port.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import ipaddress
import os
import re
import secrets as _secrets
import struct
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from portway.errors import ProtocolError
from portway.proto import NEED_DATA, NeedData

__all__ = [
    "MAX_ADDRESS_LENGTH",
    "NEED_DATA",
    "V1_PREFIX",
    "V2_AAD_CONTEXT",
    "V2_PREFIX",
    "Address",
    "Key",
    "Keyring",
    "Line",
    "LineError",
    "NeedData",
    "Status",
    "TokenError",
    "decode",
    "evp_bytes_to_key",
    "load_secrets",
    "parse_address",
    "parse_line",
    "v1_decrypt",
    "v1_encrypt",
    "v2_decrypt",
    "v2_encrypt",
    "weak_secret",
]

V1_PREFIX: Final = b"U2FsdGVkX1"
"""How every v1 line starts: the base64 of ``b"Salted__"`` (OpenSSL's salt header)."""
V2_PREFIX: Final = b"v2."
"""How every v2 line starts; it cannot start a v1 line (``v`` is not ``U``)."""
V2_AAD_CONTEXT: Final = b"portway-gateway-v2"
"""Prepended to the v2 header to form the AEAD's associated data (domain separation)."""

MAX_ADDRESS_LENGTH: Final = 253 + 1 + 5
"""The longest address text the grammar accepts: a 253-byte host name, ``":"``, ``"65535"``."""

_INVALID: Final = "invalid token"
"""The one reason given for every v1 failure, and for v2 format, tag and address failures."""

_DIGESTS: Final = ("md5", "sha256")
_SALT_HEADER: Final = b"Salted__"
_BLOCK: Final = 16
# The largest v1 ciphertext that can hold a valid address: the header, then the longest
# address padded to whole blocks (PKCS#7 always adds 1-16 bytes).
_V1_MAX_RAW: Final = len(_SALT_HEADER) + 8 + (MAX_ADDRESS_LENGTH // _BLOCK + 1) * _BLOCK
_V1_DUMMY: Final = bytes(len(_SALT_HEADER) + 8 + 2 * _BLOCK)  # stands in for a malformed token

_V2_HEADER: Final = struct.Struct(">III")  # kid, not_before, expires
_V2_NONCE_LENGTH: Final = 12
_V2_TAG_LENGTH: Final = 16
_V2_MAX_TIME: Final = 2**32 - 1
_ATYP_IPV4: Final = 0x01  # the SOCKS5 (RFC 1928) address type numbers
_ATYP_NAME: Final = 0x03
_ATYP_IPV6: Final = 0x04
_V2_MIN_RAW: Final = _V2_HEADER.size + _V2_NONCE_LENGTH + (1 + 4 + 2) + _V2_TAG_LENGTH
_V2_MAX_RAW: Final = _V2_HEADER.size + _V2_NONCE_LENGTH + (1 + 1 + 253 + 2) + _V2_TAG_LENGTH
_BASE64URL: Final = re.compile(rb"[A-Za-z0-9_-]*")

# Address grammar. Everything is ASCII; [0-9] rather than \d, which would match other digits.
_ADDRESS: Final = re.compile(r"(?:\[([0-9A-Fa-f:.]{2,45})\]|([0-9A-Za-z.-]{1,253})):([1-9][0-9]{0,4})")
_OCTET: Final = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"  # 0-255, no leading zero
_IPV4: Final = re.compile(rf"{_OCTET}\.{_OCTET}\.{_OCTET}\.{_OCTET}")
# RFC 1123 §2.1: LDH labels of 1-63 characters that neither start nor end with "-".
_LABEL: Final = r"[0-9A-Za-z](?:[0-9A-Za-z-]{0,61}[0-9A-Za-z])?"
_NAME: Final = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}")


class Status(enum.IntEnum):
    """The gateway's answers: exactly three ASCII digits on the wire, no newline."""

    OK = 200
    """Connected to the backend; relaying starts (the bytes after the line go first)."""
    BAD_LINE = 400
    """No line within the limit (:class:`LineError`)."""
    BAD_TOKEN = 401
    """The token is not valid (:class:`TokenError`)."""
    FORBIDDEN = 403
    """An authentic v2 token whose destination the gateway's policy refuses."""
    BAD_GATEWAY = 502
    """The backend refused the connection or dialing failed."""
    GATEWAY_TIMEOUT = 504
    """The backend did not answer within the connect timeout."""

    @property
    def reply(self) -> bytes:
        """The three bytes to send, e.g. ``b"200"``."""
        return b"%d" % self.value


class LineError(ProtocolError):
    """No newline within the line limit; answer ``400`` (``hint == "400"``) and close."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="400")


class TokenError(ProtocolError):
    """A token that must be answered ``401`` (``hint == "401"``); nothing else is told the client.

    ``str(error)`` (the *reason*) is for operator logs only. It is coarse on purpose: every
    v1 failure reads ``"invalid token"`` (see the module's Rule 2), and no reason ever holds
    a secret or anything decrypted.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason, hint="401")


# --- the line --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    """The client's first line, framed."""

    token: bytes
    """The line without its ``"\\n"`` and without any ``"\\r"`` bytes."""
    length: int
    """Bytes consumed from the start of the connection, newline included. Everything after
    them is application data that goes to the backend first once it is connected."""


def parse_line(data: bytes | bytearray, *, limit: int) -> Line | NeedData:
    """Find the first line in ``data``, every byte received so far on the connection.

    The line may hold at most ``limit`` bytes before its ``"\\n"`` (``"\\r"`` bytes count
    towards the limit and are then dropped from the token), so a caller never buffers more
    than ``limit + 1`` bytes. A line of exactly ``limit`` bytes is accepted; as soon as
    ``limit + 1`` bytes have arrived without a newline among them the line is refused. Bytes
    after the newline are not looked at.

    Args:
        data: every byte received so far, from the first.
        limit: the longest line accepted, newline excluded; at least 1. The longest valid
            tokens are 384 (v1) and 399 (v2) bytes, so 512 is a sensible setting.

    Returns:
        A :class:`Line`, or ``NEED_DATA`` while no newline has arrived and the limit allows more.

    Raises:
        LineError: ``limit + 1`` bytes arrived without a newline.
        ValueError: ``limit`` is less than 1 (a programming error).
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    end = data.find(b"\n", 0, limit + 1)
    if end >= 0:
        return Line(token=bytes(data[:end]).replace(b"\r", b""), length=end + 1)
    if len(data) > limit:
        raise LineError(f"no newline after {limit} bytes; the gateway line is longer than the limit")
    return NEED_DATA


# --- the address -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Address:
    """A backend address from a token; build it with :func:`parse_address`."""

    host: str
    """An IPv4 literal, an IPv6 literal in its compressed form (no brackets), or a lower-case
    DNS name without a trailing dot."""
    port: int
    """1 to 65535."""
    kind: str
    """``"ipv4"``, ``"ipv6"`` or ``"name"``."""

    def __str__(self) -> str:
        """The address as the grammar writes it: ``"host:port"`` or ``"[v6]:port"``."""
        if self.kind == "ipv6":
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def _host_kind(host: str) -> str | None:
    """``"ipv4"`` or ``"name"`` for a host that the grammar accepts, else ``None``."""
    if _IPV4.fullmatch(host):
        return "ipv4"
    # RFC 3696 §2: the last label is not all digits. Such names ("127.1", "10.0.0.256",
    # "2130706433") are malformed IPv4 literals, and resolvers that read them as IPv4 would
    # let a token slip past a destination policy written for names.
    if len(host) <= 253 and _NAME.fullmatch(host) and not host.rpartition(".")[2].isdigit():
        return "name"
    return None


def _match_address(text: str) -> Address | None:
    """:func:`parse_address` without the exception (``None`` for anything refused)."""
    if len(text) > MAX_ADDRESS_LENGTH or not text.isascii():
        return None
    match = _ADDRESS.fullmatch(text)
    if match is None:
        return None
    bracketed, host, port_text = match.groups()
    port = int(port_text)
    if port > 65535:
        return None
    if bracketed is not None:
        try:
            ip = ipaddress.IPv6Address(bracketed)
        except ValueError:
            return None
        return Address(ip.compressed, port, "ipv6")
    kind = _host_kind(host)
    if kind is None:
        return None
    return Address(host.lower(), port, kind)


def parse_address(text: str) -> Address:
    """Parse ``host:port`` by the strict grammar shared by v1 and v2 tokens.

    Accepted: an IPv4 dotted quad (decimal, no leading zeros), an IPv6 literal in brackets
    (no zone id), or a DNS host name (LDH labels of 1-63 characters that neither start nor end
    with ``-``, at most 253 characters, no trailing dot, and a last label that is not all
    digits), then ``:`` and a port from 1 to 65535 without sign, leading zeros or spaces.
    Nothing else: no userinfo, path, whitespace or non-ASCII character.

    Raises:
        TokenError: ``"invalid token"`` for anything the grammar refuses.
    """
    address = _match_address(text)
    if address is None:
        raise TokenError(_INVALID)
    return address


def _checked_address(address: Address | str) -> Address:
    """``address`` re-validated by the grammar, for the encoders (``ValueError`` if refused)."""
    parsed = _match_address(str(address))
    if parsed is None:
        raise ValueError("not a valid gateway address (host:port, [ipv6]:port)")
    return parsed


# --- v1: OpenSSL "enc" compatible ------------------------------------------------------------


def evp_bytes_to_key(passphrase: bytes, salt: bytes, *, digest: str = "md5") -> tuple[bytes, bytes]:
    """OpenSSL's ``EVP_BytesToKey`` with one iteration, as ``openssl enc -k`` uses it.

    ``D_1 = H(passphrase || salt)``, ``D_i = H(D_(i-1) || passphrase || salt)``, concatenated
    until there are 48 bytes: the first 32 are the AES-256 key, the next 16 the CBC IV.

    Args:
        passphrase: the ``-k`` passphrase, as bytes.
        salt: the 8-byte salt that follows ``Salted__``.
        digest: ``"md5"`` (``-md md5``, OpenSSL before 1.1.0 and frontd) or ``"sha256"``
            (the OpenSSL 1.1.0+ default).

    Returns:
        ``(key, iv)``: 32 and 16 bytes.

    Raises:
        ValueError: an unknown digest or a salt that is not 8 bytes.
    """
    if digest not in _DIGESTS:
        raise ValueError(f"digest must be one of {', '.join(_DIGESTS)}, got {digest!r}")
    if len(salt) != 8:
        raise ValueError(f"the salt must be 8 bytes, got {len(salt)}")
    material = b""
    block = b""
    while len(material) < 48:
        block = hashlib.new(digest, block + passphrase + salt, usedforsecurity=False).digest()
        material += block
    return material[:32], material[32:48]


def v1_encrypt(
    address: Address | str, passphrase: bytes, *, digest: str = "md5", salt: bytes | None = None
) -> bytes:
    """Make a v1 token, as ``printf %s ADDR | openssl enc -e -aes-256-cbc -a -A -md md5 -k SECRET``.

    The address is checked by the grammar and written in its normal form (``str(Address)``).

    Args:
        address: the backend address.
        passphrase: the v1 secret (not empty).
        digest: the ``EVP_BytesToKey`` digest, ``"md5"`` or ``"sha256"``.
        salt: 8 bytes; random when ``None`` (pass one only for reproducible tests).

    Returns:
        One line of standard base64 with padding, without a newline, starting with
        :data:`V1_PREFIX`.

    Raises:
        ValueError: an invalid address, an empty passphrase, a bad digest or salt.
    """
    text = str(_checked_address(address)).encode("ascii")
    if not passphrase:
        raise ValueError("the v1 passphrase is empty")
    salt = os.urandom(8) if salt is None else salt
    key, iv = evp_bytes_to_key(passphrase, salt, digest=digest)
    padder = padding.PKCS7(_BLOCK * 8).padder()
    padded = padder.update(text) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = encryptor.update(padded) + encryptor.finalize()
    return base64.b64encode(_SALT_HEADER + salt + body)


def _v1_raw(token: bytes) -> bytes | None:
    """The decoded bytes of a v1 token if its shape is right, else ``None``."""
    try:
        raw = base64.b64decode(token, validate=True)
    except (binascii.Error, ValueError):
        return None
    shape_ok = (
        base64.b64encode(raw) == token  # canonical: no excess padding, no stray trailing bits
        and raw[: len(_SALT_HEADER)] == _SALT_HEADER
        and len(_SALT_HEADER) + 8 + _BLOCK <= len(raw) <= _V1_MAX_RAW
        and len(raw) % _BLOCK == 0
    )
    return raw if shape_ok else None


def _pkcs7_strip(padded: bytes) -> tuple[bytes, bool]:
    """Remove PKCS#7 padding with the same steps whether it is valid or not.

    Returns the body (the last 16 bytes dropped when the padding is invalid) and whether the
    padding was valid. No exception, no early return: a padding failure must not take a
    different path from an address failure (module Rule 2).
    """
    pad = padded[-1]
    take = pad if 1 <= pad <= _BLOCK else _BLOCK
    valid = hmac.compare_digest(padded[-take:], bytes([pad]) * take) & (1 <= pad <= _BLOCK)
    return padded[:-take], valid


def v1_decrypt(token: bytes, passphrases: Sequence[bytes], *, digest: str = "md5") -> Address:
    """Decrypt a v1 token with each passphrase in turn and return its address.

    Every input takes the same steps (module Rule 2): a token of the wrong shape (not base64,
    no ``Salted__`` header, a length that is not whole blocks or too long for any address) is
    replaced by a dummy ciphertext; then for *every* passphrase the key is derived, all blocks
    are decrypted, the padding is checked and the address grammar is run; the first
    passphrase that gives valid padding and a valid address wins.

    Args:
        token: the line's token (base64, no newline).
        passphrases: the configured v1 secrets; the first that works is used.
        digest: ``"md5"`` or ``"sha256"``; only this digest is tried.

    Raises:
        TokenError: always with the reason ``"invalid token"``, whatever went wrong.
        ValueError: an unknown digest (a configuration error, raised before anything else).
    """
    if digest not in _DIGESTS:
        raise ValueError(f"digest must be one of {', '.join(_DIGESTS)}, got {digest!r}")
    raw = _v1_raw(token)
    shape_ok = raw is not None
    raw = raw if raw is not None else _V1_DUMMY
    salt, body = raw[8:16], raw[16:]
    found: Address | None = None
    for passphrase in passphrases:
        key, iv = evp_bytes_to_key(passphrase, salt, digest=digest)
        decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        plain, padding_ok = _pkcs7_strip(decryptor.update(body) + decryptor.finalize())
        address = _match_address(plain.decode("ascii", errors="replace"))
        if padding_ok and address is not None and found is None:
            found = address
    if not shape_ok or found is None:
        raise TokenError(_INVALID)
    return found


def load_secrets(text: str, *, source: str = "secrets") -> list[bytes]:
    """Read v1 passphrases, one a line, for rotation (each is tried in turn, in this order).

    Trailing whitespace (and a ``"\\r"``) is stripped from each line; blank lines and lines
    whose first non-blank character is ``#`` are ignored, so a passphrase cannot start with
    ``#``. Passphrases are UTF-8 encoded, as a shell hands them to ``openssl enc -k``.

    Raises:
        ValueError: a line holds a NUL character (``openssl -k`` would cut it there), or there
            is no passphrase at all; the message names ``source`` and the line, never its text.
    """
    found: list[bytes] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.rstrip()
        if not line or line.lstrip().startswith("#"):
            continue
        if "\x00" in line:
            raise ValueError(f"{source}: line {number}: a v1 secret cannot contain a NUL character")
        found.append(line.encode("utf-8"))
    if not found:
        raise ValueError(f"{source}: no v1 secret found (every line is blank or a comment)")
    return found


def weak_secret(passphrase: bytes) -> str | None:
    """A warning sentence if a v1 passphrase is easy to guess, ``None`` if it looks fine.

    v1 keys come from one MD5 (or SHA-256) over passphrase and salt, so an attacker holding one
    token can test billions of passphrases a second offline. The checks are cheap heuristics:
    shorter than 16 bytes, fewer than 8 distinct bytes, or one short unit repeated. The warning
    never quotes the passphrase.
    """
    advice = "use at least 16 random bytes, e.g. the output of `openssl rand -base64 24`"
    if len(passphrase) < 16:
        return f"the v1 secret is only {len(passphrase)} bytes long; {advice}"
    if len(set(passphrase)) < 8:
        return f"the v1 secret uses fewer than 8 different characters; {advice}"
    for unit in range(1, len(passphrase) // 2 + 1):
        if len(passphrase) % unit == 0 and passphrase == passphrase[:unit] * (len(passphrase) // unit):
            return f"the v1 secret is one short sequence repeated; {advice}"
    return None


# --- v2: AES-256-GCM --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Key:
    """One v2 key: its id as it appears in tokens and its 32-byte secret (never in ``repr``)."""

    kid: int
    """The key id, an unsigned 32-bit integer (0 to 4294967295), big-endian in tokens."""
    secret: bytes = field(repr=False)
    """The AES-256-GCM key, 32 bytes."""

    def __post_init__(self) -> None:
        """Check the ranges (``ValueError``; the message never holds the secret)."""
        if not 0 <= self.kid <= 0xFFFFFFFF:
            raise ValueError(f"key id must be 0 to 4294967295, got {self.kid}")
        if len(self.secret) != 32:
            raise ValueError(f"key {self.kid}: the secret must be 32 bytes, got {len(self.secret)}")


_KEYRING_LINE: Final = re.compile(r"([0-9]{1,10})\s+(\S+)")


class Keyring:
    """The v2 keys: all of :attr:`keys` are accepted; :attr:`current` issues new tokens.

    Rotation: list a new key first (it becomes current) and keep the old one below it until
    every token made with it has expired.
    """

    __slots__ = ("current", "keys")

    keys: Mapping[int, Key]
    """Every accepted key by its id (read-only)."""
    current: Key
    """The key :func:`v2_encrypt` uses: the first one given."""

    def __init__(self, keys: Iterable[Key]) -> None:
        """Hold ``keys``; the first is :attr:`current`. ``ValueError`` if empty or ids repeat."""
        by_kid: dict[int, Key] = {}
        for key in keys:
            if key.kid in by_kid:
                raise ValueError(f"key id {key.kid} is listed twice")
            by_kid[key.kid] = key
        if not by_kid:
            raise ValueError("a keyring needs at least one key")
        self.keys = MappingProxyType(by_kid)
        self.current = next(iter(by_kid.values()))

    def __repr__(self) -> str:
        """Key ids only, never secrets."""
        return f"Keyring(current={self.current.kid}, kids={sorted(self.keys)})"

    @classmethod
    def parse(cls, text: str, *, source: str = "keyring") -> Keyring:
        """Read a keyring file: one ``<kid> <base64 key>`` a line, the first listed is current.

        ``<kid>`` is decimal (0 to 4294967295); the key is 32 bytes in standard base64 with
        padding (44 characters). Blank lines are ignored, and ``#`` starts a comment anywhere
        (neither field can contain one).

        Raises:
            ValueError: a malformed line, a bad key id or key, a repeated key id, or no key;
                the message names ``source`` and the line number and never quotes key text.
        """
        keys: list[Key] = []
        seen: dict[int, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            where = f"{source}: line {number}"
            match = _KEYRING_LINE.fullmatch(line)
            if match is None:
                raise ValueError(f"{where}: expected '<key id> <base64 key>'")
            kid = int(match[1])
            if kid > 0xFFFFFFFF:
                raise ValueError(f"{where}: the key id must be 0 to 4294967295")
            if kid in seen:
                raise ValueError(f"{where}: key id {kid} is already listed on line {seen[kid]}")
            try:
                secret = base64.b64decode(match[2], validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(f"{where}: key {kid} is not valid base64") from None
            if len(secret) != 32:
                raise ValueError(f"{where}: key {kid} must be 32 bytes, got {len(secret)}")
            seen[kid] = number
            keys.append(Key(kid, secret))
        if not keys:
            raise ValueError(f"{source}: no key found (every line is blank or a comment)")
        return cls(keys)

    @staticmethod
    def new_line(kid: int | None = None) -> str:
        """A fresh keyring line ``"<kid> <base64 key>"`` from ``os.urandom`` (random kid if ``None``)."""
        key = Key(_secrets.randbits(32) if kid is None else kid, os.urandom(32))
        return f"{key.kid} {base64.b64encode(key.secret).decode('ascii')}"


def _b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _encode_address(address: Address) -> bytes:
    """The v2 address field: type byte, address, 2-byte big-endian port."""
    port = address.port.to_bytes(2, "big")
    if address.kind == "ipv4":
        return bytes([_ATYP_IPV4]) + ipaddress.IPv4Address(address.host).packed + port
    if address.kind == "ipv6":
        return bytes([_ATYP_IPV6]) + ipaddress.IPv6Address(address.host).packed + port
    name = address.host.encode("ascii")
    return bytes([_ATYP_NAME, len(name)]) + name + port


def _decode_address(data: bytes) -> Address | None:
    """The inverse of :func:`_encode_address`; ``None`` for anything malformed."""
    if len(data) < 3:
        return None
    atyp, port = data[0], int.from_bytes(data[-2:], "big")
    body = data[1:-2]
    if port == 0:
        return None
    if atyp == _ATYP_IPV4 and len(body) == 4:
        return Address(str(ipaddress.IPv4Address(body)), port, "ipv4")
    if atyp == _ATYP_IPV6 and len(body) == 16:
        return Address(ipaddress.IPv6Address(body).compressed, port, "ipv6")
    if atyp == _ATYP_NAME and len(body) >= 2 and body[0] == len(body) - 1:
        name = body[1:].decode("ascii", errors="replace")
        if _host_kind(name) == "name":
            return Address(name.lower(), port, "name")
    return None


def v2_encrypt(
    address: Address | str,
    keyring: Keyring,
    *,
    expires: float,
    not_before: float | None = None,
    now: float | None = None,
    nonce: bytes | None = None,
) -> bytes:
    """Make a v2 token with ``keyring.current`` (layout: ``docs/gateway-protocol.md``).

    Args:
        address: the backend address; checked by the grammar.
        keyring: the key ring; its current key encrypts.
        expires: unix time (seconds, truncated to whole seconds) from which the token is
            refused; it must be after ``now`` and before 2106-02-07 (unsigned 32-bit).
        not_before: unix time before which the token is refused; ``None`` for no lower bound.
        now: the current unix time; ``time.time()`` when ``None``.
        nonce: the 12-byte GCM nonce; random when ``None``. Pass one only to reproduce the
            documented test vectors: reusing a nonce with the same key breaks GCM.

    Returns:
        ``b"v2."`` and the base64url (unpadded) of the token, without a newline.

    Raises:
        ValueError: an invalid address, times out of range or in the wrong order, a nonce
            that is not 12 bytes.
    """
    parsed = _checked_address(address)
    now = time.time() if now is None else now
    exp = int(expires)
    nbf = 0 if not_before is None else int(not_before)
    if not 0 < exp <= _V2_MAX_TIME or not 0 <= nbf <= _V2_MAX_TIME:
        raise ValueError("token times must be unix seconds from 1970 to 2106")
    if exp <= now:
        raise ValueError("the token would already be expired")
    if nbf >= exp:
        raise ValueError("not_before must be earlier than expires")
    nonce = os.urandom(_V2_NONCE_LENGTH) if nonce is None else nonce
    if len(nonce) != _V2_NONCE_LENGTH:
        raise ValueError(f"the nonce must be {_V2_NONCE_LENGTH} bytes")
    key = keyring.current
    header = _V2_HEADER.pack(key.kid, nbf, exp)
    sealed = AESGCM(key.secret).encrypt(nonce, _encode_address(parsed), V2_AAD_CONTEXT + header)
    return V2_PREFIX + _b64url(header + nonce + sealed)


def _v2_raw(token: bytes) -> bytes | None:
    """The decoded bytes of a v2 token if its encoding and length are right, else ``None``."""
    if not token.startswith(V2_PREFIX):
        return None
    text = token[len(V2_PREFIX) :]
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        return None
    raw = base64.urlsafe_b64decode(text + b"=" * (-len(text) % 4))
    if _b64url(raw) != text or not _V2_MIN_RAW <= len(raw) <= _V2_MAX_RAW:
        return None  # non-canonical trailing bits, or no room for any valid token
    return raw


def v2_header(token: bytes) -> tuple[int, int, int] | None:
    """``(key id, not_before, expires)`` from a v2 token's clear header; ``None`` if it is not
    shaped like one.

    Not authenticated by itself: trust the values only once :func:`v2_decrypt` accepted the
    token (or refused it as "expired" or "not yet valid", which it says after the tag checked).
    For ``portway token decrypt`` and diagnostics.
    """
    raw = _v2_raw(token)
    if raw is None:
        return None
    kid, not_before, expires = _V2_HEADER.unpack_from(raw)
    return kid, not_before, expires


def v2_decrypt(token: bytes, keyring: Keyring, *, now: float | None = None) -> Address:
    """Verify and decrypt a v2 token and return its address.

    Order: encoding and length, key id, tag (AES-256-GCM over the address with the header and
    :data:`V2_AAD_CONTEXT` as associated data), then the validity window
    ``not_before <= now < expires``, then the address field.

    Raises:
        TokenError: with the reason ``"invalid token"`` (encoding, length, tag, address),
            ``"unknown key id"``, ``"expired"`` or ``"not yet valid"``.
    """
    raw = _v2_raw(token)
    if raw is None:
        raise TokenError(_INVALID)
    header, rest = raw[: _V2_HEADER.size], raw[_V2_HEADER.size :]
    kid, nbf, exp = _V2_HEADER.unpack(header)
    key = keyring.keys.get(kid)
    if key is None:
        raise TokenError("unknown key id")
    nonce, sealed = rest[:_V2_NONCE_LENGTH], rest[_V2_NONCE_LENGTH:]
    try:
        plain = AESGCM(key.secret).decrypt(nonce, sealed, V2_AAD_CONTEXT + header)
    except InvalidTag:
        raise TokenError(_INVALID) from None
    now = time.time() if now is None else now
    if now >= exp:
        raise TokenError("expired")
    if now < nbf:
        raise TokenError("not yet valid")
    address = _decode_address(plain)
    if address is None:
        raise TokenError(_INVALID)
    return address


# --- dispatch ---------------------------------------------------------------------------------


def decode(
    token: bytes,
    *,
    secrets: Sequence[bytes],
    keyring: Keyring | None,
    accept_v1: bool,
    digest: str = "md5",
    now: float | None = None,
) -> tuple[int, Address]:
    """Decode a line's token of either version: ``(1 or 2, address)``.

    A token starting with :data:`V2_PREFIX` is v2; anything else is treated as v1 (when
    ``accept_v1``), so that even a line that is plainly not a v1 token takes the uniform v1
    path and reads ``"invalid token"``.

    Args:
        token: ``Line.token``.
        secrets: the v1 passphrases, tried in order.
        keyring: the v2 keys, or ``None`` when v2 is not configured.
        accept_v1: whether v1 tokens are accepted at all.
        digest: the v1 key-derivation digest, ``"md5"`` or ``"sha256"``.
        now: the current unix time for v2 validity; ``time.time()`` when ``None``.

    Raises:
        TokenError: for every refusal, including "v1 disabled" and "v2 without a keyring".
    """
    if token.startswith(V2_PREFIX):
        if keyring is None:
            raise TokenError("v2 token, but no v2 keyring is configured")
        return 2, v2_decrypt(token, keyring, now=now)
    if not accept_v1:
        raise TokenError("not a v2 token, and v1 tokens are not accepted")
    return 1, v1_decrypt(token, secrets, digest=digest)
